// Periodic agent health checks (pod/health.ts) against a fake agent: a wedged agent is declared
// after N consecutive misses, one answer resets the count, one check is in flight at a time.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { watchAgentHealth } from "../src/pod/health.js";

/** Holds the event loop open (the checks' timers do not) until `done` settles. */
async function held<T>(done: Promise<T>): Promise<T> {
  const hold = setInterval(() => undefined, 1000);
  try {
    return await done;
  } finally {
    clearInterval(hold);
  }
}

describe("agent health checks", () => {
  it("a silent agent is declared wedged after N misses, with a reason; one check in flight", async () => {
    let inFlight = 0;
    let maxInFlight = 0;
    let calls = 0;
    const started = Date.now();
    const reason = await held(
      new Promise<string>((resolve) => {
        watchAgentHealth({
          // Never answers: only the deadline ends a check.
          check: async (timeoutMs) => {
            calls++;
            inFlight++;
            maxInFlight = Math.max(maxInFlight, inFlight);
            await sleep(timeoutMs);
            inFlight--;
            throw new Error("deadline exceeded");
          },
          intervalMs: 20,
          deadlineMs: 50,
          misses: 3,
          onWedged: resolve,
          random: () => 0.5,
        });
      }),
    );
    assert.equal(calls, 3);
    assert.equal(maxInFlight, 1);
    assert.match(reason, /guest agent did not answer 3 health checks in a row/);
    assert.ok(Date.now() - started >= 3 * 50, "not before three deadlines passed");
  });

  it("an agent that answers between misses is never declared wedged; stop ends the checks", async () => {
    let calls = 0;
    let wedged: string | undefined;
    const stop = watchAgentHealth({
      // Miss, miss, answer, miss, miss, answer, ...: never 3 in a row.
      check: async () => {
        calls++;
        if (calls % 3 !== 0) throw new Error("no answer");
      },
      intervalMs: 5,
      deadlineMs: 50,
      misses: 3,
      onWedged: (r) => (wedged = r),
      random: () => 0,
    });
    await held(sleep(300));
    stop();
    const seen = calls;
    assert.ok(seen >= 9, `checks ran (${seen})`);
    assert.equal(wedged, undefined);
    await held(sleep(50));
    assert.equal(calls, seen, "no check after stop");
  });

  it("interval 0 turns the checks off", async () => {
    let calls = 0;
    watchAgentHealth({
      check: async () => void calls++,
      intervalMs: 0,
      deadlineMs: 50,
      misses: 1,
      onWedged: () => assert.fail("no checks, no verdict"),
    });
    await held(sleep(50));
    assert.equal(calls, 0);
  });
});
