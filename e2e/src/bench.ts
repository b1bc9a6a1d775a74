#!/usr/bin/env node
// `npm run bench`: the figures users choose a VM runtime by (pod start, memory per pod, pods per
// node), measured on the local harness — a private containerd with the CRI plugin, our shim,
// QEMU and guest — and written as one JSON document plus a table. Every figure is present even
// when it fails: then it carries `ok: false` and the error, never a silent gap.
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { exec, parseConfig, probeAccel, QemuDriver } from "@cloudhv/shim";
import { Command, InvalidArgumentError } from "commander";
import { QEMU_ACCEL } from "./accel.js";
import { guestArtifacts, REPO_ROOT } from "./artifacts.js";
import { containerdRestart, hostileGuest, takeover } from "./bench-faults.js";
import {
  bytesOf,
  countLogMessages,
  dependencyDirs,
  errorText,
  fmt,
  guestMemoryUsedKiB,
  memoryOf,
  type PhaseEntry,
  type Stat,
  stat,
  vmmMemoryBreakdown,
  waitForPhaseEntries,
} from "./bench-util.js";
import { mountsUnder } from "./containerd.js";
import type { CriClient, PodSandboxConfig } from "./cri/client.js";
import { HANDLER, type Harness, startHarness } from "./harness.js";
import {
  entriesOf,
  podVmIds,
  poolVmDirs,
  processesMatching,
  settled,
  shimProcesses,
  vmmsLeft,
} from "./leaks.js";
import { buildOciArchive, importOciArchive, stageBusyboxRoot, writePseudoRandomFile } from "./oci-image.js";
import { LAUNCHER_ENTRY, SHIM_ENTRY } from "./runtime-install.js";

const SMALL_IMAGE = "docker.io/cloudhv-test/busybox:bench";
const SCHEMA = "cloudhv-bench/1";
/** What shim/src/rootfs/erofs-cache.ts logs once per image it builds. */
const BUILT_IMAGE = "erofs cache: built image";
/** default_memory_mb of the harness's runtime config (the shim's default). */
const VM_MEMORY_MB = 256;

interface Plan {
  runs: number;
  quick: boolean;
  memoryLevels: number[];
  burstPods: number;
  bigImageMiB: number;
  shimStartRuns: number;
}

interface Machine {
  cores: number;
  cpuModel: string;
  memoryGiB: number;
  hostKernel: string;
  accel: string;
  accelReason: string;
  containerdVersion: string;
  qemuVersion: string;
  nodeVersion: string;
  loadAverageStart: number[];
  loadAverageEnd?: number[];
}

type Figure = { ok: boolean; error?: string } & Record<string, unknown>;

const say = (line: string) => process.stderr.write(`bench: ${line}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const since = (t: number) => performance.now() - t;

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1)
    throw new InvalidArgumentError(`expected a positive integer, got "${value}"`);
  return n;
}

async function gitCommit(): Promise<string> {
  const head = await exec(["git", "-C", REPO_ROOT, "rev-parse", "HEAD"]);
  if (head.code !== 0) return "unknown";
  const dirty = await exec(["git", "-C", REPO_ROOT, "status", "--porcelain", "--untracked-files=no"]);
  return `${head.stdout.trim()}${dirty.stdout.trim() ? "-dirty" : ""}`;
}

async function firstLine(argv: string[]): Promise<string> {
  const r = await exec(argv);
  return (r.stdout || r.stderr).split("\n")[0]?.trim() || `unknown (${argv[0]} exited ${r.code})`;
}

/** Everything the benchmark started that must go, whatever happened: run in reverse. */
class Teardown {
  private readonly steps: Array<() => Promise<unknown>> = [];
  add(step: () => Promise<unknown>): void {
    this.steps.push(step);
  }
  async run(): Promise<void> {
    for (const step of this.steps.splice(0).reverse()) {
      try {
        await step();
      } catch (err) {
        say(`cleanup step failed: ${errorText(err)}`);
      }
    }
  }
}

// ---- pods ------------------------------------------------------------------------------------

let podSeq = 0;

/** Set by SIGINT/SIGTERM: no new pod, image or run starts; the teardown then runs once. */
let aborted: string | undefined;
let abortChild: (() => void) | undefined;

function checkAbort(): void {
  if (aborted) throw new Error(aborted);
}

function podConfig(h: Harness, name: string): PodSandboxConfig {
  checkAbort(); // every pod the benchmark makes starts here
  const n = `${name}-${++podSeq}`;
  return {
    metadata: { name: n, uid: `uid-${n}`, namespace: "bench", attempt: 0 },
    hostname: n.slice(0, 63),
    logDirectory: path.join(h.dir, "pods", n),
  };
}

/** Removes every pod sandbox containerd still knows (stopping it first): best effort. */
/**
 * Stops and removes every pod, retrying as kubelet does: a StopPodSandbox that races the exit
 * of the pod's VM fails once (the kill reaches a VM already going) and succeeds after it.
 * What still fails after the retries is left for the leftover checks to report.
 */
async function removeAllPods(cri: CriClient): Promise<void> {
  const pods = await cri.listPodSandbox().catch(() => []);
  await Promise.all(
    pods.map(async (p) => {
      for (let attempt = 0; attempt < 5; attempt++) {
        const stopped = await cri.stopPodSandbox(p.id).then(
          () => true,
          () => false,
        );
        if (
          stopped &&
          (await cri.removePodSandbox(p.id).then(
            () => true,
            () => false,
          ))
        )
          return;
        await sleep(1000);
      }
    }),
  );
}

async function waitExited(cri: CriClient, id: string, timeoutMs = 120_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await cri.containerStatus(id);
    if (s.state === "CONTAINER_EXITED") return s.exitCode;
    if (Date.now() > deadline) throw new Error(`container ${id} still ${s.state} after ${timeoutMs} ms`);
    await sleep(10);
  }
}

interface RunningPod {
  podId: string;
  containerId: string;
  config: PodSandboxConfig;
}

/** A pod with one long-running container (for memory and burst). */
async function runSleepingPod(h: Harness, name: string, image = SMALL_IMAGE): Promise<RunningPod> {
  const config = podConfig(h, name);
  await mkdir(config.logDirectory as string, { recursive: true });
  const podId = await h.cri.runPodSandbox(config, HANDLER);
  try {
    const containerId = await h.cri.createContainer(
      podId,
      { metadata: { name: "sleep" }, image: { image }, command: ["sleep", "3600"], logPath: "sleep.log" },
      config,
    );
    await h.cri.startContainer(containerId);
    return { podId, containerId, config };
  } catch (err) {
    await h.cri.stopPodSandbox(podId).catch(() => {});
    await h.cri.removePodSandbox(podId).catch(() => {});
    throw err;
  }
}

async function deletePod(cri: CriClient, pod: RunningPod): Promise<void> {
  await cri.stopPodSandbox(pod.podId);
  await cri.removeContainer(pod.containerId);
  await cri.removePodSandbox(pod.podId);
}

// ---- figure 1 + 2: pod lifecycle, host-side shim time ------------------------------------------

const LIFECYCLE_STEPS = ["runp", "create", "start", "exit", "stop", "rm"] as const;
type Step = (typeof LIFECYCLE_STEPS)[number];

interface LifecycleRun {
  ms: Record<Step, number> & { total: number };
  podId: string;
  containerId: string;
}

async function lifecycleOnce(h: Harness, handler: string): Promise<LifecycleRun> {
  const config = podConfig(h, `life-${handler}`);
  await mkdir(config.logDirectory as string, { recursive: true });
  const ms = {} as LifecycleRun["ms"];
  let step: Step = "runp";
  let podId = "";
  let containerId = "";
  const t0 = performance.now();
  let t = t0;
  const mark = (next: Step) => {
    const now = performance.now();
    ms[step] = now - t;
    t = now;
    step = next;
  };
  try {
    podId = await h.cri.runPodSandbox(config, handler);
    mark("create");
    containerId = await h.cri.createContainer(
      podId,
      {
        metadata: { name: "hello" },
        image: { image: SMALL_IMAGE },
        command: ["echo", "hello"],
        logPath: "hello.log",
      },
      config,
    );
    mark("start");
    await h.cri.startContainer(containerId);
    mark("exit");
    const code = await waitExited(h.cri, containerId);
    if (code !== 0) throw new Error(`the container exited with ${code}`);
    mark("stop");
    await h.cri.stopPodSandbox(podId);
    mark("rm");
    await h.cri.removeContainer(containerId);
    await h.cri.removePodSandbox(podId);
    ms.rm = performance.now() - t;
    ms.total = performance.now() - t0;
    return { ms, podId, containerId };
  } catch (err) {
    if (podId) {
      await h.cri.stopPodSandbox(podId).catch(() => {});
      await h.cri.removePodSandbox(podId).catch(() => {});
    }
    throw new Error(`${step}: ${errorText(err)}`);
  }
}

function lifecycleFigure(
  handler: string,
  runs: LifecycleRun[],
  failures: string[],
  attempts: number,
): Figure {
  const phases: Record<string, Stat | null> = {};
  for (const s of LIFECYCLE_STEPS) phases[s] = stat(runs.map((r) => r.ms[s]));
  return {
    ok: runs.length > 0 && failures.length === 0,
    ...(failures.length ? { error: failures[0] } : {}),
    handler,
    attempts,
    succeeded: runs.length,
    failures,
    totalMs: stat(runs.map((r) => r.ms.total)),
    phasesMs: phases,
  };
}

/** Sum of each phase over the 4 timing lines of one pod (sandbox + container, create + delete). */
function shimTimeOf(entries: PhaseEntry[], run: LifecycleRun): Record<string, number> | null {
  const mine = entries.filter((e) => e.task === run.podId || e.task === run.containerId);
  const kinds = new Set(mine.map((e) => `${e.task} ${e.msg}`));
  if (kinds.size < 4) return null;
  const sum: Record<string, number> = {};
  for (const e of mine) {
    const p = e.phases;
    const prefix = e.msg === "task created" ? "create." : "delete.";
    // Older fields (vmBootMs, guestCreateMs) overlap the finer ones: keep only the fine phases.
    for (const [k, v] of Object.entries(p)) {
      if (["vmBootMs", "guestCreateMs", "totalMs", "hostMs", "guestMs"].includes(k)) continue;
      sum[prefix + k] = (sum[prefix + k] ?? 0) + v;
    }
    sum.hostMs = (sum.hostMs ?? 0) + (p.hostMs ?? 0);
    sum.guestMs = (sum.guestMs ?? 0) + (p.guestMs ?? 0);
    sum.shimMs = (sum.shimMs ?? 0) + (p.totalMs ?? 0);
    if (e.msg === "task created") sum.hostCreateMs = (sum.hostCreateMs ?? 0) + (p.hostMs ?? 0);
  }
  return sum;
}

/** Host phases grouped by the part of the shim that spends them. */
const AREAS: Array<[string, RegExp]> = [
  ["pod network", /\.network(Detach)?Ms$/],
  ["VMM process", /\.(vmmLaunchMs|vmKillMs)$/],
  ["rootfs", /\.rootfs(Release)?Ms$/],
  ["disk hot-plug", /\.hotplugMs$/],
  ["pool claim", /\.poolClaimMs$/],
];

function hostShimFigure(entries: PhaseEntry[], runs: LifecycleRun[]): Figure {
  const sums = runs.map((r) => shimTimeOf(entries, r)).filter((s): s is Record<string, number> => !!s);
  if (sums.length === 0) {
    return { ok: false, error: "no complete phase timings (task created/deleted) in the shim daemon log" };
  }
  const keys = [...new Set(sums.flatMap((s) => Object.keys(s)))].filter(
    (k) => !["hostMs", "guestMs", "shimMs", "hostCreateMs"].includes(k),
  );
  const phases: Record<string, Stat | null> = {};
  for (const k of keys.sort()) phases[k] = stat(sums.map((s) => s[k] ?? 0));
  // Host phases: named phases not waiting on the guest, plus what no phase names.
  const hostPhases = keys.filter((k) => !k.split(".")[1]?.startsWith("guest"));
  const unnamed = sums.map((s) => (s.hostMs ?? 0) - hostPhases.reduce((a, k) => a + (s[k] ?? 0), 0));
  phases["unnamed host work"] = stat(unnamed.map((x) => Math.max(0, x)));
  const ranked = [...hostPhases, "unnamed host work"]
    .map((k) => ({ phase: k, medianMs: phases[k]?.median ?? 0 }))
    .sort((a, b) => b.medianMs - a.medianMs);
  // The same costs by what they do: each area is one thing to fix, create and delete together.
  const areaOf = (k: string) => AREAS.find(([, re]) => re.test(k))?.[0] ?? "other host work";
  const byArea = new Map<string, number[]>();
  sums.forEach((s, i) => {
    const totals = new Map<string, number>();
    for (const k of hostPhases) totals.set(areaOf(k), (totals.get(areaOf(k)) ?? 0) + (s[k] ?? 0));
    totals.set("other host work", (totals.get("other host work") ?? 0) + Math.max(0, unnamed[i] ?? 0));
    for (const [area, ms] of totals) byArea.set(area, [...(byArea.get(area) ?? []), ms]);
  });
  const areas = [...byArea]
    .map(([area, ms]) => ({ area, phases: hostPhases.filter((k) => areaOf(k) === area), ms: stat(ms) }))
    .sort((a, b) => (b.ms?.median ?? 0) - (a.ms?.median ?? 0));
  return {
    ok: sums.length === runs.length,
    ...(sums.length < runs.length
      ? { error: `timings for ${sums.length} of ${runs.length} lifecycles` }
      : {}),
    what: "shim daemon time per pod lifecycle (sandbox + container tasks, create + delete), from its phase timings",
    lifecycles: sums.length,
    hostMs: stat(sums.map((s) => s.hostMs ?? 0)),
    /** The cold path alone (both tasks' create), as the seed reports it. */
    hostCreateMs: stat(sums.map((s) => s.hostCreateMs ?? 0)),
    guestWaitMs: stat(sums.map((s) => s.guestMs ?? 0)),
    shimTotalMs: stat(sums.map((s) => s.shimMs ?? 0)),
    phasesMs: phases,
    hostCostsRanked: ranked,
    hostCostsByArea: areas,
  };
}

async function podLifecycle(h: Harness, plan: Plan): Promise<{ lifecycle: Figure; hostShim: Figure }> {
  const handlers = [HANDLER, "runc"];
  const runs = new Map<string, LifecycleRun[]>(handlers.map((x) => [x, []]));
  const failures = new Map<string, string[]>(handlers.map((x) => [x, []]));
  // One warm-up each (the first cloudhv pod starts the shim daemon and fills the rootfs
  // cache), then measured runs interleaved so load drift hits both handlers alike.
  for (let round = 0; round <= plan.runs && !aborted; round++) {
    for (const handler of handlers) {
      const label = round === 0 ? "warm-up" : `run ${round}/${plan.runs}`;
      try {
        const r = await lifecycleOnce(h, handler);
        say(
          `lifecycle ${handler} ${round === 0 ? "warm-up" : `${round}/${plan.runs}`}: ${Math.round(r.ms.total)} ms`,
        );
        if (round > 0) runs.get(handler)?.push(r);
      } catch (err) {
        say(
          `lifecycle ${handler} ${round === 0 ? "warm-up" : `${round}/${plan.runs}`} failed: ${errorText(err)}`,
        );
        failures.get(handler)?.push(`${label}: ${errorText(err)}`);
      }
    }
  }
  const measured = runs.get(HANDLER) ?? [];
  const entries = await waitForPhaseEntries(
    h.runtime.logDir,
    measured.flatMap((r) =>
      [r.podId, r.containerId].flatMap((task) => [
        { task, msg: "task created" as const },
        { task, msg: "task deleted" as const },
      ]),
    ),
  );
  const lifecycle: Figure = {
    ok: handlers.every((x) => (runs.get(x)?.length ?? 0) > 0),
    what: "CRI RunPodSandbox → CreateContainer → StartContainer → container exited → StopPodSandbox → RemoveContainer + RemovePodSandbox, CNI bridge network, container `echo hello`",
    cloudhv: lifecycleFigure(HANDLER, measured, failures.get(HANDLER) ?? [], plan.runs + 1),
    runc: lifecycleFigure("runc", runs.get("runc") ?? [], failures.get("runc") ?? [], plan.runs + 1),
  };
  lifecycle.ratioToRunc = ratio(lifecycle.cloudhv as Figure, lifecycle.runc as Figure);
  if (!lifecycle.ok) lifecycle.error = "a handler had no successful lifecycle (see its failures)";
  return { lifecycle, hostShim: hostShimFigure(entries, measured) };
}

// ---- figure 1b: pod lifecycle from the warm pool -----------------------------------------------

/** Pool size of the pool figure's harness: enough for one lifecycle at a time. */
const BENCH_POOL = 2;

/** Median total of `a` over that of `b` (2 decimals); null when either has none. */
function ratio(a: Figure, b: Figure): number | null {
  const x = (a.totalMs as Stat | null)?.median;
  const y = (b.totalMs as Stat | null)?.median;
  return x && y ? Math.round((x / y) * 100) / 100 : null;
}

async function poolStatusOf(h: Harness): Promise<Record<string, number> | undefined> {
  const dir = path.join(h.runtime.stateDir, "pool");
  for (const name of await entriesOf(dir)) {
    const doc = await readFile(path.join(dir, name), "utf8")
      .then((t) => JSON.parse(t) as Record<string, number>)
      .catch(() => undefined);
    if (doc) return doc;
  }
  return undefined;
}

/** Waits until the harness daemon's pool is full (every VM ready, none booting); its status. */
async function poolFull(h: Harness): Promise<Record<string, number>> {
  const deadline = Date.now() + 180_000;
  for (;;) {
    const s = await poolStatusOf(h);
    if (s && s.ready === s.target && s.booting === 0) return s;
    if (Date.now() > deadline) throw new Error(`the pool did not fill in 180 s (${JSON.stringify(s)})`);
    await sleep(200);
  }
}

/**
 * The same lifecycle as figure 1 on a harness whose daemon keeps a pool (config `pool`): each
 * measured cloudhv pod arrives when the pool is full (a hit), runc interleaved; plus the idle
 * pool VMs' memory. Its own harness, so figure 1 stays the cold path.
 */
async function poolLifecycle(plan: Plan): Promise<Figure> {
  const h = await startHarness({ images: [SMALL_IMAGE], runtimeConfig: { pool: BENCH_POOL } });
  try {
    const full = () => poolFull(h);
    const runs = new Map<string, LifecycleRun[]>([
      [HANDLER, []],
      ["runc", []],
    ]);
    const failures = new Map<string, string[]>([
      [HANDLER, []],
      ["runc", []],
    ]);
    let idle: Record<string, number> | undefined;
    // Round 0 starts the daemon (a cold boot: its pool fills after it) and warms the caches.
    for (let round = 0; round <= plan.runs && !aborted; round++) {
      for (const handler of [HANDLER, "runc"]) {
        try {
          if (handler === HANDLER && round > 0) idle = await full();
          const r = await lifecycleOnce(h, handler);
          say(
            `pool lifecycle ${handler} ${round === 0 ? "warm-up" : `${round}/${plan.runs}`}: ${Math.round(r.ms.total)} ms`,
          );
          if (round > 0) runs.get(handler)?.push(r);
        } catch (err) {
          failures.get(handler)?.push(`${round === 0 ? "warm-up" : `run ${round}`}: ${errorText(err)}`);
        }
      }
    }
    const measured = runs.get(HANDLER) ?? [];
    const entries = await waitForPhaseEntries(
      h.runtime.logDir,
      measured.flatMap((r) =>
        [r.podId, r.containerId].flatMap((task) => [
          { task, msg: "task created" as const },
          { task, msg: "task deleted" as const },
        ]),
      ),
    );
    // A hit is a sandbox create with the claim's phase and no VMM launch.
    const hits = measured.filter((r) =>
      entries.some(
        (e) =>
          e.task === r.podId &&
          e.msg === "task created" &&
          e.phases.poolClaimMs !== undefined &&
          !e.phases.vmmLaunchMs,
      ),
    ).length;
    const cloudhv = lifecycleFigure(HANDLER, measured, failures.get(HANDLER) ?? [], plan.runs + 1);
    const runc = lifecycleFigure("runc", runs.get("runc") ?? [], failures.get("runc") ?? [], plan.runs + 1);
    const ready = idle?.ready ?? 0;
    return {
      ok: cloudhv.ok && runc.ok && hits === measured.length,
      ...(hits < measured.length
        ? { error: `${measured.length - hits} of ${measured.length} pods missed the pool` }
        : {}),
      what: `figure 1's lifecycle with config pool: ${BENCH_POOL}, each cloudhv pod arriving when the pool is full`,
      pool: BENCH_POOL,
      hits,
      cloudhv,
      runc,
      ratioToRunc: ratio(cloudhv, runc),
      idlePoolVmRssKiB: ready > 0 ? Math.round((idle?.idleRssBytes ?? 0) / ready / 1024) : null,
      hostShim: hostShimFigure(entries, measured),
    };
  } finally {
    await removeAllPods(h.cri).catch(() => {});
    await h.stop();
  }
}

// ---- figure 3: guest boot ----------------------------------------------------------------------

async function guestBoot(plan: Plan): Promise<Figure> {
  const script = path.join(REPO_ROOT, "e2e/dist/src/boot-bench.js");
  checkAbort();
  const child = spawn(process.execPath, [script, "--runs", String(plan.runs), "--json"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  // Its VMs die with it (QEMU runs under a parent-death signal); its state dir is in tmp.
  abortChild = () => child.kill("SIGTERM");
  let out = "";
  let err = "";
  child.stdout.on("data", (d: Buffer) => {
    out += d;
  });
  child.stderr.on("data", (d: Buffer) => {
    err += d;
    for (const line of d.toString().split("\n").filter(Boolean)) say(`boot-bench: ${line}`);
  });
  const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
  if (code !== 0) return { ok: false, error: `boot-bench exited ${code}: ${err.trim().split("\n").pop()}` };
  const doc = JSON.parse(out) as {
    machine: { accel?: { accel: string; reason: string } };
    results: Array<{
      kernel: string;
      version: string;
      sizeBytes: number;
      medianMs: number;
      minMs: number;
      maxMs: number;
      runs: number[];
    }>;
  };
  const pick = (kernel: string) => {
    const r = doc.results.find((x) => x.kernel === kernel);
    return r ? { version: r.version, sizeBytes: r.sizeBytes, bootMs: stat(r.runs) } : null;
  };
  return {
    ok: true,
    what: "QEMU start → first agent Health reply, same QEMU flags, rootfs and agent (e2e/src/boot-bench.ts)",
    accel: doc.machine.accel?.accel ?? "unknown",
    accelReason: doc.machine.accel?.reason ?? "",
    cloudhv: pick("cloudhv"),
    debianStock: pick("debian-stock"),
  };
}

// ---- figure 4: memory --------------------------------------------------------------------------

async function shimDaemonPid(h: Harness): Promise<number | undefined> {
  return (await shimProcesses(h.containerd.ttrpcAddress)).daemons[0];
}

async function vmmPids(h: Harness): Promise<number[]> {
  // The VMM's argv names its state dir; setpriv/nsenter exec into it, so one pid per VM.
  const pids = await processesMatching(path.join(h.runtime.stateDir, "vm"));
  const qemu: number[] = [];
  for (const pid of pids) {
    const comm = await readFile(`/proc/${pid}/comm`, "utf8").catch(() => "");
    if (comm.startsWith("qemu") || comm.startsWith("cloud-hyperviso")) qemu.push(pid);
  }
  return qemu;
}

async function memory(h: Harness, plan: Plan): Promise<Figure> {
  const pods: RunningPod[] = [];
  const levels: Array<Record<string, unknown>> = [];
  const shimAt = new Map<number, number>();
  let error: string | undefined;
  try {
    // The daemon runs since the lifecycle runs; with no pod it holds only its own state.
    for (const level of plan.memoryLevels) {
      while (pods.length < level) {
        pods.push(await runSleepingPod(h, "mem"));
        if (pods.length % 5 === 0) say(`memory: ${pods.length} pods running`);
      }
      await sleep(2000); // let boots settle and the daemon's GC catch up
      const pid = await shimDaemonPid(h);
      const shim = pid ? await memoryOf(pid) : null;
      if (!shim) throw new Error("the shim daemon is not running");
      const pids = await vmmPids(h);
      const vmms = (await Promise.all(pids.map(memoryOf))).filter((m) => !!m);
      const split = (
        await Promise.all(pids.slice(0, 5).map((p) => vmmMemoryBreakdown(p, VM_MEMORY_MB)))
      ).filter((b) => !!b);
      const guest: number[] = [];
      const guestTotal: number[] = [];
      for (const pod of pods.slice(0, 5)) {
        const r = await h.cri.execSync(pod.containerId, ["cat", "/proc/meminfo"]);
        const used = guestMemoryUsedKiB(r.stdout);
        if (used) {
          guest.push(used.usedKiB);
          guestTotal.push(used.totalKiB);
        }
      }
      shimAt.set(level, shim.rssKiB);
      levels.push({
        pods: level,
        shimRssKiB: shim.rssKiB,
        shimPssKiB: shim.pssKiB,
        vmms: vmms.length,
        vmmRssKiB: stat(vmms.map((m) => m.rssKiB)),
        vmmPssKiB: stat(vmms.map((m) => m.pssKiB)),
        vmmRssSplitKiB: {
          guestRam: stat(split.map((b) => b.guestRamRssKiB)),
          tcgCodeBuffer: stat(split.map((b) => b.tcgCodeBufferRssKiB)),
          files: stat(split.map((b) => b.fileBackedRssKiB)),
          otherAnon: stat(split.map((b) => b.otherAnonRssKiB)),
        },
        guestUsedKiB: stat(guest),
        guestTotalKiB: stat(guestTotal),
      });
      say(`memory: ${level} pods: shim RSS ${Math.round(shim.rssKiB / 1024)} MiB, ${vmms.length} VMMs`);
    }
  } catch (err) {
    error = `with ${pods.length} pods running: ${errorText(err)}`;
  } finally {
    await Promise.all(pods.map((p) => deletePod(h.cri, p).catch(() => {})));
  }
  const base = shimAt.get(0);
  const increment: Record<string, number | null> = {};
  for (const level of plan.memoryLevels.filter((l) => l > 0)) {
    const at = shimAt.get(level);
    increment[String(level)] =
      base !== undefined && at !== undefined ? Math.round((at - base) / level) : null;
  }
  const top = levels.at(-1) ?? {};
  return {
    ok: !error && levels.length === plan.memoryLevels.length,
    ...(error ? { error } : {}),
    what: "RSS/PSS from /proc/<pid>/smaps_rollup; pods each run one `sleep` container; guest used = MemTotal − MemAvailable",
    vmMemoryMb: VM_MEMORY_MB,
    levels,
    shimRssIncrementPerPodKiB: increment,
    vmmRssPerPodKiB: top.vmmRssKiB ?? null,
    vmmPssPerPodKiB: top.vmmPssKiB ?? null,
    vmmRssSplitKiB: top.vmmRssSplitKiB ?? null,
    guestUsedKiB: top.guestUsedKiB ?? null,
  };
}

// ---- figure 5: rootfs prep ---------------------------------------------------------------------

interface BenchImage {
  name: string;
  compressedBytes: number;
}

/** Images that share their big layers but differ in a top layer: each is a rootfs cache miss. */
async function buildImages(h: Harness, kind: string, count: number, bigMiB: number): Promise<BenchImage[]> {
  const work = await mkdtemp(path.join(h.dir, `img-${kind}-`));
  try {
    const base = path.join(work, "base");
    await mkdir(base);
    await stageBusyboxRoot(base);
    const layers = [base];
    if (bigMiB > 0) {
      const big = path.join(work, "big");
      await writePseudoRandomFile(path.join(big, "data", "big.bin"), bigMiB, `bench-${kind}`);
      layers.push(big);
    }
    const images: BenchImage[] = [];
    for (let i = 0; i < count; i++) {
      checkAbort();
      const name = `docker.io/cloudhv-test/bench-${kind}:${i}`;
      const top = path.join(work, `top-${i}`);
      await mkdir(path.join(top, "etc"), { recursive: true });
      await writeFile(path.join(top, "etc", "cloudhv-image"), `${name}\n`);
      const built = await buildOciArchive(
        { name, layers: [...layers, top], config: { cmd: ["/bin/sh"] } },
        path.join(work, `${i}.tar`),
      );
      await importOciArchive(h.containerd, built.archivePath, { namespace: "k8s.io" });
      await rm(built.archivePath, { force: true });
      images.push({ name, compressedBytes: built.layers.reduce((a, l) => a + l.size, 0) });
    }
    return images;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

async function rootfsPrep(h: Harness, plan: Plan): Promise<Figure> {
  const result: Figure = {
    ok: false,
    what: "the shim's rootfsMs for an app container (erofs image of the layers + ext4 scratch disk): first container of an image = cache miss, a second one of the same image = hit",
  };
  try {
    say(`rootfs: building ${plan.runs} small and ${plan.runs} ${plan.bigImageMiB} MiB test images`);
    const small = await buildImages(h, "small", plan.runs, 0);
    const large = await buildImages(h, "large", plan.runs, plan.bigImageMiB);
    const ms: Record<string, { rootfs: number[]; start: number[]; hits: boolean[] }> = {};
    for (const k of ["small.miss", "small.hit", "large.miss", "large.hit"])
      ms[k] = { rootfs: [], start: [], hits: [] };
    for (let i = 0; i < plan.runs; i++) {
      const config = podConfig(h, "rootfs");
      await mkdir(config.logDirectory as string, { recursive: true });
      const podId = await h.cri.runPodSandbox(config, HANDLER);
      const ids: string[] = [];
      try {
        for (const [kind, images] of [
          ["small", small],
          ["large", large],
        ] as const) {
          const image = images[i] as BenchImage;
          for (const which of ["miss", "hit"]) {
            const id = await h.cri.createContainer(
              podId,
              {
                metadata: { name: `${kind}-${which}` },
                image: { image: image.name },
                command: ["sleep", "600"],
              },
              config,
            );
            ids.push(id);
            const t = performance.now();
            await h.cri.startContainer(id);
            const bucket = ms[`${kind}.${which}`] as (typeof ms)[string];
            bucket.start.push(since(t));
            const entry = (
              await waitForPhaseEntries(h.runtime.logDir, [{ task: id, msg: "task created" }])
            ).find((e) => e.task === id && e.msg === "task created");
            if (entry) {
              bucket.rootfs.push(entry.phases.rootfsMs ?? 0);
              bucket.hits.push(entry.cacheHit === true);
            }
          }
        }
        say(
          `rootfs ${i + 1}/${plan.runs}: small miss ${Math.round(ms["small.miss"]?.rootfs.at(-1) ?? 0)} ms, large miss ${Math.round(ms["large.miss"]?.rootfs.at(-1) ?? 0)} ms`,
        );
      } finally {
        await h.cri.stopPodSandbox(podId).catch(() => {});
        for (const id of ids) await h.cri.removeContainer(id).catch(() => {});
        await h.cri.removePodSandbox(podId).catch(() => {});
      }
    }
    const part = (kind: "small" | "large", images: BenchImage[]) => {
      const miss = ms[`${kind}.miss`] as (typeof ms)[string];
      const hit = ms[`${kind}.hit`] as (typeof ms)[string];
      return {
        imageCompressedMiB: Math.round(((images[0]?.compressedBytes ?? 0) / 2 ** 20) * 10) / 10,
        miss: {
          rootfsMs: stat(miss.rootfs),
          startContainerMs: stat(miss.start),
          cacheHits: miss.hits.filter(Boolean).length,
        },
        hit: {
          rootfsMs: stat(hit.rootfs),
          startContainerMs: stat(hit.start),
          cacheHits: hit.hits.filter(Boolean).length,
        },
      };
    };
    result.small = part("small", small);
    result.large = part("large", large);
    const consistent =
      ms["small.miss"]?.hits.every((x) => !x) &&
      ms["large.miss"]?.hits.every((x) => !x) &&
      ms["small.hit"]?.hits.every((x) => x) &&
      ms["large.hit"]?.hits.every((x) => x);
    result.ok = !!consistent && (ms["large.hit"]?.rootfs.length ?? 0) === plan.runs;
    if (!result.ok) result.error = "a miss was served from the cache, a hit was not, or timings are missing";
  } catch (err) {
    result.ok = false;
    result.error = errorText(err);
  }
  return result;
}

// ---- figure 5 (concurrent) + 7: burst ----------------------------------------------------------

/**
 * What a figure's pods left behind. `vmIds` (podVmIds, read while they ran) names their VMs, one
 * taken from the warm pool included; the pool's own VMs are not leftovers.
 */
async function leftovers(
  h: Harness,
  netnsBefore: Set<string>,
  netnsDuring: Set<string>,
  vmIds: readonly string[] = [],
) {
  // A deleted pod's VMM exits, and what outlives it goes, a moment after its delete replied.
  await settled(() => vmmsLeft(h.runtime.stateDir, vmIds));
  const netnsNow = new Set(await netnsList());
  const bridgePorts = await exec(["ip", "-o", "link", "show", "master", h.bridge]);
  // Read before the pool's: a refill that starts in between is then not counted.
  const vmDirs = await entriesOf(path.join(h.runtime.stateDir, "vm"));
  const vmms = await vmmsLeft(h.runtime.stateDir, vmIds);
  const pool = new Set(await poolVmDirs(h.runtime.stateDir));
  const qemu = new Set(await vmmPids(h));
  return {
    vmmProcesses: vmms.filter((pid) => qemu.has(pid)).length,
    // `.vmm-uids` is the daemon's, kept while it runs (a pool keeps it running).
    vmStateDirs: vmDirs.filter((d) => !d.startsWith(".") && !pool.has(d)).length,
    scratchFiles: (await entriesOf(path.join(h.dir, "scratch"))).length,
    podSandboxes: (await h.cri.listPodSandbox()).length,
    bridgePorts: bridgePorts.stdout.split("\n").filter(Boolean).length,
    netns: [...netnsDuring].filter((n) => !netnsBefore.has(n) && netnsNow.has(n)).length,
    mountsUnderHarness: (await mountsUnder(h.dir)).filter((m) => !m.includes("/cache")).length,
  };
}

async function netnsList(): Promise<string[]> {
  return entriesOf("/run/netns");
}

/** The warm pool's size when the config does not set one. */
const DEFAULT_POOL = parseConfig({}, "the defaults").pool;

/**
 * Figure 7 on a harness of its own whose daemon keeps the warm pool at its default size, as a
 * node would run: the burst starts once the pool is full.
 */
async function burstWithPool(plan: Plan): Promise<{ burst: Figure; concurrentRootfs: Figure }> {
  const h = await startHarness({ images: [SMALL_IMAGE], runtimeConfig: { pool: DEFAULT_POOL } });
  try {
    // The daemon starts with the first pod: one warm-up lifecycle, then the pool fills.
    await lifecycleOnce(h, HANDLER);
    await poolFull(h);
    return await burst(h, plan);
  } finally {
    await removeAllPods(h.cri).catch(() => {});
    await h.stop();
  }
}

async function burst(h: Harness, plan: Plan): Promise<{ burst: Figure; concurrentRootfs: Figure }> {
  const n = plan.burstPods;
  // The large image: its erofs build takes long enough that the other starts do have to wait.
  const [image] = await buildImages(h, "burst", 1, plan.bigImageMiB);
  const netnsBefore = new Set(await netnsList());
  const buildsBefore = await countLogMessages(h.runtime.logDir, BUILT_IMAGE);
  const errors: string[] = [];
  const t0 = performance.now();
  // 1. n RunPodSandbox at once (n VMs booting together).
  const configs = Array.from({ length: n }, () => podConfig(h, "burst"));
  for (const c of configs) await mkdir(c.logDirectory as string, { recursive: true });
  const podIds = await Promise.all(
    configs.map((c) =>
      h.cri.runPodSandbox(c, HANDLER).catch((err: unknown) => {
        errors.push(`RunPodSandbox: ${errorText(err)}`);
        return "";
      }),
    ),
  );
  const sandboxesMs = since(t0);
  // 2. One container per pod, all from one image nobody used yet, started at once: the rootfs
  //    cache builds its erofs image once while the other starts wait for it.
  const t1 = performance.now();
  // Created first, then started together: the shim's task creates (where the rootfs is
  // prepared) then arrive within milliseconds of each other, not spread by CreateContainer.
  const createdIds = await Promise.all(
    podIds.map(async (podId, i) => {
      if (!podId) return "";
      try {
        return await h.cri.createContainer(
          podId,
          {
            metadata: { name: "app" },
            image: { image: image?.name ?? SMALL_IMAGE },
            command: ["sleep", "600"],
          },
          configs[i] as PodSandboxConfig,
        );
      } catch (err) {
        errors.push(`CreateContainer: ${errorText(err)}`);
        return "";
      }
    }),
  );
  const containerIds = await Promise.all(
    createdIds.map(async (id) => {
      if (!id) return "";
      try {
        await h.cri.startContainer(id);
        return id;
      } catch (err) {
        errors.push(`StartContainer: ${errorText(err)}`);
        return "";
      }
    }),
  );
  const containersMs = since(t1);
  const allRunningMs = since(t0);
  const running = containerIds.filter(Boolean).length;
  const netnsDuring = new Set(await netnsList());
  const vmIds = await podVmIds(h.runtime.stateDir, podIds.filter(Boolean));
  say(`burst: ${running}/${n} pods running after ${Math.round(allRunningMs)} ms`);
  // 3. Everything deleted at once.
  const t2 = performance.now();
  await Promise.all(
    podIds.map(async (podId, i) => {
      if (!podId) return;
      try {
        await h.cri.stopPodSandbox(podId);
        const id = createdIds[i];
        if (id) await h.cri.removeContainer(id);
        await h.cri.removePodSandbox(podId);
      } catch (err) {
        errors.push(`delete: ${errorText(err)}`);
      }
    }),
  );
  const deleteMs = since(t2);
  await sleep(1000);
  const left = await leftovers(h, netnsBefore, netnsDuring, vmIds);
  const clean = Object.values(left).every((v) => v === 0);
  const entries = await waitForPhaseEntries(
    h.runtime.logDir,
    containerIds.filter(Boolean).map((task) => ({ task, msg: "task created" as const })),
  );
  const created = entries.filter((e) => e.msg === "task created" && containerIds.includes(e.task));
  const sandboxes = await waitForPhaseEntries(
    h.runtime.logDir,
    podIds.filter(Boolean).map((task) => ({ task, msg: "task created" as const })),
  );
  const poolHits = sandboxes.filter(
    (e) => podIds.includes(e.task) && e.phases.poolClaimMs !== undefined && !e.phases.vmmLaunchMs,
  ).length;
  // cacheHit is false for a container that waited for another's build too: count the builds
  // the cache itself logged during the burst (nothing else runs on this daemon meanwhile).
  const builds = (await countLogMessages(h.runtime.logDir, BUILT_IMAGE)) - buildsBefore;
  const waited = created.filter((e) => e.cacheHit === false).length;
  return {
    burst: {
      ok: running === n && errors.length === 0 && clean,
      ...(errors.length ? { error: errors[0] } : !clean ? { error: "something was left behind" } : {}),
      what: `${n} RunPodSandbox at once, then ${n} CreateContainer at once and ${n} StartContainer at once, then every pod stopped and removed at once`,
      pods: n,
      pool: (await poolStatusOf(h))?.target ?? 0,
      poolHits,
      succeeded: running,
      failures: errors,
      sandboxesReadyMs: Math.round(sandboxesMs),
      containersRunningMs: Math.round(containersMs),
      allRunningMs: Math.round(allRunningMs),
      deleteAllMs: Math.round(deleteMs),
      leftovers: left,
    },
    concurrentRootfs: {
      ok: created.length === running && running === n && builds === 1,
      ...(builds !== 1
        ? { error: `the erofs image was built ${builds} times for ${created.length} containers` }
        : {}),
      what: `${n} containers of one uncached image started at once (the burst's containers)`,
      containers: n,
      succeeded: created.length,
      cacheBuilds: builds,
      servedByThatBuild: waited,
      cacheHits: created.length - waited,
      rootfsMs: stat(created.map((e) => e.phases.rootfsMs ?? 0)),
      wallMs: Math.round(containersMs),
    },
  };
}

// ---- figure 6: shim start ----------------------------------------------------------------------

async function timeCommand(
  argv: string[],
  opts: { cwd: string; env: NodeJS.ProcessEnv },
): Promise<{ ms: number; out: string; code: number | null }> {
  const t = performance.now();
  const child = spawn(argv[0] as string, argv.slice(1), { ...opts, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout.on("data", (d: Buffer) => {
    out += d;
  });
  child.stderr.on("data", (d: Buffer) => {
    out += d;
  });
  const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
  return { ms: since(t), out, code };
}

async function shimStart(h: Harness, plan: Plan): Promise<Figure> {
  // A running pod keeps the daemon (and its k8s.io listener) up: the fast path containerd takes.
  let pod: RunningPod | undefined;
  const bundle = await mkdtemp(path.join(h.dir, "start-"));
  try {
    pod = await runSleepingPod(h, "start");
    const env = { ...h.runtime.env, TTRPC_ADDRESS: h.containerd.ttrpcAddress };
    // What containerd runs (the compiled launcher), and the Node.js shim it stands in front of.
    const launcher = [path.join(h.runtime.dir, "bin", "containerd-shim-cloudhv-v1")];
    const nodeShim = [process.execPath, SHIM_ENTRY];
    const flags = ["-namespace", "k8s.io", "-address", h.containerd.address, "-publish-binary", "containerd"];
    // `delete` of a task the daemon does not know (what containerd gets after the task is gone):
    // the binary's own cost plus one ForceDelete round trip.
    const startArgs = [...flags, "-id", "bench-start", "start"];
    const deleteArgs = [...flags, "-id", "bench-start", "delete"];
    const series = {
      start: [] as number[],
      nodeStart: [] as number[],
      delete: [] as number[],
      nodeDelete: [] as number[],
    };
    const node: number[] = [];
    // The floor of any binary measured this way: fork/exec/wait of /bin/true from Node.js.
    const spawnFloor: number[] = [];
    let address = "";
    const timed = async (argv: string[], what: string) => {
      const r = await timeCommand(argv, { cwd: bundle, env });
      if (r.code !== 0) throw new Error(`shim ${what} exited ${r.code}: ${r.out.trim()}`);
      return r;
    };
    for (let i = 0; i <= plan.shimStartRuns; i++) {
      checkAbort();
      const s = await timed([...launcher, ...startArgs], "start (launcher)");
      address = s.out.trim();
      const ns = await timed([...nodeShim, ...startArgs], "start (node)");
      if (ns.out.trim() !== address)
        throw new Error(`launcher said ${address}, the Node.js shim ${ns.out.trim()}`);
      const d = await timed([...launcher, ...deleteArgs], "delete (launcher)");
      const nd = await timed([...nodeShim, ...deleteArgs], "delete (node)");
      const base = await timeCommand([process.execPath, "-e", "0"], { cwd: bundle, env });
      const floor = await timeCommand(["/bin/true"], { cwd: bundle, env });
      if (i > 0) {
        spawnFloor.push(floor.ms);
        series.start.push(s.ms);
        series.nodeStart.push(ns.ms);
        series.delete.push(d.ms);
        series.nodeDelete.push(nd.ms);
        node.push(base.ms);
      }
    }
    return {
      ok: address.startsWith("unix://"),
      what: "wall time of `containerd-shim-cloudhv-v1 … start` / `delete` as containerd runs them, with the daemon already serving the namespace: the compiled launcher (what containerd runs) and the Node.js shim behind it",
      address,
      wallMs: stat(series.start),
      nodeShimMs: stat(series.nodeStart),
      deleteMs: stat(series.delete),
      nodeShimDeleteMs: stat(series.nodeDelete),
      nodeStartupMs: stat(node),
      spawnFloorMs: stat(spawnFloor),
      entry: path.relative(REPO_ROOT, SHIM_ENTRY),
    };
  } catch (err) {
    return { ok: false, error: errorText(err) };
  } finally {
    if (pod) await deletePod(h.cri, pod).catch(() => {});
    await rm(bundle, { recursive: true, force: true });
  }
}

// ---- figure 9: storage --------------------------------------------------------------------------

/** Rates of one run on one target. */
interface StorageRun {
  writeMiBps: number;
  readMiBps: number;
  createPerS: number;
  statPerS: number;
}

/**
 * Times each operation inside the container (busybox has no sub-second clock but the kernel's
 * /proc/uptime, in 1/100 s), repeating it until at least a second has passed, so that neither
 * an exec's own cost (large under TCG) nor the clock's resolution is in the figure. The guest's
 * own cache is dropped before each read and stat (`drop`), so that they go through the device;
 * what lies behind it (the host's page cache, for virtio-fs and runc alike) stays warm.
 */
const STORAGE_SCRIPT = `
now() { t=$(cut -d' ' -f1 /proc/uptime); echo $(( \${t%.*} * 100 + 1\${t#*.} - 100 )); }
timed() { s=$(now); n=0; while :; do eval "$2"; n=$((n+1)); e=$(now); [ $((e-s)) -ge 100 ] || [ $n -ge 500 ] && break; done; echo "$1 $n $((e-s))"; }
set -e
mkdir -p "$D"; rm -rf "$D/seq" "$D/small"; mkdir "$D/small"
timed write 'dd if=/dev/zero of="$D/seq" bs=1M count=$MB conv=fsync 2>/dev/null'
timed read 'eval "$DROP"; cat "$D/seq" > /dev/null'
timed create 'mkdir "$D/small/$n"; i=0; while [ $i -lt 100 ]; do : > "$D/small/$n/f$i"; i=$((i+1)); done'
timed stat 'eval "$DROP"; ls -l "$D/small/0" > /dev/null'
rm -rf "$D/seq" "$D/small"
`;

async function storageRun(h: Harness, id: string, dir: string, dropGuestCache: boolean, plan: Plan) {
  checkAbort();
  const mb = plan.quick ? 20 : 100;
  const drop = dropGuestCache ? "echo 3 > /proc/sys/vm/drop_caches;" : "";
  const env = `D=${dir} MB=${mb} DROP='${drop}'`;
  const r = await h.cri.execSync(id, ["sh", "-c", `${env}; export D MB DROP; ${STORAGE_SCRIPT}`], 600);
  if (r.exitCode !== 0) throw new Error(`storage script: exit ${r.exitCode}: ${r.stderr.slice(0, 300)}`);
  const rate = (op: string, unit: number) => {
    const m = new RegExp(`^${op} (\\d+) (\\d+)$`, "m").exec(r.stdout);
    if (!m) throw new Error(`storage script: no ${op} line in ${JSON.stringify(r.stdout.slice(0, 300))}`);
    return (Number(m[1]) * unit) / (Math.max(Number(m[2]), 1) / 100);
  };
  return {
    writeMiBps: rate("write", mb),
    readMiBps: rate("read", mb),
    createPerS: rate("create", 100),
    statPerS: rate("stat", 100),
  };
}

function storageFigure(runs: StorageRun[], error?: unknown): Figure {
  const of = (k: keyof StorageRun) => stat(runs.map((r) => r[k]));
  return {
    ok: error === undefined && runs.length > 0,
    ...(error === undefined ? {} : { error: errorText(error) }),
    writeMiBps: of("writeMiBps"),
    readMiBps: of("readMiBps"),
    createPerS: of("createPerS"),
    statPerS: of("statPerS"),
  };
}

/**
 * Sequential write (fsync) and read, small-file create and stat: on a hostPath shared by
 * virtio-fs and on the container's root (the guest's scratch disk) in one cloudhv pod, and on
 * the same kind of host directory under runc.
 */
async function storage(h: Harness, plan: Plan): Promise<Figure> {
  const pods: Record<string, string> = {};
  for (const handler of [HANDLER, "runc"]) {
    const hostDir = path.join(h.dir, "storage", handler);
    await mkdir(hostDir, { recursive: true });
    const config = podConfig(h, `storage-${handler}`);
    await mkdir(config.logDirectory as string, { recursive: true });
    const podId = await h.cri.runPodSandbox(config, handler);
    const id = await h.cri.createContainer(
      podId,
      {
        metadata: { name: "io" },
        image: { image: SMALL_IMAGE },
        command: ["sleep", "3600"],
        mounts: [{ containerPath: "/vol", hostPath: hostDir }],
        logPath: "io.log",
      },
      config,
    );
    await h.cri.startContainer(id);
    pods[handler] = id;
  }
  const targets = [
    ["virtiofs", HANDLER, "/vol", true],
    ["scratchDisk", HANDLER, "/scratch-bench", true],
    ["runc", "runc", "/vol", false],
  ] as const;
  const result: Figure = { ok: true, fileMiB: plan.quick ? 20 : 100, smallFilesPerDir: 100 };
  for (const [name, handler, dir, drop] of targets) {
    const runs: StorageRun[] = [];
    try {
      const id = pods[handler] as string;
      for (let i = 0; i < plan.runs; i++) runs.push(await storageRun(h, id, dir, drop, plan));
      result[name] = storageFigure(runs);
    } catch (err) {
      result[name] = storageFigure(runs, err);
    }
  }
  result.ok = targets.every(([name]) => (result[name] as Figure).ok);
  if (!result.ok)
    result.error = targets
      .filter(([name]) => !(result[name] as Figure).ok)
      .map(([name]) => `${name}: ${(result[name] as Figure).error}`)
      .join("; ");
  return result;
}

// ---- figure 8: sizes ---------------------------------------------------------------------------

/**
 * The installer image to weigh: the one named, else one built now from this tree (a stale
 * archive lying in build/ would describe another commit). The build takes seconds.
 */
async function installerImage(
  explicit: string | undefined,
  scratch: string,
): Promise<{ path: string; buildMs?: number } | { error: string }> {
  if (explicit) return { path: explicit };
  const out = path.join(scratch, "cloudhv-installer.tar");
  const t0 = performance.now();
  const built = await exec([path.join(REPO_ROOT, "installer/scripts/build-image.sh"), "--out", out], {
    timeoutMs: 300_000,
  });
  if (built.code !== 0)
    return {
      error: `installer/scripts/build-image.sh failed (exit ${built.code}): ${built.stderr.trim().split("\n").at(-1)}`,
    };
  return { path: out, buildMs: Math.round(performance.now() - t0) };
}

async function sizes(explicitImage?: string): Promise<Figure> {
  const { kernelPath, rootfsPath } = guestArtifacts();
  const shimDir = path.join(REPO_ROOT, "shim");
  const shimJs = await bytesOf(path.join(shimDir, "dist/src"));
  // Type packages are declared dependencies of some libraries (protobufjs) but never loaded.
  const depDirs = (await dependencyDirs(shimDir, [path.join(REPO_ROOT, "node_modules")])).filter(
    (d) => !d.includes("node_modules/@types/"),
  );
  let deps = 0;
  for (const d of depDirs) deps += (await bytesOf(d)) ?? 0;
  const scratch = await mkdtemp(path.join(os.tmpdir(), "cloudhv-bench-image-"));
  const image = await installerImage(explicitImage, scratch);
  const imageBytes = "path" in image ? await bytesOf(image.path) : null;
  await rm(scratch, { recursive: true, force: true });
  return {
    ok: shimJs !== null,
    shimBundle: {
      bytes: (shimJs ?? 0) + deps,
      compiledJsBytes: shimJs,
      dependencyBytes: deps,
      dependencies: depDirs.map((d) => path.relative(REPO_ROOT, d)),
      what: "shim/dist/src + its runtime npm dependency closure as installed (the Node.js binary not included)",
    },
    nodeBinaryBytes: await bytesOf(process.execPath),
    kernelBytes: await bytesOf(kernelPath),
    rootfsBytes: await bytesOf(rootfsPath),
    agentBytes: await bytesOf(path.join(REPO_ROOT, "build/guest/cloudhv-agent")),
    launcherBytes: await bytesOf(LAUNCHER_ENTRY),
    installerImage:
      "path" in image && imageBytes
        ? {
            bytes: imageBytes,
            ...(explicitImage
              ? { path: explicitImage }
              : { builtFromThisTree: true, buildMs: image.buildMs }),
          }
        : { bytes: null, reason: "error" in image ? image.error : `${explicitImage} is missing` },
  };
}

// ---- the table ---------------------------------------------------------------------------------

function mib(kib: number | null | undefined): string {
  return kib == null ? "—" : `${(kib / 1024).toFixed(1)} MiB`;
}

function statMib(s: unknown): string {
  const x = s as Stat | null;
  if (!x) return "—";
  return x.n === 1
    ? mib(x.median)
    : `${mib(x.median)} (${(x.min / 1024).toFixed(1)}–${(x.max / 1024).toFixed(1)})`;
}

function splitOf(mem: Figure, part: string): string {
  const split = mem.vmmRssSplitKiB as Record<string, Stat | null> | null;
  return mib(split?.[part]?.median);
}

function failed(f: Figure | undefined): string | undefined {
  return f && !f.ok && f.error ? `FAILED: ${f.error}` : undefined;
}

export function renderTable(doc: {
  machine: Machine;
  commit: string;
  options: Plan;
  figures: Record<string, Figure>;
}): string {
  const f = doc.figures;
  const rows: Array<[string, string, string]> = [];
  const add = (what: string, value: string, note = "") => rows.push([what, value, note]);
  const life = f.podLifecycle ?? { ok: false };
  for (const h of ["cloudhv", "runc"]) {
    const l = life[h] as Figure | undefined;
    const p = (l?.phasesMs ?? {}) as Record<string, Stat | null>;
    add(
      `1. pod lifecycle via CRI, ${h}`,
      l?.ok ? fmt(l.totalMs as Stat, " ms") : (failed(l) ?? "—"),
      l?.ok ? LIFECYCLE_STEPS.map((s) => `${s} ${fmt(p[s], "", 0).split(" ")[0]}`).join(", ") : "",
    );
  }
  if (typeof life.ratioToRunc === "number")
    add("1. cloudhv / runc (medians)", `${life.ratioToRunc}x`, "cold boot");
  const pl = f.poolLifecycle;
  const plc = pl?.cloudhv as Figure | undefined;
  add(
    `1b. pod lifecycle via CRI, cloudhv from the pool (pool ${pl?.pool ?? "?"})`,
    pl?.ok && plc ? fmt(plc.totalMs as Stat, " ms") : (failed(pl) ?? "—"),
    pl?.ok
      ? `runc ${fmt((pl.runc as Figure).totalMs as Stat, " ms").split(" ")[0]} ms on the same harness; ratio to runc ${pl.ratioToRunc}x; ` +
          `${pl.hits} hits; idle pool VM ${mib(pl.idlePoolVmRssKiB as number)}; host-side ${fmt((pl.hostShim as Figure)?.hostMs as Stat, " ms").split(" ")[0]} ms`
      : "",
  );
  const hs = f.hostShim;
  if (hs?.ok) {
    const areas = (hs.hostCostsByArea as Array<{ area: string; ms: Stat | null }>).slice(0, 3);
    add(
      "2. host-side shim time per lifecycle",
      fmt(hs.hostMs as Stat, " ms"),
      `creates alone ${fmt(hs.hostCreateMs as Stat, " ms")}; guest waits ${fmt(hs.guestWaitMs as Stat, " ms")}; by area: ${areas.map((r) => `${r.area} ${Math.round(r.ms?.median ?? 0)}`).join(", ")}`,
    );
  } else add("2. host-side shim time per lifecycle", failed(hs) ?? "—");
  const gb = f.guestBoot;
  if (gb?.ok) {
    for (const [k, label] of [
      ["cloudhv", "our kernel"],
      ["debianStock", "Debian stock kernel"],
    ] as const) {
      const r = gb[k] as { version: string; sizeBytes: number; bootMs: Stat } | null;
      add(
        `3. guest boot, ${label}`,
        fmt(r?.bootMs, " ms"),
        r ? `${r.version}, ${(r.sizeBytes / 2 ** 20).toFixed(1)} MiB, accel ${gb.accel}` : "",
      );
    }
  } else add("3. guest boot", failed(gb) ?? "—");
  const mem = f.memory;
  if (mem?.levels) {
    const levels = mem.levels as Array<Record<string, unknown>>;
    add(
      "4. shim daemon RSS by running pods",
      levels.map((l) => `${l.pods}: ${mib(l.shimRssKiB as number)}`).join(", "),
      failed(mem) ?? "",
    );
    const inc = mem.shimRssIncrementPerPodKiB as Record<string, number | null>;
    add(
      "4. shim RSS increment per pod",
      Object.entries(inc)
        .map(([k, v]) => `@${k}: ${v == null ? "—" : `${(v / 1024).toFixed(2)} MiB`}`)
        .join(", "),
    );
    add(
      "4. VMM RSS per pod (PSS)",
      `${statMib(mem.vmmRssPerPodKiB)}`,
      `PSS ${statMib(mem.vmmPssPerPodKiB)}; ${mem.vmMemoryMb} MiB VMs; RSS = guest RAM touched ${splitOf(mem, "guestRam")} + TCG code ${splitOf(mem, "tcgCodeBuffer")} + files ${splitOf(mem, "files")} + QEMU heap ${splitOf(mem, "otherAnon")}`,
    );
    add("4. guest memory used", statMib(mem.guestUsedKiB), "MemTotal − MemAvailable");
  } else add("4. memory", failed(mem) ?? "—");
  const rf = f.rootfsPrep;
  if (rf?.small && rf.large) {
    for (const k of ["small", "large"] as const) {
      const part = rf[k] as { imageCompressedMiB: number; miss: { rootfsMs: Stat }; hit: { rootfsMs: Stat } };
      add(
        `5. rootfs prep, ${k} image (${part.imageCompressedMiB} MiB)`,
        `miss ${fmt(part.miss.rootfsMs, " ms")} / hit ${fmt(part.hit.rootfsMs, " ms")}`,
        failed(rf) ?? "",
      );
    }
  } else add("5. rootfs prep", failed(rf) ?? "—");
  const cr = f.concurrentRootfs;
  if (typeof cr?.containers === "number") {
    add(
      `5. ${cr.containers} containers of one image at once`,
      `${cr.succeeded}/${cr.containers} ok, ${cr.cacheBuilds} build(s), ${cr.servedByThatBuild} served by it`,
      cr.ok ? `rootfs ${fmt(cr.rootfsMs as Stat, " ms")}` : (failed(cr) ?? ""),
    );
  } else add("5. containers of one image at once", failed(cr) ?? "—");
  const ss = f.shimStart;
  add(
    "6. shim `start`, daemon running",
    ss?.ok ? fmt(ss.wallMs as Stat, " ms") : (failed(ss) ?? "—"),
    ss?.ok
      ? `compiled launcher; the Node.js shim: ${fmt(ss.nodeShimMs as Stat, " ms")}; bare \`node -e 0\`: ${fmt(ss.nodeStartupMs as Stat, " ms")}; \`/bin/true\`: ${fmt(ss.spawnFloorMs as Stat, " ms")}`
      : "",
  );
  if (ss?.ok && ss.deleteMs)
    add(
      "6. shim `delete`, daemon running",
      fmt(ss.deleteMs as Stat, " ms"),
      `compiled launcher; the Node.js shim: ${fmt(ss.nodeShimDeleteMs as Stat, " ms")}`,
    );
  const b = f.burst;
  if (typeof b?.pods === "number") {
    const left = Object.entries((b.leftovers ?? {}) as Record<string, number>)
      .filter(([, v]) => v)
      .map(([k, v]) => `${k} ${v}`);
    add(
      `7. burst of ${b.pods} pods (pool ${b.pool ?? "?"})`,
      `${b.succeeded}/${b.pods} running in ${b.allRunningMs} ms, deleted in ${b.deleteAllMs} ms`,
      `${b.poolHits ?? 0} from the pool; leftovers: ${left.join(", ") || "none"}${b.ok ? "" : `; ${failed(b) ?? ""}`}`,
    );
  } else add("7. burst", failed(b) ?? "—");
  const sz = f.sizes;
  if (sz?.ok) {
    const m = (x: unknown) => (typeof x === "number" ? `${(x / 2 ** 20).toFixed(1)} MiB` : "—");
    const shim = sz.shimBundle as { bytes: number; compiledJsBytes: number; dependencyBytes: number };
    const img = sz.installerImage as { bytes: number | null; reason?: string };
    add(
      "8. sizes",
      `shim ${m(shim.bytes)}, kernel ${m(sz.kernelBytes)}, rootfs ${m(sz.rootfsBytes)}, installer image ${img.bytes ? m(img.bytes) : "—"}`,
      `shim = ${m(shim.compiledJsBytes)} JS + ${m(shim.dependencyBytes)} deps (+ node ${m(sz.nodeBinaryBytes)}, + launcher ${m(sz.launcherBytes)})${img.bytes ? "" : `; installer: ${img.reason}`}`,
    );
  } else add("8. sizes", failed(sz) ?? "—");

  const st = f.storage;
  if (st && typeof st.fileMiB === "number") {
    for (const [k, label] of [
      ["virtiofs", "cloudhv, hostPath by virtio-fs"],
      ["scratchDisk", "cloudhv, guest scratch disk"],
      ["runc", "runc, hostPath"],
    ] as const) {
      const t = st[k] as Figure | undefined;
      add(
        `9. storage, ${label}`,
        t?.ok || t?.writeMiBps
          ? `write ${fmt(t.writeMiBps as Stat, " MiB/s")}, read ${fmt(t.readMiBps as Stat, " MiB/s")}`
          : (failed(t) ?? "—"),
        t?.ok || t?.writeMiBps
          ? `files: create ${fmt(t.createPerS as Stat, "/s")}, stat ${fmt(t.statPerS as Stat, "/s")}${t.ok ? "" : `; ${failed(t)}`}`
          : "",
      );
    }
  } else add("9. storage", failed(st) ?? "—");

  const cr2 = f.containerdRestart;
  add(
    "10. output lost across a containerd restart",
    cr2?.ok ? fmt(cr2.lostBytes as Stat, " bytes") : (failed(cr2) ?? "—"),
    cr2?.ok ? `lines lost ${fmt(cr2.lostLines as Stat)}, duplicated ${fmt(cr2.duplicatedLines as Stat)}` : "",
  );
  const to = f.takeover;
  for (const level of (to?.levels ?? []) as Array<{ pods: number; firstExecMs?: Stat; error?: string }>)
    add(
      `10. takeover of ${level.pods} pod(s) after kill -9 of the daemon`,
      level.firstExecMs ? fmt(level.firstExecMs, " ms") : `FAILED: ${level.error}`,
      "kill → each pod's first successful exec",
    );
  if (!to?.levels) add("10. takeover", failed(to) ?? "—");
  const hg = f.hostileGuest;
  if (hg?.quietMs) {
    const modes = ["empty", "errors", "silent"].map((k) => [k, hg[k] as Figure | undefined] as const);
    add(
      "10. exec latency beside a misbehaving guest",
      `quiet ${fmt(hg.quietMs as Stat, " ms")}`,
      modes
        .map(([k, m]) =>
          m?.ok
            ? `${k} ${fmt(m.ms as Stat, " ms")} vs ${fmt(m.quietMs as Stat, " ms")} just before (×${m.ratio})`
            : `${k} ${failed(m) ?? "—"}`,
        )
        .join("; "),
    );
  } else add("10. exec latency beside a misbehaving guest", failed(hg) ?? "—");

  const m = doc.machine;
  const head = [
    `${m.cores} cores (${m.cpuModel}), ${m.memoryGiB} GiB, accel ${m.accel}, ${m.containerdVersion}, ${m.qemuVersion}`,
    `commit ${doc.commit}, ${doc.options.runs} runs per figure${doc.options.quick ? " (--quick)" : ""}, load average ${m.loadAverageStart.join(" ")} at start, ${m.loadAverageEnd?.join(" ") ?? "?"} at end`,
    "",
    "| figure | median (min–max) | notes |",
    "| --- | --- | --- |",
  ];
  return [...head, ...rows.map((r) => `| ${r.join(" | ")} |`)].join("\n");
}

// ---- main --------------------------------------------------------------------------------------

interface Options {
  runs?: number;
  quick?: boolean;
  /** Only these figures (the others say "not run (--only)"); for working on one figure. */
  only?: string[];
  out?: string;
  table?: string;
  installerImage?: string;
}

async function main(opts: Options): Promise<void> {
  const quick = !!opts.quick;
  const runs = opts.runs ?? (quick ? 1 : 5);
  const plan: Plan = {
    runs,
    quick,
    memoryLevels: quick ? [0, 1, 2] : [0, 1, 10, 30],
    burstPods: quick ? 3 : 20,
    bigImageMiB: quick ? 20 : 100,
    shimStartRuns: quick ? 3 : 10,
  };
  const started = new Date();
  const cpus = os.cpus();
  const machine: Machine = {
    cores: cpus.length,
    cpuModel: cpus[0]?.model.trim() ?? "unknown",
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    hostKernel: os.release(),
    accel: "unknown",
    accelReason: "",
    containerdVersion: await firstLine(["containerd", "--version"]),
    qemuVersion: await firstLine(["qemu-system-x86_64", "--version"]),
    nodeVersion: process.version,
    loadAverageStart: os.loadavg().map((x) => Math.round(x * 100) / 100),
  };
  const figures: Record<string, Figure> = {};
  let harnessDir: string | undefined;
  const teardown = new Teardown();
  // First signal: finish the step in flight (a CRI call), start nothing new, clean up, write
  // what was measured. A second one: clean up now and exit.
  const onSignal = (sig: NodeJS.Signals) => {
    if (aborted) {
      say(`${sig} again: cleaning up now`);
      void teardown.run().finally(() => process.exit(130));
      return;
    }
    aborted = `interrupted by ${sig}`;
    say(`${sig}: stopping after the current step, then cleaning up (${sig} again to hurry)`);
    abortChild?.();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    say(`plan: ${JSON.stringify(plan)}`);
    const wanted = (name: string) => !opts.only || opts.only.includes(name);
    say("guest boot (boot-bench) …");
    figures.guestBoot = wanted("guestBoot")
      ? await guestBoot(plan)
      : { ok: false, error: "not run (--only)" };
    if (figures.guestBoot.ok) {
      machine.accel = String(figures.guestBoot.accel);
      machine.accelReason = String(figures.guestBoot.accelReason);
    } else {
      const probe = await probeAccel(new QemuDriver().binary).catch(() => undefined);
      machine.accel = QEMU_ACCEL;
      machine.accelReason = probe
        ? `asked for; KVM here: ${probe.reason}`
        : "asked for; the KVM probe failed";
    }
    say("starting the harness (private containerd, CRI, CNI bridge) …");
    checkAbort();
    const h = await startHarness({ images: [SMALL_IMAGE] });
    harnessDir = h.dir;
    teardown.add(() => h.stop());
    teardown.add(() => removeAllPods(h.cri));
    const figure = async (name: string, fn: () => Promise<Figure>) => {
      if (!wanted(name) && !(name === "podLifecycle" && wanted("hostShim"))) {
        figures[name] = { ok: false, error: "not run (--only)" };
        return;
      }
      const t = performance.now();
      try {
        checkAbort();
        figures[name] = await fn();
      } catch (err) {
        figures[name] = { ok: false, error: errorText(err) };
      }
      await removeAllPods(h.cri); // a failed figure leaves nothing for the next one
      say(
        `${name}: ${figures[name]?.ok ? "ok" : `FAILED (${figures[name]?.error})`} in ${Math.round(since(t) / 1000)} s`,
      );
    };
    let lifecycle: Awaited<ReturnType<typeof podLifecycle>> | undefined;
    await figure("podLifecycle", async () => {
      lifecycle = await podLifecycle(h, plan);
      return lifecycle.lifecycle;
    });
    figures.hostShim = lifecycle?.hostShim ?? { ok: false, error: "the lifecycle runs did not complete" };
    await figure("poolLifecycle", () => poolLifecycle(plan));
    await figure("shimStart", () => shimStart(h, plan));
    await figure("memory", () => memory(h, plan));
    await figure("rootfsPrep", () => rootfsPrep(h, plan));
    await figure("storage", () => storage(h, plan));
    let concurrent: Figure | undefined;
    await figure("burst", async () => {
      const r = await burstWithPool(plan);
      concurrent = r.concurrentRootfs;
      return r.burst;
    });
    figures.concurrentRootfs = concurrent ?? { ok: false, error: "the burst did not complete" };
    // Faults last: they restart containerd and kill the shim daemon (figure 10).
    await figure("containerdRestart", () => containerdRestart(h, SMALL_IMAGE, plan.runs));
    await figure("takeover", () => takeover(h, SMALL_IMAGE, plan.quick ? [1, 2] : [1, 5, 10]));
    await figure("hostileGuest", () => hostileGuest(SMALL_IMAGE, plan.runs));
  } catch (err) {
    figures.harness = { ok: false, error: errorText(err) };
  } finally {
    await teardown.run();
  }
  try {
    figures.sizes =
      !opts.only || opts.only.includes("sizes")
        ? await sizes(opts.installerImage)
        : { ok: false, error: "not run (--only)" };
  } catch (err) {
    figures.sizes = { ok: false, error: errorText(err) };
  }
  // Every figure has a key, even one that never ran.
  for (const name of [
    "podLifecycle",
    "poolLifecycle",
    "hostShim",
    "guestBoot",
    "memory",
    "rootfsPrep",
    "concurrentRootfs",
    "shimStart",
    "burst",
    "sizes",
    "storage",
    "containerdRestart",
    "takeover",
    "hostileGuest",
  ])
    figures[name] ??= { ok: false, error: "not run (an earlier step failed)" };
  machine.loadAverageEnd = os.loadavg().map((x) => Math.round(x * 100) / 100);
  const finished = new Date();
  const doc = {
    schema: SCHEMA,
    startedAt: started.toISOString(),
    finishedAt: finished.toISOString(),
    durationS: Math.round((finished.getTime() - started.getTime()) / 1000),
    commit: await gitCommit(),
    options: plan,
    machine,
    /** Removed by now; named so a caller can check that nothing under it lives on. */
    harnessDir: harnessDir ?? null,
    figures,
  };
  const table = renderTable(doc);
  process.stderr.write(`\n${table}\n\n`);
  if (opts.table) await writeFile(opts.table, `${table}\n`);
  const json = `${JSON.stringify(doc, null, 2)}\n`;
  if (opts.out) await writeFile(opts.out, json);
  else process.stdout.write(json);
  const failedFigures = Object.entries(figures)
    .filter(([, f]) => !f.ok)
    .map(([k]) => k);
  say(`done in ${doc.durationS} s${failedFigures.length ? `; not ok: ${failedFigures.join(", ")}` : ""}`);
  if (aborted) process.exitCode = 130;
}

const program = new Command()
  .name("bench")
  .description(
    "Benchmarks the cloudhv runtime on a private containerd (CRI plugin, `cloudhv` and `runc` handlers, " +
      "CNI bridge) built from this tree: pod lifecycle, host-side shim time, guest boot, memory per pod, " +
      "rootfs preparation, shim `start`, a burst of pods, sizes. Writes one JSON document (stdout or " +
      "--out) and a table (stderr, and --table FILE). Needs root and scripts/dev.sh setup; see docs/performance.md.",
  )
  .option("--runs <n>", "runs per figure (median, min and max over them)", positiveInt)
  .option(
    "--quick",
    "a smoke run: 1 run, memory at 0/1/2 pods, a burst of 3, a 20 MiB large image (default runs: 5)",
  )
  .option("--only <figures>", "only these figures, comma-separated (e.g. storage,memory)", (v: string) =>
    v.split(",").filter(Boolean),
  )
  .option("--out <file>", "write the JSON document here instead of stdout")
  .option("--table <file>", "also write the table (Markdown) here")
  .option(
    "--installer-image <file>",
    "the installer image archive to report the size of (default: build one from this tree with installer/scripts/build-image.sh)",
  )
  .addHelpText(
    "after",
    "\nExamples:\n  npm run bench -- --quick\n  npm run bench -- --runs 7 --out bench.json --table bench.md\n",
  )
  .action(main);

program.parseAsync().catch((err: unknown) => {
  console.error(`bench: ${errorText(err)}`);
  process.exit(1);
});
