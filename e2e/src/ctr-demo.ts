// The main job's second half: a private containerd runs one container in a microVM through
// our shim (`ctr run --runtime io.containerd.cloudhv.v1`), like a user would.
import { mkdtemp, rm } from "node:fs/promises";
import path from "node:path";
import { exec } from "@cloudhv/shim";
import { PrivateContainerd } from "./containerd.js";
import { processesMatching } from "./leaks.js";
import { BUSYBOX_IMAGE, buildBusyboxImage, importOciArchive } from "./oci-image.js";
import { installRuntime } from "./runtime-install.js";

export interface CtrRunReport {
  image: string;
  command: string[];
  stdout: string;
  stderr: string;
  exitCode: number | null;
  /** `ctr run` start → exit, milliseconds (VM boot, rootfs, container, teardown). */
  wallMs: number;
}

export async function runContainerInMicroVm(command: string[]): Promise<CtrRunReport> {
  const dir = await mkdtemp(path.join("/run", "cloudhv-demo-"));
  let containerd: PrivateContainerd | undefined;
  try {
    const runtime = await installRuntime(dir);
    containerd = await PrivateContainerd.start({ baseDir: dir, env: runtime.env });
    const image = await buildBusyboxImage({ archivePath: path.join(dir, "busybox.tar") });
    await importOciArchive(containerd, image.archivePath);
    const started = performance.now();
    const result = await exec(
      [
        "ctr",
        "--address",
        containerd.address,
        "run",
        "--rm",
        "--runtime",
        "io.containerd.cloudhv.v1",
        BUSYBOX_IMAGE,
        "demo",
        ...command,
      ],
      { timeoutMs: 180_000 },
    );
    return {
      image: BUSYBOX_IMAGE,
      command,
      stdout: result.stdout,
      stderr: result.stderr,
      exitCode: result.code,
      wallMs: performance.now() - started,
    };
  } finally {
    await containerd?.stop();
    // The shim daemon serving this containerd has nothing left to do.
    if (containerd)
      for (const pid of await processesMatching(containerd.ttrpcAddress)) process.kill(pid, "SIGTERM");
    await rm(dir, { recursive: true, force: true });
  }
}
