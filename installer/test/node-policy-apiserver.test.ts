// The chart's ValidatingAdmissionPolicy on a real kube-apiserver (the pinned build the
// Kubernetes level uses, with etcd; no kubelet, no cluster): a ServiceAccount token bound to a
// pod on node n1, as kubelet would project it, labels n1 through the installer's own labeler
// and is refused on n2, on any other label, on taints and annotations. Skipped, saying why,
// where the binaries are not built (scripts/dev.sh setup builds them).
import assert from "node:assert/strict";
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { existsSync, openSync, readdirSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import https from "node:https";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { KubeConfig } from "@kubernetes/client-node";
import { parseAllDocuments } from "yaml";
import { REPO_ROOT } from "../src/bundle.js";
import { KubeError } from "../src/kube.js";
import { kubeLabeler } from "../src/node-label.js";

const run = promisify(execFile);
const CACHE = process.env.CLOUDHV_BUILD_CACHE ?? "/var/cache/cloudhv-build";
const ADMIN = "admin-token-for-this-test-only";
const AUDIENCE = "https://kubernetes.default.svc";
const SA = "r-cloudhv";
const LABEL = "cloudhv.io/runtime";

/** The newest `<prefix>v*` build in the cache that has `binary`. */
function cached(prefix: string, binary: string): string | undefined {
  let dirs: string[] = [];
  try {
    dirs = readdirSync(CACHE).filter((d) => d.startsWith(`${prefix}v`));
  } catch {
    return undefined;
  }
  return dirs
    .sort()
    .reverse()
    .map((d) => path.join(CACHE, d, binary))
    .find((p) => existsSync(p));
}

const apiserverBin = cached("k8s-", "kube-apiserver");
const etcdBin = cached("etcd-", "etcd");
const skip =
  apiserverBin && etcdBin
    ? false
    : `skipped: no kube-apiserver/etcd build under ${CACHE} (scripts/dev.sh setup builds them)`;

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

interface Reply {
  status: number;
  // biome-ignore lint/suspicious/noExplicitAny: API objects are untyped JSON here.
  body: any;
}

describe("the chart's node policy on a real kube-apiserver", { skip }, () => {
  let dir: string;
  let port: number;
  const procs: ChildProcess[] = [];

  const call = (method: string, urlPath: string, token: string, body?: unknown, type = "application/json") =>
    new Promise<Reply>((resolve, reject) => {
      const data = body === undefined ? undefined : JSON.stringify(body);
      const req = https.request(
        {
          host: "127.0.0.1",
          port,
          method,
          path: urlPath,
          // The apiserver's own self-signed serving certificate, on loopback, for this test.
          rejectUnauthorized: false,
          headers: {
            authorization: `Bearer ${token}`,
            accept: "application/json",
            ...(data ? { "content-type": type, "content-length": Buffer.byteLength(data) } : {}),
          },
        },
        (res) => {
          let text = "";
          res.setEncoding("utf8");
          res.on("data", (c: string) => {
            text += c;
          });
          res.on("end", () => {
            let parsed: unknown = text;
            try {
              parsed = JSON.parse(text);
            } catch {}
            resolve({ status: res.statusCode ?? 0, body: parsed });
          });
        },
      );
      req.on("error", reject);
      if (data) req.write(data);
      req.end();
    });
  const admin = (method: string, p: string, body?: unknown) => call(method, p, ADMIN, body);

  let saToken = "";
  const patchAs = (token: string, node: string, body: unknown, sub = "") =>
    call("PATCH", `/api/v1/nodes/${node}${sub}`, token, body, "application/merge-patch+json");

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "chv-vap-"));
    const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    await writeFile(path.join(dir, "sa.pub"), publicKey.export({ type: "spki", format: "pem" }));
    await writeFile(path.join(dir, "sa.key"), privateKey.export({ type: "pkcs8", format: "pem" }));
    await writeFile(path.join(dir, "tokens.csv"), `${ADMIN},admin,admin-uid,system:masters\n`);
    const [client, peer] = [await freePort(), await freePort()];
    port = await freePort();
    const out = openSync(path.join(dir, "log"), "a");
    const start = (argv: string[]) => {
      const p = spawn(argv[0] as string, argv.slice(1), { stdio: ["ignore", out, out] });
      procs.push(p);
      return p;
    };
    start([
      etcdBin as string,
      "--name=t",
      `--data-dir=${dir}/etcd`,
      `--listen-client-urls=http://127.0.0.1:${client}`,
      `--advertise-client-urls=http://127.0.0.1:${client}`,
      `--listen-peer-urls=http://127.0.0.1:${peer}`,
      `--initial-advertise-peer-urls=http://127.0.0.1:${peer}`,
      `--initial-cluster=t=http://127.0.0.1:${peer}`,
      "--log-level=error",
    ]);
    start([
      apiserverBin as string,
      `--etcd-servers=http://127.0.0.1:${client}`,
      "--bind-address=127.0.0.1",
      "--advertise-address=127.0.0.1",
      `--secure-port=${port}`,
      `--cert-dir=${dir}/certs`,
      `--token-auth-file=${dir}/tokens.csv`,
      "--authorization-mode=RBAC",
      `--service-account-issuer=${AUDIENCE}`,
      `--service-account-key-file=${dir}/sa.pub`,
      `--service-account-signing-key-file=${dir}/sa.key`,
      `--api-audiences=${AUDIENCE}`,
      "--service-cluster-ip-range=10.0.0.0/24",
      "--profiling=false",
      "--v=0",
    ]);
    const deadline = Date.now() + 120_000;
    for (;;) {
      const ready = await admin("GET", "/readyz").catch(() => undefined);
      if (ready?.status === 200) break;
      if (Date.now() > deadline) assert.fail(`kube-apiserver not ready: ${JSON.stringify(ready?.body)}`);
      await new Promise((r) => setTimeout(r, 500));
    }

    // The chart's ServiceAccount, RBAC and policy, exactly as helm renders them.
    const { stdout: helmPath } = await run(path.join(REPO_ROOT, "installer/scripts/build-helm.sh"), []);
    const helm = helmPath.trim().split("\n").pop() as string;
    const { stdout } = await run(helm, [
      ...["template", "r", path.join(REPO_ROOT, "charts/cloudhv"), "-n", "kube-system"],
      ...["--kube-version", "1.34.4", "--set", "cleanup.enabled=false"],
      ...["--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"],
      ...["--show-only", "templates/node-policy.yaml"],
    ]);
    const where: Record<string, string> = {
      ServiceAccount: "/api/v1/namespaces/kube-system/serviceaccounts",
      ClusterRole: "/apis/rbac.authorization.k8s.io/v1/clusterroles",
      ClusterRoleBinding: "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
      Role: "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-system/roles",
      RoleBinding: "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-system/rolebindings",
      ValidatingAdmissionPolicy: "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies",
      ValidatingAdmissionPolicyBinding:
        "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings",
    };
    for (const doc of parseAllDocuments(stdout)) {
      const obj = doc.toJS() as { kind: string } | null;
      if (!obj) continue;
      const res = await admin("POST", where[obj.kind] as string, obj);
      assert.equal(res.status, 201, `${obj.kind}: ${JSON.stringify(res.body)}`);
    }
    for (const name of ["n1", "n2"]) {
      const res = await admin("POST", "/api/v1/nodes", {
        metadata: { name, labels: { team: "a" }, annotations: { note: "x" } },
      });
      assert.equal(res.status, 201, JSON.stringify(res.body));
    }
    // The installer's pod on n1, and the token kubelet would project into it.
    const pod = await admin("POST", "/api/v1/namespaces/kube-system/pods", {
      metadata: { name: "installer-n1" },
      spec: { nodeName: "n1", serviceAccountName: SA, containers: [{ name: "c", image: "installer" }] },
    });
    assert.equal(pod.status, 201, JSON.stringify(pod.body));
    const tr = await admin("POST", `/api/v1/namespaces/kube-system/serviceaccounts/${SA}/token`, {
      spec: {
        audiences: [AUDIENCE],
        expirationSeconds: 3600,
        boundObjectRef: { kind: "Pod", apiVersion: "v1", name: "installer-n1", uid: pod.body.metadata.uid },
      },
    });
    assert.equal(tr.status, 201, JSON.stringify(tr.body));
    saToken = tr.body.status.token;
  });

  after(async () => {
    for (const p of procs.reverse()) {
      if (p.exitCode !== null || p.signalCode !== null) continue;
      const gone = new Promise((r) => p.once("exit", r));
      p.kill("SIGTERM");
      await Promise.race([gone, new Promise((r) => setTimeout(r, 10_000))]);
      if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
      await gone;
    }
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("a pod-bound token carries the node's name (authentication.kubernetes.io/node-name)", async () => {
    const review = await admin("POST", "/apis/authentication.k8s.io/v1/tokenreviews", {
      spec: { token: saToken, audiences: [AUDIENCE] },
    });
    assert.equal(review.body.status.authenticated, true, JSON.stringify(review.body));
    assert.equal(review.body.status.user.username, `system:serviceaccount:kube-system:${SA}`);
    assert.deepEqual(review.body.status.user.extra["authentication.kubernetes.io/node-name"], ["n1"]);
    assert.deepEqual(review.body.status.user.extra["authentication.kubernetes.io/pod-name"], [
      "installer-n1",
    ]);
  });

  it("lets the installer's labeler set and remove the label on its own node, and refuses another node", async () => {
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [{ name: "t", server: `https://127.0.0.1:${port}`, skipTLSVerify: true }],
      users: [{ name: "installer", token: saToken }],
      contexts: [{ name: "t", cluster: "t", user: "installer" }],
      currentContext: "t",
    });
    const labeler = kubeLabeler(kc);
    // RBAC and the policy reach the authorizer and admission within moments of their creation.
    const deadline = Date.now() + 60_000;
    // A CEL expression that fails at run time (a field absent in CEL) would answer 422 Invalid:
    // each refusal below must be the policy's own 403.
    for (;;) {
      const other = await patchAs(saToken, "n2", { metadata: { labels: { [LABEL]: "ready" } } });
      if (other.status === 403 && /its own pod runs on/.test(other.body.message)) break;
      if (Date.now() > deadline)
        assert.fail(`n2 was not refused by the policy: ${JSON.stringify(other.body)}`);
      await new Promise((r) => setTimeout(r, 500));
    }
    // Until the policy was loaded a probe may have gone through: n2 as it was.
    await call(
      "PATCH",
      "/api/v1/nodes/n2",
      ADMIN,
      { metadata: { labels: { [LABEL]: null } } },
      "application/merge-patch+json",
    );
    await labeler.set("n1");
    let n1 = await admin("GET", "/api/v1/nodes/n1");
    assert.equal(n1.body.metadata.labels[LABEL], "ready");
    await labeler.remove("n1");
    n1 = await admin("GET", "/api/v1/nodes/n1");
    assert.equal(n1.body.metadata.labels[LABEL], undefined);
    await assert.rejects(labeler.set("n2"), (err: unknown) => {
      assert.ok(err instanceof KubeError);
      assert.equal(err.status, 403);
      assert.match(
        err.message,
        /cannot set label cloudhv\.io\/runtime on node n2: .*the cloudhv installer may only change the node its own pod runs on: its token is bound to node n1, not n2/s,
      );
      return true;
    });
    const n2 = await admin("GET", "/api/v1/nodes/n2");
    assert.equal(n2.body.metadata.labels[LABEL], undefined);
  });

  for (const [what, body, message] of [
    [
      "another label",
      { metadata: { labels: { team: "b" } } },
      /may change only the cloudhv\.io\/runtime label/,
    ],
    [
      "a label removed",
      { metadata: { labels: { team: null } } },
      /may change only the cloudhv\.io\/runtime label/,
    ],
    [
      "another value",
      { metadata: { labels: { [LABEL]: "pwned" } } },
      /may only set cloudhv\.io\/runtime=ready/,
    ],
    [
      "a taint",
      { spec: { taints: [{ key: "evict", effect: "NoExecute" }] } },
      /may not change a node's spec/,
    ],
    ["unschedulable", { spec: { unschedulable: true } }, /may not change a node's spec/],
    ["an annotation", { metadata: { annotations: { note: "y" } } }, /annotations/],
  ] as const)
    it(`refuses ${what} on its own node`, async () => {
      const res = await patchAs(saToken, "n1", body);
      assert.equal(res.status, 403, JSON.stringify(res.body));
      assert.match(res.body.message, message);
    });

  it("refuses a status update and a delete; other users' node updates are untouched", async () => {
    const status = await patchAs(saToken, "n1", { status: { capacity: { cpu: "64" } } }, "/status");
    assert.equal(status.status, 403);
    const del = await call("DELETE", "/api/v1/nodes/n1", saToken);
    assert.equal(del.status, 403);
    const other = await call(
      "PATCH",
      "/api/v1/nodes/n2",
      ADMIN,
      { metadata: { labels: { team: "b", [LABEL]: "x" } } },
      "application/merge-patch+json",
    );
    assert.equal(other.status, 200, JSON.stringify(other.body));
  });
});
