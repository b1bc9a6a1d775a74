// How big a container's writable disk (its scratch disk) is. Kubernetes' ephemeral-storage
// limit never reaches a runtime: CRI's LinuxContainerResources has CPU, memory and hugepages
// only, and containerd 1.6 (like 2.x) adds no annotation for it. So the size is the config's
// scratch_size, or the pod annotation io.cloudhv.config.hypervisor.scratch_size when the
// config's enable_annotations lists "scratch_size" (the admin then trusts pods to say what
// their limit is). kubelet still enforces the limit itself: the disk lives in the container's
// writable layer, so the usage it reads through CRI stats counts what the guest wrote.
// A CRI sandbox (the pause container) writes nothing and gets the smallest disk.
import { parseByteQuantity, type RuntimeConfig } from "../config.js";
import { invalid } from "../errors.js";
import { DEFAULT_SCRATCH_BYTES, MIN_SCRATCH_BYTES } from "../rootfs/scratch.js";
import type { PodRole } from "./cri.js";
import { ANNOTATION_PREFIXES } from "./sizing.js";

export const SCRATCH_SIZE_ANNOTATION = `${ANNOTATION_PREFIXES[0]}scratch_size`;

export interface ScratchSize {
  bytes: number;
  /** Where the size came from, for the log and for errors. */
  source: string;
}

/** The config's size of a scratch disk (scratch_size, else its old name scratch_disk_bytes). */
export function configScratchSize(config: RuntimeConfig): ScratchSize {
  if (config.scratch_size !== undefined) return { bytes: config.scratch_size, source: "config scratch_size" };
  if (config.scratch_disk_bytes !== undefined)
    return { bytes: config.scratch_disk_bytes, source: "config scratch_disk_bytes" };
  return { bytes: DEFAULT_SCRATCH_BYTES, source: "default scratch_size" };
}

/** A disk size the guest's ext4 can take: whole 4 KiB blocks, never above what was asked. */
const blocks = (bytes: number) => Math.floor(bytes / 4096) * 4096;

export function scratchSize(
  annotations: Record<string, unknown>,
  config: RuntimeConfig,
  role: PodRole,
): ScratchSize {
  if (role.kind === "sandbox") return { bytes: MIN_SCRATCH_BYTES, source: "CRI sandbox (pause) container" };
  const raw = annotations[SCRATCH_SIZE_ANNOTATION];
  if (raw === undefined) {
    const size = configScratchSize(config);
    return { ...size, bytes: blocks(size.bytes) };
  }
  if (!config.enable_annotations.includes("scratch_size"))
    throw invalid(
      `annotation ${SCRATCH_SIZE_ANNOTATION} is not enabled: the runtime config's enable_annotations does not list "scratch_size"`,
    );
  const text = String(raw).slice(0, 64);
  const bytes = parseByteQuantity(text);
  const max = config.scratch_budget > 0 ? config.scratch_budget : Number.MAX_SAFE_INTEGER;
  if (bytes === undefined || bytes < MIN_SCRATCH_BYTES || bytes > max)
    throw invalid(
      `annotation ${SCRATCH_SIZE_ANNOTATION}="${text}" must be a byte quantity (like "2Gi") from ${MIN_SCRATCH_BYTES} bytes` +
        (config.scratch_budget > 0 ? ` to the node's scratch_budget of ${config.scratch_budget} bytes` : ""),
    );
  return { bytes: blocks(bytes), source: `annotation ${SCRATCH_SIZE_ANNOTATION}` };
}
