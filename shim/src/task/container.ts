// A container as the task service sees it: its processes, their stdio, and its place in a pod.
import type { AgentClient, ProcessRef } from "../agent/client.js";
import type { Pod, PodMember } from "../pod/pod.js";
import type { StdioForwarder } from "../stdio/forward.js";
import type { Process } from "./process.js";
import type { TaskLog } from "./task-log.js";

export class Container {
  readonly execs = new Map<string, Process>();
  readonly forwarders = new Map<string, StdioForwarder>();
  /** The whole VM is paused (only for a container that owns its VM). */
  paused = false;

  constructor(
    readonly namespace: string,
    readonly id: string,
    readonly bundle: string,
    readonly init: Process,
    /** The container in its pod's VM: what the pod holds for it until delete. */
    readonly member: PodMember,
    /** The task's logger (daemon log + the bundle's `log` FIFO). */
    readonly log: TaskLog,
  ) {}

  get pod(): Pod {
    return this.member.pod;
  }

  /** The guest agent of the container's VM: every process operation goes through it. */
  get agent(): AgentClient {
    return this.member.pod.agent;
  }

  process(execId: string): Process | undefined {
    return execId ? this.execs.get(execId) : this.init;
  }

  allProcesses(): Process[] {
    return [this.init, ...this.execs.values()];
  }

  ref(execId: string): ProcessRef {
    return { containerId: this.id, execId };
  }
}
