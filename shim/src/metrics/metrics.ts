// The daemon's Prometheus metrics (prom-client): pod starts by path and their phase durations,
// VMs running, task create failures by reason, daemon restarts, and the warm pool's gauges
// through a hook its code registers. Every label has a fixed, small set of values (a path, a
// phase name of our own code, a gRPC code name): never a pod or task id.
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import { statusOf } from "../errors.js";
import { codeName } from "../ttrpc/status.js";

/** How a pod got its VM: booted for it, or taken from the warm pool. */
export type StartPath = "cold" | "pool";

/** What the pool reports when scraped (registered by the pool's code). */
export interface PoolState {
  /** Booted VMs waiting for a pod. */
  ready: number;
  /** VMs booting to refill it. */
  booting: number;
  /** How many it keeps ready (the config's count). */
  target: number;
}

/** What the task service calls; absent in unit tests. */
export interface PodMetrics {
  podStarted(path: StartPath, phases: Readonly<Record<string, number>>): void;
  createFailed(err: unknown): void;
}

/** PhaseClock names (`vmmLaunchMs`); anything else is not a phase of ours. */
const PHASE_NAME = /^[a-z][A-Za-z0-9]{0,47}Ms$/;
/** Bound on distinct phase label values; more (a bug) are counted as "other". */
const MAX_PHASES = 48;
/** Seconds: a host step of a millisecond up to a TCG guest boot. */
const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export class DaemonMetrics implements PodMetrics {
  readonly registry = new Registry();
  private readonly starts: Counter<"path">;
  private readonly phases: Histogram<"path" | "phase">;
  private readonly failures: Counter<"reason">;
  private readonly refills: Counter;
  private readonly phaseNames = new Set<string>();
  private pool: (() => PoolState) | undefined;

  constructor(opts: {
    /** VMs this daemon runs now, read at each scrape. */
    vmsRunning: () => number;
    /** This daemon identity's starts since its last clean start, and how many found a crashed predecessor. */
    history: { starts: number; unclean: number };
  }) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: "cloudhv_daemon_" });
    this.starts = new Counter({
      name: "cloudhv_pod_starts_total",
      help: "Pods started (their VM booted for them: path=cold; taken from the warm pool: path=pool)",
      labelNames: ["path"],
      registers,
    });
    for (const path of ["cold", "pool"] as const) this.starts.labels(path).inc(0);
    this.phases = new Histogram({
      name: "cloudhv_pod_start_phase_seconds",
      help: "Duration of each phase of a pod start (the task create of its sandbox; phase=total: all of it)",
      labelNames: ["path", "phase"],
      buckets: BUCKETS,
      registers,
    });
    this.failures = new Counter({
      name: "cloudhv_task_create_failures_total",
      help: "Task creates that failed, by the gRPC code containerd got (reason)",
      labelNames: ["reason"],
      registers,
    });
    new Gauge({
      name: "cloudhv_vms_running",
      help: "Pod VMs this daemon runs",
      registers,
      collect() {
        this.set(opts.vmsRunning());
      },
    });
    const restarts = new Counter({
      name: "cloudhv_daemon_restarts_total",
      help: "Starts of this daemon (build, config, containerd) since its last clean start, after the first",
      registers,
    });
    restarts.inc(Math.max(0, opts.history.starts - 1));
    const unclean = new Counter({
      name: "cloudhv_daemon_unclean_restarts_total",
      help: "Daemon starts that found its predecessor had not exited cleanly (a crash or a kill)",
      registers,
    });
    unclean.inc(Math.max(0, opts.history.unclean));
    const pool = () => this.pool;
    new Gauge({
      name: "cloudhv_pool_vms",
      help: "Warm pool VMs by state (ready, booting) and the pool's target size (state=target)",
      labelNames: ["state"],
      registers,
      collect() {
        const state = pool()?.();
        if (!state) return;
        this.labels("ready").set(state.ready);
        this.labels("booting").set(state.booting);
        this.labels("target").set(state.target);
      },
    });
    this.refills = new Counter({
      name: "cloudhv_pool_refills_total",
      help: "VMs the warm pool booted to refill itself",
      registers,
    });
  }

  /** A pod's VM is up and its sandbox created; `phases`: the PhaseClock summary plus totalMs. */
  podStarted(path: StartPath, phases: Readonly<Record<string, number>>): void {
    this.starts.labels(path).inc();
    for (const [name, ms] of Object.entries(phases)) {
      if (!Number.isFinite(ms) || ms < 0) continue;
      const phase = name === "totalMs" ? "total" : this.phaseLabel(name);
      this.phases.labels(path, phase).observe(ms / 1000);
    }
  }

  createFailed(err: unknown): void {
    this.failures.labels(codeName(statusOf(err).code).toLowerCase()).inc();
  }

  /** The pool's code registers how to read its state (once; a later call replaces it). */
  registerPool(state: () => PoolState): void {
    this.pool = state;
  }

  poolRefilled(count = 1): void {
    this.refills.inc(count);
  }

  async exposition(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  private phaseLabel(name: string): string {
    if (!PHASE_NAME.test(name)) return "other";
    if (this.phaseNames.has(name)) return name;
    if (this.phaseNames.size >= MAX_PHASES) return "other";
    this.phaseNames.add(name);
    return name;
  }
}
