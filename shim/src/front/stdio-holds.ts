// The front's part in "nothing lost when the daemon dies": containerd reads a task's output
// FIFOs until every writer has closed them, then stops for good. The daemon is the writer, so
// its death would end the pod's logs even though the pod keeps running. The front holds one
// more write end of each live process's stdout/stderr (opened by path when the daemon asks)
// and lets go when the daemon says that process's output is done.
import { closeSync, constants, fstatSync, openSync } from "node:fs";
import path from "node:path";

/** Processes held at once: a bound on the front's fds whatever the daemon asks. */
export const MAX_HELD = 8192;

export class StdioHolds {
  private readonly held = new Map<string, number[]>();

  get size(): number {
    return this.held.size;
  }

  /**
   * Holds write ends of the FIFOs among `paths` (others, and FIFOs nobody reads, are skipped:
   * there is nothing to keep open). Replaces what `key` held before.
   */
  hold(key: string, paths: readonly string[]): number {
    this.release(key);
    if (this.held.size >= MAX_HELD) throw new Error(`the front already holds ${MAX_HELD} processes' output`);
    const fds: number[] = [];
    for (const file of paths.slice(0, 3)) {
      if (!file || !path.isAbsolute(file)) continue;
      let fd: number;
      try {
        // Non-blocking: a FIFO with no reader fails (ENXIO) instead of waiting for one.
        fd = openSync(file, constants.O_WRONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW);
      } catch {
        continue;
      }
      if (fstatSync(fd).isFIFO()) fds.push(fd);
      else closeSync(fd);
    }
    if (fds.length > 0) this.held.set(key, fds);
    return fds.length;
  }

  release(key: string): void {
    for (const fd of this.held.get(key) ?? []) closeSync(fd);
    this.held.delete(key);
  }

  releaseAll(): void {
    for (const key of [...this.held.keys()]) this.release(key);
  }
}
