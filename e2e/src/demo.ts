#!/usr/bin/env node
// The README's main job: boot a cloudhv microVM under QEMU, ask its agent for health and
// version, print them with the boot time, and shut the VM down leaving nothing behind.
import { Command, InvalidArgumentError } from "commander";
import { bootAndProbe } from "./boot.js";
import { runPodInMicroVm } from "./pod-demo.js";

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0)
    throw new InvalidArgumentError(`expected a positive integer, got "${value}"`);
  return n;
}

interface DemoOptions {
  kernel?: string;
  rootfs?: string;
  vcpus: number;
  memory: number;
  json?: boolean;
  pod: boolean;
}

const program = new Command()
  .name("cloudhv-demo")
  .description(
    "Boot a cloudhv microVM and call its guest agent (boot time), then run a pod through CRI on a private containerd with the cloudhv handler.",
  )
  .option("--kernel <path>", "guest kernel (default: build/guest/vmlinux or $CLOUDHV_KERNEL)")
  .option("--rootfs <path>", "guest rootfs image (default: build/guest/rootfs.erofs or $CLOUDHV_ROOTFS)")
  .option("--vcpus <n>", "guest vCPUs", positiveInt, 1)
  .option("--memory <MiB>", "guest memory in MiB", positiveInt, 256)
  .option("--json", "print the report as JSON")
  .option("--no-pod", "only boot a VM; skip running a pod through containerd")
  .action(async (opts: DemoOptions) => {
    const report = await bootAndProbe({
      ...(opts.kernel ? { kernelPath: opts.kernel } : {}),
      ...(opts.rootfs ? { rootfsPath: opts.rootfs } : {}),
      vcpus: opts.vcpus,
      memoryMb: opts.memory,
    });
    const container = opts.pod
      ? await runPodInMicroVm([
          "sh",
          "-c",
          "echo hello from a pod in a microVM: $(uname -sr), $(nproc) vCPU; exit 7",
        ])
      : undefined;
    if (opts.json) {
      console.log(JSON.stringify({ boot: report, container }, null, 2));
      return;
    }
    console.log(`accelerator:    ${report.accel.accel} (${report.accel.reason})`);
    console.log(
      `agent health:   ${report.health.status} (guest uptime ${(report.health.uptimeNs / 1e6).toFixed(0)} ms)`,
    );
    console.log(
      `agent version:  cloudhv-agent ${report.version.agentVersion}, protocol ${report.version.protocolVersion}, ` +
        `kernel ${report.version.kernelRelease}, ${report.version.runtimeVersion || "no crun"}`,
    );
    console.log(`boot time:      ${report.bootMs.toFixed(0)} ms (QEMU start → agent health reply)`);
    console.log("VM stopped; nothing left behind.");
    if (container) {
      console.log(
        `\nCRI → containerd → containerd-shim-cloudhv-v1 → microVM → crun (handler "${container.handler}"):`,
      );
      console.log(`  pod "demo", container "hello" (${container.image}): ${container.command.join(" ")}`);
      process.stdout.write(container.output.replace(/^(?=.)/gm, "  | "));
      console.log(`exit code:      ${container.exitCode} (the container's own)`);
      console.log(`pod run took:   ${container.wallMs.toFixed(0)} ms (RunPodSandbox → container exited)`);
    }
  });

program.parseAsync().catch((err: unknown) => {
  console.error(`cloudhv-demo: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
