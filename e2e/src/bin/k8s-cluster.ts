#!/usr/bin/env node
// cloudhv-k8s-cluster: the Kubernetes e2e's single-node cluster (../k8s/cluster.ts) by hand.
//   up    builds nothing (see e2e/k8s/cluster.sh), starts the cluster, prints KUBECONFIG and stays
//         in the foreground until SIGTERM or Ctrl-C, then tears everything down
//   down  tears down a cluster left behind (or asks the running `up` to stop)
import { readFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { Command } from "commander";
import { CLUSTER_DIR, LocalCluster } from "../k8s/cluster.js";
import { k8sBinaries } from "../k8s/target.js";

const log = (line: string) => console.error(`k8s: ${line}`);

async function binaries() {
  const bin = await k8sBinaries();
  if ("missing" in bin) throw new Error(bin.missing);
  return bin;
}

const program = new Command().name("cloudhv-k8s-cluster").description("single-node Kubernetes for the e2e");

program
  .command("up")
  .description("start the cluster; stays in the foreground, Ctrl-C or SIGTERM tears it down")
  .action(async () => {
    const cluster = await LocalCluster.up(await binaries(), { log });
    console.log(`export KUBECONFIG=${cluster.kubeconfig}`);
    let stopping = false;
    const stop = async () => {
      if (stopping) return;
      stopping = true;
      const problems = await cluster.down();
      log(`down${problems.length ? `: ${problems.join("; ")}` : ""}`);
      process.exit(problems.length ? 1 : 0);
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
    // Signal listeners do not keep Node alive: a timer does.
    for (;;) await sleep(3_600_000);
  });

program
  .command("down")
  .description("stop the running `up` (SIGTERM), or tear down what a dead one left")
  .action(async () => {
    const text = await readFile(`${CLUSTER_DIR}/state.json`, "utf8").catch(() => undefined);
    const owner = text ? (JSON.parse(text) as { owner: number }).owner : undefined;
    if (owner && owner !== process.pid) {
      try {
        process.kill(owner, "SIGTERM");
        for (let i = 0; i < 600; i++) {
          await sleep(500);
          process.kill(owner, 0);
        }
      } catch {
        // gone (or never there): whatever is left is cleaned up below
      }
    }
    const left = await LocalCluster.cleanupLeftover(await binaries(), log);
    log(left ? "cleaned up" : "no cluster");
  });

await program.parseAsync();
