// Where a container runs: a plain task and a CRI sandbox each boot a VM of their own; a CRI app
// container joins the VM its sandbox booted. Keeps the running CRI pods by namespace/sandbox id.

import { notFound } from "../errors.js";
import { type NetHelper, netHelper } from "../network/net-helper.js";
import { attachBootNic, attachPodNetwork, attachWarmNic } from "../network/pod-network.js";
import type { PodRecord } from "../state/records.js";
import type { Logger } from "../util/log.js";
import { PhaseClock } from "../util/phases.js";
import { type ContainmentHost, hostContainment } from "./containment.js";
import { podRole } from "./cri.js";
import { growPlan } from "./grow.js";
import { Lingering } from "./lingering.js";
import {
  type ContainerRequest,
  type NetworkAttacher,
  Pod,
  type PodDeps,
  type PodMember,
  type Removed,
  vmId,
} from "./pod.js";
import { bootWarmVm, forgetPoolMarker, type PoolOptions, poolSize, VmPool } from "./pool.js";
import { scratchSize } from "./scratch-size.js";
import { type VmSize, vmSize } from "./sizing.js";
import { isHostNamespace, type OciSpecFile, readOciSpec, refuseHostNamespaces } from "./spec.js";

export type PodsDeps = Omit<PodDeps, "attachNetwork" | "containment" | "lingering" | "net"> & {
  attachNetwork?: NetworkAttacher;
  /** Default: the helper the config names (network/net-helper.ts). */
  net?: NetHelper;
  containment?: ContainmentHost;
  /** Whether a namespace path is the host's own (spec.ts; faked in unit tests). */
  isHostNamespace?: (type: string, path: string) => boolean;
  /** The warm pool's options; the pool exists when the config's `pool` > 0 and the driver can. */
  pool?: Partial<Omit<PoolOptions, "target" | "busy" | "log">> & { log: Logger };
};

export class Pods {
  private readonly deps: PodDeps;
  /** CRI pods whose sandbox runs, for their app containers to join. */
  private readonly sandboxes = new Map<string, Pod>();
  private readonly isHostNamespace: (type: string, path: string) => boolean;
  /** Pre-booted VMs of the default size (absent when the config's `pool` is 0). */
  readonly pool: VmPool | undefined;
  /** Creates in flight: the pool's refills wait for them. */
  private creating = 0;

  constructor(deps: PodsDeps) {
    // The TAP belongs to the VMM group: the unprivileged VMM attaches to it (vmm/confine.ts).
    const tapGroup = deps.config.vmm_uid_first;
    this.isHostNamespace = deps.isHostNamespace ?? isHostNamespace;
    const net = deps.net ?? netHelper(deps.config.net_helper_binary);
    this.deps = {
      ...deps,
      net,
      attachNetwork:
        deps.attachNetwork ?? ((netns) => attachPodNetwork(net, netns, "tap0_chv", { tapGroup })),
      attachWarmNetwork:
        deps.attachWarmNetwork ??
        ((vm, netns, bootNic) =>
          bootNic
            ? attachBootNic(net, vm.pid, netns, bootNic.tap)
            : attachWarmNic(net, vm, netns, "tap0_chv", { tapGroup })),
      containment: deps.containment ?? hostContainment,
      lingering: new Lingering(),
    };
    const { config, driver } = deps;
    if (config.pool > 0 && deps.pool) {
      const poolOpts = deps.pool;
      if (driver.name !== "qemu") {
        // CH would hot-plug the NIC with vm.add-net (a TAP fd) and disks with vm.add-disk; not
        // built yet (docs/design.md): its pods boot cold.
        poolOpts.log.warn(
          { hypervisor: driver.name, pool: config.pool },
          "the warm pool is not built for this hypervisor; every pod boots cold",
        );
      } else {
        this.pool = new VmPool({
          ...poolOpts,
          target: config.pool,
          busy: () => this.creating > 0,
          boot: poolOpts.boot ?? ((id) => bootWarmVm(config, driver, id, poolOpts.log)),
        });
      }
    }
  }

  /** Creates the container (not started) from the OCI bundle at `bundle`, in the VM its role gives it. */
  async create(
    req: ContainerRequest & { bundle: string },
    log: Logger,
    phases: PhaseClock,
  ): Promise<PodMember> {
    this.creating++;
    try {
      return await this.createNow(req, log, phases);
    } finally {
      this.creating--;
    }
  }

  private async createNow(
    req: ContainerRequest & { bundle: string },
    log: Logger,
    phases: PhaseClock,
  ): Promise<PodMember> {
    const spec = await readOciSpec(req.bundle);
    const annotations = spec.doc.annotations ?? {};
    const role = podRole(annotations, req.id);
    req = { ...req, scratch: scratchSize(annotations, this.deps.config, role) };
    if (role.kind === "container") {
      const pod = this.sandboxes.get(`${req.namespace}/${role.sandboxId}`);
      if (!pod) {
        throw notFound(
          `sandbox ${role.sandboxId} of container ${req.id} (no running cloudhv pod VM has that id)`,
        );
      }
      return pod.join(req, spec, log, phases);
    }
    // Before anything is built: a VM cannot share the node's network, PID or IPC namespace.
    if (role.kind === "sandbox") refuseHostNamespaces(role.sandboxId, spec.doc, this.isHostNamespace);
    if (role.kind === "sandbox" && this.deps.config.sandbox_holder) req = { ...req, holder: true };
    const podId = role.kind === "sandbox" ? role.sandboxId : req.id;
    const size = vmSize(annotations, this.deps.config, spec.doc.linux?.resources);
    const where = { id: podId, key: `${req.namespace}/${podId}`, vmId: vmId(req.namespace, podId), size };
    const owner = await this.bootFromPool(where, req, spec, log, phases);
    if (role.kind === "sandbox") this.sandboxes.set(where.key, owner.pod);
    return owner;
  }

  /**
   * Boots the pod's VM: a pool VM when the pod is of the pool's size and one is ready, else
   * cold. A pool VM whose claim fails is stopped (never back to the pool) and the pod boots cold.
   */
  private async bootFromPool(
    where: { id: string; key: string; vmId: string; size: VmSize },
    req: ContainerRequest,
    spec: OciSpecFile,
    log: Logger,
    phases: PhaseClock,
  ): Promise<PodMember> {
    const pool = this.pool;
    if (!pool) return Pod.boot(where, req, spec, this.deps, log, phases);
    const cls = poolSize(this.deps.config);
    const { size } = where;
    const plan = growPlan(cls, size, {
      maxMemoryMb: this.deps.config.max_memory_mb,
      enabled: this.deps.config.pool_grow,
    });
    if ("why" in plan) {
      log.info(
        {
          pool: "other-size",
          size: { vcpus: size.vcpus, memoryMb: size.memoryMb, maxVcpus: size.maxVcpus },
          poolSize: cls,
          why: plan.why,
        },
        "pod is not of the pool's size: cold boot",
      );
      return Pod.boot(where, req, spec, this.deps, log, phases);
    }
    const taken = pool.take();
    const grow = plan.add.memoryMb > 0 || plan.add.vcpus > 0;
    const warm = taken && grow ? { ...taken, grow: plan.add } : taken;
    if (!warm) {
      pool.noteColdBoot();
      log.info({ pool: "miss", ...pool.stats() }, "no pool VM ready: cold boot");
      return Pod.boot(where, req, spec, this.deps, log, phases);
    }
    const claimPhases = new PhaseClock();
    let member: PodMember;
    try {
      // A copy: the boot rewrites the spec's mounts to guest paths, and a cold boot after a
      // failed claim needs them as containerd wrote them.
      const claimSpec = { bytes: spec.bytes, doc: structuredClone(spec.doc) };
      member = await Pod.boot(
        { ...where, vmId: warm.vm.id },
        req,
        claimSpec,
        this.deps,
        log,
        claimPhases,
        warm,
      );
    } catch (err) {
      // Pod.boot's undo stopped the VM already; discard counts it and makes sure.
      await pool.discard(warm);
      log.warn(
        { vm: warm.vm.id, err: (err as Error).message, pool: "claim-failed" },
        "pool VM failed its claim: cold boot",
      );
      return Pod.boot(where, req, spec, this.deps, log, phases);
    }
    phases.merge(claimPhases);
    // The pod's record owns the VM from now on: a later daemon must adopt it, not reap it.
    await forgetPoolMarker(warm).catch((err: Error) =>
      log.warn({ vm: warm.vm.id, err: err.message }, "pool marker not removed"),
    );
    return member;
  }

  /** Whether `pod` is a CRI sandbox (app containers may join it). */
  isSandbox(pod: Pod): boolean {
    return this.sandboxes.get(pod.key) === pod;
  }

  /** Takes over a pod a previous daemon served (Pod.adopt); undefined when its VM is gone. */
  async adopt(
    record: PodRecord,
    log: Logger,
  ): Promise<{ pod: Pod; members: Map<string, PodMember> } | undefined> {
    const adopted = await Pod.adopt(record, this.deps, log);
    if (adopted && record.sandbox) this.sandboxes.set(record.key, adopted.pod);
    return adopted;
  }

  /** Removes a container from its pod; the pod's owner takes the VM down (see Pod.remove). */
  async remove(member: PodMember, phases: PhaseClock): Promise<Removed> {
    if (member.ownsPod && this.sandboxes.get(member.pod.key) === member.pod)
      this.sandboxes.delete(member.pod.key);
    return member.pod.remove(member, phases);
  }

  /** Adds work a delete left running (Lingering.add): the daemon's exit waits for it too. */
  linger(key: string, work: Promise<unknown>): void {
    void this.deps.lingering.add(key, work);
  }

  /** Resolves once what deleted pods left in their netns is gone (the daemon's exit waits). */
  lingering(): Promise<void> {
    return this.deps.lingering.all();
  }
}
