// The folder layout is the architecture: folders of shim/src import each other without cycles,
// and no folder is a single file named like it (config/config.ts): such a file stands alone.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const SRC = fileURLToPath(new URL("../../src/", import.meta.url));

/** Every .ts file under shim/src, relative to it. */
function sources(): string[] {
  return (readdirSync(SRC, { recursive: true }) as string[]).filter((f) => f.endsWith(".ts")).sort();
}

/** A file's unit: its top folder, or the file itself when it is at the top. */
const unitOf = (rel: string) => rel.split(path.sep)[0] as string;

function folderGraph(): Map<string, Set<string>> {
  const graph = new Map<string, Set<string>>();
  for (const rel of sources()) {
    const from = unitOf(rel);
    const text = readFileSync(path.join(SRC, rel), "utf8");
    for (const m of text.matchAll(/from "(\.{1,2}\/[^"]+)"/g)) {
      const target = path.relative(SRC, path.resolve(SRC, path.dirname(rel), m[1] as string));
      const to = unitOf(target.replace(/\.js$/, ".ts"));
      if (to !== from) graph.set(from, (graph.get(from) ?? new Set()).add(to));
    }
  }
  return graph;
}

describe("shim/src layout", () => {
  it("has no import cycle between its folders", () => {
    const graph = folderGraph();
    const cycles: string[] = [];
    for (const [from, tos] of graph)
      for (const to of tos) {
        // Is there a way back from `to` to `from`?
        const seen = new Set<string>();
        const stack = [to];
        while (stack.length) {
          const at = stack.pop() as string;
          if (at === from) {
            cycles.push(`${from} → ${to} → … → ${from}`);
            break;
          }
          if (seen.has(at)) continue;
          seen.add(at);
          stack.push(...(graph.get(at) ?? []));
        }
      }
    assert.deepEqual(cycles, []);
  });

  it("has no one-file folder named like its file", () => {
    const byFolder = new Map<string, string[]>();
    for (const rel of sources()) {
      const dir = path.dirname(rel);
      if (dir !== ".") byFolder.set(dir, [...(byFolder.get(dir) ?? []), path.basename(rel, ".ts")]);
    }
    const lonely = [...byFolder].filter(
      ([dir, files]) => files.length === 1 && files[0] === path.basename(dir),
    );
    assert.deepEqual(lonely, []);
  });

  it("keeps the front small: no pino, nothing that handles pods, VMs or guests", () => {
    const files = new Set<string>();
    const packages = new Set<string>();
    const stack = [path.join("bin", "front.ts")];
    while (stack.length) {
      const rel = stack.pop() as string;
      if (files.has(rel)) continue;
      files.add(rel);
      const text = readFileSync(path.join(SRC, rel), "utf8");
      for (const m of text.matchAll(/^import (?!type )[^;]*? from "([^"]+)"/gm)) {
        const spec = m[1] as string;
        if (spec.startsWith("."))
          stack.push(path.relative(SRC, path.resolve(SRC, path.dirname(rel), spec)).replace(/\.js$/, ".ts"));
        else if (!spec.startsWith("node:")) packages.add(spec);
      }
    }
    assert.deepEqual([...packages], ["protobufjs"], "the front's only package");
    const units = new Set([...files].map(unitOf));
    assert.deepEqual([...units].sort(), ["bin", "front", "generated", "launcher", "ttrpc", "util"]);
    assert.deepEqual([...files].filter((f) => f.startsWith("util")).sort(), [
      path.join("util", "json-log.ts"),
    ]);
  });
});
