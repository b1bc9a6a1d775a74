// The task service: containerd's task API. It keeps task and exec ids, process state and
// stdio, and publishes the events containerd expects; the VM and everything else a container
// needs come from its pod (pod/). It knows nothing of ttrpc framing (task/ttrpc-binding.ts maps
// it onto the wire), so unit tests drive it directly (shim/test/task-service.test.ts).
import path from "node:path";
import type { DestinationStream, LevelWithSilent } from "pino";
import type { RuntimeConfig } from "../config.js";
import type { EventPublisher, Mount, Timestamp } from "../containerd/publisher.js";
import { invalid, notFound, precondition, ShimError } from "../errors.js";
import type { StdioKeeper } from "../launcher/front-link.js";
import type { PodMetrics } from "../metrics/metrics.js";
import type { ContainmentHost } from "../pod/containment.js";
import type { NetworkAttacher, Pod, PodMember, WarmNetworkAttacher } from "../pod/pod.js";
import { Pods, type PodsDeps } from "../pod/pods.js";
import type { PoolStats, VmPool } from "../pod/pool.js";
import type { RootfsAdopter, RootfsPreparer } from "../pod/rootfs.js";
import type { ProvisionalFile, ProvisionalStore } from "../state/provisional.js";
import type { ProcessRecord, RecordStore, TaskRecord } from "../state/records.js";
import { StdioForwarder, type StdioPaths } from "../stdio/forward.js";
import { messageCodec } from "../ttrpc/proto.js";
import { TtrpcError } from "../ttrpc/status.js";
import { Cleanup } from "../util/cleanup.js";
import { logFromGuest } from "../util/guest-log.js";
import { ID_PATTERN } from "../util/ids.js";
import type { Logger } from "../util/log.js";
import { PhaseClock } from "../util/phases.js";
import { TIMED_OUT, within } from "../util/time.js";
import type { HypervisorDriver } from "../vmm/types.js";
import { Container } from "./container.js";
import { Process } from "./process.js";
import { openTaskLog, type TaskLog } from "./task-log.js";

export interface TaskServiceDeps {
  config: RuntimeConfig;
  driver: HypervisorDriver;
  /** Where task events go (containerd's Events service; a recorder in unit tests). */
  events: Pick<EventPublisher, "publish">;
  prepareRootfs: RootfsPreparer;
  /** Default: network/pod-network.ts (needs root); unit tests pass a fake. */
  attachNetwork?: NetworkAttacher;
  /** A pool VM's NIC. Default: network/pod-network.ts attachWarmNic; unit tests pass a fake. */
  attachWarmNetwork?: WarmNetworkAttacher;
  /** Default: this host's cgroups and /proc (pod/containment.ts); unit tests pass a fake. */
  containment?: ContainmentHost;
  log: Logger;
  /** Where each pod's state is kept for a later daemon (absent: nothing outlives this one). */
  records?: RecordStore;
  /** Where creates in flight are noted, for a later daemon to undo (state/provisional.ts). */
  provisional?: ProvisionalStore;
  /** Takes over a previous daemon's container disks (pod/rootfs.ts). */
  adoptRootfs?: RootfsAdopter;
  /** Keeps output FIFOs open while the daemon may die (its front; absent without one). */
  stdioKeeper?: StdioKeeper;
  /** Where `log` writes; with it, each task also logs to its bundle's `log` FIFO. */
  logDestination?: DestinationStream;
  version: string;
  /** The warm pool's options (pod/pool.ts); the pool exists when the config's `pool` > 0. */
  pool?: NonNullable<PodsDeps["pool"]>;
  /** Prometheus counters (metrics/metrics.ts); absent in unit tests. */
  metrics?: PodMetrics;
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
/** How long CloseIO waits for what containerd wrote to stdin to reach the guest first. */
const STDIN_DRAIN_MS = 5000;
/** How long an exit waits for the answer to a kill that is on its way (Process.answeredKills). */
const KILL_ANSWER_MS = 10_000;
/** How long a kill whose answer was lost waits to learn that its process ended. */
const KILL_LOST_EXIT_MS = 2000;
/** runc reports a SIGKILLed process as 128 + 9; a VM that died takes its processes with it. */
const KILLED_STATUS = 137;
/** An exec the guest could not start (crun exits 255 then; runc's exec does the same). */
const START_FAILED_STATUS = 255;

/** The guest itself answered with an error (not a lost connection: the exec may run then). */
function isGuestAnswer(err: unknown): boolean {
  const cause = err instanceof Error ? err.cause : undefined;
  return cause instanceof TtrpcError && cause.remote;
}

const round = (ms: number) => Math.round(ms * 10) / 10;

export function toTimestamp(date: Date): Timestamp {
  const ms = date.getTime();
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1_000_000 };
}

export class TaskService {
  private readonly containers = new Map<string, Container>();
  private readonly creating = new Set<string>();
  private readonly pods: Pods;

  constructor(private readonly deps: TaskServiceDeps) {
    this.pods = new Pods(deps);
  }

  /** The warm pool, when there is one (the daemon starts and closes it). */
  get pool(): VmPool | undefined {
    return this.pods.pool;
  }

  /** The pool's counters and state for metrics (undefined when the pool is off). */
  poolStats(): PoolStats | undefined {
    return this.pods.pool?.stats();
  }

  /** Tasks held, creates in flight included: the daemon's idle exit must not cut one short. */
  get size(): number {
    return this.containers.size + this.creating.size;
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
    const taskLog = this.openTaskLog(ns, req);
    const undo = new Cleanup();
    undo.defer("close task log", () => taskLog.close());
    try {
      // Phase timings go to the log on every create: the benchmarks read them from there.
      const phases = new PhaseClock();
      const io = stdioOf(req);
      const wanted = { ...req, namespace: ns, stdin: StdioForwarder.wantsStdin(io) };
      const member = await this.pods.create(wanted, taskLog.log, phases);
      undo.defer("remove container from its pod", () => this.pods.remove(member, new PhaseClock()));
      const container = new Container(
        ns,
        req.id,
        req.bundle,
        new Process(req.id, "", io, member.pid),
        member,
        taskLog,
      );
      container.forwarders.set("", new StdioForwarder(container.agent, container.ref(""), io, taskLog.log));
      this.holdStdio(container, container.init);
      undo.disarm();
      this.containers.set(key, container);
      this.watchPod(container);
      const timings = this.logCreated(container, phases);
      // The sandbox's create is the pod's start: a VM booted for it, or one claimed from the pool.
      if (member.ownsPod)
        this.deps.metrics?.podStarted(timings.poolClaimMs !== undefined ? "pool" : "cold", timings);
      await this.persist(container.pod);
      // Recorded: a later daemon adopts the pod rather than undo its create.
      await container.pod.createSettled(member.id);
      this.deps.events.publish(ns, "TaskCreate", {
        containerId: req.id,
        bundle: req.bundle,
        rootfs: req.rootfs,
        io,
        checkpoint: "",
        pid: member.pid,
      });
      return { pid: member.pid };
    } catch (err) {
      this.deps.metrics?.createFailed(err);
      await undo.run();
      throw err;
    } finally {
      this.creating.delete(key);
    }
  }

  async start(ns: string, id: string, execId: string): Promise<{ pid: number }> {
    const container = this.container(ns, id);
    const proc = this.process(container, execId);
    // A Start containerd sends again (the front re-sends a call a killed daemon had taken)
    // answers the running process's pid, as the guest does.
    if (proc.state.kind === "running") return { pid: proc.state.pid };
    if (proc.state.kind !== "created") throw precondition(`${proc.label} is ${proc.state.kind}, not created`);
    let pid: number;
    const started = performance.now();
    try {
      pid = await container.agent.startProcess(container.ref(execId));
    } catch (err) {
      // The guest refused to start an exec (no such executable, …) and has forgotten it. As
      // with runc, the exec is over: a Wait returns and a kill says so at once. Otherwise
      // containerd's cleanup (kill, then wait for the exit) would hang for its full minute
      // (kubectl cp's `test -d` probe on an image without `test` waited that long).
      if (execId && isGuestAnswer(err)) proc.stopped(START_FAILED_STATUS, new Date());
      throw err;
    }
    proc.started(pid);
    if (execId) this.deps.events.publish(ns, "TaskExecStarted", { containerId: id, execId, pid });
    else this.deps.events.publish(ns, "TaskStart", { containerId: id, pid });
    void this.reapWhenDone(container, proc);
    const guestStartMs = performance.now() - started;
    await this.persist(container.pod);
    // The guest's `crun start` (or `crun exec`) and the record's write, for the benchmarks.
    this.deps.log.info(
      {
        ns,
        task: id,
        ...(execId ? { exec: execId } : {}),
        phases: {
          guestStartMs: round(guestStartMs),
          recordMs: round(performance.now() - started - guestStartMs),
        },
      },
      "task started",
    );
    return { pid };
  }

  async kill(ns: string, id: string, execId: string, signal: number, all: boolean): Promise<void> {
    const container = this.container(ns, id);
    const proc = this.process(container, execId);
    const finished = (): boolean => proc.state.kind === "stopped";
    if (finished()) throw notFound(`${proc.label}: process already finished`);
    if (!Number.isInteger(signal) || signal <= 0 || signal > 64)
      throw invalid(`signal ${signal} is not a valid signal`);
    const answer = container.agent.signalProcess(container.ref(execId), signal, all);
    proc.noteKill(answer);
    try {
      await answer;
    } catch (err) {
      // It ended while the signal was on its way and the answer was lost (the VM went with
      // it): as for any process that finished, NOT_FOUND, which containerd's StopContainer
      // and StopPodSandbox take as done. Its exit is announced only after this (see reapWhenDone).
      if (finished() || (await within(proc.exited, KILL_LOST_EXIT_MS)) !== TIMED_OUT)
        throw notFound(`${proc.label}: process already finished`);
      throw err;
    }
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
    this.releaseStdio(container, proc);
    proc.stopped(KILLED_STATUS, new Date());
    const exit = await proc.exited;
    const info = { pid: exit.pid, exitStatus: exit.exitStatus, exitedAt: toTimestamp(exit.exitedAt) };
    if (execId) {
      container.execs.delete(execId);
      await this.persist(container.pod);
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
    return container.agent.listPids(id);
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
    const io = stdioOf(req);
    await container.agent.execProcess({
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
        container.agent,
        container.ref(req.execId),
        io,
        container.log.log.child({ exec: req.execId }),
      ),
    );
    this.holdStdio(container, proc);
    this.deps.events.publish(ns, "TaskExecAdded", { containerId: req.id, execId: req.execId });
    await this.persist(container.pod);
  }

  async resizePty(ns: string, id: string, execId: string, width: number, height: number): Promise<void> {
    const container = this.container(ns, id);
    this.process(container, execId);
    await container.agent.resizePty(container.ref(execId), width, height);
  }

  async closeIO(ns: string, id: string, execId: string, stdin: boolean): Promise<void> {
    const container = this.container(ns, id);
    this.process(container, execId);
    if (!stdin) return;
    const forwarder = container.forwarders.get(execId);
    if (forwarder) await forwarder.closeStdin(STDIN_DRAIN_MS);
    else await container.agent.closeStdin(container.ref(execId));
  }

  /** Pausing stops every vCPU, so it is offered only where the VM holds this container alone. */
  async pause(ns: string, id: string): Promise<void> {
    const container = this.pausable(ns, id);
    if (container.paused) throw precondition(`task ${id} is already paused`);
    await container.pod.pause();
    container.paused = true;
    this.deps.events.publish(ns, "TaskPaused", { containerId: id });
  }

  async resume(ns: string, id: string): Promise<void> {
    const container = this.pausable(ns, id);
    if (!container.paused) throw precondition(`task ${id} is not paused`);
    await container.pod.resume();
    container.paused = false;
    this.deps.events.publish(ns, "TaskResumed", { containerId: id });
  }

  private pausable(ns: string, id: string): Container {
    const container = this.container(ns, id);
    if (!container.member.ownsPod) {
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
    const s = await container.agent.containerStats(id);
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

  /**
   * Resolves once deleted pods have left their netns and their records are gone (the daemon's
   * exit waits for this).
   */
  lingering(): Promise<void> {
    return this.pods.lingering();
  }

  /** Every container still known, for the daemon's shutdown and the shim `delete` command. */
  list(): Container[] {
    return [...this.containers.values()];
  }

  /** Ends a task without containerd's cooperation (shim `delete` after containerd lost us). */
  async forceDelete(ns: string, id: string): Promise<ExitInfo | undefined> {
    const container = this.containers.get(this.key(ns, id));
    if (!container) return undefined;
    for (const proc of container.allProcesses()) {
      proc.stopped(KILLED_STATUS, new Date());
      this.releaseStdio(container, proc);
    }
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
      const exit = await container.agent.waitProcess(container.ref(proc.execId));
      status = exit.exitStatus;
      exitedAt = exit.exitedAtUnixNs > 0 ? new Date(exit.exitedAtUnixNs / 1e6) : new Date();
      oom = exit.oomKilled;
    } catch (err) {
      if (proc.state.kind === "stopped") return;
      // Usually the VM went away: say why when the VMM tells (a guest panic, a reset).
      const vmExit = await within(container.pod.exited, 2000);
      const reason = vmExit === TIMED_OUT ? undefined : vmExit.reason;
      const fields = { task: container.id, err: (err as Error).message, ...(reason ? { reason } : {}) };
      const msg = reason
        ? `the sandbox VM ended: ${reason}`
        : "lost the agent while waiting; the process is gone";
      if (container.agent.guest) logFromGuest(container.log.log, container.agent.guest, "warn", fields, msg);
      else container.log.log.warn(fields, msg);
    }
    // Output first: containerd reads the FIFOs to EOF after it sees the exit.
    const forwarder = container.forwarders.get(proc.execId);
    if (forwarder) await within(forwarder.outputDone, OUTPUT_DRAIN_MS);
    // A kill that ended it is answered before the exit is announced (Process.answeredKills).
    // A guest that holds the answer back delays only its own exit, and not for long.
    await within(proc.answeredKills(), KILL_ANSWER_MS);
    if (oom) this.deps.events.publish(container.namespace, "TaskOOM", { containerId: container.id });
    this.recordExit(container, proc, status, exitedAt);
  }

  private recordExit(container: Container, proc: Process, status: number, exitedAt: Date): void {
    // The output is drained (or the VM is gone): containerd may now see the FIFOs' end.
    this.releaseStdio(container, proc);
    if (!proc.stopped(status, exitedAt)) return;
    void this.persist(container.pod);
    this.deps.events.publish(container.namespace, "TaskExit", {
      containerId: container.id,
      id: proc.execId || container.id,
      pid: proc.pid,
      exitStatus: status,
      exitedAt: toTimestamp(exitedAt),
    });
  }

  /** A VM that dies takes every process in it along; containerd must hear about each. */
  private watchPod(container: Container): void {
    void container.pod.exited.then((exit) => {
      if (!this.containers.has(this.key(container.namespace, container.id))) return;
      // The task's own log too (containerd's log for the task): the reason is what an operator
      // looks for when every process of a pod ended with 137 at once.
      container.log.log.warn(
        { exit },
        exit.reason ? `sandbox VM exited: ${exit.reason}` : "sandbox VM exited",
      );
      for (const forwarder of container.forwarders.values()) forwarder.close();
      for (const proc of container.allProcesses())
        this.recordExit(container, proc, KILLED_STATUS, new Date());
    });
  }

  private async teardown(container: Container, phases = new PhaseClock()): Promise<void> {
    this.containers.delete(this.key(container.namespace, container.id));
    const { lingering } = await this.pods.remove(container.member, phases);
    container.log.close();
    if (container.member.ownsPod) {
      const records = this.deps.records;
      const vmId = container.pod.vm.id;
      // The record goes once the rest of the pod has left (Pod.leave): a daemon killed before
      // that finds the pod's VM gone and releases what the record names.
      if (lingering)
        this.pods.linger(
          `record ${vmId}`,
          lingering.then(() => records?.remove(vmId)),
        );
      else await records?.remove(vmId);
    } else {
      await this.persist(container.pod);
      // Its disks leave the VM after this reply (Pod.retire): the record drops them once gone.
      void container.pod.retirement().then(() => this.persist(container.pod));
    }
  }

  /**
   * Writes the pod's record: the pod (VM, network, disks, volumes) and the tasks of every
   * container in it. Called after each change a later daemon must know about.
   */
  private persist(pod: Pod): Promise<void> {
    const records = this.deps.records;
    if (!records) return Promise.resolve();
    return records.save(pod.vm.id, async () => {
      const containers = this.list().filter((c) => c.pod === pod);
      // No task of the pod is held any more: it was deleted while this save waited its turn (a
      // late exit's save after the sandbox's removal); a record now would outlive the pod.
      if (containers.length === 0) return undefined;
      const record = await pod.record(
        this.pods.isSandbox(pod),
        containers.map((c) => c.member),
      );
      if (!record) return undefined;
      return { pod: record, tasks: containers.map(taskRecord) };
    });
  }

  /**
   * Takes over every pod a previous daemon of this identity left running (its records): the
   * VMs, their agents and host resources, and the tasks in them, whose processes keep running.
   * Exits that happened meanwhile are reported when the agent tells them; the tasks of a VM that
   * died meanwhile are announced as killed. Returns the number of tasks taken over.
   */
  async restore(): Promise<number> {
    const records = this.deps.records;
    if (!records) return 0;
    // Pods are independent: a wedged guest's agent timeout does not hold up the others.
    const counts = await Promise.all(
      (await records.load()).map(async (file) => {
        const started = performance.now();
        const log = this.deps.log.child({ vm: file.pod.vmId });
        const adopted = await this.pods.adopt(file.pod, log).catch((err: unknown) => {
          log.error({ err: (err as Error).message }, "could not take over the pod");
          return undefined;
        });
        if (!adopted) {
          log.warn({ tasks: file.tasks.map((t) => t.id) }, "pod's VM is gone; its tasks are reported killed");
          for (const task of file.tasks) this.announceLost(task);
          await records.remove(file.pod.vmId);
          return 0;
        }
        let restored = 0;
        for (const task of file.tasks) {
          const member = adopted.members.get(task.id);
          if (!member) continue;
          this.adoptTask(task, member);
          restored++;
        }
        await this.persist(adopted.pod);
        // Disks a deleted container left leaving the VM are finished (Pod.adopt): recorded again.
        void adopted.pod.retirement().then(() => this.persist(adopted.pod));
        log.info(
          { tasks: file.tasks.map((t) => t.id), ms: Math.round(performance.now() - started) },
          "took over a pod from a previous daemon",
        );
        return restored;
      }),
    );
    return counts.reduce((a, b) => a + b, 0);
  }

  /**
   * Takes back what a join a killed daemon left in flight added to a pod this daemon adopted
   * (state/provisional.ts); undefined when no pod of this daemon has that VM.
   */
  async undoJoin(note: ProvisionalFile): Promise<string[] | undefined> {
    if (!note.container) return undefined;
    const pod = this.list().find((c) => c.member.pod.vm.id === note.vmId)?.member.pod;
    if (!pod) return undefined;
    const did = await pod.undoJoin({
      container: note.container,
      disks: note.disks ?? [],
      binds: note.binds ?? [],
      guest: note.guest === true,
      share: note.share,
    });
    // A virtiofsd the dead join started may now be the pod's share: its record names it.
    if (note.share) await this.persist(pod);
    return did;
  }

  private adoptTask(task: TaskRecord, member: PodMember): void {
    const taskLog = this.openTaskLog(task.namespace, { id: task.id, bundle: task.bundle });
    const init = adoptProcess(task.id, task.init);
    const container = new Container(task.namespace, task.id, task.bundle, init, member, taskLog);
    for (const exec of task.execs) container.execs.set(exec.execId, adoptProcess(task.id, exec));
    this.containers.set(this.key(task.namespace, task.id), container);
    for (const proc of container.allProcesses()) {
      if (proc.state.kind === "stopped") {
        // The dead daemon may have drained it without telling the front.
        this.releaseStdio(container, proc);
        continue;
      }
      this.holdStdio(container, proc);
      const log = proc.execId ? taskLog.log.child({ exec: proc.execId }) : taskLog.log;
      container.forwarders.set(
        proc.execId,
        new StdioForwarder(container.agent, container.ref(proc.execId), proc.io, log),
      );
      if (proc.state.kind === "running") void this.reapWhenDone(container, proc);
    }
    this.watchPod(container);
  }

  private holdStdio(container: Container, proc: Process): void {
    const { stdout, stderr } = proc.io;
    this.deps.stdioKeeper?.hold(`${container.namespace}/${container.id}/${proc.execId}`, [stdout, stderr]);
  }

  private releaseStdio(container: Container, proc: Process): void {
    this.deps.stdioKeeper?.release(`${container.namespace}/${container.id}/${proc.execId}`);
  }

  /** A task whose VM died while no daemon watched it: containerd hears it was killed. */
  private announceLost(task: TaskRecord): void {
    const now = toTimestamp(new Date());
    for (const proc of [task.init, ...task.execs]) {
      if (proc.state !== "running") continue;
      this.deps.events.publish(task.namespace, "TaskExit", {
        containerId: task.id,
        id: proc.execId || task.id,
        pid: proc.pid,
        exitStatus: KILLED_STATUS,
        exitedAt: now,
      });
    }
  }

  private openTaskLog(ns: string, req: Pick<CreateTaskRequest, "id" | "bundle">): TaskLog {
    const { log, logDestination } = this.deps;
    if (!logDestination) return { log: log.child({ ns, task: req.id }), close() {} };
    return openTaskLog(logDestination, log.level as LevelWithSilent, req.bundle, { ns, task: req.id });
  }

  /** The create's line in the log, with its phase timings (the benchmarks read them); returns them. */
  private logCreated(container: Container, phases: PhaseClock): Record<string, number> {
    phases.mark("end");
    const totalMs = phases.span("start", "end");
    const { member } = container;
    const size = member.pod.size;
    const timings = { totalMs, ...phases.summary(totalMs) };
    container.log.log.info(
      {
        pid: member.pid,
        cacheHit: member.rootfs.cacheHit,
        ...(member.ownsPod ? { vm: { vcpus: size.vcpus, memoryMb: size.memoryMb, from: size.sources } } : {}),
        phases: {
          rootfsMs: phases.span("start", "disksReady"),
          vmBootMs: phases.span("disksReady", "vmReady"),
          guestCreateMs: phases.span("vmReady", "end"),
          ...timings,
        },
      },
      "task created",
    );
    return timings;
  }
}

function processRecord(proc: Process): ProcessRecord {
  const s = proc.state;
  return {
    execId: proc.execId,
    io: { ...proc.io },
    pid: s.pid,
    state: s.kind,
    ...(s.kind === "stopped" ? { exitStatus: s.exitStatus, exitedAtMs: s.exitedAt.getTime() } : {}),
  };
}

function taskRecord(container: Container): TaskRecord {
  return {
    namespace: container.namespace,
    id: container.id,
    bundle: container.bundle,
    init: processRecord(container.init),
    execs: [...container.execs.values()].map(processRecord),
  };
}

/** A process as a previous daemon left it. */
function adoptProcess(containerId: string, record: ProcessRecord): Process {
  const proc = new Process(containerId, record.execId, record.io, record.pid);
  if (record.state !== "created") proc.started(record.pid);
  if (record.state === "stopped")
    proc.stopped(record.exitStatus ?? KILLED_STATUS, new Date(record.exitedAtMs ?? Date.now()));
  return proc;
}

function stdioOf(req: { stdin: string; stdout: string; stderr: string; terminal: boolean }): StdioPaths {
  return { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal };
}
