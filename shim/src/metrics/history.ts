// How often this daemon identity started since the node booted (state_dir is a tmpfs), and how
// many of those starts found the previous daemon had not exited cleanly: the file says
// "running" until a clean exit says otherwise. Ours, root-only; still read defensively.
import { readFileSync, renameSync, writeFileSync } from "node:fs";

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

/** A clean exit: the next start is not counted as unclean. */
export function recordCleanExit(file: string, history: StartHistory): void {
  write(file, { ...history, running: false });
}

function write(file: string, doc: object): void {
  try {
    writeFileSync(`${file}.tmp`, JSON.stringify(doc), { mode: 0o600 });
    renameSync(`${file}.tmp`, file);
  } catch {
    // Metrics never stop the daemon.
  }
}
