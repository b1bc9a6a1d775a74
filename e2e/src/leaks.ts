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

/** The shim processes of one containerd: fronts (bin/front.js) and daemons (bin/daemon.js). */
export async function shimProcesses(ttrpcAddress: string): Promise<{ fronts: number[]; daemons: number[] }> {
  const fronts: number[] = [];
  const daemons: number[] = [];
  for (const pid of await processesMatching(`--containerd-ttrpc ${ttrpcAddress}`)) {
    const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
    if (cmdline.includes("/front.js\0")) fronts.push(pid);
    else if (cmdline.includes("/daemon.js\0")) daemons.push(pid);
  }
  return { fronts, daemons };
}

/**
 * Ends the shim of one containerd: SIGTERM to its fronts (each passes it to its daemon and
 * exits after it), then waits until none runs (30 s at most, then SIGKILL).
 */
export async function stopShim(ttrpcAddress: string): Promise<void> {
  const { fronts, daemons } = await shimProcesses(ttrpcAddress);
  for (const pid of fronts.length > 0 ? fronts : daemons) signal(pid, "SIGTERM");
  const needle = `--containerd-ttrpc ${ttrpcAddress}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    const left = await processesMatching(needle);
    if (left.length === 0) return;
    if (Date.now() > deadline) {
      for (const pid of left) signal(pid, "SIGKILL");
      return;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}
