#!/usr/bin/env node
// containerd-shim-cloudhv-v1: the binary containerd runs. `start` must stay cheap — it only
// finds (or starts) the node's shim front (which runs the daemon) and prints its address;
// `delete` cleans up a task containerd lost track of. Heavy modules are imported only where needed.
import { spawn } from "node:child_process";
import { openSync, readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import {
  controlSocketOf,
  daemonSocketPath,
  FRONT_ENTRY,
  namespaceSocketPath,
  SHIM_VERSION,
  SOCKET_SCHEME,
} from "../launcher/daemon-address.js";
import { FlagError, parseShimFlags, type ShimInvocation } from "../launcher/flags.js";
import { sandboxAddress } from "../launcher/route.js";
import { mkdirMarked } from "../util/created-dir.js";

const DEFAULT_STATE_DIR = "/run/cloudhv";

/**
 * The runtime config's bytes and its state_dir, read without loading the validator (the daemon
 * validates; a bad file makes the daemon fail with the key named).
 */
function runtimeConfig(): { text: string; stateDir: string } {
  const file = process.env.CLOUDHV_CONFIG ?? "/opt/cloudhv/config.json";
  let text = "";
  try {
    text = readFileSync(file, "utf8");
    const doc = JSON.parse(text) as { state_dir?: unknown };
    return { text, stateDir: typeof doc.state_dir === "string" ? doc.state_dir : DEFAULT_STATE_DIR };
  } catch {
    return { text, stateDir: DEFAULT_STATE_DIR };
  }
}

function controlSocketFor(inv: ShimInvocation): string {
  const config = runtimeConfig();
  return daemonSocketPath(config.stateDir, containerdTtrpcAddress(inv), config.text);
}

function canConnect(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.createConnection({ path: socketPath });
    sock.once("connect", () => {
      sock.destroy();
      resolve(true);
    });
    sock.once("error", () => resolve(false));
  });
}

function containerdTtrpcAddress(inv: ShimInvocation): string {
  const address = process.env.TTRPC_ADDRESS ?? (inv.address ? `${inv.address}.ttrpc` : "");
  if (!address) throw new FlagError("neither TTRPC_ADDRESS nor -address tells where containerd listens");
  return address.replace(/^unix:\/\//, "");
}

async function start(inv: ShimInvocation): Promise<void> {
  if (!inv.namespace) throw new FlagError("start needs -namespace");
  // An app container goes where its pod's VM is, whatever daemon this build would pick today.
  const routed = sandboxAddress(process.cwd());
  if (routed && (await canConnect(routed.slice(SOCKET_SCHEME.length)))) {
    writeFileSync(path.join(process.cwd(), "address"), routed);
    process.stdout.write(routed);
    return;
  }
  const controlSocket = controlSocketFor(inv);
  const nsSocket = namespaceSocketPath(controlSocket, inv.namespace);
  // Fast path: the front already serves this namespace.
  let address = (await canConnect(nsSocket)) ? `${SOCKET_SCHEME}${nsSocket}` : undefined;
  if (!address) {
    if (!(await canConnect(controlSocket))) await spawnFront(controlSocket, containerdTtrpcAddress(inv));
    address = await requestListener(controlSocket, inv.namespace);
  }
  // containerd reconnects through this file after it restarts.
  writeFileSync(path.join(process.cwd(), "address"), address);
  process.stdout.write(address);
}

/**
 * Starts the front for `controlSocket`; it owns containerd's sockets and runs the daemon behind
 * them (bin/front.ts). Returns once its control socket answers.
 */
async function spawnFront(controlSocket: string, ttrpcAddress: string): Promise<void> {
  await mkdirMarked(path.dirname(controlSocket), 0o711);
  const logPath = controlSocket.replace(/\.sock$/, ".log");
  const out = openSync(logPath, "a");
  // The front must not hold our stdout/stderr: containerd reads them to EOF.
  const child = spawn(
    process.execPath,
    [FRONT_ENTRY, "--socket", controlSocket, "--containerd-ttrpc", ttrpcAddress],
    {
      detached: true,
      stdio: ["ignore", out, out],
      cwd: "/",
    },
  );
  child.unref();
  const deadline = Date.now() + 15_000;
  while (!(await canConnect(controlSocket))) {
    if (Date.now() > deadline) throw new Error(`the shim front did not come up in 15 s; see ${logPath}`);
    await sleep(10);
  }
}

async function requestListener(controlSocket: string, namespace: string): Promise<string> {
  const { messageCodec } = await import("../ttrpc/proto.js");
  const { TtrpcClient } = await import("../ttrpc/client.js");
  const request = messageCodec("cloudhv.shim.v1.ListenRequest");
  const response = messageCodec("cloudhv.shim.v1.ListenResponse");
  const client = await TtrpcClient.connect(controlSocket, { timeoutMs: 5000 });
  try {
    // The front answers once its daemon listens: a daemon that is starting (the hypervisor
    // choice may boot a probe guest) or restarting takes a while.
    const reply = await client.call("cloudhv.shim.v1.Admin", "Listen", request.encode({ namespace }), {
      timeoutMs: 25_000,
    });
    return response.decode(reply).address;
  } finally {
    client.close();
  }
}

async function deleteTask(inv: ShimInvocation): Promise<void> {
  const { messageCodec } = await import("../ttrpc/proto.js");
  const { TtrpcClient } = await import("../ttrpc/client.js");
  const { Code, TtrpcError } = await import("../ttrpc/status.js");
  const response = messageCodec("containerd.task.v2.DeleteResponse");
  const request = messageCodec("cloudhv.shim.v1.ForceDeleteRequest");
  // The daemon that started this task wrote its address into the bundle (our cwd); after an
  // upgrade or a config change that is not the daemon `start` would pick today.
  const started = (() => {
    try {
      return controlSocketOf(readFileSync("address", "utf8").trim().replace(SOCKET_SCHEME, ""));
    } catch {
      return undefined;
    }
  })();
  const socketPath = started ?? controlSocketFor(inv);
  const isCurrent = () => {
    try {
      return controlSocketFor(inv) === socketPath;
    } catch {
      return false; // containerd's address unknown: no front can be started anyway
    }
  };
  let reply: Uint8Array | undefined;
  // Nothing listens (the node rebooted, or the front was killed): a front of this build and
  // config is started to ask its daemon, which knows the tasks its records name. A front of
  // another build is not started: its daemon would not read this one's records.
  let reachable = await canConnect(socketPath);
  if (!reachable && isCurrent()) {
    await spawnFront(socketPath, containerdTtrpcAddress(inv));
    reachable = true;
  }
  if (reachable) {
    const client = await TtrpcClient.connect(socketPath, { timeoutMs: 5000 });
    try {
      reply = await client.call(
        "cloudhv.shim.v1.Admin",
        "ForceDelete",
        request.encode({ namespace: inv.namespace, id: inv.id }),
        { timeoutMs: 60_000 },
      );
    } catch (err) {
      // A daemon that does not know the task: nothing of it is left to stop.
      if (!(err instanceof TtrpcError && err.remote && err.code === Code.NOT_FOUND)) throw err;
    } finally {
      client.close();
    }
  }
  if (!reply) {
    // No daemon knows the task: nothing is left to stop.
    const now = Date.now();
    reply = response.encode({
      pid: 0,
      exitStatus: 137,
      exitedAt: { seconds: Math.floor(now / 1000), nanos: 0 },
    });
  }
  process.stdout.write(reply);
}

async function main(): Promise<void> {
  const inv = parseShimFlags(process.argv.slice(2));
  if (inv.version) {
    process.stdout.write(
      `containerd-shim-cloudhv-v1:\n  Version: ${SHIM_VERSION}\n  Runtime: io.containerd.cloudhv.v1\n`,
    );
    return;
  }
  switch (inv.action) {
    case "start":
      return start(inv);
    case "delete":
      return deleteTask(inv);
    default:
      throw new FlagError(
        `unknown action "${inv.action ?? ""}"; containerd runs this binary as ` +
          `"-namespace NS -address ADDR -id ID start|delete" (or -v for the version)`,
      );
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`containerd-shim-cloudhv-v1: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
