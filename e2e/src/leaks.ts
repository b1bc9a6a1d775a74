// Finds what a VM could leave behind on the host: its QEMU process and its state files.
import { readdir, readFile, readlink } from "node:fs/promises";

/**
 * PIDs of live processes whose command line or working directory contains `needle` (a
 * confined QEMU names its sockets relative to its own dir, its cwd: vmm/confine.ts).
 */
export async function processesMatching(needle: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const cmdline = (await readFile(`/proc/${entry}/cmdline`, "utf8")).replaceAll("\0", " ");
      const cwd = await readlink(`/proc/${entry}/cwd`).catch(() => "");
      if (cmdline.includes(needle) || cwd.includes(needle)) pids.push(Number(entry));
    } catch {
      // The process exited while we looked.
    }
  }
  return pids;
}

/** Entries under `dir`, or [] if it does not exist. */
export async function entriesOf(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
}
