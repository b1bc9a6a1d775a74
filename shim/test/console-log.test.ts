// The guest console is capped: whatever a guest prints, the host keeps at most two files of
// maxBytes each, the newest output last. Real FIFO, real writer process (like a VMM).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { ConsoleLog } from "../src/vmm/console-log.js";

describe("capped guest console log", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-console-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** Runs a writer like a VMM does: opens the FIFO path for writing, writes, exits. */
  function writer(fifo: string, script: string): Promise<number | null> {
    const child = spawn("sh", ["-c", `{ ${script}; } > '${fifo}'`], { stdio: "ignore" });
    return new Promise((resolve) => child.on("exit", (code) => resolve(code)));
  }

  /** Waits (polling, up to 10 s) until the log file ends with `tail`: the drain is asynchronous. */
  async function drained(log: string, tail: string): Promise<void> {
    const until = Date.now() + 10_000;
    while (!(await readFile(log, "utf8").catch(() => "")).endsWith(tail) && Date.now() < until)
      await new Promise((r) => setTimeout(r, 20));
  }

  it("keeps a short console whole, across a writer that closes and reopens", async () => {
    const paths = { fifo: path.join(dir, "a.fifo"), log: path.join(dir, "a.log") };
    const log = await ConsoleLog.create(paths);
    assert.equal(await writer(paths.fifo, "echo first"), 0);
    assert.equal(await writer(paths.fifo, "echo second"), 0);
    await drained(paths.log, "second\n");
    await log.close();
    assert.equal(await readFile(paths.log, "utf8"), "first\nsecond\n");
    assert.equal(existsSync(`${paths.log}.1`), false);
  });

  it("rotates past maxBytes: 4 MiB printed, at most 2 × 64 KiB kept, the newest last", async () => {
    const paths = { fifo: path.join(dir, "b.fifo"), log: path.join(dir, "b.log") };
    const max = 64 * 1024;
    const log = await ConsoleLog.create(paths, max);
    const code = await writer(
      paths.fifo,
      "i=0; while [ $i -lt 64 ]; do head -c 65536 /dev/zero | tr '\\0' x; i=$((i+1)); done; echo; echo THE-END",
    );
    assert.equal(code, 0);
    await drained(paths.log, "THE-END\n");
    await log.close();
    const current = (await stat(paths.log)).size;
    const previous = (await stat(`${paths.log}.1`)).size;
    // A rotation happens at the first chunk past the cap; a chunk is at most 64 KiB.
    assert.ok(current <= 2 * max, `console.log is ${current} bytes`);
    assert.ok(previous <= 2 * max, `console.log.1 is ${previous} bytes`);
    assert.match(await readFile(paths.log, "utf8"), /THE-END\n$/);
  });
});
