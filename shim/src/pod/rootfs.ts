// Turns containerd's rootfs mounts into a container's disks (the VM boots with them, or they are
// hot-plugged into a running pod): a cached read-only erofs image of the image layers and a
// per-container sparse ext4 scratch disk for its writes.
import { createHash } from "node:crypto";
import { mkdir } from "node:fs/promises";
import path from "node:path";
import type { RuntimeConfig } from "../config.js";
import type { Mount } from "../containerd/publisher.js";
import { invalid } from "../errors.js";
import { ErofsCache } from "../rootfs/erofs-cache.js";
import { parseRootfsMounts } from "../rootfs/mounts.js";
import { createScratchDisk } from "../rootfs/scratch.js";
import { log } from "../util/log.js";
import type { DiskSpec } from "../vmm/types.js";

export interface PreparedRootfs {
  /** Disks the VM needs for this container (image, scratch). */
  disks: DiskSpec[];
  rootfsSerial: string;
  scratchSerial: string;
  cacheHit: boolean;
  release(): Promise<void>;
}

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
  let cache: Promise<ErofsCache> | undefined;
  return async (namespace, containerId, mounts: Mount[]): Promise<PreparedRootfs> => {
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
        async release() {
          image.release();
          await scratch.remove();
          const { removed } = await images.evict(config.cache_max_bytes);
          if (removed.length > 0) log.info({ removed }, "evicted cached rootfs images over the budget");
        },
      };
    } catch (err) {
      image.release();
      throw err;
    }
  };
}
