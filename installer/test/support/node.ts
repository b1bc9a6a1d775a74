// A pretend node for the installer's tests: a host root directory (etc/containerd, opt, usr)
// and a real containerd that sees that root's /opt, /etc/containerd and /usr/local/bin as its own, through a
// private mount namespace, so the host paths the installer writes (/opt/cloudhv/bin/…,
// imports = ["/etc/containerd/conf.d/…"]) are exactly what containerd and the shim resolve.
import { execFile } from "node:child_process";
import { rmSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { QEMU_ACCEL } from "@cloudhv/e2e/dist/src/accel.js";
import { guestArtifacts } from "@cloudhv/e2e/dist/src/artifacts.js";
import { writeBridgeNetwork } from "@cloudhv/e2e/dist/src/cni.js";
import { PrivateContainerd } from "@cloudhv/e2e/dist/src/containerd.js";
import { CriClient, type PodSandboxConfig } from "@cloudhv/e2e/dist/src/cri/client.js";
import { processesMatching } from "@cloudhv/e2e/dist/src/leaks.js";
import { buildBusyboxImage, importOciArchive } from "@cloudhv/e2e/dist/src/oci-image.js";
import { assembleBundle, REPO_ROOT } from "../../src/bundle.js";

const run = promisify(execFile);

export const INSTALLER = path.resolve(import.meta.dirname, "../../src/bin/installer.js");

/**
 * One bundle per test process (node + shim + guest: ~110 MB, a few seconds).
 * $CLOUDHV_TEST_BUNDLE names one built before (kept), to run single test files faster.
 */
let bundle: Promise<string> | undefined;
export function testBundle(): Promise<string> {
  const given = process.env.CLOUDHV_TEST_BUNDLE;
  if (given) return Promise.resolve(given);
  bundle ??= (async () => {
    const out = await mkdtemp("/var/tmp/chv-bundle-");
    const { kernelPath, rootfsPath } = guestArtifacts();
    // With the pod network helper (every CRI pod needs it), as guest/agent/build.sh built it.
    const netHelper = path.join(REPO_ROOT, "build/host/cloudhv-net");
    await assembleBundle({ out, kernel: kernelPath, rootfs: rootfsPath, netHelper });
    // "exit" handlers run synchronously: nothing async would happen there.
    process.once("exit", () => rmSync(out, { recursive: true, force: true }));
    return out;
  })();
  return bundle;
}

export interface TestNode {
  /** Short directory for sockets and containerd's root/state (never under the host root). */
  dir: string;
  /** The pretend host root. */
  root: string;
  address: string;
  configPath: string;
  /** Starts containerd (binary: Debian's 1.6 or a built 2.x) from <root>/etc/containerd/config.toml. */
  start(binary?: string): Promise<PrivateContainerd>;
  stop(): Promise<void>;
}

export async function makeNode(): Promise<TestNode> {
  const dir = await mkdtemp("/run/chv-i-");
  const root = path.join(dir, "host");
  for (const d of ["etc/containerd", "opt/node-state", "usr/local/bin", "cni"])
    await mkdir(path.join(root, d), { recursive: true });
  // Pods run on a pod network: cloudhv refuses hostNetwork (a VM cannot share the node's).
  const network = await writeBridgeNetwork(path.join(root, "cni"), dir, path.basename(dir));
  const address = path.join(dir, "c.sock");
  let containerd: PrivateContainerd | undefined;
  const wrapper = path.join(dir, "containerd-in-node");
  const start = async (binary = "containerd") => {
    // containerd and every shim it starts live in a mount namespace where the node's /opt and
    // /etc/containerd are the pretend root's.
    await writeFile(
      wrapper,
      [
        "#!/bin/sh",
        `exec unshare --mount --propagation private sh -c 'mount --bind "$0/opt" /opt && mount --bind "$0/etc/containerd" /etc/containerd && mount --bind "$0/usr/local/bin" /usr/local/bin && exec "$@"' "${root}" "${binary}" "$@"`,
        "",
      ].join("\n"),
    );
    await chmod(wrapper, 0o755);
    containerd = await PrivateContainerd.start({
      baseDir: dir,
      binary: wrapper,
      configFile: "/etc/containerd/config.toml",
      address,
    });
    return containerd;
  };
  return {
    dir,
    root,
    address,
    configPath: path.join(root, "etc/containerd/config.toml"),
    start,
    async stop() {
      await containerd?.stop();
      for (const pid of await processesMatching(`--containerd-ttrpc ${address}.ttrpc`))
        process.kill(pid, "SIGKILL");
      await network.remove();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A realistic containerd 1.6/1.7 config: comments, several runtimes, custom plugin settings. */
export function realisticV2(dir: string): string {
  return `# /etc/containerd/config.toml: built into our node image (see OPS-1234). Do not remove the
# crun runtime, the batch jobs use it.
version = 2
root = "${dir}/root"
state = "${dir}/state"
oom_score = -999

[grpc]
  address = "${dir}/c.sock"
  max_recv_message_size = 16777216

[ttrpc]
  address = "${dir}/c.sock.ttrpc"

[debug]
  level = "info"   # "debug" when chasing something

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "docker.io/cloudhv-test/pause:1"
    enable_unprivileged_ports = true
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "${dir}/host/cni"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      snapshotter = "overlayfs"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false   # cgroupfs on this image
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun.options]
          BinaryName = "/usr/bin/crun"
  # Site tooling reads this.
  [plugins."io.containerd.internal.v1.opt"]
    path = "${dir}/opt"
  [plugins."io.containerd.gc.v1.scheduler"]
    pause_threshold = 0.02
    deletion_threshold = 0
`;
}

/** The same node, containerd 2.x style (version 3: the CRI plugin split in runtime and images). */
export function realisticV3(dir: string): string {
  return `# containerd 2 config for our GPU-less pool.
version = 3
root = "${dir}/root"
state = "${dir}/state"

[grpc]
  address = "${dir}/c.sock"

[ttrpc]
  address = "${dir}/c.sock.ttrpc"

[plugins]
  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
    [plugins."io.containerd.cri.v1.images".pinned_images]
      sandbox = "docker.io/cloudhv-test/pause:1"
  [plugins."io.containerd.cri.v1.runtime"]
    enable_unprivileged_ports = true
    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "${dir}/host/cni"
    [plugins."io.containerd.cri.v1.runtime".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
          SystemdCgroup = false
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.crun]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.crun.options]
          BinaryName = "/usr/bin/crun"
  [plugins."io.containerd.internal.v1.opt"]
    path = "${dir}/opt"
`;
}

/**
 * The runtime config the tests install: QEMU with the tests' accelerator (TCG here), and state under the pretend root's
 * /opt/node-state (the one other node directory containerd's namespace sees as the root's).
 */
export const TEST_STATE = "/opt/node-state";
export function testRuntimeConfig(): Record<string, unknown> {
  return {
    hypervisor: "qemu",
    qemu_accel: QEMU_ACCEL,
    state_dir: `${TEST_STATE}/cloudhv`,
    cache_dir: `${TEST_STATE}/cloudhv-cache/cache`,
    scratch_dir: `${TEST_STATE}/cloudhv-cache/scratch`,
    // Not the host's /var/log/cloudhv: nothing of a test is left on the machine.
    log_dir: `${TEST_STATE}/cloudhv-log`,
    scratch_size: "1Gi",
    // runTestPod sizes its VM with an annotation; sizing annotations are off by default.
    enable_annotations: ["default_memory"],
  };
}

export const PAUSE = "docker.io/cloudhv-test/pause:1";
export const BUSYBOX = "docker.io/cloudhv-test/busybox:installer";

/** The pause image (the realistic configs name it) and a busybox image, in k8s.io. */
export async function importTestImages(containerd: PrivateContainerd, dir: string): Promise<void> {
  for (const [i, image] of [
    { name: PAUSE, config: { entrypoint: ["/bin/sleep", "2147483647"] } },
    { name: BUSYBOX },
  ].entries()) {
    const built = await buildBusyboxImage({ archivePath: path.join(dir, `image-${i}.tar`), ...image });
    await importOciArchive(containerd, built.archivePath, { namespace: "k8s.io" });
    await rm(built.archivePath);
  }
}

/**
 * Runs a pod with handler `cloudhv` whose VM is sized by a kata annotation (so the CRI plugin
 * passed pod annotations on), and returns what its container printed: a greeting and the
 * guest's MemTotal in kB. The pod is gone afterwards.
 */
export async function runTestPod(
  address: string,
  dir: string,
): Promise<{ log: string; memTotalKb: number; vms: number }> {
  const cri = new CriClient(address);
  try {
    const logDirectory = path.join(dir, "pods", "p1");
    await mkdir(logDirectory, { recursive: true });
    const sandbox: PodSandboxConfig = {
      metadata: { name: "p1", uid: "uid-p1", namespace: "default", attempt: 0 },
      hostname: "p1",
      logDirectory,
      annotations: { "io.katacontainers.config.hypervisor.default_memory": "448" },
    };
    const pod = await cri.runPodSandbox(sandbox, "cloudhv");
    try {
      const status = await cri.podSandboxStatus(pod);
      if (status.runtimeHandler !== "cloudhv")
        throw new Error(`pod runs with handler ${status.runtimeHandler}`);
      const vms = (await processesMatching(`${TEST_STATE}/cloudhv/`)).length;
      const id = await cri.createContainer(
        pod,
        {
          metadata: { name: "hello" },
          image: { image: BUSYBOX },
          command: [
            "sh",
            "-c",
            "echo hello from an installed runtime; grep MemTotal /proc/meminfo; sleep 600",
          ],
          logPath: "hello.log",
        },
        sandbox,
      );
      await cri.startContainer(id);
      let log = "";
      const deadline = Date.now() + 30_000;
      while (!/MemTotal/.test(log) && Date.now() < deadline) {
        log = await readFile(path.join(logDirectory, "hello.log"), "utf8").catch(() => "");
        await new Promise((r) => setTimeout(r, 200));
      }
      await cri.stopContainer(id, 2);
      await cri.removeContainer(id);
      return { log, memTotalKb: Number(/MemTotal:\s+(\d+) kB/.exec(log)?.[1]), vms };
    } finally {
      await cri.stopPodSandbox(pod);
      await cri.removePodSandbox(pod);
    }
  } finally {
    cri.close();
  }
}

/** Runs the installer CLI; its pino lines parsed. */
export async function cli(
  args: string[],
): Promise<{ code: number; lines: Array<Record<string, unknown>>; stdout: string }> {
  try {
    const { stdout } = await run(process.execPath, [INSTALLER, ...args], {
      env: { ...process.env, NODE_NAME: "" },
    });
    return { code: 0, lines: jsonLines(stdout), stdout };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    if (e.stdout === undefined) throw err;
    return { code: e.code ?? -1, lines: jsonLines(e.stdout), stdout: `${e.stdout}${e.stderr ?? ""}` };
  }
}

function jsonLines(text: string): Array<Record<string, unknown>> {
  return text
    .split("\n")
    .filter((l) => l.startsWith(`{"`))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** Every file and directory under `dir`, relative, directories with a trailing slash. */
export async function tree(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(path.join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    out.push(e.isDirectory() ? `${rel}/` : rel);
    if (e.isDirectory()) out.push(...(await tree(dir, rel)));
  }
  return out.sort();
}

/** `doc.a.b.c` of a parsed TOML document, without `any`. */
export function at(doc: unknown, ...keys: string[]): unknown {
  let node = doc;
  for (const k of keys)
    node = node && typeof node === "object" ? (node as Record<string, unknown>)[k] : undefined;
  return node;
}

/** containerd 2.x built from the Go module proxy (cached by version; minutes the first time). */
export async function containerd2(): Promise<string> {
  const script = path.resolve(import.meta.dirname, "../../../scripts/build-containerd2.sh");
  const { stdout } = await run(script, [], { maxBuffer: 1 << 24 });
  return stdout.trim().split("\n").pop() as string;
}
