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
import { startScratchDisk } from "../rootfs/scratch.js";
import { type BudgetHold, ScratchBudget } from "../rootfs/scratch-budget.js";
import type { RootfsRecord } from "../state/records.js";
import { log } from "../util/log.js";
import type { DiskSpec } from "../vmm/types.js";
import { configScratchSize, type ScratchSize } from "./scratch-size.js";

export interface PreparedRootfs {
  /** Disks the VM needs for this container (image, scratch). */
  disks: DiskSpec[];
  rootfsSerial: string;
  scratchSerial: string;
  cacheHit: boolean;
  /** What a later daemon needs to release these disks (absent for fakes). */
  record?: RootfsRecord;
  /**
   * Set when prepared with `formatLater`: the scratch disk is still being formatted, its content
   * final once this resolves (a guest must not see it before). Rejects with the format's error.
   */
  formatted?: Promise<void>;
  release(): Promise<void>;
}

/**
 * A CRI sandbox run by the guest agent's namespace holder: no image, no disks. Its record (all
 * empty) tells an adopting daemon the same (isNoRootfs).
 */
export function noRootfs(): PreparedRootfs {
  const record: RootfsRecord = {
    disks: [],
    rootfsSerial: "",
    scratchSerial: "",
    imageKey: "",
    scratchPath: "",
    scratchBytes: 0,
  };
  return { disks: [], rootfsSerial: "", scratchSerial: "", cacheHit: true, record, release: async () => {} };
}

export function isNoRootfs(record: RootfsRecord): boolean {
  return record.disks.length === 0 && record.imageKey === "" && record.scratchPath === "";
}

/** Takes over the disks a previous daemon prepared for a container it served. */
export type RootfsAdopter = (record: RootfsRecord) => Promise<PreparedRootfs>;

/** A seam: the daemon uses the erofs cache below; unit tests hand out fake disks. */
export type RootfsPreparer = (
  namespace: string,
  containerId: string,
  mounts: Mount[],
  /** The scratch disk's size (pod/scratch-size.ts); the config's when absent. */
  scratch?: ScratchSize,
  /** Told the scratch file's path before it is made (state/provisional.ts notes it). */
  beforeScratch?: (file: string) => Promise<void>,
  /** Resolve once the scratch file exists at its size, its format still running (`formatted`). */
  opts?: { formatLater?: boolean },
) => Promise<PreparedRootfs>;

/** The scratch file's name inside the container's writable layer directory. */
export const SCRATCH_IN_LAYER = ".cloudhv-scratch.ext4";

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
  const budget = new ScratchBudget(path.join(config.state_dir, "scratch-budget"), config.scratch_budget);
  const released = async (images: ErofsCache) => {
    const { removed } = await images.evict(config.cache_max_bytes);
    if (removed.length > 0) log.info({ removed }, "evicted cached rootfs images over the budget");
  };
  const adopt: RootfsAdopter = async (record) => {
    if (isNoRootfs(record)) return noRootfs();
    cache ??= ErofsCache.open({ dir: config.cache_dir });
    const images = await cache;
    const image = images.adopt(record.imageKey);
    // The dead daemon's budget entries went with it: this disk is entered again as ours.
    const held = await budget.adopt(record.scratchBytes);
    return {
      disks: record.disks,
      rootfsSerial: record.rootfsSerial,
      scratchSerial: record.scratchSerial,
      cacheHit: true,
      record,
      async release() {
        image.release();
        await rm(record.scratchPath, { force: true });
        await held.release();
        await released(images);
      },
    };
  };
  const prepare: RootfsPreparer = async (
    namespace,
    containerId,
    mounts: Mount[],
    scratch?: ScratchSize,
    beforeScratch?: (file: string) => Promise<void>,
    opts: { formatLater?: boolean } = {},
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
    const size = scratch ?? configScratchSize(config);
    let hold: BudgetHold | undefined;
    try {
      hold = await budget.reserve(size.bytes, `container ${containerId} (${size.source})`);
      // In the container's writable layer, the snapshotter's usage of it (which containerd's CRI
      // reports as the writable layer's used_bytes, and kubelet's ephemeral-storage eviction
      // reads) counts what the guest wrote. Without one, in scratch_dir.
      let scratchPath: string;
      if (config.scratch_placement === "writable_layer" && source.upperDir && !source.readOnly) {
        scratchPath = path.join(source.upperDir, SCRATCH_IN_LAYER);
      } else {
        await mkdir(config.scratch_dir, { recursive: true, mode: 0o700 });
        scratchPath = path.join(config.scratch_dir, `${serial("s", `${owner}:${Date.now()}`)}.ext4`);
      }
      await beforeScratch?.(scratchPath);
      const { disk, formatted } = await startScratchDisk(scratchPath, size.bytes);
      if (!opts.formatLater) await formatted;
      const held = hold;
      const rootfsSerial = serial("i", `${owner}:${image.key}`);
      const scratchSerial = serial("s", owner);
      return {
        disks: [
          { path: image.path, serial: rootfsSerial, readOnly: true },
          { path: disk.path, serial: scratchSerial, readOnly: false },
        ],
        rootfsSerial,
        scratchSerial,
        cacheHit: image.hit,
        record: {
          disks: [
            { path: image.path, serial: rootfsSerial, readOnly: true },
            { path: disk.path, serial: scratchSerial, readOnly: false },
          ],
          rootfsSerial,
          scratchSerial,
          imageKey: image.key,
          scratchPath: disk.path,
          scratchBytes: size.bytes,
        },
        ...(opts.formatLater ? { formatted } : {}),
        async release() {
          image.release();
          // No mkfs left writing into a file that is gone.
          await formatted.catch(() => {});
          await disk.remove();
          await held.release();
          await released(images);
        },
      };
    } catch (err) {
      image.release();
      await hold?.release();
      throw err;
    }
  };
  return { prepare, adopt };
}
