#!/usr/bin/env node
// cloudhv-installer: the DaemonSet entrypoint. Structured (pino) logs on stdout, one line per
// step; a failure is one error line naming what was wrong and exit status 1.
import { readFile, writeFile } from "node:fs/promises";
import { Command, InvalidArgumentError, Option } from "commander";
import { pino } from "pino";
import type { ConfigVersion } from "../containerd-config.js";
import { detectTarget } from "../containerd-target.js";
import { exists } from "../fsutil.js";
import { type CommonOptions, install, status, uninstall } from "../install.js";
import { kubeLabeler } from "../node-label.js";
import { DEFAULT_ARTIFACTS, DEFAULT_HOST_ROOT, HostRoot } from "../paths.js";
import { systemdRestarter } from "../restart.js";
import { waitForDaemonSet } from "../wait-daemonset.js";

const log = pino({ base: { app: "cloudhv-installer" }, timestamp: pino.stdTimeFunctions.isoTime });

interface Flags {
  hostRoot: string;
  restart: "auto" | "none";
  containerdConfig?: string;
  configVersion?: ConfigVersion;
  containerdAddress?: string;
  nodeName?: string;
  healthTimeout: number;
}

function seconds(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError("must be a positive number of seconds");
  return n;
}

function common(cmd: Command): Command {
  return cmd
    .option("--host-root <dir>", "where the node's root filesystem is mounted", DEFAULT_HOST_ROOT)
    .addOption(
      new Option(
        "--restart <mode>",
        "restart containerd and wait for it (auto), or leave that to someone else (none)",
      )
        .choices(["auto", "none"])
        .default("auto"),
    )
    .option("--containerd-config <path>", "containerd's config file, as a host path (default: detected)")
    .addOption(
      new Option(
        "--config-version <n>",
        "containerd config format when it cannot be detected: 2 (containerd 1.x), 3 (2.x)",
      )
        .choices(["1", "2", "3"])
        .argParser((v) => Number(v) as ConfigVersion),
    )
    .option(
      "--containerd-address <socket>",
      "containerd's socket as seen from here (default: from its config, under the host root)",
    )
    .option("--node-name <name>", "Kubernetes node to label (default: $NODE_NAME)", process.env.NODE_NAME)
    .option("--health-timeout <seconds>", "how long containerd may take to come back", seconds, 60);
}

async function commonOptions(flags: Flags): Promise<CommonOptions> {
  const root = new HostRoot(flags.hostRoot);
  if (!(await exists(root.root))) throw new Error(`host root ${root.root} does not exist (--host-root)`);
  let restarter: CommonOptions["restarter"];
  if (flags.restart === "auto") {
    const target = await detectTarget(root, {
      configPath: flags.containerdConfig,
      version: flags.configVersion,
    });
    restarter = await systemdRestarter(target.services);
  }
  return {
    root,
    log,
    restarter,
    containerdAddress: flags.containerdAddress,
    nodeName: flags.nodeName || undefined,
    labeler: flags.nodeName ? kubeLabeler() : undefined,
    healthTimeoutMs: flags.healthTimeout * 1000,
    containerdConfig: flags.containerdConfig,
    configVersion: flags.configVersion,
  };
}

async function readRuntimeConfig(file: string | undefined): Promise<Record<string, unknown>> {
  if (!file) return {};
  let doc: unknown;
  try {
    doc = JSON.parse(await readFile(file, "utf8"));
  } catch (err) {
    throw new Error(`--runtime-config ${file}: ${(err as Error).message}`);
  }
  if (doc === null || typeof doc !== "object" || Array.isArray(doc))
    throw new Error(`--runtime-config ${file}: must be a JSON object`);
  return doc as Record<string, unknown>;
}

/** Keeps the DaemonSet pod alive (and ready) after the work is done, until it is told to stop. */
async function stay(readyFile: string | undefined): Promise<void> {
  if (readyFile) await writeFile(readyFile, `${new Date().toISOString()}\n`);
  log.info({ readyFile }, "done; staying up until stopped (stopping does not uninstall)");
  await new Promise<void>((resolve) => {
    process.once("SIGTERM", resolve);
    process.once("SIGINT", resolve);
  });
}

function fail(err: unknown): never {
  log.error({ err: (err as Error).message }, "failed");
  log.flush?.();
  process.exit(1);
}

const program = new Command()
  .name("cloudhv-installer")
  .description(
    "Installs the cloudhv runtime (io.containerd.cloudhv.v1) on a node: copies the shim, kernel and rootfs into /opt/cloudhv, registers the `cloudhv` handler with containerd, restarts it and labels the node cloudhv.io/runtime=ready. Every path is a host path, reached under --host-root.",
  )
  .addHelpText(
    "after",
    `
Examples:
  cloudhv-installer install --host-root /host                   what the DaemonSet runs
  cloudhv-installer status --host-root /                        on the node itself
  cloudhv-installer uninstall --host-root /host --restart none  leave the containerd restart to you

Logs are JSON lines on stdout. More: docs/operations.md.`,
  )
  .showHelpAfterError();

common(program.command("install"))
  .description(
    "install or upgrade (install twice = install once); rolls containerd's config back if it does not come up",
  )
  .option("--artifacts <dir>", "the artifact bundle to install", DEFAULT_ARTIFACTS)
  .option("--runtime-config <file>", "JSON with runtime config values for /opt/cloudhv/config.json")
  .option("--ready-file <file>", "written when the install is done (the DaemonSet's readiness probe)")
  .option("--stay", "keep running after installing, until SIGTERM (DaemonSet mode)")
  .action(
    async (
      flags: Flags & { artifacts: string; runtimeConfig?: string; readyFile?: string; stay?: boolean },
    ) => {
      try {
        const opts = await commonOptions(flags);
        await install({
          ...opts,
          artifacts: flags.artifacts,
          runtimeConfig: await readRuntimeConfig(flags.runtimeConfig),
        });
      } catch (err) {
        fail(err);
      }
      if (flags.stay) await stay(flags.readyFile);
      else if (flags.readyFile) await writeFile(flags.readyFile, `${new Date().toISOString()}\n`);
    },
  );

common(program.command("uninstall"))
  .description(
    "remove the node label, restore containerd's config, restart it, remove /opt/cloudhv and the cache",
  )
  .option("--keep-cache", "keep the shim's image cache (/var/lib/cloudhv)")
  .option("--ready-file <file>", "written when the uninstall is done")
  .option("--stay", "keep running after uninstalling, until SIGTERM (cleanup DaemonSet mode)")
  .action(async (flags: Flags & { keepCache?: boolean; readyFile?: string; stay?: boolean }) => {
    try {
      await uninstall({ ...(await commonOptions(flags)), purgeCache: !flags.keepCache });
    } catch (err) {
      fail(err);
    }
    if (flags.stay) await stay(flags.readyFile);
    else if (flags.readyFile) await writeFile(flags.readyFile, `${new Date().toISOString()}\n`);
  });

common(program.command("status"))
  .description(
    "what is installed and whether containerd serves the handler; exit status 0 only when all is well",
  )
  .option("--json", "print the report as JSON")
  .action(async (flags: Flags & { json?: boolean }) => {
    try {
      const report = await status(await commonOptions({ ...flags, restart: "none" }));
      if (flags.json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
      else {
        const lines = [
          `installed:    ${report.installed ? "yes" : "no"}`,
          `version:      ${report.version ?? "-"} (previous: ${report.previous ?? "-"})`,
          `containerd:   ${report.flavor ?? "-"}; config files ${report.configFiles.map((f) => `${f.path}${f.intact ? "" : " (changed since)"}`).join(", ") || "-"}`,
          `handler live: ${report.handlerLive === undefined ? "unknown (containerd did not answer)" : report.handlerLive ? "yes" : "no"}`,
          ...report.problems.map((p) => `problem:      ${p}`),
        ];
        process.stdout.write(`${lines.join("\n")}\n`);
      }
      process.exitCode = report.installed ? 0 : 1;
    } catch (err) {
      fail(err);
    }
  });

program
  .command("wait-daemonset")
  .description("wait until every pod of a DaemonSet is ready (the helm uninstall hook waits for the cleanup)")
  .requiredOption("--namespace <ns>", "the DaemonSet's namespace")
  .requiredOption("--name <name>", "the DaemonSet's name")
  .option("--timeout <seconds>", "give up after this long", seconds, 600)
  .action(async (flags: { namespace: string; name: string; timeout: number }) => {
    try {
      await waitForDaemonSet(flags.namespace, flags.name, flags.timeout * 1000, log);
    } catch (err) {
      fail(err);
    }
  });

await program.parseAsync();
