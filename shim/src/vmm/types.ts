// The hypervisor seam: everything above it (task service, agent client, rootfs, network) is
// shared by the drivers below it (qemu, cloud-hypervisor).
import type { AgentClient } from "../agent/client.js";
import { invalid } from "../errors.js";
import type { Logger } from "../util/log.js";

export interface VmConfig {
  /** Unique per host; names the VM in process lists and logs. */
  id: string;
  kernelPath: string;
  /** Guest rootfs image (erofs, read-only), the agent is its /init. */
  rootfsPath: string;
  /** An initramfs; the guest rootfs is then mounted by its /init (used to boot stock kernels). */
  initrdPath?: string;
  /** Appended to the driver's base kernel command line. */
  extraKernelArgs?: string;
  vcpus: number;
  /** vCPUs the VM may grow to (CPU hotplug); default = vcpus. */
  maxVcpus?: number;
  memoryMb: number;
  /** Per-VM directory for sockets and logs; created by launch, removed by stop. */
  stateDir: string;
  /** The pod's network: the VMM runs in this netns with a NIC on `tap` carrying `mac`. */
  network?: { netnsPath: string; tap: string; mac: string };
  /** Disks present at boot besides the guest rootfs (container images, scratch disks). */
  disks?: DiskSpec[];
  /** Where the driver logs about this VM (a child logger with the pod's fields). */
  log?: Logger;
  /** The pod's cgroup: the VMM writes its pid to these cgroup.procs files before it execs (cgroup/join.ts). */
  cgroup?: { procs: readonly string[] };
  /** A virtio-fs device present at boot (the pod's shared volumes). */
  sharedFs?: FsSpec;
  /** No network: the VMM gets an empty netns of its own, its NIC comes later by addNet (a pool VM). */
  isolatedNetwork?: boolean;
  /**
   * With isolatedNetwork: the VM boots with a NIC on this TAP, made in its empty netns (owned by
   * the VMM group) before the VMM starts, carrying a placeholder MAC (a pool VM: its claim moves
   * the TAP into the pod's netns and the guest gives the NIC the pod's MAC).
   */
  isolatedNic?: { tap: string; mac: string };
  /** The VMM's nice value from its start (a pool VM boots at 19; its claim restores 0). */
  nice?: number;
  /** Memory the VM may grow to by hot-plug (a pool VM: pod/grow.ts); default = memoryMb. */
  maxMemoryMb?: number;
  /** A virtio-balloon whose free page reporting hands the guest's free memory back to the host. */
  freePageReporting?: boolean;
}

/** A virtio-fs device backed by a vhost-user daemon (virtiofsd) listening on `socket`. */
export interface FsSpec {
  /** The vhost-user socket virtiofsd listens on. */
  socket: string;
  /** What the guest mounts (`mount -t virtiofs <tag>`): at most 36 bytes. */
  tag: string;
  /** Device id, for removeDevice. */
  id: string;
}

export interface DiskSpec {
  path: string;
  /** The guest finds the disk by this (virtio-blk serial: at most 20 bytes). */
  serial: string;
  readOnly: boolean;
}

/** virtio-blk carries at most 20 bytes of serial. */
export const MAX_DISK_SERIAL = 20;

export function checkDiskSerial(serial: string): void {
  if (!/^[A-Za-z0-9_-]{1,20}$/.test(serial)) {
    throw invalid(`disk serial "${serial}" must be 1-${MAX_DISK_SERIAL} characters of [A-Za-z0-9_-]`);
  }
}

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Why the VM ended when the guest ended it (a kernel panic, a reset, a power-off). */
  reason?: string;
}

export interface VmHandle extends AsyncDisposable {
  readonly id: string;
  readonly pid: number;
  /** Guest console output (kernel + agent log lines). */
  readonly consoleLogPath: string;
  /** Settles when the VMM process has exited and been reaped. */
  readonly exited: Promise<VmExit>;
  /** Connects to the guest agent, retrying while the guest boots, until timeoutMs. */
  connectAgent(opts: { timeoutMs: number }): Promise<AgentClient>;
  /** Graceful stop, then SIGKILL after a grace period; always removes the state dir. Idempotent. */
  stop(): Promise<void>;
  /**
   * Ends the VM now: SIGKILL to the VMM, which runs no guest code once this resolves. What its
   * exit takes (the kernel freeing the guest's memory) is left to stop(), which then skips the
   * graceful steps. A VM that is gone already is left alone.
   */
  kill(): Promise<void>;
  /** Hot-plugs a disk; the guest finds it by serial. Returns the device id for removeDevice. */
  addDisk(disk: DiskSpec): Promise<string>;
  /**
   * A container's disks at once (fewer host spawns), all or nothing; addDisk one by one where
   * absent. With `contentReady`, the files are opened meanwhile and the guest sees the disks
   * only once it resolves (a rejection fails the plug with its error).
   */
  addDisks?(disks: DiskSpec[], contentReady?: Promise<void>): Promise<string[]>;
  /** Unplugs a hot-plugged device and waits until the guest let go of it. */
  removeDevice(id: string): Promise<void>;
  /**
   * Takes out a disk a dead daemon's join hot-plugged (or half did) that this VM's record does
   * not know; whether there was one. Absent: the driver cannot (its VMs are not adopted).
   */
  removeStrayDisk?(serial: string): Promise<boolean>;
  /**
   * A virtio-fs device `id` a dead daemon's join hot-plugged (or half did) that this VM's record
   * does not know: when the VM has it, it is tracked from now on (removeDevice, the record) and
   * true is returned; a half-made one (its chardev only) is taken out and false returned.
   */
  adoptStrayFs?(id: string): Promise<boolean>;
  /** Stops / continues every vCPU: the whole VM, every container in it. */
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** Hot-plugs a virtio-fs device (guest memory is shared from boot). Returns the device id. */
  addFs?(fs: FsSpec): Promise<string>;
  /** Hot-plugs a NIC on an existing TAP (in the VMM's netns). Returns the device id. */
  addNet?(nic: NicSpec): Promise<string>;
  /** Hot-plugs `memoryMb` more memory and `vcpus` more vCPUs (a pool VM grown for its pod, pod/grow.ts). */
  grow?(add: { memoryMb: number; vcpus: number }): Promise<void>;
  /** What the VMM reports about the VM: state, memory, devices. */
  info?(): Promise<VmInfo>;
  /** Per-device I/O counters as the VMM reports them (device id → counter → value). */
  counters?(): Promise<VmCounters>;
  /** What a later daemon needs to adopt this VM (drivers that can be adopted). */
  record?(): Promise<unknown>;
}

export interface NicSpec {
  /** An existing TAP device, in the netns the VMM runs in. */
  tap: string;
  /** The guest NIC's MAC address (aa:bb:cc:dd:ee:ff). */
  mac: string;
  /** Device id, for removeDevice. */
  id: string;
}

export interface VmInfo {
  state: "created" | "running" | "paused" | "shutdown";
  /** Guest memory currently plugged, bytes. */
  memoryBytes?: number;
  /** Every device the VMM knows, by id, with its PCI address where it has one. */
  devices: Record<string, { pciBdf?: string }>;
}

export type VmCounters = Record<string, Record<string, number>>;

export interface HypervisorDriver {
  readonly name: "qemu" | "cloud-hypervisor";
  launch(config: VmConfig): Promise<VmHandle>;
  /**
   * Takes over a VM a previous daemon launched, from its record(); undefined when that VMM is
   * gone. Drivers without it cannot outlive their daemon.
   */
  adopt?(config: Pick<VmConfig, "id" | "stateDir" | "log">, record: unknown): Promise<VmHandle | undefined>;
}

/** The guest agent's virtio-serial port name and vsock port (guest/agent). */
export const AGENT_PORT_NAME = "io.cloudhv.agent";
export const AGENT_VSOCK_PORT = 1024;
