// How big a pod's VM is. In order: io.cloudhv.config.hypervisor.* annotations, then
// io.katacontainers.config.hypervisor.*, then the pod's limits (the CRI sandbox resources
// containerd passes, or a standalone task's linux.resources), then the config's defaults.
// Annotations are refused unless the config's enable_annotations lists them, and never size
// the VM above the pod's limits unless allow_sizing_above_pod_limits says so: a pod cannot
// take more of the node through its VM than kubelet granted it. A malformed value or one
// outside the bounds fails the sandbox with a message naming the annotation and the bound.
import type { RuntimeConfig } from "../config.js";
import { invalid } from "../errors.js";
import type { OciResources } from "./spec.js";

export const ANNOTATION_PREFIXES = [
  "io.cloudhv.config.hypervisor.",
  "io.katacontainers.config.hypervisor.",
] as const;
export type SizingKey = "default_vcpus" | "default_memory" | "default_maxvcpus";
const KEYS: readonly SizingKey[] = ["default_vcpus", "default_memory", "default_maxvcpus"];

/**
 * containerd's CRI plugin (1.6 and later, pkg/cri/annotations; internal/cri/annotations in
 * 2.x) puts the pod's summed resources from kubelet on the sandbox spec: the CPU limit as
 * quota/period (quota <= 0: none), the CPU request as shares, the memory limit in bytes (0:
 * none). The sandbox spec's own linux.resources are the pause container's, not the pod's.
 */
export const CRI_SANDBOX_CPU_QUOTA = "io.kubernetes.cri.sandbox-cpu-quota";
export const CRI_SANDBOX_CPU_PERIOD = "io.kubernetes.cri.sandbox-cpu-period";
export const CRI_SANDBOX_CPU_SHARES = "io.kubernetes.cri.sandbox-cpu-shares";
export const CRI_SANDBOX_MEMORY = "io.kubernetes.cri.sandbox-memory";

export interface VmSize {
  vcpus: number;
  maxVcpus: number;
  memoryMb: number;
  /** Where each number came from, for the log. */
  sources: Record<"vcpus" | "maxVcpus" | "memoryMb", string>;
}

/** The pod's own limits, each with where it was read, for bounds and messages. */
export interface PodLimits {
  vcpus?: { value: number; source: string };
  /** The VM's memory budget: the pod's memory limit plus the guest's own (default_memory_mb). */
  memoryMb?: { value: number; source: string };
}

function integer(what: string, raw: unknown, min: number, max: number, unit: string): number {
  const text = String(raw).trim();
  const value = /^\d+$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw invalid(`${what}="${String(raw)}" must be an integer from ${min} to ${max} ${unit}`);
  }
  return value;
}

/** A number containerd wrote (annotation text or spec number); undefined when absent or not a number. */
function num(raw: unknown): number | undefined {
  if (raw === undefined || raw === null || raw === "") return undefined;
  const value = Number(raw);
  return Number.isFinite(value) ? value : undefined;
}

/** The pod's CPU and memory limits: the CRI sandbox annotations, else the spec's linux.resources. */
export function podLimits(
  annotations: Record<string, unknown>,
  config: RuntimeConfig,
  resources?: OciResources,
): PodLimits {
  const limits: PodLimits = {};
  const criQuota = num(annotations[CRI_SANDBOX_CPU_QUOTA]);
  const criPeriod = num(annotations[CRI_SANDBOX_CPU_PERIOD]);
  const cpu =
    criQuota !== undefined && criPeriod !== undefined
      ? {
          quota: criQuota,
          period: criPeriod,
          source: `${CRI_SANDBOX_CPU_QUOTA}=${criQuota}/${CRI_SANDBOX_CPU_PERIOD}=${criPeriod}`,
        }
      : {
          quota: num(resources?.cpu?.quota) ?? 0,
          period: num(resources?.cpu?.period) ?? 100_000,
          source: `linux.resources.cpu quota=${resources?.cpu?.quota}/period=${resources?.cpu?.period ?? 100_000}`,
        };
  // quota <= 0 means "no limit".
  if (cpu.quota > 0 && cpu.period > 0) {
    limits.vcpus = { value: Math.ceil(cpu.quota / cpu.period), source: cpu.source };
  }
  const criMemory = num(annotations[CRI_SANDBOX_MEMORY]);
  const memory =
    criMemory !== undefined
      ? { bytes: criMemory, source: `${CRI_SANDBOX_MEMORY}=${criMemory}` }
      : {
          bytes: num(resources?.memory?.limit) ?? 0,
          source: `linux.resources.memory.limit=${resources?.memory?.limit}`,
        };
  if (memory.bytes > 0) {
    // The guest's kernel and agent need memory of their own on top of the pod's limit; the
    // RuntimeClass overhead is where the admin accounts it.
    limits.memoryMb = {
      value: Math.ceil(memory.bytes / 2 ** 20) + config.default_memory_mb,
      source: `${memory.source} bytes plus default_memory_mb ${config.default_memory_mb}`,
    };
  }
  return limits;
}

/** The first annotation (by prefix precedence) that sets `key`, if enabled. */
function annotated(annotations: Record<string, unknown>, key: SizingKey, config: RuntimeConfig) {
  for (const prefix of ANNOTATION_PREFIXES) {
    const name = prefix + key;
    if (annotations[name] === undefined) continue;
    if (!config.enable_annotations.includes(key)) {
      throw invalid(
        `annotation ${name} is not enabled: the runtime config's enable_annotations does not list "${key}"`,
      );
    }
    return { name, value: annotations[name] };
  }
  return undefined;
}

/** Refuses an annotation that asks for more than the pod's limit, unless the config allows it. */
function withinPodLimit(
  name: string,
  value: number,
  limit: { value: number; source: string } | undefined,
  unit: string,
  config: RuntimeConfig,
): void {
  if (!limit || value <= limit.value || config.allow_sizing_above_pod_limits) return;
  throw invalid(
    `annotation ${name}=${value} asks for ${value} ${unit}, more than the pod's limit of ${limit.value} ${unit} ` +
      `(${limit.source}); the runtime config's allow_sizing_above_pod_limits would allow it`,
  );
}

export function vmSize(
  annotations: Record<string, unknown>,
  config: RuntimeConfig,
  resources?: OciResources,
): VmSize {
  for (const name of Object.keys(annotations)) {
    const prefix = ANNOTATION_PREFIXES.find((p) => name.startsWith(p));
    const key = prefix ? name.slice(prefix.length) : "";
    // scratch_size is ours only (pod/scratch-size.ts reads it for each container).
    const known =
      KEYS.includes(key as SizingKey) || (prefix === ANNOTATION_PREFIXES[0] && key === "scratch_size");
    if (prefix && !known) {
      throw invalid(
        `annotation ${name} is not supported; the hypervisor annotations are ${KEYS.join(", ")} (and ${ANNOTATION_PREFIXES[0]}scratch_size)`,
      );
    }
  }
  const limits = podLimits(annotations, config, resources);
  const sources = {
    vcpus: "config default_vcpus",
    maxVcpus: "config max_vcpus",
    memoryMb: "config default_memory_mb",
  };
  let vcpus = config.default_vcpus;
  let memoryMb = config.default_memory_mb;
  let maxVcpus = config.max_vcpus;

  const cpu = annotated(annotations, "default_vcpus", config);
  if (cpu) {
    vcpus = integer(`annotation ${cpu.name}`, cpu.value, 1, config.max_vcpus, "vCPUs (config max_vcpus)");
    withinPodLimit(cpu.name, vcpus, limits.vcpus, "vCPUs", config);
    sources.vcpus = cpu.name;
  } else if (limits.vcpus) {
    vcpus = integer(
      `the pod's CPU limit (${limits.vcpus.source}) in vCPUs`,
      limits.vcpus.value,
      1,
      config.max_vcpus,
      "vCPUs (quota/period, config max_vcpus)",
    );
    sources.vcpus = limits.vcpus.source;
  }
  const mem = annotated(annotations, "default_memory", config);
  if (mem) {
    memoryMb = integer(
      `annotation ${mem.name}`,
      mem.value,
      64,
      config.max_memory_mb,
      "MiB (config max_memory_mb)",
    );
    withinPodLimit(mem.name, memoryMb, limits.memoryMb, "MiB", config);
    sources.memoryMb = mem.name;
  } else if (limits.memoryMb) {
    memoryMb = integer(
      `the pod's memory limit (${limits.memoryMb.source}) in MiB`,
      limits.memoryMb.value,
      64,
      config.max_memory_mb,
      "MiB (limit + default_memory_mb, config max_memory_mb)",
    );
    sources.memoryMb = limits.memoryMb.source;
  }
  const max = annotated(annotations, "default_maxvcpus", config);
  if (max) {
    maxVcpus = integer(`annotation ${max.name}`, max.value, 1, config.max_vcpus, "vCPUs (config max_vcpus)");
    sources.maxVcpus = max.name;
  }
  if (vcpus > maxVcpus) {
    throw invalid(
      `${sources.vcpus} asks for ${vcpus} vCPUs, more than the maximum of ${maxVcpus} (${sources.maxVcpus})`,
    );
  }
  return { vcpus, maxVcpus, memoryMb, sources };
}
