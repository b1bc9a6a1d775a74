// A container as the task service sees it: its sandbox, its processes and what it holds.
import type { ProcessRef } from "../agent/client.js";
import type { PodNetwork } from "../network/pod-network.js";
import type { Sandbox } from "../sandbox/sandbox.js";
import type { StdioForwarder } from "../stdio/forward.js";
import type { DiskSpec } from "../vmm/types.js";
import type { ContainerVolumes } from "../volumes/volumes.js";
import type { Process } from "./process.js";
import type { TaskLog } from "./task-log.js";

export interface PreparedRootfs {
  /** Disks the VM needs for this container (image, scratch). */
  disks: DiskSpec[];
  rootfsSerial: string;
  scratchSerial: string;
  cacheHit: boolean;
  release(): Promise<void>;
}

export class Container {
  readonly execs = new Map<string, Process>();
  readonly forwarders = new Map<string, StdioForwarder>();
  /** The whole VM is paused (only for a container that owns its VM). */
  paused = false;
  /** Devices hot-plugged into a shared (pod) VM for this container, unplugged on delete. */
  readonly hotplugged: string[] = [];
  /** The pod network this container's VM is attached to (the sandbox owns it). */
  network: PodNetwork | undefined;
  /** Copied volumes kept in sync with the host while the container lives. */
  volumes: ContainerVolumes | undefined;
  /** The task's logger (daemon log + the bundle's `log` FIFO). */
  log: TaskLog | undefined;

  constructor(
    readonly namespace: string,
    readonly id: string,
    readonly bundle: string,
    readonly init: Process,
    readonly sandbox: Sandbox,
    /** True when the sandbox VM exists for this container alone (a plain `ctr run` task). */
    readonly ownsSandbox: boolean,
    readonly rootfs: PreparedRootfs,
  ) {}

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
