// The task service: validates, finds the container or process, delegates to the sandbox's
// agent, and publishes the events containerd expects. It knows nothing of ttrpc framing
// (task/ttrpc-binding.ts maps it onto the wire), so tests can call it directly.
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import path from "node:path";
import type { DestinationStream, LevelWithSilent } from "pino";
import type { GuestNetwork } from "../agent/client.js";
import type { RuntimeConfig } from "../config/config.js";
import type { EventPublisher, Mount, Timestamp } from "../containerd/publisher.js";
import { invalid, notFound, precondition, ShimError } from "../errors.js";
import { attachPodNetwork, type PodInterface, type PodNetwork } from "../network/pod-network.js";
import { Sandbox } from "../sandbox/sandbox.js";
import { StdioForwarder, type StdioPaths } from "../stdio/forward.js";
import { messageCodec } from "../ttrpc/proto.js";
import { Cleanup } from "../util/cleanup.js";
import type { Logger } from "../util/log.js";
import { within } from "../util/time.js";
import type { HypervisorDriver } from "../vmm/types.js";
import { ContainerVolumes } from "../volumes/volumes.js";
import { Container, type PreparedRootfs } from "./container.js";
import { PhaseClock } from "./phases.js";
import { Process } from "./process.js";
import { vmSize } from "./sizing.js";
import { openTaskLog } from "./task-log.js";

export type RootfsPreparer = (
  namespace: string,
  containerId: string,
  mounts: Mount[],
) => Promise<PreparedRootfs>;

export interface TaskServiceDeps {
  config: RuntimeConfig;
  driver: HypervisorDriver;
  events: EventPublisher;
  prepareRootfs: RootfsPreparer;
  log: Logger;
  /** Where `log` writes; with it, each task also logs to its bundle's `log` FIFO. */
  logDestination?: DestinationStream;
  version: string;
}

export interface CreateTaskRequest {
  id: string;
  bundle: string;
  rootfs: Mount[];
  terminal: boolean;
  stdin: string;
  stdout: string;
  stderr: string;
  checkpoint: string;
}

export interface ExecRequest {
  id: string;
  execId: string;
  terminal: boolean;
  stdin: string;
  stdout: string;
  stderr: string;
  spec: { typeUrl: string; value: Uint8Array } | null;
}

export type TaskStatus = "UNKNOWN" | "CREATED" | "RUNNING" | "STOPPED" | "PAUSED";

export interface TaskState {
  id: string;
  execId: string;
  bundle: string;
  pid: number;
  status: TaskStatus;
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
  exitStatus: number;
  exitedAt: Timestamp | null;
}

export interface ExitInfo {
  pid: number;
  exitStatus: number;
  exitedAt: Timestamp;
}

const metricsCodec = messageCodec("io.containerd.cgroups.v2.Metrics");

/** How long Delete waits for a process's output to reach containerd's FIFOs. */
const OUTPUT_DRAIN_MS = 5000;
/** runc reports a SIGKILLed process as 128 + 9; a VM that died takes its processes with it. */
const KILLED_STATUS = 137;
const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

const round = (ms: number) => Math.round(ms * 10) / 10;

export function toTimestamp(date: Date): Timestamp {
  const ms = date.getTime();
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1_000_000 };
}

export class TaskService {
  private readonly containers = new Map<string, Container>();
  private readonly creating = new Set<string>();
  /** CRI pods by namespace/sandbox id: the VM their sandbox booted and their app containers. */
  private readonly pods = new Map<string, Pod>();

  constructor(private readonly deps: TaskServiceDeps) {}

  get size(): number {
    return this.containers.size;
  }

  async create(ns: string, req: CreateTaskRequest): Promise<{ pid: number }> {
    const key = this.key(ns, req.id);
    if (!ID_PATTERN.test(req.id)) throw invalid(`task id "${req.id}" must match ${ID_PATTERN}`);
    if (this.containers.has(key) || this.creating.has(key)) {
      throw new ShimError("AlreadyExists", `task ${req.id} already exists in namespace ${ns}`);
    }
    if (req.checkpoint)
      throw new ShimError("Unimplemented", "restoring a task from a checkpoint is not supported");
    if (!path.isAbsolute(req.bundle)) throw invalid(`bundle "${req.bundle}" is not an absolute path`);
    this.creating.add(key);
    const undo = new Cleanup();
    const taskLog = this.deps.logDestination
      ? openTaskLog(this.deps.logDestination, this.deps.log.level as LevelWithSilent, req.bundle, {
          ns,
          task: req.id,
        })
      : { log: this.deps.log.child({ ns, task: req.id }), close() {} };
    undo.defer("close task log", () => taskLog.close());
    const log = taskLog.log;
    try {
      const specPath = path.join(req.bundle, "config.json");
      const specBytes = await readFile(specPath).catch((err: Error) => {
        throw invalid(`cannot read the OCI spec ${specPath}: ${err.message}`);
      });
      let spec: {
        annotations?: Record<string, unknown>;
        linux?: { namespaces?: Array<{ type?: string; path?: string }> };
        mounts?: Array<{ destination: string; type?: string; source?: string; options?: string[] }>;
      };
      try {
        spec = JSON.parse(specBytes.toString("utf8"));
      } catch (err) {
        throw invalid(`OCI spec ${specPath} is not valid JSON: ${(err as Error).message}`);
      }
      const role = podRole(spec.annotations ?? {}, req.id);
      // A pod's app container joins the VM its sandbox booted; anything else gets a VM of its own.
      const pod = role.kind === "container" ? this.podFor(ns, role.sandboxId, req.id) : undefined;
      const size = pod ? undefined : vmSize(spec.annotations ?? {}, this.deps.config);
      // Bind mounts become guest paths (copies, shared emptyDirs); a volume the VM cannot
      // have fails here, before anything was built.
      const podKey = `${ns}/${role.kind === "standalone" ? req.id : role.sandboxId}`;
      const volumes = await ContainerVolumes.plan(spec, req.id, podKey, log);
      const guestSpec = volumes.empty ? specBytes : Buffer.from(JSON.stringify(spec));
      // Phase timings go to the log on every create: the benchmarks read them from there.
      // `guest*` phases wait on the guest (boot, agent RPCs); the rest is the host's own work.
      const phases = new PhaseClock();
      const t0 = performance.now();
      // A VM of its own needs its pod network too: CNI made the pod's netns (its path is in the
      // spec) and the VM's NIC takes its place. Both are host work independent of each other,
      // so they run at once; whichever succeeded is undone if the other failed.
      const netnsPath = pod
        ? undefined
        : spec.linux?.namespaces?.find((n) => n.type === "network" && n.path)?.path;
      const [rootfsDone, networkDone] = await Promise.allSettled([
        phases.time("rootfsMs", this.deps.prepareRootfs(ns, req.id, req.rootfs)),
        netnsPath ? phases.time("networkMs", attachPodNetwork(netnsPath)) : Promise.resolve(undefined),
      ]);
      const t1 = performance.now();
      if (rootfsDone.status === "fulfilled") {
        const prepared = rootfsDone.value;
        undo.defer("release rootfs", () => prepared.release());
      }
      if (networkDone.status === "fulfilled" && networkDone.value) {
        const attached = networkDone.value;
        undo.defer("detach pod network", () => attached.detach());
      }
      if (rootfsDone.status === "rejected") throw rootfsDone.reason;
      if (networkDone.status === "rejected") throw networkDone.reason;
      const rootfs = rootfsDone.value;
      const podNetwork: PodNetwork | undefined = networkDone.value;
      let sandbox: Sandbox;
      const hotplugged: string[] = [];
      if (pod) {
        sandbox = pod.sandbox;
        for (const disk of rootfs.disks) {
          const device = await phases.time("hotplugMs", sandbox.vm.addDisk(disk));
          hotplugged.push(device);
          undo.defer(`unplug ${device}`, () => sandbox.vm.removeDevice(device));
        }
      } else {
        const booted = await Sandbox.boot(
          {
            id: sandboxId(ns, role.kind === "sandbox" ? role.sandboxId : req.id),
            vcpus: size?.vcpus ?? this.deps.config.default_vcpus,
            maxVcpus: size?.maxVcpus ?? this.deps.config.default_vcpus,
            memoryMb: size?.memoryMb ?? this.deps.config.default_memory_mb,
            disks: rootfs.disks,
            ...(podNetwork
              ? {
                  network: {
                    netnsPath: podNetwork.netnsPath,
                    tap: podNetwork.tap,
                    mac: podNetwork.iface.mac,
                  },
                }
              : {}),
          },
          phases.timedDriver(this.deps.driver),
          this.deps.config,
          log,
        );
        // Sandbox.boot = VMM launch (host) + waiting for the agent's first answer (guest).
        phases.add("guestBootMs", booted.bootMs - phases.get("vmmLaunchMs"));
        sandbox = booted;
        undo.defer("stop VM", () => booted.destroy());
        if (podNetwork)
          await phases.time("guestNetworkMs", booted.agent.configureNetwork(guestNetwork(podNetwork.iface)));
      }
      const io: StdioPaths = {
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr,
        terminal: req.terminal,
      };
      const t2 = performance.now();
      await phases.time("guestVolumesMs", volumes.apply(sandbox.agent));
      const pid = await phases.time(
        "guestCreateContainerMs",
        sandbox.agent.createContainer({
          containerId: req.id,
          ociSpec: guestSpec,
          rootfsSerial: rootfs.rootfsSerial,
          scratchSerial: rootfs.scratchSerial,
          terminal: req.terminal,
          stdin: StdioForwarder.wantsStdin(io),
        }),
      );
      const container = new Container(
        ns,
        req.id,
        req.bundle,
        new Process(req.id, "", io, pid),
        sandbox,
        !pod,
        rootfs,
      );
      container.log = taskLog;
      container.hotplugged.push(...hotplugged);
      container.network = podNetwork;
      container.volumes = volumes;
      volumes.startSync(sandbox.agent);
      if (pod) pod.members.add(req.id);
      if (role.kind === "sandbox")
        this.pods.set(this.key(ns, role.sandboxId), { sandbox, members: new Set() });
      container.forwarders.set("", new StdioForwarder(sandbox.agent, container.ref(""), io, log));
      undo.disarm();
      this.containers.set(key, container);
      this.watchSandbox(container);
      const t3 = performance.now();
      log.info(
        {
          pid,
          cacheHit: rootfs.cacheHit,
          ...(size ? { vm: { vcpus: size.vcpus, memoryMb: size.memoryMb, from: size.sources } } : {}),
          phases: {
            rootfsMs: round(t1 - t0),
            vmBootMs: round(t2 - t1),
            guestCreateMs: round(t3 - t2),
            totalMs: round(t3 - t0),
            ...phases.summary(t3 - t0),
          },
        },
        "task created",
      );
      this.deps.events.publish(ns, "TaskCreate", {
        containerId: req.id,
        bundle: req.bundle,
        rootfs: req.rootfs,
        io: { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal },
        checkpoint: "",
        pid,
      });
      return { pid };
    } catch (err) {
      await undo.run();
      throw err;
    } finally {
      this.creating.delete(key);
    }
  }

  async start(ns: string, id: string, execId: string): Promise<{ pid: number }> {
    const container = this.container(ns, id);
    const proc = this.process(container, execId);
    if (proc.state.kind !== "created") throw precondition(`${proc.label} is ${proc.state.kind}, not created`);
    const pid = await container.sandbox.agent.startProcess(container.ref(execId));
    proc.started(pid);
    if (execId) this.deps.events.publish(ns, "TaskExecStarted", { containerId: id, execId, pid });
    else this.deps.events.publish(ns, "TaskStart", { containerId: id, pid });
    void this.reapWhenDone(container, proc);
    return { pid };
  }

  async kill(ns: string, id: string, execId: string, signal: number, all: boolean): Promise<void> {
    const container = this.container(ns, id);
    const proc = this.process(container, execId);
    if (proc.state.kind === "stopped") throw notFound(`${proc.label}: process already finished`);
    if (!Number.isInteger(signal) || signal <= 0 || signal > 64)
      throw invalid(`signal ${signal} is not a valid signal`);
    await container.sandbox.agent.signalProcess(container.ref(execId), signal, all);
  }

  async wait(ns: string, id: string, execId: string): Promise<ExitInfo> {
    const proc = this.process(this.container(ns, id), execId);
    const exit = await proc.exited;
    return { pid: exit.pid, exitStatus: exit.exitStatus, exitedAt: toTimestamp(exit.exitedAt) };
  }

  async delete(ns: string, id: string, execId: string): Promise<ExitInfo> {
    const container = this.container(ns, id);
    const proc = this.process(container, execId);
    if (proc.state.kind === "running") throw precondition(`cannot delete ${proc.label}: it is still running`);
    const phases = new PhaseClock();
    const started = performance.now();
    const forwarder = container.forwarders.get(execId);
    if (forwarder) {
      // The agent's last output reaching containerd's FIFOs: a wait on the guest's stream.
      await phases.time("guestOutputDrainMs", within(forwarder.outputDone, OUTPUT_DRAIN_MS));
      forwarder.close();
      container.forwarders.delete(execId);
    }
    // A created process that never ran has no exit yet; deleting it ends it.
    proc.stopped(KILLED_STATUS, new Date());
    const exit = await proc.exited;
    const info = { pid: exit.pid, exitStatus: exit.exitStatus, exitedAt: toTimestamp(exit.exitedAt) };
    if (execId) {
      container.execs.delete(execId);
    } else {
      const teardownStarted = performance.now();
      await this.teardown(container, phases);
      const done = performance.now();
      this.deps.log.info(
        {
          ns,
          task: id,
          teardownMs: round(done - teardownStarted),
          phases: { totalMs: round(done - started), ...phases.summary(done - started) },
        },
        "task deleted",
      );
      this.deps.events.publish(ns, "TaskDelete", { containerId: id, id, ...info });
    }
    return info;
  }

  state(ns: string, id: string, execId: string): TaskState {
    const container = this.container(ns, id);
    const proc = this.process(container, execId);
    const s = proc.state;
    return {
      id,
      execId,
      bundle: container.bundle,
      pid: s.pid,
      status:
        s.kind === "created"
          ? "CREATED"
          : s.kind === "stopped"
            ? "STOPPED"
            : container.paused
              ? "PAUSED"
              : "RUNNING",
      stdin: proc.io.stdin,
      stdout: proc.io.stdout,
      stderr: proc.io.stderr,
      terminal: proc.io.terminal,
      exitStatus: s.kind === "stopped" ? s.exitStatus : 0,
      exitedAt: s.kind === "stopped" ? toTimestamp(s.exitedAt) : null,
    };
  }

  async pids(ns: string, id: string): Promise<number[]> {
    const container = this.container(ns, id);
    if (container.init.state.kind === "stopped") return [];
    return container.sandbox.agent.listPids(id);
  }

  async exec(ns: string, req: ExecRequest): Promise<void> {
    const container = this.container(ns, req.id);
    if (!ID_PATTERN.test(req.execId)) throw invalid(`exec id "${req.execId}" must match ${ID_PATTERN}`);
    if (container.execs.has(req.execId)) {
      throw new ShimError("AlreadyExists", `exec ${req.execId} already exists in container ${req.id}`);
    }
    if (container.init.state.kind !== "running") {
      throw precondition(`cannot exec in container ${req.id}: it is ${container.init.state.kind}`);
    }
    if (!req.spec) throw invalid(`exec ${req.execId} has no process spec`);
    const io: StdioPaths = {
      stdin: req.stdin,
      stdout: req.stdout,
      stderr: req.stderr,
      terminal: req.terminal,
    };
    await container.sandbox.agent.execProcess({
      ...container.ref(req.execId),
      processSpec: req.spec.value,
      terminal: req.terminal,
      stdin: StdioForwarder.wantsStdin(io),
    });
    const proc = new Process(req.id, req.execId, io, 0);
    container.execs.set(req.execId, proc);
    container.forwarders.set(
      req.execId,
      new StdioForwarder(
        container.sandbox.agent,
        container.ref(req.execId),
        io,
        (container.log?.log ?? this.deps.log.child({ ns, task: req.id })).child({ exec: req.execId }),
      ),
    );
    this.deps.events.publish(ns, "TaskExecAdded", { containerId: req.id, execId: req.execId });
  }

  async resizePty(ns: string, id: string, execId: string, width: number, height: number): Promise<void> {
    const container = this.container(ns, id);
    this.process(container, execId);
    await container.sandbox.agent.resizePty(container.ref(execId), width, height);
  }

  async closeIO(ns: string, id: string, execId: string, stdin: boolean): Promise<void> {
    const container = this.container(ns, id);
    this.process(container, execId);
    if (stdin) await container.sandbox.agent.closeStdin(container.ref(execId));
  }

  /** Pausing stops every vCPU, so it is offered only where the VM holds this container alone. */
  async pause(ns: string, id: string): Promise<void> {
    const container = this.pausable(ns, id);
    if (container.paused) throw precondition(`task ${id} is already paused`);
    await container.sandbox.vm.pause();
    container.paused = true;
    this.deps.events.publish(ns, "TaskPaused", { containerId: id });
  }

  async resume(ns: string, id: string): Promise<void> {
    const container = this.pausable(ns, id);
    if (!container.paused) throw precondition(`task ${id} is not paused`);
    await container.sandbox.vm.resume();
    container.paused = false;
    this.deps.events.publish(ns, "TaskResumed", { containerId: id });
  }

  private pausable(ns: string, id: string): Container {
    const container = this.container(ns, id);
    if (!container.ownsSandbox) {
      throw new ShimError(
        "Unimplemented",
        `task ${id} shares its VM with other containers; only whole VMs can be paused`,
      );
    }
    if (container.init.state.kind !== "running")
      throw precondition(`task ${id} is ${container.init.state.kind}, not running`);
    return container;
  }

  /** cgroup v2 metrics of the container, as `ctr task metrics` and the CRI plugin read them. */
  async stats(ns: string, id: string): Promise<{ typeUrl: string; value: Uint8Array }> {
    const container = this.container(ns, id);
    if (container.init.state.kind === "stopped") throw precondition(`task ${id} is stopped`);
    const s = await container.sandbox.agent.containerStats(id);
    const value = metricsCodec.encode({
      pids: { current: s.pidsCurrent, limit: 0 },
      cpu: { usageUsec: Math.floor(s.cpuUsageNs / 1000) },
      memory: { usage: s.memoryUsageBytes, usageLimit: s.memoryLimitBytes },
    });
    return { typeUrl: "io.containerd.cgroups.v2.Metrics", value };
  }

  connect(ns: string, id: string): { shimPid: number; taskPid: number; version: string } {
    const container = this.container(ns, id);
    return { shimPid: process.pid, taskPid: container.init.pid, version: this.deps.version };
  }

  /** Every container still known, for the daemon's shutdown and the shim `delete` command. */
  list(): Container[] {
    return [...this.containers.values()];
  }

  /** Ends a task without containerd's cooperation (shim `delete` after containerd lost us). */
  async forceDelete(ns: string, id: string): Promise<ExitInfo | undefined> {
    const container = this.containers.get(this.key(ns, id));
    if (!container) return undefined;
    for (const proc of container.allProcesses()) proc.stopped(KILLED_STATUS, new Date());
    for (const forwarder of container.forwarders.values()) forwarder.close();
    await this.teardown(container);
    const exit = await container.init.exited;
    return { pid: exit.pid, exitStatus: exit.exitStatus, exitedAt: toTimestamp(exit.exitedAt) };
  }

  private key(ns: string, id: string): string {
    return `${ns}/${id}`;
  }

  private container(ns: string, id: string): Container {
    const container = this.containers.get(this.key(ns, id));
    if (!container) throw notFound(`task ${id} in namespace ${ns}`);
    return container;
  }

  private process(container: Container, execId: string): Process {
    const proc = container.process(execId);
    if (!proc) throw notFound(`exec ${execId} of container ${container.id}`);
    return proc;
  }

  /** Waits for a started process to exit in the guest, then records and announces it. */
  private async reapWhenDone(container: Container, proc: Process): Promise<void> {
    let status = KILLED_STATUS;
    let exitedAt = new Date();
    let oom = false;
    try {
      const exit = await container.sandbox.agent.waitProcess(container.ref(proc.execId));
      status = exit.exitStatus;
      exitedAt = exit.exitedAtUnixNs > 0 ? new Date(exit.exitedAtUnixNs / 1e6) : new Date();
      oom = exit.oomKilled;
    } catch (err) {
      if (proc.state.kind === "stopped") return;
      this.deps.log.warn(
        { task: container.id, err: (err as Error).message },
        "lost the agent while waiting; the process is gone",
      );
    }
    // Output first: containerd reads the FIFOs to EOF after it sees the exit.
    const forwarder = container.forwarders.get(proc.execId);
    if (forwarder) await within(forwarder.outputDone, OUTPUT_DRAIN_MS);
    if (oom) this.deps.events.publish(container.namespace, "TaskOOM", { containerId: container.id });
    this.recordExit(container, proc, status, exitedAt);
  }

  private recordExit(container: Container, proc: Process, status: number, exitedAt: Date): void {
    if (!proc.stopped(status, exitedAt)) return;
    this.deps.events.publish(container.namespace, "TaskExit", {
      containerId: container.id,
      id: proc.execId || container.id,
      pid: proc.pid,
      exitStatus: status,
      exitedAt: toTimestamp(exitedAt),
    });
  }

  /** A VM that dies takes every process in it along; containerd must hear about each. */
  private watchSandbox(container: Container): void {
    void container.sandbox.exited.then((exit) => {
      if (!this.containers.has(this.key(container.namespace, container.id))) return;
      this.deps.log.warn({ task: container.id, exit }, "sandbox VM exited");
      for (const forwarder of container.forwarders.values()) forwarder.close();
      for (const proc of container.allProcesses())
        this.recordExit(container, proc, KILLED_STATUS, new Date());
    });
  }

  private async teardown(container: Container, phases = new PhaseClock()): Promise<void> {
    this.containers.delete(this.key(container.namespace, container.id));
    const cleanup = new Cleanup();
    cleanup.defer("close task log", () => container.log?.close());
    container.volumes?.stop();
    cleanup.defer(
      "release rootfs",
      phases.wrap("rootfsReleaseMs", () => container.rootfs.release()),
    );
    if (container.ownsSandbox) {
      for (const [key, pod] of this.pods) if (pod.sandbox === container.sandbox) this.pods.delete(key);
      // Runs after the VM is gone (newest first): the TAP outlives the VMM that uses it.
      const network = container.network;
      if (network)
        cleanup.defer(
          "detach pod network",
          phases.wrap("networkDetachMs", () => network.detach()),
        );
      cleanup.defer(
        "stop VM",
        phases.wrap("vmStopMs", () => container.sandbox.destroy()),
      );
    } else {
      for (const pod of this.pods.values()) pod.members.delete(container.id);
      // Undo steps run newest first: the guest lets go of the disks before they are unplugged.
      for (const device of container.hotplugged) {
        cleanup.defer(
          `unplug ${device}`,
          phases.wrap("guestUnplugMs", () => container.sandbox.vm.removeDevice(device)),
        );
      }
      cleanup.defer(
        "remove container in guest",
        phases.wrap("guestRemoveMs", () =>
          container.sandbox.agent.removeContainer(container.id, { timeoutMs: 10_000 }),
        ),
      );
    }
    await cleanup.run();
  }

  /** The running pod a CRI app container belongs to, with room for one more container. */
  private podFor(ns: string, sandboxId: string, containerId: string): Pod {
    const pod = this.pods.get(this.key(ns, sandboxId));
    if (!pod) {
      throw notFound(
        `sandbox ${sandboxId} of container ${containerId} (no running cloudhv pod VM has that id)`,
      );
    }
    const max = this.deps.config.max_containers_per_vm;
    if (pod.members.size >= max) {
      throw new ShimError(
        "ResourceExhausted",
        `pod ${sandboxId} already runs ${pod.members.size} containers; max_containers_per_vm is ${max}`,
      );
    }
    return pod;
  }
}

/** What the agent needs to give the guest the pod's interface (IPv4 for now). */
function guestNetwork(iface: PodInterface): GuestNetwork {
  return {
    interfaces: [
      {
        mac: iface.mac,
        mtu: iface.mtu,
        addresses: iface.addresses
          .filter((a) => a.family === "inet")
          .map((a) => ({ address: a.address, prefixLen: a.prefixLen })),
      },
    ],
    routes: iface.routes
      .filter((r) => r.dest === "default" || !r.dest.includes(":"))
      .map((r) => ({ dest: r.dest, gateway: r.gateway ?? "", mac: iface.mac })),
  };
}

interface Pod {
  sandbox: Sandbox;
  members: Set<string>;
}

type PodRole = { kind: "standalone" } | { kind: "sandbox" | "container"; sandboxId: string };

/** containerd's CRI plugin marks a pod's sandbox and its containers with these annotations. */
export const CRI_CONTAINER_TYPE = "io.kubernetes.cri.container-type";
export const CRI_SANDBOX_ID = "io.kubernetes.cri.sandbox-id";

export function podRole(annotations: Record<string, unknown>, taskId: string): PodRole {
  const type = annotations[CRI_CONTAINER_TYPE];
  if (type === undefined) return { kind: "standalone" };
  const sandboxId = annotations[CRI_SANDBOX_ID];
  if (type !== "sandbox" && type !== "container") {
    throw invalid(
      `task ${taskId}: annotation ${CRI_CONTAINER_TYPE}="${String(type)}" must be "sandbox" or "container"`,
    );
  }
  if (typeof sandboxId !== "string" || !ID_PATTERN.test(sandboxId)) {
    throw invalid(
      `task ${taskId}: annotation ${CRI_SANDBOX_ID}="${String(sandboxId)}" must name the pod's sandbox`,
    );
  }
  return { kind: type, sandboxId };
}

/** VM ids must be short (they name sockets) and unique per namespace and task. */
function sandboxId(ns: string, id: string): string {
  const safe = `${ns}-${id}`.replace(/[^A-Za-z0-9_.-]/g, "_");
  return safe.length <= 48
    ? safe
    : `${safe.slice(0, 31)}-${createHash("sha256").update(safe).digest("hex").slice(0, 16)}`;
}
