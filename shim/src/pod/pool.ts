// The warm pool: VMs booted ahead of time for the default size class (config `pool`), so that a
// new pod skips the VMM launch and the guest boot. A pool VM has only the guest rootfs, a NIC on
// a TAP in its own empty netns and a connected, checked agent; a claim (Pod.boot) moves the TAP
// into the pod's netns, and the pod's disks and volumes arrive by hot-plug. A VM leaves the
// pool once, for good: it is never given to a second pod, and one whose claim failed is
// stopped, never put back. Refills run one VM at a time, at low priority, and wait while pod
// creates are in flight.
import { mkdir, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { z } from "zod";
import type { AgentClient } from "../agent/client.js";
import type { RuntimeConfig } from "../config.js";
import { POD_TAP } from "../state/provisional.js";
import type { Logger } from "../util/log.js";
import { isRunning, processIdentity } from "../util/proc.js";
import type { HypervisorDriver, VmHandle } from "../vmm/types.js";

/** A booted pool VM, ready to be claimed. */
export interface WarmVm {
  readonly vm: VmHandle;
  readonly agent: AgentClient;
  /** VMM launch → agent answered, ms (for the log; a claim costs none of it). */
  readonly bootMs: number;
  /** The VM's dir, which holds the pool's marker until a pod claims it. */
  readonly stateDir?: string;
  /** What the claim hot-plugs for a pod bigger than the class (pods.ts, pod/grow.ts). */
  readonly grow?: { memoryMb: number; vcpus: number };
  /**
   * The NIC it booted with (absent: its claim hot-plugs one): on `tap` in the VMM's own netns,
   * with `mac` in the guest until the claim gives it the pod's.
   */
  readonly bootNic?: BootNic;
}

/** A pool VM's NIC from its boot: the TAP's name and the guest NIC's placeholder MAC. */
export interface BootNic {
  readonly tap: string;
  readonly mac: string;
}

/**
 * What every pool VM boots with: the pod's TAP name (the claim moves the TAP into the pod's
 * netns under the same name) and a locally administered MAC no pod frame passes with (the
 * host's anti-spoof filters allow the pod's MAC only).
 */
export const POOL_BOOT_NIC: BootNic = { tap: POD_TAP, mac: "02:63:68:76:00:01" };

/** What the pool did so far and holds now (the daemon log, pool.json, and metrics read it). */
export interface PoolStats {
  /** VMs the pool keeps ready (config `pool`). */
  target: number;
  ready: number;
  booting: number;
  /** VMs given to pods since the daemon started. */
  claimed: number;
  /** Pods of the pool's size class that found no ready VM and booted cold. */
  coldBoots: number;
  /** Claims that failed (the VM was stopped and the pod booted cold). */
  claimFailures: number;
  /** Pool VMs that failed to boot. */
  refillFailures: number;
  /** Pool VMs that booted and became ready since the daemon started. */
  refilled: number;
  /** Resident memory of the ready VMs' VMMs, summed (bytes; measured at the last status write). */
  idleRssBytes: number;
}

export interface PoolOptions {
  target: number;
  /** Boots one pool VM under the given id (launch, agent, protocol check). */
  boot: (id: string) => Promise<WarmVm>;
  /** Whether pod creates are in flight: a refill does not start while one is. */
  busy: () => boolean;
  log: Logger;
  /** Where the pool's state is written for `cloudhv doctor` (absent: nowhere). */
  statusFile?: string;
  /** A VMM's resident memory in bytes (default: /proc/<pid>/status). */
  rss?: (pid: number) => Promise<number>;
  /** Back-off after a failed boot: doubles from min to max. */
  retryMs?: { min: number; max: number };
  /** How often a refill that waits for creates looks again. */
  pollMs?: number;
  /** New pool VM ids (default: `pool-` + counter + random). */
  newId?: () => string;
}

/** Resident memory of a process, from /proc (0 when it is gone). */
export async function processRss(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8").catch(() => "");
  const kb = /^VmRSS:\s+(\d+) kB/m.exec(status)?.[1];
  return kb ? Number(kb) * 1024 : 0;
}

export class VmPool {
  private readonly ready: WarmVm[] = [];
  /** Ids of every VM that left the pool: never handed out again, whatever happens. */
  private readonly gone = new Set<string>();
  private bootingCount = 0;
  private counters = { claimed: 0, coldBoots: 0, claimFailures: 0, refillFailures: 0, refilled: 0 };
  private idleRssBytes = 0;
  private closed = false;
  private refilling: Promise<void> | undefined;
  private wake: (() => void) | undefined;
  private seq = 0;
  private readonly log: Logger;

  constructor(private readonly opts: PoolOptions) {
    this.log = opts.log.child({ pool: true });
  }

  get target(): number {
    return this.opts.target;
  }

  /** Starts filling the pool in the background. */
  start(): void {
    if (this.opts.target > 0) this.kick();
  }

  /**
   * Takes a ready VM out of the pool for a pod, or undefined when none is ready (the pod then
   * boots cold: call noteColdBoot). The VM never comes back: a failed claim calls discard.
   */
  take(): WarmVm | undefined {
    if (this.closed) return undefined;
    for (;;) {
      const warm = this.ready.shift();
      if (!warm) return undefined;
      if (this.gone.has(warm.vm.id)) continue;
      this.gone.add(warm.vm.id);
      this.counters.claimed++;
      this.changed();
      this.kick();
      return warm;
    }
  }

  /** A pod of the pool's size found the pool empty and booted cold. */
  noteColdBoot(): void {
    this.counters.coldBoots++;
    this.changed();
  }

  /** A claimed VM failed to become its pod's: it is stopped, never put back. */
  async discard(warm: WarmVm): Promise<void> {
    this.gone.add(warm.vm.id);
    this.counters.claimFailures++;
    this.changed();
    warm.agent.close();
    await warm.vm.stop().catch(() => {});
  }

  stats(): PoolStats {
    return {
      target: this.opts.target,
      ready: this.ready.length,
      booting: this.bootingCount,
      ...this.counters,
      idleRssBytes: this.idleRssBytes,
    };
  }

  /** Stops every VM the pool holds (ready or booting) and ends the refills. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.wake?.();
    const held = this.ready.splice(0);
    await Promise.all(
      held.map(async (w) => {
        this.gone.add(w.vm.id);
        w.agent.close();
        await w.vm.stop().catch(() => {});
      }),
    );
    await this.refilling;
    await this.writing;
    if (this.opts.statusFile) await rm(this.opts.statusFile, { force: true });
    this.log.info(this.stats(), "pool closed");
  }

  private kick(): void {
    if (this.closed || this.refilling) return;
    this.refilling = this.refill().finally(() => {
      this.refilling = undefined;
      // A claim that came while the loop was finishing.
      if (!this.closed && this.ready.length < this.opts.target) this.kick();
    });
  }

  /** Sleeps `ms`, or less when the pool closes. */
  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    });
  }

  private async refill(): Promise<void> {
    const retry = this.opts.retryMs ?? { min: 1000, max: 60_000 };
    let backoff = retry.min;
    while (!this.closed && this.ready.length < this.opts.target) {
      // Pod creates first: a refill boot competes with them for the CPU.
      while (!this.closed && this.opts.busy()) await this.pause(this.opts.pollMs ?? 100);
      if (this.closed) return;
      const id = this.opts.newId?.() ?? `pool-${process.pid}-${++this.seq}`;
      this.bootingCount = 1;
      this.changed();
      let warm: WarmVm;
      try {
        warm = await this.opts.boot(id);
      } catch (err) {
        this.bootingCount = 0;
        this.counters.refillFailures++;
        this.log.warn({ vm: id, err: (err as Error).message, retryMs: backoff }, "pool VM failed to boot");
        this.changed();
        await this.pause(backoff);
        backoff = Math.min(backoff * 2, retry.max);
        continue;
      }
      this.bootingCount = 0;
      backoff = retry.min;
      if (this.closed) {
        warm.agent.close();
        await warm.vm.stop().catch(() => {});
        return;
      }
      this.ready.push(warm);
      this.counters.refilled++;
      // A ready VM that dies (its guest panicked, someone killed it) leaves the pool.
      void warm.vm.exited.then(() => {
        const i = this.ready.indexOf(warm);
        if (i < 0) return;
        this.ready.splice(i, 1);
        this.gone.add(warm.vm.id);
        warm.agent.close();
        // Its dir, console and uid go too (stop after the end only cleans up).
        void warm.vm.stop().catch(() => {});
        this.log.warn({ vm: warm.vm.id }, "a ready pool VM ended; refilling");
        this.changed();
        this.kick();
      });
      this.log.info(
        { vm: warm.vm.id, vmmPid: warm.vm.pid, bootMs: Math.round(warm.bootMs) },
        "pool VM ready",
      );
      this.changed();
    }
    this.log.info(await this.measure(), "pool full");
  }

  private async measure(): Promise<PoolStats> {
    const rss = this.opts.rss ?? processRss;
    let total = 0;
    for (const w of this.ready) total += await rss(w.vm.pid);
    this.idleRssBytes = total;
    return this.stats();
  }

  private writing: Promise<void> | undefined;
  private dirty = false;

  /** Rewrites the status file (coalesced: one write at a time, the last state wins). */
  private changed(): void {
    const file = this.opts.statusFile;
    if (!file || this.closed) return;
    this.dirty = true;
    if (this.writing) return;
    this.writing = (async () => {
      while (this.dirty && !this.closed) {
        this.dirty = false;
        const stats = await this.measure();
        const doc = { pid: process.pid, updatedAt: new Date().toISOString(), ...stats };
        const tmp = `${file}.tmp`;
        // The dir is shared by daemons; one that exits removes it when it looks empty.
        await mkdir(path.dirname(file), { recursive: true, mode: 0o755 })
          .then(() => writeFile(tmp, `${JSON.stringify(doc)}\n`, { mode: 0o644 }))
          .then(() => rename(tmp, file))
          .catch((err: Error) => this.log.debug({ err: err.message }, "pool status not written"));
      }
    })().finally(() => {
      this.writing = undefined;
    });
  }
}

/** The one size class the pool holds: what a pod gets with no sizing of its own (pod/sizing.ts). */
export function poolSize(config: RuntimeConfig): { vcpus: number; memoryMb: number; maxVcpus: number } {
  return { vcpus: config.default_vcpus, memoryMb: config.default_memory_mb, maxVcpus: config.max_vcpus };
}

/** Marks a pool VM's dir as the pool's, naming its daemon: a later daemon stops it if that daemon is gone. */
const MARKER = "pool.json";
const markerSchema = z.object({
  daemon: z.object({ pid: z.number().int().positive(), startTime: z.number().int().nonnegative() }),
  vmm: z.object({ pid: z.number().int().positive(), startTime: z.number().int().nonnegative() }),
});

/**
 * The kernel argument that has a pool VM's agent run one practice container before it answers
 * (guest/agent/src/warmup.rs): the VM's first container costs about twice a later one under
 * TCG, and a pool VM pays that while it waits instead of in its pod's start.
 */
export const POOL_WARMUP_ARG = "cloudhv_warmup";

/** A pool VM's kernel arguments: the configured ones, and the warm-up's unless turned off. */
function poolKernelArgs(config: RuntimeConfig): { extraKernelArgs?: string } {
  const args = [config.kernel_args, config.pool_warm_up ? POOL_WARMUP_ARG : ""].filter(Boolean).join(" ");
  return args ? { extraKernelArgs: args } : {};
}

/** Nice value of a pool VM's VMM while it waits: refills never take CPU from pod creates. */
export const POOL_NICE = 19;

/**
 * Boots one pool VM: the guest rootfs only and a NIC on a TAP in an empty netns of its own, at
 * nice 19, its agent connected and its protocol checked. Its dir gets a marker naming this daemon.
 */
export async function bootWarmVm(
  config: RuntimeConfig,
  driver: HypervisorDriver,
  id: string,
  log: Logger,
): Promise<WarmVm> {
  const started = performance.now();
  const size = poolSize(config);
  const stateDir = path.join(config.state_dir, "vm", id);
  const vm = await driver.launch({
    id,
    kernelPath: config.kernel_path,
    rootfsPath: config.rootfs_path,
    ...poolKernelArgs(config),
    ...size,
    stateDir,
    log: log.child({ vm: id }),
    isolatedNetwork: true,
    isolatedNic: POOL_BOOT_NIC,
    nice: POOL_NICE,
    // Room for a bigger pod's memory (pod/grow.ts); vCPUs have theirs in maxVcpus.
    ...(config.pool_grow ? { maxMemoryMb: config.max_memory_mb } : {}),
    ...(config.free_page_reporting ? { freePageReporting: true } : {}),
  });
  try {
    const [daemon, vmm] = await Promise.all([processIdentity(process.pid), processIdentity(vm.pid)]);
    if (daemon && vmm)
      await writeFile(path.join(stateDir, MARKER), `${JSON.stringify({ daemon, vmm })}\n`, { mode: 0o600 });
    const agent = await vm.connectAgent({ timeoutMs: config.agent_boot_timeout_ms });
    try {
      await agent.checkProtocol({ timeoutMs: 5000 });
    } catch (err) {
      agent.close();
      throw err;
    }
    return { vm, agent, bootMs: performance.now() - started, stateDir, bootNic: POOL_BOOT_NIC };
  } catch (err) {
    await vm.stop();
    throw err;
  }
}

/** A claimed VM is a pod's from now on (its record says so): no longer the pool's to stop. */
export async function forgetPoolMarker(warm: WarmVm): Promise<void> {
  if (warm.stateDir) await rm(path.join(warm.stateDir, MARKER), { force: true });
}

/**
 * Stops the pool VMs that a daemon now gone left behind (its crash, a kill): unclaimed, they
 * belong to no pod and no record. Run at daemon start, before the sweep of stale VM dirs.
 * Returns the ids stopped.
 */
export async function reapOrphanPoolVms(vmDir: string, log: Logger): Promise<string[]> {
  const reaped: string[] = [];
  for (const name of await readdir(vmDir).catch(() => [] as string[])) {
    const dir = path.join(vmDir, name);
    const text = await readFile(path.join(dir, MARKER), "utf8").catch(() => undefined);
    if (text === undefined) continue;
    let marker: z.infer<typeof markerSchema>;
    try {
      marker = markerSchema.parse(JSON.parse(text));
    } catch {
      continue;
    }
    if (await isRunning(marker.daemon)) continue;
    // Only that very process (pid and start time): a reused pid is never signalled.
    if (await isRunning(marker.vmm)) {
      try {
        process.kill(marker.vmm.pid, "SIGKILL");
      } catch {
        // gone meanwhile
      }
      for (let i = 0; i < 200 && (await isRunning(marker.vmm)); i++) await sleep(10);
    }
    // Its uid lock names it: free that uid now rather than at the next allocation's check.
    const lock = path.join(vmDir, ".vmm-uids");
    for (const uid of await readdir(lock).catch(() => [] as string[])) {
      const held = await readFile(path.join(lock, uid), "utf8").catch(() => "");
      if (held.trim() === `${marker.vmm.pid} ${marker.vmm.startTime}`)
        await rm(path.join(lock, uid), { force: true });
    }
    await rm(dir, { recursive: true, force: true });
    reaped.push(name);
  }
  if (reaped.length > 0) log.info({ reaped }, "stopped pool VMs a previous daemon left unclaimed");
  return reaped;
}
