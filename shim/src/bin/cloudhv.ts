#!/usr/bin/env node
// cloudhv: the operator's tool. `cloudhv doctor` checks a node (see doctor/doctor.ts); exit
// code 1 when a check fails (warnings do not).
import { Command } from "commander";
import { DEFAULT_CONFIG_PATH } from "../config.js";
import { doctor, render } from "../doctor.js";

const program = new Command()
  .name("cloudhv")
  .description("cloudhv: pods in microVMs (Cloud Hypervisor, QEMU) for containerd");

program
  .command("doctor")
  .description("check that this node can run cloudhv pods; exit 1 if a check fails")
  .option("--config <path>", `runtime config (default: $CLOUDHV_CONFIG, else ${DEFAULT_CONFIG_PATH})`)
  .option(
    "--containerd-config <path>",
    "containerd's config (default: containerd's own, /etc/containerd/config.toml)",
  )
  .option("--json", "print the checks as JSON")
  .action(async (opts: { config?: string; containerdConfig?: string; json?: boolean }) => {
    const checks = await doctor({
      ...(opts.config ? { config: opts.config } : {}),
      ...(opts.containerdConfig ? { containerdConfig: opts.containerdConfig } : {}),
    });
    const ok = !checks.some((c) => c.status === "fail");
    process.stdout.write(opts.json ? `${JSON.stringify({ ok, checks }, null, 2)}\n` : render(checks));
    process.exitCode = ok ? 0 : 1;
  });

await program.parseAsync(process.argv);
