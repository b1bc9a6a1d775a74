// The daemon's log: a rotated file on disk that a guest cannot fill. The guest cases go over
// real sockets: an in-process "guest agent" answers with huge errors, a daemon-side ttrpc
// server calls it (as the task service does) and logs what fails into the real log file.
import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import pino from "pino";
import { AgentClient } from "../src/agent/client.js";
import { statusOf } from "../src/errors.js";
import { TtrpcClient } from "../src/ttrpc/client.js";
import { TtrpcServer } from "../src/ttrpc/server.js";
import { Code, TtrpcError } from "../src/ttrpc/status.js";
import { GuestLogLimiter, logFromGuest, serverLogFor } from "../src/util/guest-log.js";
import { configureLogging } from "../src/util/log.js";
import { openLogFile } from "../src/util/log-file.js";

const MiB = 1024 ** 2;

async function dirBytes(dir: string): Promise<number> {
  let total = 0;
  for (const name of await readdir(dir)) total += (await stat(path.join(dir, name))).size;
  return total;
}

describe("daemon log file: size-based rotation", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-log-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("4 MiB logged through pino: the live file and 2 rotated ones stay within 3 × 64 KiB (+ a line each), newest live", async () => {
    const file = openLogFile({ file: path.join(dir, "shim-a.log"), maxBytes: 64 * 1024, files: 2 });
    const log = pino({ base: null }, file);
    const filler = "x".repeat(400);
    for (let i = 0; i < 10_000; i++) {
      log.info({ i, filler }, "line");
      // The daemon logs between other work: let the file catch up now and then.
      if (i % 200 === 0) await new Promise((r) => setImmediate(r));
    }
    log.info("the last line");
    await file.close();
    assert.deepEqual((await readdir(dir)).sort(), ["shim-a.log", "shim-a.log.1", "shim-a.log.2"]);
    const lineBytes = 500;
    assert.ok((await dirBytes(dir)) <= 3 * (64 * 1024 + lineBytes), `${await dirBytes(dir)} bytes on disk`);
    const live = await readFile(path.join(dir, "shim-a.log"), "utf8");
    assert.match(live.trimEnd().split("\n").at(-1) ?? "", /"msg":"the last line"/);
    assert.equal(file.dropped, 0);
  });

  it("drops (and counts) lines the disk cannot take instead of queueing them in memory", async () => {
    const file = openLogFile({
      file: path.join(dir, "shim-b.log"),
      maxBytes: 1 * MiB,
      files: 1,
      maxQueuedBytes: 64 * 1024,
    });
    const line = `${"y".repeat(1023)}\n`;
    for (let i = 0; i < 1000; i++) file.write(line); // 1 MiB at once, no chance to flush
    const dropped = file.dropped;
    assert.ok(dropped > 0 && dropped < 1000, `${dropped} dropped`);
    await new Promise((r) => setTimeout(r, 300)); // the disk catches up
    file.write("after\n");
    await file.close();
    assert.equal(file.dropped, dropped);
    const text = await readFile(path.join(dir, "shim-b.log"), "utf8");
    assert.ok(
      text.includes(`daemon log fell behind the disk: ${dropped} lines dropped`),
      "the count is logged",
    );
    assert.ok(text.endsWith("after\n"));
  });
});

describe("guest log limiter: a token bucket per guest", () => {
  it("lets a burst through, then one line per refill, and counts what it dropped", () => {
    let now = 0;
    const limiter = new GuestLogLimiter({ burst: 3, perMinute: 6, maxGuests: 10 }, () => now);
    assert.deepEqual(
      [1, 2, 3, 4, 5].map(() => limiter.take("vm-a")),
      [0, 0, 0, undefined, undefined],
    );
    assert.equal(limiter.take("vm-b"), 0, "another guest has its own bucket");
    now += 10_000; // one token back (6 per minute)
    assert.equal(limiter.take("vm-a"), 2, "the next line that passes reports the 2 dropped");
    assert.equal(limiter.take("vm-a"), undefined);
  });

  it("logs the count of dropped lines before the guest's next line", () => {
    let now = 0;
    const limiter = new GuestLogLimiter({ burst: 1, perMinute: 6, maxGuests: 10 }, () => now);
    const lines: Array<Record<string, unknown>> = [];
    const log = pino({ base: null }, { write: (l: string) => void lines.push(JSON.parse(l)) });
    for (let i = 0; i < 4; i++) logFromGuest(log, "vm-a", "error", { i }, "guest failed", limiter);
    now += 10_000;
    logFromGuest(log, "vm-a", "error", { i: 4 }, "guest failed", limiter);
    assert.deepEqual(
      lines.map((l) => [l.msg, l.guest, l.i ?? l.suppressedLines]),
      [
        ["guest failed", "vm-a", 0],
        ["guest-caused log lines suppressed (rate limit)", "vm-a", 3],
        ["guest failed", "vm-a", 4],
      ],
    );
  });

  it("tracks a bounded number of guests", () => {
    let now = 0;
    const limiter = new GuestLogLimiter({ burst: 1, perMinute: 60, maxGuests: 100 }, () => now);
    for (let i = 0; i < 10_000; i++) {
      limiter.take(`vm-${i}`);
      now += 1;
    }
    assert.ok(limiter.size <= 100, `${limiter.size} buckets`);
  });
});

describe("a guest that answers with huge errors grows the daemon's log by a few KiB", () => {
  let dir: string;
  let logDir: string;
  let logFile: ReturnType<typeof openLogFile>;
  let detail = "";
  let guestServer: TtrpcServer;
  let daemonServer: TtrpcServer;
  let agent: AgentClient;
  let daemon: TtrpcClient;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-guestlog-"));
    logDir = path.join(dir, "log");
    logFile = openLogFile({ file: path.join(logDir, "shim-test.log"), maxBytes: 64 * MiB, files: 1 });
    const log = configureLogging({ level: "info", destination: logFile });
    // The guest: frames up to 16 MiB (a real guest ignores our limit), every call fails with a
    // code outside the allow-list (it becomes Internal, which the daemon logs) and `detail`.
    guestServer = new TtrpcServer({ maxFrameData: 16 * MiB }).register("cloudhv.agent.v1.Agent", {
      RemoveContainer: async () => {
        throw new TtrpcError(Code.PERMISSION_DENIED, detail);
      },
    });
    await guestServer.listen(path.join(dir, "agent.sock"));
    daemonServer = new TtrpcServer({ statusOf, log: serverLogFor(log) }).register("test.Daemon", {
      Remove: async () => {
        await agent.removeContainer("c1");
        return Buffer.alloc(0);
      },
    });
    await daemonServer.listen(path.join(dir, "daemon.sock"));
    daemon = await TtrpcClient.connect(path.join(dir, "daemon.sock"));
  });

  after(async () => {
    daemon.close();
    agent?.close();
    await daemonServer.close();
    await guestServer.close();
    await logFile.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** Fresh agent connection for guest `vm` (an 8 MiB frame ends the previous one). */
  async function connect(vm: string) {
    agent?.close();
    agent = new AgentClient(await TtrpcClient.connect(path.join(dir, "agent.sock")), undefined, vm);
  }

  /** Calls the daemon `n` times; returns the status messages containerd would get. */
  async function callDaemon(n: number): Promise<string[]> {
    const messages: string[] = [];
    for (let i = 0; i < n; i++) {
      const err = await daemon.call("test.Daemon", "Remove", Buffer.alloc(0)).then(
        () => assert.fail("the guest's failure did not reach the caller"),
        (e: unknown) => e as TtrpcError,
      );
      messages.push(err.detail);
    }
    return messages;
  }

  async function logGrowth(run: () => Promise<unknown>): Promise<number> {
    await new Promise((r) => setTimeout(r, 50));
    const before = await dirBytes(logDir);
    await run();
    await new Promise((r) => setTimeout(r, 200)); // the file is written asynchronously
    return (await dirBytes(logDir)) - before;
  }

  it("one reply of almost 4 MiB (our frame limit): cut to 512 bytes in the log and for containerd", async (t) => {
    await connect("vm-big");
    detail = "A".repeat(4 * MiB - 4096);
    let messages: string[] = [];
    const grew = await logGrowth(async () => {
      messages = await callDaemon(1);
    });
    t.diagnostic(`log grew by ${grew} bytes`);
    assert.ok(grew > 0 && grew <= 4096, `the log grew by ${grew} bytes`);
    assert.ok((messages[0]?.length ?? 0) < 1024, `containerd gets ${messages[0]?.length} chars`);
    assert.match(
      messages[0] ?? "",
      /guest agent RemoveContainer \(PERMISSION_DENIED\): A+… \(4190208 bytes, cut\)/,
    );
    const text = await readFile(path.join(logDir, "shim-test.log"), "utf8");
    assert.match(text, /"guest":"vm-big".*"msg":"ttrpc handler failed in the guest"/);
    // The error itself, as any `log.error({ err })` would write it (pino adds the cause's text).
    const err = await agent.removeContainer("c1").then(
      () => assert.fail("the guest's failure did not reach the caller"),
      (e: unknown) => e as Error,
    );
    const serialized = JSON.stringify(pino.stdSerializers.err(err));
    assert.ok(serialized.length < 4096, `the error serializes to ${serialized.length} chars`);
  });

  it("one reply of 8 MiB: refused at the frame header, a bounded line at most", async (t) => {
    await connect("vm-huge");
    detail = "B".repeat(8 * MiB);
    const grew = await logGrowth(() => callDaemon(1));
    t.diagnostic(`log grew by ${grew} bytes`);
    assert.ok(grew <= 4096, `the log grew by ${grew} bytes`);
  });

  it("10000 failing calls with 4 KiB errors: the guest's line budget holds", async (t) => {
    await connect("vm-loop");
    detail = "C".repeat(4096);
    const started = performance.now();
    const grew = await logGrowth(() => callDaemon(10_000));
    const seconds = (performance.now() - started) / 1000;
    t.diagnostic(`log grew by ${grew} bytes in ${seconds.toFixed(1)} s`);
    // The budget: a burst of 5, then one line per 10 s, each after a drop preceded by the count.
    const budget = 5 + 2 * Math.ceil(seconds / 10);
    const lines = (await readFile(path.join(logDir, "shim-test.log"), "utf8")).trimEnd().split("\n");
    const ofGuest = lines.filter((l) => l.includes('"guest":"vm-loop"'));
    assert.ok(ofGuest.length <= budget, `${ofGuest.length} lines of vm-loop, budget ${budget}`);
    assert.ok(
      ofGuest.every((l) => Buffer.byteLength(l) < 1024),
      "every line is cut",
    );
    assert.ok(grew <= budget * 1024, `the log grew by ${grew} bytes`);
  });
});
