// Reads one of kubelet's small managed volumes (configmap, secret, projected, downwardAPI,
// /etc/hosts...) on the host, for a copy into the guest, as an attacker-controlled tree: a
// container sharing the volume's backing store, or whoever can write below it, may swap any
// entry at any moment. Rules (docs/design.md "Volumes"):
// - the volume's root must be on a local filesystem (allow-list), judged from mountinfo before
//   the path is touched and again on the open descriptor, so that a dead network server cannot
//   hang a libuv thread every second;
// - every entry is opened with O_PATH|O_NOFOLLOW relative to its parent's descriptor
//   (`/proc/self/fd/<parent>/<name>`: openat semantics), and its type is the fstat of that
//   descriptor: a directory swapped for a symlink mid-walk cannot redirect the walk, and no
//   device, FIFO or socket is ever opened for reading;
// - regular files are read through their own descriptor (`/proc/self/fd/<fd>`, the inode just
//   checked), at most the size fstat gave; directories are listed through theirs;
// - symlinks are kept as links (never followed on the host) only when relative and pointing
//   down inside the volume, as kubelet's atomic writer makes them (`..data -> ..2026_…`,
//   `key -> ..data/key`);
// - FIFOs, sockets, devices, other filesystems mounted inside, bad links: the copy is refused
//   with a message naming the volume and the entry (never a silent partial copy);
// - byte, entry, depth and name budgets are checked before anything is read.
// The walk is sequential: at most one thread-pool thread is ever busy with one volume.
import { createHash } from "node:crypto";
import { type BigIntStats, constants } from "node:fs";
import { type FileHandle, open, opendir, readFile, readlink, realpath, statfs } from "node:fs/promises";
import path from "node:path";
import type { PutFile } from "../agent/client.js";
import { invalid, type ShimError, truncateUntrusted } from "../errors.js";

/** Kubernetes caps a configmap or secret at 1 MiB; larger trees are not "small". */
export const MAX_COPIED_BYTES = 1024 * 1024;
/** Entries (files, directories, links) in one copied volume. */
export const MAX_COPIED_ENTRIES = 4096;
/** Directory levels below the volume's root. */
export const MAX_COPIED_DEPTH = 16;
/** Bytes of entry paths and link targets together (what the file contents budget does not count). */
export const MAX_COPIED_NAME_BYTES = 256 * 1024;

/** Not in Node's fs.constants; the same value on x86-64 and arm64 Linux. */
const O_PATH = 0o10000000;
const PATH_FLAGS = O_PATH | constants.O_NOFOLLOW | constants.O_NONBLOCK;
const READ_FLAGS = constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY;

/** statfs f_type of the filesystems a copied volume may live on, and their mountinfo names. */
const LOCAL_FILESYSTEMS = new Map<number, string>([
  [0x01021994, "tmpfs"],
  [0x858458f6, "ramfs"],
  [0xef53, "ext2/ext3/ext4"],
  [0x58465342, "xfs"],
  [0x9123683e, "btrfs"],
  [0x794c7630, "overlay"],
  [0xf2f52010, "f2fs"],
  [0x2fc12fc1, "zfs"],
]);
const LOCAL_FS_NAMES = new Set([
  "tmpfs",
  "ramfs",
  "ext2",
  "ext3",
  "ext4",
  "xfs",
  "btrfs",
  "overlay",
  "f2fs",
  "zfs",
]);

/** One entry of a walked volume; `data` only when contents were read. */
interface Walked {
  file: PutFile;
  meta: string;
}

/** The tree changed under the walk (an atomic-writer swap, a rename): try again later. */
export class VolumeChanged extends Error {
  override readonly name = "VolumeChanged";
}

const CHANGED = new Set(["ENOENT", "ELOOP", "ENOTDIR", "ENXIO", "EINVAL"]);

/**
 * Refuses a volume whose path lies on a filesystem outside the allow-list, from
 * /proc/self/mountinfo alone (the path itself is not touched: a dead NFS server hangs a stat).
 */
export async function checkLocalSource(source: string, label: string): Promise<void> {
  const resolved = path.resolve(source);
  let best: { mountPoint: string; fsType: string } | undefined;
  for (const line of (await readFile("/proc/self/mountinfo", "utf8")).split("\n")) {
    const [left, right] = line.split(" - ");
    const mountPoint = left?.split(" ")[4];
    const fsType = right?.split(" ")[0];
    if (!mountPoint || !fsType) continue;
    const point = unescapeMountinfo(mountPoint);
    const inside = point === "/" || resolved === point || resolved.startsWith(`${point}/`);
    // The last of equal mount points is the one on top.
    if (inside && (!best || point.length >= best.mountPoint.length)) best = { mountPoint: point, fsType };
  }
  if (best && !LOCAL_FS_NAMES.has(best.fsType)) throw notLocal(label, `${best.fsType} at ${best.mountPoint}`);
}

/** Reads the volume for PutFiles: the root first, then directories before what they hold. */
export async function collectVolume(source: string, label: string): Promise<PutFile[]> {
  const walked = await walk(source, label, true);
  return walked.map((w) => w.file);
}

/**
 * A digest that changes when any entry's type, inode, size, times, mode or link target does;
 * no contents are read, the budgets hold all the same.
 */
export async function volumeSignature(source: string, label: string): Promise<string> {
  return signatureOf(await walk(source, label, false));
}

function signatureOf(walked: Walked[]): string {
  const hash = createHash("sha256");
  for (const w of walked) hash.update(w.meta).update("\0");
  return hash.digest("hex");
}

/**
 * Reads the volume once and checks that it held still meanwhile (the same signature after the
 * read): the copy is one state of the volume, not a mix of two. Throws VolumeChanged if not.
 */
export async function collectVolumeOnce(
  source: string,
  label: string,
): Promise<{ files: PutFile[]; signature: string }> {
  const walked = await walk(source, label, true);
  const signature = signatureOf(walked);
  if ((await volumeSignature(source, label)) !== signature)
    throw new VolumeChanged(`${label} changed while it was read`);
  return { files: walked.map((w) => w.file), signature };
}

/**
 * Reads the volume, again while it keeps changing under the walk (kubelet swaps `..data`
 * while we read): up to `tries` times, `pauseMs` apart; then refuses it by name.
 */
export async function collectVolumeSettled(
  source: string,
  label: string,
  tries = 5,
  pauseMs = 50,
): Promise<{ files: PutFile[]; signature: string }> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await collectVolumeOnce(source, label);
    } catch (err) {
      if (!(err instanceof VolumeChanged)) throw err;
      if (attempt >= tries)
        throw invalid(`${err.message}, ${tries} times in a row; it is copied only once it holds still`);
      await new Promise((r) => setTimeout(r, pauseMs));
    }
  }
}

interface State {
  label: string;
  read: boolean;
  dev: number;
  bytes: number;
  entries: number;
  names: number;
  out: Walked[];
}

async function walk(source: string, label: string, read: boolean): Promise<Walked[]> {
  // The volume's own path is kubelet's (or the operator's): followed. What is below it is not.
  const root = await realpath(source).catch((err: NodeJS.ErrnoException) => {
    throw invalid(`${label} cannot be read on the host: ${err.code}`);
  });
  const handle = await open(root, PATH_FLAGS).catch((err: NodeJS.ErrnoException) => {
    if (CHANGED.has(err.code ?? "")) throw new VolumeChanged(`${label} changed while it was read`);
    throw invalid(`${label} cannot be read on the host: ${err.code}`);
  });
  try {
    const fs = await statfs(fdPath(handle));
    const fsName = LOCAL_FILESYSTEMS.get(fs.type);
    if (!fsName) throw notLocal(label, `filesystem type 0x${fs.type.toString(16)}`);
    const info = await statBig(handle);
    const state: State = { label, read, dev: Number(info.dev), bytes: 0, entries: 0, names: 0, out: [] };
    await visit(state, handle, info, "", 0);
    return state.out;
  } finally {
    await handle.close();
  }
}

async function visit(
  state: State,
  handle: FileHandle,
  info: BigIntStats,
  rel: string,
  depth: number,
): Promise<void> {
  const mode = Number(info.mode) & 0o7777;
  const meta = `${rel}\0${info.mode}:${info.ino}:${info.size}:${info.mtimeNs}:${info.ctimeNs}`;
  if (info.isDirectory()) {
    if (depth > MAX_COPIED_DEPTH)
      throw refused(state, rel, `is more than ${MAX_COPIED_DEPTH} directories deep`);
    state.out.push({ file: { path: rel, data: Buffer.alloc(0), mode, symlink: "", isDir: true }, meta });
    for (const name of await listNames(state, handle, rel)) {
      const childRel = rel ? `${rel}/${name}` : name;
      await child(state, handle, name, childRel, depth + 1);
    }
    return;
  }
  if (info.isFile()) {
    const size = Number(info.size);
    if (state.bytes + size > MAX_COPIED_BYTES)
      throw invalid(
        `${state.label} holds more than ${MAX_COPIED_BYTES} bytes (${entryName(rel)} alone: ${size}); kubelet's ` +
          `managed volumes (configmaps, secrets, projected, downwardAPI) are copied into the VM up to ` +
          `${MAX_COPIED_BYTES} bytes: make it smaller or mount it as a hostPath (shared by virtio-fs)`,
      );
    state.bytes += size;
    const data = state.read ? await readAt(state, handle, size, rel) : Buffer.alloc(0);
    state.out.push({ file: { path: rel, data, mode, symlink: "", isDir: false }, meta });
    return;
  }
  throw refused(state, rel, `is ${kindOf(info)}`);
}

async function child(state: State, parent: FileHandle, name: string, rel: string, depth: number) {
  if (++state.entries > MAX_COPIED_ENTRIES)
    throw invalid(
      `${state.label} holds more than ${MAX_COPIED_ENTRIES} entries; kubelet's managed volumes are copied ` +
        `into the VM up to that many: mount it as a hostPath instead (shared by virtio-fs)`,
    );
  addName(state, rel);
  // openat(parent, name, O_PATH|O_NOFOLLOW): the parent is the directory already checked, not
  // whatever its path names now; a symlink is opened as itself.
  const childPath = `${fdPath(parent)}/${name}`;
  const handle = await open(childPath, PATH_FLAGS).catch((err: NodeJS.ErrnoException) => {
    if (CHANGED.has(err.code ?? "")) throw new VolumeChanged(`${state.label} changed while it was read`);
    throw refused(state, rel, `cannot be opened: ${err.code}`);
  });
  try {
    const info = await statBig(handle);
    if (Number(info.dev) !== state.dev)
      throw refused(state, rel, "is on another filesystem mounted inside the volume");
    if (info.isSymbolicLink()) {
      // Read by name in the parent; if it was swapped since, the target read is just a string
      // checked like any other (nothing here follows it), and the signature sees the change.
      const target = await readlink(childPath).catch((err: NodeJS.ErrnoException) => {
        if (CHANGED.has(err.code ?? "")) throw new VolumeChanged(`${state.label} changed while it was read`);
        throw refused(state, rel, `cannot be read: ${err.code}`);
      });
      if (!pointsDownInside(target))
        throw refused(
          state,
          rel,
          `is a symlink to ${JSON.stringify(truncateUntrusted(target, 200))}; only relative links to ` +
            `names inside the volume (no "..", as kubelet's atomic writer makes them) are copied`,
        );
      addName(state, target);
      const meta = `${rel}\0link:${info.ino}:${target}`;
      state.out.push({
        file: { path: rel, data: Buffer.alloc(0), mode: 0, symlink: target, isDir: false },
        meta,
      });
      return;
    }
    await visit(state, handle, info, rel, depth);
  } finally {
    await handle.close();
  }
}

async function listNames(state: State, dir: FileHandle, rel: string): Promise<string[]> {
  // opendir through the descriptor: the listing is of the directory checked, read in small
  // batches and stopped at the entry budget (a huge directory is never listed whole).
  const listing = await opendir(fdPath(dir), { bufferSize: 64 }).catch((err: NodeJS.ErrnoException) => {
    throw refused(state, rel, `cannot be listed: ${err.code}`);
  });
  const names: string[] = [];
  try {
    for (let entry = await listing.read(); entry; entry = await listing.read()) {
      if (state.entries + names.length >= MAX_COPIED_ENTRIES) {
        names.push(entry.name);
        break;
      }
      if (entry.name.includes("\uFFFD"))
        throw refused(state, rel ? `${rel}/${entry.name}` : entry.name, "has a name that is not UTF-8");
      names.push(entry.name);
    }
  } finally {
    await listing.close();
  }
  return names.sort();
}

/** Reads at most `size` bytes of a regular file through the descriptor already checked. */
async function readAt(state: State, pathHandle: FileHandle, size: number, rel: string): Promise<Buffer> {
  const file = await open(fdPath(pathHandle), READ_FLAGS).catch((err: NodeJS.ErrnoException) => {
    throw refused(state, rel, `cannot be read: ${err.code}`);
  });
  try {
    const data = Buffer.alloc(size);
    let filled = 0;
    while (filled < size) {
      const { bytesRead } = await file.read(data, filled, size - filled, filled);
      if (bytesRead === 0) break;
      filled += bytesRead;
    }
    return data.subarray(0, filled);
  } finally {
    await file.close();
  }
}

function statBig(handle: FileHandle) {
  return handle.stat({ bigint: true });
}

function addName(state: State, name: string) {
  state.names += Buffer.byteLength(name);
  if (state.names > MAX_COPIED_NAME_BYTES)
    throw invalid(
      `${state.label} has more than ${MAX_COPIED_NAME_BYTES} bytes of names and link targets; ` +
        `mount it as a hostPath instead (shared by virtio-fs)`,
    );
}

/** Relative, and made of plain names only: resolves below the link's own directory. */
export function pointsDownInside(target: string): boolean {
  if (target === "" || target.startsWith("/")) return false;
  return target.split("/").every((part) => part !== "" && part !== "." && part !== "..");
}

function fdPath(handle: FileHandle): string {
  return `/proc/self/fd/${handle.fd}`;
}

function kindOf(info: {
  isFIFO(): boolean;
  isSocket(): boolean;
  isCharacterDevice(): boolean;
  isBlockDevice(): boolean;
}) {
  if (info.isFIFO()) return "a FIFO";
  if (info.isSocket()) return "a socket";
  if (info.isCharacterDevice()) return "a character device";
  if (info.isBlockDevice()) return "a block device";
  return "of an unknown type";
}

function entryName(rel: string): string {
  return rel ? `entry ${JSON.stringify(truncateUntrusted(rel, 200))}` : "the file";
}

function refused(state: State, rel: string, why: string): ShimError {
  return invalid(
    `${state.label}: ${entryName(rel)} ${why}; kubelet's managed volumes are copied into the VM only ` +
      `as regular files, directories and links inside the volume: remove it, or mount the directory ` +
      `as a hostPath (shared by virtio-fs)`,
  );
}

function notLocal(label: string, what: string): ShimError {
  return invalid(
    `${label} is not on a local filesystem (${what}); kubelet's managed volumes are copied into the ` +
      `VM only from ${[...LOCAL_FS_NAMES].join(", ")}: mount it as a hostPath instead (shared by virtio-fs)`,
  );
}

function unescapeMountinfo(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
}
