// The runtime config (/opt/cloudhv/config.json, or $CLOUDHV_CONFIG): validated at the edge,
// so an unknown key, a wrong type or a bad value is an error naming the key and the file.
import { readFile } from "node:fs/promises";
import { z } from "zod";
import { METRICS_ADDRESS_HELP, parseMetricsAddress } from "./metrics/address.js";

export const DEFAULT_CONFIG_PATH = "/opt/cloudhv/config.json";

const QUANTITY = /^(\d{1,16})(Ki|Mi|Gi|Ti|k|M|G|T)?$/;
const UNITS: Record<string, number> = {
  "": 1,
  Ki: 1024,
  Mi: 1024 ** 2,
  Gi: 1024 ** 3,
  Ti: 1024 ** 4,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
};

/** Parses a byte count as Kubernetes writes it ("512Mi", "10G", "1073741824"); undefined if it is not one. */
export function parseByteQuantity(raw: unknown): number | undefined {
  if (typeof raw === "number") return Number.isSafeInteger(raw) && raw >= 0 ? raw : undefined;
  if (typeof raw !== "string") return undefined;
  const m = QUANTITY.exec(raw.trim());
  if (!m) return undefined;
  const bytes = Number(m[1]) * (UNITS[m[2] ?? ""] as number);
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}

/** A config key holding bytes: an integer or a quantity string, at least `min`. */
function byteQuantity(key: string, min: number) {
  return z.union([z.int(), z.string()]).transform((raw, ctx) => {
    const bytes = parseByteQuantity(raw);
    if (bytes === undefined || bytes < min) {
      ctx.addIssue({
        code: "custom",
        message: `${key} must be a byte count (an integer, or a quantity like "10Gi" or "500M") of at least ${min}, not ${JSON.stringify(raw)}`,
      });
      return z.NEVER;
    }
    return bytes;
  });
}

export const configSchema = z
  .strictObject({
    hypervisor: z.enum(["qemu", "cloud-hypervisor", "auto"]).default("auto"),
    qemu_binary: z.string().min(1).default("qemu-system-x86_64"),
    // TCG only when asked for: it is not a security boundary (see vmm/accel.ts).
    qemu_accel: z.enum(["kvm", "tcg"]).default("kvm"),
    // Each VM's VMM runs as one uid of first+1 … first+count-1; gid `first` is the VMM group.
    vmm_uid_first: z
      .int()
      .min(1)
      .max(2 ** 32 - 65_538)
      .default(2_000_000_000),
    vmm_uid_count: z.int().min(2).max(65_536).default(65_536),
    cloud_hypervisor_binary: z.string().min(1).default("/opt/cloudhv/bin/cloud-hypervisor"),
    // Serves the pod's shared volumes (hostPath, PVC, disk-backed emptyDir) by virtio-fs.
    virtiofsd_binary: z.string().min(1).default("/opt/cloudhv/bin/virtiofsd"),
    // Every read-only shared volume read-only all the way down (as CRI's recursive_read_only),
    // not at its top only (Kubernetes' default): docs/configuration.md says what that breaks.
    recursive_read_only_volumes: z.boolean().default(false),
    // Carries CRI port-forward from the pod's netns into its VM (network/port-forward.ts).
    port_forward_binary: z.string().min(1).default("/opt/cloudhv/bin/cloudhv-portfwd"),
    // Sets up and removes pods' TAPs and filters by netlink (network/net-helper.ts).
    net_helper_binary: z.string().min(1).default("/opt/cloudhv/bin/cloudhv-net"),
    kernel_path: z.string().min(1).default("/opt/cloudhv/vmlinux"),
    rootfs_path: z.string().min(1).default("/opt/cloudhv/rootfs.erofs"),
    kernel_args: z.string().default(""),
    default_vcpus: z.int().min(1).max(256).default(1),
    default_memory_mb: z
      .int()
      .min(64)
      .max(1 << 20)
      .default(256),
    max_containers_per_vm: z.int().min(1).max(64).default(5),
    max_vcpus: z.int().min(1).max(256).default(8),
    max_memory_mb: z
      .int()
      .min(64)
      .max(1 << 20)
      .default(8192),
    enable_annotations: z
      .array(z.enum(["default_vcpus", "default_memory", "default_maxvcpus", "scratch_size"]))
      // Off unless the admin enables them: a pod must not size its own VM (pod/sizing.ts).
      .default([]),
    allow_sizing_above_pod_limits: z.boolean().default(false),
    state_dir: z.string().min(1).default("/run/cloudhv"),
    cache_dir: z.string().min(1).default("/var/lib/cloudhv/cache"),
    cache_max_bytes: z
      .int()
      .min(0)
      .default(10 * 1024 ** 3),
    scratch_dir: z.string().min(1).default("/var/lib/cloudhv/scratch"),
    // Each container's writable disk (pod/scratch-size.ts): bytes or a quantity ("10Gi").
    scratch_size: byteQuantity("scratch_size", 64 * 1024 ** 2).optional(),
    /** The old name of scratch_size (bytes); kept so that existing configs still load. */
    scratch_disk_bytes: z
      .int()
      .min(64 * 1024 ** 2)
      .optional(),
    // writable_layer: the scratch file goes in the container's snapshot upperdir, where
    // containerd's CRI stats (and kubelet's ephemeral-storage eviction) count it; scratch_dir
    // only for a rootfs without one. scratch_dir: always there (e.g. a dedicated disk), unseen.
    scratch_placement: z.enum(["writable_layer", "scratch_dir"]).default("writable_layer"),
    // Sum of the sizes of all scratch disks on the node; a create past it is refused. 0: no budget.
    scratch_budget: byteQuantity("scratch_budget", 0).default(0),
    agent_boot_timeout_ms: z.int().min(100).default(60_000),
    // Periodic agent health checks (pod/health.ts): every interval, each with its deadline;
    // that many consecutive misses end the pod. Interval 0: no checks.
    agent_health_interval_ms: z.int().min(0).default(10_000),
    agent_health_timeout_ms: z.int().min(100).default(10_000),
    agent_health_misses: z.int().min(1).max(100).default(3),
    log_level: z.enum(["trace", "debug", "info", "warn", "error"]).default("info"),
    // The daemon's log: on disk (not the tmpfs state_dir), rotated by size (util/log-file.ts).
    log_dir: z.string().min(1).default("/var/log/cloudhv"),
    log_max_bytes: z
      .int()
      .min(64 * 1024)
      .max(2 ** 40)
      .default(10 * 1024 ** 2),
    log_files: z.int().min(1).max(100).default(3),
    // Warm pool (pod/pool.ts): VMs of the default size kept booted for new pods; 0: none.
    pool: z.int().min(0).max(64).default(1),
    // A bigger pod takes a pool VM grown by hot-plug (pod/grow.ts) rather than a cold boot.
    pool_grow: z.boolean().default(true),
    // Pool VMs run one practice container before they are ready (guest/agent/src/warmup.rs).
    pool_warm_up: z.boolean().default(true),
    // QEMU VMs get a virtio-balloon with free page reporting: the guest's freed memory goes back.
    free_page_reporting: z.boolean().default(false),
    // Where the daemon serves Prometheus metrics (metrics/server.ts); "" = off.
    metrics_address: z
      .string()
      .default("")
      .refine((v) => v === "" || parseMetricsAddress(v) !== undefined, { message: METRICS_ADDRESS_HELP }),
    // A CRI sandbox gets the agent's namespace holder, no pause image or disks (guest holder.rs);
    // false: crun runs the pause image from its disks, as a plain container.
    sandbox_holder: z.boolean().default(true),
  })
  .refine((c) => c.scratch_size === undefined || c.scratch_disk_bytes === undefined, {
    message: "set scratch_size only (scratch_disk_bytes is its old name)",
    path: ["scratch_disk_bytes"],
  })
  .describe("cloudhv runtime config");

export type RuntimeConfig = z.infer<typeof configSchema>;

export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

/** Parses an already-read config document; `source` names it in errors. */
export function parseConfig(doc: unknown, source: string): RuntimeConfig {
  const result = configSchema.safeParse(doc);
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => {
    if (issue.code === "unrecognized_keys")
      return `unknown key ${issue.keys.map((k) => `"${k}"`).join(", ")}`;
    const key = issue.path.join(".") || "(top level)";
    return `"${key}": ${issue.message}`;
  });
  throw new ConfigError(`invalid runtime config ${source}: ${problems.join("; ")}`);
}

/**
 * Loads the config from `path` (default: $CLOUDHV_CONFIG, else /opt/cloudhv/config.json).
 * A missing default file means "all defaults"; a missing explicitly named file is an error.
 */
export async function loadConfig(path?: string): Promise<RuntimeConfig> {
  const explicit = path ?? process.env.CLOUDHV_CONFIG;
  const file = explicit ?? DEFAULT_CONFIG_PATH;
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT" && !explicit) return parseConfig({}, "(defaults)");
    throw new ConfigError(`cannot read runtime config ${file}: ${(err as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`runtime config ${file} is not valid JSON: ${(err as Error).message}`);
  }
  return parseConfig(doc, file);
}
