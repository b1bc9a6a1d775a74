// What containerd really loads: its config file and every file its `imports` name (recursively,
// globs expanded, relative paths taken from the importing file's directory, each file once, in
// containerd's order), and from those, where the CRI plugin's runtimes come from.
//
// containerd 1.x (config versions 1 and 2) replaces a plugin's whole table with the one of the
// last file that has it, so the CRI runtimes live in exactly one file: the last one with the
// CRI plugin's table. containerd 2.x (version 3) merges imported tables deeply.
import { readdir } from "node:fs/promises";
import path from "node:path";
import {
  BLOCK_BEGIN,
  type ConfigVersion,
  CRI_RUNTIME_PLUGIN,
  globToRegExp,
  parseToml,
  runtimesPath,
  stripBlock,
} from "./containerd-config.js";
import { readIfExists } from "./fsutil.js";
import { HANDLER, type HostRoot } from "./paths.js";

type Table = Record<string, unknown>;

export interface LoadedFile {
  /** Host path. */
  path: string;
  text: string;
  /** Parsed, with our marked block taken out (what the file means without cloudhv). */
  ownerDoc: Table;
  /** Parsed as it is. */
  doc: Table;
  /** Whether the file has our marked block. */
  hasBlock: boolean;
}

export interface LoadedConfig {
  files: LoadedFile[];
  /** Imports that name no file (containerd 1.x refuses to start with them). */
  missing: string[];
}

function getPath(doc: unknown, keys: readonly string[]): unknown {
  let node = doc;
  for (const k of keys) node = node && typeof node === "object" ? (node as Table)[k] : undefined;
  return node;
}

async function expand(root: HostRoot, entry: string, parentDir: string): Promise<string[]> {
  const abs = path.posix.normalize(entry.startsWith("/") ? entry : path.posix.join(parentDir, entry));
  if (!/[*?[]/.test(abs)) return [abs];
  const dir = path.posix.dirname(abs);
  if (/[*?[]/.test(dir)) return [];
  const names = await readdir(root.path(dir)).catch(() => [] as string[]);
  const re = globToRegExp(abs);
  return names
    .map((n) => path.posix.join(dir, n))
    .filter((p) => re.test(p))
    .sort();
}

/** The config file and its imports, in containerd's load order (breadth first). */
export async function loadWithImports(
  root: HostRoot,
  mainPath: string,
  mainText?: string,
): Promise<LoadedConfig> {
  const files: LoadedFile[] = [];
  const missing: string[] = [];
  const seen = new Set<string>();
  const pending: Array<{ file: string; text?: string | undefined }> = [{ file: mainPath, text: mainText }];
  while (pending.length > 0) {
    const { file, text: given } = pending.shift() as { file: string; text?: string };
    if (seen.has(file)) continue;
    seen.add(file);
    const text = given ?? (await readIfExists(root.path(file)))?.toString("utf8");
    if (text === undefined) {
      if (file !== mainPath) missing.push(file);
      continue;
    }
    const doc = parseToml(text, root.path(file));
    const stripped = stripBlock(text);
    const ownerDoc = stripped === undefined ? doc : parseToml(stripped, root.path(file));
    files.push({ path: file, text, doc, ownerDoc, hasBlock: text.includes(BLOCK_BEGIN) });
    const imports = Array.isArray(doc.imports)
      ? (doc.imports as unknown[]).filter((i) => typeof i === "string")
      : [];
    for (const entry of imports as string[])
      for (const p of await expand(root, entry, path.posix.dirname(file))) pending.push({ file: p });
  }
  return { files, missing };
}

/** containerd 1.x: the file whose CRI plugin table containerd uses (the last one that has it). */
export function criTableOwner(loaded: LoadedConfig, version: ConfigVersion): LoadedFile | undefined {
  const key = ["plugins", CRI_RUNTIME_PLUGIN[version]];
  return loaded.files.filter((f) => getPath(f.doc, key) !== undefined).at(-1);
}

export interface RuntimeDefinition {
  file: string;
  table: Table;
}

/** Files that define a `cloudhv` runtime outside our marked blocks (someone else's, or an old rewrite of ours). */
export function ownerDefinitions(loaded: LoadedConfig, version: ConfigVersion): RuntimeDefinition[] {
  const keys = [...runtimesPath(version), HANDLER];
  const candidates =
    version === 3 ? loaded.files : [criTableOwner(loaded, version)].filter((f): f is LoadedFile => !!f);
  const out: RuntimeDefinition[] = [];
  for (const f of candidates) {
    const table = getPath(f.ownerDoc, keys);
    if (table && typeof table === "object") out.push({ file: f.path, table: table as Table });
  }
  return out;
}

export interface EffectiveRuntime {
  /** The `cloudhv` runtime containerd will load, and the file it comes from (the last that sets it). */
  table: Table | undefined;
  from: string | undefined;
  /** Every file containerd loads, in order. */
  files: string[];
  missing: string[];
}

/** What containerd will load for the `cloudhv` handler when it next starts. */
export function effectiveRuntime(loaded: LoadedConfig, version: ConfigVersion): EffectiveRuntime {
  const keys = [...runtimesPath(version), HANDLER];
  let table: Table | undefined;
  let from: string | undefined;
  if (version === 3) {
    for (const f of loaded.files) {
      const t = getPath(f.doc, keys);
      if (t && typeof t === "object") {
        table = { ...(table ?? {}), ...(t as Table) };
        from = f.path;
      }
    }
  } else {
    const owner = criTableOwner(loaded, version);
    const t = owner ? getPath(owner.doc, keys) : undefined;
    if (t && typeof t === "object") {
      table = t as Table;
      from = owner?.path;
    }
  }
  return { table, from, files: loaded.files.map((f) => f.path), missing: loaded.missing };
}
