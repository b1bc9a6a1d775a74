// What keeps a pod's VMM inside the pod on the host: its cgroup (the pod's limits and
// kubelet's accounting cover the VM) and an OOM score that follows the pod's QoS class.

import { readdir, writeFile } from "node:fs/promises";
import { setPriority } from "node:os";
import { type CgroupHierarchy, hostCgroupHierarchies } from "../cgroup/cgroup.js";
import { type OomScoreSetter, procOomScoreSetter } from "../cgroup/oom.js";
import { type PodCgroupPath, type PodQos, qosOf, resolveCgroupsPath } from "../cgroup/path.js";
import type { OciSpec } from "./spec.js";

/** The host's side of containment (faked in unit tests: a temp dir, recorded scores). */
export interface ContainmentHost {
  hierarchies(): Promise<CgroupHierarchy[]>;
  setOomScoreAdj: OomScoreSetter;
  /** Moves a running process (a claimed pool VM's VMM) into these cgroup.procs files. */
  joinCgroup?(pid: number, procs: readonly string[]): Promise<void>;
  /** Sets the nice value of every thread of a process (a pool VM booted at 19). */
  setNice?(pid: number, nice: number): Promise<void>;
}

export const hostContainment: ContainmentHost = {
  hierarchies: hostCgroupHierarchies,
  setOomScoreAdj: procOomScoreSetter,
  async joinCgroup(pid, procs) {
    // cgroup v2 moves the whole process; memory it already touched stays charged where it was.
    // The hierarchies (v1 has one per controller) are independent: all at once (~2 ms each
    // for a QEMU and its threads, one after the other).
    await Promise.all(procs.map((file) => writeFile(file, `${pid}\n`)));
  },
  async setNice(pid, nice) {
    // setpriority() is per thread on Linux: QEMU's vCPU threads each carry their own.
    for (const tid of await readdir(`/proc/${pid}/task`)) {
      try {
        setPriority(Number(tid), nice);
      } catch (err) {
        // A thread that ended meanwhile.
        if ((err as { info?: { code?: string } }).info?.code !== "ESRCH") throw err;
      }
    }
  },
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
