// One process per socket: an O_EXCL lock file holding the owner's pid. A lock whose owner is
// gone is taken over. Used by the front (its control socket) and the daemon (its backend one).
import { closeSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";

/** True when this process now owns `lockPath`; false when a live process does. */
export function takeLock(lockPath: string): boolean {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(lockPath, "wx");
      writeSync(fd, String(process.pid));
      closeSync(fd);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const owner = Number(readFileSync(lockPath, "utf8"));
      if (owner > 0 && isAlive(owner)) return false;
      rmSync(lockPath, { force: true });
    }
  }
  return false;
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
