// Turns containerd's rootfs mounts into a container's disks (the VM boots with them, or they are
// hot-plugged into a running pod): a cached read-only erofs image of the image layers and a
// per-container sparse ext4 scratch disk for its writes.
import { createHash } from "node:crypto";
import { mkdir, rm } from "node:fs/promises";
import path from "node:path";
import type { RuntimeConfig } from "../config.js";
import type { Mount } from "../containerd/publisher.js";
import { invalid } from "../errors.js";
import { ErofsCache } from "../rootfs/erofs-cache.js";
import { parseRootfsMounts } from "../rootfs/mounts.js";
import { createScratchDisk } from "../rootfs/scratch.js";
import type { RootfsRecord } from "../state/records.js";
import { log } from "../util/log.js";
import type { DiskSpec } from "../vmm/types.js";

export interface PreparedRootfs {
  /** Disks the VM needs for this container (image, scratch). */
  disks: DiskSpec[];
  rootfsSerial: string;
  scratchSerial: string;
  cacheHit: boolean;
  /** What a later daemon needs to release these disks (absent for fakes). */
  record?: RootfsRecord;
  release(): Promise<void>;
}

/** Takes over the disks a previous daemon prepared for a container it served. */
export type RootfsAdopter = (record: RootfsRecord) => Promise<PreparedRootfs>;

/** A seam: the daemon uses the erofs cache below; unit tests hand out fake disks. */
export type RootfsPreparer = (
  namespace: string,
  containerId: string,
  mounts: Mount[],
) => Promise<PreparedRootfs>;

/** virtio-blk serials are 20 bytes: a letter for the role and 19 hex digits of the owner. */
function serial(role: "i" | "s", owner: string): string {
  return role + createHash("sha256").update(owner).digest("hex").slice(0, 19);
}

export function erofsRootfsPreparer(config: RuntimeConfig): RootfsPreparer {
  return erofsRootfs(config).prepare;
}

/** Prepares container disks from the node's erofs cache, and adopts those a previous daemon made. */
export function erofsRootfs(config: RuntimeConfig): { prepare: RootfsPreparer; adopt: RootfsAdopter } {
  let cache: Promise<ErofsCache> | undefined;
  const released = async (images: ErofsCache) => {
    const { removed } = await images.evict(config.cache_max_bytes);
    if (removed.length > 0) log.info({ removed }, "evicted cached rootfs images over the budget");
  };
  const adopt: RootfsAdopter = async (record) => {
    cache ??= ErofsCache.open({ dir: config.cache_dir });
    const images = await cache;
    const image = images.adopt(record.imageKey);
    return {
      disks: record.disks,
      rootfsSerial: record.rootfsSerial,
      scratchSerial: record.scratchSerial,
      cacheHit: true,
      record,
      async release() {
        image.release();
        await rm(record.scratchPath, { force: true });
        await released(images);
      },
    };
  };
  const prepare: RootfsPreparer = async (
    namespace,
    containerId,
    mounts: Mount[],
  ): Promise<PreparedRootfs> => {
    if (mounts.length === 0)
      throw invalid(`task ${containerId} has no rootfs mounts (a rootfs in the bundle is not supported)`);
    const source = parseRootfsMounts(mounts);
    if (source.lowerDirs.length === 0) {
      throw invalid(
        `task ${containerId}: the rootfs has no image layers (a writable bind mount alone is not supported)`,
      );
    }
    cache ??= ErofsCache.open({ dir: config.cache_dir });
    const images = await cache;
    const image = await images.acquire(source);
    const owner = `${namespace}/${containerId}`;
    try {
      await mkdir(config.scratch_dir, { recursive: true, mode: 0o700 });
      const scratchPath = path.join(config.scratch_dir, `${serial("s", `${owner}:${Date.now()}`)}.ext4`);
      const scratch = await createScratchDisk(scratchPath, config.scratch_disk_bytes);
      const rootfsSerial = serial("i", `${owner}:${image.key}`);
      const scratchSerial = serial("s", owner);
      return {
        disks: [
          { path: image.path, serial: rootfsSerial, readOnly: true },
          { path: scratch.path, serial: scratchSerial, readOnly: false },
        ],
        rootfsSerial,
        scratchSerial,
        cacheHit: image.hit,
        record: {
          disks: [
            { path: image.path, serial: rootfsSerial, readOnly: true },
            { path: scratch.path, serial: scratchSerial, readOnly: false },
          ],
          rootfsSerial,
          scratchSerial,
          imageKey: image.key,
          scratchPath: scratch.path,
        },
        async release() {
          image.release();
          await scratch.remove();
          await released(images);
        },
      };
    } catch (err) {
      image.release();
      throw err;
    }
  };
  return { prepare, adopt };
}
