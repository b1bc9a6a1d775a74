// Restarting the node's containerd, and knowing it came back. "Came back" means the CRI plugin
// answers Status with RuntimeReady and lists the handlers we expect.
//
// How to restart depends on who runs containerd (`--restart`):
//   systemd  `systemctl restart <unit>` in the host's namespaces (nsenter into PID 1, which
//            needs hostPID); the unit is containerd's own, or k3s/k3s-agent/rke2-server/rke2-agent
//   signal   SIGTERM to the containerd process (its pid from --containerd-pidfile, or found in
//            /proc); whatever supervises it (runit, s6, OpenRC's supervise-daemon, supervisord, a
//            shell loop) must start it again: the installer only waits for that
//   none     nothing: the admin restarts containerd; the installer waits for the handler
//   auto     the first that fits: systemd when the host runs systemd and containerd runs in a
//            systemd unit (its cgroup says which); signal when containerd's parent is a known
//            supervisor; none otherwise (and the log says why). It never guesses: nsenter is
//            not even tried on a host that does not run systemd.
import { execFile } from "node:child_process";
import { readdir, readFile, readlink } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import type { ContainerdTarget } from "./containerd-target.js";
import { DEFAULT_CONFIG } from "./containerd-target.js";
import { CriError, type CriStatus, criStatus } from "./cri-status.js";
import { EXIT, type ExitCode } from "./exit-codes.js";
import { exists } from "./fsutil.js";
import { HANDLER, type HostRoot, RUNTIME_TYPE } from "./paths.js";

export const RESTART_MODES = ["auto", "systemd", "signal", "none"] as const;
export type RestartMode = (typeof RESTART_MODES)[number];

export interface Restarter {
  /** For logs: what restarting means here ("systemctl restart containerd"). */
  readonly describe: string;
  /** Said when containerd does not come back after restart(): who was supposed to start it. */
  readonly hint?: string;
  /** Throws RestartError; its `stopped` says whether containerd may have been stopped. */
  restart(): Promise<void>;
}

export class RestartError extends Error {
  override readonly name = "RestartError";
  readonly exitCode: ExitCode = EXIT.RESTART_FAILED;
  constructor(
    message: string,
    /** false: containerd was certainly not touched (the restart could not even start). */
    readonly stopped: boolean,
  ) {
    super(message);
  }
}

const run = promisify(execFile);
const HOST = ["nsenter", "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--"];

function hostCommand(args: string[], timeout = 120_000) {
  return run(HOST[0] as string, [...HOST.slice(1), ...args], { timeout });
}

/** A restart through one systemd unit, in the host's namespaces. */
export function systemdUnitRestarter(unit: string): Restarter {
  return {
    describe: `systemctl restart ${unit} (in the host's namespaces)`,
    hint: `systemd did not start ${unit} again (see journalctl -u ${unit} on the node)`,
    async restart() {
      try {
        await hostCommand(["systemctl", "restart", unit]);
      } catch (err) {
        const e = err as { stderr?: string; message: string };
        const why = (e.stderr || e.message).trim();
        // nsenter failing means systemctl never ran: containerd was not touched.
        const notRun = /^nsenter:/m.test(why) || (err as NodeJS.ErrnoException).code === "ENOENT";
        throw new RestartError(
          `systemctl restart ${unit} failed: ${why}${notRun ? " (systemctl did not run: containerd was not restarted)" : ""}`,
          !notRun,
        );
      }
    },
  };
}

/** systemd on the host: the first of `services` that is active (k3s vs k3s-agent) is restarted. */
export async function systemdRestarter(services: readonly string[]): Promise<Restarter> {
  let unit = services[0] as string;
  for (const candidate of services) {
    const active = await hostCommand(["systemctl", "is-active", "--quiet", candidate], 30_000).then(
      () => true,
      () => false,
    );
    if (active) {
      unit = candidate;
      break;
    }
  }
  return systemdUnitRestarter(unit);
}

// ---- /proc: the host's processes (the pod has hostPID) --------------------------------------

export interface ProcInfo {
  pid: number;
  comm: string;
  argv: string[];
  ppid: number;
  /** Field 22 of stat: tells a reused pid from the same process. */
  startTime: string;
  cgroup: string;
}

export async function readProc(proc: string, pid: number): Promise<ProcInfo | undefined> {
  const stat = await readFile(`${proc}/${pid}/stat`, "utf8").catch(() => undefined);
  if (!stat) return undefined;
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  if (fields[0] === "Z" || fields[0] === "X") return undefined;
  const [comm, cmdline, cgroup] = await Promise.all(
    ["comm", "cmdline", "cgroup"].map((f) => readFile(`${proc}/${pid}/${f}`, "utf8").catch(() => "")),
  );
  const argv = (cmdline ?? "").split("\0");
  if (argv.at(-1) === "") argv.pop();
  return {
    pid,
    comm: (comm ?? "").trim(),
    argv,
    ppid: Number(fields[1]),
    startTime: fields[19] ?? "",
    cgroup: cgroup ?? "",
  };
}

/** The value of `--name X`, `--name=X`, `-n X` or `-n=X` in argv. */
function flagValue(argv: readonly string[], long: string, short: string): string | undefined {
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === long || a === short) return argv[i + 1];
    for (const f of [long, short]) if (a.startsWith(`${f}=`)) return a.slice(f.length + 1);
  }
  return undefined;
}

function isContainerd(p: ProcInfo): boolean {
  return p.comm === "containerd" || path.basename(p.argv[0] ?? "") === "containerd";
}

/** Which config file and socket this containerd process was started with. */
export function containerdArgs(p: ProcInfo): { config: string; address: string | undefined } {
  return {
    config: flagValue(p.argv, "--config", "-c") ?? DEFAULT_CONFIG,
    address: flagValue(p.argv, "--address", "-a"),
  };
}

export interface LocateOptions {
  root: HostRoot;
  /** Host path of a file holding containerd's pid. */
  pidFile?: string | undefined;
  /** The host's /proc as seen here (default /proc: the pod has hostPID). */
  proc?: string;
}

/** The containerd process that serves `target`: from the pid file, or the one /proc shows. */
export async function locateContainerd(target: ContainerdTarget, opts: LocateOptions): Promise<ProcInfo> {
  const proc = opts.proc ?? "/proc";
  if (opts.pidFile) {
    const text = await readFile(opts.root.path(opts.pidFile), "utf8").catch((err: Error) => {
      throw new RestartError(`cannot read containerd's pid file ${opts.pidFile}: ${err.message}`, false);
    });
    const pid = Number(text.trim());
    if (!Number.isInteger(pid) || pid <= 1)
      throw new RestartError(
        `containerd's pid file ${opts.pidFile} holds ${JSON.stringify(text.trim())}, not a pid`,
        false,
      );
    const p = await readProc(proc, pid);
    if (!p || !isContainerd(p))
      throw new RestartError(
        `containerd's pid file ${opts.pidFile} names pid ${pid}, which is ${p ? `${p.comm}, not containerd` : "not running"}`,
        false,
      );
    return p;
  }
  const wantConfig = target.generatedPath ?? target.configPath;
  const all: ProcInfo[] = [];
  for (const name of await readdir(proc).catch(() => [] as string[])) {
    if (!/^\d+$/.test(name)) continue;
    const p = await readProc(proc, Number(name));
    if (p && isContainerd(p)) all.push(p);
  }
  const matching = all.filter((p) => {
    const a = containerdArgs(p);
    return a.config === wantConfig && (a.address === undefined || a.address === target.address);
  });
  if (matching.length === 1) return matching[0] as ProcInfo;
  if (matching.length === 0)
    throw new RestartError(
      all.length === 0
        ? `no containerd process is visible in ${proc} (the installer pod needs hostPID: true)`
        : `no containerd process runs with config ${wantConfig} (found: ${all.map((p) => `pid ${p.pid} ${p.argv.join(" ")}`).join("; ")}); pass --containerd-pidfile`,
      false,
    );
  throw new RestartError(
    `${matching.length} containerd processes run with config ${wantConfig} (pids ${matching.map((p) => p.pid).join(", ")}); pass --containerd-pidfile to say which one serves Kubernetes`,
    false,
  );
}

/** The systemd unit a process runs in, from its cgroup (`…/containerd.service`). */
export function systemdUnitOf(cgroup: string): string | undefined {
  for (const line of cgroup.split("\n")) {
    const parts = (line.split(":")[2] ?? "").split("/").reverse();
    for (const part of parts) {
      const m = /^(.+)\.service$/.exec(part);
      if (m) return m[1];
    }
  }
  return undefined;
}

/** Process names of supervisors that start a service again when it exits. */
export const SUPERVISORS = ["runsv", "s6-supervise", "supervise-daemon", "supervisord", "dinit"] as const;

/** SIGTERM to containerd; its supervisor starts it again, and the caller waits for that. */
export function signalRestarter(target: ContainerdTarget, opts: LocateOptions): Restarter {
  const proc = opts.proc ?? "/proc";
  return {
    describe: `SIGTERM to containerd (pid from ${opts.pidFile ? `pid file ${opts.pidFile}` : `${proc}`}); its supervisor starts it again`,
    hint: "containerd was stopped with SIGTERM but its supervisor did not start it again",
    async restart() {
      const p = await locateContainerd(target, opts);
      try {
        process.kill(p.pid, "SIGTERM");
      } catch (err) {
        throw new RestartError(
          `cannot signal containerd (pid ${p.pid}): ${(err as Error).message}; containerd was not restarted`,
          false,
        );
      }
      const deadline = Date.now() + 30_000;
      for (;;) {
        const now = await readProc(proc, p.pid);
        if (!now || now.startTime !== p.startTime) return;
        if (Date.now() > deadline)
          throw new RestartError(`containerd (pid ${p.pid}) did not exit within 30 s of SIGTERM`, true);
        await sleep(100);
      }
    },
  };
}

export interface RestartChoice {
  mode: Exclude<RestartMode, "auto">;
  /** One sentence: why this mode (for auto) or what it is. */
  why: string;
  restarter: Restarter | undefined;
}

const UNIT_DIRS = [
  "/etc/systemd/system",
  "/run/systemd/system",
  "/usr/lib/systemd/system",
  "/lib/systemd/system",
];

async function unitFileExists(root: HostRoot, unit: string): Promise<boolean> {
  for (const dir of UNIT_DIRS) if (await exists(root.path(`${dir}/${unit}.service`))) return true;
  return false;
}

/** Resolves `--restart` to a restarter; `auto` looks at the host's PID 1 and containerd's process. */
export async function chooseRestart(
  mode: RestartMode,
  target: ContainerdTarget,
  opts: LocateOptions,
): Promise<RestartChoice> {
  const proc = opts.proc ?? "/proc";
  if (mode === "none")
    return { mode, why: "--restart none: containerd is restarted by someone else", restarter: undefined };
  if (mode === "systemd")
    return { mode, why: "--restart systemd", restarter: await systemdRestarter(target.services) };
  if (mode === "signal") return { mode, why: "--restart signal", restarter: signalRestarter(target, opts) };

  const pid1 = (await readFile(`${proc}/1/comm`, "utf8").catch(() => "")).trim();
  // As sd_booted() decides: /run/systemd/system exists; or PID 1 is named systemd.
  const systemd =
    pid1 === "systemd" ||
    path.basename(await readlink(`${proc}/1/exe`).catch(() => "")) === "systemd" ||
    (await exists(opts.root.path("/run/systemd/system")));
  let containerd: ProcInfo | undefined;
  let notFound = "";
  try {
    containerd = await locateContainerd(target, opts);
  } catch (err) {
    notFound = (err as Error).message;
  }
  const none = (why: string): RestartChoice => ({ mode: "none", why, restarter: undefined });
  if (containerd) {
    const unit = systemdUnitOf(containerd.cgroup);
    if (systemd && unit && (target.flavor === "containerd" || target.services.includes(unit)))
      return {
        mode: "systemd",
        why: `the host's PID 1 is systemd and containerd (pid ${containerd.pid}) runs in ${unit}.service`,
        restarter: systemdUnitRestarter(unit),
      };
    if (systemd)
      return none(
        `the host's PID 1 is systemd but containerd (pid ${containerd.pid}) is not in a systemd unit${unit ? ` of ${target.flavor}` : ""} (cgroup ${containerd.cgroup.trim().split("\n").pop() ?? "?"})`,
      );
    if (target.flavor !== "containerd")
      return none(`${target.flavor} is not run by systemd here (the host's PID 1 is ${pid1 || "unknown"})`);
    const parent = await readProc(proc, containerd.ppid);
    const supervisor = parent && (SUPERVISORS as readonly string[]).includes(parent.comm);
    if (supervisor)
      return {
        mode: "signal",
        why: `containerd (pid ${containerd.pid}) is supervised by ${parent.comm} (pid ${parent.pid}), which starts it again`,
        restarter: signalRestarter(target, opts),
      };
    return none(
      `containerd (pid ${containerd.pid}) is not run by systemd (the host's PID 1 is ${pid1 || "unknown"}) and its parent ${parent ? `${parent.comm} (pid ${parent.pid})` : `(pid ${containerd.ppid})`} is not a supervisor the installer knows (${SUPERVISORS.join(", ")}); if it starts containerd again when it exits, use --restart signal`,
    );
  }
  // No containerd process to look at: a stopped systemd unit can still be (re)started.
  if (systemd)
    for (const unit of target.services)
      if (await unitFileExists(opts.root, unit))
        return {
          mode: "systemd",
          why: `the host's PID 1 is systemd and has a ${unit}.service unit (${notFound})`,
          restarter: systemdUnitRestarter(unit),
        };
  return none(`${notFound}; the host's PID 1 is ${pid1 || "unknown"}`);
}

// ---- health ----------------------------------------------------------------------------------

export interface HealthExpectation {
  /** Local path of containerd's socket. */
  address: string;
  /** true: our handler must be live; false: it must be gone; undefined: either. */
  handler?: boolean;
  timeoutMs?: number;
}

/** What a CRI status says is wrong, or undefined when it matches. */
export function healthProblem(status: CriStatus, handler: boolean | undefined): string | undefined {
  const ready = status.conditions.RuntimeReady;
  if (!ready?.status)
    return `CRI runtime not ready${ready ? `: ${ready.reason} ${ready.message}`.trimEnd() : ""}`;
  const live = status.handlers.includes(HANDLER);
  if (handler === true) {
    if (!live)
      return `CRI plugin has no "${HANDLER}" runtime handler (handlers: ${status.handlers.join(", ") || "none"})`;
    const rt = (
      status.config?.containerd as { runtimes?: Record<string, { runtimeType?: string }> } | undefined
    )?.runtimes?.[HANDLER];
    if (rt?.runtimeType !== undefined && rt.runtimeType !== RUNTIME_TYPE)
      return `handler "${HANDLER}" has runtime type ${rt.runtimeType}, not ${RUNTIME_TYPE}`;
  }
  if (handler === false && live) return `CRI plugin still has a "${HANDLER}" runtime handler`;
  return undefined;
}

export class HealthError extends Error {
  override readonly name = "HealthError";
  readonly exitCode: ExitCode = EXIT.CONTAINERD_UNHEALTHY;
  constructor(
    message: string,
    /** Whether containerd answered at all (with the wrong thing) before the time ran out. */
    readonly answered: boolean,
  ) {
    super(message);
  }
}

/** Polls CRI Status until it matches; throws with the last thing seen. */
export async function waitHealthy(expect: HealthExpectation): Promise<CriStatus> {
  const deadline = Date.now() + (expect.timeoutMs ?? 60_000);
  let last = "no answer yet";
  let answered = false;
  for (;;) {
    try {
      const status = await criStatus(expect.address, 5000);
      answered = true;
      const problem = healthProblem(status, expect.handler);
      if (!problem) return status;
      last = problem;
    } catch (err) {
      const message = (err as Error).message;
      if (/grpc-status 12/.test(message)) answered = true;
      last = /grpc-status 12/.test(message)
        ? "containerd answers but its CRI plugin did not load (see containerd's log)"
        : err instanceof CriError
          ? message
          : String(err);
    }
    if (Date.now() > deadline)
      throw new HealthError(`containerd at ${expect.address} is not healthy: ${last}`, answered);
    await sleep(250);
  }
}
