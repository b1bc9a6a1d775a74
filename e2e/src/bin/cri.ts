#!/usr/bin/env node
// cloudhv-cri: a small crictl for the harness (or any containerd CRI socket). Pod and container
// configs are crictl's JSON files (snake_case CRI field names).
import { readFile } from "node:fs/promises";
import { Command } from "commander";
import { type ContainerConfig, CriClient, type PodSandboxConfig } from "../cri/client.js";

/** crictl's JSON uses the proto field names; protobufjs wants camelCase. Map keys stay as written. */
function camel(value: unknown, isMap = false): unknown {
  if (Array.isArray(value)) return value.map((v) => camel(v));
  if (value === null || typeof value !== "object") return value;
  return Object.fromEntries(
    Object.entries(value).map(([k, v]) => {
      const key = isMap ? k : k.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
      return [key, camel(v, !isMap && (key === "labels" || key === "annotations" || key === "sysctls"))];
    }),
  );
}

async function readConfig<T>(file: string): Promise<T> {
  try {
    return camel(JSON.parse(await readFile(file, "utf8"))) as T;
  } catch (err) {
    throw new Error(`cannot read CRI config ${file}: ${(err as Error).message}`);
  }
}

const endpoint = (process.env.CONTAINER_RUNTIME_ENDPOINT ?? "").replace(/^unix:\/\//, "");
const program = new Command()
  .name("cloudhv-cri")
  .description("Drive containerd's CRI plugin like crictl does (configs are crictl JSON files).")
  .enablePositionalOptions()
  .option(
    "--address <socket>",
    "containerd socket (default: $CONTAINER_RUNTIME_ENDPOINT, as `cloudhv-harness env` sets it)",
    endpoint || undefined,
  );

function client(): CriClient {
  const address = program.opts<{ address?: string }>().address;
  if (!address) throw new Error("no CRI socket: pass --address or set CONTAINER_RUNTIME_ENDPOINT");
  return new CriClient(address);
}

async function withClient(fn: (cri: CriClient) => Promise<void>): Promise<void> {
  const cri = client();
  try {
    await fn(cri);
  } finally {
    cri.close();
  }
}

program
  .command("runp <pod-config>")
  .description("run a pod sandbox; prints its id")
  .option("--runtime <handler>", "RuntimeClass handler", "cloudhv")
  .action((file: string, opts: { runtime: string }) =>
    withClient(async (cri) =>
      console.log(await cri.runPodSandbox(await readConfig<PodSandboxConfig>(file), opts.runtime)),
    ),
  );

program
  .command("create <pod-id> <container-config> <pod-config>")
  .description("create a container in a pod; prints its id")
  .action((podId: string, containerFile: string, podFile: string) =>
    withClient(async (cri) => {
      const config = await readConfig<ContainerConfig>(containerFile);
      console.log(await cri.createContainer(podId, config, await readConfig<PodSandboxConfig>(podFile)));
    }),
  );

program
  .command("start <container-id>")
  .description("start a created container")
  .action((id: string) => withClient((cri) => cri.startContainer(id)));

program
  .command("exec <container-id> <cmd...>")
  .description("run a command in a container and print its output (ExecSync); exits with its code")
  .passThroughOptions()
  .action((id: string, cmd: string[]) =>
    withClient(async (cri) => {
      const result = await cri.execSync(id, cmd);
      process.stdout.write(result.stdout);
      process.stderr.write(result.stderr);
      process.exitCode = result.exitCode;
    }),
  );

program
  .command("logs <container-id>")
  .description("print a container's log (the CRI log file, timestamps and streams stripped)")
  .action((id: string) =>
    withClient(async (cri) => {
      const status = await cri.containerStatus(id);
      const text = await readFile(status.logPath, "utf8");
      process.stdout.write(text.replace(/^\S+ (stdout|stderr) [FP] /gm, ""));
    }),
  );

program
  .command("inspect <container-id>")
  .description("print a container's status as JSON")
  .action((id: string) =>
    withClient(async (cri) => console.log(JSON.stringify(await cri.containerStatus(id), null, 2))),
  );

program
  .command("stop <container-id>")
  .option("--timeout <s>", "seconds before SIGKILL", "10")
  .description("stop a container")
  .action((id: string, opts: { timeout: string }) =>
    withClient((cri) => cri.stopContainer(id, Number(opts.timeout))),
  );

program
  .command("rm <container-id>")
  .description("remove a container")
  .action((id: string) => withClient((cri) => cri.removeContainer(id)));

program
  .command("pods")
  .description("list pod sandboxes")
  .action(() =>
    withClient(async (cri) => {
      for (const pod of await cri.listPodSandbox())
        console.log(`${pod.id}\t${pod.state}\t${pod.runtimeHandler}`);
    }),
  );

program
  .command("stopp <pod-id>")
  .description("stop a pod sandbox (its containers and its VM)")
  .action((id: string) => withClient((cri) => cri.stopPodSandbox(id)));

program
  .command("rmp <pod-id>")
  .description("remove a stopped pod sandbox")
  .action((id: string) => withClient((cri) => cri.removePodSandbox(id)));

program.parseAsync().catch((err: unknown) => {
  console.error(`cloudhv-cri: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
