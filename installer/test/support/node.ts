// A pretend node for the installer's tests: a host root directory (etc/containerd, opt, usr)
// and a real containerd that sees that root's /opt, /etc/containerd and /usr/local/bin as its own, through a
// private mount namespace, so the host paths the installer writes (/opt/cloudhv/bin/…,
// imports = ["/etc/containerd/conf.d/…"]) are exactly what containerd and the shim resolve.
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { guestArtifacts } from "@cloudhv/e2e/dist/src/artifacts.js";
import { PrivateContainerd } from "@cloudhv/e2e/dist/src/containerd.js";
import { processesMatching } from "@cloudhv/e2e/dist/src/leaks.js";
import { assembleBundle } from "../../src/bundle.js";

export const INSTALLER = path.resolve(import.meta.dirname, "../../src/bin/installer.js");

/** One bundle per test process (node + shim + guest: ~110 MB, a few seconds). */
let bundle: Promise<string> | undefined;
export function testBundle(): Promise<string> {
  bundle ??= (async () => {
    const out = await mkdtemp("/var/tmp/chv-bundle-");
    const { kernelPath, rootfsPath } = guestArtifacts();
    await assembleBundle({ out, kernel: kernelPath, rootfs: rootfsPath });
    process.once("exit", () => {
      // Synchronous on exit: best effort.
      import("node:fs").then((fs) => fs.rmSync(out, { recursive: true, force: true }));
    });
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
 * The runtime config the tests install: QEMU (no KVM here), and state under the pretend root's
 * /opt/node-state (the one other node directory containerd's namespace sees as the root's).
 */
export const TEST_STATE = "/opt/node-state";
export function testRuntimeConfig(): Record<string, unknown> {
  return {
    hypervisor: "qemu",
    state_dir: `${TEST_STATE}/cloudhv`,
    cache_dir: `${TEST_STATE}/cloudhv-cache/cache`,
    scratch_dir: `${TEST_STATE}/cloudhv-cache/scratch`,
    scratch_disk_bytes: 1024 ** 3,
  };
}
