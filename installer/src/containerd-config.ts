// Registering the cloudhv runtime in containerd's config, and taking it out again.
//
// What we write is one marked block of TOML tables appended to the file, so comments,
// formatting and everything else stay byte-for-byte as the owner wrote them, and uninstall can
// cut exactly that block out again. Every edit is checked by parsing the result with
// smol-toml and comparing it with what the edit should mean; when a text edit cannot express
// the change (an inline `runtimes = {…}` table, a `cloudhv` runtime someone else defined), the
// file is re-serialized from its parsed form instead — values preserved, comments lost, and
// the log says so.
//
// Drop-ins through `imports`: containerd 1.6/1.7 replace a plugin's whole table with an
// imported one (an import that adds one runtime drops every other runtime — checked against
// Debian's containerd 1.6), so version 2 files are edited in place. containerd 2.x merges
// imports deeply, so version 3 files get a drop-in file plus one `imports` line.
import { isDeepStrictEqual } from "node:util";

import { parse, stringify, TomlError } from "smol-toml";
import { HANDLER, LAUNCHER, RUNTIME_TYPE } from "./paths.js";

/** containerd config format: 1 (containerd 1.x without `version`), 2 (1.x), 3 (2.x). */
export type ConfigVersion = 1 | 2 | 3;

/** The CRI plugin that holds `containerd.runtimes` in each format. */
export const CRI_RUNTIME_PLUGIN: Record<ConfigVersion, string> = {
  1: "cri",
  2: "io.containerd.grpc.v1.cri",
  3: "io.containerd.cri.v1.runtime",
};

/** Pod annotations the CRI plugin passes to the runtime: the shim sizes VMs from them. */
export const POD_ANNOTATIONS = ["io.cloudhv.*", "io.katacontainers.*"] as const;

export const BLOCK_BEGIN = "# BEGIN cloudhv-installer";
export const BLOCK_END = "# END cloudhv-installer";

export class ContainerdConfigError extends Error {
  override readonly name = "ContainerdConfigError";
}

type Table = Record<string, unknown>;

export function runtimesPath(version: ConfigVersion): string[] {
  return ["plugins", CRI_RUNTIME_PLUGIN[version], "containerd", "runtimes"];
}

/** Our runtime's table under `containerd.runtimes.cloudhv`. */
export function cloudhvRuntime(): Table {
  return {
    runtime_type: RUNTIME_TYPE,
    runtime_path: LAUNCHER,
    pod_annotations: [...POD_ANNOTATIONS],
    // A privileged pod gets the VM's devices, never the host's.
    privileged_without_host_devices: true,
  };
}

/** containerd's built-in runc runtime, which a `runtimes` table of our own would hide. */
function defaultRunc(): Table {
  return { runtime_type: "io.containerd.runc.v2" };
}

export function parseToml(text: string, source: string): Table {
  try {
    return parse(text) as Table;
  } catch (err) {
    const detail =
      err instanceof TomlError
        ? `line ${err.line}, column ${err.column}: ${err.message.split("\n")[0]}`
        : String(err);
    throw new ContainerdConfigError(
      `${source} is not valid TOML (${detail}); fix it before installing cloudhv`,
    );
  }
}

/** The format a config file declares; undefined when it has no `version` (format 1 on containerd 1.x). */
export function declaredVersion(doc: Table, source: string): ConfigVersion | undefined {
  const v = doc.version;
  if (v === undefined) return undefined;
  if (v === 1 || v === 2 || v === 3) return v;
  throw new ContainerdConfigError(
    `${source} declares version = ${JSON.stringify(v)}; cloudhv knows versions 1, 2 and 3`,
  );
}

function getPath(doc: Table, keys: readonly string[]): unknown {
  let node: unknown = doc;
  for (const key of keys) {
    if (node === null || typeof node !== "object" || Array.isArray(node)) return undefined;
    node = (node as Table)[key];
  }
  return node;
}

function setPath(doc: Table, keys: readonly string[], value: unknown): void {
  let node = doc;
  for (const key of keys.slice(0, -1)) {
    const next = node[key];
    if (next === undefined) node[key] = {};
    else if (typeof next !== "object" || next === null || Array.isArray(next))
      throw new ContainerdConfigError(
        `containerd config: ${keys.join(".")} cannot be set: ${key} is not a table`,
      );
    node = node[key] as Table;
  }
  node[keys[keys.length - 1] as string] = value;
}

function deletePath(doc: Table, keys: readonly string[]): void {
  const parent = getPath(doc, keys.slice(0, -1));
  if (parent && typeof parent === "object") delete (parent as Table)[keys[keys.length - 1] as string];
}

/** Plain objects all the way down (smol-toml's tables have no prototype; comparisons need one kind). */
function plain<T>(value: T): T {
  return value === undefined ? value : (JSON.parse(JSON.stringify(value)) as T);
}

const clone = plain;

function same(a: unknown, b: unknown): boolean {
  return isDeepStrictEqual(plain(a), plain(b));
}

/** TOML key path as a table header: `plugins."io.containerd.grpc.v1.cri".containerd`. */
function header(keys: readonly string[]): string {
  return keys.map((k) => (/^[A-Za-z0-9_-]+$/.test(k) ? k : JSON.stringify(k))).join(".");
}

/** `stringify` of one table's plain key/values (our tables have no sub-tables). */
function tableBody(table: Table): string {
  return stringify(table)
    .trimEnd()
    .split("\n")
    .map((line) => `  ${line}`)
    .join("\n");
}

/** The text of a marked block defining `tables` (key path → table). */
export function renderBlock(tables: ReadonlyArray<[readonly string[], Table]>, why: string): string {
  const lines = [
    `${BLOCK_BEGIN}: ${why}`,
    "# `cloudhv-installer uninstall` removes this block; edits inside it are lost on upgrade.",
  ];
  for (const [keys, table] of tables) lines.push(`[${header(keys)}]`, tableBody(table));
  lines.push(BLOCK_END);
  return `${lines.join("\n")}\n`;
}

/** Removes our marked block (and the blank line we put before it); undefined when there is none. */
export function stripBlock(text: string): string | undefined {
  const begin = text.indexOf(`\n${BLOCK_BEGIN}`);
  const start = text.startsWith(BLOCK_BEGIN) ? 0 : begin === -1 ? -1 : begin + 1;
  if (start === -1) return undefined;
  const endAt = text.indexOf(`${BLOCK_END}`, start);
  if (endAt === -1) throw new ContainerdConfigError(`a "${BLOCK_BEGIN}" block has no "${BLOCK_END}" line`);
  let end = endAt + BLOCK_END.length;
  if (text[end] === "\n") end++;
  let head = text.slice(0, start);
  // We separate the block with one blank line; take it back.
  if (head.endsWith("\n\n")) head = head.slice(0, -1);
  return head + text.slice(end);
}

function appendBlock(text: string, block: string): string {
  if (text.length === 0) return block;
  return `${text.endsWith("\n") ? text : `${text}\n`}\n${block}`;
}

export interface PatchResult {
  text: string;
  /** "text": our block appended, the rest untouched; "rewritten": re-serialized (comments lost). */
  method: "text" | "rewritten" | "unchanged";
  /** Why a rewrite was needed. */
  note?: string;
}

/**
 * Registers the runtime in the file's own text: appends a block with
 * `containerd.runtimes.cloudhv` (and runc, when the file has no runtimes of its own — any
 * `runtimes` table replaces containerd's default one, so runc would otherwise vanish).
 */
export function addRuntime(
  original: string,
  version: ConfigVersion,
  source: string,
  opts: { takeOver?: boolean } = {},
): PatchResult {
  const base = stripBlock(original) ?? original;
  const doc = parseToml(base, source);
  const rtPath = runtimesPath(version);
  const runtimes = getPath(doc, rtPath);
  if (
    runtimes !== undefined &&
    (typeof runtimes !== "object" || runtimes === null || Array.isArray(runtimes))
  )
    throw new ContainerdConfigError(`${source}: ${rtPath.join(".")} is not a table`);
  const existing = (runtimes as Table | undefined) ?? {};
  const expected = clone(doc);
  const tables: Array<[string[], Table]> = [];
  if (Object.keys(existing).length === 0) {
    tables.push([[...rtPath, "runc"], defaultRunc()]);
    setPath(expected, [...rtPath, "runc"], defaultRunc());
  }
  tables.push([[...rtPath, HANDLER], cloudhvRuntime()]);
  setPath(expected, [...rtPath, HANDLER], cloudhvRuntime());
  if (same(getPath(doc, [...rtPath, HANDLER]), cloudhvRuntime()) && base === original)
    return { text: original, method: "unchanged" };

  if (HANDLER in existing) {
    const theirs = existing[HANDLER];
    // Someone's table that is exactly ours (or our own earlier take-over): nothing to do.
    if (same(theirs, cloudhvRuntime())) return { text: original, method: "unchanged" };
    if (!opts.takeOver) throw foreignRuntime(source, theirs);
    return rewrite(
      expected,
      `took over the "${HANDLER}" runtime defined in ${source} (${describeRuntime(theirs)}) because take-over was asked for (--take-over-runtime); uninstall puts the original back`,
    );
  }
  const text = appendBlock(base, renderBlock(tables, `the ${HANDLER} runtime (${RUNTIME_TYPE})`));
  const check = tryParse(text);
  if (check && same(check, expected)) return { text, method: text === original ? "unchanged" : "text" };
  return rewrite(expected, `appending tables to ${source} would not mean the same (inline tables?)`);
}

/** `runtime_type = "…"` of a runtime table, for messages. */
export function describeRuntime(table: unknown): string {
  const type = (table as { runtime_type?: unknown } | undefined)?.runtime_type;
  return typeof type === "string" ? `runtime_type = ${JSON.stringify(type)}` : "no runtime_type";
}

/** The refusal for a `cloudhv` runtime the installer did not write. */
export function foreignRuntime(source: string, table: unknown): ContainerdConfigError {
  return new ContainerdConfigError(
    `${source} already defines a "${HANDLER}" runtime (${describeRuntime(table)}) that cloudhv-installer did not write; it is not replaced silently. Remove or rename that runtime, or let cloudhv take it over with --take-over-runtime (chart: containerd.takeOverRuntime=true): the file is backed up first and uninstall restores it`,
  );
}

/** Takes our runtime out of a file we patched but someone changed since. */
export function removeRuntime(current: string, version: ConfigVersion, source: string): PatchResult {
  const stripped = stripBlock(current);
  if (stripped !== undefined) {
    const doc = tryParse(stripped);
    if (doc) return { text: stripped, method: "text" };
  }
  const doc = parseToml(current, source);
  const keys = [...runtimesPath(version), HANDLER];
  if (getPath(doc, keys) === undefined) return { text: current, method: "unchanged" };
  deletePath(doc, keys);
  return rewrite(doc, `our block in ${source} was edited`);
}

function tryParse(text: string): Table | undefined {
  try {
    return parse(text) as Table;
  } catch {
    return undefined;
  }
}

function rewrite(doc: Table, note: string): PatchResult {
  const text = `# Rewritten by cloudhv-installer (${note}); the original is kept in /opt/cloudhv/backup.\n${stringify(doc)}\n`;
  return { text, method: "rewritten", note };
}

/** A new config file where none was: containerd's defaults plus our runtime. */
export function newConfig(version: ConfigVersion): string {
  const rtPath = runtimesPath(version);
  const head = version === 1 ? "" : `version = ${version}\n\n`;
  return (
    head +
    renderBlock(
      [
        [[...rtPath, "runc"], defaultRunc()],
        [[...rtPath, HANDLER], cloudhvRuntime()],
      ],
      `the ${HANDLER} runtime (${RUNTIME_TYPE}); this file did not exist before`,
    )
  );
}

/** The drop-in file for containerd 2.x (`imports`): only our runtime; containerd merges it deeply. */
export function dropInConfig(): string {
  return `version = 3\n\n${renderBlock([[[...runtimesPath(3), HANDLER], cloudhvRuntime()]], `the ${HANDLER} runtime (${RUNTIME_TYPE})`)}`;
}

/** A path glob (`*`, `?`) as a regular expression; `*` does not cross `/`. */
export function globToRegExp(glob: string): RegExp {
  return new RegExp(
    `^${glob
      .split("")
      .map((c) => (c === "*" ? "[^/]*" : c === "?" ? "[^/]" : c.replace(/[.+^${}()|\\[\]]/g, "\\$&")))
      .join("")}$`,
  );
}

/** Does one of `imports` (paths or `*` globs, relative to `configDir`) name `file`? */
export function importsInclude(imports: readonly string[], file: string, configDir: string): boolean {
  return imports.some((entry) => {
    const abs = entry.startsWith("/") ? entry : `${configDir.replace(/\/$/, "")}/${entry}`;
    if (!abs.includes("*") && !abs.includes("?") && !abs.includes("[")) return abs === file;
    return globToRegExp(abs).test(file);
  });
}

/**
 * Adds `file` to the top-level `imports` of a version 3 config. A new `imports` key goes in as
 * one marked line before the first table (top-level keys must precede tables); an existing
 * array that lacks the file makes us rewrite.
 */
export function addImport(original: string, file: string, configDir: string, source: string): PatchResult {
  const doc = parseToml(original, source);
  const imports = doc.imports;
  if (imports !== undefined && !Array.isArray(imports))
    throw new ContainerdConfigError(`${source}: imports is not an array`);
  if (imports && importsInclude(imports as string[], file, configDir))
    return { text: original, method: "unchanged" };
  const expected = clone(doc);
  expected.imports = [...((imports as string[] | undefined) ?? []), file];
  if (imports === undefined) {
    const line = `imports = [${JSON.stringify(file)}] ${IMPORT_MARK}\n`;
    const lines = original.split("\n");
    const firstTable = lines.findIndex((l) => /^\s*\[/.test(l));
    const at = firstTable === -1 ? lines.length : firstTable;
    const text = [...lines.slice(0, at), line.trimEnd(), ...lines.slice(at)].join("\n");
    const check = tryParse(text);
    if (check && same(check, expected)) return { text, method: "text" };
  }
  return rewrite(expected, `${source} has an imports list without our drop-in`);
}

export const IMPORT_MARK = "# added by cloudhv-installer";

/** Takes `file` out of `imports` again (the marked line, or the entry). */
export function removeImport(current: string, file: string, source: string): PatchResult {
  const lines = current.split("\n");
  const marked = lines.findIndex((l) => l.includes(IMPORT_MARK) && l.includes(JSON.stringify(file)));
  if (marked !== -1) {
    const text = [...lines.slice(0, marked), ...lines.slice(marked + 1)].join("\n");
    if (tryParse(text)) return { text, method: "text" };
  }
  const doc = parseToml(current, source);
  if (!Array.isArray(doc.imports) || !doc.imports.includes(file))
    return { text: current, method: "unchanged" };
  doc.imports = doc.imports.filter((entry) => entry !== file);
  return rewrite(doc, `the imports line in ${source} was edited`);
}

/** Is `table` exactly the runtime the installer registers? */
export function isOurRuntime(table: unknown): boolean {
  return same(table, cloudhvRuntime());
}

/** Is our runtime registered, as we would register it, in this parsed config? */
export function hasRuntime(doc: Table, version: ConfigVersion): boolean {
  return same(getPath(doc, [...runtimesPath(version), HANDLER]), cloudhvRuntime());
}
