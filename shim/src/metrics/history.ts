// How often this daemon identity started since its last clean start, and how many of those
// starts found the previous daemon had not exited cleanly: the file says "running" while a
// daemon runs and a clean exit (idle, SIGTERM) removes it, so nothing piles up in state_dir and
// an idle exit followed by a new pod is no restart. Ours, root-only; still read defensively.
import { readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";

export interface StartHistory {
  starts: number;
  unclean: number;
}

const count = (v: unknown) => (Number.isSafeInteger(v) && (v as number) >= 0 ? (v as number) : 0);

/** Records this start and returns the history including it. */
export function recordStart(file: string): StartHistory {
  let before: { starts?: unknown; unclean?: unknown; running?: unknown } = {};
  try {
    const text = readFileSync(file, "utf8");
    if (text.length < 4096) before = JSON.parse(text) as typeof before;
  } catch {}
  const history = {
    starts: count(before.starts) + 1,
    unclean: count(before.unclean) + (before.running === true ? 1 : 0),
  };
  write(file, { ...history, running: true });
  return history;
}

/** A clean exit: the next start is a first start again. */
export function recordCleanExit(file: string): void {
  rmSync(file, { force: true });
}

function write(file: string, doc: object): void {
  try {
    writeFileSync(`${file}.tmp`, JSON.stringify(doc), { mode: 0o600 });
    renameSync(`${file}.tmp`, file);
  } catch {
    // Metrics never stop the daemon.
  }
}
