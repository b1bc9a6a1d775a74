// The daemon's metrics without a daemon: the address syntax, bounded labels, the pool hook and
// the restart history file.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import { parseConfig } from "../src/config.js";
import { ShimError } from "../src/errors.js";
import { parseMetricsAddress } from "../src/metrics/address.js";
import { recordCleanExit, recordStart } from "../src/metrics/history.js";
import { DaemonMetrics } from "../src/metrics/metrics.js";

const lines = async (m: DaemonMetrics, prefix: string) =>
  (await m.exposition()).body.split("\n").filter((l) => l.startsWith(prefix));

describe("metrics", () => {
  it("metrics_address: off, IP:PORT, [IPv6]:PORT or unix:/path; anything else names the key", () => {
    assert.equal(parseConfig({}, "t").metrics_address, "");
    assert.deepEqual(parseMetricsAddress("127.0.0.1:9464"), { kind: "tcp", host: "127.0.0.1", port: 9464 });
    assert.deepEqual(parseMetricsAddress("[::1]:1"), { kind: "tcp", host: "::1", port: 1 });
    assert.deepEqual(parseMetricsAddress("unix:/run/cloudhv/metrics.sock"), {
      kind: "unix",
      path: "/run/cloudhv/metrics.sock",
    });
    for (const bad of [
      "localhost:9464",
      "127.0.0.1",
      ":9464",
      "127.0.0.1:0",
      "127.0.0.1:70000",
      "1.2.3:4",
      "unix:rel.sock",
      "unix:/a/../b",
    ]) {
      assert.equal(parseMetricsAddress(bad), undefined, bad);
      assert.throws(() => parseConfig({ metrics_address: bad }, "t"), /metrics_address must be/, bad);
    }
  });

  it("phase labels are our phase names only, at most 48 of them; failures are labelled by gRPC code", async () => {
    const m = new DaemonMetrics({ vmsRunning: () => 3, history: { starts: 1, unclean: 0 } });
    const phases: Record<string, number> = {
      totalMs: 1500,
      vmmLaunchMs: 60,
      "pod-123/evilMs": 5,
      GuestMs: 1,
    };
    for (let i = 0; i < 60; i++) phases[`p${i}Ms`] = i;
    m.podStarted("cold", phases);
    const counts = await lines(m, "cloudhv_pod_start_phase_seconds_count");
    const labels = counts.map((l) => /phase="([^"]*)"/.exec(l)?.[1]);
    assert.ok(labels.includes("total") && labels.includes("vmmLaunchMs") && labels.includes("other"));
    assert.ok(!labels.some((l) => l?.includes("pod-123")), "an odd name is not a label");
    assert.ok(new Set(labels).size <= 48 + 2, `${new Set(labels).size} phase labels`);
    assert.match((await lines(m, 'cloudhv_pod_starts_total{path="cold"}'))[0] ?? "", / 1$/);
    assert.match((await lines(m, "cloudhv_vms_running"))[0] ?? "", / 3$/);
    m.createFailed(new ShimError("InvalidArgument", "pod uid-1 is bad"));
    m.createFailed(new Error("surprise"));
    const failures = await lines(m, "cloudhv_task_create_failures_total{");
    assert.deepEqual(failures.sort(), [
      'cloudhv_task_create_failures_total{reason="invalid_argument"} 1',
      'cloudhv_task_create_failures_total{reason="unknown"} 1',
    ]);
  });

  it("the pool's gauges appear once the pool registers; refills count", async () => {
    const m = new DaemonMetrics({ vmsRunning: () => 0, history: { starts: 3, unclean: 1 } });
    assert.deepEqual(await lines(m, "cloudhv_pool_vms{"), []);
    m.registerPool(() => ({ ready: 2, booting: 1, target: 3 }));
    m.poolRefilled(2);
    assert.deepEqual((await lines(m, "cloudhv_pool_vms{")).sort(), [
      'cloudhv_pool_vms{state="booting"} 1',
      'cloudhv_pool_vms{state="ready"} 2',
      'cloudhv_pool_vms{state="target"} 3',
    ]);
    assert.deepEqual(await lines(m, "cloudhv_pool_refills_total "), ["cloudhv_pool_refills_total 2"]);
    assert.deepEqual(await lines(m, "cloudhv_daemon_restarts_total "), ["cloudhv_daemon_restarts_total 2"]);
    assert.deepEqual(await lines(m, "cloudhv_daemon_unclean_restarts_total "), [
      "cloudhv_daemon_unclean_restarts_total 1",
    ]);
  });

  it("the start history counts restarts since the last clean exit and the unclean ones; a clean exit removes it; garbage restarts it", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "chv-metrics-"));
    try {
      const file = path.join(dir, "shim-x.json");
      assert.deepEqual(recordStart(file), { starts: 1, unclean: 0 });
      assert.deepEqual(recordStart(file), { starts: 2, unclean: 1 }, "no clean exit in between");
      assert.deepEqual(recordStart(file), { starts: 3, unclean: 2 });
      recordCleanExit(file);
      assert.equal(existsSync(file), false, "nothing left in state_dir after a clean exit");
      assert.deepEqual(recordStart(file), { starts: 1, unclean: 0 });
      await writeFile(file, '{"starts": -5, "unclean": "x", "running": "yes"}');
      assert.deepEqual(recordStart(file), { starts: 1, unclean: 0 });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
