// Host processes the daemon started but does not need to be the parent of: a VMM or virtiofsd
// outlives the daemon that spawned it, and the next daemon adopts it. A pid alone is not an
// identity (pids are reused), so a process is named by its pid and its start time (field 22 of
// /proc/PID/stat, in clock ticks since boot), and a zombie counts as gone.
import type { ChildProcess } from "node:child_process";
import { readFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";

export interface ProcessIdentity {
  pid: number;
  /** Clock ticks after boot at which the process started. */
  startTime: number;
}

/** A process we started or adopted: signal it, wait for it. */
export interface HostProcess {
  readonly pid: number;
  /** Settles once, when the process is gone; code/signal only when we were its parent. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly hasExited: boolean;
  /** Resolves once the signal is sent (an adopted process is checked to be the same first). */
  kill(signal: NodeJS.Signals): void | Promise<void>;
}

/** Reads /proc/PID/stat; injectable so tests can fake a transient read failure. */
export type StatReader = (pid: number) => Promise<string>;

const readStat: StatReader = (pid) => readFile(`/proc/${pid}/stat`, "utf8");

/**
 * What /proc says about a pid: its identity, "gone" (no such process, or a zombie), or
 * "unknown" when the read failed for another reason (EMFILE, EACCES, ...): that says nothing
 * about the process, so a watcher must not take it for an exit.
 */
export async function probeProcess(
  pid: number,
  read: StatReader = readStat,
): Promise<ProcessIdentity | "gone" | "unknown"> {
  let stat: string;
  try {
    stat = await read(pid);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === "ENOENT" || code === "ESRCH" ? "gone" : "unknown";
  }
  // The command name (field 2) may hold spaces and parentheses: fields start after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  if (fields[0] === "Z" || fields[0] === "X") return "gone";
  const startTime = Number(fields[19]);
  return Number.isFinite(startTime) ? { pid, startTime } : "unknown";
}

/** pid and start time of a live (not zombie) process, or undefined. */
export async function processIdentity(pid: number): Promise<ProcessIdentity | undefined> {
  const probe = await probeProcess(pid);
  return typeof probe === "object" ? probe : undefined;
}

export async function isRunning(who: ProcessIdentity): Promise<boolean> {
  const now = await processIdentity(who.pid);
  return now?.startTime === who.startTime;
}

/** A child of this process, as a HostProcess. */
export function childProcess(child: ChildProcess): HostProcess {
  if (child.pid === undefined) throw new Error("the process did not start");
  let done = false;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once("exit", (code, signal) => {
      done = true;
      resolve({ code, signal });
    });
  });
  return {
    pid: child.pid,
    exited,
    get hasExited() {
      return done || child.exitCode !== null || child.signalCode !== null;
    },
    kill(signal) {
      child.kill(signal);
    },
  };
}

/** How often an adopted process is checked for: its exit is seen at most this late. */
const ADOPTED_POLL_MS = 500;

/**
 * A process another daemon started (we cannot wait() for it): watched through /proc. Never
 * signals a process whose start time differs (the pid was reused).
 */
export function adoptedProcess(who: ProcessIdentity, read: StatReader = readStat): HostProcess {
  let done = false;
  const exited = (async () => {
    // Only a missing process or a changed start time is an exit; a failed read is retried.
    for (;;) {
      const probe = await probeProcess(who.pid, read);
      if (probe === "gone" || (probe !== "unknown" && probe.startTime !== who.startTime)) break;
      await sleep(ADOPTED_POLL_MS, undefined, { ref: false });
    }
    done = true;
    return { code: null, signal: null };
  })();
  return {
    pid: who.pid,
    exited,
    get hasExited() {
      return done;
    },
    async kill(signal) {
      if (done || !(await isRunning(who))) return;
      try {
        process.kill(who.pid, signal);
      } catch {
        // Gone meanwhile.
      }
    },
  };
}
