// File checks both drivers make before they start a VMM, so a missing file is an error that
// names it rather than a VMM that exits with its own words.
import { access, constants, stat } from "node:fs/promises";
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
