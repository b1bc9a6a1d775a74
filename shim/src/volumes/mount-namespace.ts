// A new mount namespace kept by binding its nsfs file on a path (unshare --mount=<file>).
//
// Linux refuses that bind (EINVAL) unless the new namespace is numbered above the binder's own:
// its check against namespace loops. On Linux 6.18 namespace numbers come from per-CPU batches,
// so one made on a CPU whose batch is older than the one the daemon's own namespace came from
// is numbered below it, and the bind fails on that CPU every time (the daemon runs in a mount
// namespace of its own under a test harness or a service manager's private mounts). Numbers
// only grow on each CPU, so the namespace is made again pinned to each CPU the daemon may run
// on in turn, and the CPU that worked is tried first from then on.
import { readFile } from "node:fs/promises";
import { ExecError, exec } from "../util/exec.js";
import type { Logger } from "../util/log.js";

/** The CPU whose namespaces last bound; undefined until a bind needed one. */
let boundOn: number | undefined;

/**
 * Makes a mount namespace whose mounts are slaves of the caller's and binds its file on
 * `file` (an empty file on a private mount). Throws the last ExecError when no CPU works.
 */
export async function bindNewMountNamespace(
  file: string,
  log: Logger,
  /** Tests: the CPU to try first instead of the one that worked last. */
  tryFirst: number | undefined = boundOn,
): Promise<void> {
  const argv = ["unshare", `--mount=${file}`, "--propagation", "slave", "true"];
  const first = await exec(tryFirst === undefined ? argv : pinned(tryFirst, argv));
  if (first.code === 0) return;
  if (!refusedAsLoop(first.stderr)) throw new ExecError(first);
  let last = first;
  for (const cpu of await allowedCpus()) {
    if (cpu === tryFirst) continue;
    const r = await exec(pinned(cpu, argv));
    if (r.code === 0) {
      log.info({ file, cpu, before: boundOn }, "pod mount namespace: bound when made on this CPU");
      boundOn = cpu;
      return;
    }
    if (!refusedAsLoop(r.stderr)) throw new ExecError(r);
    last = r;
  }
  throw new ExecError(last);
}

function pinned(cpu: number, argv: readonly string[]): string[] {
  return ["taskset", "--cpu-list", String(cpu), ...argv];
}

function refusedAsLoop(stderr: string): boolean {
  return /Invalid argument/.test(stderr);
}

/** The CPUs this process may run on (its children inherit them). */
export async function allowedCpus(): Promise<number[]> {
  const status = await readFile("/proc/self/status", "utf8").catch(() => "");
  const list = /^Cpus_allowed_list:\s*(\S+)$/m.exec(status)?.[1];
  return list ? parseCpuList(list) : [0];
}

/** "0-3,8,10-11" → [0, 1, 2, 3, 8, 10, 11]; at most 4096 CPUs. */
export function parseCpuList(list: string): number[] {
  const cpus: number[] = [];
  for (const part of list.trim().split(",")) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) throw new Error(`not a CPU list: ${JSON.stringify(list.slice(0, 64))}`);
    const from = Number(m[1]);
    const to = m[2] === undefined ? from : Number(m[2]);
    for (let cpu = from; cpu <= to && cpus.length < 4096; cpu++) cpus.push(cpu);
  }
  return cpus;
}
