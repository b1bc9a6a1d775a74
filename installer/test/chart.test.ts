// Level 1: the Helm chart with a real helm (built from the Go module proxy by
// installer/scripts/build-helm.sh, pinned, cached): lint, the objects it renders with default
// and custom values, and values the schema must reject.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import path from "node:path";
import { before, describe, it } from "node:test";
import { promisify } from "node:util";
import { parseConfig } from "@cloudhv/shim";
import { parseAllDocuments } from "yaml";
import { REPO_ROOT } from "../src/bundle.js";

const run = promisify(execFile);
const CHART = path.join(REPO_ROOT, "charts/cloudhv");
type Obj = {
  kind: string;
  metadata: { name: string; annotations?: Record<string, string> };
  [k: string]: unknown;
};

let helm: string;

async function render(...set: string[]): Promise<Obj[]> {
  const args = ["template", "r", CHART, "--namespace", "kube-system", "--kube-version", "1.30.0"];
  for (const s of set) args.push("--set", s);
  const { stdout } = await run(helm, args, { maxBuffer: 1 << 24 });
  return parseAllDocuments(stdout)
    .map((d) => d.toJS() as Obj | null)
    .filter((o): o is Obj => o !== null);
}

// biome-ignore lint/suspicious/noExplicitAny: rendered manifests are untyped JSON; the assertions check their shape.
function one(objs: Obj[], kind: string, name?: string): Record<string, any> {
  const found = objs.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
  assert.equal(found.length, 1, `one ${kind}${name ? ` ${name}` : ""}, got ${found.length}`);
  // biome-ignore lint/suspicious/noExplicitAny: as above.
  return found[0] as Record<string, any>;
}

describe("charts/cloudhv with a real helm", () => {
  before(async () => {
    const { stdout } = await run(path.join(REPO_ROOT, "installer/scripts/build-helm.sh"), [], {
      maxBuffer: 1 << 24,
    });
    helm = stdout.trim().split("\n").pop() as string;
    const { stdout: version } = await run(helm, ["version", "--short"]);
    assert.match(version, /^v3\./);
  });

  it("passes helm lint --strict", async () => {
    const { stdout } = await run(helm, ["lint", "--strict", CHART]);
    assert.match(stdout, /1 chart\(s\) linted, 0 chart\(s\) failed/);
  });

  it("renders the DaemonSet, RBAC, RuntimeClass, runtime config and cleanup hooks from the defaults", async () => {
    const objs = await render();
    assert.deepEqual(objs.map((o) => `${o.kind}/${o.metadata.name}`).sort(), [
      "ClusterRole/r-cloudhv",
      "ClusterRoleBinding/r-cloudhv",
      "ConfigMap/r-cloudhv",
      "DaemonSet/r-cloudhv",
      "DaemonSet/r-cloudhv-cleanup",
      "Job/r-cloudhv-cleanup-wait",
      "Job/r-cloudhv-stop-installer",
      "Role/r-cloudhv",
      "Role/r-cloudhv-cleanup",
      "RoleBinding/r-cloudhv",
      "RoleBinding/r-cloudhv-cleanup",
      "RuntimeClass/cloudhv",
      "ServiceAccount/r-cloudhv",
      "ValidatingAdmissionPolicy/r-cloudhv-own-node-label",
      "ValidatingAdmissionPolicyBinding/r-cloudhv-own-node-label",
    ]);
    const rc = one(objs, "RuntimeClass");
    assert.equal(rc.handler, "cloudhv");
    // 256 MiB default VM + 40 MiB VMM; the VMM's 100m (vCPUs are not reserved by default).
    assert.deepEqual(rc.overhead, { podFixed: { memory: "296Mi", cpu: "100m" } });
    assert.deepEqual(rc.scheduling, { nodeSelector: { "cloudhv.io/runtime": "ready" } });

    const ds = one(objs, "DaemonSet", "r-cloudhv");
    const pod = ds.spec.template.spec;
    assert.equal(pod.hostPID, true);
    assert.equal(pod.serviceAccountName, "r-cloudhv");
    assert.deepEqual(pod.nodeSelector, { "kubernetes.io/os": "linux" });
    assert.deepEqual(pod.tolerations, [{ operator: "Exists" }]);
    assert.deepEqual(pod.volumes[0], { name: "host", hostPath: { path: "/", type: "Directory" } });
    const c = pod.containers[0];
    assert.equal(c.image, "ghcr.io/cloudhv/cloudhv-installer:0.1.0");
    assert.equal(c.securityContext.privileged, true);
    assert.deepEqual(c.args.slice(0, 5), ["install", "--host-root", "/host", "--restart", "auto"]);
    assert.ok(c.args.includes("--stay"));
    assert.deepEqual(c.env, [
      { name: "NODE_NAME", valueFrom: { fieldRef: { fieldPath: "spec.nodeName" } } },
      { name: "POD_NAMESPACE", valueFrom: { fieldRef: { fieldPath: "metadata.namespace" } } },
    ]);
    assert.ok(
      !c.args.includes("--take-over-runtime"),
      "someone else's cloudhv runtime is refused by default",
    );
    assert.deepEqual(c.volumeMounts[0], {
      name: "host",
      mountPath: "/host",
      mountPropagation: "HostToContainer",
    });
    assert.deepEqual(c.readinessProbe.exec.command, ["cat", c.args[c.args.indexOf("--ready-file") + 1]]);
    assert.deepEqual(c.resources, { requests: { cpu: "10m", memory: "64Mi" }, limits: { memory: "512Mi" } });

    const role = one(objs, "ClusterRole");
    assert.deepEqual(role.rules, [{ apiGroups: [""], resources: ["nodes"], verbs: ["get", "patch"] }]);
    // Events about the node, in the release's namespace only.
    assert.deepEqual(one(objs, "Role", "r-cloudhv").rules, [
      { apiGroups: [""], resources: ["events"], verbs: ["create"] },
    ]);
    assert.deepEqual(one(objs, "Role", "r-cloudhv-cleanup").rules, [
      {
        apiGroups: ["apps"],
        resources: ["daemonsets"],
        resourceNames: ["r-cloudhv-cleanup"],
        verbs: ["get"],
      },
      { apiGroups: ["apps"], resources: ["daemonsets"], resourceNames: ["r-cloudhv"], verbs: ["delete"] },
      { apiGroups: [""], resources: ["pods"], verbs: ["list"] },
    ]);

    // The rendered runtime config is one the shim itself accepts.
    const cfg = JSON.parse(one(objs, "ConfigMap").data["runtime-config.json"]);
    assert.equal(parseConfig(cfg, "chart").default_memory_mb, 256);
    // Scratch disks: 10 GiB each, no node budget unless the admin sets one.
    assert.equal(parseConfig(cfg, "chart").scratch_size, 10 * 1024 ** 3);
    assert.equal(parseConfig(cfg, "chart").scratch_budget, 0);
    // KVM by default: TCG is an explicit opt-in (runtime.qemuAccel), never a fallback.
    assert.equal(cfg.qemu_accel, "kvm");
    // The daemon's log: on the node's disk, rotated (10 MiB, 3 kept).
    assert.deepEqual([cfg.log_dir, cfg.log_max_bytes, cfg.log_files], ["/var/log/cloudhv", 10485760, 3]);

    const cleanup = one(objs, "DaemonSet", "r-cloudhv-cleanup");
    assert.equal(cleanup.metadata.annotations["helm.sh/hook"], "pre-delete");
    assert.equal(cleanup.spec.template.spec.containers[0].args[0], "uninstall");
    assert.deepEqual(
      cleanup.spec.template.spec.nodeSelector,
      pod.nodeSelector,
      "cleanup runs where the installer ran",
    );
    const job = one(objs, "Job", "r-cloudhv-cleanup-wait");
    const stop = one(objs, "Job", "r-cloudhv-stop-installer");
    const weight = (o: ReturnType<typeof one>) => Number(o.metadata.annotations["helm.sh/hook-weight"]);
    for (const hook of [stop, cleanup, job]) {
      assert.equal(hook.metadata.annotations["helm.sh/hook"], "pre-delete");
      assert.equal(
        hook.metadata.annotations["helm.sh/hook-delete-policy"],
        "before-hook-creation,hook-succeeded",
      );
    }
    // helm runs hooks by weight and waits for each Job: installers gone, then the cleanup, then the wait.
    assert.ok(weight(stop) < weight(cleanup) && weight(cleanup) < weight(job));
    assert.deepEqual(job.spec.template.spec.containers[0].args.slice(0, 5), [
      "wait-daemonset",
      "--namespace",
      "kube-system",
      "--name",
      "r-cloudhv-cleanup",
    ]);
    const stopArgs: string[] = stop.spec.template.spec.containers[0].args;
    assert.deepEqual(stopArgs.slice(0, 5), [
      "delete-daemonset",
      "--namespace",
      "kube-system",
      "--name",
      "r-cloudhv",
    ]);
    // The selector the hook waits on is the installer pods' own.
    const selector = stopArgs[stopArgs.indexOf("--selector") + 1] as string;
    assert.deepEqual(
      Object.fromEntries(selector.split(",").map((kv) => kv.split("="))),
      ds.spec.selector.matchLabels,
    );
    assert.deepEqual(ds.spec.template.metadata.labels, ds.spec.selector.matchLabels);
    // Each hook Job ends on its own deadline, well before helm's default --timeout of 300 s.
    for (const j of [stop, job]) assert.ok(j.spec.activeDeadlineSeconds < 300, `${j.metadata.name} deadline`);
    assert.equal(job.spec.activeDeadlineSeconds, 210);
    const waitArgs: string[] = job.spec.template.spec.containers[0].args;
    assert.ok(Number(waitArgs[waitArgs.indexOf("--timeout") + 1]) < job.spec.activeDeadlineSeconds);
    assert.ok(
      Number(stopArgs[stopArgs.indexOf("--timeout") + 1]) < stop.spec.activeDeadlineSeconds,
      "the stop hook gives up (and says why) before its Job is killed",
    );
  });

  it("follows custom values: VM size → overhead and config, selectors, image, restart mode, no cleanup", async () => {
    const objs = await render(
      "runtime.defaultMemoryMiB=512",
      "runtime.defaultVcpus=2",
      "runtime.qemuAccel=tcg",
      "runtimeClass.overhead.reserveVcpus=true",
      "runtimeClass.name=microvm",
      "runtime.extra.cache_max_bytes=1073741824",
      "runtime.scratchSize=2Gi,runtime.scratchBudget=100Gi",
      "nodeSelector.pool=sandbox",
      "tolerations[0].key=sandbox,tolerations[0].operator=Exists,tolerations[0].effect=NoSchedule",
      "image.repository=registry.local/cloudhv-installer,image.tag=dev",
      "containerd.restart=none,containerd.configVersion=3",
      "cleanup.enabled=false",
    );
    const rc = one(objs, "RuntimeClass", "microvm");
    assert.deepEqual(rc.overhead.podFixed, { memory: "552Mi", cpu: "2100m" });
    const cfg = parseConfig(JSON.parse(one(objs, "ConfigMap").data["runtime-config.json"]), "chart");
    assert.equal(cfg.default_memory_mb, 512);
    assert.equal(cfg.default_vcpus, 2);
    assert.equal(cfg.qemu_accel, "tcg");
    assert.equal(cfg.cache_max_bytes, 1073741824);
    assert.equal(cfg.scratch_size, 2 * 1024 ** 3);
    assert.equal(cfg.scratch_budget, 100 * 1024 ** 3);
    const pod = one(objs, "DaemonSet").spec.template.spec;
    assert.deepEqual(pod.nodeSelector, { "kubernetes.io/os": "linux", pool: "sandbox" });
    assert.deepEqual(pod.tolerations, [{ key: "sandbox", operator: "Exists", effect: "NoSchedule" }]);
    const c = pod.containers[0];
    assert.equal(c.image, "registry.local/cloudhv-installer:dev");
    assert.deepEqual(c.args.slice(3, 5), ["--restart", "none"]);
    assert.deepEqual(
      c.args.slice(c.args.indexOf("--config-version"), c.args.indexOf("--config-version") + 2),
      ["--config-version", "3"],
    );
    assert.equal(objs.filter((o) => o.metadata.annotations?.["helm.sh/hook"]).length, 0);
    assert.deepEqual(
      objs.filter((o) => o.kind === "Role").map((o) => o.metadata.name),
      ["r-cloudhv"],
      "only the Events role without cleanup",
    );
    assert.equal(
      (await render("runtimeClass.create=false")).filter((o) => o.kind === "RuntimeClass").length,
      0,
    );
  });

  it("metrics: off by default; enabled → metrics_address from listenAddress and port (IPv6 in brackets)", async () => {
    const cfgOf = async (...set: string[]) =>
      parseConfig(JSON.parse(one(await render(...set), "ConfigMap").data["runtime-config.json"]), "chart");
    assert.equal((await cfgOf()).metrics_address, "");
    assert.equal((await cfgOf("metrics.enabled=true")).metrics_address, "127.0.0.1:9464");
    assert.equal(
      (await cfgOf("metrics.enabled=true", "metrics.listenAddress=0.0.0.0", "metrics.port=9100"))
        .metrics_address,
      "0.0.0.0:9100",
    );
    assert.equal(
      (await cfgOf("metrics.enabled=true", "metrics.listenAddress=::1")).metrics_address,
      "[::1]:9464",
    );
    await assert.rejects(render("metrics.enabled=true", "metrics.listenAddress=localhost"), /listenAddress/);
  });

  it("restart modes, the pid file, taking over a runtime, and a host mount that needs no shared /", async () => {
    const objs = await render(
      "containerd.restart=signal,containerd.pidFile=/run/containerd/containerd.pid",
      "containerd.takeOverRuntime=true",
      "hostRootPropagation=None",
    );
    const install = one(objs, "DaemonSet", "r-cloudhv").spec.template.spec.containers[0];
    const cleanup = one(objs, "DaemonSet", "r-cloudhv-cleanup").spec.template.spec.containers[0];
    for (const c of [install, cleanup]) {
      const args: string[] = c.args;
      assert.deepEqual(args.slice(args.indexOf("--restart"), args.indexOf("--restart") + 2), [
        "--restart",
        "signal",
      ]);
      assert.deepEqual(
        args.slice(args.indexOf("--containerd-pidfile"), args.indexOf("--containerd-pidfile") + 2),
        ["--containerd-pidfile", "/run/containerd/containerd.pid"],
      );
      assert.equal(c.volumeMounts[0].mountPropagation, "None");
    }
    assert.ok(install.args.includes("--take-over-runtime"));
    assert.ok(!cleanup.args.includes("--take-over-runtime"));
    for (const mode of ["auto", "systemd", "signal", "none"]) {
      const c = one(await render(`containerd.restart=${mode}`), "DaemonSet", "r-cloudhv").spec.template.spec
        .containers[0];
      assert.equal(c.args[c.args.indexOf("--restart") + 1], mode);
    }
  });

  it("confines the installer's ServiceAccount to the cloudhv.io/runtime label of its own node (ValidatingAdmissionPolicy)", async () => {
    const objs = await render();
    const policy = one(objs, "ValidatingAdmissionPolicy");
    assert.equal(policy.apiVersion, "admissionregistration.k8s.io/v1");
    assert.equal(policy.spec.failurePolicy, "Fail");
    assert.deepEqual(policy.spec.matchConstraints.resourceRules, [
      {
        apiGroups: [""],
        apiVersions: ["*"],
        operations: ["CREATE", "UPDATE", "DELETE"],
        resources: ["nodes", "nodes/*"],
      },
    ]);
    // Judges the installer's requests only (its ServiceAccount, the one its pods run as).
    const sa = one(objs, "ServiceAccount").metadata.name;
    assert.equal(one(objs, "DaemonSet", "r-cloudhv").spec.template.spec.serviceAccountName, sa);
    assert.deepEqual(policy.spec.matchConditions, [
      {
        name: "installer-service-account",
        expression: `request.userInfo.username == "system:serviceaccount:kube-system:${sa}"`,
      },
    ]);
    const v: Array<{ expression: string; message?: string; messageExpression?: string; reason: string }> =
      policy.spec.validations;
    assert.ok(v.every((x) => x.reason === "Forbidden"));
    const all = v.map((x) => x.expression).join("\n");
    // Only UPDATE of the node itself (no create, delete, status) ...
    assert.match(
      all,
      /request\.operation == 'UPDATE' && \(!has\(request\.subResource\) \|\| request\.subResource == ''\)/,
    );
    // ... of the node named in the token (kubelet-projected tokens carry it since 1.30) ...
    assert.match(
      all,
      /request\.userInfo\.extra\['authentication\.kubernetes\.io\/node-name'\]\.exists\(n, n == request\.name\)/,
    );
    // ... changing no label but cloudhv.io/runtime, only to "ready" or away, and nothing else.
    assert.match(all, /object\.metadata\.labels\.all\(k, k == 'cloudhv\.io\/runtime' \|\|/);
    assert.match(all, /oldObject\.metadata\.labels\.all\(k, k == 'cloudhv\.io\/runtime' \|\|/);
    assert.match(all, /object\.metadata\.labels\['cloudhv\.io\/runtime'\] == 'ready'/);
    assert.match(all, /\(!has\(object\.spec\) \|\| object\.spec == oldObject\.spec\)/);
    for (const field of ["annotations", "finalizers", "ownerReferences"])
      assert.match(all, new RegExp(`object\\.metadata\\.${field} == oldObject\\.metadata\\.${field}`));
    const binding = one(objs, "ValidatingAdmissionPolicyBinding");
    assert.deepEqual(binding.spec, { policyName: policy.metadata.name, validationActions: ["Deny"] });
    // Off when asked, and on clusters without admissionregistration.k8s.io/v1 policies (< 1.30).
    const kinds = (o: Obj[]) => o.map((x) => x.kind).filter((k) => k.startsWith("ValidatingAdmission"));
    assert.deepEqual(kinds(await render("nodePolicy.enabled=false")), []);
    const { stdout } = await run(helm, [
      "template",
      "r",
      CHART,
      "-n",
      "kube-system",
      "--kube-version",
      "1.29.9",
    ]);
    assert.doesNotMatch(stdout, /^kind: ValidatingAdmissionPolicy/m);
  });

  for (const [set, why] of [
    ["hostRootPropagation=Bidirectional", /hostRootPropagation/],
    ["containerd.pidFile=run/containerd.pid", /containerd\/pidFile/],
    ["containerd.takeOverRuntime=yes", /containerd\/takeOverRuntime/],
    ["runtime.defaultMemoryMiB=32", /runtime\/defaultMemoryMiB.*minimum/s],
    ["containerd.restart=sometimes", /containerd\/restart.*(value must be one of|enum)/s],
    ["runtime.vcpus=2", /runtime.*additional properties 'vcpus' not allowed/s],
    ["image.pullPolicy=Sometimes", /image\/pullPolicy/],
    ["runtime.enableAnnotations[0]=kernel_params", /runtime\/enableAnnotations\/0/],
    ["containerd.configVersion=4", /containerd\/configVersion/],
    ["nodePolicy.enabled=yes", /nodePolicy\/enabled/],
    ["runtime.scratchSize=10GB", /runtime\/scratchSize/],
  ] as const) {
    it(`rejects ${set} through values.schema.json`, async () => {
      await assert.rejects(render(set), (err: Error & { stderr?: string }) => {
        assert.match(err.stderr ?? "", /values don't meet the specifications of the schema/);
        assert.match(err.stderr ?? "", why);
        return true;
      });
    });
  }
});
