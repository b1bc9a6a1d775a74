#!/usr/bin/env node
// The README's main job: boot a cloudhv microVM under QEMU, ask its agent for health and
// version, print them with the boot time, and shut the VM down leaving nothing behind.
import { Command, InvalidArgumentError } from "commander";
import { bootAndProbe } from "./boot.js";
import { runContainerInMicroVm } from "./ctr-demo.js";

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
  container: boolean;
}

const program = new Command()
  .name("cloudhv-demo")
  .description(
    "Boot a cloudhv microVM and call its guest agent (boot time), then run a container in a microVM through a private containerd and our shim.",
  )
  .option("--kernel <path>", "guest kernel (default: build/guest/vmlinux or $CLOUDHV_KERNEL)")
  .option("--rootfs <path>", "guest rootfs image (default: build/guest/rootfs.erofs or $CLOUDHV_ROOTFS)")
  .option("--vcpus <n>", "guest vCPUs", positiveInt, 1)
  .option("--memory <MiB>", "guest memory in MiB", positiveInt, 256)
  .option("--json", "print the report as JSON")
  .option("--no-container", "only boot a VM; skip running a container through containerd")
  .action(async (opts: DemoOptions) => {
    const report = await bootAndProbe({
      ...(opts.kernel ? { kernelPath: opts.kernel } : {}),
      ...(opts.rootfs ? { rootfsPath: opts.rootfs } : {}),
      vcpus: opts.vcpus,
      memoryMb: opts.memory,
    });
    const container = opts.container
      ? await runContainerInMicroVm([
          "sh",
          "-c",
          "echo hello from a microVM: $(uname -sr), $(nproc) vCPU; exit 7",
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
      console.log(`\ncontainerd → containerd-shim-cloudhv-v1 → microVM → crun:`);
      console.log(
        `  ctr run --runtime io.containerd.cloudhv.v1 ${container.image} demo ${container.command.join(" ")}`,
      );
      process.stdout.write(container.stdout.replace(/^(?=.)/gm, "  | "));
      if (container.stderr) process.stdout.write(container.stderr.replace(/^(?=.)/gm, "  ! "));
      console.log(`exit code:      ${container.exitCode} (the container's own)`);
      console.log(
        `ctr run took:   ${container.wallMs.toFixed(0)} ms end to end (VM boot, rootfs, container, teardown)`,
      );
    }
  });

program.parseAsync().catch((err: unknown) => {
  console.error(`cloudhv-demo: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
