// The installer's two Kubernetes calls, against a local HTTPS endpoint that records requests
// (no API server on these machines: this checks what goes on the wire — path, verb, merge
// patch, bearer token, CA verification — and how API errors read).
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import https from "node:https";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { pino } from "pino";
import { inClusterEndpoint, type KubeEndpoint } from "../src/kube.js";
import { kubeLabeler } from "../src/node-label.js";

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
  let ep: KubeEndpoint;
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
    const port = (server.address() as AddressInfo).port;
    await writeFile(path.join(dir, "token"), "secret-token\n");
    ep = inClusterEndpoint(
      { KUBERNETES_SERVICE_HOST: "127.0.0.1", KUBERNETES_SERVICE_PORT: String(port) },
      dir,
    );
  });

  after(async () => {
    server?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("labels and unlabels a node with a JSON merge patch and the service account token", async () => {
    seen.length = 0;
    const labeler = kubeLabeler(ep);
    await labeler.set("node-a");
    await labeler.remove("node-a");
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
      kubeLabeler(ep).set("node-a"),
      /cannot set label cloudhv\.io\/runtime on node node-a: PATCH \/api\/v1\/nodes\/node-a: HTTP 403: nodes "node-a" is forbidden/,
    );
    reply = () => ({ status: 200, body: {} });
  });

  it("refuses a server whose certificate is not the service account's CA", async () => {
    const other = { ...ep, ca: Buffer.from("") };
    await assert.rejects(
      kubeLabeler(other).set("node-a"),
      /cannot set label .*PATCH \/api\/v1\/nodes\/node-a: /,
    );
  });

  it("waits for the cleanup DaemonSet until every pod is ready", async () => {
    const { waitForDaemonSet } = await import("../src/wait-daemonset.js");
    let calls = 0;
    reply = (s) => {
      assert.equal(s.url, "/apis/apps/v1/namespaces/kube-system/daemonsets/r-cloudhv-cleanup");
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
    const env = process.env;
    process.env = {
      ...env,
      KUBERNETES_SERVICE_HOST: "127.0.0.1",
      KUBERNETES_SERVICE_PORT: new URL(ep.server).port,
    };
    try {
      await waitForDaemonSet("kube-system", "r-cloudhv-cleanup", 30_000, pino({ level: "silent" }), dir);
    } finally {
      process.env = env;
    }
    assert.equal(calls, 2);
  });

  it("outside a cluster: says so", () => {
    assert.throws(
      () => inClusterEndpoint({}),
      /not running in a cluster: KUBERNETES_SERVICE_HOST is not set/,
    );
  });
});
