// install / uninstall / status: the installer's three jobs, as functions the CLI and the tests
// call. The order matters and is the same every time:
//   install:   artifacts → runtime config → containerd config (backed up first) → restart and
//              wait for the handler → (roll the config back if containerd does not come up) →
//              node label → prune old versions
//   uninstall: node label off → containerd config restored → restart → files removed
// Everything the installer changed on the node is recorded in installer-state.json before the
// change is made, so an interrupted run can always be undone by the next one.
import { mkdir, readdir, readFile, rm, rmdir, stat } from "node:fs/promises";
import path from "node:path";
import { parseConfig } from "@cloudhv/shim";
import type { Logger } from "pino";
import { z } from "zod";
import {
  activate,
  currentVersion,
  installVersion,
  isLinkTo,
  listVersions,
  pathsInUse,
  previousVersion,
  pruneVersions,
  readManifest,
} from "./artifacts.js";
import {
  addImport,
  addRuntime,
  type ConfigVersion,
  cloudhvRuntime,
  dropInConfig,
  hasRuntime,
  newConfig,
  parseToml,
  removeImport,
  removeRuntime,
  renderBlock,
  runtimesPath,
  stripBlock,
} from "./containerd-config.js";
import { type ContainerdTarget, DEFAULT_CONFIG, DROP_IN, detectTarget } from "./containerd-target.js";
import { criStatus } from "./cri-status.js";
import { atomicSymlink, atomicWrite, exists, readIfExists, removeFile, sha256 } from "./fsutil.js";
import type { NodeLabeler } from "./node-label.js";
import {
  BACKUP_DIR,
  CACHE_DIR,
  HANDLER,
  type HostRoot,
  INSTALL_DIR,
  LAUNCHER,
  NODE_LABEL,
  NODE_LABEL_VALUE,
  PATH_LINK,
  RUNTIME_CONFIG,
  RUNTIME_TYPE,
  STATE_DIR,
  STATE_FILE,
} from "./paths.js";
import { healthProblem, type Restarter, waitHealthy } from "./restart.js";

export class InstallError extends Error {
  override readonly name = "InstallError";
}

const fileSchema = z.strictObject({
  /** Host path of a file we wrote. */
  path: z.string().startsWith("/"),
  /** Host path of the byte-for-byte copy from before our first change; null: it did not exist. */
  backup: z.string().startsWith("/").nullable(),
  /** sha256 of what we wrote: if the file still has it, nobody changed it since. */
  written: z.string().regex(/^[0-9a-f]{64}$/),
  kind: z.enum(["config", "drop-in", "template"]),
});

const stateSchema = z.strictObject({
  schema: z.literal(1),
  version: z.string(),
  flavor: z.enum(["containerd", "k3s", "rke2"]),
  configVersion: z.union([z.literal(1), z.literal(2), z.literal(3)]),
  files: z.array(fileSchema),
  pathLink: z.boolean(),
  /** Directories we created for config files (conf.d/): removed again when empty. */
  createdDirs: z.array(z.string().startsWith("/")).default([]),
  updatedAt: z.string(),
});

export type InstallerState = z.infer<typeof stateSchema>;
type StateFile = z.infer<typeof fileSchema>;

export async function readState(root: HostRoot): Promise<InstallerState | undefined> {
  const text = await readIfExists(root.path(STATE_FILE));
  if (!text) return undefined;
  let doc: unknown;
  try {
    doc = JSON.parse(text.toString("utf8"));
  } catch (err) {
    throw new InstallError(
      `${root.path(STATE_FILE)} is not JSON (${(err as Error).message}); it records what to undo: fix or remove it by hand`,
    );
  }
  const parsed = stateSchema.safeParse(doc);
  if (!parsed.success)
    throw new InstallError(
      `${root.path(STATE_FILE)} is not an installer state: ${z.prettifyError(parsed.error).replaceAll("\n", " ")}`,
    );
  return parsed.data;
}

async function writeState(root: HostRoot, state: InstallerState): Promise<void> {
  await atomicWrite(
    root.path(STATE_FILE),
    `${JSON.stringify({ ...state, updatedAt: new Date().toISOString() }, null, 2)}\n`,
  );
}

export interface CommonOptions {
  root: HostRoot;
  log: Logger;
  /** undefined: `--restart none`. */
  restarter?: Restarter | undefined;
  /** Local path of containerd's socket (default: the config's, under the host root). */
  containerdAddress?: string | undefined;
  /** Kubernetes node to label; undefined: labeling is skipped (and said so). */
  nodeName?: string | undefined;
  labeler?: NodeLabeler | undefined;
  healthTimeoutMs?: number;
  /** containerd config (host path) when not the default; plain containerd only. */
  containerdConfig?: string | undefined;
  configVersion?: ConfigVersion | undefined;
}

export interface InstallOptions extends CommonOptions {
  /** The artifact bundle (the image's /opt/cloudhv-dist). */
  artifacts: string;
  /** Runtime config (config.json) values; validated with the shim's own schema. */
  runtimeConfig?: Record<string, unknown>;
}

export interface FileChange {
  path: string;
  kind: StateFile["kind"];
  /** undefined: the file does not exist now. */
  before: Buffer | undefined;
  /** undefined: remove the file. */
  after: string | undefined;
  method: string;
}

export interface InstallResult {
  version: string;
  copied: boolean;
  previous: string | undefined;
  target: ContainerdTarget;
  changes: FileChange[];
  restarted: boolean;
  labeled: boolean;
  pruned: string[];
}

function localAddress(opts: CommonOptions, target: ContainerdTarget): string {
  return opts.containerdAddress ?? opts.root.path(target.address);
}

/** The files to write so that `target` has our runtime. */
export async function planInstall(root: HostRoot, target: ContainerdTarget): Promise<FileChange[]> {
  const before = await readIfExists(root.path(target.configPath));
  const text = before?.toString("utf8");
  const changes: FileChange[] = [];
  const push = (
    p: string,
    kind: FileChange["kind"],
    b: Buffer | undefined,
    after: string,
    method: string,
  ) => {
    if (b === undefined || b.toString("utf8") !== after)
      changes.push({ path: p, kind, before: b, after, method });
  };
  if (target.flavor !== "containerd") {
    // A Go template, not TOML: keep the owner's text (or containerd's base) and append our block.
    const base = text === undefined ? '{{ template "base" . }}\n' : (stripBlock(text) ?? text);
    const block = renderBlock(
      [[[...runtimesPath(target.version), HANDLER], cloudhvRuntime()]],
      `the ${HANDLER} runtime (${RUNTIME_TYPE})`,
    );
    push(
      target.configPath,
      "template",
      before,
      `${base.endsWith("\n") ? base : `${base}\n`}\n${block}`,
      text === undefined ? "created" : "text",
    );
    return changes;
  }
  if (text === undefined) {
    push(target.configPath, "config", undefined, newConfig(target.version), "created");
    return changes;
  }
  const source = root.path(target.configPath);
  if (target.version === 3 && !hasRuntime(parseToml(text, source), 3)) {
    const dropIn = dropInPath(target.configPath);
    const current = await readIfExists(root.path(dropIn));
    push(dropIn, "drop-in", current, dropInConfig(), "drop-in");
    const patched = addImport(text, dropIn, path.dirname(target.configPath), source);
    push(target.configPath, "config", before, patched.text, patched.method);
    return changes;
  }
  const patched = addRuntime(text, target.version, source);
  push(target.configPath, "config", before, patched.text, patched.method);
  return changes;
}

/** conf.d/cloudhv.toml next to the main config. */
export function dropInPath(configPath: string): string {
  return configPath === DEFAULT_CONFIG
    ? DROP_IN
    : path.join(path.dirname(configPath), "conf.d", "cloudhv.toml");
}

function backupPath(hostPath: string): string {
  return `${BACKUP_DIR}/${hostPath.replace(/^\//, "").replaceAll("/", "__")}`;
}

async function applyChanges(
  root: HostRoot,
  changes: readonly FileChange[],
  useAfter: boolean,
): Promise<void> {
  for (const change of changes) {
    const content = useAfter ? change.after : change.before;
    const file = root.path(change.path);
    if (content === undefined) await removeFile(file);
    else {
      // Keep the original's mode (config files may be 0600).
      await atomicWrite(file, content, await modeOf(file));
    }
  }
}

async function modeOf(file: string): Promise<number> {
  return stat(file).then(
    (s) => s.mode & 0o7777,
    () => 0o644,
  );
}

async function restartAndWait(
  opts: CommonOptions,
  target: ContainerdTarget,
  handler: boolean,
): Promise<void> {
  if (!opts.restarter) return;
  opts.log.info({ how: opts.restarter.describe }, "restarting containerd");
  const started = Date.now();
  await opts.restarter.restart();
  await waitHealthy({
    address: localAddress(opts, target),
    handler,
    timeoutMs: opts.healthTimeoutMs ?? 60_000,
  });
  opts.log.info({ ms: Date.now() - started, handler: handler ? "live" : "gone" }, "containerd is healthy");
}

/** Is the handler live right now (without restarting)? undefined: containerd did not answer. */
async function handlerLive(opts: CommonOptions, target: ContainerdTarget): Promise<boolean | undefined> {
  try {
    return healthProblem(await criStatus(localAddress(opts, target), 3000), true) === undefined;
  } catch {
    return undefined;
  }
}

export async function install(opts: InstallOptions): Promise<InstallResult> {
  const { root, log } = opts;
  const started = Date.now();
  if (!(await exists(root.root))) throw new InstallError(`host root ${root.root} does not exist`);
  const previousState = await readState(root);

  // 1. The runtime config, validated by the shim's own schema before anything is copied.
  const runtimeConfig = opts.runtimeConfig ?? {};
  parseConfig(runtimeConfig, "the runtime config given to the installer");
  const manifest = await readManifest(opts.artifacts);

  // Directories the node did not have (/opt, /usr/local/bin on a minimal root) go again on uninstall.
  const createdDirs = [...(previousState?.createdDirs ?? [])];
  for (const dir of [INSTALL_DIR, path.dirname(PATH_LINK)]) await noteMissing(root, dir, createdDirs);

  // 2. Artifacts: copied whole into versions/<version>, then switched to atomically.
  const installed = await installVersion(root, opts.artifacts);
  log.info(
    { version: installed.version, copied: installed.copied, dir: installed.dir },
    "artifacts in place",
  );
  await atomicWrite(root.path(RUNTIME_CONFIG), `${JSON.stringify(runtimeConfig, null, 2)}\n`);
  const { previous } = await activate(root, manifest.version);
  // ctr run --runtime io.containerd.cloudhv.v1 finds the shim on containerd's PATH; never take
  // over a file that is not ours.
  const linkFile = root.path(PATH_LINK);
  let pathLink = previousState?.pathLink ?? false;
  if (!(await exists(linkFile)) || (await isLinkTo(root, PATH_LINK, LAUNCHER))) {
    await atomicSymlink(LAUNCHER, linkFile);
    pathLink = true;
  } else
    log.warn(
      { path: PATH_LINK },
      "a file that is not ours is in the way; ctr run --runtime will not find the shim",
    );

  // 3. containerd's config: state first (with backups), then the files.
  const target = await detectTarget(root, { configPath: opts.containerdConfig, version: opts.configVersion });
  if (
    previousState &&
    (previousState.flavor !== target.flavor || previousState.configVersion !== target.version)
  )
    log.warn({ was: previousState.flavor, now: target.flavor }, "containerd changed since the last install");
  const changes = await planInstall(root, target);
  const filesBefore = structuredClone(previousState?.files ?? []);
  const files = structuredClone(filesBefore);
  await mkdir(root.path(BACKUP_DIR), { recursive: true });
  for (const change of changes) {
    const known = files.find((f) => f.path === change.path);
    const written = sha256(change.after ?? "");
    if (known) {
      known.written = written;
      continue;
    }
    let backup: string | null = null;
    if (change.before !== undefined) {
      backup = backupPath(change.path);
      await atomicWrite(root.path(backup), change.before, 0o600);
    }
    files.push({ path: change.path, backup, written, kind: change.kind });
  }
  for (const change of changes) await noteMissing(root, path.dirname(change.path), createdDirs);
  const state: InstallerState = {
    schema: 1,
    version: manifest.version,
    flavor: target.flavor,
    configVersion: target.version,
    files,
    pathLink,
    createdDirs,
    updatedAt: "",
  };
  await writeState(root, state);
  await applyChanges(root, changes, true);
  for (const c of changes) log.info({ file: c.path, method: c.method }, "containerd config updated");
  if (changes.length === 0)
    log.info({ file: target.configPath }, "containerd config already has the runtime");

  // 4. Restart and verify; roll back if containerd does not come up with our change.
  let restarted = false;
  if (opts.restarter) {
    const needRestart = changes.length > 0 || (await handlerLive(opts, target)) !== true;
    if (needRestart) {
      try {
        await restartAndWait(opts, target, true);
        restarted = true;
      } catch (err) {
        const why = (err as Error).message;
        log.error({ err: why }, "containerd did not come up with the runtime; rolling the config back");
        await applyChanges(root, changes, false);
        // The state must say what is on disk again: what it said before this run.
        await writeState(root, { ...state, files: filesBefore });
        for (const c of changes)
          if (!filesBefore.some((f) => f.path === c.path)) await removeFile(root.path(backupPath(c.path)));
        try {
          await restartAndWait(opts, target, false);
        } catch (again) {
          throw new InstallError(
            `containerd did not come up with the cloudhv runtime (${why}); the previous config was restored, but containerd is still not healthy: ${(again as Error).message}`,
          );
        }
        throw new InstallError(
          `containerd did not come up with the cloudhv runtime (${why}); the previous config was restored and containerd is healthy again`,
        );
      }
    } else log.info("the cloudhv handler is already live; containerd not restarted");
  } else if (changes.length > 0)
    log.info("containerd not restarted (--restart none): the runtime is live after its next restart");

  // 5. The label, only once the handler is live.
  let labeled = false;
  if (!opts.nodeName) log.info("NODE_NAME is not set: node labeling skipped");
  else if (!opts.restarter && (await handlerLive(opts, target)) !== true)
    log.warn(
      { node: opts.nodeName },
      "containerd does not serve the cloudhv handler yet (--restart none): node labeling skipped",
    );
  else if (opts.labeler) {
    await opts.labeler.set(opts.nodeName);
    labeled = true;
    log.info({ node: opts.nodeName, label: `${NODE_LABEL}=${NODE_LABEL_VALUE}` }, "node labeled");
  }

  // 6. Old versions go once nothing runs from them; current and previous always stay.
  const keep = [manifest.version, ...(previous ? [previous] : [])];
  const pruned = await pruneVersions(root, keep);
  if (pruned.inUse.length)
    log.info({ versions: pruned.inUse }, "older versions still serve running pods; kept");
  log.info({ version: manifest.version, ms: Date.now() - started }, "cloudhv installed");
  return {
    version: manifest.version,
    copied: installed.copied,
    previous,
    target,
    changes,
    restarted,
    labeled,
    pruned: pruned.removed,
  };
}

export interface UninstallResult {
  restored: Array<{ path: string; how: "restored" | "removed" | "edited" | "gone" }>;
  restarted: boolean;
  /** Versions kept because processes still run from them. */
  inUse: string[];
  removed: string[];
}

export async function uninstall(opts: CommonOptions & { purgeCache?: boolean }): Promise<UninstallResult> {
  const { root, log } = opts;
  if (!(await exists(root.root))) throw new InstallError(`host root ${root.root} does not exist`);
  const state = await readState(root);
  const result: UninstallResult = { restored: [], restarted: false, inUse: [], removed: [] };

  // 1. No new pods here while the runtime goes away.
  if (!opts.nodeName) log.info("NODE_NAME is not set: node label removal skipped");
  else if (opts.labeler) {
    await opts.labeler.remove(opts.nodeName);
    log.info({ node: opts.nodeName, label: NODE_LABEL }, "node label removed");
  }

  // 2. containerd's config: byte-for-byte when nobody touched it since, else only our part out.
  if (!state) log.info("no installer state: containerd config not touched");
  for (const file of state?.files ?? []) {
    const local = root.path(file.path);
    const current = await readIfExists(local);
    if (current === undefined) {
      result.restored.push({ path: file.path, how: "gone" });
      continue;
    }
    if (sha256(current) === file.written) {
      const original = file.backup ? await readFile(root.path(file.backup)) : undefined;
      if (original === undefined) await removeFile(local);
      else await atomicWrite(local, original, await modeOf(local));
      result.restored.push({ path: file.path, how: original === undefined ? "removed" : "restored" });
      continue;
    }
    // Changed since we wrote it: take out only what is ours.
    const text = current.toString("utf8");
    let next: string;
    if (file.kind === "drop-in") {
      await removeFile(local);
      result.restored.push({ path: file.path, how: "removed" });
      continue;
    }
    if (file.kind === "template") next = stripBlock(text) ?? text;
    else {
      const dropIn = state?.files.find((f) => f.kind === "drop-in");
      next = removeRuntime(text, state?.configVersion ?? 2, local).text;
      if (dropIn) next = removeImport(next, dropIn.path, local).text;
    }
    if (next !== text) await atomicWrite(local, next, await modeOf(local));
    log.warn(
      { file: file.path },
      "containerd config changed since install: removed only the cloudhv runtime",
    );
    result.restored.push({ path: file.path, how: "edited" });
  }
  if (state) await writeState(root, { ...state, files: [] });

  // 3. containerd without the runtime.
  const changed = result.restored.some((r) => r.how !== "gone");
  if (changed && opts.restarter && state) {
    const target = await detectTarget(root, {
      configPath: opts.containerdConfig,
      version: opts.configVersion ?? (state.configVersion as ConfigVersion),
    }).catch((err: Error) => {
      log.warn({ err: err.message }, "cannot tell which containerd to restart; restart it yourself");
      return undefined;
    });
    if (target) {
      await restartAndWait(opts, target, false).catch((err: Error) => {
        throw new InstallError(
          `the containerd config was restored but containerd is not healthy: ${err.message}`,
        );
      });
      result.restarted = true;
    }
  } else if (changed)
    log.info("containerd not restarted (--restart none): the runtime is gone after its next restart");

  // 4. Files. A version a running process still uses stays (its pods keep working); the rest goes.
  const runtime = await readRuntimeConfig(root);
  await stopIdleDaemons(log);
  const used = await pathsInUse(`${INSTALL_DIR}/`);
  if (state?.pathLink && (await isLinkTo(root, PATH_LINK, LAUNCHER))) await removeFile(root.path(PATH_LINK));
  if (used.length === 0) {
    await rm(root.path(INSTALL_DIR), { recursive: true, force: true });
    const dirs = [
      runtime.state_dir ?? STATE_DIR,
      ...(opts.purgeCache === false
        ? []
        : [runtime.cache_dir ?? `${CACHE_DIR}/cache`, runtime.scratch_dir ?? `${CACHE_DIR}/scratch`]),
    ];
    for (const dir of dirs) await rm(root.path(dir), { recursive: true, force: true });
    // /var/lib/cloudhv itself, once its cache and scratch are gone.
    for (const dir of new Set([...dirs.slice(1).map((d) => path.dirname(d)), CACHE_DIR]))
      await rmEmpty(root.path(dir));
    result.removed.push(INSTALL_DIR);
  } else {
    for (const version of await listVersions(root)) {
      if (used.some((p) => p.startsWith(`${INSTALL_DIR}/versions/${version}/`))) result.inUse.push(version);
    }
    log.warn(
      { versions: result.inUse, paths: used.slice(0, 5) },
      "cloudhv pods still run on this node: /opt/cloudhv stays until they are gone (run uninstall again then)",
    );
  }
  if (result.inUse.length === 0)
    for (const dir of [...(state?.createdDirs ?? [])].sort((a, b) => b.length - a.length))
      await rmEmpty(root.path(dir));
  log.info({ restored: result.restored }, "cloudhv uninstalled");
  return result;
}

/** Records `dir` and each of its ancestors that does not exist yet. */
async function noteMissing(root: HostRoot, dir: string, into: string[]): Promise<void> {
  for (let d = dir; d !== "/"; d = path.dirname(d)) {
    if (await exists(root.path(d))) return;
    if (!into.includes(d)) into.push(d);
  }
}

/**
 * Shim daemons with no VM left (no child processes) would linger for their idle timeout and
 * keep /opt/cloudhv in use: stop them. One that still has VMs keeps running, and its version
 * stays on disk with it.
 */
async function stopIdleDaemons(log: Logger, proc = "/proc", graceMs = 5000): Promise<void> {
  // pid → [ppid, state] for every process, zombies left out (they hold nothing).
  const scan = async () => {
    const out = new Map<string, { ppid: string; daemon: boolean }>();
    for (const pid of (await readdir(proc).catch(() => [] as string[])).filter((p) => /^\d+$/.test(p))) {
      const stat = await readFile(`${proc}/${pid}/stat`, "utf8").catch(() => "");
      const [state, ppid] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (!ppid || state === "Z") continue;
      const cmdline = (await readFile(`${proc}/${pid}/cmdline`, "utf8").catch(() => "")).split("\0");
      const daemon =
        cmdline.some((w) => w.startsWith(`${INSTALL_DIR}/versions/`)) &&
        cmdline.some((w) => w.endsWith("/daemon/main.js"));
      out.set(pid, { ppid, daemon });
    }
    return out;
  };
  // A pod deleted a moment ago may still be taking its VM down: give VMs a few seconds.
  const deadline = Date.now() + graceMs;
  let procs = await scan();
  const busy = () =>
    [...procs]
      .filter(([pid, p]) => p.daemon && [...procs.values()].some((c) => c.ppid === pid))
      .map(([pid]) => pid);
  while (busy().length > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 250));
    procs = await scan();
  }
  const stillBusy = busy();
  for (const [pid, p] of procs) {
    if (!p.daemon || stillBusy.includes(pid)) continue;
    log.info({ pid: Number(pid) }, "stopping an idle shim daemon (no VMs)");
    try {
      process.kill(Number(pid), "SIGTERM");
    } catch {
      continue;
    }
    const gone = async () => {
      const stat = await readFile(`${proc}/${pid}/stat`, "utf8").catch(() => "");
      return stat === "" || stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
    };
    for (let i = 0; i < 50 && !(await gone()); i++) await new Promise((r) => setTimeout(r, 100));
  }
}

async function rmEmpty(dir: string): Promise<void> {
  await rmdir(dir).catch(() => undefined);
}

async function readRuntimeConfig(
  root: HostRoot,
): Promise<{ state_dir?: string; cache_dir?: string; scratch_dir?: string }> {
  const text = await readIfExists(root.path(RUNTIME_CONFIG));
  try {
    return text ? (JSON.parse(text.toString("utf8")) as Record<string, string>) : {};
  } catch {
    return {};
  }
}

export interface StatusReport {
  installed: boolean;
  version: string | undefined;
  previous: string | undefined;
  versions: string[];
  flavor: string | undefined;
  configFiles: Array<{ path: string; intact: boolean }>;
  /** true/false: what containerd's CRI says; undefined: it did not answer. */
  handlerLive: boolean | undefined;
  problems: string[];
}

export async function status(opts: CommonOptions): Promise<StatusReport> {
  const { root } = opts;
  const state = await readState(root);
  const version = await currentVersion(root);
  const problems: string[] = [];
  const configFiles: StatusReport["configFiles"] = [];
  for (const f of state?.files ?? []) {
    const current = await readIfExists(root.path(f.path));
    configFiles.push({ path: f.path, intact: current !== undefined && sha256(current) === f.written });
  }
  let live: boolean | undefined;
  try {
    const target = await detectTarget(root, {
      configPath: opts.containerdConfig,
      version: opts.configVersion ?? state?.configVersion,
    });
    live = await handlerLive(opts, target);
  } catch (err) {
    problems.push((err as Error).message);
  }
  if (!state) problems.push("not installed (no installer state)");
  else if (state.files.length === 0) problems.push("containerd config does not have the cloudhv runtime");
  if (!version) problems.push("no current version in /opt/cloudhv");
  if (live === false) problems.push("containerd does not serve the cloudhv handler");
  if (!(await exists(root.path(LAUNCHER)))) problems.push(`${LAUNCHER} is missing`);
  return {
    installed: problems.length === 0,
    version,
    previous: await previousVersion(root),
    versions: await listVersions(root),
    flavor: state?.flavor,
    configFiles,
    handlerLive: live,
    problems,
  };
}
