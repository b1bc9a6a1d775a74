// A pod: one microVM and everything that lives and dies with it: the pod network, the boot
// disks, the guest's network, and its member containers (their disks, volumes and guest
// containers). Each step that builds something registers its undo at once, so a create that
// fails halfway leaves nothing behind, and teardown undoes in the reverse order of building.
import { createHash } from "node:crypto";
import { readdir, rm } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { AgentClient, GuestNetwork } from "../agent/client.js";
import { PodCgroup } from "../cgroup/cgroup.js";
import { oomScoreAdjFor } from "../cgroup/oom.js";
import type { RuntimeConfig } from "../config.js";
import type { Mount } from "../containerd/publisher.js";
import { precondition, ShimError } from "../errors.js";
import type { NetHelper } from "../network/net-helper.js";
import { type HeldNetns, holdNetns } from "../network/netns-hold.js";
import { adoptPodNetwork, type PodInterface, type PodNetwork } from "../network/pod-network.js";
import { PodPortForward } from "../network/port-forward.js";
import { POD_TAP, type Provisional, type ProvisionalStore } from "../state/provisional.js";
import type { MemberRecord, PodRecord } from "../state/records.js";
import { Cleanup } from "../util/cleanup.js";
import { type Logger, log as rootLog } from "../util/log.js";
import type { PhaseClock } from "../util/phases.js";
import { processIdentity } from "../util/proc.js";
import type { DiskSpec, HypervisorDriver, VmExit, VmHandle } from "../vmm/types.js";
import { FS_DEVICE_ID, PodShare, volumesFailed } from "../volumes/virtiofs.js";
import { ContainerVolumes } from "../volumes/volumes.js";
import { connectAdoptedAgent } from "./adopt-agent.js";
import { type ContainmentHost, type ContainmentPlan, planContainment } from "./containment.js";
import { growVm } from "./grow.js";
import { watchAgentHealth } from "./health.js";
import type { Lingering } from "./lingering.js";
import type { BootNic, WarmVm } from "./pool.js";
import { noRootfs, type PreparedRootfs, type RootfsAdopter, type RootfsPreparer } from "./rootfs.js";
import type { ScratchSize } from "./scratch-size.js";
import type { VmSize } from "./sizing.js";
import { type OciSpecFile, podNetnsPath } from "./spec.js";

/** Puts the VM's NIC in place of the pod's interface (network/pod-network.ts; faked in unit tests). */
export type NetworkAttacher = (netnsPath: string) => Promise<PodNetwork>;

/**
 * The same for a running pool VM: the NIC it booted with (`bootNic`) moves into the pod's netns
 * (network/pod-network.ts attachBootNic); without one, a NIC is hot-plugged (attachWarmNic).
 */
export type WarmNetworkAttacher = (vm: VmHandle, netnsPath: string, bootNic?: BootNic) => Promise<PodNetwork>;

/** How long a claimed pool VM's guest may take to show its hot-plugged NIC. */
const NIC_APPEAR_MS = 20_000;

export interface PodDeps {
  config: RuntimeConfig;
  driver: HypervisorDriver;
  prepareRootfs: RootfsPreparer;
  /** Takes over a previous daemon's container disks (absent: pods cannot be adopted). */
  adoptRootfs?: RootfsAdopter;
  attachNetwork: NetworkAttacher;
  /** The pod network helper, for a network a previous daemon attached (Pod.adopt). */
  net: NetHelper;
  /** For pool VMs (absent: pool VMs cannot take a pod network). */
  attachWarmNetwork?: WarmNetworkAttacher;
  /** The host's cgroups and OOM scores (pod/containment.ts; faked in unit tests). */
  containment: ContainmentHost;
  /** Notes each create in flight for a later daemon to undo (absent: nothing is noted). */
  provisional?: ProvisionalStore;
  /** What deleted pods left behind, still going (Pod.leave). */
  lingering: Lingering;
}

/** What a removal left running after it returned. */
export interface Removed {
  /** The rest of a deleted pod leaving, its VM dead (Pod.leave); settles, never rejects. */
  lingering?: Promise<void>;
}

/** One container to create in a pod, as the task service asks for it. */
export interface ContainerRequest {
  namespace: string;
  id: string;
  rootfs: Mount[];
  terminal: boolean;
  /** Whether the host will feed the container's stdin. */
  stdin: boolean;
  /** Its scratch disk's size, from its spec (Pods.create); the config's when absent. */
  scratch?: ScratchSize;
  /** A CRI sandbox the guest's namespace holder runs: no rootfs, no disks (config sandbox_holder). */
  holder?: boolean;
}

/** A container in a pod's VM, with what the pod holds for it until it leaves. */
export interface PodMember {
  readonly id: string;
  readonly pod: Pod;
  /** Guest pid of the container's init process. */
  readonly pid: number;
  /** The container booted the VM (a plain task, a CRI sandbox): the VM goes when it goes. */
  readonly ownsPod: boolean;
  readonly rootfs: PreparedRootfs;
  /** Devices hot-plugged into the VM for this container (none for the VM's owner). */
  readonly devices: readonly string[];
  /** Copied volumes kept in sync with the host while the container lives. */
  readonly volumes: ContainerVolumes;
}

/** How long a new daemon waits for an adopted VM's agent before giving the pod up. */
const ADOPT_AGENT_MS = 30_000;

/** Where a pod keeps its host-side files (virtiofsd's socket, the shared directory). */
function podDir(config: RuntimeConfig, vmId: string): string {
  return path.join(config.state_dir, "pods", vmId);
}

export class Pod {
  /** App containers that joined (or are joining) the VM, for max_containers_per_vm. */
  private readonly joined = new Set<string>();
  /** kubelet's OOM score of each app container, for a Burstable pod's VMM (cgroup/oom.ts). */
  private readonly containerScores = new Map<string, number>();
  private oomScoreAdj: number | undefined;
  /** virtiofsd and its device, once a container has needed a shared volume. */
  private share: Promise<PodShare> | undefined;
  /** The pod network on the host (pods with a netns only), once attached and given to the guest. */
  private network: PodNetwork | undefined;
  /** CRI port-forward into the VM (pods on a pod network only). */
  private portForward: PodPortForward | undefined;
  /** Ends the agent health checks (pod/health.ts). */
  private readonly stopHealth: () => void;
  /** Why the health checks stopped the VM, once they have. */
  private wedged: string | undefined;
  private readonly exitedWithReason: Promise<VmExit>;
  /** The pod is going down: a retiring container's guest steps failing is expected then. */
  private goingDown = false;
  /** Provisional records of creates (the boot's, joins') by container, until the pod's record has them. */
  private readonly provisional = new Map<string, Provisional>();
  /**
   * App containers deleted whose disks are still leaving the VM (unplug, then their files are
   * released), by id: a delete replies before that (Pod.retire). Recorded, so that a daemon
   * killed meanwhile leaves them to the next.
   */
  private readonly retiring = new Map<
    string,
    {
      member: PodMember;
      /** Once its unplugs settled: whether they all succeeded (else the files wait for the VMM's exit). */
      unplugged: Promise<boolean>;
      done: Promise<void>;
    }
  >();

  private constructor(
    /** The CRI sandbox id, or the plain task's id. */
    readonly id: string,
    /** namespace/pod id: unique on the node; groups the pod's emptyDirs. */
    readonly key: string,
    readonly vm: VmHandle,
    readonly agent: AgentClient,
    /** How the VM is sized (from annotations, CRI resources or the config). */
    readonly size: VmSize,
    private readonly deps: PodDeps,
    private readonly containment: ContainmentPlan,
    /** The pod's cgroup, which the VMM joined; removed with the pod if we created it. */
    readonly cgroup: PodCgroup | undefined,
    share: PodShare | undefined,
  ) {
    if (share) this.share = Promise.resolve(share);
    // A wedged agent ends the pod: the VM is stopped and its tasks exit with the reason.
    this.stopHealth = watchAgentHealth({
      check: (timeoutMs) => agent.health({ timeoutMs }),
      intervalMs: deps.config.agent_health_interval_ms,
      deadlineMs: deps.config.agent_health_timeout_ms,
      misses: deps.config.agent_health_misses,
      onWedged: (reason) => {
        this.wedged = reason;
        rootLog.error({ pod: id, vm: vm.id }, reason);
        void vm
          .stop()
          .catch((err: unknown) => rootLog.error({ pod: id, err }, "stopping the wedged VM failed"));
      },
    });
    void vm.exited.finally(() => this.stopHealth());
    this.exitedWithReason = vm.exited.then((exit) => (this.wedged ? { ...exit, reason: this.wedged } : exit));
  }

  /**
   * Boots the VM for its first container (a plain task or a CRI sandbox), with that container's
   * disks attached and the pod network in place, and creates the container in it.
   */
  static async boot(
    where: { id: string; key: string; vmId: string; size: VmSize },
    first: ContainerRequest,
    spec: OciSpecFile,
    deps: PodDeps,
    log: Logger,
    phases: PhaseClock,
    /** A pool VM this pod claimed (pod/pool.ts): it is given what a cold boot would launch with. */
    warm?: WarmVm,
  ): Promise<PodMember> {
    // Bind mounts become guest paths; a volume the VM cannot have fails before anything is built.
    const volumes = await ContainerVolumes.plan(
      spec.doc,
      first.id,
      where.key,
      log,
      deps.config.recursive_read_only_volumes,
    );
    const containment = planContainment(spec.doc);
    // On disk before anything is built: a daemon killed from here on leaves a note of what to undo.
    const journal = await deps.provisional?.begin(where.vmId, where.key);
    const undo = new Cleanup();
    /** Work that adds to `undo` when it settles: all of it settles before `undo` runs. */
    const inFlight: Promise<unknown>[] = [];
    try {
      phases.mark("start");
      // The pod's cgroup exists before the VMM does: the VMM joins it before it runs (cgroup/join.ts).
      let cgroup: PodCgroup | undefined;
      if (containment.cgroup) {
        const opened = await PodCgroup.open(
          containment.cgroup.path,
          await deps.containment.hierarchies(),
          log,
        );
        cgroup = opened;
        undo.defer("remove pod cgroup", () => opened.remove());
        await journal?.note({ cgroup: opened.record() });
      }
      // Disks and the pod network are host work independent of each other, so they run at once;
      // whichever succeeded is undone if the other failed.
      const netnsPath = podNetnsPath(spec.doc);
      // A pod deleted from this netns may still be leaving it (its TAP has our TAP's name).
      if (netnsPath) await deps.lingering.settled(netnsPath);
      if (netnsPath) await journal?.note({ network: { netnsPath, tap: POD_TAP } });
      const noteScratch = journal ? (file: string) => journal.note({ scratch: [file] }) : undefined;
      // A pool VM is this pod's from here: on any failure it is stopped, never returned to the
      // pool (registered first, so it runs last).
      if (warm) {
        undo.defer("stop VM", () => warm.vm.stop());
        undo.defer("close agent", () => warm.agent.close());
        await noteVmm(journal, warm.vm.pid);
      }
      const preparing = phases.time(
        "rootfsMs",
        first.holder
          ? Promise.resolve(noRootfs())
          : deps.prepareRootfs(first.namespace, first.id, first.rootfs, first.scratch, noteScratch),
      );
      // Settled (and its undo registered) before any undo runs: see `inFlight`.
      const attaching = (
        netnsPath
          ? phases.time("networkMs", warm ? attachWarm(deps, warm, netnsPath) : deps.attachNetwork(netnsPath))
          : Promise.resolve(undefined)
      ).then(async (attached) => {
        if (attached) {
          undo.defer("detach pod network", () => attached.detach());
          await journal?.note({
            network: { netnsPath: attached.netnsPath, tap: POD_TAP, iface: attached.iface.name },
          });
        }
        return attached;
      });
      inFlight.push(attaching);
      const [rootfsDone, claimDone] = await Promise.allSettled([
        preparing,
        // A pool VM takes the pod's cgroup and, once they exist, its disks while its NIC is
        // attached (QMP serves both; each takes its own hot-plug port).
        warm ? Pod.claim(warm, { cgroup, containment, rootfs: preparing, deps, log, phases }) : undefined,
      ]);
      // A claimed VMM's cgroup join settles beside the guest's work below (Pod.claim).
      const contained = claimDone.status === "fulfilled" ? claimDone.value?.contained : undefined;
      if (contained) inFlight.push(contained);
      if (rootfsDone.status === "fulfilled") {
        const prepared = rootfsDone.value;
        undo.defer("release rootfs", () => prepared.release());
      }
      if (rootfsDone.status === "rejected") throw rootfsDone.reason;
      if (claimDone.status === "rejected") throw claimDone.reason;
      const rootfs = rootfsDone.value;
      // A cold boot launches the VMM with its NIC: the network first. A pool VM's NIC is
      // attached while the guest creates the first container (below).
      const network = warm ? undefined : await attaching;
      // The first container's shared volumes: virtiofsd before the VMM, which connects at start;
      // stopped after the VM (undo runs newest first).
      // A pool VM gets its virtio-fs device by hot-plug, as an app container would (sharedFs).
      let share: PodShare | undefined;
      if (volumes.shared.length > 0 && !warm) {
        await journal?.note({ share: {} });
        share = await phases
          .time(
            "virtiofsdMs",
            PodShare.start({
              binary: deps.config.virtiofsd_binary,
              dir: podDir(deps.config, where.vmId),
              log: log.child({ vm: where.vmId }),
              cgroupProcs: cgroup?.procs,
            }),
          )
          .catch((err: unknown) => {
            throw volumesFailed(volumes.shared, err);
          });
        const started = share;
        undo.defer("stop virtiofsd", () => started.stop());
        const { pid, startTime } = await started.record();
        await journal?.note({ share: { process: { pid, startTime } } });
      }
      phases.mark("disksReady");

      // The VMM works in its VM's dir from its start; its identity is noted once known.
      if (!claimDone.value) await journal?.note({ vmm: {} });
      const { vm, agent, devices, oomScoreAdj } = claimDone.value
        ? claimDone.value
        : await Pod.launch(where, {
            cgroup,
            containment,
            rootfs,
            network,
            share,
            deps,
            log,
            phases,
            undo,
            journal,
          });
      phases.mark("vmReady");

      const pod = new Pod(where.id, where.key, vm, agent, where.size, deps, containment, cgroup, share);
      pod.oomScoreAdj = oomScoreAdj;
      if (journal) pod.provisional.set(first.id, journal);
      // The guest's network, its first container and the port-forward relay (host only) are
      // independent: they run at once (the container only runs at its start, after this
      // returns, with the network in place).
      const networking = attaching.then(async (attached) => {
        if (!attached) return;
        await configureGuestNetwork(agent, attached.iface, phases, warm);
        pod.network = attached;
      });
      inFlight.push(networking);
      const forwarding = netnsPath
        ? pod.startPortForward(netnsPath, log).then((forward) => {
            if (forward) undo.defer("stop port-forward", () => forward.stop());
          })
        : Promise.resolve();
      inFlight.push(forwarding);
      const creating = pod.createInGuest(first, spec, volumes, { rootfs, devices, ownsPod: true }, phases);
      inFlight.push(creating);
      const [networked, created, , joined] = await Promise.allSettled([
        networking,
        creating,
        forwarding,
        contained,
      ]);
      if (joined?.status === "rejected") throw joined.reason;
      if (networked.status === "rejected") throw networked.reason;
      if (created.status === "rejected") throw created.reason;
      undo.disarm();
      return created.value;
    } catch (err) {
      await Promise.allSettled(inFlight);
      await undo.run();
      // Undone here: nothing is left for a later daemon to undo.
      await journal?.finish();
      throw err;
    }
  }

  /** The pod's record has the container: a later daemon adopts it, the provisional record goes. */
  async createSettled(containerId: string): Promise<void> {
    const journal = this.provisional.get(containerId);
    this.provisional.delete(containerId);
    await journal?.finish();
  }

  /** A cold boot: the VMM launched with the pod's disks, NIC and volumes, then its agent. */
  private static async launch(
    where: { vmId: string; size: VmSize },
    got: {
      cgroup: PodCgroup | undefined;
      containment: ContainmentPlan;
      rootfs: PreparedRootfs;
      network: PodNetwork | undefined;
      share: PodShare | undefined;
      deps: PodDeps;
      log: Logger;
      phases: PhaseClock;
      undo: Cleanup;
      journal: Provisional | undefined;
    },
  ): Promise<{ vm: VmHandle; agent: AgentClient; devices: string[]; oomScoreAdj: number | undefined }> {
    const { cgroup, containment, rootfs, network, share, deps, log, phases, undo, journal } = got;
    const started = performance.now();
    const { config } = deps;
    const vm = await phases.time(
      "vmmLaunchMs",
      deps.driver.launch({
        id: where.vmId,
        kernelPath: config.kernel_path,
        rootfsPath: config.rootfs_path,
        ...(config.kernel_args ? { extraKernelArgs: config.kernel_args } : {}),
        vcpus: where.size.vcpus,
        maxVcpus: where.size.maxVcpus,
        memoryMb: where.size.memoryMb,
        ...(config.free_page_reporting ? { freePageReporting: true } : {}),
        stateDir: path.join(config.state_dir, "vm", where.vmId),
        disks: rootfs.disks,
        log: log.child({ vm: where.vmId }),
        ...(cgroup ? { cgroup: { procs: cgroup.procs } } : {}),
        ...(network
          ? { network: { netnsPath: network.netnsPath, tap: network.tap, mac: network.iface.mac } }
          : {}),
        ...(share ? { sharedFs: share.fs } : {}),
      }),
    );
    undo.defer("stop VM", () => vm.stop());
    await noteVmm(journal, vm.pid);
    const oomScoreAdj = oomScoreAdjFor(containment.qos, [], containment.specOomScoreAdj);
    if (oomScoreAdj !== undefined) await deps.containment.setOomScoreAdj(vm.pid, oomScoreAdj, log);
    const agent = await vm.connectAgent({ timeoutMs: config.agent_boot_timeout_ms });
    undo.defer("close agent", () => agent.close());
    // Boot = VMM launch (host) + waiting for the agent's first answer (guest).
    const bootMs = performance.now() - started;
    phases.add("guestBootMs", bootMs - phases.get("vmmLaunchMs"));
    // A guest rootfs from another build fails here, by name, not later as a garbled call. The
    // agent's first call after its boot: a guest wait (~100 ms under TCG), not host work.
    const version = await phases.time("guestVersionMs", agent.checkProtocol({ timeoutMs: 5000 }));
    log.info(
      {
        sandbox: where.vmId,
        vmmPid: vm.pid,
        cgroup: cgroup?.path,
        qos: containment.qos,
        oomScoreAdj,
        bootMs: Math.round(bootMs),
        agentVersion: version.agentVersion,
      },
      "sandbox VM ready",
    );
    return { vm, agent, devices: [], oomScoreAdj };
  }

  /**
   * A pool VM becomes this pod's: its VMM gets normal priority back, joins the pod's cgroup and
   * gets the pod's OOM score, and the pod's disks are hot-plugged as soon as they exist, while its
   * NIC is attached (attachWarm). The cgroup join and OOM score are left in flight (`contained`):
   * the caller settles them beside the guest's first create, before any container runs. On
   * failure the caller's undo stops the VM: it never goes back to the pool.
   */
  private static async claim(
    warm: WarmVm,
    got: {
      cgroup: PodCgroup | undefined;
      containment: ContainmentPlan;
      /** The pod's disks, being prepared: plugged once they exist. */
      rootfs: Promise<PreparedRootfs>;
      deps: PodDeps;
      log: Logger;
      phases: PhaseClock;
    },
  ): Promise<{
    vm: VmHandle;
    agent: AgentClient;
    devices: string[];
    oomScoreAdj: number | undefined;
    contained: Promise<void>;
  }> {
    const { cgroup, containment, deps, log, phases } = got;
    const { vm, agent } = warm;
    const oomScoreAdj = oomScoreAdjFor(containment.qos, [], containment.specOomScoreAdj);
    const devices: string[] = [];
    if (cgroup && !deps.containment.joinCgroup)
      throw new ShimError("Unimplemented", "this host cannot move a pool VM into a pod cgroup");
    // Normal priority first: the guest works for the pod from here on, and a VMM still at nice 19
    // would get the host's CPU last.
    await deps.containment.setNice?.(vm.pid, 0);
    const contained = phases.time("poolClaimMs", async () => {
      if (cgroup) await deps.containment.joinCgroup?.(vm.pid, cgroup.procs);
      if (oomScoreAdj !== undefined) await deps.containment.setOomScoreAdj(vm.pid, oomScoreAdj, log);
    });
    // Its failure is the caller's to throw (or this function's, below): never unhandled meanwhile.
    contained.catch(() => {});
    // All of it settles before a failure is thrown: nothing of the claim is in flight during the undo.
    const settled = await Promise.allSettled([
      // A bigger pod's size by hot-plug, online in the guest before its containers are created.
      warm.grow &&
        phases.time("growMs", growVm(vm, agent, warm.grow)).then((took) => {
          log.info({ sandbox: vm.id, grow: warm.grow, ...took }, "pool VM grown for the pod");
        }),
      got.rootfs.then((rootfs) =>
        phases.time(
          "hotplugMs",
          plugDisks(vm, rootfs.disks, (id) => devices.push(id)),
        ),
      ),
    ]);
    const failed = settled.find((r) => r.status === "rejected");
    if (failed) {
      await contained.catch(() => {});
      throw failed.reason;
    }
    log.info(
      {
        sandbox: vm.id,
        vmmPid: vm.pid,
        cgroup: cgroup?.path,
        qos: containment.qos,
        oomScoreAdj,
        poolBootMs: Math.round(warm.bootMs),
        pool: "hit",
      },
      "sandbox VM claimed from the pool",
    );
    return { vm, agent, devices, oomScoreAdj, contained };
  }

  get exited(): Promise<VmExit> {
    return this.exitedWithReason;
  }

  /**
   * The pod as a record (state/records.ts), with the members the task service still holds;
   * undefined when some part cannot be recorded (a driver or disks that cannot be adopted).
   */
  async record(sandbox: boolean, members: readonly PodMember[]): Promise<PodRecord | undefined> {
    if (!this.vm.record) return undefined;
    const memberRecords: MemberRecord[] = [];
    const retiringRecords: MemberRecord[] = [];
    for (const [m, into] of [
      ...members.map((m) => [m, memberRecords] as const),
      ...[...this.retiring.values()].map((r) => [r.member, retiringRecords] as const),
    ]) {
      if (!m.rootfs.record) return undefined;
      into.push({
        id: m.id,
        pid: m.pid,
        ownsPod: m.ownsPod,
        rootfs: m.rootfs.record,
        devices: [...m.devices],
        volumes: m.volumes.record(),
      });
    }
    const share = this.share ? await this.share.catch(() => undefined) : undefined;
    return {
      id: this.id,
      key: this.key,
      vmId: this.vm.id,
      sandbox,
      stateDir: path.join(this.deps.config.state_dir, "vm", this.vm.id),
      size: { ...this.size, sources: { ...this.size.sources } },
      driver: this.deps.driver.name,
      vm: await this.vm.record(),
      ...(this.network
        ? { network: { netnsPath: this.network.netnsPath, tap: this.network.tap, iface: this.network.iface } }
        : {}),
      ...(this.cgroup ? { cgroup: this.cgroup.record() } : {}),
      ...(share ? { share: await share.record() } : {}),
      containment: {
        ...(this.containment.qos ? { qos: this.containment.qos } : {}),
        ...(this.containment.specOomScoreAdj !== undefined
          ? { specOomScoreAdj: this.containment.specOomScoreAdj }
          : {}),
      },
      ...(this.oomScoreAdj !== undefined ? { oomScoreAdj: this.oomScoreAdj } : {}),
      containerScores: [...this.containerScores],
      members: memberRecords,
      ...(retiringRecords.length > 0 ? { retiring: retiringRecords } : {}),
    };
  }

  /**
   * Takes over a pod a previous daemon served: its VMM (still running), agent, network,
   * cgroup, virtiofsd, disks and volumes. When the VMM is gone, everything the pod held on the
   * host is released and undefined is returned: its tasks are then reported as killed.
   */
  static async adopt(
    record: PodRecord,
    deps: PodDeps,
    log: Logger,
  ): Promise<{ pod: Pod; members: Map<string, PodMember> } | undefined> {
    const vmLog = log.child({ vm: record.vmId });
    // Checked by the record's schema; only optional-property typing differs.
    const network = record.network
      ? adoptPodNetwork(deps.net, record.network as { netnsPath: string; tap: string; iface: PodInterface })
      : undefined;
    const cgroup = record.cgroup ? PodCgroup.adopt(record.cgroup, vmLog) : undefined;
    const share = record.share ? await PodShare.adopt(record.share, vmLog) : undefined;
    const rootfs = new Map<string, PreparedRootfs>();
    for (const m of record.members) {
      if (deps.adoptRootfs) rootfs.set(m.id, await deps.adoptRootfs(m.rootfs));
    }
    // Deleted containers whose disks were leaving the VM: finished below, or released with it.
    const retiring = new Map<string, PreparedRootfs>();
    for (const m of record.retiring ?? []) {
      if (deps.adoptRootfs) retiring.set(m.id, await deps.adoptRootfs(m.rootfs));
    }
    const vmConfig = { id: record.vmId, stateDir: record.stateDir, log: vmLog };
    const vm =
      deps.driver.name === record.driver && deps.driver.adopt
        ? await deps.driver.adopt(vmConfig, record.vm).catch((err: unknown) => {
            vmLog.warn({ err: (err as Error).message }, "could not adopt the VM");
            return undefined;
          })
        : undefined;
    let agent: AgentClient | undefined;
    if (vm) {
      // Patient (a loaded node, TCG, can be slow to answer, and giving up stops a VM that ran
      // fine) but bounded: every pod's takeover waits for the slowest (TaskService.restore).
      const timeoutMs = Math.min(deps.config.agent_boot_timeout_ms, ADOPT_AGENT_MS);
      agent = await connectAdoptedAgent(vm, timeoutMs, vmLog);
      if (!agent) await vm.stop();
    }
    if (!vm || !agent || !deps.adoptRootfs) {
      // The VM is gone: what it held on the host goes now, newest first as in remove().
      await share?.stop();
      await network?.detach();
      await cgroup?.remove();
      for (const r of [...rootfs.values(), ...retiring.values()]) await r.release();
      // Without the cache (a unit test's fake disks) the scratch files still go.
      if (!deps.adoptRootfs)
        for (const m of [...record.members, ...(record.retiring ?? [])])
          if (m.rootfs.scratchPath) await rm(m.rootfs.scratchPath, { force: true });
      await rm(record.stateDir, { recursive: true, force: true });
      return undefined;
    }
    const containment: ContainmentPlan = {
      ...(record.containment.qos ? { qos: record.containment.qos } : {}),
      ...(record.containment.specOomScoreAdj !== undefined
        ? { specOomScoreAdj: record.containment.specOomScoreAdj }
        : {}),
    };
    const pod = new Pod(record.id, record.key, vm, agent, record.size, deps, containment, cgroup, share);
    pod.network = network;
    if (record.oomScoreAdj !== undefined) pod.oomScoreAdj = record.oomScoreAdj;
    // The old daemon's helper died with it (parent-death signal): a new one takes over.
    if (network) await pod.startPortForward(network.netnsPath, vmLog);
    for (const [id, score] of record.containerScores) pod.containerScores.set(id, score);
    const members = new Map<string, PodMember>();
    for (const m of record.members) {
      const prepared = rootfs.get(m.id);
      if (!prepared) continue;
      if (!m.ownsPod) pod.joined.add(m.id);
      const volumes = ContainerVolumes.adopt(m.volumes, vmLog);
      volumes.startSync(agent);
      members.set(m.id, {
        id: m.id,
        pod,
        pid: m.pid,
        ownsPod: m.ownsPod,
        rootfs: prepared,
        devices: m.devices,
        volumes,
      });
    }
    for (const m of record.retiring ?? []) {
      const prepared = retiring.get(m.id);
      if (!prepared) continue;
      const volumes = ContainerVolumes.adopt(m.volumes, vmLog);
      pod.retire({
        id: m.id,
        pod,
        pid: m.pid,
        ownsPod: false,
        rootfs: prepared,
        devices: m.devices,
        volumes,
      });
    }
    return { pod, members };
  }

  /**
   * The pod's virtiofsd, started and its device hot-plugged the first time a container needs
   * it; the containers that join later only add bind mounts.
   */
  private sharedFs(log: Logger, journal?: Provisional): Promise<PodShare> {
    if (this.share) return this.share;
    const starting = (async () => {
      const addFs = this.vm.addFs?.bind(this.vm);
      if (!addFs)
        throw new ShimError(
          "Unimplemented",
          `the ${this.deps.driver.name} driver cannot add a virtio-fs device`,
        );
      // A join's note names the virtiofsd it starts: a daemon killed from here on leaves it
      // (and maybe its device) to the next, which makes it the pod's share (undoJoin).
      await journal?.note({ share: {} });
      const share = await PodShare.start({
        binary: this.deps.config.virtiofsd_binary,
        dir: podDir(this.deps.config, this.vm.id),
        log,
        cgroupProcs: this.cgroup?.procs,
      });
      try {
        const { pid, startTime } = await share.record();
        if (startTime > 0) await journal?.note({ share: { process: { pid, startTime } } });
        await addFs(share.fs);
      } catch (err) {
        await share.stop();
        throw err;
      }
      return share;
    })();
    this.share = starting;
    // A failed start is not remembered: the next container tries again.
    starting.catch(() => {
      if (this.share === starting) this.share = undefined;
    });
    return starting;
  }

  /** Creates a CRI app container in this running VM: its disks are hot-plugged. */
  async join(req: ContainerRequest, spec: OciSpecFile, log: Logger, phases: PhaseClock): Promise<PodMember> {
    // A container of the same id that was just deleted still has its disks (same serials, same
    // scratch owner) leaving the VM: they must be gone first.
    const previous = this.retiring.get(req.id);
    if (previous && !(await phases.time("retiringWaitMs", Pod.left(previous))))
      throw precondition(
        `container ${req.id} was deleted from pod ${this.id} but the guest did not release its disks; the same id can be created again once the pod's VM stops (or create it under another id)`,
      );
    const max = this.deps.config.max_containers_per_vm;
    if (this.joined.size >= max) {
      throw new ShimError(
        "ResourceExhausted",
        `pod ${this.id} already runs ${this.joined.size} containers; max_containers_per_vm is ${max}`,
      );
    }
    // The slot is taken now, so that creates running at once cannot overfill the VM.
    this.joined.add(req.id);
    const undo = new Cleanup();
    undo.defer("give back the pod slot", () => this.joined.delete(req.id));
    let journal: Provisional | undefined;
    try {
      const volumes = await ContainerVolumes.plan(
        spec.doc,
        req.id,
        this.key,
        log,
        this.deps.config.recursive_read_only_volumes,
      );
      // On disk before anything is built: a daemon killed from here on leaves a note of what to undo.
      journal = await this.deps.provisional?.begin(this.vm.id, this.key, req.id);
      const noted = journal;
      phases.mark("start");
      // The guest takes the copied volumes while the host prepares and plugs the disks.
      const applying = phases.time("guestVolumesMs", volumes.apply(this.agent));
      applying.catch(() => {});
      const prepare = () =>
        this.deps.prepareRootfs(
          req.namespace,
          req.id,
          req.rootfs,
          req.scratch,
          noted ? (file) => noted.note({ scratch: [file] }) : undefined,
          // Its mkfs runs while the hot-plug binds and opens the files.
          { formatLater: true },
        );
      // The node's scratch budget may be held by this pod's deleted containers still leaving.
      const rootfs = await phases.time(
        "rootfsMs",
        prepare().catch((err: unknown) => this.afterRetiring(err, prepare)),
      );
      undo.defer("release rootfs", () => rootfs.release());
      phases.mark("disksReady");
      const devices: string[] = [];
      await journal?.note({ disks: rootfs.disks.map((d) => d.serial) });
      const plug = () =>
        plugDisks(
          this.vm,
          rootfs.disks,
          (device) => {
            devices.push(device);
            undo.defer(`unplug ${device}`, () => this.vm.removeDevice(device));
          },
          rootfs.formatted,
        );
      await phases.time(
        "hotplugMs",
        // The hot-plug ports may be held by deleted containers' disks still leaving.
        plug().catch((err: unknown) => {
          if (devices.length > 0) throw err;
          return this.afterRetiring(err, plug);
        }),
      );
      phases.mark("vmReady");
      await journal?.note({ binds: volumes.shared.map((v) => v.name) });
      await applying;
      const member = await this.createInGuest(
        req,
        spec,
        volumes,
        { rootfs, devices, ownsPod: false },
        phases,
        journal,
        true,
      );
      const score = spec.doc.process?.oomScoreAdj;
      if (typeof score === "number" && Number.isInteger(score)) {
        this.containerScores.set(req.id, score);
        await this.updateOomScore(log);
      }
      undo.disarm();
      if (journal) this.provisional.set(req.id, journal);
      return member;
    } catch (err) {
      await undo.run();
      // Undone here: nothing is left for a later daemon to undo.
      await journal?.finish();
      throw err;
    }
  }

  /**
   * Takes back what a join a killed daemon left in flight added to this (adopted) pod: the
   * guest container, the disks it hot-plugged, its binds in the shared dir. Nothing when the
   * pod's record has the container (the join completed). Never throws; returns what it did.
   */
  async undoJoin(note: {
    container: string;
    disks: string[];
    binds: string[];
    guest: boolean;
    /** The join started the pod's virtiofsd (its first shared volume); its identity once it ran. */
    share?: { process?: { pid: number; startTime: number } | undefined } | undefined;
  }): Promise<string[]> {
    if (this.joined.has(note.container)) return [];
    const did: string[] = [];
    const log = this.log(note.container);
    // Before the binds come off below: through this share, when it becomes the pod's.
    if (note.share && !this.share)
      did.push(...(await this.takeDeadJoinShare(note.share.process, note.guest, log)));
    if (note.guest) {
      await this.agent.removeContainer(note.container, { timeoutMs: 10_000 }).then(
        () => did.push("removed the guest container"),
        () => {},
      );
    }
    for (const serial of [...note.disks].reverse()) {
      try {
        if (await this.vm.removeStrayDisk?.(serial)) did.push(`unplugged disk ${serial}`);
      } catch (err) {
        log.error({ serial, err: (err as Error).message }, "could not unplug a dead join's disk");
      }
    }
    // In the pod's mount namespace, through its virtiofsd's share.
    const share = await this.share?.catch(() => undefined);
    if (share && note.binds.length > 0) {
      await share.unbindStray(note.binds);
      did.push(`unbound ${note.binds.join(", ")}`);
    }
    return did;
  }

  /**
   * The virtiofsd a dead join started for this pod (none had one), and maybe its device `fs0`:
   * both there and the process still the noted one, they become the pod's share (the join sent
   * again reuses them; the pod's record names them once saved). Otherwise what is left goes: the
   * device is unplugged (it serves nothing), the process, binds and pod namespace end. A device
   * the guest does not let go of leaves the pod without a usable share: its VM is stopped (its
   * tasks exit as killed) rather than every later join failing on `fs0`. Never throws.
   */
  private async takeDeadJoinShare(
    noted: { pid: number; startTime: number } | undefined,
    guestAsked: boolean,
    log: Logger,
  ): Promise<string[]> {
    const dir = podDir(this.deps.config, this.vm.id);
    const alive = noted !== undefined && (await PodShare.serves(dir, noted));
    let device: boolean;
    try {
      device = (await this.vm.adoptStrayFs?.(FS_DEVICE_ID)) ?? false;
    } catch (err) {
      log.error({ err: (err as Error).message }, "could not look for a dead join's virtio-fs device");
      device = false;
    }
    // A noted pid that is not this pod's virtiofsd is never signalled: the processes naming
    // the pod's socket still end (PodShare.stop's stragglers).
    const who = alive ? noted : { pid: 0, startTime: 0 };
    // The pod had no share: every name in its shared dir is one of the dead join's binds. Kept,
    // the share knows none of them (undoJoin unbinds them as strays); ended, it unbinds them all.
    const bound = alive && device ? [] : await readdir(path.join(dir, "shared")).catch(() => [] as string[]);
    const share = await PodShare.adopt({ dir, ...who, bound }, log);
    if (alive && device) {
      this.share = Promise.resolve(share);
      log.warn({ virtiofsdPid: who.pid }, "the virtiofsd a killed daemon's join started is now the pod's");
      return [`kept virtiofsd ${who.pid} and ${FS_DEVICE_ID} as the pod's share`];
    }
    const did: string[] = [];
    if (device) {
      // The guest may have mounted it (the join reached its guest create): that mount stays
      // stale whatever is plugged later, so no shared volume would work in this pod again.
      const failed = async (why: string) => {
        const reason = `the pod's virtio-fs device ${FS_DEVICE_ID} lost its virtiofsd (a daemon was killed while a container joined pod ${this.key}) and ${why}`;
        log.error({ vm: this.vm.id }, `${reason}; stopping the pod's VM (its tasks exit as killed)`);
        await this.vm.stop().catch(() => {});
        did.push(`stopped the VM: ${reason}`);
      };
      if (guestAsked) await failed("the guest may have mounted it");
      else
        try {
          await this.vm.removeDevice(FS_DEVICE_ID);
          did.push(`unplugged ${FS_DEVICE_ID} (its virtiofsd was gone)`);
        } catch (err) {
          await failed(`the guest did not let go of it: ${(err as Error).message}`);
        }
    }
    await share.stop();
    did.push("stopped the dead join's virtiofsd");
    return did;
  }

  /**
   * Takes a container out: an app container leaves the VM (guest container removed; its disks
   * are unplugged and its rootfs released after this returns, Pod.retire); the VM's owner takes
   * the whole pod down: the VM ends before this returns, the rest of the pod leaves after
   * (Pod.leave, in `lingering`). Never throws: a step that fails is logged and the rest still run.
   */
  async remove(member: PodMember, phases: PhaseClock): Promise<Removed> {
    member.volumes.stop();
    const removed: Removed = {};
    const cleanup = new Cleanup();
    const share = this.share;
    if (member.ownsPod) {
      this.goingDown = true;
      cleanup.defer("release rootfs", () => member.rootfs.release());
      // Last of all (a create that failed after its boot): its provisional record goes.
      cleanup.defer("settle the create", () => this.createSettled(member.id));
      // Runs after the VM is gone (newest first): the cgroup outlives the VMM.
      const cgroup = this.cgroup;
      if (cgroup) cleanup.defer("remove pod cgroup", () => cgroup.remove());
      // virtiofsd and every bind mount of the pod go once the VMM let go of them.
      if (share) cleanup.defer("stop virtiofsd", async () => (await share.catch(() => undefined))?.stop());
      // Deleted containers' disks still leaving: abandoned (the VMM is going), their files
      // released once it is gone (Pod.retire races each unplug with the VMM's exit).
      cleanup.defer("release retiring containers' disks", () =>
        Promise.all([...this.retiring.values()].map((r) => r.done)),
      );
      const forward = this.portForward;
      const netnsPath = this.network?.netnsPath ?? forward?.netnsPath;
      const log = this.log(this.id);
      const held = await phases.time("vmKillMs", async () => {
        this.stopHealth();
        this.agent.close();
        // SIGKILL: no guest code runs after this. Should the signal fail, the graceful stop
        // ends the VM before the reply instead.
        await this.vm
          .kill()
          .catch(() => this.vm.stop())
          .catch((err: unknown) => log.error({ err: (err as Error).message }, "could not stop the VM"));
        // Held before the reply: containerd removes the netns once it has it.
        return netnsPath ? await holdNetns(netnsPath).catch(() => undefined) : undefined;
      });
      // The port-forward relay's helper is killed now (a connection meanwhile fails with the
      // agent); its exit and its socket go after the reply. Never rejects.
      const closing = forward?.close();
      if (closing) cleanup.defer("close the port-forward relay", () => closing);
      removed.lingering = this.leave(cleanup, netnsPath, held);
      return removed;
    }
    this.joined.delete(member.id);
    if (this.containerScores.delete(member.id))
      cleanup.defer("update OOM score", () => this.updateOomScore());
    await cleanup.run();
    // The guest container, its volumes and disks leave after the reply (Pod.retire).
    this.retire(member);
    return removed;
  }

  /**
   * What is left of a pod whose VM was killed goes after its delete replied; none of it runs
   * the guest's code, it waits on the kernel: the VMM's exit (freeing the guest's memory, 20-50
   * ms here), then what outlives the VMM (virtiofsd, disks, cgroup, rootfs; `teardown`) beside
   * what is left in the pod's netns (the TAP with its filters, the veth's qdisc, the
   * port-forward's nat rule; RCU grace periods, 15-35 ms for a TAP). The netns is held open
   * (`held`, taken before the reply), so containerd removing it meanwhile changes nothing. Kept
   * under the netns path, so a pod created into the same netns waits for it (Pod.boot); the
   * daemon's exit waits for all of it. Never rejects.
   */
  private leave(
    teardown: Cleanup,
    netnsPath: string | undefined,
    held: HeldNetns | undefined,
  ): Promise<void> {
    const network = this.network;
    const forward = this.portForward;
    const started = performance.now();
    const log = this.log(this.id);
    const work = (async () => {
      await this.vm
        .stop()
        .catch((err: unknown) => log.error({ err: (err as Error).message }, "could not stop the VM"));
      const vmExitMs = Math.round(performance.now() - started);
      const [, detached] = await Promise.allSettled([
        teardown.run(),
        netnsPath
          ? Promise.allSettled([network?.detach(held?.path), forward?.unredirect(held?.path)]).then(
              ([d]) => d,
            )
          : undefined,
      ]);
      await held?.release();
      const failed = detached.status === "fulfilled" ? detached.value : undefined;
      if (failed?.status === "rejected")
        log.error({ err: (failed.reason as Error).message, netnsPath }, "could not detach the pod network");
      log.debug({ vmExitMs, ms: Math.round(performance.now() - started), netnsPath }, "pod left the node");
    })();
    return this.deps.lingering.add(netnsPath ?? `vm ${this.vm.id}`, work);
  }

  /**
   * A deleted app container leaves the VM in the background, after its delete replied: the
   * guest container is removed (crun delete, unmounts: the guest lets go of its disks), its
   * shared volumes unbound, its disks unplugged at once, then its files (scratch, erofs cache
   * reference) released, only after QEMU let go of them: the unplugs done or the VMM gone. A
   * guest that never answers holds them until the agent's and the driver's timeouts, the files
   * until the VMM exits. Last, a failed join's provisional record goes. Resolves `retirement()`;
   * the task service records the pod again then.
   */
  retire(member: PodMember): void {
    const log = this.log(member.id);
    const started = performance.now();
    const vmGone = this.vm.exited.then(() => {
      throw new Error(`VM ${this.vm.id} exited`);
    });
    vmGone.catch(() => {});
    let unplugsSettled: (ok: boolean) => void = () => {};
    const unplugged = new Promise<boolean>((resolve) => {
      unplugsSettled = resolve;
    });
    const done = (async () => {
      // A pod deleted right after its container (the CRI order) takes the guest with it: then
      // these steps fail, as expected, and the files wait for the VMM's exit.
      const warn = (obj: object, msg: string) =>
        this.goingDown ? log.debug(obj, `${msg} (the pod is going down)`) : log.warn(obj, msg);
      await Promise.race([this.agent.removeContainer(member.id, { timeoutMs: 10_000 }), vmGone]).catch(
        (err: unknown) =>
          warn({ err: (err as Error).message }, "could not remove a deleted container in the guest"),
      );
      const guestRemoveMs = performance.now() - started;
      // Its volumes leave the shared directory once the guest container is gone.
      const names = member.volumes.shared.map((v) => v.name);
      if (this.share && names.length > 0)
        await (await this.share.catch(() => undefined))
          ?.remove(names)
          .catch((err: unknown) =>
            log.error({ err: (err as Error).message }, "could not unbind shared volumes"),
          );
      const unplugStarted = performance.now();
      const unplugs = await Promise.allSettled(
        member.devices.map((device) => Promise.race([this.vm.removeDevice(device), vmGone])),
      );
      const unplugMs = performance.now() - unplugStarted;
      const failed = unplugs.flatMap((r, i) =>
        r.status === "rejected" ? [`${member.devices[i]}: ${(r.reason as Error).message}`] : [],
      );
      unplugsSettled(failed.length === 0);
      if (failed.length > 0) {
        warn({ failed }, "disks of a deleted container not unplugged; their files go when the VMM exits");
        await this.vm.exited;
      }
      const releaseStarted = performance.now();
      await member.rootfs.release();
      await this.createSettled(member.id);
      log.info(
        {
          guestRemoveMs: Math.round(guestRemoveMs),
          guestUnplugMs: Math.round(unplugMs),
          rootfsReleaseMs: Math.round(performance.now() - releaseStarted),
          totalMs: Math.round(performance.now() - started),
        },
        "deleted container left the VM",
      );
    })()
      .catch((err: unknown) =>
        log.error({ err: (err as Error).message }, "could not release a deleted container's disks"),
      )
      .finally(() => {
        unplugsSettled(false);
        if (this.retiring.get(member.id)?.done === done) this.retiring.delete(member.id);
      });
    this.retiring.set(member.id, { member, unplugged, done });
  }

  /**
   * Runs `work` again once this pod's deleted containers have left, when it failed for a lack
   * (scratch budget, hot-plug ports) they may hold; otherwise throws `err`.
   */
  private async afterRetiring<T>(err: unknown, work: () => Promise<T>): Promise<T> {
    const exhausted = err instanceof ShimError && err.kind === "ResourceExhausted";
    if (!exhausted || this.retiring.size === 0) throw err;
    await Promise.all([...this.retiring.values()].map((r) => Pod.left(r)));
    return work();
  }

  /**
   * Whether a retiring container left: its disks unplugged and files released (true), or a
   * disk the guest did not let go of (false, at once: its files wait for the VMM's exit).
   * Bounded by the agent's and the driver's timeouts, never by the guest.
   */
  private static async left(r: { unplugged: Promise<boolean>; done: Promise<void> }): Promise<boolean> {
    if (!(await r.unplugged)) return false;
    await r.done;
    return true;
  }

  /** Resolves once the disks of the deleted containers now leaving the VM are gone (Pod.retire). */
  async retirement(): Promise<void> {
    while (this.retiring.size > 0) await Promise.all([...this.retiring.values()].map((r) => r.done));
  }

  /**
   * Starts port-forward into the VM. A node without the helper or iptables' nat table still
   * runs the pod, without port-forward: the reason is logged.
   */
  private async startPortForward(netnsPath: string, log: Logger): Promise<PodPortForward | undefined> {
    try {
      this.portForward = await PodPortForward.start({
        binary: this.deps.config.port_forward_binary,
        dir: podDir(this.deps.config, this.vm.id),
        netnsPath,
        agent: this.agent,
        log: log.child({ vm: this.vm.id }),
      });
      return this.portForward;
    } catch (err) {
      log.warn(
        { vm: this.vm.id, err: (err as Error).message },
        "port-forward into this pod is not available",
      );
      return undefined;
    }
  }

  /** A Burstable pod's VMM is scored as its most protected container (cgroup/oom.ts). */
  private async updateOomScore(log: Logger = rootLog): Promise<void> {
    if (this.containment.qos !== "Burstable") return;
    const score = oomScoreAdjFor("Burstable", [...this.containerScores.values()]);
    if (score === undefined || score === this.oomScoreAdj) return;
    this.oomScoreAdj = score;
    await this.deps.containment.setOomScoreAdj(this.vm.pid, score, log);
  }

  /** Stops / continues every vCPU: the whole VM, every container in it. */
  pause(): Promise<void> {
    return this.vm.pause();
  }

  resume(): Promise<void> {
    return this.vm.resume();
  }

  /** The guest side of a create: volumes in place, then the container (created, not started). */
  private async createInGuest(
    req: ContainerRequest,
    spec: OciSpecFile,
    volumes: ContainerVolumes,
    held: Pick<PodMember, "rootfs" | "devices" | "ownsPod">,
    phases: PhaseClock,
    journal?: Provisional,
    /** The volumes are in the guest already (a join applies them while its disks are plugged). */
    applied = false,
  ): Promise<PodMember> {
    const undo = new Cleanup();
    try {
      if (volumes.shared.length > 0) {
        const share = await phases
          .time("virtiofsdMs", this.sharedFs(this.log(req.id), journal))
          .catch((err: unknown) => {
            throw volumesFailed(volumes.shared, err);
          });
        for (const volume of volumes.shared) {
          await share.add(volume);
          undo.defer(`unbind ${volume.name}`, () => share.remove([volume.name]));
        }
      }
      // Noted only now: before it, the guest has not mounted a virtio-fs the join started.
      await journal?.note({ guest: true });
      const member = await this.createGuestContainer(req, spec, volumes, held, phases, applied);
      undo.disarm();
      return member;
    } catch (err) {
      await undo.run();
      throw err;
    }
  }

  private log(containerId: string): Logger {
    return rootLog.child({ vm: this.vm.id, container: containerId });
  }

  private async createGuestContainer(
    req: ContainerRequest,
    spec: OciSpecFile,
    volumes: ContainerVolumes,
    held: Pick<PodMember, "rootfs" | "devices" | "ownsPod">,
    phases: PhaseClock,
    applied: boolean,
  ): Promise<PodMember> {
    const { rootfs } = held;
    if (!applied) await phases.time("guestVolumesMs", volumes.apply(this.agent));
    const pid = await phases.time(
      "guestCreateContainerMs",
      this.agent.createContainer({
        containerId: req.id,
        // planned volumes rewrote the spec's mounts to guest paths
        ociSpec: volumes.empty ? spec.bytes : Buffer.from(JSON.stringify(spec.doc)),
        rootfsSerial: rootfs.rootfsSerial,
        scratchSerial: rootfs.scratchSerial,
        terminal: req.terminal,
        stdin: req.stdin,
      }),
    );
    volumes.startSync(this.agent);
    return { id: req.id, pod: this, pid, volumes, ...held };
  }
}

/** VM ids must be short (they name sockets) and unique per namespace and pod. */
export function vmId(namespace: string, podId: string): string {
  const safe = `${namespace}-${podId}`.replace(/[^A-Za-z0-9_.-]/g, "_");
  return safe.length <= 48
    ? safe
    : `${safe.slice(0, 31)}-${createHash("sha256").update(safe).digest("hex").slice(0, 16)}`;
}

/** What the agent needs to give the guest the pod's interface (IPv4 for now). */
export function guestNetwork(iface: PodInterface, placeholderMac = ""): GuestNetwork {
  return {
    interfaces: [
      {
        mac: iface.mac,
        // A pool VM's NIC has this MAC until the agent gives it the pod's (empty: it has the pod's).
        placeholderMac,
        mtu: iface.mtu,
        // IPv4 and IPv6 (dual-stack): the guest's eth0 holds every address the veth had.
        addresses: iface.addresses.map((a) => ({ address: a.address, prefixLen: a.prefixLen })),
      },
    ],
    routes: iface.routes.map((r) => ({ dest: r.dest, gateway: r.gateway ?? "", mac: iface.mac })),
  };
}

/** The VMM's pid and start time into the create's provisional record. */
async function noteVmm(journal: Provisional | undefined, pid: number): Promise<void> {
  if (!journal) return;
  const process = await processIdentity(pid);
  if (process) await journal.note({ vmm: { process } });
}

/**
 * A container's disks into a running VM: at once where the driver can (one spawn; their files
 * opened while `contentReady` is pending), else one by one once it resolved.
 */
async function plugDisks(
  vm: VmHandle,
  disks: DiskSpec[],
  plugged: (id: string) => void,
  contentReady?: Promise<void>,
): Promise<void> {
  if (vm.addDisks) {
    for (const id of await vm.addDisks(disks, contentReady)) plugged(id);
    return;
  }
  await contentReady;
  for (const disk of disks) plugged(await vm.addDisk(disk));
}

function attachWarm(deps: PodDeps, warm: WarmVm, netnsPath: string): Promise<PodNetwork> {
  if (!deps.attachWarmNetwork)
    return Promise.reject(new ShimError("Unimplemented", "pool VMs cannot take a pod network here"));
  return deps.attachWarmNetwork(warm.vm, netnsPath, warm.bootNic);
}

/**
 * Gives the guest the pod's interface. A pool VM's NIC from its boot has a placeholder MAC,
 * which the agent replaces with the pod's first. A hot-plugged NIC (a pool VM without one)
 * shows up in the guest a moment after QEMU added it: the agent answers NotFound until then,
 * so that is retried, bounded.
 */
async function configureGuestNetwork(
  agent: AgentClient,
  iface: PodInterface,
  phases: PhaseClock,
  warm: WarmVm | undefined,
): Promise<void> {
  const until = Date.now() + NIC_APPEAR_MS;
  const hotplugged = warm !== undefined && !warm.bootNic;
  const request = guestNetwork(iface, warm?.bootNic?.mac);
  await phases.time("guestNetworkMs", async () => {
    for (;;) {
      try {
        return await agent.configureNetwork(request);
      } catch (err) {
        const waiting = hotplugged && err instanceof ShimError && err.kind === "NotFound";
        if (!waiting || Date.now() > until) throw err;
        await sleep(20);
      }
    }
  });
}
