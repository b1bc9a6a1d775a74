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
  /** Kills sent to the guest and not answered yet (see answeredKills). */
  private readonly kills = new Set<Promise<unknown>>();
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

  /** Notes a kill on its way to the guest, until it is answered or fails. */
  noteKill(answer: Promise<unknown>): void {
    const settled = answer.then(
      () => {},
      () => {},
    );
    this.kills.add(settled);
    void settled.then(() => this.kills.delete(settled));
  }

  /**
   * Resolves once every kill sent so far is answered. The exit is announced after that, as
   * runc's shim does: containerd deletes a task (and closes its connection to the shim) as
   * soon as it hears of the exit, so an answer still on its way would be lost and its Kill
   * (StopContainer, StopPodSandbox) fail with "ttrpc: closed".
   */
  answeredKills(): Promise<void> {
    return Promise.all([...this.kills]).then(() => {});
  }

  /** Any state → stopped; the first exit reported wins. */
  stopped(exitStatus: number, exitedAt: Date): boolean {
    if (this.current.kind === "stopped") return false;
    this.current = { kind: "stopped", pid: this.current.pid, exitStatus, exitedAt };
    this.resolveExit({ pid: this.current.pid, exitStatus, exitedAt });
    return true;
  }
}
