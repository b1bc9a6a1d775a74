// Phase timings (util/phases.ts): what the log lines' hostMs and guestMs mean when guest
// waits overlap (a pod's guest network and first container are set up at once).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { PhaseClock } from "../src/util/phases.js";

describe("phase timings", () => {
  it("count overlapping guest waits once, so host work is what remains of the total", async () => {
    const phases = new PhaseClock();
    const started = performance.now();
    await Promise.all([
      phases.time("guestNetworkMs", sleep(60)),
      phases.time("guestCreateContainerMs", sleep(80)),
    ]);
    await phases.time("hotplugMs", sleep(30));
    const summary = phases.summary(performance.now() - started);
    // Each phase keeps its own time; together they waited ~80 ms on the guest, not ~140.
    assert.ok((summary.guestNetworkMs ?? 0) >= 55, `guestNetworkMs ${summary.guestNetworkMs}`);
    assert.ok((summary.guestCreateContainerMs ?? 0) >= 75);
    assert.ok((summary.guestMs ?? 0) >= 75 && (summary.guestMs ?? 0) < 120, `guestMs ${summary.guestMs}`);
    assert.ok((summary.hostMs ?? 0) >= 25, `hostMs ${summary.hostMs}`);
  });

  it("count waits one after the other in full, and added durations besides", async () => {
    const phases = new PhaseClock();
    await phases.time("guestVolumesMs", sleep(30));
    await phases.time("guestCreateContainerMs", sleep(30));
    phases.add("guestBootMs", 100);
    const other = new PhaseClock();
    await other.time("guestNetworkMs", sleep(20));
    phases.merge(other);
    const summary = phases.summary(1000);
    assert.ok((summary.guestMs ?? 0) >= 175 && (summary.guestMs ?? 0) < 220, `guestMs ${summary.guestMs}`);
    assert.equal(summary.hostMs, Math.round((1000 - (summary.guestMs ?? 0)) * 10) / 10);
  });
});
