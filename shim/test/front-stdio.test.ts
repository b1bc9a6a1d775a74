// The front holds a write end of a live process's output FIFO, so the reader (containerd) does
// not see its end when the daemon, the other writer, dies; it sees it once released.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { closeSync, constants, openSync, readSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import { StdioHolds } from "../src/front/stdio-holds.js";

/** Reads what is there now: bytes, "eof" (no writer left), or "empty" (a writer, no data). */
function readNow(fd: number): string {
  const buf = Buffer.alloc(64);
  try {
    const n = readSync(fd, buf, 0, buf.length, null);
    return n === 0 ? "eof" : buf.subarray(0, n).toString();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EAGAIN") return "empty";
    throw err;
  }
}

describe("the front's hold on output FIFOs", () => {
  it("keeps the reader from seeing the end when the daemon's writer closes, until released", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "holds-"));
    const fifo = path.join(dir, "stdout");
    execFileSync("mkfifo", [fifo]);
    const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    const daemon = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
    const holds = new StdioHolds();
    try {
      assert.equal(holds.hold("k8s.io/c1/", [fifo, "", "relative/path"]), 1);
      closeSync(daemon); // the daemon dies
      assert.equal(readNow(reader), "empty", "a writer is still there: no end of stream");
      const next = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK); // the next daemon
      execFileSync("sh", ["-c", `printf more > ${fifo}`]);
      assert.equal(readNow(reader), "more");
      closeSync(next);
      holds.release("k8s.io/c1/");
      assert.equal(readNow(reader), "eof", "released: the reader sees the end");
      assert.equal(holds.size, 0);
    } finally {
      closeSync(reader);
      holds.releaseAll();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("holds only FIFOs that have a reader, and never follows a link", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "holds-"));
    const file = path.join(dir, "plain");
    const lonely = path.join(dir, "lonely");
    await writeFile(file, "");
    execFileSync("mkfifo", [lonely]);
    execFileSync("ln", ["-s", lonely, path.join(dir, "link")]);
    const holds = new StdioHolds();
    try {
      assert.equal(holds.hold("a", [file, lonely, path.join(dir, "link"), path.join(dir, "missing")]), 0);
      assert.equal(holds.size, 0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
