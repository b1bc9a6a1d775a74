// Rootfs delivery against real containerd snapshots: an image built as an OCI archive is
// imported and unpacked by containerd's overlayfs snapshotter; the mounts containerd gives for
// a container snapshot become a cached erofs image whose content is the merged image.
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, readFile, rm, rmdir, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, afterEach, before, describe, it } from "node:test";
import { type ContainerdMount, ErofsCache, execOk, mountPointsUnder, parseRootfsMounts } from "@cloudhv/shim";
import { PrivateContainerd } from "../src/containerd.js";
import { buildBusyboxImage, chainId, importOciArchive, type OciImage } from "../src/oci-image.js";

const NS = "cloudhv-test";

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

describe("rootfs delivery from containerd snapshots", () => {
  let dir: string;
  let containerd: PrivateContainerd;
  let cache: ErofsCache;
  let layered: OciImage;
  let big: OciImage;
  let seq = 0;

  /** Prepares an active snapshot on top of `parent` and returns containerd's mounts for it. */
  const prepare = async (
    parent: string,
    verb: "prepare" | "view" = "prepare",
  ): Promise<ContainerdMount[]> => {
    const out = (await containerd.ctr(["-n", NS, "snapshots", verb, "--mounts", `k${++seq}`, parent])).stdout;
    const mounts = JSON.parse(out) as { Type: string; Source: string; Options: string[] }[];
    return mounts.map((m) => ({ type: m.Type, source: m.Source, options: m.Options }));
  };

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-rootfs-"));
    containerd = await PrivateContainerd.start();
    cache = await ErofsCache.open({ dir: path.join(dir, "cache") });

    const l1 = path.join(dir, "l1");
    const l2 = path.join(dir, "l2");
    await mkdir(path.join(l1, "data", "opaque"), { recursive: true });
    await mkdir(path.join(l1, "etc"), { recursive: true });
    await writeFile(path.join(l1, "data", "a.txt"), "A1\n");
    await writeFile(path.join(l1, "data", "keep.txt"), "K\n");
    await writeFile(path.join(l1, "data", "opaque", "old.txt"), "old\n");
    await writeFile(path.join(l1, "etc", "gone"), "here\n");
    await mkdir(path.join(l2, "data", "opaque"), { recursive: true });
    await mkdir(path.join(l2, "etc"), { recursive: true });
    await writeFile(path.join(l2, "data", "a.txt"), "A2\n");
    await writeFile(path.join(l2, "etc", ".wh.gone"), "");
    await writeFile(path.join(l2, "data", "opaque", ".wh..wh..opq"), "");
    await writeFile(path.join(l2, "data", "opaque", "new.txt"), "new\n");
    layered = await buildBusyboxImage({
      archivePath: path.join(dir, "layered.tar"),
      name: "docker.io/cloudhv-test/layered:1",
      extraLayers: [l1, l2],
    });
    big = await buildBusyboxImage({
      archivePath: path.join(dir, "big.tar"),
      name: "docker.io/cloudhv-test/big:1",
      bigFileMb: 100,
    });
    await importOciArchive(containerd, layered.archivePath, { namespace: NS });
    await importOciArchive(containerd, big.archivePath, { namespace: NS });
  });

  afterEach(async () => {
    assert.deepEqual(await mountPointsUnder(dir), []);
    assert.deepEqual(await mountPointsUnder(containerd.dir), []);
    const loops = (await execOk(["losetup", "-a"])).stdout;
    assert.ok(!loops.includes(dir), `loop devices left: ${loops}`);
    assert.deepEqual(await readdir(path.join(dir, "cache", "tmp")), []);
    const leftovers = (await readdir(path.join(dir, "cache"))).filter(
      (n) => n.includes(".tmp.") || n.includes(".lock"),
    );
    assert.deepEqual(leftovers, []);
  });

  after(async () => {
    await cache?.close();
    await containerd?.stop();
    if (dir && (await mountPointsUnder(dir)).length === 0) await rm(dir, { recursive: true, force: true });
  });

  it("turns a container snapshot's overlay mounts into an erofs image of the merged image", async (t) => {
    const mounts = await prepare(chainId(layered.layers.map((l) => l.diffId)));
    const source = parseRootfsMounts(mounts);
    assert.equal(source.lowerDirs.length, 4);
    assert.ok(source.upperDir && !source.readOnly);

    const started = performance.now();
    using image = await cache.acquire(source);
    t.diagnostic(
      `small image (4 layers, ${(image.sizeBytes / 2 ** 20).toFixed(1)} MiB) miss: ${(performance.now() - started).toFixed(1)} ms`,
    );
    assert.equal(image.hit, false);
    await withImageMounted(image.path, dir, async (fs) => {
      assert.equal(await readFile(path.join(fs, "data", "a.txt"), "utf8"), "A2\n"); // top layer wins
      assert.equal(await readFile(path.join(fs, "data", "keep.txt"), "utf8"), "K\n");
      assert.deepEqual(await readdir(path.join(fs, "data", "opaque")), ["new.txt"]); // opaque dir
      assert.ok(!(await readdir(path.join(fs, "etc"))).includes("gone")); // whiteout
      assert.equal(await readFile(path.join(fs, "etc", "cloudhv-image"), "utf8"), `${layered.name}\n`);
      // The image is a working root: its busybox runs in it.
      const out = await execOk(["chroot", fs, "/bin/sh", "-c", "echo hi from $(cat /etc/cloudhv-image)"]);
      assert.equal(out.stdout, `hi from ${layered.name}\n`);
    });
  });

  it("hits for a second container of the same image", async (t) => {
    const source = parseRootfsMounts(await prepare(chainId(layered.layers.map((l) => l.diffId))));
    const started = performance.now();
    using image = await cache.acquire(source);
    t.diagnostic(`small image hit: ${(performance.now() - started).toFixed(2)} ms`);
    assert.equal(image.hit, true);
  });

  it("builds once for 20 containers starting at the same time", async () => {
    const fresh = await ErofsCache.open({ dir: path.join(dir, "cache2") });
    try {
      const parent = chainId(layered.layers.map((l) => l.diffId));
      const sources = await Promise.all(
        Array.from({ length: 20 }, async () => parseRootfsMounts(await prepare(parent))),
      );
      const images = await Promise.all(sources.map((s) => fresh.acquire(s)));
      assert.equal(fresh.stats.builds, 1);
      assert.equal(new Set(images.map((i) => i.path)).size, 1);
      for (const image of images) image.release();
    } finally {
      await fresh.close();
      await rm(path.join(dir, "cache2"), { recursive: true });
    }
  });

  it("reads a one-layer view directly", async () => {
    const mounts = await prepare(layered.layers[0]?.diffId ?? "", "view");
    assert.equal(mounts[0]?.type, "bind");
    using image = await cache.acquire(parseRootfsMounts(mounts));
    await withImageMounted(image.path, dir, async (fs) => {
      assert.ok((await stat(path.join(fs, "bin", "busybox"))).size > 1e6);
      assert.ok(!(await readdir(path.join(fs, "etc"))).includes("cloudhv-image"));
    });
  });

  it("builds a ~100 MB image and hits it", async (t) => {
    const source = parseRootfsMounts(await prepare(chainId(big.layers.map((l) => l.diffId))));
    let started = performance.now();
    const miss = await cache.acquire(source);
    const missMs = performance.now() - started;
    started = performance.now();
    const hit = await cache.acquire(source);
    const hitMs = performance.now() - started;
    t.diagnostic(
      `big image (${(miss.sizeBytes / 2 ** 20).toFixed(1)} MiB) miss: ${missMs.toFixed(0)} ms, hit: ${hitMs.toFixed(2)} ms`,
    );
    assert.equal(miss.hit, false);
    assert.equal(hit.hit, true);
    assert.ok(miss.sizeBytes > 100 * 2 ** 20);
    await withImageMounted(miss.path, dir, async (fs) => {
      assert.equal((await stat(path.join(fs, "data", "big.bin"))).size, 100 * 2 ** 20);
    });
    miss.release();
    hit.release();
  });

  it("refuses a snapshot with no image layers, by name", async () => {
    const source = parseRootfsMounts(await prepare(""));
    assert.deepEqual(source.lowerDirs, []);
    await assert.rejects(cache.acquire(source), /has no read-only layers/);
  });
});
