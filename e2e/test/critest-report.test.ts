// critest's report and our comparison, without critest: the Ginkgo JSON parser, the table, and
// the known-difference list against the spec names of the pinned critest (no root, no VM).
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { describe, it } from "node:test";
import { REPO_ROOT } from "../src/artifacts.js";
import { type CritestRun, formatTable, NOT_RUNNABLE_HERE, parseGinkgoReport } from "../src/critest.js";
import { FIXED_DIFFERENCES, KNOWN_DIFFERENCES, knownDifference } from "../src/critest-known.js";

const SPECS_FILE = path.join(REPO_ROOT, "e2e/critest/specs-v1.37.0.txt");

async function pinnedSpecs(): Promise<string[]> {
  return (await readFile(SPECS_FILE, "utf8")).split("\n").filter((l) => l && !l.startsWith("#"));
}

const report = (specs: object[]) =>
  JSON.stringify([{ SuiteDescription: "CRI validation", SpecReports: specs }]);

describe("critest report", () => {
  it("keeps only It specs, names them by their containers' texts, maps Ginkgo's states", () => {
    const specs = parseGinkgoReport(
      report([
        { LeafNodeType: "BeforeSuite", State: "passed", RunTime: 1 },
        {
          ContainerHierarchyTexts: [
            "[k8s.io] Container",
            "runtime should support basic operations on container",
          ],
          LeafNodeType: "It",
          LeafNodeText: "runtime should support stopping container [Conformance]",
          State: "failed",
          RunTime: 30_500_000_000,
          Failure: { Message: `Expected\n    <int32>: 137\nto equal 143 ${"x".repeat(400)}` },
        },
        {
          ContainerHierarchyTexts: ["A"],
          LeafNodeType: "It",
          LeafNodeText: "b",
          State: "passed",
          RunTime: 2e8,
        },
        { ContainerHierarchyTexts: null, LeafNodeType: "It", LeafNodeText: "c", State: "skipped" },
        { ContainerHierarchyTexts: ["A"], LeafNodeType: "It", LeafNodeText: "d", State: "timedout" },
        { ContainerHierarchyTexts: ["A"], LeafNodeType: "It", LeafNodeText: "e", State: "pending" },
      ]),
    );
    assert.deepEqual(
      specs.map((s) => [s.name, s.state]),
      [
        [
          "[k8s.io] Container runtime should support basic operations on container runtime should support stopping container [Conformance]",
          "failed",
        ],
        ["A b", "passed"],
        ["c", "skipped"],
        ["A d", "failed"],
        ["A e", "skipped"],
      ],
    );
    assert.equal(specs[0]?.seconds, 30.5);
    assert.match(specs[0]?.failure ?? "", /^Expected <int32>: 137 to equal 143 x+…$/, "folded and cut");
    assert.equal(specs[3]?.failure, "timedout", "a failure without a message names the state");
  });

  it("bounds a long failure line and refuses a report that is not an array", () => {
    const [spec] = parseGinkgoReport(
      report([
        { LeafNodeType: "It", LeafNodeText: "x", State: "failed", Failure: { Message: "y".repeat(5000) } },
      ]),
    );
    assert.ok((spec?.failure?.length ?? 0) <= 201, "cut to 200 characters and a mark");
    assert.throws(() => parseGinkgoReport("{}"), /array of suite reports/);
  });

  it("tables runc beside cloudhv, drops specs skipped by both, counts each run", () => {
    const run = (handler: string, states: Record<string, "passed" | "failed" | "skipped">): CritestRun => ({
      handler,
      specs: Object.entries(states).map(([name, state]) => ({ name, state, seconds: 1 })),
      seconds: 60,
      code: 1,
      logPath: "/dev/null",
    });
    const table = formatTable(
      [
        run("runc", { a: "passed", b: "passed", c: "skipped" }),
        run("cloudhv", { a: "passed", b: "failed", c: "skipped" }),
      ],
      (name) => (name === "b" ? "known" : undefined),
    );
    assert.deepEqual(table.split("\n"), [
      "spec | runc | cloudhv | note",
      "a | passed | passed | ",
      "b | passed | failed | known",
      "runc: 2 passed, 0 failed, 1 skipped in 60 s",
      "cloudhv: 1 passed, 1 failed, 1 skipped in 60 s",
    ]);
  });
});

describe("known differences and skips against critest v1.37.0's specs", () => {
  it("every known difference names at least one spec, and no spec has two", async () => {
    const specs = await pinnedSpecs();
    assert.ok(specs.length > 100, `${SPECS_FILE} lists ${specs.length} specs`);
    for (const k of KNOWN_DIFFERENCES)
      assert.ok(
        specs.some((s) => k.pattern.test(s)),
        `pattern ${k.pattern} (${k.cause}) matches no spec of critest v1.37.0`,
      );
    for (const s of specs) {
      const matching = KNOWN_DIFFERENCES.filter((k) => k.pattern.test(s));
      assert.ok(matching.length <= 1, `${s} matches ${matching.map((k) => k.cause).join(" and ")}`);
    }
    assert.equal(
      knownDifference(
        "[k8s.io] Container runtime should support basic operations on container runtime should support starting container [Conformance]",
      ),
      undefined,
    );
  });

  it("every fixed difference names a spec of critest v1.37.0 and none is a known difference", async () => {
    const specs = await pinnedSpecs();
    for (const p of FIXED_DIFFERENCES) {
      const matching = specs.filter((s) => p.test(s));
      assert.ok(matching.length > 0, `fixed difference ${p} matches no spec of critest v1.37.0`);
      for (const s of matching) assert.equal(knownDifference(s), undefined, `${s} is both fixed and known`);
    }
  });

  it("every spec skipped as not runnable here exists", async () => {
    const specs = await pinnedSpecs();
    for (const skip of NOT_RUNNABLE_HERE)
      assert.ok(
        specs.some((s) => new RegExp(skip.pattern).test(s)),
        `skip ${skip.pattern} matches no spec`,
      );
  });
});
