// One structured logger for the host side. Level from CLOUDHV_LOG_LEVEL (default "info");
// output to stderr so stdout stays free for protocol replies (shim `start`, JSON reports).
import pino from "pino";

export type Logger = pino.Logger;

export const log: Logger = pino(
  { name: "cloudhv", level: process.env.CLOUDHV_LOG_LEVEL ?? "info", base: { pid: process.pid } },
  pino.destination(2),
);
