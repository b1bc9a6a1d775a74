// Waiting with a bound, without leaving a timer behind to hold the process open.

export const TIMED_OUT: unique symbol = Symbol("timed out");

/** Resolves with `promise`'s value, or TIMED_OUT after `ms`; the timer is cleared either way. */
export async function within<T>(promise: Promise<T>, ms: number): Promise<T | typeof TIMED_OUT> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<typeof TIMED_OUT>((resolve) => {
    timer = setTimeout(() => resolve(TIMED_OUT), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
