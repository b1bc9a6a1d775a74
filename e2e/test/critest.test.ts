// Upstream CRI conformance: critest (cri-tools) with runc, then with cloudhv, on the same
// harness containerd. Every spec runc passes must pass on cloudhv too, except the known
// differences of e2e/src/critest-known.ts (each with its reason); a known one that passes makes
// this test fail so that the list shrinks. By default the [Conformance] specs and the known
// differences run (about a third of the suite); CLOUDHV_CRITEST_FULL=1 runs every spec.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import path from "node:path";
import { describe, it, type TestContext } from "node:test";
import { type CritestRun, critestTools, formatTable, runCritest, startCritestEnv } from "../src/critest.js";
import { FIXED_DIFFERENCES, KNOWN_DIFFERENCES, knownDifference } from "../src/critest-known.js";
import { processesMatching } from "../src/leaks.js";

const FULL = process.env.CLOUDHV_CRITEST_FULL === "1";

/** -ginkgo.focus for the default scope: the conformance specs, the known and the fixed differences. */
function defaultFocus(): string[] {
  return [
    "\\[Conformance\\]",
    ...KNOWN_DIFFERENCES.map((k) => k.pattern.source),
    ...FIXED_DIFFERENCES.map((p) => p.source),
  ];
}

/** The warm pool's size for the run with the pool on (issue 17): pods then take pool VMs. */
const POOL = 2;

describe("critest: cloudhv passes what runc passes (issue 16), with the warm pool off and on (issue 17)", () => {
  it(`${FULL ? "every spec" : "[Conformance] and the known differences"}: runc vs cloudhv, pool off and on`, async (t: TestContext) => {
    if (process.getuid?.() !== 0) return t.skip("needs root (containerd, CNI, VMs)");
    const tools = await critestTools();
    if ("missing" in tools) return t.skip(`critest is not built: ${tools.missing}`);
    const focus = FULL ? [] : defaultFocus();
    const runs: CritestRun[] = [];
    // runc and cloudhv on one harness; cloudhv again on a second one whose runtime has a pool.
    for (const [handlers, runtimeConfig] of [
      [["runc", "cloudhv"], undefined],
      [["cloudhv"], { pool: POOL }],
    ] as const) {
      const env = await startCritestEnv(tools, runtimeConfig ? { runtimeConfig } : {});
      try {
        for (const handler of handlers) {
          const run = await runCritest(env, tools, { handler, focus, timeoutMs: 45 * 60_000 });
          if (runtimeConfig) run.handler = `${handler} (pool ${POOL})`;
          t.diagnostic(
            `${run.handler}: critest exit ${run.code} in ${Math.round(run.seconds)} s; log ${run.logPath}`,
          );
          runs.push(run);
        }
      } finally {
        const vms = path.join(env.harness.runtime.stateDir, "vm");
        await env.stop();
        assert.deepEqual(await processesMatching(vms), [], "no VM of this run is left");
        assert.equal(existsSync(env.dir), false, "the run's directory (registry log, reports) is gone");
        assert.equal(existsSync(env.harness.dir), false, "the harness's directory is gone");
      }
    }
    const [runc, ...cloudhvRuns] = runs as [CritestRun, CritestRun, CritestRun];
    const table = formatTable(runs, (name) => knownDifference(name)?.cause);
    for (const line of table.split("\n")) t.diagnostic(line);

    const passedOnRunc = runc.specs.filter((s) => s.state === "passed");
    assert.ok(
      passedOnRunc.length >= 10,
      `runc passed only ${passedOnRunc.length} specs: the harness is broken`,
    );
    for (const cloudhv of cloudhvRuns) {
      const onCloudhv = new Map(cloudhv.specs.map((s) => [s.name, s]));
      const unexpected: string[] = [];
      const nowPassing: string[] = [];
      for (const spec of passedOnRunc) {
        const other = onCloudhv.get(spec.name);
        const known = knownDifference(spec.name);
        if (other?.state === "passed") {
          if (known) nowPassing.push(`${spec.name} (listed as "${known.cause}")`);
        } else if (!known) {
          unexpected.push(
            `${spec.name}: ${other?.state ?? "not run"}${other?.failure ? `: ${other.failure}` : ""}`,
          );
        }
      }
      assert.deepEqual(
        unexpected,
        [],
        `${cloudhv.handler}: specs runc passes that fail on cloudhv and are not known differences`,
      );
      assert.deepEqual(
        nowPassing,
        [],
        `${cloudhv.handler}: known differences that pass on cloudhv now: remove them from e2e/src/critest-known.ts and docs/critest-results.md`,
      );
    }
  });
});
