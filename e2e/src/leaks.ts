// Finds what a VM could leave behind on the host: its QEMU process and its state files.
import { readdir, readFile, readlink } from "node:fs/promises";
import path from "node:path";

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

/**
 * The start time (clock ticks after boot) of a live process, or undefined if there is none or
 * it is a zombie: a killed daemon's orphans go to PID 1, which on some machines (CI's) never
 * reaps them.
 */
export async function liveStartTime(pid: number): Promise<number | undefined> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  if (!stat || fields[0] === "Z" || fields[0] === "X") return undefined;
  return Number(fields[19]);
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

/**
 * What `probe` finds once it finds nothing, or what it still finds after `ms`: a deleted pod's
 * VMM exits, and what outlives it (virtiofsd, disks, cgroup, netns, record) goes, a moment after
 * its delete replied (Pod.leave, shim/src/pod/lingering.ts).
 */
export async function settled<T>(probe: () => Promise<T[]>, ms = 5000): Promise<T[]> {
  const deadline = Date.now() + ms;
  for (;;) {
    const left = await probe();
    if (left.length === 0 || Date.now() > deadline) return left;
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Entries under `dir` once it has none, or what is still there after `ms` (settled). */
export function entriesSettled(dir: string, ms = 5000): Promise<string[]> {
  return settled(() => entriesOf(dir), ms);
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

/** Ready (unclaimed) pool VMs under `<stateDir>/vm`: their dirs hold the pool's marker (shim/src/pod/pool.ts). */
export async function readyPoolVms(stateDir: string): Promise<{ dirs: string[]; pids: number[] }> {
  const dirs: string[] = [];
  const pids: number[] = [];
  for (const name of await entriesOf(path.join(stateDir, "vm"))) {
    const marker = await readFile(path.join(stateDir, "vm", name, "pool.json"), "utf8").catch(() => "");
    if (!marker) continue;
    dirs.push(name);
    pids.push((JSON.parse(marker) as { vmm: { pid: number } }).vmm.pid);
  }
  return { dirs, pids };
}

/**
 * VMMs under `<stateDir>/vm` that serve pods: every one but the warm pool's, ready or booting (a
 * pool VM's dir is `pool-…`; no record names it until a pod has claimed it).
 */
export async function podVmms(stateDir: string): Promise<number[]> {
  // Every VMM first, the pool's dirs after: a pool VM's dir exists before its VMM does, so one
  // the pool starts meanwhile is never taken for a pod's.
  const all = await processesMatching(path.join(stateDir, "vm"));
  const poolPids = new Set<number>();
  for (const name of await poolVmDirs(stateDir))
    for (const pid of await processesMatching(`${path.join(stateDir, "vm", name)}/`)) poolPids.add(pid);
  // Any other VMM, a leaked one whose dir is gone included.
  return all.filter((pid) => !poolPids.has(pid));
}

/** The warm pool's VM dirs under `<stateDir>/vm`, ready or booting (no record names them yet). */
export async function poolVmDirs(stateDir: string): Promise<string[]> {
  const ready = (await readyPoolVms(stateDir)).dirs;
  const records = await entriesOf(path.join(stateDir, "records"));
  return (await entriesOf(path.join(stateDir, "vm"))).filter(
    (name) => ready.includes(name) || (name.startsWith("pool-") && !records.includes(`${name}.json`)),
  );
}

/**
 * The VMs that serve the given pods (sandbox ids), from the daemon's records: read while the pods
 * run, so that a check after their removal can name a VM the pod took from the warm pool
 * (`pool-…`, which podVmms leaves out). A pod with no record (a driver that keeps none) is named
 * after itself and so is no pool VM; with the pool's VMs present that would blind the check, so it throws.
 */
export async function podVmIds(stateDir: string, podIds: readonly string[]): Promise<string[]> {
  const dir = path.join(stateDir, "records");
  const byPod = new Map<string, string>();
  for (const name of await entriesOf(dir)) {
    if (!name.endsWith(".json")) continue;
    const text = await readFile(path.join(dir, name), "utf8").catch(() => "");
    try {
      const { pod } = JSON.parse(text) as { pod: { id: string; vmId: string } };
      byPod.set(pod.id, pod.vmId);
    } catch {
      // Being replaced (write + rename) or not a record.
    }
  }
  const missing = podIds.filter((id) => !byPod.has(id));
  if (missing.length > 0 && (await poolVmDirs(stateDir)).length > 0)
    throw new Error(
      `no record under ${dir} names pod(s) ${missing.join(", ")}: cannot tell their VMs from the pool's`,
    );
  return podIds.flatMap((id) => byPod.get(id) ?? []);
}

/**
 * VMMs left once a test's pods are gone: any process of those pods' VMs (`vmIds` from podVmIds,
 * a VM claimed from the pool included), and any other under `<stateDir>/vm` that is not the warm
 * pool's. With the pool off, that is every process under `<stateDir>/vm`.
 */
export async function vmmsLeft(stateDir: string, vmIds: readonly string[]): Promise<number[]> {
  const left = new Set(await podVmms(stateDir));
  for (const id of vmIds)
    for (const pid of await processesMatching(`${path.join(stateDir, "vm", id)}/`)) left.add(pid);
  return [...left].sort((a, b) => a - b);
}
