// Smoke test of `npm run bench`: `--quick` runs every figure once on the local harness; this
// checks the JSON document's shape (every figure present, numbers where numbers belong) and
// that nothing outlives it. Timings are the benchmark's business, never a test's.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { processesMatching } from "../src/leaks.js";

const BENCH = fileURLToPath(new URL("../src/bench.js", import.meta.url));
const FIGURES = [
  "podLifecycle",
  "poolLifecycle",
  "hostShim",
  "guestBoot",
  "memory",
  "rootfsPrep",
  "concurrentRootfs",
  "shimStart",
  "burst",
  "sizes",
  "storage",
  "containerdRestart",
  "takeover",
  "hostileGuest",
];

type Doc = Record<string, unknown> & { figures: Record<string, Record<string, unknown>> };

function isStat(x: unknown): boolean {
  const s = x as Record<string, unknown> | null;
  return (
    !!s &&
    ["median", "min", "max", "n"].every((k) => typeof s[k] === "number") &&
    Array.isArray(s.samples) &&
    (s.min as number) <= (s.median as number) &&
    (s.median as number) <= (s.max as number)
  );
}

describe("npm run bench -- --quick", () => {
  let dir: string;
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("writes one JSON document with every figure, a table, and leaves nothing behind", async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-bench-test-"));
    const out = path.join(dir, "bench.json");
    const table = path.join(dir, "bench.md");
    const child = spawn(process.execPath, [BENCH, "--quick", "--out", out, "--table", table], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => {
      stderr += d;
    });
    const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
    assert.equal(code, 0, stderr.slice(-3000));

    const doc = JSON.parse(await readFile(out, "utf8")) as Doc;
    assert.equal(doc.schema, "cloudhv-bench/1");
    assert.match(String(doc.commit), /^([0-9a-f]{40}(-dirty)?|unknown)$/);
    const machine = doc.machine as Record<string, unknown>;
    assert.equal(typeof machine.cores, "number");
    assert.match(String(machine.accel), /^(kvm|tcg)$/);
    assert.match(String(machine.containerdVersion), /containerd/);
    assert.deepEqual(Object.keys(doc.figures).sort(), [...FIGURES].sort());
    for (const name of FIGURES) {
      const f = doc.figures[name] as Record<string, unknown>;
      assert.equal(typeof f.ok, "boolean", name);
      if (!f.ok) assert.equal(typeof f.error, "string", `${name} failed without saying why`);
    }
    const f = doc.figures;
    // The core figures must have worked; the rest must at least be well-formed.
    const cloudhv = f.podLifecycle?.cloudhv as Record<string, unknown>;
    assert.equal(cloudhv.ok, true, String(cloudhv.error));
    assert.ok(isStat(cloudhv.totalMs));
    for (const step of ["runp", "create", "start", "exit", "stop", "rm"])
      assert.ok(isStat((cloudhv.phasesMs as Record<string, unknown>)[step]), step);
    const runc = f.podLifecycle?.runc as Record<string, unknown>;
    assert.ok(runc.ok === true ? isStat(runc.totalMs) : typeof runc.error === "string");
    assert.equal(f.hostShim?.ok, true, String(f.hostShim?.error));
    assert.ok(isStat(f.hostShim?.hostMs) && isStat(f.hostShim?.guestWaitMs));
    assert.ok(Array.isArray(f.hostShim?.hostCostsRanked));
    if (f.guestBoot?.ok) {
      for (const k of ["cloudhv", "debianStock"])
        assert.ok(isStat((f.guestBoot[k] as Record<string, unknown>).bootMs), k);
    }
    const levels = f.memory?.levels as Array<Record<string, unknown>>;
    assert.deepEqual(
      levels.map((l) => l.pods),
      [0, 1, 2],
    );
    for (const l of levels) assert.equal(typeof l.shimRssKiB, "number");
    assert.ok(isStat(f.memory?.vmmRssPerPodKiB) && isStat(f.memory?.guestUsedKiB));
    for (const size of ["small", "large"]) {
      const part = f.rootfsPrep?.[size] as Record<string, Record<string, unknown>>;
      assert.ok(isStat(part.miss?.rootfsMs) && isStat(part.hit?.rootfsMs), size);
    }
    // Correctness, not speed: containers of one uncached image started together share one build.
    assert.equal(f.concurrentRootfs?.succeeded, f.concurrentRootfs?.containers);
    assert.equal(f.concurrentRootfs?.cacheBuilds, 1);
    assert.ok(isStat(f.hostShim?.hostCreateMs));
    const split = f.memory?.vmmRssSplitKiB as Record<string, unknown>;
    for (const part of ["guestRam", "tcgCodeBuffer", "files", "otherAnon"])
      assert.ok(isStat(split[part]), part);
    assert.ok(isStat(f.shimStart?.wallMs));
    const leftovers = f.burst?.leftovers as Record<string, number>;
    for (const [what, n] of Object.entries(leftovers)) assert.equal(n, 0, `burst left ${n} ${what}`);
    assert.equal(f.burst?.succeeded, f.burst?.pods);
    // The burst meets the warm pool at its default size (1), as a node would.
    assert.equal(f.burst?.pool, 1);
    assert.equal(typeof f.burst?.poolHits, "number");
    for (const k of ["kernelBytes", "rootfsBytes"]) assert.equal(typeof f.sizes?.[k], "number", k);
    const installer = f.sizes?.installerImage as Record<string, unknown>;
    assert.ok(typeof installer.bytes === "number" || typeof installer.reason === "string");

    // Storage: a rate for every operation on every target (runc may fail, saying why).
    for (const target of ["virtiofs", "scratchDisk", "runc"]) {
      const t = f.storage?.[target] as Record<string, unknown>;
      if (target === "runc" && t.ok !== true) {
        assert.equal(typeof t.error, "string");
        continue;
      }
      assert.equal(t.ok, true, `${target}: ${String(t.error)}`);
      for (const k of ["writeMiBps", "readMiBps", "createPerS", "statPerS"])
        assert.ok(isStat(t[k]), `${target} ${k}`);
    }

    // The table names every figure; the harness and everything in it are gone.
    const md = await readFile(table, "utf8");
    for (const n of ["1.", "2.", "3.", "4.", "5.", "6.", "7.", "8.", "9."])
      assert.ok(md.includes(`| ${n}`), n);
    const harnessDir = String(doc.harnessDir);
    assert.ok(harnessDir.startsWith("/"), "the document names its harness dir");
    assert.equal(existsSync(harnessDir), false);
    assert.deepEqual(await processesMatching(harnessDir), []);
  });
});
