// Read-only erofs images of a container's merged image layers, built once per layer chain and
// shared by every container (and VM) that uses the chain.
//
// Cache directory layout (all names are ours; anything else is left alone):
//   <key>.erofs                       a finished image, only ever created by rename
//   <key>.erofs.tmp.<pid>.<rand>      an image being written
//   <key>.lock, <key>.lock.<pid>.<rand>  the build lock, and the file it is linked from
//   tmp/<pid>.<rand>/merged           where a build mounts the layers as one overlay
//
// Correctness never depends on the lock: a finished image appears only by an atomic rename of
// a complete, fsynced file, and two builds of one key produce equivalent images. The lock
// (an O_EXCL-style link, with owner pid + start time so a dead owner is detected) only saves
// duplicate work between processes; within a process one build promise per key is shared.
import { createHash, randomBytes } from "node:crypto";
import {
  link,
  mkdir,
  mkdtemp,
  open,
  readdir,
  readFile,
  rename,
  rmdir,
  stat,
  unlink,
  utimes,
  writeFile,
} from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { ExecError, execOk } from "../util/exec.js";
import { log } from "../util/log.js";
import { RootfsError } from "./errors.js";
import { mountPointsUnder } from "./mountinfo.js";
import type { RootfsSource } from "./mounts.js";

export const DEFAULT_CACHE_DIR = "/var/lib/cloudhv/cache";

/** Bump when the image layout or the way it is built changes: old images stop matching. */
export const EROFS_CACHE_FORMAT = 1;

/**
 * Uncompressed by default. Measured here (mkfs.erofs 1.5, warm page cache): a 100 MB tree of
 * real files builds in 0.25 s uncompressed vs 0.33 s with lz4 (54% of the size); 100 MB of
 * incompressible data in 0.15 s vs 1.9 s. Uncompressed also costs the guest no decompression
 * (slow under TCG) and needs no EROFS_FS_ZIP in the guest kernel; the price is disk space.
 */
export type ErofsCompression = "none" | "lz4" | "lz4hc";

export interface ErofsCacheOptions {
  /** Default DEFAULT_CACHE_DIR. */
  dir?: string;
  /** Default "none". Part of the key: changing it builds new images. */
  compression?: ErofsCompression;
  /** Default "mkfs.erofs". */
  mkfsBinary?: string;
  /** Limit for one build (mount + mkfs), and for waiting on another process's build. Default 10 min. */
  buildTimeoutMs?: number;
  /** fsync each image before it gets its final name (default true): a crash never leaves a torn image. */
  durable?: boolean;
}

export interface ErofsImage extends Disposable {
  /** The image file; hand it to the VMM read-only. */
  readonly path: string;
  readonly key: string;
  /** True when the image was already built when asked for. */
  readonly hit: boolean;
  readonly sizeBytes: number;
  /** Drops this reference (idempotent). Only unreferenced images can be evicted. */
  release(): void;
}

export interface EvictResult {
  /** Keys removed, least recently used first. */
  removed: string[];
  freedBytes: number;
  /** What the cache holds afterwards (finished images only). */
  totalBytes: number;
}

export interface CacheEntry {
  key: string;
  path: string;
  sizeBytes: number;
  lastUsedMs: number;
  references: number;
}

export interface ErofsCacheStats {
  /** Images this process built. */
  builds: number;
  /** Acquires that found the image ready. */
  hits: number;
  /** Acquires that built or waited for a build. */
  misses: number;
}

const IMAGE_RE = /^([0-9a-f]{64})\.erofs$/;
const TEMP_IMAGE_RE = /^[0-9a-f]{64}\.erofs\.tmp\.(\d+)\.[0-9a-f]+$/;
const TEMP_LOCK_RE = /^[0-9a-f]{64}\.lock\.(\d+)\.[0-9a-f]+$/;
const LOCK_RE = /^[0-9a-f]{64}\.lock$/;
const TEMP_DIR_RE = /^(\d+)\.[A-Za-z0-9]+$/;

/** Longest `-o` string handed to mount(2) (one page, less room for the other options). */
const MAX_MOUNT_OPTIONS = 4000;

export class ErofsCache implements AsyncDisposable {
  readonly dir: string;
  private readonly tmpDir: string;
  private readonly refs = new Map<string, number>();
  /** Per key: the in-flight "make sure the image exists" (ours or waiting on another process). */
  private readonly ensuring = new Map<string, Promise<{ built: boolean }>>();
  private readonly evicting = new Map<string, Promise<void>>();
  private evictChain: Promise<unknown> = Promise.resolve();
  private readonly counters: ErofsCacheStats = { builds: 0, hits: 0, misses: 0 };
  private closed = false;

  private constructor(
    dir: string,
    private readonly compression: ErofsCompression,
    private readonly mkfsBinary: string,
    private readonly buildTimeoutMs: number,
    private readonly durable: boolean,
  ) {
    this.dir = dir;
    this.tmpDir = path.join(dir, "tmp");
  }

  /** Opens (creating) the cache directory and clears what dead builders left behind. */
  static async open(opts: ErofsCacheOptions = {}): Promise<ErofsCache> {
    const cache = new ErofsCache(
      path.resolve(opts.dir ?? DEFAULT_CACHE_DIR),
      opts.compression ?? "none",
      opts.mkfsBinary ?? "mkfs.erofs",
      opts.buildTimeoutMs ?? 600_000,
      opts.durable ?? true,
    );
    await mkdir(cache.tmpDir, { recursive: true, mode: 0o700 });
    await cache.sweep();
    return cache;
  }

  get stats(): Readonly<ErofsCacheStats> {
    return { ...this.counters };
  }

  /** References this process holds on `key`. */
  references(key: string): number {
    return this.refs.get(key) ?? 0;
  }

  imagePath(key: string): string {
    return path.join(this.dir, `${key}.erofs`);
  }

  /**
   * The cache key of a layer chain: each lower directory's path, device, inode and ctime (so a
   * snapshot id that containerd reuses for different content cannot return a stale image), the
   * build format and the compression.
   */
  async keyOf(source: RootfsSource): Promise<string> {
    if (source.lowerDirs.length === 0) {
      throw new RootfsError(
        "InvalidArgument",
        "erofs cache: the rootfs has no read-only layers to build an image from",
      );
    }
    const hash = createHash("sha256").update(`cloudhv-erofs\0${EROFS_CACHE_FORMAT}\0${this.compression}\0`);
    for (const dir of source.lowerDirs) {
      let st: Awaited<ReturnType<typeof statBig>>;
      try {
        st = await statBig(dir);
      } catch (err) {
        if (isErrno(err, "ENOENT"))
          throw new RootfsError("NotFound", `erofs cache: layer directory ${dir} does not exist`);
        throw err;
      }
      if (!st.isDirectory())
        throw new RootfsError("InvalidArgument", `erofs cache: layer ${dir} is not a directory`);
      hash.update(`${dir}\0${st.dev}\0${st.ino}\0${st.ctimeNs}\n`);
    }
    return hash.digest("hex");
  }

  /**
   * A reference on an image a VM already uses (a previous daemon built or found it): kept from
   * eviction until released. The key comes from a record on disk, so its form is checked.
   */
  adopt(key: string): ErofsImage {
    if (!/^[0-9a-f]{64}$/.test(key))
      throw new RootfsError("InvalidArgument", `erofs cache: bad key "${key}"`);
    this.refs.set(key, this.references(key) + 1);
    return this.handle(key, this.imagePath(key), true, 0);
  }

  /** An image of the merged lower layers of `source`, built if needed; release it when done. */
  async acquire(source: RootfsSource): Promise<ErofsImage> {
    if (this.closed) throw new RootfsError("Unavailable", "erofs cache: closed");
    const key = await this.keyOf(source);
    for (let attempt = 1; ; attempt++) {
      for (let ev = this.evicting.get(key); ev; ev = this.evicting.get(key)) await ev;
      // From here to the first await nothing can run, so evict() sees the reference.
      this.refs.set(key, this.references(key) + 1);
      try {
        let ensure = this.ensuring.get(key);
        if (!ensure) {
          ensure = this.ensure(key, source.lowerDirs);
          this.ensuring.set(key, ensure);
          const mine = ensure;
          const clear = () => {
            if (this.ensuring.get(key) === mine) this.ensuring.delete(key);
          };
          mine.then(clear, clear);
        }
        const { built } = await ensure;
        const file = this.imagePath(key);
        const now = new Date();
        await utimes(file, now, now); // LRU order for evict()
        const { size } = await stat(file);
        if (built) this.counters.misses++;
        else this.counters.hits++;
        return this.handle(key, file, !built, size);
      } catch (err) {
        this.unref(key);
        // Another process evicted the image between our check and our touch: build it again.
        if (isErrno(err, "ENOENT") && attempt < 3) continue;
        throw err;
      }
    }
  }

  /**
   * Removes least-recently-used images that nobody in this process references until the cache
   * holds at most `budgetBytes`. Images being built or referenced are never removed.
   */
  evict(budgetBytes: number): Promise<EvictResult> {
    const run = this.evictChain.then(() => this.evictNow(budgetBytes));
    this.evictChain = run.catch(() => undefined);
    return run;
  }

  /** Finished images, least recently used first. */
  async entries(): Promise<CacheEntry[]> {
    const entries: CacheEntry[] = [];
    for (const name of await readdir(this.dir)) {
      const key = IMAGE_RE.exec(name)?.[1];
      if (!key) continue;
      try {
        const st = await stat(path.join(this.dir, name));
        entries.push({
          key,
          path: path.join(this.dir, name),
          sizeBytes: st.size,
          lastUsedMs: st.mtimeMs,
          references: this.references(key),
        });
      } catch (err) {
        if (!isErrno(err, "ENOENT")) throw err;
      }
    }
    return entries.sort((a, b) => a.lastUsedMs - b.lastUsedMs || a.key.localeCompare(b.key));
  }

  /** Refuses new acquires and waits for builds in flight. Images stay on disk. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.ensuring.values(), this.evictChain]);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  private handle(key: string, file: string, hit: boolean, sizeBytes: number): ErofsImage {
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      this.unref(key);
    };
    return { path: file, key, hit, sizeBytes, release, [Symbol.dispose]: release };
  }

  private unref(key: string): void {
    const n = this.references(key) - 1;
    if (n > 0) this.refs.set(key, n);
    else this.refs.delete(key);
  }

  private async evictNow(budgetBytes: number): Promise<EvictResult> {
    if (!Number.isFinite(budgetBytes) || budgetBytes < 0) {
      throw new RootfsError(
        "InvalidArgument",
        `erofs cache: eviction budget ${budgetBytes} must be a number of bytes ≥ 0`,
      );
    }
    const entries = await this.entries();
    let totalBytes = entries.reduce((sum, e) => sum + e.sizeBytes, 0);
    const removed: string[] = [];
    let freedBytes = 0;
    for (const entry of entries) {
      if (totalBytes <= budgetBytes) break;
      // Checked and marked without an await in between: acquire() waits for the mark.
      if (this.references(entry.key) > 0 || this.ensuring.has(entry.key)) continue;
      const gone = unlink(entry.path).catch((err: unknown) => {
        if (!isErrno(err, "ENOENT")) throw err;
      });
      const mark = gone.then(
        () => undefined,
        () => undefined,
      );
      this.evicting.set(entry.key, mark);
      try {
        await gone;
      } finally {
        this.evicting.delete(entry.key);
      }
      totalBytes -= entry.sizeBytes;
      freedBytes += entry.sizeBytes;
      removed.push(entry.key);
      log.info({ key: entry.key, bytes: entry.sizeBytes }, "erofs cache: evicted image");
    }
    return { removed, freedBytes, totalBytes };
  }

  /** Makes sure `<key>.erofs` exists: it is there, another process builds it, or we build it. */
  private async ensure(key: string, lowerDirs: readonly string[]): Promise<{ built: boolean }> {
    const file = this.imagePath(key);
    if (await exists(file)) return { built: false };
    const lockPath = path.join(this.dir, `${key}.lock`);
    const deadline = Date.now() + this.buildTimeoutMs;
    let waited = false;
    for (;;) {
      if (await exists(file)) return { built: waited };
      if (await takeLock(lockPath)) break;
      const owner = await readLockOwner(lockPath);
      if (owner && !(await isAlive(owner))) {
        log.warn({ key, owner }, "erofs cache: removing the lock of a dead builder");
        await unlinkIfOwnedBy(lockPath, owner);
        continue;
      }
      if (Date.now() > deadline) {
        throw new RootfsError(
          "Unavailable",
          `erofs cache: waited ${this.buildTimeoutMs} ms for process ${owner?.pid ?? "?"} to build image ${key}`,
        );
      }
      waited = true;
      await sleep(50);
    }
    try {
      // The previous holder may have finished between our check and our lock.
      if (await exists(file)) return { built: waited };
      await this.build(key, lowerDirs);
      return { built: true };
    } finally {
      await unlinkIfOwnedBy(lockPath, await ownLockOwner());
    }
  }

  private async build(key: string, lowerDirs: readonly string[]): Promise<void> {
    const started = performance.now();
    const file = this.imagePath(key);
    const temp = `${file}.tmp.${process.pid}.${randomBytes(4).toString("hex")}`;
    let workDir: string | undefined;
    let mountPoint: string | undefined;
    let mounted = false;
    let failure: unknown;
    try {
      let tree = lowerDirs[0] as string;
      if (lowerDirs.length > 1) {
        workDir = await mkdtemp(path.join(this.tmpDir, `${process.pid}.`));
        mountPoint = path.join(workDir, "merged");
        await mkdir(mountPoint);
        await mountOverlay(lowerDirs, mountPoint, this.buildTimeoutMs);
        mounted = true;
        tree = mountPoint;
      }
      const compress = this.compression === "none" ? [] : [`-z${this.compression}`];
      await execOk([this.mkfsBinary, "--quiet", "--preserve-mtime", ...compress, temp, tree], {
        timeoutMs: this.buildTimeoutMs,
      });
      if (this.durable) await fsyncFile(temp);
      await rename(temp, file);
      if (this.durable) await fsyncFile(this.dir);
      this.counters.builds++;
      log.info(
        { key, layers: lowerDirs.length, ms: Math.round(performance.now() - started) },
        "erofs cache: built image",
      );
    } catch (err) {
      failure = err;
      await unlink(temp).catch(() => undefined);
      if (err instanceof RootfsError) throw err;
      throw new RootfsError(
        "Unavailable",
        `erofs cache: building image ${key} from ${lowerDirs.length} layer(s) (top ${lowerDirs[0]}) failed: ${
          err instanceof Error ? err.message : String(err)
        }`,
        { cause: err },
      );
    } finally {
      if (mounted && mountPoint) await unmount(mountPoint);
      if (mountPoint) await removeEmptyDir(mountPoint, failure);
      if (workDir) await removeEmptyDir(workDir, failure);
    }
  }

  /** Clears temp images, temp dirs (unmounting what is mounted there) and locks of dead processes. */
  private async sweep(): Promise<void> {
    for (const name of await readdir(this.dir)) {
      const full = path.join(this.dir, name);
      const pid = TEMP_IMAGE_RE.exec(name)?.[1] ?? TEMP_LOCK_RE.exec(name)?.[1];
      if (pid !== undefined) {
        if (!pidAlive(Number(pid))) await unlink(full).catch(() => undefined);
      } else if (LOCK_RE.test(name)) {
        const owner = await readLockOwner(full);
        if (owner && !(await isAlive(owner))) await unlinkIfOwnedBy(full, owner);
      }
    }
    for (const name of await readdir(this.tmpDir)) {
      const pid = TEMP_DIR_RE.exec(name)?.[1];
      if (pid === undefined || pidAlive(Number(pid))) continue;
      const dir = path.join(this.tmpDir, name);
      for (const mountPoint of await mountPointsUnder(dir)) await unmount(mountPoint);
      log.info({ dir }, "erofs cache: removing a dead build's temp dir");
      await removeEmptyDir(path.join(dir, "merged"), undefined).catch(() => undefined);
      await removeEmptyDir(dir, undefined).catch(() => undefined);
    }
  }
}

/** Mounts `lowerDirs` (topmost first) as one read-only overlay at `target`. */
async function mountOverlay(lowerDirs: readonly string[], target: string, timeoutMs: number): Promise<void> {
  for (const dir of lowerDirs) {
    if (/[:,\\]/.test(dir)) {
      throw new RootfsError(
        "InvalidArgument",
        `erofs cache: layer path ${dir} contains ':', ',' or '\\', which overlay options cannot carry`,
      );
    }
  }
  let options = `ro,lowerdir=${lowerDirs.join(":")}`;
  let cwd: string | undefined;
  if (options.length > MAX_MOUNT_OPTIONS) {
    // containerd's trick: paths relative to their common parent, resolved by the kernel
    // against the cwd of the mounting process.
    cwd = commonParent(lowerDirs);
    const base = cwd;
    options = `ro,lowerdir=${lowerDirs.map((d) => path.relative(base, d)).join(":")}`;
    if (options.length > MAX_MOUNT_OPTIONS) {
      throw new RootfsError(
        "InvalidArgument",
        `erofs cache: ${lowerDirs.length} layers do not fit one overlay mount (options ${options.length} bytes > ${MAX_MOUNT_OPTIONS})`,
      );
    }
  }
  try {
    await execOk(["mount", "-t", "overlay", "overlay", "-o", options, target], {
      timeoutMs: Math.min(timeoutMs, 60_000),
      ...(cwd ? { cwd } : {}),
    });
  } catch (err) {
    if (!(err instanceof ExecError)) throw err;
    throw new RootfsError(
      "Unavailable",
      `erofs cache: mounting ${lowerDirs.length} layers as a read-only overlay failed: ${err.message}`,
      { cause: err },
    );
  }
}

/** Unmounts, falling back to a lazy detach so the directory can always be removed. */
async function unmount(mountPoint: string): Promise<void> {
  try {
    await execOk(["umount", mountPoint]);
  } catch (err) {
    log.warn({ mountPoint, err: String(err) }, "erofs cache: umount failed; detaching lazily");
    await execOk(["umount", "-l", mountPoint]);
  }
}

/** rmdir, never a recursive remove: a directory with a mount below it must not be emptied. */
async function removeEmptyDir(dir: string, failure: unknown): Promise<void> {
  try {
    await rmdir(dir);
  } catch (err) {
    if (isErrno(err, "ENOENT")) return;
    log.error({ dir, err: String(err) }, "erofs cache: could not remove a temp dir");
    if (failure === undefined) throw err;
  }
}

function commonParent(dirs: readonly string[]): string {
  let parent = path.dirname(dirs[0] as string);
  while (!dirs.every((d) => d.startsWith(`${parent}/`)) && parent !== "/") parent = path.dirname(parent);
  return parent;
}

async function fsyncFile(file: string): Promise<void> {
  const fh = await open(file, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

// ---- the cross-process build lock ------------------------------------------------------

interface LockOwner {
  pid: number;
  /** /proc/<pid>/stat start time: tells a live owner from a recycled pid. */
  startTime: string;
}

let ownOwner: LockOwner | undefined;
async function ownLockOwner(): Promise<LockOwner> {
  ownOwner ??= { pid: process.pid, startTime: (await processStartTime(process.pid)) ?? "0" };
  return ownOwner;
}

/** Creates `lockPath` with our identity in it, atomically (link fails if it exists). */
async function takeLock(lockPath: string): Promise<boolean> {
  const owner = await ownLockOwner();
  const temp = `${lockPath}.${owner.pid}.${randomBytes(4).toString("hex")}`;
  await writeFile(temp, `${owner.pid} ${owner.startTime}\n`, { mode: 0o600 });
  try {
    await link(temp, lockPath);
    return true;
  } catch (err) {
    if (isErrno(err, "EEXIST")) return false;
    throw err;
  } finally {
    await unlink(temp).catch(() => undefined);
  }
}

async function readLockOwner(lockPath: string): Promise<LockOwner | undefined> {
  try {
    const [pid, startTime] = (await readFile(lockPath, "utf8")).trim().split(" ");
    if (!pid || !startTime || !/^\d+$/.test(pid)) return { pid: 0, startTime: "corrupt" };
    return { pid: Number(pid), startTime };
  } catch (err) {
    if (isErrno(err, "ENOENT")) return undefined;
    throw err;
  }
}

async function unlinkIfOwnedBy(lockPath: string, owner: LockOwner): Promise<void> {
  const current = await readLockOwner(lockPath);
  if (current && current.pid === owner.pid && current.startTime === owner.startTime) {
    await unlink(lockPath).catch(() => undefined);
  }
}

async function isAlive(owner: LockOwner): Promise<boolean> {
  if (owner.pid <= 0) return false;
  return (await processStartTime(owner.pid)) === owner.startTime;
}

async function processStartTime(pid: number): Promise<string | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    // Fields after the command (which may hold spaces) start at field 3; start time is field 22.
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return isErrno(err, "EPERM");
  }
}

// ---- small helpers ---------------------------------------------------------------------------

function statBig(file: string) {
  return stat(file, { bigint: true });
}

async function exists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch (err) {
    if (isErrno(err, "ENOENT")) return false;
    throw err;
  }
}

function isErrno(err: unknown, code: string): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === code;
}
