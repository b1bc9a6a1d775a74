#!/usr/bin/env node
// The front: one per shim daemon identity (build, config, containerd), started by
// `containerd-shim-cloudhv-v1 start` (or `delete`), never by hand. It owns containerd's sockets
// and runs the daemon behind them as its child (front/keeper.ts says why).
import { openSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { Front } from "../front/keeper.js";
import { backendSocketPath, DAEMON_ENTRY } from "../launcher/daemon-address.js";
import { takeLock } from "../launcher/lock.js";
import { jsonLineLog } from "../util/json-log.js";

function arg(name: string): string {
  const i = process.argv.indexOf(`--${name}`);
  const value = i >= 0 ? process.argv[i + 1] : undefined;
  if (!value) throw new Error(`cloudhv shim front: missing --${name}`);
  return value;
}

async function main(): Promise<void> {
  const controlSocket = arg("socket");
  const containerdTtrpc = arg("containerd-ttrpc");
  await mkdir(path.dirname(controlSocket), { recursive: true, mode: 0o711 });
  if (!takeLock(`${controlSocket}.lock`)) return; // another front serves this socket
  const logPath = controlSocket.replace(/\.sock$/, ".log");
  const logFd = openSync(logPath, "a");
  // Not pino (about 10 MB of a small process); the runtime config is the daemon's to read.
  const log = jsonLineLog(logFd, "cloudhv-front");
  const backendControl = backendSocketPath(controlSocket);
  const front = new Front({
    controlSocket,
    backendControl,
    daemon: {
      command: process.execPath,
      args: [DAEMON_ENTRY, "--socket", backendControl, "--containerd-ttrpc", containerdTtrpc],
      outputFd: logFd,
    },
    log,
  });
  const stop = (signal: string) => void front.stop(signal);
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  // The front outlives daemons; a bug of its own must not close containerd's connections.
  process.on("uncaughtException", (err) => log.error({ err }, "front: uncaught exception"));
  process.on("unhandledRejection", (err) => log.error({ err }, "front: unhandled rejection"));
  await front.start();
  log.info({ socket: controlSocket, backend: backendControl, containerd: containerdTtrpc }, "front serving");
  await front.done;
  process.exit(0);
}

main().catch((err: unknown) => {
  process.stderr.write(`cloudhv shim front: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
