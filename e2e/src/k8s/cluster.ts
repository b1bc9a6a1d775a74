// A real single-node Kubernetes cluster on this machine, for the Kubernetes test level: etcd,
// kube-apiserver (Node + RBAC authorization, NodeRestriction, service-account signing keys,
// certificates from our own CA), kube-controller-manager, kube-scheduler, kubelet and kube-proxy
// (iptables mode), a CNI bridge, and Debian's containerd 1.6 at its standard paths
// (/etc/containerd/config.toml, /run/containerd/containerd.sock) under s6-supervise, so the
// installer's `--restart auto` finds a supervised containerd and restarts it with a signal.
//
// The node (containerd, kubelet and everything they start) lives in a mount namespace of its own
// whose `/` is a shared mount, as on a systemd host: its mounts (snapshots, volumes, pod netns)
// vanish with it, and its pods' netns files never show in the host's /run/netns. Files are
// shared with the host as they are: the installer's /opt/cloudhv and containerd's config are
// the host's. One cluster per machine (a lock under /run); `down()` takes everything back:
// processes, the namespace and its mounts, the bridge, the iptables chains the cluster made,
// the sysctls kubelet and CNI changed, containerd's config bytes, the paths it created.
import { spawn } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { closeSync, openSync } from "node:fs";
import { chmod, mkdir, readdir, readFile, readlink, rm, rmdir, stat, writeFile } from "node:fs/promises";
import { request } from "node:https";
import { connect } from "node:net";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { exec, execOk } from "@cloudhv/shim";
import { CriClient } from "../cri/client.js";
import { buildBusyboxImage } from "../oci-image.js";

export const CLUSTER_DIR = "/run/cloudhv-k8s";
export const NODE_NAME = "cloudhv-e2e";
export const CONTAINERD_CONFIG = "/etc/containerd/config.toml";
export const CONTAINERD_SOCKET = "/run/containerd/containerd.sock";
export const PAUSE_IMAGE = "docker.io/cloudhv-test/pause:1";
const POD_SUBNET = "10.244.0";
const SERVICE_RANGE = "10.96.0.0/16";
const KUBERNETES_SERVICE_IP = "10.96.0.1";
const BRIDGE = "chvk8s0";

/**
 * Paths the cluster may create on the host. Other suites' private containerds share some of them
 * (runc shims' sockets in /run/containerd/s, CNI's result cache in /var/lib/cni): down() removes
 * only the empty directories of those that were not there before, never a file in them.
 */
const HOST_PATHS = ["/run/containerd", "/run/netns", "/var/log/containers", "/var/lib/cni", "/etc/cni"];
/** containerd 1.6 puts every shim's socket here, whatever its config says. */
const SHIM_SOCKETS = "/run/containerd/s";

/** Sysctls kubelet (without protectKernelDefaults), kube-proxy and the CNI bridge may change. */
const SYSCTLS = [
  "net/ipv4/ip_forward",
  "net/ipv4/conf/all/route_localnet",
  "net/ipv6/conf/all/forwarding",
  "net/bridge/bridge-nf-call-iptables",
  "net/bridge/bridge-nf-call-ip6tables",
  "net/netfilter/nf_conntrack_max",
  "vm/overcommit_memory",
  "vm/panic_on_oom",
  "kernel/panic",
  "kernel/panic_on_oops",
  "kernel/keys/root_maxkeys",
  "kernel/keys/root_maxbytes",
];

interface Proc {
  name: string;
  pid: number;
  startTime: string;
}

/** Everything down() needs, also from another process after a crash (CLUSTER_DIR/state.json). */
interface State {
  owner: number;
  ownerStart: string;
  bin: Binaries;
  nodeIp: string;
  procs: Proc[];
  /** The mount namespace holder (its death ends the namespace). */
  holder?: Proc;
  sysctls: Record<string, string>;
  /** iptables chains per family and table before the cluster ran. */
  chains: Record<string, string[]>;
  createdPaths: string[];
  /** /run/containerd/s before the cluster ran (other suites' shims use it too). */
  shimSockets: string[];
  /** kubelet's kubepods cgroup per hierarchy, where it was there before the cluster ran. */
  cgroups: string[];
  /** containerd's config before the cluster wrote its own (null: there was none). */
  originalConfig: string | null;
  /** false until the cluster's own config is in place. */
  configWritten: boolean;
}

export interface Binaries {
  k8s: string;
  etcd: string;
  /** A containerd 2.x binary (installer/scripts/build-containerd2.sh): the node runs it instead of Debian's 1.6. */
  containerd2?: string;
}

export type Log = (line: string) => void;

/** The same node config for containerd 2.x (version 3: the CRI plugin split in runtime and images). */
function containerd2Config(dir: string): string {
  return [
    "# The cloudhv Kubernetes e2e's node config for containerd 2 (e2e/src/k8s/cluster.ts); the",
    "# original comes back when the cluster goes down.",
    "version = 3",
    `root = "${dir}/containerd"`,
    `state = "${dir}/containerd-state"`,
    "",
    "[grpc]",
    `  address = "${CONTAINERD_SOCKET}"`,
    "",
    "[plugins]",
    `  [plugins."io.containerd.cri.v1.images".pinned_images]`,
    `    sandbox = "${PAUSE_IMAGE}"`,
    `  [plugins."io.containerd.cri.v1.runtime"]`,
    // As for 1.6: this machine refuses negative oom_score_adj (a host fact).
    "    restrict_oom_score_adj = true",
    `    [plugins."io.containerd.cri.v1.runtime".cni]`,
    `      bin_dir = "/usr/lib/cni"`,
    `      conf_dir = "${dir}/cni"`,
    `    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]`,
    `      runtime_type = "io.containerd.runc.v2"`,
    `    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]`,
    `      Root = "${dir}/runc"`,
    `  [plugins."io.containerd.internal.v1.opt"]`,
    `    path = "${dir}/containerd-opt"`,
    "",
  ].join("\n");
}

async function startTimeOf(pid: number): Promise<string | undefined> {
  const s = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => undefined);
  if (!s) return undefined;
  const fields = s.slice(s.lastIndexOf(")") + 2).split(" ");
  if (fields[0] === "Z") return undefined;
  return fields[19];
}

async function alive(p: Proc): Promise<boolean> {
  return (await startTimeOf(p.pid)) === p.startTime;
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

async function terminate(p: Proc, graceMs = 15_000): Promise<void> {
  if (!(await alive(p))) return;
  try {
    process.kill(p.pid, "SIGTERM");
  } catch {
    return;
  }
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline) {
    if (!(await alive(p))) return;
    await sleep(100);
  }
  if (await alive(p)) process.kill(p.pid, "SIGKILL");
  while (await alive(p)) await sleep(50);
}

/** The IPv4 address the node uses for its default route (else its first global address). */
async function detectNodeIp(): Promise<string> {
  const route = await exec(["ip", "-4", "-o", "route", "get", "192.0.2.1"]);
  const src = /\bsrc (\d+\.\d+\.\d+\.\d+)/.exec(route.stdout)?.[1];
  if (src) return src;
  const addrs = await execOk(["ip", "-4", "-o", "addr", "show", "scope", "global"]);
  const first = /inet (\d+\.\d+\.\d+\.\d+)\//.exec(addrs.stdout)?.[1];
  if (!first) throw new Error("cluster: no global IPv4 address on this machine for the node");
  return first;
}

// ---- certificates (openssl) ---------------------------------------------------------------

const OPENSSL_CNF = `[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
`;

interface CertSpec {
  name: string;
  cn: string;
  org?: string;
  dns?: string[];
  ips?: string[];
}

async function makeCa(pki: string): Promise<void> {
  await writeFile(path.join(pki, "openssl.cnf"), OPENSSL_CNF);
  await execOk(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", `${pki}/ca.key`]);
  await execOk([
    "openssl",
    "req",
    "-x509",
    "-new",
    "-key",
    `${pki}/ca.key`,
    "-subj",
    "/CN=cloudhv-e2e-ca",
    "-days",
    "7",
    "-config",
    `${pki}/openssl.cnf`,
    "-extensions",
    "ca",
    "-out",
    `${pki}/ca.crt`,
  ]);
}

async function makeCert(pki: string, spec: CertSpec): Promise<void> {
  const key = `${pki}/${spec.name}.key`;
  await execOk(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key]);
  const subj = `${spec.org ? `/O=${spec.org}` : ""}/CN=${spec.cn}`;
  await execOk([
    "openssl",
    "req",
    "-new",
    "-key",
    key,
    "-subj",
    subj,
    "-config",
    `${pki}/openssl.cnf`,
    "-out",
    `${pki}/${spec.name}.csr`,
  ]);
  const sans = [...(spec.dns ?? []).map((d) => `DNS:${d}`), ...(spec.ips ?? []).map((i) => `IP:${i}`)];
  await writeFile(
    `${pki}/${spec.name}.ext`,
    [
      "[v3]",
      "basicConstraints = critical,CA:FALSE",
      "keyUsage = critical,digitalSignature,keyEncipherment",
      "extendedKeyUsage = serverAuth,clientAuth",
      "authorityKeyIdentifier = keyid",
      ...(sans.length ? [`subjectAltName = ${sans.join(",")}`] : []),
      "",
    ].join("\n"),
  );
  await execOk([
    "openssl",
    "x509",
    "-req",
    "-in",
    `${pki}/${spec.name}.csr`,
    "-CA",
    `${pki}/ca.crt`,
    "-CAkey",
    `${pki}/ca.key`,
    "-set_serial",
    `0x${Date.now().toString(16)}${Math.floor(Math.random() * 0xffff).toString(16)}`,
    "-days",
    "7",
    "-extfile",
    `${pki}/${spec.name}.ext`,
    "-extensions",
    "v3",
    "-out",
    `${pki}/${spec.name}.crt`,
  ]);
  await rm(`${pki}/${spec.name}.csr`);
  await rm(`${pki}/${spec.name}.ext`);
}

async function kubeconfig(pki: string, server: string, user: string, file: string): Promise<void> {
  const b64 = async (f: string) => (await readFile(f)).toString("base64");
  await writeFile(
    file,
    JSON.stringify(
      {
        apiVersion: "v1",
        kind: "Config",
        clusters: [
          {
            name: "cloudhv-e2e",
            cluster: { server, "certificate-authority-data": await b64(`${pki}/ca.crt`) },
          },
        ],
        users: [
          {
            name: user,
            user: {
              "client-certificate-data": await b64(`${pki}/${user}.crt`),
              "client-key-data": await b64(`${pki}/${user}.key`),
            },
          },
        ],
        contexts: [{ name: "cloudhv-e2e", context: { cluster: "cloudhv-e2e", user } }],
        "current-context": "cloudhv-e2e",
      },
      null,
      2,
    ),
    { mode: 0o600 },
  );
}

/** GET over HTTPS with the cluster's CA and a client certificate; resolves with status and body. */
function httpsGet(
  url: string,
  tls: { ca?: Buffer; cert?: Buffer; key?: Buffer; insecure?: boolean },
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        ...(tls.ca ? { ca: tls.ca } : {}),
        ...(tls.cert ? { cert: tls.cert } : {}),
        ...(tls.key ? { key: tls.key } : {}),
        rejectUnauthorized: !tls.insecure,
        timeout: 5000,
      },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => {
          body += c;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on("timeout", () => req.destroy(new Error(`${url}: timed out`)));
    req.on("error", reject);
    req.end();
  });
}

function socketAnswers(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(socket);
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

async function iptablesChains(): Promise<Record<string, string[]>> {
  const out: Record<string, string[]> = {};
  for (const family of ["iptables", "ip6tables"]) {
    for (const table of ["filter", "nat", "mangle", "raw"]) {
      const r = await exec([`${family}-save`, "-t", table]);
      out[`${family}/${table}`] =
        r.code === 0 ? [...r.stdout.matchAll(/^:(\S+)/gm)].map((m) => m[1] as string) : [];
    }
  }
  return out;
}

// ---- the cluster ------------------------------------------------------------------------------

export class LocalCluster {
  readonly dir = CLUSTER_DIR;
  readonly pki = path.join(CLUSTER_DIR, "pki");
  readonly kubeconfig = path.join(CLUSTER_DIR, "admin.kubeconfig");
  readonly nodeName = NODE_NAME;

  private constructor(
    private state: State,
    readonly bin: Binaries,
    private readonly log: Log,
  ) {}

  get nodeIp(): string {
    return this.state.nodeIp;
  }

  /** The node's mount namespace, as /proc/<pid>/ns/mnt names it ("mnt:[…]"). */
  async nodeMountNs(): Promise<string | undefined> {
    if (!this.state.holder || !(await alive(this.state.holder))) return undefined;
    return readlinkSafe(`/proc/${this.state.holder.pid}/ns/mnt`);
  }

  /** Runs a command in the node's mount namespace (what containerd and kubelet see). */
  onNode(argv: readonly string[], opts: { timeoutMs?: number; input?: string } = {}) {
    const holder = this.state.holder;
    if (!holder) throw new Error("cluster: the node's namespace is not up");
    return exec(["nsenter", `--mount=/proc/${holder.pid}/ns/mnt`, "--", ...argv], opts);
  }

  /**
   * Brings the cluster up. Waits (up to `lockWaitMs`) for another cluster on this machine to go;
   * cleans up after one whose owner died. Throws with the failing component's log tail.
   */
  static async up(bin: Binaries, opts: { log?: Log; lockWaitMs?: number } = {}): Promise<LocalCluster> {
    const log = opts.log ?? ((line: string) => console.log(`k8s: ${line}`));
    await acquire(log, opts.lockWaitMs ?? 30 * 60_000);
    const ownerStart = (await startTimeOf(process.pid)) ?? "";
    const state: State = {
      owner: process.pid,
      ownerStart,
      bin,
      nodeIp: "",
      procs: [],
      sysctls: {},
      chains: {},
      createdPaths: [],
      cgroups: [],
      shimSockets: [],
      originalConfig: null,
      configWritten: false,
    };
    const cluster = new LocalCluster(state, bin, log);
    try {
      await cluster.save();
      await cluster.bringUp();
      return cluster;
    } catch (err) {
      log(`bring-up failed: ${(err as Error).message}`);
      await cluster.down().catch((e: Error) => log(`teardown after the failure: ${e.message}`));
      throw err;
    }
  }

  private async save(): Promise<void> {
    await writeFile(path.join(this.dir, "state.json.tmp"), JSON.stringify(this.state, null, 2));
    await execOk(["mv", "-f", path.join(this.dir, "state.json.tmp"), path.join(this.dir, "state.json")]);
  }

  private async bringUp(): Promise<void> {
    const t0 = Date.now();
    const step = (what: string) => this.log(`${what} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    // Preconditions: the standard containerd socket is free, the ports too.
    if (await socketAnswers(CONTAINERD_SOCKET))
      throw new Error(`a containerd already serves ${CONTAINERD_SOCKET}: the cluster needs the node's own`);
    for (const sysctl of SYSCTLS) {
      const v = await readFile(`/proc/sys/${sysctl}`, "utf8").catch(() => undefined);
      if (v !== undefined) this.state.sysctls[sysctl] = v.trim();
    }
    this.state.chains = await iptablesChains();
    for (const p of HOST_PATHS) if (!(await exists(p))) this.state.createdPaths.push(p);
    this.state.cgroups = await nodeCgroups();
    this.state.shimSockets = await readdir(SHIM_SOCKETS).catch(() => [] as string[]);
    this.state.originalConfig = await readFile(CONTAINERD_CONFIG, "utf8").catch(() => null);
    this.state.nodeIp = await detectNodeIp();
    await this.save();
    const ip = this.state.nodeIp;
    const dir = this.dir;
    const pki = this.pki;
    for (const d of ["pki", "logs", "etcd", "kubelet", "pod-logs", "cni", "cni-ipam", "containerd", "s6"])
      await mkdir(path.join(dir, d), { recursive: true });

    // Certificates: one CA; the API server's serving certificate for every name pods and we use.
    await makeCa(pki);
    const server = `https://${ip}:6443`;
    const certs: CertSpec[] = [
      {
        name: "apiserver",
        cn: "kube-apiserver",
        dns: [
          "kubernetes",
          "kubernetes.default",
          "kubernetes.default.svc",
          "kubernetes.default.svc.cluster.local",
          "localhost",
        ],
        ips: [ip, "127.0.0.1", KUBERNETES_SERVICE_IP],
      },
      { name: "apiserver-kubelet-client", cn: "kube-apiserver-kubelet-client", org: "system:masters" },
      { name: "apiserver-etcd-client", cn: "kube-apiserver-etcd-client" },
      { name: "etcd-server", cn: "etcd", dns: ["localhost"], ips: ["127.0.0.1"] },
      { name: "admin", cn: "cloudhv-e2e-admin", org: "system:masters" },
      { name: "controller-manager", cn: "system:kube-controller-manager" },
      { name: "scheduler", cn: "system:kube-scheduler" },
      { name: "kube-proxy", cn: "system:kube-proxy" },
      { name: "kubelet", cn: `system:node:${NODE_NAME}`, org: "system:nodes" },
      { name: "kubelet-serving", cn: NODE_NAME, dns: [NODE_NAME], ips: [ip] },
    ];
    for (const c of certs) await makeCert(pki, c);
    await execOk(["openssl", "genrsa", "-out", `${pki}/sa.key`, "2048"]);
    await execOk(["openssl", "rsa", "-in", `${pki}/sa.key`, "-pubout", "-out", `${pki}/sa.pub`]);
    new X509Certificate(await readFile(`${pki}/apiserver.crt`)); // parses: the files are sound
    await kubeconfig(pki, server, "admin", this.kubeconfig);
    for (const u of ["controller-manager", "scheduler", "kube-proxy", "kubelet"])
      await kubeconfig(pki, server, u, `${dir}/${u}.kubeconfig`);
    step("certificates and kubeconfigs");

    // The node: a mount namespace with a shared / (like systemd's), its own /run/netns.
    await mkdir("/run/netns", { recursive: true });
    this.state.holder = await this.launch("node-namespace", [
      "unshare",
      "--mount",
      "--propagation",
      "unchanged",
      "--",
      "sh",
      "-c",
      // The host's /run/netns may be a shared mount (ip netns makes it one): made private here
      // first, or the node's tmpfs over it would propagate to the host and stay after teardown.
      `mount --make-rshared / && { mount --make-rprivate /run/netns 2>/dev/null || true; } && mount -t tmpfs -o mode=0755 cloudhv-k8s-netns /run/netns && touch ${dir}/namespace-ready && exec sleep infinity`,
    ]);
    this.state.procs = this.state.procs.filter((p) => p.name !== "node-namespace");
    await this.save();
    await this.waitFor("the node's mount namespace", 20_000, () => exists(`${dir}/namespace-ready`));

    // containerd: Debian's 1.6 at its standard config path and socket, under s6-supervise.
    await writeFile(
      `${dir}/cni/10-cloudhv-k8s.conflist`,
      JSON.stringify(
        {
          cniVersion: "0.4.0",
          name: "cloudhv-k8s",
          plugins: [
            {
              type: "bridge",
              bridge: BRIDGE,
              isGateway: true,
              ipMasq: false,
              hairpinMode: true,
              ipam: {
                type: "host-local",
                ranges: [[{ subnet: `${POD_SUBNET}.0/24`, gateway: `${POD_SUBNET}.1` }]],
                routes: [{ dst: "0.0.0.0/0" }],
                dataDir: `${dir}/cni-ipam`,
              },
            },
          ],
        },
        null,
        2,
      ),
    );
    await mkdir("/etc/containerd", { recursive: true });
    await writeFile(
      CONTAINERD_CONFIG,
      this.bin.containerd2
        ? containerd2Config(dir)
        : [
            "# The cloudhv Kubernetes e2e's node config (e2e/src/k8s/cluster.ts); the original comes",
            "# back when the cluster goes down.",
            "version = 2",
            `root = "${dir}/containerd"`,
            `state = "${dir}/containerd-state"`,
            "",
            "[grpc]",
            `  address = "${CONTAINERD_SOCKET}"`,
            "",
            "[plugins]",
            `  [plugins."io.containerd.grpc.v1.cri"]`,
            `    sandbox_image = "${PAUSE_IMAGE}"`,
            // This machine refuses negative oom_score_adj: without it runc fails every pause
            // container. A host fact, not a product setting.
            "    restrict_oom_score_adj = true",
            `    [plugins."io.containerd.grpc.v1.cri".cni]`,
            `      bin_dir = "/usr/lib/cni"`,
            `      conf_dir = "${dir}/cni"`,
            // runc's state of this node's containers stays in the cluster's directory.
            `    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]`,
            `      runtime_type = "io.containerd.runc.v2"`,
            `    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]`,
            `      Root = "${dir}/runc"`,
            `  [plugins."io.containerd.internal.v1.opt"]`,
            `    path = "${dir}/containerd-opt"`,
            "",
          ].join("\n"),
    );
    this.state.configWritten = true;
    await this.save();
    const svc = `${dir}/s6/containerd`;
    await mkdir(svc, { recursive: true });
    await writeFile(
      `${svc}/run`,
      `#!/bin/sh\necho $$ > ${dir}/containerd.pid\nexec ${this.bin.containerd2 ?? "containerd"} --config ${CONTAINERD_CONFIG} >>${dir}/logs/containerd.log 2>&1\n`,
    );
    await chmod(`${svc}/run`, 0o755);
    await this.launch("s6-supervise", ["s6-supervise", svc], { node: true });
    await this.waitFor("containerd", 60_000, () => socketAnswers(CONTAINERD_SOCKET), "containerd");
    // The pause image (no registry here): busybox sleeping, as the local harness uses.
    const pause = await buildBusyboxImage({
      archivePath: `${dir}/pause.tar`,
      name: PAUSE_IMAGE,
      config: { entrypoint: ["/bin/sleep", "2147483647"] },
    });
    await execOk(
      ["ctr", "--address", CONTAINERD_SOCKET, "-n", "k8s.io", "images", "import", pause.archivePath],
      {
        timeoutMs: 300_000,
      },
    );
    await rm(pause.archivePath, { force: true });
    step("containerd (s6-supervise) with the pause image");

    // etcd, TLS on localhost.
    await this.launch("etcd", [
      `${this.bin.etcd}/etcd`,
      "--name=default",
      `--data-dir=${dir}/etcd`,
      "--listen-client-urls=https://127.0.0.1:2379",
      "--advertise-client-urls=https://127.0.0.1:2379",
      "--listen-peer-urls=http://127.0.0.1:2380",
      "--initial-advertise-peer-urls=http://127.0.0.1:2380",
      "--initial-cluster=default=http://127.0.0.1:2380",
      "--listen-metrics-urls=http://127.0.0.1:2381",
      `--cert-file=${pki}/etcd-server.crt`,
      `--key-file=${pki}/etcd-server.key`,
      `--trusted-ca-file=${pki}/ca.crt`,
      "--client-cert-auth",
      "--log-level=warn",
    ]);
    const ca = await readFile(`${pki}/ca.crt`);
    const etcdTls = {
      ca,
      cert: await readFile(`${pki}/apiserver-etcd-client.crt`),
      key: await readFile(`${pki}/apiserver-etcd-client.key`),
    };
    await this.waitFor(
      "etcd",
      60_000,
      async () =>
        (await httpsGet("https://127.0.0.1:2379/health", etcdTls).catch(() => ({ status: 0 }))).status ===
        200,
      "etcd",
    );
    step("etcd");

    const k8s = (c: string) => `${this.bin.k8s}/${c}`;
    await this.launch("kube-apiserver", [
      k8s("kube-apiserver"),
      `--advertise-address=${ip}`,
      "--secure-port=6443",
      "--allow-privileged=true",
      "--authorization-mode=Node,RBAC",
      "--enable-admission-plugins=NodeRestriction",
      "--etcd-servers=https://127.0.0.1:2379",
      `--etcd-cafile=${pki}/ca.crt`,
      `--etcd-certfile=${pki}/apiserver-etcd-client.crt`,
      `--etcd-keyfile=${pki}/apiserver-etcd-client.key`,
      `--client-ca-file=${pki}/ca.crt`,
      `--tls-cert-file=${pki}/apiserver.crt`,
      `--tls-private-key-file=${pki}/apiserver.key`,
      `--kubelet-client-certificate=${pki}/apiserver-kubelet-client.crt`,
      `--kubelet-client-key=${pki}/apiserver-kubelet-client.key`,
      `--kubelet-certificate-authority=${pki}/ca.crt`,
      "--kubelet-preferred-address-types=InternalIP",
      `--service-cluster-ip-range=${SERVICE_RANGE}`,
      "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
      `--service-account-key-file=${pki}/sa.pub`,
      `--service-account-signing-key-file=${pki}/sa.key`,
      `--cert-dir=${dir}/apiserver-certs`,
      "--profiling=false",
      "--v=1",
    ]);
    const adminTls = {
      ca,
      cert: await readFile(`${pki}/admin.crt`),
      key: await readFile(`${pki}/admin.key`),
    };
    await this.waitFor(
      "kube-apiserver /readyz",
      180_000,
      async () => (await httpsGet(`${server}/readyz`, adminTls).catch(() => ({ status: 0 }))).status === 200,
      "kube-apiserver",
    );
    step("kube-apiserver ready");

    await this.launch("kube-controller-manager", [
      k8s("kube-controller-manager"),
      `--kubeconfig=${dir}/controller-manager.kubeconfig`,
      `--authentication-kubeconfig=${dir}/controller-manager.kubeconfig`,
      `--authorization-kubeconfig=${dir}/controller-manager.kubeconfig`,
      "--bind-address=127.0.0.1",
      `--cert-dir=${dir}/kcm-certs`,
      "--leader-elect=false",
      "--use-service-account-credentials=true",
      `--service-account-private-key-file=${pki}/sa.key`,
      `--root-ca-file=${pki}/ca.crt`,
      `--cluster-signing-cert-file=${pki}/ca.crt`,
      `--cluster-signing-key-file=${pki}/ca.key`,
      "--profiling=false",
    ]);
    await this.launch("kube-scheduler", [
      k8s("kube-scheduler"),
      `--kubeconfig=${dir}/scheduler.kubeconfig`,
      `--authentication-kubeconfig=${dir}/scheduler.kubeconfig`,
      `--authorization-kubeconfig=${dir}/scheduler.kubeconfig`,
      "--bind-address=127.0.0.1",
      `--cert-dir=${dir}/scheduler-certs`,
      "--leader-elect=false",
      "--profiling=false",
    ]);

    await writeFile(
      `${dir}/kubelet.json`,
      JSON.stringify(
        {
          apiVersion: "kubelet.config.k8s.io/v1beta1",
          kind: "KubeletConfiguration",
          authentication: {
            anonymous: { enabled: false },
            webhook: { enabled: true },
            x509: { clientCAFile: `${pki}/ca.crt` },
          },
          authorization: { mode: "Webhook" },
          cgroupDriver: "cgroupfs",
          containerRuntimeEndpoint: `unix://${CONTAINERD_SOCKET}`,
          tlsCertFile: `${pki}/kubelet-serving.crt`,
          tlsPrivateKeyFile: `${pki}/kubelet-serving.key`,
          podLogsDir: `${dir}/pod-logs`,
          failSwapOn: false,
          failCgroupV1: false,
          resolvConf: "/etc/resolv.conf",
          // A shared dev machine: never evict or garbage-collect because of its disk.
          evictionHard: { "memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%" },
          imageGCHighThresholdPercent: 100,
          imageGCLowThresholdPercent: 99,
          serializeImagePulls: false,
          healthzBindAddress: "127.0.0.1",
          readOnlyPort: 0,
        },
        null,
        2,
      ),
    );
    await this.launch(
      "kubelet",
      [
        k8s("kubelet"),
        `--config=${dir}/kubelet.json`,
        `--kubeconfig=${dir}/kubelet.kubeconfig`,
        `--root-dir=${dir}/kubelet`,
        `--cert-dir=${dir}/kubelet/pki`,
        `--hostname-override=${NODE_NAME}`,
        `--node-ip=${ip}`,
        "--v=1",
      ],
      { node: true },
    );

    await writeFile(
      `${dir}/kube-proxy.json`,
      JSON.stringify(
        {
          apiVersion: "kubeproxy.config.k8s.io/v1alpha1",
          kind: "KubeProxyConfiguration",
          mode: "iptables",
          clientConnection: { kubeconfig: `${dir}/kube-proxy.kubeconfig` },
          hostnameOverride: NODE_NAME,
          clusterCIDR: `${POD_SUBNET}.0/24`,
          bindAddress: "0.0.0.0",
          healthzBindAddress: "127.0.0.1:10256",
          metricsBindAddress: "127.0.0.1:10249",
          // Leave the machine's conntrack sysctls and route_localnet alone.
          conntrack: { maxPerCore: 0, min: 0, tcpEstablishedTimeout: "0s", tcpCloseWaitTimeout: "0s" },
          iptables: { localhostNodePorts: false },
        },
        null,
        2,
      ),
    );
    await this.launch("kube-proxy", [k8s("kube-proxy"), `--config=${dir}/kube-proxy.json`, "--v=1"]);

    await this.waitFor(
      `node ${NODE_NAME} Ready`,
      240_000,
      async () => {
        const r = await this.kubectl([
          "get",
          "node",
          NODE_NAME,
          "-o",
          "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        ]);
        return r.code === 0 && r.stdout.trim() === "True";
      },
      "kubelet",
    );
    step("node Ready");
    await this.waitFor(
      "the default service account and kube-root-ca.crt (controller-manager)",
      120_000,
      async () =>
        (await this.kubectl(["-n", "default", "get", "serviceaccount/default", "configmap/kube-root-ca.crt"]))
          .code === 0,
      "kube-controller-manager",
    );
    await this.waitFor(
      "kube-proxy synced",
      120_000,
      async () => (await httpsOrHttp("http://127.0.0.1:10256/healthz")) === 200,
      "kube-proxy",
    );
    step("cluster up");
  }

  kubectl(args: readonly string[], opts: { timeoutMs?: number; input?: string } = {}) {
    return exec([`${this.bin.k8s}/kubectl`, `--kubeconfig=${this.kubeconfig}`, ...args], {
      timeoutMs: opts.timeoutMs ?? 60_000,
      ...(opts.input !== undefined ? { input: opts.input } : {}),
    });
  }

  private async launch(name: string, argv: string[], opts: { node?: boolean } = {}): Promise<Proc> {
    const holder = this.state.holder;
    if (opts.node && !holder) throw new Error("cluster: the node's namespace is not up");
    const full =
      opts.node && holder ? ["nsenter", `--mount=/proc/${holder.pid}/ns/mnt`, "--", ...argv] : argv;
    const fd = openSync(path.join(this.dir, "logs", `${name}.log`), "a");
    const child = spawn(full[0] as string, full.slice(1), { detached: true, stdio: ["ignore", fd, fd] });
    closeSync(fd);
    child.on("error", () => {}); // a missing binary: pid is undefined, reported below
    child.unref();
    const pid = child.pid;
    if (pid === undefined) throw new Error(`cluster: cannot start ${name}`);
    const startTime = (await startTimeOf(pid)) ?? "";
    const p = { name, pid, startTime };
    this.state.procs.push(p);
    await this.save();
    return p;
  }

  private async waitFor(
    what: string,
    timeoutMs: number,
    check: () => Promise<boolean>,
    component?: string,
  ): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (await check().catch(() => false)) return;
      const dead = [];
      for (const p of this.state.procs) if (!(await alive(p))) dead.push(p.name);
      if (dead.length || Date.now() > deadline) {
        const logName = dead[0] ?? component;
        const tail = logName ? await this.logTail(logName) : "";
        throw new Error(
          `${what}: ${dead.length ? `${dead.join(", ")} exited` : `not after ${timeoutMs / 1000} s`}${tail ? `\n--- ${logName}.log (last lines) ---\n${tail}` : ""}`,
        );
      }
      await sleep(500);
    }
  }

  async logTail(name: string, lines = 25): Promise<string> {
    const text = await readFile(path.join(this.dir, "logs", `${name}.log`), "utf8").catch(() => "");
    return text.trimEnd().split("\n").slice(-lines).join("\n");
  }

  /** Stops everything and puts the machine back as it was. Idempotent; also after a crash. */
  async down(): Promise<string[]> {
    const problems: string[] = [];
    const note = (what: string) => {
      problems.push(what);
      this.log(`teardown: ${what}`);
    };
    const byName = (n: string) => this.state.procs.find((p) => p.name === n);
    const stopProc = async (n: string) => {
      const p = byName(n);
      if (p) await terminate(p);
    };
    // kubelet first (it would restart what we remove), then the pods through CRI: that is what
    // tears down their containers, VMs and netns properly.
    await stopProc("kubelet");
    if (await socketAnswers(CONTAINERD_SOCKET)) {
      const cri = new CriClient(CONTAINERD_SOCKET);
      try {
        for (const pod of await cri.listPodSandbox()) {
          await cri.stopPodSandbox(pod.id).catch((e: Error) => note(`stop pod ${pod.id}: ${e.message}`));
          await cri.removePodSandbox(pod.id).catch((e: Error) => note(`remove pod ${pod.id}: ${e.message}`));
        }
      } catch (err) {
        note(`listing pods: ${(err as Error).message}`);
      } finally {
        cri.close();
      }
    }
    for (const n of ["kube-proxy", "kube-scheduler", "kube-controller-manager"]) await stopProc(n);
    // s6-supervise takes SIGTERM as "bring containerd down, then exit".
    await stopProc("s6-supervise");
    // Whatever still runs in the node's namespace (shims, VMMs, shim daemons): killed.
    const ns = await this.nodeMountNs();
    if (ns) {
      const left = await processesInMountNs(ns, this.state.holder?.pid);
      if (left.length) {
        note(
          `killed what was left in the node's namespace: ${left.map((p) => `${p.pid} ${p.cmd}`).join("; ")}`,
        );
        for (const p of left) {
          try {
            process.kill(p.pid, "SIGKILL");
          } catch {}
        }
      }
    }
    for (const n of ["kube-apiserver", "etcd"]) await stopProc(n);
    for (const p of this.state.procs) if (await alive(p)) await terminate(p);
    if (this.state.holder) await terminate(this.state.holder, 5000);

    // kube-proxy's own cleanup, then any KUBE-/CNI- chain that was not there before.
    if (await exists(`${this.bin.k8s}/kube-proxy`)) {
      const r = await exec([`${this.bin.k8s}/kube-proxy`, "--cleanup", "--v=0"], { timeoutMs: 60_000 });
      if (r.code !== 0) this.log(`teardown: kube-proxy --cleanup: ${r.stderr.trim().split("\n").pop()}`);
    }
    if (Object.keys(this.state.chains).length) await removeNewChains(this.state.chains, note);
    if ((await exec(["ip", "link", "show", BRIDGE])).code === 0) await exec(["ip", "link", "del", BRIDGE]);

    // kubelet's cgroups that were not there before: rmdir only removes empty ones, so one a
    // process still uses stays (and is reported).
    const hadCgroups = new Set(this.state.cgroups ?? []);
    for (const cg of await nodeCgroups())
      if (!hadCgroups.has(cg)) {
        const r = await exec(["find", cg, "-depth", "-type", "d", "-exec", "rmdir", "{}", "+"]);
        if (r.code !== 0) note(`cgroup ${cg}: ${r.stderr.trim().split("\n")[0]}`);
      }
    for (const [sysctl, value] of Object.entries(this.state.sysctls)) {
      const now = (await readFile(`/proc/sys/${sysctl}`, "utf8").catch(() => value)).trim();
      if (now !== value)
        await writeFile(`/proc/sys/${sysctl}`, value).catch((e: Error) =>
          note(`sysctl ${sysctl}: ${e.message}`),
        );
    }
    if (this.state.configWritten) {
      if (this.state.originalConfig === null) await rm(CONTAINERD_CONFIG, { force: true });
      else await writeFile(CONTAINERD_CONFIG, this.state.originalConfig);
    }
    // containerd's sockets (nothing serves them now) and the shim sockets nobody listens on
    // that appeared while the cluster ran.
    for (const f of [CONTAINERD_SOCKET, `${CONTAINERD_SOCKET}.ttrpc`])
      if (!(await socketAnswers(f))) await rm(f, { force: true });
    const listening = await listeningSockets();
    const hadSockets = new Set(this.state.shimSockets ?? []);
    for (const f of await readdir(SHIM_SOCKETS).catch(() => [] as string[]))
      if (!hadSockets.has(f) && !listening.has(`${SHIM_SOCKETS}/${f}`))
        await rm(`${SHIM_SOCKETS}/${f}`, { force: true });
    for (const p of [...this.state.createdPaths].reverse()) {
      if (p === "/run/netns") await rmdir(p).catch(() => {});
      else await exec(["find", p, "-depth", "-type", "d", "-empty", "-delete"]);
    }
    await rm(this.dir, { recursive: true, force: true });
    return problems;
  }

  /** Reads a leftover state (a crashed run) and tears it down. */
  static async cleanupLeftover(bin: Binaries, log: Log): Promise<boolean> {
    const text = await readFile(path.join(CLUSTER_DIR, "state.json"), "utf8").catch(() => undefined);
    if (text === undefined) {
      if (await exists(CLUSTER_DIR)) await rm(CLUSTER_DIR, { recursive: true, force: true });
      return false;
    }
    const state = JSON.parse(text) as State;
    const cluster = new LocalCluster(state, state.bin ?? bin, log);
    log("tearing down a cluster a previous run left behind");
    await cluster.down();
    return true;
  }

  /** Attaches to the running cluster this machine has (for `cluster down` from a shell). */
  static async attach(bin: Binaries, log: Log): Promise<LocalCluster | undefined> {
    const text = await readFile(path.join(CLUSTER_DIR, "state.json"), "utf8").catch(() => undefined);
    return text === undefined ? undefined : new LocalCluster(JSON.parse(text) as State, bin, log);
  }

  /** Hands the cluster to another process (the CLI's `up` leaves it running for the shell). */
  async release(owner: number): Promise<void> {
    this.state.owner = owner;
    this.state.ownerStart = (await startTimeOf(owner)) ?? "";
    await this.save();
  }
}

/** Paths of the unix sockets something listens on (/proc/net/unix). */
async function listeningSockets(): Promise<Set<string>> {
  const text = await readFile("/proc/net/unix", "utf8").catch(() => "");
  return new Set(
    text
      .split("\n")
      .slice(1)
      .map((l) => l.trim().split(/\s+/)[7])
      .filter((p): p is string => !!p && p.startsWith("/")),
  );
}

/**
 * /sys/fs/cgroup/<hierarchy>/kubepods (kubelet's, its pods' cgroups below) that exist now. Not
 * /k8s.io: other suites' CRI pods and ctr tasks in that namespace land there.
 */
async function nodeCgroups(): Promise<string[]> {
  const out: string[] = [];
  for (const h of await readdir("/sys/fs/cgroup").catch(() => [] as string[]))
    if (await exists(`/sys/fs/cgroup/${h}/kubepods`)) out.push(`/sys/fs/cgroup/${h}/kubepods`);
  return out;
}

async function readlinkSafe(p: string): Promise<string | undefined> {
  return readlink(p).catch(() => undefined);
}

/** Processes whose mount namespace is `ns`, except `except`. */
export async function processesInMountNs(
  ns: string,
  except?: number,
): Promise<Array<{ pid: number; cmd: string }>> {
  const out: Array<{ pid: number; cmd: string }> = [];
  for (const e of await readdir("/proc")) {
    if (!/^\d+$/.test(e) || Number(e) === except) continue;
    if ((await readlinkSafe(`/proc/${e}/ns/mnt`)) !== ns) continue;
    const cmd = (await readFile(`/proc/${e}/cmdline`, "utf8").catch(() => "")).replaceAll("\0", " ").trim();
    if (cmd) out.push({ pid: Number(e), cmd: cmd.slice(0, 200) });
  }
  return out;
}

async function httpsOrHttp(url: string): Promise<number> {
  const { get } = await import("node:http");
  return new Promise((resolve) => {
    const req = get(url, { timeout: 3000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(0));
  });
}

/** Deletes the KUBE-… and CNI-… chains that were not there before, and every rule jumping to them. */
async function removeNewChains(before: Record<string, string[]>, note: (s: string) => void): Promise<void> {
  for (const family of ["iptables", "ip6tables"]) {
    for (const table of ["filter", "nat", "mangle", "raw"]) {
      const had = new Set(before[`${family}/${table}`] ?? []);
      const r = await exec([`${family}-save`, "-t", table]);
      if (r.code !== 0) continue;
      const chains = [...r.stdout.matchAll(/^:(\S+)/gm)].map((m) => m[1] as string);
      const added = chains.filter((c) => !had.has(c) && /^(KUBE-|CNI-)/.test(c));
      if (added.length === 0) continue;
      const addedSet = new Set(added);
      const lines = [`*${table}`];
      for (const line of r.stdout.split("\n")) {
        const m = /^-A (\S+) (.*)$/.exec(line);
        if (!m || addedSet.has(m[1] as string)) continue;
        const target = /(?:^|\s)-[jg] (\S+)/.exec(m[2] as string)?.[1];
        if (target && addedSet.has(target)) lines.push(`-D ${m[1]} ${m[2]}`);
      }
      for (const c of added) lines.push(`-F ${c}`);
      for (const c of added) lines.push(`-X ${c}`);
      lines.push("COMMIT", "");
      const res = await exec([`${family}-restore`, "--noflush"], { input: lines.join("\n") });
      if (res.code !== 0) note(`${family} ${table}: removing ${added.join(", ")}: ${res.stderr.trim()}`);
    }
  }
}

/** One cluster per machine: CLUSTER_DIR is the lock, state.json names its owner. */
async function acquire(log: Log, waitMs: number): Promise<void> {
  const deadline = Date.now() + waitMs;
  let said = false;
  for (;;) {
    try {
      await mkdir(CLUSTER_DIR);
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    const text = await readFile(path.join(CLUSTER_DIR, "state.json"), "utf8").catch(() => undefined);
    const state = text ? (JSON.parse(text) as State) : undefined;
    const ownerAlive = state
      ? await alive({ name: "owner", pid: state.owner, startTime: state.ownerStart })
      : // No state yet: someone is between mkdir and the first save, or died right there.
        Date.now() - (await stat(CLUSTER_DIR)).mtimeMs < 30_000;
    if (!ownerAlive) {
      log(`${CLUSTER_DIR} was left by a run that is gone: cleaning up`);
      await LocalCluster.cleanupLeftover({ k8s: "", etcd: "" }, log);
      continue;
    }
    if (Date.now() > deadline)
      throw new Error(`another Kubernetes e2e cluster (pid ${state?.owner ?? "?"}) holds ${CLUSTER_DIR}`);
    if (!said) log(`waiting for the cluster of pid ${state?.owner ?? "?"} to go (one per machine)`);
    said = true;
    await sleep(5000);
  }
}
