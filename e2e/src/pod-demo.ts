// The main job's second half: a pod, created through CRI the way kubelet does it, on a private
// containerd whose `cloudhv` handler runs it in a microVM; prints what the pod printed.
import { mkdir, readFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { PodSandboxConfig } from "./cri/client.js";
import { HANDLER, startHarness } from "./harness.js";

export const DEMO_IMAGE = "docker.io/cloudhv-test/busybox:demo";

export interface PodRunReport {
  handler: string;
  image: string;
  command: string[];
  /** The container's log (CRI format stripped to the text). */
  output: string;
  exitCode: number;
  /** RunPodSandbox → container exited, milliseconds. */
  wallMs: number;
}

export async function runPodInMicroVm(command: string[]): Promise<PodRunReport> {
  await using harness = await startHarness({ images: [DEMO_IMAGE] });
  const { cri } = harness;
  const logDirectory = path.join(harness.dir, "pods", "demo");
  await mkdir(logDirectory, { recursive: true });
  const sandbox: PodSandboxConfig = {
    metadata: { name: "demo", uid: "demo-uid", namespace: "default" },
    hostname: "demo",
    logDirectory,
  };
  const started = performance.now();
  const podId = await cri.runPodSandbox(sandbox, HANDLER);
  try {
    const id = await cri.createContainer(
      podId,
      { metadata: { name: "hello" }, image: { image: DEMO_IMAGE }, command, logPath: "hello.log" },
      sandbox,
    );
    await cri.startContainer(id);
    let status = await cri.containerStatus(id);
    while (status.state !== "CONTAINER_EXITED") {
      await sleep(100);
      status = await cri.containerStatus(id);
    }
    const wallMs = performance.now() - started;
    const log = await readFile(path.join(logDirectory, "hello.log"), "utf8");
    // "<time> <stream> <F|P> <text>" → text
    const output = log.replace(/^\S+ (stdout|stderr) [FP] /gm, "");
    await cri.removeContainer(id);
    return { handler: HANDLER, image: DEMO_IMAGE, command, output, exitCode: status.exitCode, wallMs };
  } finally {
    await cri.stopPodSandbox(podId);
    await cri.removePodSandbox(podId);
  }
}
