// The installer's Kubernetes calls (@kubernetes/client-node), against a local HTTPS endpoint
// that records requests (no API server on these machines: this checks what goes on the wire —
// path, verb, merge patch, Event body, bearer token, CA verification — and how API errors read).
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import https from "node:https";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { KubeConfig } from "@kubernetes/client-node";
import { pino } from "pino";
import { EXIT, exitCodeFor } from "../src/exit-codes.js";
import { inClusterConfig, kubeNodeEvents } from "../src/kube.js";
import { kubeLabeler } from "../src/node-label.js";
import { deleteDaemonSetAndWait, waitForDaemonSet } from "../src/wait-daemonset.js";

const run = promisify(execFile);

interface Seen {
  method: string;
  url: string;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

describe("Kubernetes API calls (node label, DaemonSet wait)", () => {
  let dir: string;
  let server: https.Server;
  let port: number;
  /** Server URL, CA and token, the way a kubeconfig gives them. */
  let kc: KubeConfig;
  const seen: Seen[] = [];
  let reply: (s: Seen) => { status: number; body: unknown } = () => ({ status: 200, body: {} });

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "chv-kube-"));
    await run("openssl", [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "1",
      "-subj",
      "/CN=kubernetes",
      "-addext",
      "subjectAltName=IP:127.0.0.1",
      "-keyout",
      path.join(dir, "key.pem"),
      "-out",
      path.join(dir, "ca.crt"),
    ]);
    const ca = await readFile(path.join(dir, "ca.crt"));
    server = https.createServer({ key: await readFile(path.join(dir, "key.pem")), cert: ca }, (req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const s = {
          method: req.method ?? "",
          url: req.url ?? "",
          headers: req.headers,
          body: Buffer.concat(chunks).toString(),
        };
        seen.push(s);
        const r = reply(s);
        res.writeHead(r.status, { "content-type": "application/json" });
        res.end(JSON.stringify(r.body));
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    port = (server.address() as AddressInfo).port;
    kc = kubeConfig(ca.toString("base64"));
  });

  function kubeConfig(caData: string | undefined): KubeConfig {
    const config = new KubeConfig();
    config.loadFromOptions({
      clusters: [{ name: "test", server: `https://127.0.0.1:${port}`, caData, skipTLSVerify: false }],
      users: [{ name: "installer", token: "secret-token" }],
      contexts: [{ name: "test", cluster: "test", user: "installer" }],
      currentContext: "test",
    });
    return config;
  }

  /** `fn` as a pod would run it: the service account mounted under `dir`, the service env set. */
  async function inPod<T>(fn: (prefix: string) => Promise<T>, env = true): Promise<T> {
    const sa = path.join(dir, "var/run/secrets/kubernetes.io/serviceaccount");
    await mkdir(sa, { recursive: true });
    // As kubelet writes it: the bare token.
    await writeFile(path.join(sa, "token"), "secret-token");
    await writeFile(path.join(sa, "ca.crt"), await readFile(path.join(dir, "ca.crt")));
    const saved = process.env;
    process.env = { ...saved };
    delete process.env.KUBERNETES_SERVICE_HOST;
    delete process.env.KUBERNETES_SERVICE_PORT;
    if (env)
      Object.assign(process.env, {
        KUBERNETES_SERVICE_HOST: "127.0.0.1",
        KUBERNETES_SERVICE_PORT: String(port),
      });
    try {
      return await fn(dir);
    } finally {
      process.env = saved;
    }
  }

  after(async () => {
    server?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("labels and unlabels a node with a JSON merge patch and the service account token", async () => {
    seen.length = 0;
    await inPod(async (prefix) => {
      await kubeLabeler(inClusterConfig(prefix)).set("node-a");
      await kubeLabeler(inClusterConfig(prefix)).remove("node-a");
    });
    assert.deepEqual(
      seen.map((s) => [
        s.method,
        s.url,
        s.headers["content-type"],
        s.headers.authorization,
        JSON.parse(s.body),
      ]),
      [
        [
          "PATCH",
          "/api/v1/nodes/node-a",
          "application/merge-patch+json",
          "Bearer secret-token",
          { metadata: { labels: { "cloudhv.io/runtime": "ready" } } },
        ],
        [
          "PATCH",
          "/api/v1/nodes/node-a",
          "application/merge-patch+json",
          "Bearer secret-token",
          { metadata: { labels: { "cloudhv.io/runtime": null } } },
        ],
      ],
    );
  });

  it("says what the API server refused", async () => {
    reply = () => ({
      status: 403,
      body: { kind: "Status", message: 'nodes "node-a" is forbidden: User cannot patch resource' },
    });
    await assert.rejects(
      kubeLabeler(kc).set("node-a"),
      /cannot set label cloudhv\.io\/runtime on node node-a: PATCH \/api\/v1\/nodes\/node-a: HTTP 403: nodes "node-a" is forbidden/,
    );
    await assert.rejects(
      kubeLabeler(kc).remove("node-a"),
      /cannot remove label cloudhv\.io\/runtime on node node-a: PATCH \/api\/v1\/nodes\/node-a: HTTP 403: nodes "node-a" is forbidden/,
    );
    reply = () => ({ status: 200, body: {} });
  });

  it("refuses a server whose certificate is not the service account's CA", async () => {
    seen.length = 0;
    // No CA of its own: only the system's roots, which do not know the test server's.
    await assert.rejects(
      kubeLabeler(kubeConfig(undefined)).set("node-a"),
      /cannot set label .*PATCH \/api\/v1\/nodes\/node-a: .*certificate/,
    );
    assert.equal(seen.length, 0, "nothing reached the server");
  });

  it("waits for the cleanup DaemonSet until every pod is ready", async () => {
    let calls = 0;
    reply = (s) => {
      // The object, not its /status subresource: the chart's Role grants get on daemonsets.
      assert.equal(s.url, "/apis/apps/v1/namespaces/kube-system/daemonsets/r-cloudhv-cleanup");
      assert.equal(s.method, "GET");
      assert.equal(s.headers.authorization, "Bearer secret-token");
      calls++;
      const ready = calls >= 2 ? 3 : 1;
      return {
        status: 200,
        body: {
          metadata: { generation: 1 },
          status: { observedGeneration: 1, desiredNumberScheduled: 3, numberReady: ready },
        },
      };
    };
    await inPod((prefix) =>
      waitForDaemonSet(
        "kube-system",
        "r-cloudhv-cleanup",
        30_000,
        pino({ level: "silent" }),
        inClusterConfig(prefix),
      ),
    );
    assert.equal(calls, 2);
    reply = () => ({ status: 404, body: { kind: "Status", message: 'daemonsets.apps "gone" not found' } });
    await assert.rejects(
      waitForDaemonSet("kube-system", "gone", 30_000, pino({ level: "silent" }), kc),
      /GET \/apis\/apps\/v1\/namespaces\/kube-system\/daemonsets\/gone: HTTP 404: daemonsets.apps "gone" not found/,
    );
    reply = () => ({ status: 200, body: {} });
  });

  it("posts a Warning Event about the node (what the admin must do)", async () => {
    seen.length = 0;
    reply = () => ({ status: 201, body: { kind: "Event", metadata: { name: "cloudhv-installer.x" } } });
    await kubeNodeEvents("kube-system", kc).warn(
      "node-a",
      "ContainerdRestartNeeded",
      "cloudhv: restart containerd",
    );
    assert.equal(seen.length, 1);
    const s = seen[0] as Seen;
    assert.equal(s.method, "POST");
    assert.equal(s.url, "/api/v1/namespaces/kube-system/events");
    const body = JSON.parse(s.body);
    assert.deepEqual(body.involvedObject, { apiVersion: "v1", kind: "Node", name: "node-a", uid: "node-a" });
    assert.equal(body.metadata.generateName, "cloudhv-installer.");
    assert.equal(body.reason, "ContainerdRestartNeeded");
    assert.equal(body.type, "Warning");
    assert.equal(body.message, "cloudhv: restart containerd");
    assert.equal(body.source.component, "cloudhv-installer");
    reply = () => ({ status: 403, body: { kind: "Status", message: "events is forbidden" } });
    await assert.rejects(
      kubeNodeEvents("kube-system", kc).warn("node-a", "R", "m"),
      /POST \/api\/v1\/namespaces\/kube-system\/events: HTTP 403: events is forbidden/,
    );
    reply = () => ({ status: 200, body: {} });
  });

  it("deletes the installer DaemonSet and waits until its pods are gone (uninstall's first hook)", async () => {
    seen.length = 0;
    let lists = 0;
    reply = (s) => {
      if (s.method === "DELETE") return { status: 200, body: { kind: "Status", status: "Success" } };
      lists++;
      const items =
        lists < 3
          ? [{ metadata: { name: "r-cloudhv-abcde" }, spec: { nodeName: "node-a" }, status: {} }]
          : [];
      return { status: 200, body: { kind: "PodList", items } };
    };
    await deleteDaemonSetAndWait(
      "kube-system",
      "r-cloudhv",
      "app.kubernetes.io/instance=r,app.kubernetes.io/component=installer",
      30_000,
      pino({ level: "silent" }),
      kc,
      10,
    );
    assert.equal(seen[0]?.method, "DELETE");
    assert.match(
      seen[0]?.url ?? "",
      /^\/apis\/apps\/v1\/namespaces\/kube-system\/daemonsets\/r-cloudhv\?propagationPolicy=Background$/,
    );
    assert.deepEqual(
      seen.slice(1).map((s) => [s.method, decodeURIComponent(s.url)]),
      Array.from({ length: 3 }, () => [
        "GET",
        "/api/v1/namespaces/kube-system/pods?labelSelector=app.kubernetes.io/instance=r,app.kubernetes.io/component=installer",
      ]),
    );
    // Already gone (a second helm uninstall): fine; pods that never go: TIMEOUT.
    reply = (s) =>
      s.method === "DELETE"
        ? { status: 404, body: { kind: "Status", message: "not found" } }
        : {
            status: 200,
            body: { kind: "PodList", items: [{ metadata: { name: "stuck" }, spec: { nodeName: "node-b" } }] },
          };
    await assert.rejects(
      deleteDaemonSetAndWait("kube-system", "r-cloudhv", "a=b", 1, pino({ level: "silent" }), kc, 10),
      (err: Error) =>
        exitCodeFor(err) === EXIT.TIMEOUT &&
        /daemonset kube-system\/r-cloudhv was deleted but its pods stuck \(node node-b\) still run/.test(
          err.message,
        ),
    );
    reply = () => ({ status: 200, body: {} });
  });

  it("a cleanup that runs out of time names the nodes not done", async () => {
    reply = (s) =>
      s.url.startsWith("/apis/apps")
        ? {
            status: 200,
            body: {
              metadata: { generation: 1 },
              spec: { selector: { matchLabels: { "app.kubernetes.io/component": "cleanup" } } },
              status: { observedGeneration: 1, desiredNumberScheduled: 2, numberReady: 1 },
            },
          }
        : {
            status: 200,
            body: {
              kind: "PodList",
              items: [
                {
                  metadata: { name: "c-1" },
                  spec: { nodeName: "node-a" },
                  status: { conditions: [{ type: "Ready", status: "True" }] },
                },
                { metadata: { name: "c-2" }, spec: { nodeName: "node-b" }, status: { conditions: [] } },
              ],
            },
          };
    await assert.rejects(
      waitForDaemonSet("kube-system", "r-cloudhv-cleanup", 1, pino({ level: "silent" }), kc),
      (err: Error) =>
        exitCodeFor(err) === EXIT.TIMEOUT &&
        /only 1 of 2 nodes cleaned up in 0\.001 s; not done: node-b \(pod c-2\)/.test(err.message),
    );
    reply = () => ({ status: 200, body: {} });
  });

  it("outside a cluster: says so", async () => {
    await inPod(async () => {
      assert.throws(() => inClusterConfig(), /not running in a cluster: KUBERNETES_SERVICE_HOST is not set/);
    }, false);
    await inPod(async () => {
      assert.throws(
        () => inClusterConfig("/nonexistent"),
        /cannot read the service account in \/nonexistent\/var\/run/,
      );
    });
  });
});
