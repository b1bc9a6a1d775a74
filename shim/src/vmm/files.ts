// File checks both drivers make before they start a VMM, so a missing file is an error that
// names it rather than a VMM that exits with its own words.
import { access, constants, lstat, stat, unlink } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { precondition } from "../errors.js";
import { checkDiskSerial, type VmConfig } from "./types.js";

/** Resolves a binary the way spawn would (a path, or a name looked up on PATH); undefined if absent. */
export async function findExecutable(nameOrPath: string): Promise<string | undefined> {
  const candidates = nameOrPath.includes("/")
    ? [nameOrPath]
    : (process.env.PATH ?? "")
        .split(":")
        .filter(Boolean)
        .map((dir) => path.join(dir, nameOrPath));
  for (const file of candidates) {
    try {
      await access(file, constants.X_OK);
      if ((await stat(file)).isFile()) return file;
    } catch {
      // next
    }
  }
  return undefined;
}

export async function assertReadable(file: string, what: string): Promise<void> {
  try {
    await access(file, constants.R_OK);
  } catch (err) {
    throw precondition(`${what} ${file} is not readable: ${(err as NodeJS.ErrnoException).code}`);
  }
}

/** Everything a VM boots from: kernel, rootfs, initramfs, disks (and their serials). */
export async function assertBootFiles(config: VmConfig): Promise<void> {
  await assertReadable(config.kernelPath, "guest kernel");
  await assertReadable(config.rootfsPath, "guest rootfs image");
  if (config.initrdPath) await assertReadable(config.initrdPath, "guest initramfs");
  for (const disk of config.disks ?? []) {
    checkDiskSerial(disk.serial);
    await assertReadable(disk.path, `disk ${disk.serial}`);
  }
}

export async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

/** True when something accepts connections on the unix socket `p` (a live VMM's socket). */
export function socketAnswers(p: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.createConnection({ path: p });
    const done = (live: boolean) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(live);
    };
    // A listener whose accept queue is full does not answer at once: that is still alive.
    const timer = setTimeout(() => done(true), timeoutMs);
    sock.once("connect", () => done(true));
    sock.once("error", () => done(false));
  });
}

/**
 * Makes a VM's own state dir ready for a new VMM: the dir must be a real directory owned by
 * us (never a symlink: everything in it is trusted by name), and each of `names` (the files
 * the VMM creates there) is removed if a previous VMM left it behind, since a VMM refuses to
 * bind a socket path that exists. Only those names, only inside the dir, with lstat/unlink:
 * a symlink is removed, never followed. A socket something still answers on belongs to a live
 * VMM and is refused, not taken over. Returns the names removed.
 */
export async function clearStaleVmFiles(dir: string, names: readonly string[]): Promise<string[]> {
  const st = await lstat(dir);
  if (!st.isDirectory())
    throw precondition(`VM state dir ${dir} is not a directory (a symlink or a file); remove it`);
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid)
    throw precondition(`VM state dir ${dir} is owned by uid ${st.uid}, not ${uid}; remove it`);
  const removed: string[] = [];
  for (const name of names) {
    if (name.includes("/") || name === "." || name === "..")
      throw new Error(`clearStaleVmFiles: ${name} is not a plain file name`);
    const file = path.join(dir, name);
    let entry: Awaited<ReturnType<typeof lstat>>;
    try {
      entry = await lstat(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") continue;
      throw err;
    }
    if (entry.isDirectory())
      throw precondition(`${file} is a directory where the VMM puts a file; remove it`);
    if (entry.isSocket() && (await socketAnswers(file)))
      throw precondition(
        `${file} is in use by a running process (a VMM from an earlier start?); stop it before this VM starts`,
      );
    await unlink(file);
    removed.push(name);
  }
  return removed;
}
