// The artifact bundle (what the installer image carries in /opt/cloudhv-dist) and its life on a
// node: every version is copied whole into /opt/cloudhv/versions/<version>/ (a temporary
// directory renamed into place, then checked against the manifest's hashes), and switching
// versions only swaps small files and links atomically. The previous version stays for
// rollback and for the shim daemon that still serves pods started before an upgrade.
import { randomBytes } from "node:crypto";
import { cp, lstat, mkdir, readdir, readFile, readlink, rename, rm } from "node:fs/promises";
import path from "node:path";
import { z } from "zod";
import { atomicSymlink, atomicWrite, exists, sha256File } from "./fsutil.js";
import {
  BIN_DIR,
  CLI_LAUNCHER,
  CLOUD_HYPERVISOR,
  CURRENT_LINK,
  type HostRoot,
  KERNEL,
  LAUNCHER,
  NET_HELPER,
  PORT_FORWARD,
  PREVIOUS_LINK,
  ROOTFS,
  SHIM_NAME,
  VERSIONS_DIR,
  VIRTIOFSD,
} from "./paths.js";

export const MANIFEST = "manifest.json";

/** Files every bundle has, relative to its root. */
export const REQUIRED_FILES = [
  "node/bin/node",
  "shim/dist/src/bin/shim.js",
  "shim/dist/src/bin/cloudhv.js",
  "vmlinux",
  "rootfs.erofs",
] as const;
const OPTIONAL_CLOUD_HYPERVISOR = "bin/cloud-hypervisor";
const OPTIONAL_VIRTIOFSD = "bin/virtiofsd";
/** The compiled shim launcher (host/launcher); a bundle without one runs the Node.js shim through a script. */
export const OPTIONAL_SHIM_LAUNCHER = "shim/dist/containerd-shim-cloudhv-v1";
const OPTIONAL_PORT_FORWARD = "bin/cloudhv-portfwd";
const OPTIONAL_NET_HELPER = "bin/cloudhv-net";

const manifestSchema = z.strictObject({
  name: z.literal("cloudhv"),
  version: z.string().regex(/^[0-9A-Za-z][0-9A-Za-z.+_-]{0,99}$/, "a version like 0.1.0+3f2a9c1e0b4d"),
  /** relative path → sha256 (hex) of every regular file in the bundle. */
  files: z.record(z.string().min(1), z.string().regex(/^[0-9a-f]{64}$/)),
});

export type Manifest = z.infer<typeof manifestSchema>;

export class ArtifactError extends Error {
  override readonly name = "ArtifactError";
}

export async function readManifest(dir: string): Promise<Manifest> {
  const file = path.join(dir, MANIFEST);
  let doc: unknown;
  try {
    doc = JSON.parse(await readFile(file, "utf8"));
  } catch (err) {
    throw new ArtifactError(`cannot read the artifact manifest ${file}: ${(err as Error).message}`);
  }
  const parsed = manifestSchema.safeParse(doc);
  if (!parsed.success)
    throw new ArtifactError(
      `invalid artifact manifest ${file}: ${z.prettifyError(parsed.error).replaceAll("\n", " ")}`,
    );
  for (const required of REQUIRED_FILES)
    if (!(required in parsed.data.files))
      throw new ArtifactError(`artifact manifest ${file} lacks ${required}: this bundle cannot run the shim`);
  for (const name of Object.keys(parsed.data.files))
    if (path.isAbsolute(name) || path.normalize(name).startsWith(".."))
      throw new ArtifactError(`artifact manifest ${file} names ${name} outside the bundle`);
  return parsed.data;
}

/** Every regular file under `dir` (relative paths, sorted), symlinks excluded. */
async function listFiles(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(path.join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory()) out.push(...(await listFiles(dir, rel)));
    else if (entry.isFile() && rel !== MANIFEST) out.push(rel);
  }
  return out.sort();
}

/** Writes `dir/manifest.json` for the files in `dir` (image builds and tests). */
export async function writeManifest(dir: string, version: string): Promise<Manifest> {
  const files: Record<string, string> = {};
  for (const rel of await listFiles(dir)) files[rel] = await sha256File(path.join(dir, rel));
  const manifest: Manifest = { name: "cloudhv", version, files };
  await atomicWrite(path.join(dir, MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`);
  return readManifest(dir);
}

/** Checks every file of `manifest` in `dir`; returns the first problem, or undefined. */
export async function verifyBundle(dir: string, manifest: Manifest): Promise<string | undefined> {
  for (const [rel, want] of Object.entries(manifest.files)) {
    const file = path.join(dir, rel);
    const got = await sha256File(file).catch(() => undefined);
    if (got === undefined) return `${file} is missing`;
    if (got !== want)
      return `${file} has sha256 ${got.slice(0, 12)}…, the manifest says ${want.slice(0, 12)}…`;
  }
  return undefined;
}

export interface InstalledVersion {
  version: string;
  /** Host path of the version directory. */
  dir: string;
  /** False when this exact version was already installed (and intact). */
  copied: boolean;
}

/** Copies the bundle into versions/<version>/ unless an intact copy is already there. */
export async function installVersion(
  root: HostRoot,
  artifactsDir: string,
  opts: { verified?: boolean } = {},
): Promise<InstalledVersion> {
  const manifest = await readManifest(artifactsDir);
  const problem = opts.verified ? undefined : await verifyBundle(artifactsDir, manifest);
  if (problem) throw new ArtifactError(`artifact bundle ${artifactsDir} is damaged: ${problem}`);
  const hostDir = `${VERSIONS_DIR}/${manifest.version}`;
  const dest = root.path(hostDir);
  if (await exists(dest)) {
    const installed = await readManifest(dest).catch(() => undefined);
    if (installed && (await verifyBundle(dest, manifest)) === undefined && sameFiles(installed, manifest))
      return { version: manifest.version, dir: hostDir, copied: false };
  }
  const versions = root.path(VERSIONS_DIR);
  await mkdir(versions, { recursive: true });
  const incoming = path.join(versions, `.incoming-${manifest.version}-${randomBytes(4).toString("hex")}`);
  try {
    await cp(artifactsDir, incoming, { recursive: true, verbatimSymlinks: true, preserveTimestamps: true });
    const copyProblem = await verifyBundle(incoming, manifest);
    if (copyProblem) throw new ArtifactError(`copy of ${artifactsDir} is damaged: ${copyProblem}`);
    if (await exists(dest)) {
      // A damaged or different copy under the same name: move it aside first, then drop it.
      const stale = path.join(versions, `.stale-${manifest.version}-${randomBytes(4).toString("hex")}`);
      await rename(dest, stale);
      await rm(stale, { recursive: true, force: true });
    }
    await rename(incoming, dest);
  } catch (err) {
    await rm(incoming, { recursive: true, force: true });
    throw err;
  }
  return { version: manifest.version, dir: hostDir, copied: true };
}

function sameFiles(a: Manifest, b: Manifest): boolean {
  const ak = Object.keys(a.files);
  return ak.length === Object.keys(b.files).length && ak.every((k) => a.files[k] === b.files[k]);
}

/** The launcher containerd runs: the bundled node on the bundled shim, nothing from the host but /bin/sh. */
export function launcherScript(version: string): string {
  const dir = `${VERSIONS_DIR}/${version}`;
  return [
    "#!/bin/sh",
    `# ${SHIM_NAME} ${version}: written by cloudhv-installer, replaced on upgrade.`,
    "# Runs the shim of this version with the Node.js runtime bundled with it.",
    `exec ${dir}/node/bin/node ${dir}/shim/dist/src/bin/shim.js "$@"`,
    "",
  ].join("\n");
}

/** `/opt/cloudhv/bin/cloudhv`: the operator's command (`cloudhv doctor`) of this version. */
export function cliLauncherScript(version: string): string {
  const dir = `${VERSIONS_DIR}/${version}`;
  return [
    "#!/bin/sh",
    `# cloudhv ${version} (cloudhv doctor): written by cloudhv-installer, replaced on upgrade.`,
    `exec ${dir}/node/bin/node ${dir}/shim/dist/src/bin/cloudhv.js "$@"`,
    "",
  ].join("\n");
}

/** The version the launcher and the links point at now, if any. */
export async function currentVersion(root: HostRoot): Promise<string | undefined> {
  return versionOfLink(root, CURRENT_LINK);
}

export async function previousVersion(root: HostRoot): Promise<string | undefined> {
  return versionOfLink(root, PREVIOUS_LINK);
}

async function versionOfLink(root: HostRoot, link: string): Promise<string | undefined> {
  const target = await readlink(root.path(link)).catch(() => undefined);
  return target?.startsWith("versions/") ? target.slice("versions/".length) : undefined;
}

/**
 * Makes `version` current: the kernel/rootfs links, the optional cloud-hypervisor and virtiofsd links, the
 * launchers (the shim's and the `cloudhv` command), then `current` (and `previous` → the version that was current before).
 */
export async function activate(root: HostRoot, version: string): Promise<{ previous: string | undefined }> {
  const before = await currentVersion(root);
  const rel = `versions/${version}`;
  const dir = root.path(`${VERSIONS_DIR}/${version}`);
  await mkdir(root.path(BIN_DIR), { recursive: true });
  await atomicSymlink(`${rel}/vmlinux`, root.path(KERNEL));
  await atomicSymlink(`${rel}/rootfs.erofs`, root.path(ROOTFS));
  if (await exists(path.join(dir, OPTIONAL_CLOUD_HYPERVISOR)))
    await atomicSymlink(`../${rel}/${OPTIONAL_CLOUD_HYPERVISOR}`, root.path(CLOUD_HYPERVISOR));
  if (await exists(path.join(dir, OPTIONAL_VIRTIOFSD)))
    await atomicSymlink(`../${rel}/${OPTIONAL_VIRTIOFSD}`, root.path(VIRTIOFSD));
  if (await exists(path.join(dir, OPTIONAL_PORT_FORWARD)))
    await atomicSymlink(`../${rel}/${OPTIONAL_PORT_FORWARD}`, root.path(PORT_FORWARD));
  if (await exists(path.join(dir, OPTIONAL_NET_HELPER)))
    await atomicSymlink(`../${rel}/${OPTIONAL_NET_HELPER}`, root.path(NET_HELPER));
  // containerd runs the compiled launcher where the version has one (it finds shim.js and the
  // bundled node from its own path); else the script.
  if (await exists(path.join(dir, OPTIONAL_SHIM_LAUNCHER)))
    await atomicSymlink(`../${rel}/${OPTIONAL_SHIM_LAUNCHER}`, root.path(LAUNCHER));
  else await atomicWrite(root.path(LAUNCHER), launcherScript(version), 0o755);
  await atomicWrite(root.path(CLI_LAUNCHER), cliLauncherScript(version), 0o755);
  await atomicSymlink(rel, root.path(CURRENT_LINK));
  const previous = before !== undefined && before !== version ? before : await previousVersion(root);
  if (previous !== undefined && previous !== version)
    await atomicSymlink(`versions/${previous}`, root.path(PREVIOUS_LINK));
  return { previous: previous !== version ? previous : undefined };
}

/**
 * Host paths that running processes use (their executable or any argv word), found through
 * /proc. With hostPID the installer sees the node's processes; the paths they show are host
 * paths, so the result can be compared with version directories directly.
 */
export async function pathsInUse(prefix: string, proc = "/proc"): Promise<string[]> {
  const found = new Set<string>();
  for (const pid of await readdir(proc).catch(() => [] as string[])) {
    if (!/^\d+$/.test(pid)) continue;
    const words: string[] = [];
    const cmdline = await readFile(path.join(proc, pid, "cmdline"), "utf8").catch(() => "");
    words.push(...cmdline.split("\0"));
    const exe = await readlink(path.join(proc, pid, "exe")).catch(() => "");
    words.push(exe);
    for (const word of words) if (word.startsWith(prefix)) found.add(word);
  }
  return [...found];
}

/** Versions directories under versions/ (host paths' last component). */
export async function listVersions(root: HostRoot): Promise<string[]> {
  const entries = await readdir(root.path(VERSIONS_DIR), { withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isDirectory() && !e.name.startsWith(".")).map((e) => e.name);
}

export interface PruneResult {
  removed: string[];
  /** Versions that would have been removed but a running process still uses. */
  inUse: string[];
}

/**
 * Removes versions other than `keep` that no running process uses, and leftovers of
 * interrupted copies (`.incoming-*`, `.stale-*`).
 */
export async function pruneVersions(
  root: HostRoot,
  keep: readonly string[],
  proc = "/proc",
): Promise<PruneResult> {
  const versions = root.path(VERSIONS_DIR);
  const entries = await readdir(versions, { withFileTypes: true }).catch(() => []);
  const used = await pathsInUse(`${VERSIONS_DIR}/`, proc);
  const result: PruneResult = { removed: [], inUse: [] };
  for (const entry of entries) {
    if (entry.name.startsWith(".incoming-") || entry.name.startsWith(".stale-")) {
      await rm(path.join(versions, entry.name), { recursive: true, force: true });
      continue;
    }
    if (!entry.isDirectory() || keep.includes(entry.name)) continue;
    const hostDir = `${VERSIONS_DIR}/${entry.name}`;
    if (used.some((p) => p === hostDir || p.startsWith(`${hostDir}/`))) {
      result.inUse.push(entry.name);
      continue;
    }
    await rm(path.join(versions, entry.name), { recursive: true, force: true });
    result.removed.push(entry.name);
  }
  return result;
}

/** Is `link` (host path) a symlink to `target`? */
export async function isLinkTo(root: HostRoot, link: string, target: string): Promise<boolean> {
  try {
    const st = await lstat(root.path(link));
    return st.isSymbolicLink() && (await readlink(root.path(link))) === target;
  } catch {
    return false;
  }
}
