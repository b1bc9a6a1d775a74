// One process per socket: an O_EXCL lock file naming its owner by pid and start time (a pid
// alone could be reused after a crash and block every new owner). A lock whose owner is gone
// is taken over. Used by the front (its control socket) and the daemon (its backend one).
import { closeSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";

/** Start time (clock ticks after boot, /proc/PID/stat field 22) of a live, non-zombie process. */
function startTimeOf(pid: number): number | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  if (fields[0] === "Z" || fields[0] === "X") return undefined;
  const start = Number(fields[19]);
  return Number.isFinite(start) ? start : undefined;
}

/**
 * The daemon's exit status when a live daemon already holds its lock (one a killed front left
 * behind). The front's relays reach that daemon through the backend sockets meanwhile; the
 * front tries again quietly until the lock is free.
 */
export const LOCK_HELD_STATUS = 75;

/** True when this process now owns `lockPath`; false when a live process does. */
export function takeLock(lockPath: string): boolean {
  const mine = startTimeOf(process.pid);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(lockPath, "wx");
      writeSync(fd, mine === undefined ? String(process.pid) : `${process.pid} ${mine}`);
      closeSync(fd);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      if (ownerAlive(readFileSync(lockPath, "utf8"))) return false;
      rmSync(lockPath, { force: true });
    }
  }
  return false;
}

/** The lock's owner ("pid" or "pid startTime") still runs as the same process. */
export function ownerAlive(lock: string): boolean {
  const [pid, startTime] = lock.trim().split(" ").map(Number);
  if (!pid || pid <= 0) return false;
  const now = startTimeOf(pid);
  return now !== undefined && (startTime === undefined || Number.isNaN(startTime) || now === startTime);
}

export function isAlive(pid: number): boolean {
  return startTimeOf(pid) !== undefined;
}
