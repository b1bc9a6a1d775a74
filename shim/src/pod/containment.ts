// What keeps a pod's VMM inside the pod on the host: its cgroup (the pod's limits and
// kubelet's accounting cover the VM) and an OOM score that follows the pod's QoS class.

import { type CgroupHierarchy, hostCgroupHierarchies } from "../cgroup/cgroup.js";
import { type OomScoreSetter, procOomScoreSetter } from "../cgroup/oom.js";
import { type PodCgroupPath, type PodQos, qosOf, resolveCgroupsPath } from "../cgroup/path.js";
import type { OciSpec } from "./spec.js";

/** The host's side of containment (faked in unit tests: a temp dir, recorded scores). */
export interface ContainmentHost {
  hierarchies(): Promise<CgroupHierarchy[]>;
  setOomScoreAdj: OomScoreSetter;
}

export const hostContainment: ContainmentHost = {
  hierarchies: hostCgroupHierarchies,
  setOomScoreAdj: procOomScoreSetter,
};

export interface ContainmentPlan {
  /** Absent when the spec names no cgroup (a task containerd made without one). */
  cgroup?: PodCgroupPath;
  qos?: PodQos;
  /** The spec's process.oomScoreAdj, for a pod whose QoS the cgroup does not tell. */
  specOomScoreAdj?: number;
}

/** Reads the sandbox's (or a standalone task's) spec; a malformed cgroupsPath fails here. */
export function planContainment(spec: OciSpec): ContainmentPlan {
  const plan: ContainmentPlan = {};
  const cgroupsPath = spec.linux?.cgroupsPath;
  if (cgroupsPath) {
    plan.cgroup = resolveCgroupsPath(cgroupsPath);
    const qos = qosOf(plan.cgroup.path);
    if (qos) plan.qos = qos;
  }
  const adj = spec.process?.oomScoreAdj;
  if (typeof adj === "number" && Number.isInteger(adj)) plan.specOomScoreAdj = adj;
  return plan;
}
