// Phase timings of one task operation, logged with it (always on: a few performance.now()
// calls). Phases named `guest*` wait on the guest (boot, agent RPCs, unplug handshakes);
// the rest is the host's own work, which is what the benchmark's host-side figure adds up.
// Guest waits can overlap (the guest configures its network while it creates a container):
// they count once, as the time during which at least one ran.
const round = (ms: number) => Math.round(ms * 10) / 10;
const isGuest = (name: string) => name.startsWith("guest");

export class PhaseClock {
  private readonly ms = new Map<string, number>();
  private readonly marks = new Map<string, number>();
  /** When each timed guest wait ran, [start, end]. */
  private readonly guestSpans: Array<[number, number]> = [];
  /** Guest waits added as durations (no span known): they count in full. */
  private guestAdded = 0;

  /** Adds the time `work` takes to phase `name` (phases may repeat: their times add up). */
  async time<T>(name: string, work: Promise<T> | (() => Promise<T>)): Promise<T> {
    const started = performance.now();
    try {
      return await (typeof work === "function" ? work() : work);
    } finally {
      const ended = performance.now();
      this.ms.set(name, (this.ms.get(name) ?? 0) + (ended - started));
      if (isGuest(name)) this.guestSpans.push([started, ended]);
    }
  }

  add(name: string, ms: number): void {
    this.ms.set(name, (this.ms.get(name) ?? 0) + Math.max(0, ms));
    if (isGuest(name)) this.guestAdded += Math.max(0, ms);
  }

  /** Adds another clock's phases and marks (a pool claim that was timed on its own clock). */
  merge(other: PhaseClock): void {
    for (const [name, ms] of other.ms) this.ms.set(name, (this.ms.get(name) ?? 0) + ms);
    for (const [name, at] of other.marks) this.marks.set(name, at);
    this.guestSpans.push(...other.guestSpans);
    this.guestAdded += other.guestAdded;
  }

  /** Milliseconds during which at least one guest wait ran. */
  private guestWall(): number {
    let total = this.guestAdded;
    let reached = Number.NEGATIVE_INFINITY;
    for (const [start, end] of [...this.guestSpans].sort((a, b) => a[0] - b[0])) {
      // Only what this span adds beyond the ones before it.
      total += Math.max(0, end - Math.max(start, reached));
      reached = Math.max(reached, end);
    }
    return total;
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
   * Every phase, plus `guestMs` (the time spent waiting on the guest, overlapping waits once)
   * and `hostMs` (the rest of `totalMs`, including the unnamed work between phases).
   */
  summary(totalMs: number): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [name, ms] of this.ms) out[name] = round(ms);
    const guest = this.guestWall();
    out.guestMs = round(guest);
    out.hostMs = round(Math.max(0, totalMs - guest));
    return out;
  }
}
