// The daemon's Prometheus endpoint (metrics_address): scraped before and after a pod starts
// and after a pod is refused, through a real containerd and VM. The exposition must parse
// line by line, the counters must move by exactly what happened, and no label may carry an id.
import assert from "node:assert/strict";
import { mkdir } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { PodSandboxConfig } from "../src/cri/client.js";
import { HANDLER, type Harness, startHarness } from "../src/harness.js";

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Prometheus text format 0.0.4, strictly: every line is a comment, blank, or a sample. */
function parseExposition(text: string): Sample[] {
  const samples: Sample[] = [];
  const sampleLine =
    /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*)\})? (-?[0-9.e+-]+|NaN|[+-]Inf)(?: -?[0-9]+)?$/;
  for (const line of text.split("\n")) {
    if (line === "" || /^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .*$/.test(line)) continue;
    const m = sampleLine.exec(line);
    assert.ok(m, `not a Prometheus text line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g))
      labels[l[1] as string] = l[2] as string;
    samples.push({ name: m[1] as string, labels, value: Number(m[3]) });
  }
  return samples;
}

function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const hit = samples.filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  return hit.reduce((sum, s) => sum + s.value, 0);
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe("shim daemon metrics (Prometheus)", () => {
  let harness: Harness;
  let url: string;

  before(async () => {
    const port = await freePort();
    url = `http://127.0.0.1:${port}/metrics`;
    harness = await startHarness({ runtimeConfig: { metrics_address: `127.0.0.1:${port}` } });
  });
  after(async () => {
    await harness?.stop();
  });

  const pod = async (name: string, extra: Partial<PodSandboxConfig> = {}) => {
    const logDirectory = path.join(harness.dir, "pods", name);
    await mkdir(logDirectory, { recursive: true });
    const config: PodSandboxConfig = {
      metadata: { name, uid: `uid-${name}`, namespace: "default", attempt: 0 },
      hostname: name,
      logDirectory,
      ...extra,
    };
    return harness.cri.runPodSandbox(config, HANDLER);
  };

  const scrape = async () => {
    const res = await fetch(url);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
    return parseExposition(await res.text());
  };

  it("counts a cold pod start with its phases, the running VM, and a refused pod by reason; no ids in labels", async () => {
    // The daemon (and its endpoint) starts with the first pod.
    const first = await pod("m1");
    const s1 = await scrape();
    assert.equal(value(s1, "cloudhv_pod_starts_total", { path: "cold" }), 1);
    assert.equal(value(s1, "cloudhv_pod_starts_total", { path: "pool" }), 0);
    assert.equal(value(s1, "cloudhv_vms_running"), 1);
    assert.equal(value(s1, "cloudhv_pod_start_phase_seconds_count", { path: "cold", phase: "total" }), 1);
    assert.ok(value(s1, "cloudhv_pod_start_phase_seconds_sum", { path: "cold", phase: "total" }) > 0);
    assert.ok(
      value(s1, "cloudhv_pod_start_phase_seconds_count", { path: "cold", phase: "vmmLaunchMs" }) >= 1,
    );
    assert.equal(value(s1, "cloudhv_daemon_restarts_total"), 0);

    const second = await pod("m2");
    await assert.rejects(
      pod("m3", { linux: { securityContext: { namespaceOptions: { network: "NODE" } } } }),
    );
    const s2 = await scrape();
    assert.equal(value(s2, "cloudhv_pod_starts_total", { path: "cold" }), 2);
    assert.equal(value(s2, "cloudhv_pod_start_phase_seconds_count", { path: "cold", phase: "total" }), 2);
    assert.equal(value(s2, "cloudhv_vms_running"), 2);
    assert.equal(value(s2, "cloudhv_task_create_failures_total", { reason: "invalid_argument" }), 1);

    await harness.cri.stopPodSandbox(second);
    await harness.cri.removePodSandbox(second);
    assert.equal(value(await scrape(), "cloudhv_vms_running"), 1);
    await harness.cri.stopPodSandbox(first);
    await harness.cri.removePodSandbox(first);

    // Bounded cardinality: no label value is a pod, sandbox or task id.
    const ids = [first, second, "m1", "m2", "m3", "uid-m1"];
    for (const s of s2)
      for (const v of Object.values(s.labels))
        assert.ok(!ids.some((id) => v.includes(id)), `${s.name} has an id in a label: ${v}`);
    const labelSets = new Set(
      s2.filter((s) => s.name.startsWith("cloudhv_pod")).map((s) => JSON.stringify(s.labels)),
    );
    assert.ok(labelSets.size < 1000, `${labelSets.size} label sets`);
  });

  it("answers 404 to anything but GET /metrics", async () => {
    assert.equal((await fetch(url.replace("/metrics", "/"))).status, 404);
    assert.equal((await fetch(url, { method: "POST", body: "x" })).status, 404);
  });
});
