// Removing a directory cloudhv created, with its content, without ever removing what is not
// cloudhv's: the directory must still be the one cloudhv made (a real directory, not a mount
// point, carrying the marker the installer or the shim wrote when it created it), and the walk
// never follows a symlink, never enters another filesystem and never enters anything mounted
// below it (a pod's volume bind that a dead daemon left in state_dir is the user's data).
// What it leaves is reported, with the reason.
import { lstat, readdir, realpath, rmdir, unlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { CREATED_MARKER, mountPointsUnder } from "@cloudhv/shim";

export { CREATED_MARKER };

export interface RemoveOutcome {
  /** The directory is gone (or was not there). */
  removed: boolean;
  /** What stayed, each with why (paths as this process sees them). */
  kept: Array<{ path: string; reason: string }>;
}

async function lstatOrUndefined(p: string) {
  try {
    return await lstat(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}

/** Why `dir` (this process's path) cannot be taken as cloudhv's, or undefined when it can. */
export async function notOurs(dir: string, mounts: readonly string[]): Promise<string | undefined> {
  const st = await lstatOrUndefined(dir);
  if (!st) return undefined;
  if (!st.isDirectory()) return "it is not a directory any more (a symlink or a file is there now)";
  if (mounts.includes(dir)) return "a filesystem is mounted on it: it is not the directory cloudhv created";
  const parent = await lstat(path.dirname(dir));
  if (parent.dev !== st.dev) return "it is on another filesystem than its parent (a mount point)";
  const marker = await lstatOrUndefined(path.join(dir, CREATED_MARKER));
  if (!marker?.isFile())
    return `it has no ${CREATED_MARKER} marker: not the directory cloudhv created (made again, or replaced, since)`;
  return undefined;
}

/** Marks `dir` (this process's path) as cloudhv's, if it is a real directory and nothing is mounted on it. */
export async function markCreated(dir: string): Promise<boolean> {
  const st = await lstatOrUndefined(dir);
  if (!st?.isDirectory()) return false;
  const parent = await lstat(path.dirname(dir));
  const real = await realpath(dir);
  if (parent.dev !== st.dev || (await mountPointsUnder(real)).includes(real)) return false;
  await writeFile(
    path.join(dir, CREATED_MARKER),
    "created by cloudhv: uninstall removes this directory with its content\n",
    { mode: 0o644 },
  );
  return true;
}

/**
 * Removes `dir` and its content if it is cloudhv's (see notOurs; `requireMarker: false` for a
 * directory the installer's own state file proves, /opt/cloudhv). Keeps mount points, other
 * filesystems and what is under them.
 */
export async function removeOwnedTree(dir: string, opts: { requireMarker: boolean }): Promise<RemoveOutcome> {
  const st = await lstatOrUndefined(dir);
  if (!st) return { removed: true, kept: [] };
  // mountinfo names real paths: a symlink among the ancestors (/var/lib → /data) is resolved.
  const real = await realpath(dir);
  const mounts = (await mountPointsUnder(real)).map((m) => path.join(dir, path.relative(real, m)));
  let refusal = await notOurs(dir, mounts);
  if (refusal?.includes(CREATED_MARKER) && !opts.requireMarker) refusal = undefined;
  if (refusal) return { removed: false, kept: [{ path: dir, reason: refusal }] };
  const kept: RemoveOutcome["kept"] = [];
  /** Empties `d` (a directory on `dev`); true when everything in it went. */
  const walk = async (d: string): Promise<boolean> => {
    let all = true;
    for (const entry of await readdir(d, { withFileTypes: true })) {
      const p = path.join(d, entry.name);
      // A mount point stays; a directory holding one is walked and keeps only the path to it.
      if (mounts.includes(p)) {
        kept.push({
          path: p,
          reason: "something is mounted there (a pod volume?): unmount it, then remove it",
        });
        all = false;
        continue;
      }
      if (!entry.isDirectory()) {
        await unlink(p).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== "ENOENT") throw err;
        });
        continue;
      }
      const sub = await lstat(p);
      if (sub.dev !== st.dev) {
        kept.push({ path: p, reason: "another filesystem is there" });
        all = false;
        continue;
      }
      if (await walk(p)) await rmdir(p);
      else all = false;
    }
    return all;
  };
  const all = await walk(dir);
  if (all) await rmdir(dir);
  return { removed: all, kept };
}
