#!/usr/bin/env node
// cloudhv-harness: a private containerd (CRI on, `cloudhv` and `runc` handlers, CNI bridge)
// running this working tree's shim and guest, for poking at with ctr or a CRI client.
//   up    starts it and stays in the foreground until `down`, SIGTERM or Ctrl-C
//   env   prints the socket addresses of the running harness (eval-able)
//   down  stops the running harness and removes everything it made
import { readFile, rm, writeFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { Command } from "commander";
import { startHarness } from "../harness.js";
import { BUSYBOX_IMAGE } from "../oci-image.js";

const DEFAULT_STATE = "/run/cloudhv-harness.json";

interface HarnessState {
  pid: number;
  address: string;
  ttrpcAddress: string;
  dir: string;
  bridge: string;
  gateway: string;
  images: string[];
}

async function readState(file: string): Promise<HarnessState> {
  try {
    return JSON.parse(await readFile(file, "utf8")) as HarnessState;
  } catch {
    throw new Error(`no harness is running (no state file ${file}); start one with: cloudhv-harness up`);
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function envLines(state: HarnessState): string {
  return [
    `export CONTAINERD_ADDRESS=${state.address}`,
    `export CONTAINER_RUNTIME_ENDPOINT=unix://${state.address}`,
    `export CLOUDHV_HARNESS_DIR=${state.dir}`,
  ].join("\n");
}

const program = new Command()
  .name("cloudhv-harness")
  .description("A private containerd running the cloudhv runtime from this working tree.")
  .option("--state <file>", "where the running harness is recorded", DEFAULT_STATE);

program
  .command("up")
  .description("start the harness and keep it running in the foreground")
  .action(async () => {
    const stateFile = program.opts<{ state: string }>().state;
    try {
      const existing = await readState(stateFile);
      if (alive(existing.pid))
        throw new Error(`a harness already runs (pid ${existing.pid}); stop it with: cloudhv-harness down`);
    } catch (err) {
      if (!(err as Error).message.startsWith("no harness")) throw err;
    }
    console.error("cloudhv-harness: starting containerd, importing images…");
    const harness = await startHarness({ images: [BUSYBOX_IMAGE] });
    const state: HarnessState = {
      pid: process.pid,
      address: harness.containerd.address,
      ttrpcAddress: harness.containerd.ttrpcAddress,
      dir: harness.dir,
      bridge: harness.bridge,
      gateway: harness.gateway,
      images: [BUSYBOX_IMAGE],
    };
    await writeFile(stateFile, JSON.stringify(state, null, 2));
    console.log(envLines(state));
    console.error(
      `cloudhv-harness: up. Try:\n  ctr --address ${state.address} -n k8s.io run --rm --runtime io.containerd.cloudhv.v1 ${BUSYBOX_IMAGE} t1 sh -c 'uname -a'\n` +
        "Stop it with: cloudhv-harness down",
    );
    const stop = async (signal: string) => {
      console.error(`cloudhv-harness: ${signal}: stopping`);
      await harness.stop();
      await rm(stateFile, { force: true });
      process.exit(0);
    };
    process.once("SIGTERM", () => void stop("SIGTERM"));
    process.once("SIGINT", () => void stop("SIGINT"));
    setInterval(() => {}, 1 << 30);
  });

program
  .command("env")
  .description("print the running harness's addresses as shell exports")
  .action(async () => {
    console.log(envLines(await readState(program.opts<{ state: string }>().state)));
  });

program
  .command("down")
  .description("stop the running harness; nothing it made is left behind")
  .action(async () => {
    const stateFile = program.opts<{ state: string }>().state;
    const state = await readState(stateFile);
    if (alive(state.pid)) {
      process.kill(state.pid, "SIGTERM");
      const deadline = Date.now() + 60_000;
      while (alive(state.pid)) {
        if (Date.now() > deadline) throw new Error(`the harness (pid ${state.pid}) did not stop in 60 s`);
        await sleep(100);
      }
    }
    await rm(stateFile, { force: true });
    console.error("cloudhv-harness: down");
  });

program.parseAsync().catch((err: unknown) => {
  console.error(`cloudhv-harness: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
