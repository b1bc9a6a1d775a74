// The local harness: a private containerd with the CRI plugin, the `cloudhv` runtime handler
// (and `runc` beside it), our shim and guest from this working tree, and test images in the
// k8s.io namespace: everything a CRI client (or a person with ctr) needs to run pods.
import { cp, mkdir, mkdtemp, readdir, rm } from "node:fs/promises";
import path from "node:path";
import { writeBridgeNetwork } from "./cni.js";
import { PrivateContainerd } from "./containerd.js";
import { CriClient } from "./cri/client.js";
import { stopShim } from "./leaks.js";
import { buildBusyboxImage, type ImageConfig, importOciArchive } from "./oci-image.js";
import { installRuntime, type RuntimeInstall } from "./runtime-install.js";

export const PAUSE_IMAGE = "docker.io/cloudhv-test/pause:1";
export const HANDLER = "cloudhv";

export interface Harness extends AsyncDisposable {
  dir: string;
  runtime: RuntimeInstall;
  containerd: PrivateContainerd;
  cri: CriClient;
  /** The CNI bridge on the host and its address (the pods' default gateway). */
  bridge: string;
  gateway: string;
  /** The bridge's IPv6 address, with `dualStack`. */
  gateway6?: string;
  stop(): Promise<void>;
}

export interface HarnessOptions {
  /** Parent of the harness directory (short: it holds unix sockets). */
  baseDir?: string;
  /** Busybox images to import besides the pause image, by name (each gets /etc/cloudhv-image). */
  images?: string[];
  runtimeConfig?: Record<string, unknown>;
  /** More TOML for containerd's config, after the harness's own (e.g. registry mirrors). */
  extraConfig?: readonly string[];
  /** A dual-stack CNI bridge (IPv4 and IPv6 ranges, both default routes). */
  dualStack?: boolean;
}

export async function startHarness(opts: HarnessOptions = {}): Promise<Harness> {
  const dir = await mkdtemp(path.join(opts.baseDir ?? "/run", "chv-h-"));
  let containerd: PrivateContainerd | undefined;
  try {
    const runtime = await installRuntime(dir, opts.runtimeConfig);
    await mkdir(path.join(dir, "cni"), { recursive: true });
    const network = await writeBridgeNetwork(path.join(dir, "cni"), dir, path.basename(dir), opts.dualStack);
    containerd = await PrivateContainerd.start({
      baseDir: dir,
      env: runtime.env,
      extraConfig: [
        `[plugins."io.containerd.grpc.v1.cri"]`,
        `  sandbox_image = "${PAUSE_IMAGE}"`,
        // Hosts that refuse negative oom_score_adj (some sandboxed CI VMs) make runc fail the
        // pause container (-998) with "can't get final child's PID from pipe: EOF"; clamp it
        // to containerd's own, as in a user namespace. No effect on cloudhv's VMs.
        `  restrict_oom_score_adj = true`,
        `  [plugins."io.containerd.grpc.v1.cri".cni]`,
        `    bin_dir = "/usr/lib/cni"`,
        `    conf_dir = "${dir}/cni"`,
        `  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]`,
        `    runtime_type = "io.containerd.runc.v2"`,
        `  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.${HANDLER}]`,
        `    runtime_type = "io.containerd.cloudhv.v1"`,
        // The CRI plugin passes a pod's annotations to the runtime only when listed here.
        `    pod_annotations = ["io.cloudhv.config.hypervisor.*", "io.katacontainers.config.hypervisor.*"]`,
        ...(opts.extraConfig ?? []),
      ].join("\n"),
    });
    const images: Array<{ name: string; config?: ImageConfig }> = [
      { name: PAUSE_IMAGE, config: { entrypoint: ["/bin/sleep", "2147483647"] } },
      ...(opts.images ?? []).map((name) => ({ name })),
    ];
    for (const [i, image] of images.entries()) {
      const built = await buildBusyboxImage({ archivePath: path.join(dir, `image-${i}.tar`), ...image });
      await importOciArchive(containerd, built.archivePath, { namespace: "k8s.io" });
      await rm(built.archivePath, { force: true });
    }
    const cri = new CriClient(containerd.address);
    const started = containerd;
    let stopped = false;
    const stop = async () => {
      if (stopped) return;
      stopped = true;
      // Pods a failed test or an interrupted benchmark left behind: StopPodSandbox is what
      // tears down their CNI netns and veth (containerd stopping does not), so remove them first.
      try {
        for (const pod of await cri.listPodSandbox()) {
          await cri.stopPodSandbox(pod.id).catch(() => {});
          await cri.removePodSandbox(pod.id).catch(() => {});
        }
      } catch {
        // containerd already gone: nothing to ask it
      }
      cri.close();
      // containerd's log goes with its directory.
      await keepLogs(dir, started.logPath);
      await started.stop();
      // The shim (front and daemon) of this containerd has nothing left to serve.
      await stopShim(started.ttrpcAddress);
      await network.remove();
      await keepLogs(dir, runtime.logDir, ...(await frontLogs(runtime.stateDir)));
      await rm(dir, { recursive: true, force: true });
    };
    return {
      dir,
      runtime,
      containerd: started,
      cri,
      bridge: network.bridge,
      gateway: network.gateway,
      ...(network.gateway6 ? { gateway6: network.gateway6 } : {}),
      stop,
      [Symbol.asyncDispose]: stop,
    };
  } catch (err) {
    await containerd?.stop();
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

/** The fronts' logs: <state_dir>/shim-<id>.log. */
async function frontLogs(stateDir: string): Promise<string[]> {
  const names = await readdir(stateDir).catch(() => [] as string[]);
  return names.filter((n) => n.endsWith(".log")).map((n) => path.join(stateDir, n));
}

/**
 * With CLOUDHV_E2E_KEEP_LOGS (debug level logs)=<dir>, the daemon's and containerd's logs of each harness are
 * copied to <dir>/<harness dir name> before the harness's files are removed: a failure seen
 * once can be read afterwards.
 */
async function keepLogs(harnessDir: string, ...logs: string[]): Promise<void> {
  const keep = process.env.CLOUDHV_E2E_KEEP_LOGS;
  if (!keep) return;
  const to = path.join(keep, path.basename(harnessDir));
  await mkdir(to, { recursive: true });
  for (const log of logs)
    await cp(log, path.join(to, path.basename(log)), { recursive: true }).catch(() => {});
}
