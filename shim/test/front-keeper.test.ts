// The front with a daemon stand-in (a tiny node script on our ttrpc server) as its child: a
// daemon that dies by a signal or with status 1 is started again with back-off and the client
// of a namespace socket keeps its connection; status 0 ends the front and removes its sockets;
// SIGTERM to the front goes to the daemon first; a daemon that cannot start makes it give up.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Front, type FrontOptions } from "../src/front/keeper.js";
import { DaemonSupervisor } from "../src/front/supervisor.js";
import { backendSocketPath, namespaceSocketPath, SOCKET_SCHEME } from "../src/launcher/daemon-address.js";
import { isAlive } from "../src/launcher/lock.js";
import { TtrpcClient } from "../src/ttrpc/client.js";
import { messageCodec } from "../src/ttrpc/proto.js";
import { Code, TtrpcError } from "../src/ttrpc/status.js";

const dist = (rel: string) => new URL(`../src/${rel}`, import.meta.url).href;

// The stand-in: `--socket` like the daemon; Admin Listen opens the namespace socket (whose
// test.Svc/Who answers the daemon's pid), ForceDelete answers exit 42; SIGTERM ends it with 0.
// $STUB_EXIT makes it exit at once with that status; $STUB_COUNT counts its starts. It takes
// the daemon's lock like the daemon (75 when a live one holds it).
const STUB = `
import { appendFileSync, rmSync } from "node:fs";
import { TtrpcServer } from "${dist("ttrpc/server.js")}";
import { messageCodec } from "${dist("ttrpc/proto.js")}";
import { namespaceSocketPath, SOCKET_SCHEME } from "${dist("launcher/daemon-address.js")}";
import { LOCK_HELD_STATUS, takeLock } from "${dist("launcher/lock.js")}";
if (process.env.STUB_COUNT) appendFileSync(process.env.STUB_COUNT, process.pid + "\\n");
if (process.env.STUB_EXIT) process.exit(Number(process.env.STUB_EXIT));
const socket = process.argv[process.argv.indexOf("--socket") + 1];
if (!takeLock(socket + ".lock")) process.exit(LOCK_HELD_STATUS);
const server = new TtrpcServer();
const req = messageCodec("cloudhv.shim.v1.ListenRequest");
const res = messageCodec("cloudhv.shim.v1.ListenResponse");
const del = messageCodec("containerd.task.v2.DeleteResponse");
server.register("cloudhv.shim.v1.Admin", {
  Listen: async (p) => {
    const ns = namespaceSocketPath(socket, req.decode(p).namespace);
    if (!server.isListening(ns)) await server.listen(ns);
    return res.encode({ address: SOCKET_SCHEME + ns });
  },
  ForceDelete: async () => del.encode({ pid: 0, exitStatus: 42 }),
});
server.register("test.Svc", { Who: async () => Buffer.from(String(process.pid)) });
await server.listen(socket);
process.on("SIGTERM", () => void server.close().then(() => {
  rmSync(socket + ".lock", { force: true });
  process.exit(0);
}));
`;

function quietLog() {
  const lines: string[] = [];
  const put = (_o: object, msg: string) => void lines.push(msg);
  return { lines, info: put, warn: put, error: put };
}

async function until<T>(what: string, check: () => T | Promise<T>, ms = 30_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe("front", () => {
  let dir: string;
  let stub: string;
  let n = 0;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-front-"));
    stub = path.join(dir, "stub-daemon.mjs");
    await writeFile(stub, STUB);
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  function makeFront(env: Record<string, string> = {}, extra: Partial<FrontOptions> = {}) {
    n++;
    const state = path.join(dir, `state${n}`);
    const controlSocket = path.join(state, `shim-${n}.sock`);
    const backendControl = backendSocketPath(controlSocket);
    const log = quietLog();
    const front = new Front({
      controlSocket,
      backendControl,
      daemon: {
        command: process.execPath,
        args: [stub, "--socket", backendControl],
        outputFd: "ignore",
        env: { ...process.env, ...env },
        minBackoffMs: 20,
        maxBackoffMs: 80,
      },
      log,
      ...extra,
    });
    return { front, state, controlSocket, log };
  }

  const admin = async (socket: string, method: string, payload: Uint8Array) => {
    const client = await TtrpcClient.connect(socket);
    try {
      return await client.call("cloudhv.shim.v1.Admin", method, payload, { timeoutMs: 20_000 });
    } finally {
      client.close();
    }
  };
  const listen = async (socket: string, namespace: string) =>
    messageCodec("cloudhv.shim.v1.ListenResponse").decode(
      await admin(socket, "Listen", messageCodec("cloudhv.shim.v1.ListenRequest").encode({ namespace })),
    ).address;
  const who = async (c: TtrpcClient) => Number((await c.call("test.Svc", "Who", Buffer.alloc(0))).toString());

  it("restarts a daemon killed by a signal; the namespace connection stays and reaches the new one", {
    timeout: 60_000,
  }, async () => {
    const { front, state, controlSocket, log } = makeFront();
    await front.start();
    try {
      const address = await listen(controlSocket, "k8s.io");
      const frontNs = namespaceSocketPath(controlSocket, "k8s.io");
      assert.equal(address, `${SOCKET_SCHEME}${frontNs}`, "containerd gets the front's socket");
      const client = await TtrpcClient.connect(frontNs);
      const first = await who(client);
      assert.equal(first, front.daemonPid);
      process.kill(first, "SIGKILL");
      const second = await who(client);
      assert.notEqual(second, first, "answered by a new daemon");
      assert.equal(client.closed, false, "the containerd side never saw the daemon die");
      assert.ok(
        log.lines.some((l) => /killed by SIGKILL; starting it again in 20 ms/.test(l)),
        log.lines.join("\n"),
      );
      // ForceDelete goes through to the daemon.
      const reply = await admin(controlSocket, "ForceDelete", Buffer.alloc(0));
      assert.equal(messageCodec("containerd.task.v2.DeleteResponse").decode(reply).exitStatus, 42);
      // The daemon's own exit with status 0 (its idle exit) ends the front.
      process.kill(second, "SIGTERM");
      assert.match(await front.done, /exited with status 0/);
      await until("the client sees the close", () => client.closed);
      assert.deepEqual(await readdir(state), [], "sockets and backend/ removed");
    } finally {
      await front.shutdown("test end");
    }
  });

  it("relays to a daemon a killed front left behind (its lock held) and starts its own once it is gone", {
    timeout: 90_000,
  }, async () => {
    const { front, controlSocket, log } = makeFront({}, { giveUpAfter: 2 });
    const backendControl = backendSocketPath(controlSocket);
    await mkdir(path.dirname(backendControl), { recursive: true });
    const orphan = spawn(process.execPath, [stub, "--socket", backendControl], { stdio: "ignore" });
    try {
      await until("the orphan listens", () => existsSync(backendControl));
      await front.start();
      const client = await TtrpcClient.connect(
        (await listen(controlSocket, "default")).replace(SOCKET_SCHEME, ""),
      );
      assert.equal(await who(client), orphan.pid, "served by the daemon that holds the lock");
      // Tries of its own daemon (80 ms apart here), each finding the lock held.
      await until(
        "two more tries",
        () => log.lines.filter((l) => /shim daemon started/.test(l)).length >= 3,
        30_000,
      );
      assert.equal(
        log.lines.filter((l) => /another shim daemon holds the lock/.test(l)).length,
        1,
        `said once: ${log.lines.join("\n")}`,
      );
      assert.ok(!log.lines.some((l) => /giving up/.test(l)), "a held lock is not a failure");
      orphan.kill("SIGKILL");
      await until(
        "the front's own daemon answers",
        async () => (await who(client)) === front.daemonPid,
        30_000,
      );
      assert.equal(client.closed, false);
      client.close();
    } finally {
      orphan.kill("SIGKILL");
      await front.stop("test end");
    }
  });

  it("passes SIGTERM to the daemon and ends after it", { timeout: 60_000 }, async () => {
    const { front, state, controlSocket } = makeFront();
    await front.start();
    await listen(controlSocket, "default");
    const pid = front.daemonPid as number;
    assert.ok(isAlive(pid));
    await front.stop("SIGTERM");
    assert.equal(isAlive(pid), false, "the daemon is gone before the front is");
    assert.deepEqual(await readdir(state), []);
    assert.equal(existsSync(controlSocket), false);
  });

  it("gives up on a daemon that cannot start when no containerd connection needs it, naming the cause", {
    timeout: 60_000,
  }, async () => {
    const count = path.join(dir, "starts");
    const { front, controlSocket } = makeFront({ STUB_EXIT: "1", STUB_COUNT: count }, { giveUpAfter: 3 });
    await front.start();
    const err = await listen(controlSocket, "default").catch((e: unknown) => e);
    assert.ok(err instanceof TtrpcError && err.code === Code.UNAVAILABLE, String(err));
    assert.match((err as TtrpcError).detail, /the shim daemon exited with status 1/);
    assert.match(await front.done, /exited with status 1 3 times in a row/);
    assert.equal((await readFile(count, "utf8")).trim().split("\n").length, 3);
  });
});

describe("daemon supervisor", () => {
  it("restarts a daemon that exits 1 with a doubling back-off, and not one that exits 0", {
    timeout: 60_000,
  }, async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-supervisor-"));
    try {
      const script = path.join(dir, "d.mjs");
      const count = path.join(dir, "count");
      // Exits 1 three times, then 0.
      await writeFile(
        script,
        `import { appendFileSync, readFileSync } from "node:fs";
appendFileSync(${JSON.stringify(count)}, "x");
process.exit(readFileSync(${JSON.stringify(count)}, "utf8").length < 4 ? 1 : 0);`,
      );
      const log = quietLog();
      const delays: number[] = [];
      let cleanExit = 0;
      const sup = new DaemonSupervisor({
        command: process.execPath,
        args: [script],
        outputFd: "ignore",
        log: {
          ...log,
          error: (o: object, msg: string) => {
            delays.push((o as { delayMs: number }).delayMs);
            log.error(o, msg);
          },
        },
        minBackoffMs: 30,
        maxBackoffMs: 60,
        onCleanExit: () => {
          cleanExit++;
          return false;
        },
      });
      sup.start();
      await until("the clean exit", () => cleanExit === 1);
      await sleep(200);
      assert.equal((await readFile(count, "utf8")).length, 4, "three restarts, none after status 0");
      assert.deepEqual(delays, [30, 60, 60]);
      assert.ok(log.lines.every((l) => !/exited with status 0/.test(l)));
      assert.equal(log.lines.filter((l) => /exited with status 1; starting it again/.test(l)).length, 3);
      assert.equal(sup.respawnCount, 3);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
