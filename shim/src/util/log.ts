// The host side's one logger. Until a process configures it, it writes to stderr (stdout stays
// free for protocol replies: shim `start`, JSON reports) at $CLOUDHV_LOG_LEVEL or "info"; the
// shim daemon points it at its log file once, at the runtime config's `log_level` (the
// environment variable still wins, for debugging). Everything else takes child loggers of it,
// so pod, task and VM fields travel with every line.
import pino from "pino";

export type Logger = pino.Logger;

const envLevel = () => process.env.CLOUDHV_LOG_LEVEL as pino.LevelWithSilent | undefined;

export let log: Logger = pino(
  { name: "cloudhv", level: envLevel() ?? "info", base: { pid: process.pid } },
  pino.destination(2),
);

/** Replaces the root logger (the daemon, once, at start): `log` importers see the new one. */
export function configureLogging(opts: {
  level: pino.LevelWithSilent;
  destination: pino.DestinationStream;
  name?: string;
}): Logger {
  log = pino(
    { name: opts.name ?? "cloudhv-shim", level: envLevel() ?? opts.level, base: { pid: process.pid } },
    opts.destination,
  );
  return log;
}
