// Where the Kubernetes e2e runs: the local cluster (e2e/k8s, started here) or a kind cluster on
// a KVM host with Docker (CLOUDHV_K8S_KIND=<cluster name>, see e2e/kind/run.sh). The test talks
// to both through this interface: kubectl with a kubeconfig, commands on the node, importing an
// image into the node's containerd, and the VMM processes the node runs.
import { execFile } from "node:child_process";
import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { type ExecResult, exec, execOk } from "@cloudhv/shim";
import { REPO_ROOT } from "../artifacts.js";
import { type Binaries, CONTAINERD_SOCKET, LocalCluster, type Log, processesInMountNs } from "./cluster.js";

export interface Target {
  readonly kind: "local" | "kind";
  readonly nodeName: string;
  readonly kubeconfig: string;
  /** kubectl with the kubeconfig, as argv (for commands run through a pty). */
  readonly kubectlCommand: readonly string[];
  /** The restart mode `--restart auto` must pick on this node. */
  readonly expectedRestartMode: "signal" | "systemd";
  kubectl(args: readonly string[], opts?: { timeoutMs?: number; input?: string }): Promise<ExecResult>;
  /** A command on the node, seeing the node's files and mounts. */
  onNode(argv: readonly string[], opts?: { timeoutMs?: number; input?: string }): Promise<ExecResult>;
  /** `ctr -n k8s.io images import FILE` into the node's containerd. */
  importImage(archive: string): Promise<void>;
  /** The node's VMM processes (QEMU, cloud-hypervisor) as "pid argv". */
  vmms(): Promise<string[]>;
  /** Tears down what the target started (local: the whole cluster). Returns what went wrong. */
  close(): Promise<string[]>;
}

export const BUILD_K8S = path.join(REPO_ROOT, "e2e/k8s/build-k8s.sh");

/** The cached Kubernetes and etcd binaries, or why there are none. */
export async function k8sBinaries(): Promise<{ k8s: string; etcd: string } | { missing: string }> {
  const r = await exec([BUILD_K8S, "--check"], { timeoutMs: 60_000 });
  const [k8s, etcd] = r.stdout.trim().split("\n");
  if (r.code !== 0 || !k8s || !etcd)
    return { missing: r.stderr.trim().split("\n").pop() || `${BUILD_K8S} --check exited ${r.code}` };
  return { k8s, etcd };
}

const VMM = /(^|\/)(qemu-system-[^ ]+|cloud-hypervisor)( |$)/;

export async function localTarget(bin: Binaries, log: Log): Promise<Target> {
  const cluster = await LocalCluster.up(bin, { log });
  return {
    kind: "local",
    nodeName: cluster.nodeName,
    kubeconfig: cluster.kubeconfig,
    kubectlCommand: [`${bin.k8s}/kubectl`, `--kubeconfig=${cluster.kubeconfig}`],
    expectedRestartMode: "signal",
    kubectl: (args, opts) => cluster.kubectl(args, opts),
    onNode: (argv, opts) => cluster.onNode(argv, opts),
    async importImage(archive) {
      // Exactly docs/operations.md's step 2 (ctr's default socket is containerd's standard one).
      await execOk(["ctr", "--address", CONTAINERD_SOCKET, "-n", "k8s.io", "images", "import", archive], {
        timeoutMs: 600_000,
      });
    },
    async vmms() {
      const ns = await cluster.nodeMountNs();
      if (!ns) return [];
      // A confined VMM has a mount namespace of its own (vmm/confine.ts): it is the node's when
      // its parent, the shim daemon, is.
      const node = new Set((await processesInMountNs(ns)).map((p) => p.pid));
      const vmms: string[] = [];
      for (const e of (await readdir("/proc")).filter((e) => /^\d+$/.test(e))) {
        const cmd = (await readFile(`/proc/${e}/cmdline`, "utf8").catch(() => ""))
          .replaceAll("\0", " ")
          .trim();
        if (!VMM.test(cmd)) continue;
        const stat = await readFile(`/proc/${e}/stat`, "utf8").catch(() => "");
        const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
        if (node.has(Number(e)) || node.has(ppid)) vmms.push(`${e} ${cmd.slice(0, 200)}`);
      }
      return vmms;
    },
    close: () => cluster.down(),
  };
}

/** A kind cluster someone else made (single node); nothing is torn down. */
export async function kindTarget(name: string, kubectlBin: string): Promise<Target> {
  const node = `${name}-control-plane`;
  const kubeconfig = path.join(REPO_ROOT, "build", `kind-${name}.kubeconfig`);
  await mkdir(path.dirname(kubeconfig), { recursive: true });
  await writeFile(kubeconfig, (await execOk(["kind", "get", "kubeconfig", "--name", name])).stdout, {
    mode: 0o600,
  });
  const onNode = (argv: readonly string[], opts: { timeoutMs?: number; input?: string } = {}) =>
    exec(["docker", "exec", ...(opts.input !== undefined ? ["-i"] : []), node, ...argv], opts);
  return {
    kind: "kind",
    nodeName: node,
    kubeconfig,
    kubectlCommand: [kubectlBin, `--kubeconfig=${kubeconfig}`],
    expectedRestartMode: "systemd",
    kubectl: (args, opts = {}) =>
      exec([kubectlBin, `--kubeconfig=${kubeconfig}`, ...args], { timeoutMs: 60_000, ...opts }),
    onNode,
    async importImage(archive) {
      await execOk(["kind", "load", "image-archive", archive, "--name", name], { timeoutMs: 600_000 });
    },
    async vmms() {
      const r = await onNode([
        "sh",
        "-c",
        "ps -eo pid=,args= | grep -E 'qemu-system|cloud-hypervisor' | grep -v grep",
      ]);
      return r.stdout
        .split("\n")
        .map((l) => l.trim())
        .filter((l) => l && VMM.test(l.replace(/^\d+ /, "")));
    },
    close: async () => [],
  };
}

/** `helm` from installer/scripts/build-helm.sh (cached by version). */
export async function helmBinary(): Promise<string> {
  const script = path.join(REPO_ROOT, "installer/scripts/build-helm.sh");
  return new Promise((resolve, reject) =>
    execFile(script, { maxBuffer: 1 << 20 }, (err, stdout) =>
      err ? reject(err) : resolve(stdout.trim().split("\n").pop() ?? ""),
    ),
  );
}
