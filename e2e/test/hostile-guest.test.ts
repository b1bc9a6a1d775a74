// A misbehaving guest beside well-behaved pods on one shim daemon (issue 15). The guest is a
// DOUBLE: real QEMU, kernel and agent, with a fake agent channel in front (e2e/hostile/qemu as
// qemu_binary) that a test switches into answering every request at once with nothing, with
// 8 MiB error strings, or never again. The other pod's exec through CRI must keep working; the
// figure (latency vs a quiet node) is the bench's, this only asserts that it completes. The
// real agent has no such hook: a tenant cannot trigger any of this.
import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { CriClient } from "../src/cri/client.js";
import { type Harness, startHarness } from "../src/harness.js";
import {
  execLatencies,
  HOSTILE_QEMU,
  killVmm,
  makeHostile,
  median,
  pressExecs,
  type RunningPod,
  requestsSeen,
  runPod,
} from "../src/hostile-guest.js";
import { entriesOf, entriesSettled, processesMatching, settled } from "../src/leaks.js";

const IMAGE = "docker.io/cloudhv-test/busybox:hostile";
const TICKING = ["sh", "-c", "while true; do echo tick; usleep 100000; done"];

async function waitFor(what: string, ms: number, probe: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await probe())) {
    if (Date.now() > deadline) assert.fail(`${what}: not within ${ms} ms`);
    await sleep(200);
  }
}

async function daemonLogs(harness: Harness): Promise<string> {
  let text = "";
  const dir = harness.runtime.logDir;
  for (const name of (await readdir(dir).catch(() => [] as string[])).filter((n) => n.endsWith(".log")))
    text += await readFile(path.join(dir, name), "utf8");
  return text;
}

describe("a misbehaving guest (a fake agent channel, real QEMU) beside a normal pod on one daemon", () => {
  let harness: Harness;
  let cri: CriClient;
  let normal: RunningPod;
  let quietMs: number;
  const report: string[] = [];

  before(async () => {
    harness = await startHarness({
      images: [IMAGE],
      runtimeConfig: {
        qemu_binary: HOSTILE_QEMU,
        // Short health checks, so a silent guest is found within the test's time.
        agent_health_interval_ms: 2000,
        agent_health_timeout_ms: 2000,
        agent_health_misses: 3,
      },
    });
    cri = harness.cri;
    normal = await runPod(cri, harness.runtime.stateDir, "normal", IMAGE, ["sleep", "3600"]);
    await execLatencies(cri, normal.id, 1); // warm-up
    quietMs = median(await execLatencies(cri, normal.id, 5));
    report.push(`quiet ${quietMs.toFixed(0)} ms`);
  });

  after(async () => {
    process.stdout.write(`# normal pod's exec latency (median of 5): ${report.join(", ")}\n`);
    await harness?.stop();
  });

  /** Runs one hostile pod in `mode` while the normal pod is exec'd into; ends it by killing its VMM. */
  async function beside(
    mode: "empty" | "errors 8388608" | "silent",
    check: (hostile: RunningPod) => Promise<void>,
  ): Promise<void> {
    const hostile = await runPod(
      cri,
      harness.runtime.stateDir,
      `hostile-${mode.split(" ")[0]}`,
      IMAGE,
      TICKING,
    );
    try {
      await makeHostile(hostile, mode);
      // The tenant adds execs into its own pod (not for `silent`: each would wait its full timeout).
      const stop = mode === "silent" ? async () => 0 : pressExecs(cri, hostile.id);
      const latencies = await execLatencies(cri, normal.id, 5);
      await stop();
      report.push(`${mode.split(" ")[0]} ${median(latencies).toFixed(0)} ms`);
      await check(hostile);
    } finally {
      await killVmm(hostile);
      await waitFor(
        "the hostile pod's container ends with its VM",
        60_000,
        async () => (await cri.containerStatus(hostile.id)).state === "CONTAINER_EXITED",
      );
      await cri.stopContainer(hostile.id, 2);
      await cri.removeContainer(hostile.id);
      await cri.stopPodSandbox(hostile.podId);
      await cri.removePodSandbox(hostile.podId);
    }
    // The double's fake agent leaves within 0.5 s of its QEMU (it polls for being reparented).
    await waitFor(
      "nothing of the hostile VM runs",
      5000,
      async () => (await processesMatching(hostile.vmDir)).length === 0,
    );
  }

  it("empty replies in a loop: the daemon backs off (not thousands of requests a second); the other pod's exec works", async () => {
    await beside("empty", async (hostile) => {
      const first = await requestsSeen(hostile);
      await sleep(3000);
      const rate = ((await requestsSeen(hostile)) - first) / 3;
      report.push(`(the empty-answering guest was asked ${rate.toFixed(0)} times a second)`);
      // Two output streams, each asking at most every 100 ms once backed off.
      assert.ok(rate < 60, `the daemon asks an empty-answering guest ${rate.toFixed(0)} times a second`);
      assert.equal((await cri.containerStatus(hostile.id)).state, "CONTAINER_RUNNING");
    });
  });

  it("8 MiB error strings: the daemon drops the guest's channel and ends its task; the other pod's exec works", async () => {
    await beside("errors 8388608", async (hostile) => {
      await waitFor(
        "the hostile pod's container ends",
        60_000,
        async () => (await cri.containerStatus(hostile.id)).state === "CONTAINER_EXITED",
      );
      assert.match(await daemonLogs(harness), /over the 4194304-byte limit/);
    });
  });

  it("a guest that never answers again: the health checks end its pod with the reason; the other pod's exec works", async () => {
    await beside("silent", async (hostile) => {
      assert.ok((await requestsSeen(hostile)) > 0, "the double saw the daemon's requests");
      // Checks every 2 s, 2 s deadline, 3 misses (the harness's config): ~12 s, bounded by 60.
      const silentSince = Date.now();
      await waitFor(
        "the silent pod's container ends on its own",
        60_000,
        async () => (await cri.containerStatus(hostile.id)).state === "CONTAINER_EXITED",
      );
      report.push(
        `(the silent guest's pod ended ${((Date.now() - silentSince) / 1000).toFixed(1)} s after the checks began failing at most)`,
      );
      assert.match(await daemonLogs(harness), /guest agent did not answer 3 health checks in a row/);
      assert.equal(
        (await cri.containerStatus(normal.id)).state,
        "CONTAINER_RUNNING",
        "the normal pod runs on",
      );
    });
  });

  it("leaves nothing behind", async () => {
    await cri.stopContainer(normal.id, 2);
    await cri.removeContainer(normal.id);
    await cri.stopPodSandbox(normal.podId);
    await cri.removePodSandbox(normal.podId);
    const stateDir = harness.runtime.stateDir;
    assert.deepEqual(
      await settled(() => processesMatching(path.join(stateDir, "vm"))),
      [],
      "no VMM or fake guest left",
    );
    assert.deepEqual(await settled(() => entriesOf(path.join(stateDir, "vm"))), [], "no VM state left");
    assert.deepEqual(await entriesSettled(path.join(stateDir, "records")), [], "no pod record left");
  });
});
