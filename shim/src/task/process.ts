// One container process (init or exec) as an explicit state machine: created → running →
// stopped, with "stopped" reachable from any state (the VM can die at any time).

import { precondition } from "../errors.js";
import type { StdioPaths } from "../stdio/forward.js";

export type ProcessState =
  | { readonly kind: "created"; readonly pid: number }
  | { readonly kind: "running"; readonly pid: number }
  | { readonly kind: "stopped"; readonly pid: number; readonly exitStatus: number; readonly exitedAt: Date };

export interface ProcessExit {
  pid: number;
  exitStatus: number;
  exitedAt: Date;
}

export class Process {
  private current: ProcessState;
  private resolveExit!: (exit: ProcessExit) => void;
  /** Settles once, when the process reaches "stopped". */
  readonly exited: Promise<ProcessExit>;

  constructor(
    readonly containerId: string,
    /** "" for the container's init process. */
    readonly execId: string,
    readonly io: StdioPaths,
    pid: number,
  ) {
    this.current = { kind: "created", pid };
    this.exited = new Promise((resolve) => {
      this.resolveExit = resolve;
    });
  }

  get state(): ProcessState {
    return this.current;
  }

  get pid(): number {
    return this.current.pid;
  }

  get label(): string {
    return this.execId
      ? `exec ${this.execId} of container ${this.containerId}`
      : `container ${this.containerId}`;
  }

  /** created → running. */
  started(pid: number): void {
    if (this.current.kind !== "created")
      throw precondition(`${this.label} is ${this.current.kind}, not created`);
    this.current = { kind: "running", pid };
  }

  /** Any state → stopped; the first exit reported wins. */
  stopped(exitStatus: number, exitedAt: Date): boolean {
    if (this.current.kind === "stopped") return false;
    this.current = { kind: "stopped", pid: this.current.pid, exitStatus, exitedAt };
    this.resolveExit({ pid: this.current.pid, exitStatus, exitedAt });
    return true;
  }
}
