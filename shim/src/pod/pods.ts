// Where a container runs: a plain task and a CRI sandbox each boot a VM of their own; a CRI app
// container joins the VM its sandbox booted. Keeps the running CRI pods by namespace/sandbox id.

import { notFound } from "../errors.js";
import { attachPodNetwork } from "../network/pod-network.js";
import type { PodRecord } from "../state/records.js";
import type { Logger } from "../util/log.js";
import type { PhaseClock } from "../util/phases.js";
import { type ContainmentHost, hostContainment } from "./containment.js";
import { podRole } from "./cri.js";
import {
  type ContainerRequest,
  type NetworkAttacher,
  Pod,
  type PodDeps,
  type PodMember,
  vmId,
} from "./pod.js";
import { scratchSize } from "./scratch-size.js";
import { vmSize } from "./sizing.js";
import { isHostNamespace, readOciSpec, refuseHostNamespaces } from "./spec.js";

export type PodsDeps = Omit<PodDeps, "attachNetwork" | "containment"> & {
  attachNetwork?: NetworkAttacher;
  containment?: ContainmentHost;
  /** Whether a namespace path is the host's own (spec.ts; faked in unit tests). */
  isHostNamespace?: (type: string, path: string) => boolean;
};

export class Pods {
  private readonly deps: PodDeps;
  /** CRI pods whose sandbox runs, for their app containers to join. */
  private readonly sandboxes = new Map<string, Pod>();
  private readonly isHostNamespace: (type: string, path: string) => boolean;

  constructor(deps: PodsDeps) {
    // The TAP belongs to the VMM group: the unprivileged VMM attaches to it (vmm/confine.ts).
    const tapGroup = deps.config.vmm_uid_first;
    this.isHostNamespace = deps.isHostNamespace ?? isHostNamespace;
    this.deps = {
      ...deps,
      attachNetwork: deps.attachNetwork ?? ((netns) => attachPodNetwork(netns, "tap0_chv", { tapGroup })),
      containment: deps.containment ?? hostContainment,
    };
  }

  /** Creates the container (not started) from the OCI bundle at `bundle`, in the VM its role gives it. */
  async create(
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
    const podId = role.kind === "sandbox" ? role.sandboxId : req.id;
    const size = vmSize(annotations, this.deps.config, spec.doc.linux?.resources);
    const where = { id: podId, key: `${req.namespace}/${podId}`, vmId: vmId(req.namespace, podId), size };
    const owner = await Pod.boot(where, req, spec, this.deps, log, phases);
    if (role.kind === "sandbox") this.sandboxes.set(where.key, owner.pod);
    return owner;
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
  async remove(member: PodMember, phases: PhaseClock): Promise<void> {
    if (member.ownsPod && this.sandboxes.get(member.pod.key) === member.pod)
      this.sandboxes.delete(member.pod.key);
    await member.pod.remove(member, phases);
  }
}
