// Rootfs delivery: containerd's mounts → a cached read-only erofs image of the image layers,
// plus a per-container sparse ext4 scratch disk for the writable layer.
export {
  type CacheEntry,
  DEFAULT_CACHE_DIR,
  EROFS_CACHE_FORMAT,
  ErofsCache,
  type ErofsCacheOptions,
  type ErofsCacheStats,
  type ErofsCompression,
  type ErofsImage,
  type EvictResult,
} from "./erofs-cache.js";
export { RootfsError, type RootfsErrorKind } from "./errors.js";
export { mountPointsUnder } from "./mountinfo.js";
export { type ContainerdMount, parseRootfsMounts, type RootfsSource, splitLowerdir } from "./mounts.js";
export {
  createScratchDisk,
  DEFAULT_SCRATCH_BYTES,
  MIN_SCRATCH_BYTES,
  type ScratchDisk,
  type ScratchOptions,
} from "./scratch.js";
