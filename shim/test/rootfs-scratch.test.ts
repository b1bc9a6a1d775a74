// Scratch disks: sparse, ext4 without a journal, fast to make, mountable, removed on dispose.
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, rmdir, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, afterEach, before, describe, it } from "node:test";
import { RootfsError } from "../src/rootfs/errors.js";
import { mountPointsUnder } from "../src/rootfs/mountinfo.js";
import { createScratchDisk, DEFAULT_SCRATCH_BYTES, startScratchDisk } from "../src/rootfs/scratch.js";
import { execOk } from "../src/util/exec.js";

describe("scratch disks", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-scratch-"));
  });
  afterEach(async () => {
    assert.deepEqual(await mountPointsUnder(dir), []);
    const loops = (await execOk(["losetup", "-a"])).stdout;
    assert.ok(!loops.includes(dir), `loop devices left: ${loops}`);
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("makes a sparse 10 GiB ext4 disk without a journal, quickly, that mounts and holds files", async (t) => {
    const file = path.join(dir, "c1.img");
    const started = performance.now();
    await using disk = await createScratchDisk(file, undefined, { label: "scratch-c1" });
    const ms = performance.now() - started;
    t.diagnostic(`scratch disk 10 GiB: ${ms.toFixed(1)} ms`);
    const st = await stat(file);
    assert.equal(disk.sizeBytes, DEFAULT_SCRATCH_BYTES);
    assert.equal(st.size, DEFAULT_SCRATCH_BYTES);
    assert.ok(st.blocks * 512 < 16 * 1024 ** 2, `allocated ${st.blocks * 512} bytes`);
    const header = (await execOk(["dumpe2fs", "-h", file])).stdout;
    assert.match(header, /Filesystem volume name:\s+scratch-c1/);
    assert.match(header, /Reserved block count:\s+0\n/);
    assert.doesNotMatch(header, /has_journal/);

    const mnt = await mkdtemp(path.join(dir, "mnt-"));
    await execOk(["mount", "-t", "ext4", "-o", "loop", file, mnt]);
    try {
      await writeFile(path.join(mnt, "hello"), "hi\n");
      assert.equal(await readFile(path.join(mnt, "hello"), "utf8"), "hi\n");
    } finally {
      await execOk(["umount", "-d", mnt]);
      await rmdir(mnt);
    }
  });

  it("started, the file is there at its size while mkfs runs, and formatted in place (the same inode, which a bind mount made meanwhile sees); a failed format rejects and removes it", async () => {
    const file = path.join(dir, "c6.img");
    const { disk, formatted } = await startScratchDisk(file, 64 * 1024 ** 2, { label: "later" });
    const before = await stat(file);
    assert.equal(before.size, 64 * 1024 ** 2, "at its size before the format ends");
    await formatted;
    const after = await stat(file);
    assert.equal(after.ino, before.ino, "mkfs wrote into the file, not a new one");
    assert.match((await execOk(["dumpe2fs", "-h", file])).stdout, /Filesystem volume name:\s+later/);
    await disk.remove();

    const failing = path.join(dir, "c7.img");
    const started = await startScratchDisk(failing, 64 * 1024 ** 2, { mkfsBinary: "false" });
    await assert.rejects(
      started.formatted,
      (err) => err instanceof RootfsError && err.kind === "Unavailable" && /c7\.img: false/.test(err.message),
    );
    await assert.rejects(stat(failing), { code: "ENOENT" });
  });

  it("removes the file on dispose, idempotently", async () => {
    const file = path.join(dir, "c2.img");
    const disk = await createScratchDisk(file, 64 * 1024 ** 2);
    await disk.remove();
    await disk.remove();
    await assert.rejects(stat(file), { code: "ENOENT" });
  });

  it("refuses to overwrite, to make odd sizes, and cleans up when mkfs fails", async () => {
    const file = path.join(dir, "c3.img");
    await writeFile(file, "someone else's");
    await assert.rejects(
      createScratchDisk(file, 64 * 1024 ** 2),
      (err) =>
        err instanceof RootfsError &&
        err.kind === "AlreadyExists" &&
        /c3\.img exists already/.test(err.message),
    );
    assert.equal(await readFile(file, "utf8"), "someone else's");
    await assert.rejects(
      createScratchDisk(path.join(dir, "c4.img"), 1000),
      /size 1000 must be a multiple of 4096/,
    );
    await assert.rejects(
      createScratchDisk(path.join(dir, "c4.img"), 64 * 1024 ** 2, { label: "x".repeat(17) }),
      /longer than 16/,
    );
    const failing = path.join(dir, "c5.img");
    await assert.rejects(
      createScratchDisk(failing, 64 * 1024 ** 2, { mkfsBinary: "false" }),
      (err) =>
        err instanceof RootfsError &&
        err.kind === "Unavailable" &&
        /c5\.img: false .* exited with 1/.test(err.message),
    );
    await assert.rejects(stat(failing), { code: "ENOENT" });
  });
});
