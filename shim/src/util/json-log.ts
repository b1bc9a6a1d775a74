// A small JSON-lines logger for processes that must stay small (the front): pino's line shape
// (numeric level, time, pid, name, msg) so one log file reads the same, without loading pino.
// Writes are synchronous and rare; an Error value keeps its message and stack.
import { writeSync } from "node:fs";

export interface LineLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

const LEVELS = { info: 30, warn: 40, error: 50 } as const;

export function jsonLineLog(fd: number, name: string): LineLog {
  const write = (level: number, obj: object, msg: string) => {
    const line = JSON.stringify({ level, time: Date.now(), pid: process.pid, name, ...obj, msg }, (_k, v) =>
      v instanceof Error ? { type: v.name, message: v.message, stack: v.stack } : v,
    );
    try {
      writeSync(fd, `${line}\n`);
    } catch {
      // A full disk or a closed log must not take the process down.
    }
  };
  return {
    info: (obj, msg) => write(LEVELS.info, obj, msg),
    warn: (obj, msg) => write(LEVELS.warn, obj, msg),
    error: (obj, msg) => write(LEVELS.error, obj, msg),
  };
}
