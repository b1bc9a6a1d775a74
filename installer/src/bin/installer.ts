#!/usr/bin/env node
// cloudhv-installer: the DaemonSet entrypoint. Structured (pino) logs on stdout, one line per
// step; a failure is one error line naming what was wrong and the fix, and an exit status from
// exit-codes.ts (installer/README.md lists them).
import { readFile } from "node:fs/promises";
import { Command, CommanderError, InvalidArgumentError, Option } from "commander";
import { pino } from "pino";
import type { ConfigVersion } from "../containerd-config.js";
import { detectTarget } from "../containerd-target.js";
import { EXIT, EXIT_MEANINGS, exitCodeFor } from "../exit-codes.js";
import { exists } from "../fsutil.js";
import { type CommonOptions, install, readState, status, uninstall } from "../install.js";
import { kubeNodeEvents, podNamespace } from "../kube.js";
import { kubeLabeler } from "../node-label.js";
import { DEFAULT_ARTIFACTS, DEFAULT_HOST_ROOT, HostRoot } from "../paths.js";
import { chooseRestart, RESTART_MODES, type RestartMode } from "../restart.js";
import { deleteDaemonSetAndWait, waitForDaemonSet } from "../wait-daemonset.js";
import { idle, setReady, watchNode } from "../watch.js";

const log = pino({ base: { app: "cloudhv-installer" }, timestamp: pino.stdTimeFunctions.isoTime });

interface Flags {
  hostRoot: string;
  restart: RestartMode;
  containerdConfig?: string;
  configVersion?: ConfigVersion;
  containerdAddress?: string;
  containerdPidfile?: string;
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
        "how containerd is restarted: auto (systemd, signal or none, whichever fits the node), systemd (systemctl in the host's namespaces), signal (SIGTERM; its supervisor starts it again), none (the admin restarts it; install waits for that)",
      )
        .choices(RESTART_MODES)
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
    .option(
      "--containerd-pidfile <path>",
      "host path of a file with containerd's pid, for --restart signal (default: found in /proc)",
    )
    .option("--node-name <name>", "Kubernetes node to label (default: $NODE_NAME)", process.env.NODE_NAME)
    .option("--health-timeout <seconds>", "how long containerd may take to come back", seconds, 60);
}

async function commonOptions(flags: Flags, job: "install" | "uninstall" | "status"): Promise<CommonOptions> {
  const root = new HostRoot(flags.hostRoot);
  if (!(await exists(root.root)))
    throw Object.assign(new Error(`host root ${root.root} does not exist (--host-root)`), {
      exitCode: EXIT.HOST,
    });
  let restarter: CommonOptions["restarter"];
  let restartWhy: string | undefined;
  if (flags.restart !== "none" && job !== "status") {
    const state = job === "uninstall" ? await readState(root).catch(() => undefined) : undefined;
    const target = await detectTarget(root, {
      configPath: flags.containerdConfig,
      version: flags.configVersion ?? state?.configVersion,
    }).catch((err: Error) => {
      // Uninstall of a node without a config to look at has nothing to restart for.
      if (job === "install") throw err;
      return undefined;
    });
    if (target) {
      const choice = await chooseRestart(flags.restart, target, { root, pidFile: flags.containerdPidfile });
      restarter = choice.restarter;
      restartWhy = `${choice.mode}: ${choice.why}`;
      log.info({ restart: choice.mode, why: choice.why, how: choice.restarter?.describe }, "restart mode");
    }
  }
  const nodeName = flags.nodeName || undefined;
  return {
    root,
    log,
    restarter,
    restartWhy,
    containerdAddress: flags.containerdAddress,
    nodeName,
    labeler: nodeName ? kubeLabeler() : undefined,
    events: nodeName && process.env.KUBERNETES_SERVICE_HOST ? kubeNodeEvents(podNamespace()) : undefined,
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
    throw Object.assign(new Error(`--runtime-config ${file}: ${(err as Error).message}`), {
      exitCode: EXIT.INVALID_INPUT,
    });
  }
  if (doc === null || typeof doc !== "object" || Array.isArray(doc))
    throw Object.assign(new Error(`--runtime-config ${file}: must be a JSON object`), {
      exitCode: EXIT.INVALID_INPUT,
    });
  return doc as Record<string, unknown>;
}

/** Aborted on SIGTERM / SIGINT (the pod stopping); registered first, so a signal never kills a run halfway. */
function stopSignal(): AbortSignal {
  const ac = new AbortController();
  const stop = (sig: string) => {
    log.info({ signal: sig }, "stopping");
    ac.abort();
  };
  process.once("SIGTERM", () => stop("SIGTERM"));
  process.once("SIGINT", () => stop("SIGINT"));
  return ac.signal;
}

function fail(err: unknown): never {
  const code = exitCodeFor(err);
  log.error({ err: (err as Error).message, exitCode: code, meaning: EXIT_MEANINGS[code] }, "failed");
  log.flush?.();
  process.exit(code);
}

const program = new Command()
  .name("cloudhv-installer")
  .description(
    "Installs the cloudhv runtime (io.containerd.cloudhv.v1) on a node: copies the shim, kernel and rootfs into /opt/cloudhv, registers the `cloudhv` handler with containerd, restarts it and labels the node cloudhv.io/runtime=ready. Every path is a host path, reached under --host-root.",
  )
  .exitOverride()
  .addHelpText(
    "after",
    `
Examples:
  cloudhv-installer install --host-root /host                   what the DaemonSet runs
  cloudhv-installer status --host-root /                        on the node itself
  cloudhv-installer uninstall --host-root /host --restart none  leave the containerd restart to you

Exit status:
${Object.entries(EXIT_MEANINGS)
  .map(([code, meaning]) => `  ${code.padStart(2)}  ${meaning}`)
  .join("\n")}

Logs are JSON lines on stdout. More: docs/operations.md.`,
  )
  .showHelpAfterError();

common(program.command("install"))
  .description(
    "install or upgrade (install twice = install once); checks everything first, and takes everything back if containerd does not come up",
  )
  .option("--artifacts <dir>", "the artifact bundle to install", DEFAULT_ARTIFACTS)
  .option("--runtime-config <file>", "JSON with runtime config values for /opt/cloudhv/config.json")
  .option(
    "--take-over-runtime",
    'replace a "cloudhv" runtime someone else defined in containerd\'s config (default: refuse)',
  )
  .option("--skip-host-tools-check", "install even if QEMU, mkfs.erofs, ip, … are missing on the node")
  .option(
    "--ready-file <file>",
    "written while containerd serves the handler (the DaemonSet's readiness probe)",
  )
  .option(
    "--stay",
    "keep running after installing, until SIGTERM (DaemonSet mode): label the node and turn ready once containerd serves the handler",
  )
  .option(
    "--watch-interval <seconds>",
    "with --stay: how often containerd's CRI Status is polled",
    seconds,
    5,
  )
  .action(
    async (
      flags: Flags & {
        artifacts: string;
        runtimeConfig?: string;
        readyFile?: string;
        stay?: boolean;
        takeOverRuntime?: boolean;
        skipHostToolsCheck?: boolean;
        watchInterval: number;
      },
    ) => {
      const signal = stopSignal();
      let opts: CommonOptions;
      let result: Awaited<ReturnType<typeof install>>;
      try {
        opts = await commonOptions(flags, "install");
        result = await install({
          ...opts,
          artifacts: flags.artifacts,
          runtimeConfig: await readRuntimeConfig(flags.runtimeConfig),
          takeOverRuntime: flags.takeOverRuntime === true,
          checkHostTools: flags.skipHostToolsCheck !== true,
          labelLater: flags.stay === true,
        });
      } catch (err) {
        if (flags.stay && exitCodeFor(err) === EXIT.UNINSTALL_IN_PROGRESS) {
          log.info(
            { reason: (err as Error).message },
            "not installing; idle (not ready) until this pod is deleted",
          );
          await setReady(flags.readyFile, false);
          await idle(signal);
          return;
        }
        fail(err);
      }
      if (flags.stay) {
        const end = await watchNode({
          root: opts.root,
          log,
          address: opts.containerdAddress ?? opts.root.path(result.target.address),
          nodeName: opts.nodeName,
          labeler: opts.labeler,
          readyFile: flags.readyFile,
          live: result.live,
          labeled: result.labeled,
          pollMs: flags.watchInterval * 1000,
          signal,
        });
        if (end === "uninstalling") await idle(signal);
        log.info("stopped; cloudhv stays installed (only uninstall removes it)");
        return;
      }
      await setReady(flags.readyFile, result.live);
    },
  );

common(program.command("uninstall"))
  .description(
    "remove the node label, restore containerd's config, restart it, remove what the installer created (/opt/cloudhv, the shim's directories)",
  )
  .option("--keep-cache", "keep the shim's image cache (cache_dir)")
  .option("--ready-file <file>", "written when the uninstall is done")
  .option("--stay", "keep running after uninstalling, until SIGTERM (cleanup DaemonSet mode)")
  .action(async (flags: Flags & { keepCache?: boolean; readyFile?: string; stay?: boolean }) => {
    const signal = stopSignal();
    try {
      await uninstall({ ...(await commonOptions(flags, "uninstall")), purgeCache: !flags.keepCache });
    } catch (err) {
      fail(err);
    }
    await setReady(flags.readyFile, true);
    if (flags.stay) {
      log.info({ readyFile: flags.readyFile }, "done; staying up until stopped");
      await idle(signal);
    }
  });

common(program.command("status"))
  .description(
    `what is installed, what containerd loads and whether it serves the handler; exit status 0 only when all is well, ${EXIT.NOT_READY} otherwise`,
  )
  .option("--json", "print the report as JSON")
  .action(async (flags: Flags & { json?: boolean }) => {
    try {
      const report = await status(await commonOptions({ ...flags, restart: "none" }, "status"));
      if (flags.json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
      else {
        const c = report.containerd;
        const lines = [
          `installed:    ${report.installed ? "yes" : "no"}`,
          `version:      ${report.version ?? "-"} (previous: ${report.previous ?? "-"})`,
          `containerd:   ${report.flavor ?? "-"}; config files ${report.configFiles.map((f) => `${f.path}${f.intact ? "" : " (changed since)"}`).join(", ") || "-"}`,
          `loads:        ${c.files.join(", ") || "-"}; cloudhv runtime ${c.runtime === "absent" ? "absent" : `${c.runtime === "ours" ? "the installer's" : "someone else's"}, from ${c.runtimeFrom}`}${c.templateHasRuntime === undefined ? "" : `; template ${c.templateHasRuntime ? "has" : "lacks"} it`}`,
          `handler live: ${report.handlerLive === undefined ? "unknown (containerd did not answer)" : report.handlerLive ? "yes" : "no"}`,
          `cloudhv cmd:  ${report.cli ?? "-"}`,
          ...report.problems.map((p) => `problem:      ${p}`),
        ];
        process.stdout.write(`${lines.join("\n")}\n`);
      }
      process.exitCode = report.installed ? EXIT.OK : EXIT.NOT_READY;
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

program
  .command("delete-daemonset")
  .description(
    "delete a DaemonSet and wait until its pods are gone (the helm uninstall hook stops the installers first)",
  )
  .requiredOption("--namespace <ns>", "the DaemonSet's namespace")
  .requiredOption("--name <name>", "the DaemonSet's name")
  .requiredOption("--selector <labels>", "label selector of its pods (k=v,k=v)")
  .option("--timeout <seconds>", "give up after this long", seconds, 120)
  .action(async (flags: { namespace: string; name: string; selector: string; timeout: number }) => {
    try {
      await deleteDaemonSetAndWait(flags.namespace, flags.name, flags.selector, flags.timeout * 1000, log);
    } catch (err) {
      fail(err);
    }
  });

try {
  await program.parseAsync();
} catch (err) {
  if (err instanceof CommanderError) process.exit(err.exitCode === 0 ? EXIT.OK : EXIT.USAGE);
  fail(err);
}
