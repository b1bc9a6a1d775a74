// A misbehaving guest beside well-behaved pods, on one shim daemon: the scenario shared by the
// hostile-guest test (asserts that it completes) and the bench figure (measures). The hostile
// guest is a double (e2e/hostile/qemu + hostile-agent.ts): real QEMU and guest, with a fake
// agent channel in front of the real agent that a test switches into a hostile mode.
import { readdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { REPO_ROOT } from "./artifacts.js";
import type { CriClient, PodSandboxConfig } from "./cri/client.js";
import { HANDLER } from "./harness.js";
import { processesMatching } from "./leaks.js";

/** The `qemu_binary` that puts the hostile double in front of each VM's agent (pass-through until switched). */
export const HOSTILE_QEMU = path.join(REPO_ROOT, "e2e/hostile/qemu");

/** What the fake guest does once switched (see hostile-agent.ts). */
export const HOSTILE_MODES = ["empty", "errors 8388608", "silent"] as const;
export type HostileMode = (typeof HOSTILE_MODES)[number];

export interface RunningPod {
  podId: string;
  id: string;
  /** `<state_dir>/vm/<vm>`: its VMM's dir is `vmm/` in it. */
  vmDir: string;
}

/** A pod with one container running `command`; its VM's dir is found as the one that appeared. */
export async function runPod(
  cri: CriClient,
  stateDir: string,
  name: string,
  image: string,
  command: string[],
): Promise<RunningPod> {
  const vmRoot = path.join(stateDir, "vm");
  const before = new Set(await readdir(vmRoot).catch(() => [] as string[]));
  const config: PodSandboxConfig = {
    metadata: { name, uid: `uid-${name}`, namespace: "default", attempt: 0 },
    hostname: name,
  };
  const podId = await cri.runPodSandbox(config, HANDLER);
  const id = await cri.createContainer(
    podId,
    { metadata: { name: "main" }, image: { image }, command },
    config,
  );
  await cri.startContainer(id);
  const added = (await readdir(vmRoot)).filter((e) => !e.startsWith(".") && !before.has(e));
  if (added.length !== 1) throw new Error(`pod ${name}: expected one new VM dir, found ${added.join(", ")}`);
  return { podId, id, vmDir: path.join(vmRoot, added[0] as string) };
}

/** Switches a pod's fake guest into `mode`. */
export async function makeHostile(pod: RunningPod, mode: HostileMode): Promise<void> {
  await writeFile(path.join(pod.vmDir, "vmm", "hostile"), `${mode}\n`);
}

/** Requests the fake guest has received so far (it writes the count twice a second). */
export async function requestsSeen(pod: RunningPod): Promise<number> {
  return Number(
    (await readFile(path.join(pod.vmDir, "vmm", "hostile-count"), "utf8").catch(() => "0")).trim(),
  );
}

/** Wall time of `n` execs through CRI, one after another; each must print what it was told. */
export async function execLatencies(cri: CriClient, containerId: string, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const res = await cri.execSync(containerId, ["echo", `probe-${i}`], 30);
    out.push(performance.now() - t0);
    if (res.exitCode !== 0 || res.stdout.trim() !== `probe-${i}`)
      throw new Error(
        `exec ${i} in ${containerId}: exit ${res.exitCode}, stdout ${JSON.stringify(res.stdout)}`,
      );
  }
  return out;
}

/**
 * What a tenant can add on top: execs into its own (hostile) pod, one a second (an exec probe
 * at kubelet's shortest period), until stopped; each fails or times out in the guest's way.
 * Returns a stop function.
 */
export function pressExecs(cri: CriClient, containerId: string): () => Promise<number> {
  let stopped = false;
  let calls = 0;
  const loop = (async () => {
    while (!stopped) {
      calls++;
      const t0 = performance.now();
      await cri.execSync(containerId, ["true"], 5).catch(() => {});
      await sleep(Math.max(0, 1000 - (performance.now() - t0)));
    }
  })();
  return async () => {
    stopped = true;
    await loop;
    return calls;
  };
}

/** Ends a hostile pod the way a dead VM ends: its VMM killed (the daemon then ends its tasks). */
export async function killVmm(pod: RunningPod): Promise<void> {
  for (const pid of await processesMatching(path.join(pod.vmDir, "vmm"))) {
    const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
    if (cmdline.includes("qemu")) process.kill(pid, "SIGKILL");
  }
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2
    ? (sorted[mid] as number)
    : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}
