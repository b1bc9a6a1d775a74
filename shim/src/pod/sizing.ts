// How big a pod's VM is. In order: io.cloudhv.config.hypervisor.* annotations, then
// io.katacontainers.config.hypervisor.*, then the CRI sandbox resources containerd passes,
// then the config's defaults. An annotation the config does not enable, a malformed value or
// one outside the config's bounds fails the sandbox with a message naming all three.
import type { RuntimeConfig } from "../config/config.js";
import { invalid } from "../errors.js";

export const ANNOTATION_PREFIXES = [
  "io.cloudhv.config.hypervisor.",
  "io.katacontainers.config.hypervisor.",
] as const;
export type SizingKey = "default_vcpus" | "default_memory" | "default_maxvcpus";
const KEYS: readonly SizingKey[] = ["default_vcpus", "default_memory", "default_maxvcpus"];

/** containerd's CRI plugin (1.7+) puts the pod's summed resources in these annotations. */
export const CRI_SANDBOX_CPU_QUOTA = "io.kubernetes.cri.sandbox-cpu-quota";
export const CRI_SANDBOX_CPU_PERIOD = "io.kubernetes.cri.sandbox-cpu-period";
export const CRI_SANDBOX_MEMORY = "io.kubernetes.cri.sandbox-memory";

export interface VmSize {
  vcpus: number;
  maxVcpus: number;
  memoryMb: number;
  /** Where each number came from, for the log. */
  sources: Record<"vcpus" | "maxVcpus" | "memoryMb", string>;
}

function integer(name: string, raw: unknown, min: number, max: number, unit: string): number {
  const text = String(raw).trim();
  const value = /^\d+$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw invalid(`annotation ${name}="${String(raw)}" must be an integer from ${min} to ${max} ${unit}`);
  }
  return value;
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

export function vmSize(annotations: Record<string, unknown>, config: RuntimeConfig): VmSize {
  for (const name of Object.keys(annotations)) {
    const prefix = ANNOTATION_PREFIXES.find((p) => name.startsWith(p));
    if (prefix && !KEYS.includes(name.slice(prefix.length) as SizingKey)) {
      throw invalid(`annotation ${name} is not supported; the hypervisor annotations are ${KEYS.join(", ")}`);
    }
  }
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
    vcpus = integer(cpu.name, cpu.value, 1, config.max_vcpus, "vCPUs (config max_vcpus)");
    sources.vcpus = cpu.name;
  } else if (
    annotations[CRI_SANDBOX_CPU_QUOTA] !== undefined &&
    annotations[CRI_SANDBOX_CPU_PERIOD] !== undefined
  ) {
    const quota = Number(annotations[CRI_SANDBOX_CPU_QUOTA]);
    const period = Number(annotations[CRI_SANDBOX_CPU_PERIOD]);
    // quota <= 0 means "no limit": keep the default.
    if (quota > 0 && period > 0) {
      const wanted = Math.ceil(quota / period);
      vcpus = integer(
        CRI_SANDBOX_CPU_QUOTA,
        wanted,
        1,
        config.max_vcpus,
        "vCPUs (quota/period, config max_vcpus)",
      );
      sources.vcpus = `${CRI_SANDBOX_CPU_QUOTA}/${CRI_SANDBOX_CPU_PERIOD}`;
    }
  }
  const mem = annotated(annotations, "default_memory", config);
  if (mem) {
    memoryMb = integer(mem.name, mem.value, 64, config.max_memory_mb, "MiB (config max_memory_mb)");
    sources.memoryMb = mem.name;
  } else if (annotations[CRI_SANDBOX_MEMORY] !== undefined && Number(annotations[CRI_SANDBOX_MEMORY]) > 0) {
    // The pod's memory limit in bytes, plus the guest's own overhead (kernel, agent).
    const bytes = Number(annotations[CRI_SANDBOX_MEMORY]);
    const wanted = Math.ceil(bytes / 2 ** 20) + config.default_memory_mb;
    memoryMb = integer(
      CRI_SANDBOX_MEMORY,
      wanted,
      64,
      config.max_memory_mb,
      "MiB (limit + default_memory_mb, config max_memory_mb)",
    );
    sources.memoryMb = CRI_SANDBOX_MEMORY;
  }
  const max = annotated(annotations, "default_maxvcpus", config);
  if (max) {
    maxVcpus = integer(max.name, max.value, 1, config.max_vcpus, "vCPUs (config max_vcpus)");
    sources.maxVcpus = max.name;
  }
  if (vcpus > maxVcpus) {
    throw invalid(
      `${sources.vcpus} asks for ${vcpus} vCPUs, more than the maximum of ${maxVcpus} (${sources.maxVcpus})`,
    );
  }
  return { vcpus, maxVcpus, memoryMb, sources };
}
