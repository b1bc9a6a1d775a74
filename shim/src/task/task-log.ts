// containerd creates a `log` FIFO in each bundle and copies what a shim writes there into its
// own log. One daemon serves every task, so each task gets a logger that writes both to the
// daemon's log and to its bundle's FIFO; a FIFO nobody reads is simply not used.
import { constants, openSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import pino from "pino";
import type { Logger } from "../util/log.js";

export interface TaskLog {
  log: Logger;
  close(): void;
}

export function openTaskLog(
  daemonLog: pino.DestinationStream,
  level: pino.LevelWithSilent,
  bundle: string,
  bindings: Record<string, string>,
): TaskLog {
  const options = { name: "cloudhv-shim", level, base: { pid: process.pid, ...bindings } };
  let fifo: net.Socket;
  try {
    const fd = openSync(path.join(bundle, "log"), constants.O_WRONLY | constants.O_NONBLOCK);
    fifo = new net.Socket({ fd, readable: false, writable: true });
  } catch {
    return { log: pino(options, daemonLog), close() {} };
  }
  // containerd going away (a restart) must not take the task down: drop the sink.
  fifo.on("error", () => fifo.destroy());
  const toFifo = { write: (line: string) => void (fifo.destroyed || fifo.write(line)) };
  const log = pino(
    options,
    pino.multistream([
      { level: level as pino.Level, stream: daemonLog },
      { level: level as pino.Level, stream: toFifo },
    ]),
  );
  return { log, close: () => fifo.destroy() };
}
