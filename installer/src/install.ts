// install / uninstall / status: the installer's three jobs, as functions the CLI and the tests
// call. The order matters and is the same every time:
//   install:   check everything (runtime config, bundle, containerd's config, host tools) →
//              state file → artifacts → runtime config → containerd config (backed up first) →
//              restart and wait for the handler (roll everything back if containerd does not
//              come up) → node label → prune old versions
//   uninstall: "uninstalling" in the state → node label off → containerd config restored →
//              restart → what the installer created removed → node label off again
// Everything the installer changes on the node is recorded in installer-state.json before the
// change is made, so an interrupted run can always be undone by the next one, and uninstall
// removes only what the state says the installer created.
import { access, lstat, mkdir, readdir, readFile, rm, rmdir, stat } from "node:fs/promises";
import path from "node:path";
import { parseConfig, type RuntimeConfig, reapOrphanPoolVms } from "@cloudhv/shim";
import type { Logger } from "pino";
import { z } from "zod";
import {
  ArtifactError,
  activate,
  currentVersion,
  installVersion,
  isLinkTo,
  listVersions,
  pathsInUse,
  previousVersion,
  pruneVersions,
  readManifest,
  verifyBundle,
} from "./artifacts.js";
import {
  addImport,
  addRuntime,
  BLOCK_BEGIN,
  type ConfigVersion,
  ContainerdConfigError,
  cloudhvRuntime,
  describeRuntime,
  dropInConfig,
  foreignRuntime,
  isOurRuntime,
  newConfig,
  removeImport,
  removeRuntime,
  renderBlock,
  runtimesPath,
  stripBlock,
} from "./containerd-config.js";
import { criTableOwner, effectiveRuntime, loadWithImports, ownerDefinitions } from "./containerd-imports.js";
import { type ContainerdTarget, DEFAULT_CONFIG, DROP_IN, detectTarget } from "./containerd-target.js";
import { criStatus } from "./cri-status.js";
import { CodedError, EXIT, type ExitCode } from "./exit-codes.js";
import { atomicSymlink, atomicWrite, exists, readIfExists, removeFile, sha256 } from "./fsutil.js";
import { checkHostTools, requiredTools } from "./host-tools.js";
import type { NodeEvents } from "./kube.js";
import type { NodeLabeler } from "./node-label.js";
import { markCreated, removeOwnedTree } from "./owned-dirs.js";
import {
  BACKUP_DIR,
  BIN_DIR,
  CLI_LAUNCHER,
  CLOUD_HYPERVISOR,
  CURRENT_LINK,
  HANDLER,
  type HostRoot,
  INSTALL_DIR,
  KERNEL,
  LAUNCHER,
  NET_HELPER,
  NODE_LABEL,
  NODE_LABEL_VALUE,
  PATH_LINK,
  PORT_FORWARD,
  PREVIOUS_LINK,
  ROOTFS,
  RUNTIME_CONFIG,
  RUNTIME_TYPE,
  STATE_FILE,
  VERSIONS_DIR,
  VIRTIOFSD,
} from "./paths.js";
import {
  HealthError,
  healthProblem,
  RestartError,
  type Restarter,
  readProc,
  waitHealthy,
} from "./restart.js";

export class InstallError extends CodedError {
  override readonly name = "InstallError";
  constructor(message: string, exitCode: ExitCode = EXIT.FAILED) {
    super(message, exitCode);
  }
}

const hostPath = z.string().startsWith("/");

const fileSchema = z.strictObject({
  /** Host path of a file we wrote. */
  path: hostPath,
  /** Host path of the byte-for-byte copy from before our first change; null: it did not exist. */
  backup: hostPath.nullable(),
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
  /** Directories the installer created around its files (conf.d/, /opt): removed again when empty. */
  createdDirs: z.array(hostPath).default([]),
  /**
   * Directories the installer created whose whole content is cloudhv's (/opt/cloudhv, the
   * shim's state, cache and scratch directories): removed with their content on uninstall.
   * Absent in states written before it existed: then /opt/cloudhv counts as created.
   */
  ownedDirs: z.array(hostPath).optional(),
  /**
   * Set once the owned directories carry the created-by-cloudhv marker (owned-dirs.ts). A state
   * without it predates markers: install marks its owned directories once.
   */
  markers: z.boolean().optional(),
  /**
   * The shim's state_dir when it existed before cloudhv (an admin's /run/cloudhv): the names in
   * it then. Uninstall removes only the shim's own entries that were not among them.
   */
  sharedStateDir: z.strictObject({ dir: hostPath, before: z.array(z.string()).max(4096) }).optional(),
  /** Set by uninstall before it changes anything; install and the DaemonSet's watch stand back. */
  uninstalling: z.strictObject({ pid: z.number().int(), since: z.string() }).optional(),
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
      `${STATE_FILE} is not JSON (${(err as Error).message}); it records what to undo: fix or remove it by hand`,
      EXIT.HOST,
    );
  }
  const parsed = stateSchema.safeParse(doc);
  if (!parsed.success)
    throw new InstallError(
      `${STATE_FILE} is not an installer state: ${z.prettifyError(parsed.error).replaceAll("\n", " ")}`,
      EXIT.HOST,
    );
  return parsed.data;
}

/** Writes the state unless it says what the file already says (install twice = install once, byte for byte). */
async function writeState(root: HostRoot, state: InstallerState): Promise<void> {
  const current = await readState(root).catch(() => undefined);
  if (
    current &&
    JSON.stringify({ ...current, updatedAt: "" }) === JSON.stringify({ ...state, updatedAt: "" })
  )
    return;
  await atomicWrite(
    root.path(STATE_FILE),
    `${JSON.stringify({ ...state, updatedAt: new Date().toISOString() }, null, 2)}\n`,
  );
}

export interface CommonOptions {
  root: HostRoot;
  log: Logger;
  /** undefined: containerd is not restarted (`--restart none`, or `auto` found no way to). */
  restarter?: Restarter | undefined;
  /** Why this restart mode (logged with the pending-restart message). */
  restartWhy?: string | undefined;
  /** Local path of containerd's socket (default: the config's, under the host root). */
  containerdAddress?: string | undefined;
  /** Kubernetes node to label; undefined: labeling is skipped (and said so). */
  nodeName?: string | undefined;
  labeler?: NodeLabeler | undefined;
  /** Kubernetes Events on the node (what the admin must do); optional. */
  events?: NodeEvents | undefined;
  healthTimeoutMs?: number;
  /** containerd config (host path) when not the default; plain containerd only. */
  containerdConfig?: string | undefined;
  configVersion?: ConfigVersion | undefined;
  /** The host's /proc as seen here (tests); default /proc. */
  proc?: string;
}

export interface InstallOptions extends CommonOptions {
  /** The artifact bundle (the image's /opt/cloudhv-dist). */
  artifacts: string;
  /** Runtime config (config.json) values; validated with the shim's own schema. */
  runtimeConfig?: Record<string, unknown>;
  /** Replace a `cloudhv` runtime someone else defined in containerd's config (else: refuse). */
  takeOverRuntime?: boolean;
  /** false: skip the host tools check (default: check). */
  checkHostTools?: boolean;
  /** true: a failed node label is logged, not thrown (the DaemonSet's watch retries it). */
  labelLater?: boolean;
}

export interface FileChange {
  path: string;
  kind: StateFile["kind"];
  /** undefined: the file does not exist now. */
  before: Buffer | undefined;
  /** undefined: remove the file. */
  after: string | undefined;
  method: string;
  /** Why this file, or why a rewrite (for the log). */
  note?: string | undefined;
}

export interface InstallResult {
  version: string;
  copied: boolean;
  previous: string | undefined;
  target: ContainerdTarget;
  changes: FileChange[];
  restarted: boolean;
  /** containerd serves the cloudhv handler now. */
  live: boolean;
  labeled: boolean;
  pruned: string[];
}

function localAddress(opts: CommonOptions, target: ContainerdTarget): string {
  return opts.containerdAddress ?? opts.root.path(target.address);
}

/** A `cloudhv` table in a k3s/rke2 template outside our block: templates cannot be taken over. */
const TEMPLATE_RUNTIME = /runtimes\.(?:cloudhv|"cloudhv")\s*\]/;

/** The files to write so that `target` has our runtime; throws when that cannot be done safely. */
export async function planInstall(
  root: HostRoot,
  target: ContainerdTarget,
  opts: { takeOverRuntime?: boolean | undefined } = {},
): Promise<FileChange[]> {
  const before = await readIfExists(root.path(target.configPath));
  const text = before?.toString("utf8");
  const changes: FileChange[] = [];
  const push = (
    p: string,
    kind: FileChange["kind"],
    b: Buffer | undefined,
    after: string,
    method: string,
    note?: string,
  ) => {
    if (b === undefined || b.toString("utf8") !== after)
      changes.push({ path: p, kind, before: b, after, method, note });
  };
  if (target.flavor !== "containerd") {
    // A Go template, not TOML: keep the owner's text (or containerd's base) and append our block.
    const base = text === undefined ? '{{ template "base" . }}\n' : (stripBlock(text) ?? text);
    if (TEMPLATE_RUNTIME.test(base))
      throw new ContainerdConfigError(
        `${target.configPath} (${target.flavor}'s containerd template) already defines a "${HANDLER}" runtime that cloudhv-installer did not write; a template cannot be taken over: remove or rename that runtime there`,
      );
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
  // A file this installer created: already what it should be.
  if (text === newConfig(target.version)) return changes;
  const loaded = await loadWithImports(root, target.configPath, text);
  if (loaded.missing.length > 0)
    throw new ContainerdConfigError(
      `${target.configPath} imports ${loaded.missing.join(", ")}, which does not exist: containerd cannot load this config; fix the imports first`,
    );
  const takeOver = opts.takeOverRuntime === true;
  const patchFile = (file: { path: string; text: string }, note?: string) => {
    const patched = addRuntime(file.text, target.version, file.path, { takeOver });
    push(file.path, "config", Buffer.from(file.text), patched.text, patched.method, patched.note ?? note);
  };
  if (target.version !== 3) {
    // containerd 1.x: the CRI runtimes are in the last file with the CRI plugin's table.
    const owner = criTableOwner(loaded, target.version);
    if (owner && owner.path !== target.configPath)
      patchFile(
        owner,
        `${owner.path} (imported by ${target.configPath}) holds the CRI plugin's table, which replaces the main file's in containerd 1.x: the runtime goes there`,
      );
    else patchFile({ path: target.configPath, text });
    return changes;
  }
  // containerd 2.x merges imports deeply: a drop-in, unless a `cloudhv` runtime is defined somewhere.
  const defs = ownerDefinitions(loaded, 3);
  const foreign = defs.filter((d) => !isOurRuntime(d.table));
  const identical = defs.filter((d) => !foreign.includes(d));
  if (foreign.length > 1)
    throw new ContainerdConfigError(
      `a "${HANDLER}" runtime is defined in ${foreign.map((d) => `${d.file} (${describeRuntime(d.table)})`).join(" and ")}; cloudhv-installer did not write them and does not replace them: remove them`,
    );
  if (foreign.length === 1) {
    const def = foreign[0] as (typeof foreign)[number];
    if (!takeOver) throw foreignRuntime(def.file, def.table);
    const file = loaded.files.find((f) => f.path === def.file);
    if (file) patchFile(file);
    return changes;
  }
  if (identical.length > 0) return changes;
  const dropIn = dropInPath(target.configPath);
  const current = await readIfExists(root.path(dropIn));
  push(dropIn, "drop-in", current, dropInConfig(), "drop-in");
  const patched = addImport(text, dropIn, path.dirname(target.configPath), target.configPath);
  push(target.configPath, "config", before, patched.text, patched.method, patched.note);
  return changes;
}

/** conf.d/cloudhv.toml next to the main config. */
export function dropInPath(configPath: string): string {
  return configPath === DEFAULT_CONFIG
    ? DROP_IN
    : path.join(path.dirname(configPath), "conf.d", "cloudhv.toml");
}

function backupPath(hostFile: string): string {
  return `${BACKUP_DIR}/${hostFile.replace(/^\//, "").replaceAll("/", "__")}`;
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

/** Does containerd serve the handler right now? undefined: containerd did not answer. */
export async function handlerLiveAt(address: string): Promise<boolean | undefined> {
  try {
    return healthProblem(await criStatus(address, 3000), true) === undefined;
  } catch {
    return undefined;
  }
}

function handlerLive(opts: CommonOptions, target: ContainerdTarget): Promise<boolean | undefined> {
  return handlerLiveAt(localAddress(opts, target));
}

/** Directories cloudhv may never remove as a whole, whoever created them. */
const PROTECTED_DIRS = new Set([
  "/",
  "/bin",
  "/boot",
  "/dev",
  "/etc",
  "/etc/containerd",
  "/home",
  "/lib",
  "/lib64",
  "/media",
  "/mnt",
  "/opt",
  "/proc",
  "/root",
  "/run",
  "/run/containerd",
  "/sbin",
  "/srv",
  "/sys",
  "/tmp",
  "/usr",
  "/usr/bin",
  "/usr/lib",
  "/usr/local",
  "/usr/local/bin",
  "/usr/sbin",
  "/var",
  "/var/lib",
  "/var/lib/containerd",
  "/var/log",
  "/var/run",
  "/var/tmp",
]);

/** The shim's directories of a runtime config, checked: absolute, normalized, not a system directory. */
function runtimeDirs(config: RuntimeConfig): Array<{ key: string; dir: string }> {
  const dirs = [
    { key: "state_dir", dir: config.state_dir },
    { key: "cache_dir", dir: config.cache_dir },
    { key: "scratch_dir", dir: config.scratch_dir },
    // The daemon's log: made and recorded here, so that uninstall takes it (and only it) away.
    { key: "log_dir", dir: config.log_dir },
  ];
  for (const { key, dir } of dirs) {
    if (
      !path.posix.isAbsolute(dir) ||
      path.posix.normalize(dir) !== dir.replace(/\/+$/, "") ||
      dir.includes("/../")
    )
      throw new InstallError(
        `runtime config ${key} = ${JSON.stringify(dir)}: must be an absolute, normalized path`,
        EXIT.INVALID_INPUT,
      );
    if (PROTECTED_DIRS.has(path.posix.normalize(dir)))
      throw new InstallError(
        `runtime config ${key} = ${JSON.stringify(dir)} is a system directory; cloudhv needs a directory of its own there (e.g. ${path.posix.join(dir, "cloudhv")})`,
        EXIT.INVALID_INPUT,
      );
  }
  return dirs.map((d) => ({ ...d, dir: path.posix.normalize(d.dir) }));
}

/** `dir` and its missing ancestors, outermost first (host paths). */
async function missingChain(root: HostRoot, dir: string): Promise<string[]> {
  const out: string[] = [];
  for (let d = dir; d !== "/"; d = path.posix.dirname(d)) {
    if (await exists(root.path(d))) break;
    out.unshift(d);
  }
  return out;
}

/** Is the uninstall that marked the state still running (its pid alive, running `uninstall`)? */
async function uninstallRunning(mark: { pid: number }, proc = "/proc"): Promise<boolean> {
  if (mark.pid === process.pid) return false;
  const p = await readProc(proc, mark.pid);
  return p?.argv.includes("uninstall") ?? false;
}

/** What the installer created, removed: the file part of uninstall, and the undo of a failed first install. */
async function removeCreated(
  root: HostRoot,
  state: Pick<InstallerState, "createdDirs" | "ownedDirs" | "pathLink" | "markers">,
  log: Logger,
  keep: readonly string[] = [],
): Promise<Array<{ path: string; reason: string }>> {
  const left: Array<{ path: string; reason: string }> = [];
  /** Removes an owned directory if it is still cloudhv's; says what stayed and why. */
  const removeTree = async (dir: string, requireMarker: boolean) => {
    const outcome = await removeOwnedTree(root.path(dir), { requireMarker });
    for (const k of outcome.kept) {
      const hostPath = path.posix.join("/", path.relative(root.root, k.path));
      left.push({ path: hostPath, reason: k.reason });
      log.error({ path: hostPath, reason: k.reason }, "left in place: not removed by uninstall");
    }
    return outcome.removed;
  };
  if (state.pathLink && (await isLinkTo(root, PATH_LINK, LAUNCHER))) await removeFile(root.path(PATH_LINK));
  const owned = state.ownedDirs ?? [INSTALL_DIR];
  // The state file in it proves /opt/cloudhv is the installer's; no marker needed there.
  if (owned.includes(INSTALL_DIR)) await removeTree(INSTALL_DIR, false);
  else {
    // /opt/cloudhv was there before the installer: only the installer's own entries go.
    for (const entry of [
      VERSIONS_DIR,
      BACKUP_DIR,
      LAUNCHER,
      CLI_LAUNCHER,
      CLOUD_HYPERVISOR,
      VIRTIOFSD,
      NET_HELPER,
      PORT_FORWARD,
      NET_HELPER,
      CURRENT_LINK,
      PREVIOUS_LINK,
      KERNEL,
      ROOTFS,
      RUNTIME_CONFIG,
      STATE_FILE,
    ])
      await rm(root.path(entry), { recursive: true, force: true });
    await rmdir(root.path(BIN_DIR)).catch(() => undefined);
  }
  for (const dir of owned) {
    if (dir === INSTALL_DIR) continue;
    if (keep.includes(dir)) {
      log.info({ dir }, "kept (--keep-cache)");
      continue;
    }
    if (PROTECTED_DIRS.has(path.posix.normalize(dir)) || !path.posix.isAbsolute(dir) || dir.includes("..")) {
      log.error(
        { dir },
        "refusing to remove a system directory the state names; remove what cloudhv left there by hand",
      );
      left.push({ path: dir, reason: "a system directory" });
      continue;
    }
    // A state from before markers: its directories are taken as they are (as that version did).
    await removeTree(dir, state.markers === true);
  }
  for (const dir of [...state.createdDirs].sort((a, b) => b.length - a.length))
    await rmdir(root.path(dir)).catch(() => undefined);
  return left;
}

export async function install(opts: InstallOptions): Promise<InstallResult> {
  const { root, log } = opts;
  const started = Date.now();
  if (!(await exists(root.root))) throw new InstallError(`host root ${root.root} does not exist`, EXIT.HOST);
  const previousState = await readState(root);
  if (previousState?.uninstalling) {
    const mark = previousState.uninstalling;
    if (await uninstallRunning(mark, opts.proc))
      throw new InstallError(
        `an uninstall (pid ${mark.pid}, since ${mark.since}) is running on this node: not installing (helm uninstall removes this installer next)`,
        EXIT.UNINSTALL_IN_PROGRESS,
      );
    log.warn({ since: mark.since }, "an earlier uninstall did not finish; installing over what it left");
  }

  // 1. Everything is checked before anything on the node changes.
  const runtimeConfig = opts.runtimeConfig ?? {};
  const config = parseConfig(runtimeConfig, "the runtime config given to the installer");
  const dirs = runtimeDirs(config);
  const manifest = await readManifest(opts.artifacts);
  const damaged = await verifyBundle(opts.artifacts, manifest);
  if (damaged) throw new ArtifactError(`artifact bundle ${opts.artifacts} is damaged: ${damaged}`);
  const target = await detectTarget(root, { configPath: opts.containerdConfig, version: opts.configVersion });
  if (
    previousState &&
    (previousState.flavor !== target.flavor || previousState.configVersion !== target.version)
  )
    log.warn({ was: previousState.flavor, now: target.flavor }, "containerd changed since the last install");
  const changes = await planInstall(root, target, { takeOverRuntime: opts.takeOverRuntime });
  if (opts.checkHostTools !== false)
    await checkHostTools(root, await requiredTools(root, config, "bin/cloud-hypervisor" in manifest.files));
  log.info(
    { version: manifest.version, containerd: target.flavor, config: target.configPath },
    "checks passed",
  );

  // 2. The state first: it names every directory this run creates, so a failure can take them back.
  const createdDirs = [...(previousState?.createdDirs ?? [])];
  const ownedDirs = [...(previousState?.ownedDirs ?? (previousState ? [INSTALL_DIR] : []))];
  let sharedStateDir: InstallerState["sharedStateDir"];
  /** Directories this run creates: owned ones go with their content on undo, the rest when empty. */
  const newDirs: Array<{ dir: string; owned: boolean }> = [];
  const note = (list: string[], dir: string) => {
    if (!list.includes(dir)) list.push(dir);
    newDirs.push({ dir, owned: list === ownedDirs });
  };
  const installChain = await missingChain(root, INSTALL_DIR);
  for (const d of installChain) note(d === INSTALL_DIR ? ownedDirs : createdDirs, d);
  for (const d of await missingChain(root, path.posix.dirname(PATH_LINK))) note(createdDirs, d);
  for (const { key, dir } of dirs) {
    const chain = await missingChain(root, dir);
    if (chain.length === 0) {
      if (ownedDirs.includes(dir)) continue;
      if (key === "state_dir") {
        sharedStateDir =
          previousState?.sharedStateDir?.dir === dir
            ? previousState.sharedStateDir
            : await stateDirSnapshot(root, dir);
        log.info(
          { [key]: dir, entries: sharedStateDir?.before.length },
          sharedStateDir
            ? "existed before cloudhv: uninstall leaves it and what was in it, and removes only the shim's own entries"
            : "existed before cloudhv with too many entries to record: uninstall leaves it as it is then",
        );
      } else log.info({ [key]: dir }, "existed before cloudhv: uninstall leaves it");
      continue;
    }
    for (const d of chain) note(d === dir ? ownedDirs : createdDirs, d);
  }
  for (const c of changes)
    for (const d of await missingChain(root, path.posix.dirname(c.path))) note(createdDirs, d);
  const stateBefore = await readIfExists(root.path(STATE_FILE));
  const filesBefore = structuredClone(previousState?.files ?? []);
  const state: InstallerState = {
    schema: 1,
    version: manifest.version,
    flavor: target.flavor,
    configVersion: target.version,
    files: structuredClone(filesBefore),
    pathLink: previousState?.pathLink ?? false,
    createdDirs,
    ownedDirs,
    ...(previousState?.markers ? { markers: true } : {}),
    ...(sharedStateDir ? { sharedStateDir } : {}),
    updatedAt: "",
  };
  const versionBefore = await currentVersion(root);
  const previousBefore = await previousVersion(root);
  const hadVersion = await exists(root.path(`${VERSIONS_DIR}/${manifest.version}`));
  const configBefore = await readIfExists(root.path(RUNTIME_CONFIG));
  const newBackups: string[] = [];

  /** Takes back what this run did to the node (containerd's config included). */
  const undo = async (configApplied: boolean) => {
    try {
      if (configApplied) await applyChanges(root, changes, false);
      for (const b of newBackups) await removeFile(root.path(b));
      if (!previousState) {
        await removeCreated(root, state, log);
        return;
      }
      if (!hadVersion)
        await rm(root.path(`${VERSIONS_DIR}/${manifest.version}`), { recursive: true, force: true });
      if (versionBefore && versionBefore !== manifest.version) {
        await activate(root, versionBefore);
        if (previousBefore) await atomicSymlink(`versions/${previousBefore}`, root.path(PREVIOUS_LINK));
        else await removeFile(root.path(PREVIOUS_LINK));
      }
      if (configBefore) await atomicWrite(root.path(RUNTIME_CONFIG), configBefore);
      if (stateBefore) await atomicWrite(root.path(STATE_FILE), stateBefore);
      for (const d of [...newDirs].reverse())
        if (d.owned) await rm(root.path(d.dir), { recursive: true, force: true });
        else await rmdir(root.path(d.dir)).catch(() => undefined);
    } catch (err) {
      log.error({ err: (err as Error).message }, "could not take back everything this install did");
    }
  };

  let installed: Awaited<ReturnType<typeof installVersion>>;
  let previous: string | undefined;
  try {
    await mkdir(root.path(INSTALL_DIR), { recursive: true });
    await writeState(root, state);
    for (const { key, dir } of dirs)
      await mkdir(root.path(dir), {
        recursive: true,
        mode: key === "scratch_dir" ? 0o700 : key === "log_dir" ? 0o750 : 0o755,
      });
    // The shim's directories this run created carry the marker; a state from before markers
    // gets them on its owned directories once (a mount point or a symlink there never does).
    for (const { dir } of dirs) {
      const fresh = newDirs.some((d) => d.owned && d.dir === dir);
      const migrate = !previousState?.markers && ownedDirs.includes(dir);
      if ((fresh || migrate) && !(await markCreated(root.path(dir))))
        log.warn(
          { dir },
          "not marked as cloudhv's (a mount point or not a directory): uninstall will leave it",
        );
    }
    if (!state.markers) {
      state.markers = true;
      await writeState(root, state);
    }

    // 3. Artifacts: copied whole into versions/<version>, then switched to atomically.
    installed = await installVersion(root, opts.artifacts, { verified: true });
    log.info(
      { version: installed.version, copied: installed.copied, dir: installed.dir },
      "artifacts in place",
    );
    await atomicWrite(root.path(RUNTIME_CONFIG), `${JSON.stringify(runtimeConfig, null, 2)}\n`);
    ({ previous } = await activate(root, manifest.version));
    // ctr run --runtime io.containerd.cloudhv.v1 finds the shim on containerd's PATH; never take
    // over a file that is not ours.
    const linkFile = root.path(PATH_LINK);
    if (!(await exists(linkFile)) || (await isLinkTo(root, PATH_LINK, LAUNCHER))) {
      await atomicSymlink(LAUNCHER, linkFile);
      state.pathLink = true;
    } else
      log.warn(
        { path: PATH_LINK },
        "a file that is not ours is in the way; ctr run --runtime will not find the shim",
      );

    // 4. containerd's config: backups and state first, then the files.
    await mkdir(root.path(BACKUP_DIR), { recursive: true });
    for (const change of changes) {
      const written = sha256(change.after ?? "");
      const known = state.files.find((f) => f.path === change.path);
      if (known) {
        known.written = written;
        continue;
      }
      let backup: string | null = null;
      if (change.before !== undefined) {
        backup = backupPath(change.path);
        await atomicWrite(root.path(backup), change.before, 0o600);
        newBackups.push(backup);
      }
      state.files.push({ path: change.path, backup, written, kind: change.kind });
    }
    await writeState(root, state);
    await applyChanges(root, changes, true);
  } catch (err) {
    await undo(true);
    throw err;
  }
  for (const c of changes) {
    const fields = { file: c.path, method: c.method, ...(c.note ? { note: c.note } : {}) };
    if (c.method === "rewritten")
      log.warn(fields, "containerd config rewritten (comments are lost; the original is in the backup)");
    else log.info(fields, "containerd config updated");
  }
  if (changes.length === 0)
    log.info({ file: target.configPath }, "containerd config already has the runtime");

  // 5. Restart and verify; take everything back if containerd does not come up with our change.
  let restarted = false;
  let live = false;
  if (opts.restarter) {
    const needRestart = changes.length > 0 || (await handlerLive(opts, target)) !== true;
    if (needRestart) {
      try {
        await restartAndWait(opts, target, true);
        restarted = true;
        live = true;
      } catch (err) {
        throw await failedRestart(
          opts,
          target,
          err,
          async () => {
            await applyChanges(root, changes, false);
            // The state must say what is on disk again: what it said before this run.
            await writeState(root, { ...state, files: filesBefore });
          },
          () => undo(false),
        );
      }
    } else {
      live = true;
      log.info("the cloudhv handler is already live; containerd not restarted");
    }
  } else live = (await handlerLive(opts, target)) === true;

  // 6. The label, only once the handler is live; otherwise say what the admin must do.
  let labeled = false;
  let labelError: Error | undefined;
  if (!opts.nodeName) log.info("NODE_NAME is not set: node labeling skipped");
  if (!live) await pendingRestart(opts, target, changes.length > 0);
  else if (opts.nodeName && opts.labeler) {
    try {
      await opts.labeler.set(opts.nodeName);
      labeled = true;
      log.info({ node: opts.nodeName, label: `${NODE_LABEL}=${NODE_LABEL_VALUE}` }, "node labeled");
    } catch (err) {
      labelError = err as Error;
      log.warn(
        { err: labelError.message },
        "cloudhv is installed and live, but the node could not be labeled",
      );
    }
  }

  // 7. Old versions go once nothing runs from them; current and previous always stay.
  const keep = [manifest.version, ...(previous ? [previous] : [])];
  let pruned: string[] = [];
  try {
    const result = await pruneVersions(root, keep);
    pruned = result.removed;
    if (result.inUse.length)
      log.info({ versions: result.inUse }, "older versions still serve running pods; kept");
  } catch (err) {
    log.warn({ err: (err as Error).message }, "could not remove old versions (the next install tries again)");
  }
  log.info({ version: manifest.version, live, ms: Date.now() - started }, "cloudhv installed");
  if (labelError && !opts.labelLater) throw labelError;
  return {
    version: manifest.version,
    copied: installed.copied,
    previous,
    target,
    changes,
    restarted,
    live,
    labeled,
    pruned,
  };
}

/** The log line and Event that tell the admin containerd must be restarted. */
async function pendingRestart(
  opts: CommonOptions,
  target: ContainerdTarget,
  changed: boolean,
): Promise<void> {
  const live = await handlerLive(opts, target);
  const unit = target.flavor === "containerd" ? "containerd" : (target.services[0] as string);
  const message =
    live === undefined
      ? `containerd does not answer at ${target.address}; once it runs with the new config the node is labeled ${NODE_LABEL}=${NODE_LABEL_VALUE}`
      : `containerd must be restarted on this node to load the cloudhv runtime (${changed ? "its config was just changed" : "its config has it"}; e.g. systemctl restart ${unit}, or however ${unit} is run here); the installer waits and labels the node ${NODE_LABEL}=${NODE_LABEL_VALUE} once containerd serves the handler`;
  opts.log.warn({ restart: opts.restartWhy ?? "--restart none", node: opts.nodeName }, message);
  if (opts.events && opts.nodeName)
    await opts.events
      .warn(opts.nodeName, "ContainerdRestartNeeded", `cloudhv: ${message}`)
      .catch((err: Error) =>
        opts.log.warn({ err: err.message }, "could not post a Kubernetes Event on the node"),
      );
}

/**
 * After a failed restart: the config is put back; containerd is restarted again only if the
 * failed attempt may have stopped it; the error says what containerd runs now.
 */
async function failedRestart(
  opts: CommonOptions,
  target: ContainerdTarget,
  err: unknown,
  rollback: () => Promise<void>,
  undoRest: () => Promise<void>,
): Promise<Error> {
  const { log } = opts;
  const why = (err as Error).message;
  const how = opts.restarter?.describe ?? "restart";
  await rollback();
  if (err instanceof RestartError && !err.stopped) {
    await undoRest();
    const answers = await handlerLive(opts, target);
    log.error({ err: why }, "containerd was not restarted; the config change was undone");
    return new InstallError(
      `containerd was not restarted (${why}). It still runs its previous config${answers === undefined ? ", though it does not answer at the moment" : " and serves CRI"}; the config change was undone and nothing of cloudhv was left on the node. Fix the restart, or choose another --restart mode (chart: containerd.restart): none leaves the restart to you`,
      EXIT.RESTART_FAILED,
    );
  }
  const hint =
    err instanceof HealthError && !err.answered && opts.restarter?.hint ? ` (${opts.restarter.hint})` : "";
  log.error({ err: why }, "containerd did not come up with the runtime; rolling the config back");
  try {
    await restartAndWait(opts, target, false);
  } catch (again) {
    await undoRest();
    return new InstallError(
      `containerd did not come up with the cloudhv runtime after ${how} (${why})${hint}; the previous config was restored, but containerd is still not healthy: ${(again as Error).message}`,
      EXIT.CONTAINERD_UNHEALTHY,
    );
  }
  await undoRest();
  return new InstallError(
    `containerd did not come up with the cloudhv runtime (${why})${hint}; the previous config was restored and containerd is healthy again`,
    EXIT.CONTAINERD_UNHEALTHY,
  );
}

export interface UninstallResult {
  restored: Array<{ path: string; how: "restored" | "removed" | "edited" | "gone" }>;
  restarted: boolean;
  /** Versions kept because processes still run from them. */
  inUse: string[];
  removed: string[];
  /** Host paths uninstall left although the installer created them there, and why. */
  left: Array<{ path: string; reason: string }>;
}

export async function uninstall(opts: CommonOptions & { purgeCache?: boolean }): Promise<UninstallResult> {
  const { root, log } = opts;
  if (!(await exists(root.root))) throw new InstallError(`host root ${root.root} does not exist`, EXIT.HOST);
  let state = await readState(root);
  const result: UninstallResult = { restored: [], restarted: false, inUse: [], removed: [], left: [] };
  // The DaemonSet's installer on this node sees this and stands back (no label, no install).
  if (state) {
    state = { ...state, uninstalling: { pid: process.pid, since: new Date().toISOString() } };
    await writeState(root, state);
  }

  // 1. No new pods here while the runtime goes away.
  const unlabel = async () => {
    if (opts.nodeName && opts.labeler) await opts.labeler.remove(opts.nodeName);
  };
  if (!opts.nodeName) log.info("NODE_NAME is not set: node label removal skipped");
  else if (opts.labeler) {
    await unlabel();
    log.info({ node: opts.nodeName, label: NODE_LABEL }, "node label removed");
  }

  // 2. containerd's config: byte-for-byte when nobody touched it since, else only our part out.
  if (!state) log.info("no installer state: containerd config not touched, nothing to remove");
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
      next = removeRuntime(text, state?.configVersion ?? 2, file.path).text;
      if (dropIn) next = removeImport(next, dropIn.path, file.path).text;
    }
    if (next !== text) await atomicWrite(local, next, await modeOf(local));
    log.warn(
      { file: file.path },
      "containerd config changed since install: removed only the cloudhv runtime",
    );
    result.restored.push({ path: file.path, how: "edited" });
  }
  if (state) {
    state = { ...state, files: [] };
    await writeState(root, state);
  }

  // 3. containerd without the runtime. A failure is reported after the files are gone.
  let restartFailure: Error | undefined;
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
      try {
        await restartAndWait(opts, target, false);
        result.restarted = true;
      } catch (err) {
        restartFailure =
          err instanceof RestartError && !err.stopped
            ? new InstallError(
                `the containerd config was restored, but containerd was not restarted (${err.message}); it serves the cloudhv handler until its next restart: restart it yourself`,
                EXIT.RESTART_FAILED,
              )
            : new InstallError(
                `the containerd config was restored and containerd restarted (${opts.restarter.describe}), but it is not healthy: ${(err as Error).message}${err instanceof HealthError && !err.answered && opts.restarter.hint ? ` (${opts.restarter.hint})` : ""}`,
                EXIT.CONTAINERD_UNHEALTHY,
              );
        log.error({ err: restartFailure.message }, "containerd restart after uninstall failed");
      }
    }
  } else if (changed)
    log.info(
      "containerd not restarted: it serves the cloudhv handler until its next restart (the node label is off, so no new cloudhv pods land here)",
    );

  // 4. What the installer created. A version a running process still uses stays (its pods keep
  // working), and so does everything else until the next uninstall.
  if (state) {
    const runtime = await readRuntimeConfig(root);
    await stopIdleDaemons(log, opts.proc);
    // A killed daemon's pool VMs serve no pod and hold our kernel and rootfs open: they go
    // (only those whose daemon is gone; the next daemon on that state dir would do the same).
    await reapOrphanPoolVms(root.path(path.join(runtime.state_dir ?? DEFAULT_STATE_DIR, "vm")), log).catch(
      (err: Error) => log.warn({ err: err.message }, "could not look for orphaned pool VMs"),
    );
    const used = await pathsInUse(`${INSTALL_DIR}/`, opts.proc);
    if (used.length === 0) {
      const keep = opts.purgeCache === false && runtime.cache_dir ? [runtime.cache_dir] : [];
      if (opts.purgeCache === false && !runtime.cache_dir) keep.push("/var/lib/cloudhv/cache");
      result.left = await removeCreated(root, state, log, keep);
      if (state.sharedStateDir)
        result.left.push(...(await removeShimEntries(root, state.sharedStateDir, log)));
      result.removed.push(
        ...[
          INSTALL_DIR,
          ...(state.ownedDirs ?? []).filter((d) => d !== INSTALL_DIR && !keep.includes(d)),
        ].filter((d) => !result.left.some((l) => l.path === d || l.path.startsWith(`${d}/`))),
      );
    } else {
      for (const version of await listVersions(root)) {
        if (used.some((p) => p.startsWith(`${VERSIONS_DIR}/${version}/`))) result.inUse.push(version);
      }
      log.warn(
        { versions: result.inUse, paths: used.slice(0, 5) },
        "cloudhv pods still run on this node: /opt/cloudhv stays until they are gone (run uninstall again then)",
      );
    }
  }

  // 5. Off again: an installer that labeled in the meantime does not leave the label behind.
  if (opts.nodeName && opts.labeler)
    await unlabel().catch((err: Error) =>
      log.warn({ err: err.message }, "could not check the node label again"),
    );
  log.info({ restored: result.restored, removed: result.removed }, "cloudhv uninstalled");
  if (restartFailure) throw restartFailure;
  return result;
}

/** What the shim daemon and its front make in state_dir (shim/src: launcher, front, pod, vmm, state). */
const SHIM_STATE_ENTRY =
  /^(?:vm|pods|records|creating|backend|vmm|pool|scratch-budget(?:\.[\w.-]+)?|shim-[0-9a-f]{16}\.(?:sock(?:\.lock)?|log(?:\.\d+)?))$/;

/** The names in a state_dir that was there before cloudhv; undefined when there are too many to record. */
async function stateDirSnapshot(root: HostRoot, dir: string): Promise<InstallerState["sharedStateDir"]> {
  const names = await readdir(root.path(dir)).catch(() => [] as string[]);
  return names.length > 4096 ? undefined : { dir, before: names.sort() };
}

/**
 * In a state_dir that existed before cloudhv: removes the shim's entries that were not there
 * then (as a created directory: never through a mount or a link), leaves everything else.
 */
async function removeShimEntries(
  root: HostRoot,
  shared: NonNullable<InstallerState["sharedStateDir"]>,
  log: Logger,
): Promise<Array<{ path: string; reason: string }>> {
  const left: Array<{ path: string; reason: string }> = [];
  const before = new Set(shared.before);
  for (const name of await readdir(root.path(shared.dir)).catch(() => [] as string[])) {
    if (before.has(name) || !SHIM_STATE_ENTRY.test(name)) continue;
    const hostPath = path.posix.join(shared.dir, name);
    const st = await lstat(root.path(hostPath)).catch(() => undefined);
    if (!st) continue;
    if (!st.isDirectory()) {
      await rm(root.path(hostPath), { force: true });
      continue;
    }
    const outcome = await removeOwnedTree(root.path(hostPath), { requireMarker: false });
    for (const k of outcome.kept) {
      const p = path.posix.join("/", path.relative(root.root, k.path));
      left.push({ path: p, reason: k.reason });
      log.error({ path: p, reason: k.reason }, "left in place: not removed by uninstall");
    }
  }
  return left;
}

/**
 * Shim daemons with no VM left (no child processes but idle warm-pool VMs and the daemon's own
 * pod network helper, cloudhv-net) would linger for their idle timeout and
 * keep /opt/cloudhv in use: stop them (each one's front, its parent, exits after it). One that
 * still has VMs keeps running, and its version stays on disk with it.
 */
async function stopIdleDaemons(log: Logger, proc = "/proc", graceMs = 5000): Promise<void> {
  // pid → [ppid, state] for every process, zombies left out (they hold nothing).
  const scan = async () => {
    const out = new Map<string, { ppid: string; daemon: boolean; front: boolean; idle: boolean }>();
    for (const pid of (await readdir(proc).catch(() => [] as string[])).filter((p) => /^\d+$/.test(p))) {
      const stat = await readFile(`${proc}/${pid}/stat`, "utf8").catch(() => "");
      const [state, ppid] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (!ppid || state === "Z") continue;
      const cmdline = (await readFile(`${proc}/${pid}/cmdline`, "utf8").catch(() => "")).split("\0");
      const daemon =
        cmdline.some((w) => w.startsWith(`${INSTALL_DIR}/versions/`)) &&
        // bin/daemon.js since 0.1; daemon/main.js in versions before it (still running after an upgrade).
        cmdline.some((w) => w.endsWith("/bin/daemon.js") || w.endsWith("/daemon/main.js"));
      const front = cmdline.some((w) => w.endsWith("/bin/front.js"));
      // An idle warm-pool VM (pod/pool.ts): its VM dir, its cwd's parent, holds the pool's marker.
      // It serves no pod and goes with its daemon, so it does not make the daemon busy.
      const poolVm = await access(`${proc}/${pid}/cwd/../pool.json`).then(
        () => true,
        () => false,
      );
      // The daemon's one netlink helper lives as long as the daemon, pods or not.
      const netHelper = path.basename(cmdline[0] ?? "") === "cloudhv-net";
      out.set(pid, { ppid, daemon, front, idle: poolVm || netHelper });
    }
    return out;
  };
  // A pod deleted a moment ago may still be taking its VM down: give VMs a few seconds.
  const deadline = Date.now() + graceMs;
  let procs = await scan();
  const busy = () =>
    [...procs]
      .filter(([pid, p]) => p.daemon && [...procs.values()].some((c) => c.ppid === pid && !c.idle))
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
    const gone = async (which: string) => {
      const stat = await readFile(`${proc}/${which}/stat`, "utf8").catch(() => "");
      return stat === "" || stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
    };
    // The daemon's status-0 exit ends its front, which also runs from the version directory.
    const waitFor = [pid, ...(procs.get(p.ppid)?.front ? [p.ppid] : [])];
    for (const which of waitFor)
      for (let i = 0; i < 50 && !(await gone(which)); i++) await new Promise((r) => setTimeout(r, 100));
  }
}

/** The shim's state_dir when the runtime config names none (shim/src/config.ts). */
const DEFAULT_STATE_DIR = "/run/cloudhv";

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
  /** What containerd loads (its config and imports; for k3s/rke2 the config they generated). */
  containerd: {
    files: string[];
    /** The file the `cloudhv` runtime comes from, if any. */
    runtimeFrom: string | undefined;
    /** "ours": the installer's runtime; "other": a different `cloudhv` runtime; "absent". */
    runtime: "ours" | "other" | "absent";
    /** k3s/rke2: whether the template (rendered at their next start) has our block. */
    templateHasRuntime?: boolean;
  };
  /** true/false: what containerd's CRI says; undefined: it did not answer. */
  handlerLive: boolean | undefined;
  /** The `cloudhv` command (doctor) installed at /opt/cloudhv/bin/cloudhv. */
  cli: string | undefined;
  uninstalling: boolean;
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
  const containerd: StatusReport["containerd"] = { files: [], runtimeFrom: undefined, runtime: "absent" };
  let live: boolean | undefined;
  let address = "";
  try {
    const target = await detectTarget(root, {
      configPath: opts.containerdConfig,
      version: opts.configVersion ?? state?.configVersion,
    });
    address = target.address;
    const loadedPath = target.generatedPath ?? target.configPath;
    const text = (await readIfExists(root.path(loadedPath)))?.toString("utf8");
    if (text !== undefined) {
      const effective = effectiveRuntime(await loadWithImports(root, loadedPath, text), target.version);
      containerd.files = effective.files;
      containerd.runtimeFrom = effective.from;
      containerd.runtime = !effective.table ? "absent" : isOurRuntime(effective.table) ? "ours" : "other";
      for (const m of effective.missing)
        problems.push(`containerd's config imports ${m}, which does not exist`);
    }
    if (target.generatedPath) {
      const template = (await readIfExists(root.path(target.configPath)))?.toString("utf8");
      containerd.templateHasRuntime = template?.includes(BLOCK_BEGIN) ?? false;
    }
    live = await handlerLive(opts, target);
  } catch (err) {
    problems.push((err as Error).message);
  }
  if (!state) problems.push("not installed (no installer state)");
  else if (state.files.length === 0 && containerd.runtime !== "ours")
    problems.push("the installer has not registered the cloudhv runtime with containerd");
  if (state?.uninstalling)
    problems.push(`an uninstall started ${state.uninstalling.since} (pid ${state.uninstalling.pid})`);
  if (!version) problems.push("no current version in /opt/cloudhv");
  if (containerd.runtime === "other")
    problems.push(
      `containerd loads a "${HANDLER}" runtime from ${containerd.runtimeFrom} that is not the installer's`,
    );
  else if (containerd.runtime === "absent" && state) {
    if (containerd.templateHasRuntime)
      problems.push(
        `${state.flavor} renders the cloudhv runtime into its containerd config at its next restart: restart ${state.flavor}`,
      );
    else problems.push("the config containerd loads has no cloudhv runtime");
  }
  if (live === undefined && address) problems.push(`containerd does not answer at ${address}`);
  if (live === false)
    problems.push(
      containerd.runtime === "ours"
        ? "containerd's config has the cloudhv runtime but containerd does not serve it yet: restart containerd"
        : "containerd does not serve the cloudhv handler",
    );
  if (!(await exists(root.path(LAUNCHER)))) problems.push(`${LAUNCHER} is missing`);
  const cli = (await exists(root.path(CLI_LAUNCHER))) ? CLI_LAUNCHER : undefined;
  return {
    installed: problems.length === 0,
    version,
    previous: await previousVersion(root),
    versions: await listVersions(root),
    flavor: state?.flavor,
    configFiles,
    containerd,
    handlerLive: live,
    cli,
    uninstalling: state?.uninstalling !== undefined,
    problems,
  };
}
