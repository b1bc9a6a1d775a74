// Phase timings of one task operation, logged with it (always on: a few performance.now()
// calls). Phases named `guest*` wait on the guest (boot, agent RPCs, unplug handshakes);
// the rest is the host's own work, which is what the benchmark's host-side figure adds up.
const round = (ms: number) => Math.round(ms * 10) / 10;

export class PhaseClock {
  private readonly ms = new Map<string, number>();
  private readonly marks = new Map<string, number>();

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

  /** Adds another clock's phases and marks (a pool claim that was timed on its own clock). */
  merge(other: PhaseClock): void {
    for (const [name, ms] of other.ms) this.add(name, ms);
    for (const [name, at] of other.marks) this.marks.set(name, at);
  }

  get(name: string): number {
    return this.ms.get(name) ?? 0;
  }

  /** Notes that the operation reached step `name` now (for the coarse spans of the log line). */
  mark(name: string): void {
    this.marks.set(name, performance.now());
  }

  /** Milliseconds from mark `from` to mark `to`; 0 when either was not reached. */
  span(from: string, to: string): number {
    const start = this.marks.get(from);
    const end = this.marks.get(to);
    return start === undefined || end === undefined ? 0 : round(Math.max(0, end - start));
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
