// A TaskService on fakes, for unit tests: the fake VMM (fake-vmm.ts) with in-process agents,
// a rootfs preparer and a pod network that only count what is held, and an event recorder.
// Bundles are real directories with a config.json, as containerd writes them.
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import pino from "pino";
import type { CgroupHierarchy } from "../../src/cgroup/cgroup.js";
import { parseConfig, type RuntimeConfig } from "../../src/config.js";
import type { TaskEvents } from "../../src/containerd/publisher.js";
import { statusOf } from "../../src/errors.js";
import type { PodNetwork } from "../../src/network/pod-network.js";
import type { ContainmentHost } from "../../src/pod/containment.js";
import { CRI_CONTAINER_TYPE, CRI_SANDBOX_ID } from "../../src/pod/cri.js";
import type { BootNic } from "../../src/pod/pool.js";
import type { PreparedRootfs } from "../../src/pod/rootfs.js";
import type { RootfsRecord } from "../../src/state/records.js";
import { RecordStore } from "../../src/state/records.js";
import { type CreateTaskRequest, TaskService } from "../../src/task/service.js";
import { log } from "../../src/util/log.js";
import type { VmHandle } from "../../src/vmm/types.js";
import { FakeDriver } from "./fake-vmm.js";

export const NS = "unit";

// Undo steps that fail on purpose (a dead VM's guest) log errors; CLOUDHV_LOG_LEVEL shows them.
if (!process.env.CLOUDHV_LOG_LEVEL) log.level = "silent";

/** The gRPC status code an error reaches containerd with. */
export function codeOf(err: unknown): number {
  return statusOf(err).code;
}

export interface RecordedEvent {
  namespace: string;
  name: keyof TaskEvents;
  event: Record<string, unknown>;
}

export class EventRecorder {
  readonly events: RecordedEvent[] = [];

  publish<K extends keyof TaskEvents>(namespace: string, name: K, event: TaskEvents[K]): void {
    this.events.push({ namespace, name, event: { ...event } });
  }

  named(name: keyof TaskEvents): Array<Record<string, unknown>> {
    return this.events.filter((e) => e.name === name).map((e) => e.event);
  }

  /** Waits (briefly) until `count` events called `name` arrived. */
  async waitFor(name: keyof TaskEvents, count: number): Promise<Array<Record<string, unknown>>> {
    const deadline = Date.now() + 2000;
    while (this.named(name).length < count && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 5));
    return this.named(name);
  }
}

/** Hands out disks and remembers which containers still hold theirs. */
export class FakeRootfs {
  readonly held = new Set<string>();
  private failing = false;

  failNext(): void {
    this.failing = true;
  }

  prepare = async (namespace: string, containerId: string): Promise<PreparedRootfs> => {
    if (this.failing) {
      this.failing = false;
      throw new Error("no space left for the rootfs (fake)");
    }
    const owner = `${namespace}/${containerId}`;
    this.held.add(owner);
    const disks = [
      { path: `/fake/${containerId}.erofs`, serial: `i${containerId}`.slice(0, 20), readOnly: true },
      { path: `/fake/${containerId}.ext4`, serial: `s${containerId}`.slice(0, 20), readOnly: false },
    ];
    const record = {
      disks,
      rootfsSerial: `i${containerId}`.slice(0, 20),
      scratchSerial: `s${containerId}`.slice(0, 20),
      imageKey: "0".repeat(64),
      // The owner, for adopt(): fake disks have no file.
      scratchPath: owner,
      scratchBytes: 0,
    };
    return {
      disks,
      rootfsSerial: record.rootfsSerial,
      scratchSerial: record.scratchSerial,
      cacheHit: false,
      record,
      release: async () => {
        this.held.delete(owner);
      },
    };
  };

  /** A later "daemon" takes over the disks a container holds. */
  adopt = async (record: RootfsRecord): Promise<PreparedRootfs> => ({
    disks: record.disks,
    rootfsSerial: record.rootfsSerial,
    scratchSerial: record.scratchSerial,
    cacheHit: true,
    record,
    release: async () => {
      this.held.delete(record.scratchPath);
    },
  });
}

/**
 * The host's cgroups as two v1 hierarchies under a temp dir (mkdir there makes no control
 * files, which the code tolerates), and the OOM scores the VMMs got, newest last.
 */
export class FakeContainment implements ContainmentHost {
  readonly scores: Array<{ pid: number; score: number }> = [];

  constructor(readonly root: string) {}

  async hierarchies(): Promise<CgroupHierarchy[]> {
    const found: CgroupHierarchy[] = [];
    for (const name of ["cpu", "memory"]) {
      await mkdir(path.join(this.root, name), { recursive: true });
      found.push({ mount: path.join(this.root, name), version: 1, controllers: [name] });
    }
    return found;
  }

  setOomScoreAdj = async (pid: number, score: number): Promise<void> => {
    this.scores.push({ pid, score });
  };

  /** Processes moved into cgroups after they ran (claimed pool VMs), and nice values set. */
  readonly joined: Array<{ pid: number; procs: readonly string[] }> = [];
  readonly nice: Array<{ pid: number; nice: number }> = [];

  /** Holds each cgroup join until it resolves; `failNextJoin` makes the next one fail. */
  joinGate: Promise<void> | undefined;
  private joinFails = false;

  failNextJoin(): void {
    this.joinFails = true;
  }

  joinCgroup = async (pid: number, procs: readonly string[]): Promise<void> => {
    await this.joinGate;
    if (this.joinFails) {
      this.joinFails = false;
      throw new Error(`cgroup.procs: cannot move ${pid} (injected)`);
    }
    this.joined.push({ pid, procs });
  };

  setNice = async (pid: number, nice: number): Promise<void> => {
    this.nice.push({ pid, nice });
  };

  /** The last score a VMM got. */
  scoreOf(pid: number): number | undefined {
    return this.scores.filter((s) => s.pid === pid).at(-1)?.score;
  }
}

/** A pod network as CNI's bridge leaves it; counts what is attached. */
export class FakeNetwork {
  readonly attached = new Set<string>();
  private failing = false;

  failNext(): void {
    this.failing = true;
  }

  /** When set, a detach waits for it first (the kernel's slow TAP removal). */
  detachGate: Promise<void> | undefined;

  /** When set, a pool VM's NIC attach waits for it first (a slow pod network). */
  warmGate: Promise<void> | undefined;

  /** Pool VMs whose NIC from their boot was moved into a pod netns (by VM id). */
  readonly moved = new Map<string, { tap: string; netnsPath: string }>();

  /**
   * A pool VM's NIC: the one it booted with moves into the pod netns (recorded in `moved`), or
   * one is hot-plugged into the running VM; then the same pod network.
   */
  attachWarm = async (vm: VmHandle, netnsPath: string, bootNic?: BootNic): Promise<PodNetwork> => {
    await this.warmGate;
    const network = await this.attach(netnsPath);
    if (bootNic) this.moved.set(vm.id, { tap: bootNic.tap, netnsPath });
    else await vm.addNet?.({ tap: network.tap, mac: network.iface.mac, id: "net0" });
    return network;
  };

  attach = async (netnsPath: string): Promise<PodNetwork> => {
    if (this.failing) {
      this.failing = false;
      throw new Error(`pod netns ${netnsPath} has no ethernet interface (fake)`);
    }
    this.attached.add(netnsPath);
    return {
      netnsPath,
      tap: "tap0_chv",
      iface: {
        name: "eth0",
        mac: "02:42:0a:58:00:07",
        mtu: 1500,
        addresses: [
          { family: "inet", address: "10.88.0.7", prefixLen: 16 },
          { family: "inet6", address: "fd00::7", prefixLen: 64 },
        ],
        routes: [{ dest: "default", gateway: "10.88.0.1" }],
      },
      detach: async () => {
        await this.detachGate;
        this.attached.delete(netnsPath);
      },
    };
  };
}

export interface TaskOptions {
  /** CRI role: "sandbox" boots the pod's VM, "container" joins the sandbox named by `sandbox`. */
  role?: "sandbox" | "container";
  sandbox?: string;
  /** A pod network namespace in the spec (CNI's), which makes the VM get a NIC. */
  netns?: string;
  /** Namespaces left out of the spec, as containerd's CRI does for hostNetwork/hostPID/hostIPC. */
  hostNamespaces?: Array<"network" | "pid" | "ipc">;
  annotations?: Record<string, string>;
  /** linux.cgroupsPath, as containerd's CRI writes it. */
  cgroupsPath?: string;
  /** process.oomScoreAdj (kubelet's score for the container). */
  oomScoreAdj?: number;
  /** linux.resources (a standalone task's limits). */
  resources?: Record<string, unknown>;
  /** The spec's mounts (kubelet's binds: resolv.conf, volumes). */
  mounts?: Array<{ destination: string; type: string; source: string; options: string[] }>;
}

export class TaskRig {
  /** The daemon log's lines at warn and above, as JSON text. */
  readonly logLines: string[] = [];
  readonly events = new EventRecorder();
  readonly rootfs = new FakeRootfs();
  readonly network = new FakeNetwork();
  readonly containment: FakeContainment;
  readonly driver: FakeDriver;
  tasks: TaskService;
  readonly config: RuntimeConfig;
  /** Pod records, as the daemon keeps them for its successor. */
  readonly records: RecordStore;

  private constructor(
    readonly dir: string,
    config: Record<string, unknown>,
    /** Pool options for the task service (the pool exists when config `pool` > 0). */
    private readonly poolOpts?: { retryMs?: { min: number; max: number } },
  ) {
    // Sandboxes get disks as app containers do unless a test asks for the guest's holder.
    this.config = parseConfig(
      { state_dir: path.join(dir, "state"), sandbox_holder: false, ...config },
      "unit test",
    );
    this.driver = new FakeDriver(dir);
    this.containment = new FakeContainment(path.join(dir, "cgroup"));
    this.records = new RecordStore(
      path.join(dir, "state", "records"),
      "shim-unit",
      pino({ level: "silent" }),
    );
    this.tasks = this.newTaskService();
  }

  /** Set when the current task service's "daemon" died: it then publishes and records nothing. */
  private dead = { value: false };

  private newTaskService(): TaskService {
    const dead = { value: false };
    this.dead = dead;
    const records = this.records;
    return new TaskService({
      config: this.config,
      driver: this.driver,
      events: { publish: (...args) => dead.value || this.events.publish(...args) },
      records: {
        save: (...args: Parameters<RecordStore["save"]>) =>
          dead.value ? Promise.resolve() : records.save(...args),
        remove: (vmId: string) => (dead.value ? Promise.resolve() : records.remove(vmId)),
        load: () => records.load(),
      } as RecordStore,
      prepareRootfs: this.rootfs.prepare,
      adoptRootfs: this.rootfs.adopt,
      attachNetwork: this.network.attach,
      attachWarmNetwork: this.network.attachWarm,
      containment: this.containment,
      pool: { log: pino({ level: "silent" }), pollMs: 5, ...this.poolOpts },
      // Warnings and errors are kept: tests read what the daemon would log.
      log: pino({ level: "warn" }, { write: (line: string) => void this.logLines.push(line) }),
      version: "unit",
    });
  }

  /**
   * A new daemon of the same identity, as after a crash: a fresh task service that knows only
   * the records; the old one is dropped without any teardown. Returns how many tasks it took over.
   */
  async restartDaemon(): Promise<number> {
    // A dead daemon says nothing more, and its kernel closes every connection it held.
    this.dead.value = true;
    for (const container of this.tasks.list()) {
      for (const forwarder of container.forwarders.values()) forwarder.close();
      container.member.volumes.stop();
      container.agent.close();
    }
    this.tasks = this.newTaskService();
    return this.tasks.restore();
  }

  static async open(
    config: Record<string, unknown> = {},
    poolOpts?: { retryMs?: { min: number; max: number } },
  ): Promise<TaskRig> {
    return new TaskRig(await mkdtemp(path.join(os.tmpdir(), "cloudhv-unit-")), config, poolOpts);
  }

  /** Writes an OCI bundle for task `id` and returns containerd's CreateTask request for it. */
  async request(id: string, opts: TaskOptions = {}): Promise<CreateTaskRequest> {
    const bundle = path.join(this.dir, "bundles", id);
    await mkdir(bundle, { recursive: true });
    const annotations: Record<string, string> = { ...opts.annotations };
    if (opts.role) {
      annotations[CRI_CONTAINER_TYPE] = opts.role;
      annotations[CRI_SANDBOX_ID] = opts.sandbox ?? id;
    }
    const spec = {
      ociVersion: "1.0.2",
      process: {
        args: ["/bin/true"],
        cwd: "/",
        ...(opts.oomScoreAdj !== undefined ? { oomScoreAdj: opts.oomScoreAdj } : {}),
      },
      annotations,
      linux: {
        namespaces: [
          { type: "pid" },
          { type: "ipc" },
          { type: "uts" },
          { type: "mount" },
          opts.netns ? { type: "network", path: opts.netns } : { type: "network" },
        ].filter((n) => !opts.hostNamespaces?.includes(n.type as "network")),
        ...(opts.cgroupsPath ? { cgroupsPath: opts.cgroupsPath } : {}),
        ...(opts.resources ? { resources: opts.resources } : {}),
      },
      mounts: opts.mounts ?? [],
    };
    await writeFile(path.join(bundle, "config.json"), JSON.stringify(spec));
    return {
      id,
      bundle,
      rootfs: [{ type: "overlay", source: "overlay", target: "", options: ["lowerdir=/l"] }],
      terminal: false,
      stdin: "",
      stdout: "",
      stderr: "",
      checkpoint: "",
    };
  }

  async create(id: string, opts: TaskOptions = {}): Promise<number> {
    return (await this.tasks.create(NS, await this.request(id, opts))).pid;
  }

  /** The only VM still running (fails the test when there is not exactly one). */
  get vm() {
    const running = this.driver.running;
    if (running.length !== 1) throw new Error(`${running.length} VMs run, expected one`);
    return running[0] as (typeof running)[number];
  }

  /** What a create or delete left behind, for "nothing left" assertions. */
  leftovers() {
    return {
      tasks: this.tasks.list().map((c) => c.id),
      vms: this.driver.running.map((vm) => vm.id),
      rootfs: [...this.rootfs.held],
      network: [...this.network.attached],
    };
  }

  /** leftovers() once what deletes left running is done (the deleted pods' VMs gone, Pod.leave). */
  async settled() {
    await this.tasks.lingering();
    return this.leftovers();
  }

  async close(): Promise<void> {
    await this.tasks.pool?.close();
    for (const container of this.tasks.list())
      await this.tasks.forceDelete(container.namespace, container.id);
    for (const vm of this.driver.vms) await vm.stop();
    await rm(this.dir, { recursive: true, force: true });
  }
}
