// Log lines a guest can cause (its errors, its channels ending) are rate-limited per guest: a
// token bucket keyed by the pod's VM, so one hostile pod cannot flood the daemon's log (or
// push the other pods' lines out of its rotation). Dropped lines are counted and the count is
// logged with the guest's next line that passes.
import type { Logger } from "./log.js";

export interface GuestLogLimits {
  /** Lines a guest may log at once. */
  burst: number;
  /** Lines per minute it gets back. */
  perMinute: number;
  /** Guests tracked at most; idle full buckets are forgotten first. */
  maxGuests: number;
}

export const GUEST_LOG_LIMITS: GuestLogLimits = { burst: 5, perMinute: 6, maxGuests: 4096 };

interface Bucket {
  tokens: number;
  at: number;
  suppressed: number;
}

export class GuestLogLimiter {
  private readonly buckets = new Map<string, Bucket>();

  constructor(
    private readonly limits: GuestLogLimits = GUEST_LOG_LIMITS,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /**
   * Takes a token for `guest`: the number of lines suppressed since its last passing one, or
   * undefined when this line must be dropped (and is counted).
   */
  take(guest: string): number | undefined {
    const now = this.now();
    let b = this.buckets.get(guest);
    if (!b) {
      this.prune(now);
      b = { tokens: this.limits.burst, at: now, suppressed: 0 };
      this.buckets.set(guest, b);
    }
    b.tokens = Math.min(this.limits.burst, b.tokens + ((now - b.at) * this.limits.perMinute) / 60_000);
    b.at = now;
    if (b.tokens < 1) {
      b.suppressed++;
      return undefined;
    }
    b.tokens--;
    const suppressed = b.suppressed;
    b.suppressed = 0;
    return suppressed;
  }

  get size(): number {
    return this.buckets.size;
  }

  /** Keeps the map bounded: buckets that have refilled and owe no count go first, then the oldest. */
  private prune(now: number): void {
    if (this.buckets.size < this.limits.maxGuests) return;
    const refillMs = (this.limits.burst * 60_000) / this.limits.perMinute;
    for (const [key, b] of this.buckets)
      if (b.suppressed === 0 && now - b.at >= refillMs) this.buckets.delete(key);
    while (this.buckets.size >= this.limits.maxGuests) {
      const oldest = this.buckets.keys().next().value;
      if (oldest === undefined) break;
      this.buckets.delete(oldest);
    }
  }
}

/** The daemon's one limiter: every guest-caused line goes through it. */
export const guestLines = new GuestLogLimiter();

/**
 * Logs a line caused by `guest` (its VM id) at `level`, unless its bucket is empty; the first
 * line after drops is preceded by one that counts them. Fields must already be cut (errors.ts).
 */
export function logFromGuest(
  log: Logger,
  guest: string,
  level: "info" | "warn" | "error",
  fields: Record<string, unknown>,
  msg: string,
  limiter: GuestLogLimiter = guestLines,
): void {
  if (!log.isLevelEnabled(level)) return;
  const suppressed = limiter.take(guest);
  if (suppressed === undefined) return;
  if (suppressed > 0)
    log.warn({ guest, suppressedLines: suppressed }, "guest-caused log lines suppressed (rate limit)");
  log[level]({ guest, ...fields }, msg);
}

/** The daemon's logger as the ttrpc server's: guest-caused failures go through the limiter. */
export function serverLogFor(log: Logger): Pick<Logger, "warn" | "error"> & {
  fromGuest(guest: string, fields: Record<string, unknown>, msg: string): void;
} {
  return {
    warn: log.warn.bind(log),
    error: log.error.bind(log),
    fromGuest: (guest, fields, msg) => logFromGuest(log, guest, "error", fields, msg),
  };
}
