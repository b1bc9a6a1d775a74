// What a daemon that died mid-create, or a VM whose record was lost, leaves in
// <state_dir>/vm: per-VM directories (sockets, console log, FIFO, stderr; never user data).
// A new daemon removes those no record names, no process works in, and that are old enough
// not to be another daemon's create in progress.
import { readdir, readlink, rm, stat } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "../util/log.js";

/** A VM directory younger than this may be a create in progress (of any daemon). */
export const SWEEP_MIN_AGE_MS = 120_000;

/** The working directory of every process on the host (a confined VMM works in its VM's dir). */
async function processDirs(): Promise<string[]> {
  const dirs: string[] = [];
  for (const entry of await readdir("/proc").catch(() => [] as string[])) {
    if (!/^\d+$/.test(entry)) continue;
    const cwd = await readlink(`/proc/${entry}/cwd`).catch(() => undefined);
    if (cwd) dirs.push(cwd);
  }
  return dirs;
}

/**
 * Removes stale VM directories under `vmDir`. `recorded`: the VM ids every record names,
 * whatever daemon owns it. Returns the ids removed.
 */
export async function sweepStaleVmDirs(
  vmDir: string,
  recorded: ReadonlySet<string>,
  log: Logger,
  now = Date.now(),
): Promise<string[]> {
  const names = await readdir(vmDir).catch(() => [] as string[]);
  if (names.length === 0) return [];
  const busy = await processDirs();
  const removed: string[] = [];
  for (const name of names) {
    if (recorded.has(name)) continue;
    const dir = path.join(vmDir, name);
    const info = await stat(dir).catch(() => undefined);
    if (!info?.isDirectory() || now - info.mtimeMs < SWEEP_MIN_AGE_MS) continue;
    if (busy.some((cwd) => cwd === dir || cwd.startsWith(`${dir}/`))) continue;
    await rm(dir, { recursive: true, force: true });
    removed.push(name);
  }
  if (removed.length > 0) log.info({ removed }, "removed VM directories no pod owns");
  return removed;
}

/**
 * Removes the dirs of hard-linked disks (QEMU driver, vmm/qemu.ts) of VMs whose dir under
 * `vmDir` is gone: a VM's stop removes both, a daemon killed in between leaves the links.
 * Returns the ids removed.
 */
export async function sweepStaleDiskLinks(
  linksDir: string,
  vmDir: string,
  log: Logger,
  now = Date.now(),
): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await readdir(linksDir).catch(() => [] as string[])) {
    const dir = path.join(linksDir, name);
    const info = await stat(dir).catch(() => undefined);
    if (!info?.isDirectory() || now - info.mtimeMs < SWEEP_MIN_AGE_MS) continue;
    if (
      await stat(path.join(vmDir, name)).then(
        () => true,
        () => false,
      )
    )
      continue;
    await rm(dir, { recursive: true, force: true });
    removed.push(name);
  }
  if (removed.length > 0) log.info({ removed }, "removed hard-linked disks of VMs that are gone");
  return removed;
}
