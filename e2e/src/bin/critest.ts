#!/usr/bin/env node
// cloudhv-critest: upstream critest against the local harness, once per runtime handler (runc
// and cloudhv by default, same containerd), then a per-spec table of the runs side by side.
import { writeFile } from "node:fs/promises";
import { Command } from "commander";
import { type CritestRun, critestTools, formatTable, runCritest, startCritestEnv } from "../critest.js";
import { knownDifference } from "../critest-known.js";

const program = new Command()
  .name("cloudhv-critest")
  .description("Runs upstream critest (cri-tools) with each runtime handler and compares the results.")
  .option("--handler <name...>", "runtime handlers, in order", ["runc", "cloudhv"])
  .option("--focus <regexp...>", "only specs matching one of these (-ginkgo.focus)")
  .option("--skip <regexp...>", "leave out specs matching one of these (-ginkgo.skip)")
  .option("--conformance", "only the [Conformance] specs")
  .option("--json <file>", "also write the runs (every spec, state, seconds, failure) as JSON here")
  .option("--timeout-min <n>", "per-handler limit in minutes", "60")
  .action(
    async (opts: {
      handler: string[];
      focus?: string[];
      skip?: string[];
      conformance?: boolean;
      json?: string;
      timeoutMin: string;
    }) => {
      const tools = await critestTools();
      if ("missing" in tools) throw new Error(`${tools.missing}`);
      const focus = [...(opts.focus ?? []), ...(opts.conformance ? ["\\[Conformance\\]"] : [])];
      console.error("critest: building and pushing the test images, starting the harness…");
      await using env = await startCritestEnv(tools);
      const runs: CritestRun[] = [];
      for (const handler of opts.handler) {
        console.error(`critest: handler ${handler}…`);
        const run = await runCritest(env, tools, {
          handler,
          focus,
          skip: opts.skip ?? [],
          timeoutMs: Number(opts.timeoutMin) * 60_000,
          onLine: (line) => {
            // Ginkgo's one-line-per-spec progress marks: • passed, S skipped, [FAIL] failed.
            if (/^\s*(•|\[FAIL\]|\[FAILED\])/.test(line)) console.error(`  ${handler}: ${line.trim()}`);
          },
        });
        console.error(
          `critest: handler ${handler} done in ${Math.round(run.seconds)} s (critest exit ${run.code})`,
        );
        runs.push(run);
      }
      console.log(formatTable(runs, (name) => knownDifference(name)?.reason));
      if (opts.json) await writeFile(opts.json, `${JSON.stringify(runs, null, 2)}\n`);
    },
  );

program.parseAsync().catch((err: unknown) => {
  console.error(`cloudhv-critest: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
