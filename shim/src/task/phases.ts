// Phase timings of one task operation, logged with it (always on: a few performance.now()
// calls). Phases named `guest*` wait on the guest (boot, agent RPCs, unplug handshakes);
// the rest is the host's own work, which is what the benchmark's host-side figure adds up.
import type { HypervisorDriver } from "../vmm/types.js";

const round = (ms: number) => Math.round(ms * 10) / 10;

export class PhaseClock {
  private readonly ms = new Map<string, number>();

  /** Adds the time `work` takes to phase `name` (phases may repeat: their times add up). */
  async time<T>(name: string, work: Promise<T> | (() => Promise<T>)): Promise<T> {
    const started = performance.now();
    try {
      return await (typeof work === "function" ? work() : work);
    } finally {
      this.add(name, performance.now() - started);
    }
  }

  /** A deferred step that records its own duration when it runs. */
  wrap(name: string, step: () => unknown): () => Promise<unknown> {
    return () => this.time(name, async () => step());
  }

  add(name: string, ms: number): void {
    this.ms.set(name, (this.ms.get(name) ?? 0) + Math.max(0, ms));
  }

  get(name: string): number {
    return this.ms.get(name) ?? 0;
  }

  /** The driver, with `vmmLaunchMs` measured around its launch (the VMM up, sockets ready). */
  timedDriver(driver: HypervisorDriver): HypervisorDriver {
    return { name: driver.name, launch: (config) => this.time("vmmLaunchMs", driver.launch(config)) };
  }

  /**
   * Every phase, plus `guestMs` (sum of guest waits) and `hostMs` (the rest of `totalMs`,
   * including the unnamed work between phases).
   */
  summary(totalMs: number): Record<string, number> {
    let guest = 0;
    const out: Record<string, number> = {};
    for (const [name, ms] of this.ms) {
      out[name] = round(ms);
      if (name.startsWith("guest")) guest += ms;
    }
    out.guestMs = round(guest);
    out.hostMs = round(Math.max(0, totalMs - guest));
    return out;
  }
}
