// Undo-steps for building something in stages: on failure, what was done is undone in reverse.
// (AsyncDisposableStack is not in Node 20.)
import { log } from "./log.js";

export class Cleanup {
  private readonly steps: Array<{ what: string; undo: () => unknown }> = [];

  defer(what: string, undo: () => unknown): void {
    this.steps.push({ what, undo });
  }

  /** Forget the steps: what was built now belongs to someone else. */
  disarm(): void {
    this.steps.length = 0;
  }

  /** Runs every step, newest first; a failing step is logged and does not stop the rest. */
  async run(): Promise<void> {
    for (const { what, undo } of this.steps.splice(0).reverse()) {
      try {
        await undo();
      } catch (err) {
        log.error({ what, err: (err as Error).message }, "cleanup step failed");
      }
    }
  }
}
