// A pod's guest agent can stop answering (a wedged guest, a hostile one): its tasks would then
// stay "running" for containerd forever (WaitProcess waits by design). A periodic Health call
// with a deadline notices: after `misses` consecutive unanswered checks the pod is declared
// failed. One check in flight per pod; the first tick is jittered so many pods do not tick
// together; timers do not hold the daemon's event loop open.

export interface HealthCheckOptions {
  /** One Health call that rejects when the agent does not answer within `timeoutMs`. */
  check: (timeoutMs: number) => Promise<unknown>;
  /** Time between the end of one check and the start of the next; 0 turns checks off. */
  intervalMs: number;
  /** How long one check may take before it counts as a miss. */
  deadlineMs: number;
  /** Consecutive misses that make the agent wedged (>= 1). */
  misses: number;
  /** Called once, with a reason for the logs and the task's exit. */
  onWedged: (reason: string) => void;
  /** For tests: the jitter source (0 <= x < 1). */
  random?: () => number;
}

/** Starts the checks; the returned function stops them (idempotent). */
export function watchAgentHealth(opts: HealthCheckOptions): () => void {
  if (opts.intervalMs <= 0 || opts.misses < 1) return () => undefined;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let missed = 0;
  let firstMissAt = 0;

  const schedule = (delayMs: number): void => {
    if (stopped) return;
    timer = setTimeout(() => void tick(), delayMs);
    timer.unref();
  };

  const tick = async (): Promise<void> => {
    const startedAt = Date.now();
    let answered = false;
    try {
      await opts.check(opts.deadlineMs);
      answered = true;
    } catch {
      // Counted below: an error answer and no answer alike mean the agent cannot serve.
    }
    if (stopped) return;
    if (answered) {
      missed = 0;
    } else {
      if (missed === 0) firstMissAt = startedAt;
      missed += 1;
      if (missed >= opts.misses) {
        stopped = true;
        const seconds = Math.round((Date.now() - firstMissAt) / 1000);
        opts.onWedged(
          `guest agent did not answer ${missed} health checks in a row (for ${seconds} s, deadline ` +
            `${opts.deadlineMs} ms each): the guest is wedged; the pod's VM is stopped`,
        );
        return;
      }
    }
    schedule(opts.intervalMs);
  };

  // Jittered first tick: anywhere in one interval.
  schedule(Math.floor((opts.random ?? Math.random)() * opts.intervalMs));
  return () => {
    stopped = true;
    if (timer) clearTimeout(timer);
  };
}
