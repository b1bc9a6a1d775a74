// ErofsCache with the real tools (mount, mkfs.erofs, loop devices): merged content, hits,
// shared builds, the cross-process lock, eviction, and cleanup after every kind of failure.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import {
  copyFile,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rm,
  rmdir,
  stat,
  symlink,
  utimes,
  writeFile,
} from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, afterEach, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { ErofsCache } from "../src/rootfs/erofs-cache.js";
import { RootfsError } from "../src/rootfs/errors.js";
import { mountPointsUnder } from "../src/rootfs/mountinfo.js";
import type { RootfsSource } from "../src/rootfs/mounts.js";
import { execOk } from "../src/util/exec.js";

type Entry = string | { whiteout: true } | { symlink: string };

/** Writes a layer directory the way containerd's overlayfs snapshotter stores one. */
async function layer(dir: string, files: Record<string, Entry>): Promise<string> {
  await mkdir(dir, { recursive: true });
  for (const [name, entry] of Object.entries(files)) {
    const file = path.join(dir, name);
    await mkdir(path.dirname(file), { recursive: true });
    if (typeof entry === "string") await writeFile(file, entry);
    else if ("whiteout" in entry) await execOk(["mknod", file, "c", "0", "0"]);
    else await symlink(entry.symlink, file);
  }
  return dir;
}

/** Mounts an erofs image read-only through a loop device for the duration of `fn`. */
async function withImageMounted<T>(
  image: string,
  scratch: string,
  fn: (root: string) => Promise<T>,
): Promise<T> {
  const mnt = await mkdtemp(path.join(scratch, "mnt-"));
  await execOk(["mount", "-t", "erofs", "-o", "ro,loop", image, mnt]);
  try {
    return await fn(mnt);
  } finally {
    await execOk(["umount", "-d", mnt]);
    await rmdir(mnt);
  }
}

const src = (...lowerDirs: string[]): RootfsSource => ({ lowerDirs, readOnly: true });

describe("ErofsCache (real mount, mkfs.erofs, loop)", () => {
  let root: string;
  let cacheDir: string;
  let cache: ErofsCache;
  let top: string;
  let mid: string;
  let bottom: string;

  before(async () => {
    root = await mkdtemp(path.join(os.tmpdir(), "cloudhv-erofs-"));
    cacheDir = path.join(root, "cache");
    cache = await ErofsCache.open({ dir: cacheDir });
    bottom = await layer(path.join(root, "layers", "1"), {
      "a.txt": "a from bottom\n",
      "gone.txt": "deleted above\n",
      "dir/x.txt": "x\n",
      "bin/tool": "#!/bin/sh\n",
    });
    mid = await layer(path.join(root, "layers", "2"), { "a.txt": "a from mid\n", "b.txt": "b\n" });
    top = await layer(path.join(root, "layers", "3"), {
      "gone.txt": { whiteout: true },
      "c.txt": "c\n",
      link: { symlink: "a.txt" },
    });
    await execOk(["chmod", "755", path.join(bottom, "bin", "tool")]);
    await utimes(
      path.join(bottom, "dir", "x.txt"),
      new Date("2001-02-03T04:05:06Z"),
      new Date("2001-02-03T04:05:06Z"),
    );
  });

  afterEach(async () => {
    // Nothing a build or a check mounted may stay mounted or attached, and no temp file stays.
    assert.deepEqual(await mountPointsUnder(root), []);
    const loops = (await execOk(["losetup", "-a"])).stdout;
    assert.ok(!loops.includes(root), `loop devices left: ${loops}`);
    assert.deepEqual(await readdir(path.join(cacheDir, "tmp")), []);
    const leftovers = (await readdir(cacheDir)).filter((n) => n.includes(".tmp.") || n.includes(".lock"));
    assert.deepEqual(leftovers, []);
  });

  after(async () => {
    await cache?.close();
    if ((await mountPointsUnder(root)).length === 0) await rm(root, { recursive: true, force: true });
  });

  it("builds one image of the merged layers: top wins, whiteouts hide, metadata kept", async (t) => {
    const started = performance.now();
    using image = await cache.acquire(src(top, mid, bottom));
    t.diagnostic(`small 3-layer image, cache miss: ${(performance.now() - started).toFixed(1)} ms`);
    assert.equal(image.hit, false);
    assert.equal(image.path, path.join(cacheDir, `${image.key}.erofs`));
    assert.ok((await stat(image.path)).size > 0);
    await withImageMounted(image.path, root, async (fs) => {
      assert.deepEqual((await readdir(fs)).sort(), ["a.txt", "b.txt", "bin", "c.txt", "dir", "link"]);
      assert.equal(await readFile(path.join(fs, "a.txt"), "utf8"), "a from mid\n");
      assert.equal(await readFile(path.join(fs, "dir", "x.txt"), "utf8"), "x\n");
      assert.equal(await readlink(path.join(fs, "link")), "a.txt");
      assert.equal((await stat(path.join(fs, "bin", "tool"))).mode & 0o777, 0o755);
      assert.equal(
        (await stat(path.join(fs, "dir", "x.txt"))).mtime.toISOString(),
        "2001-02-03T04:05:06.000Z",
      );
    });
  });

  it("hits on the second acquire, fast, and counts references", async (t) => {
    const first = await cache.acquire(src(top, mid, bottom));
    const started = performance.now();
    const second = await cache.acquire(src(top, mid, bottom));
    const ms = performance.now() - started;
    t.diagnostic(`small 3-layer image, cache hit: ${ms.toFixed(2)} ms`);
    assert.equal(second.hit, true);
    assert.equal(second.path, first.path);
    assert.ok(ms < 100, `hit took ${ms} ms`);
    assert.equal(cache.references(first.key), 2);
    first.release();
    first.release(); // idempotent
    assert.equal(cache.references(first.key), 1);
    second.release();
    assert.equal(cache.references(first.key), 0);
  });

  it("reads a single layer directly (no overlay mount)", async () => {
    using image = await cache.acquire(src(bottom));
    await withImageMounted(image.path, root, async (fs) => {
      assert.deepEqual((await readdir(fs)).sort(), ["a.txt", "bin", "dir", "gone.txt"]);
    });
  });

  it("builds once for 20 concurrent acquires of one key", async () => {
    const fresh = await ErofsCache.open({ dir: path.join(root, "cache-concurrent") });
    try {
      const images = await Promise.all(
        Array.from({ length: 20 }, () => fresh.acquire(src(top, mid, bottom))),
      );
      assert.equal(fresh.stats.builds, 1);
      assert.equal(new Set(images.map((i) => i.path)).size, 1);
      assert.equal(fresh.references(images[0]?.key ?? ""), 20);
      for (const image of images) image.release();
      assert.equal(fresh.references(images[0]?.key ?? ""), 0);
    } finally {
      await fresh.close();
      await rm(path.join(root, "cache-concurrent"), { recursive: true });
    }
  });

  it("keys on inode and ctime, so a layer dir recreated at the same path is a new image", async () => {
    const dir = await layer(path.join(root, "layers", "reused"), { "v.txt": "one\n" });
    const before = await cache.keyOf(src(dir, bottom));
    assert.equal(await cache.keyOf(src(dir, bottom)), before);
    await rm(dir, { recursive: true });
    await layer(dir, { "v.txt": "two\n" });
    assert.notEqual(await cache.keyOf(src(dir, bottom)), before);
    assert.notEqual(await cache.keyOf(src(bottom, dir)), await cache.keyOf(src(dir, bottom)));
  });

  it("waits for a live builder in another process, and breaks the lock of a dead one", async () => {
    const lowers = src(mid, bottom);
    const key = await cache.keyOf(lowers);
    const lock = path.join(cacheDir, `${key}.lock`);
    const builtElsewhere = await mkdtemp(path.join(root, "elsewhere-"));
    const other = await ErofsCache.open({ dir: builtElsewhere });
    const ready = await other.acquire(lowers); // same lowers, same key
    ready.release();

    // A live owner: a sleeping child; it "finishes" by renaming an image in and dropping the lock.
    const child = spawn("sleep", ["30"], { stdio: "ignore" });
    const startTime = (await readFile(`/proc/${child.pid}/stat`, "utf8")).split(") ")[1]?.split(" ")[19];
    await writeFile(lock, `${child.pid} ${startTime}\n`);
    const waiting = cache.acquire(lowers);
    await sleep(300);
    await copyFile(ready.path, path.join(cacheDir, `${key}.erofs.tmp.${child.pid}.1`));
    await execOk(["mv", path.join(cacheDir, `${key}.erofs.tmp.${child.pid}.1`), cache.imagePath(key)]);
    await rm(lock);
    const image = await waiting;
    assert.equal(image.hit, false);
    image.release();
    child.kill();
    await once(child, "exit");

    // A dead owner (the child above, now reaped): its lock is broken and we build.
    await rm(cache.imagePath(key));
    await writeFile(lock, `${child.pid} ${startTime}\n`);
    const builds = cache.stats.builds;
    using rebuilt = await cache.acquire(lowers);
    assert.equal(cache.stats.builds, builds + 1);
    assert.equal(rebuilt.hit, false);
    await other.close();
    await rm(builtElsewhere, { recursive: true });
  });

  it("evicts least-recently-used unreferenced images to meet the budget, never referenced ones", async () => {
    const dir = path.join(root, "cache-evict");
    const ev = await ErofsCache.open({ dir });
    try {
      const a = await ev.acquire(src(bottom));
      await sleep(20);
      const b = await ev.acquire(src(mid));
      await sleep(20);
      const c = await ev.acquire(src(top));
      const total = a.sizeBytes + b.sizeBytes + c.sizeBytes;
      assert.deepEqual(
        (await ev.entries()).map((e) => e.key),
        [a.key, b.key, c.key],
      );
      a.release();
      c.release();

      assert.deepEqual(await ev.evict(total), { removed: [], freedBytes: 0, totalBytes: total });
      const first = await ev.evict(b.sizeBytes + c.sizeBytes);
      assert.deepEqual(first.removed, [a.key]);
      assert.equal(first.totalBytes, b.sizeBytes + c.sizeBytes);

      // b is older than c but referenced: only c can go, and the budget cannot be met.
      const second = await ev.evict(0);
      assert.deepEqual(second.removed, [c.key]);
      assert.equal(second.totalBytes, b.sizeBytes);
      await stat(b.path);

      b.release();
      assert.deepEqual((await ev.evict(0)).removed, [b.key]);
      assert.deepEqual(await ev.entries(), []);

      // Acquiring after eviction builds again.
      using again = await ev.acquire(src(bottom));
      assert.equal(again.hit, false);
      await assert.rejects(ev.evict(-1), /budget -1/);
    } finally {
      await ev.close();
      await rm(dir, { recursive: true });
    }
  });

  it("fails with a named error and leaves nothing behind", async () => {
    const failing = await ErofsCache.open({ dir: cacheDir, mkfsBinary: "false" });
    // mkfs fails after the overlay is mounted: the mount and temp dir must go.
    await assert.rejects(failing.acquire(src(top, bottom)), (err) => {
      assert.ok(err instanceof RootfsError);
      assert.equal(err.kind, "Unavailable");
      assert.match(
        err.message,
        /building image [0-9a-f]{64} from 2 layer\(s\).* failed: false .* exited with 1/,
      );
      return true;
    });
    await failing.close();

    await assert.rejects(cache.acquire(src(path.join(root, "nope"))), (err) => {
      assert.ok(err instanceof RootfsError);
      assert.equal(err.kind, "NotFound");
      assert.match(err.message, /layer directory .*\/nope does not exist/);
      return true;
    });
    await assert.rejects(cache.acquire(src(path.join(bottom, "a.txt"))), /layer .*a\.txt is not a directory/);
    await assert.rejects(cache.acquire(src()), /has no read-only layers/);

    // The kernel refuses the mount (overlayfs stacks at most 500 lowers). 501 short names also
    // take the relative-path route for long option strings.
    const many = path.join(root, "many");
    const dirs: string[] = [];
    for (let i = 0; i < 501; i++) dirs.push(await layer(path.join(many, String(i)), {}));
    await assert.rejects(cache.acquire(src(...dirs)), (err) => {
      assert.ok(err instanceof RootfsError);
      assert.equal(err.kind, "Unavailable");
      assert.match(err.message, /mounting 501 layers as a read-only overlay failed/);
      return true;
    });
  });

  it("clears what a dead builder left: temp image, lock, mounted temp dir", async () => {
    const child = spawn("true");
    await once(child, "exit");
    const dead = child.pid ?? 0;
    const key = "f".repeat(64);
    await writeFile(path.join(cacheDir, `${key}.erofs.tmp.${dead}.abcd`), "half an image");
    await writeFile(path.join(cacheDir, `${key}.lock`), `${dead} 12345\n`);
    await writeFile(path.join(cacheDir, `${key}.lock.${dead}.abcd`), `${dead} 12345\n`);
    const merged = path.join(cacheDir, "tmp", `${dead}.xyz`, "merged");
    await mkdir(merged, { recursive: true });
    await execOk(["mount", "-t", "overlay", "overlay", "-o", `ro,lowerdir=${mid}:${bottom}`, merged]);
    const reopened = await ErofsCache.open({ dir: cacheDir });
    await reopened.close();
    // afterEach checks that nothing is left; the layers under the mount are untouched.
    assert.equal(await readFile(path.join(bottom, "a.txt"), "utf8"), "a from bottom\n");
  });
});
