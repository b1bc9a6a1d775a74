// Minimal OCI runtime specs (config.json) and exec Process specs for driving the guest agent
// directly, without containerd: what `ctr`/CRI would send, trimmed to what a busybox
// container needs.

export const DEFAULT_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"];

/** containerd's default capability set for containers. */
export const DEFAULT_CAPABILITIES = [
  "CAP_CHOWN",
  "CAP_DAC_OVERRIDE",
  "CAP_FSETID",
  "CAP_FOWNER",
  "CAP_MKNOD",
  "CAP_NET_RAW",
  "CAP_SETGID",
  "CAP_SETUID",
  "CAP_SETFCAP",
  "CAP_SETPCAP",
  "CAP_NET_BIND_SERVICE",
  "CAP_SYS_CHROOT",
  "CAP_KILL",
  "CAP_AUDIT_WRITE",
];

export interface ProcessOptions {
  terminal?: boolean;
  env?: string[];
  cwd?: string;
  /** Replaces DEFAULT_CAPABILITIES. */
  capabilities?: string[];
}

export interface OciProcess {
  terminal: boolean;
  user: { uid: number; gid: number };
  args: string[];
  env: string[];
  cwd: string;
  capabilities: Record<"bounding" | "effective" | "permitted", string[]>;
  noNewPrivileges: boolean;
}

/** An OCI Process (also the body of an exec). */
export function ociProcess(args: string[], opts: ProcessOptions = {}): OciProcess {
  const caps = opts.capabilities ?? DEFAULT_CAPABILITIES;
  return {
    terminal: opts.terminal ?? false,
    user: { uid: 0, gid: 0 },
    args,
    env: opts.env ?? DEFAULT_ENV,
    cwd: opts.cwd ?? "/",
    capabilities: { bounding: caps, effective: caps, permitted: caps },
    noNewPrivileges: true,
  };
}

export interface SpecOptions extends ProcessOptions {
  /** Default "/cloudhv/<id>". */
  cgroupsPath?: string;
  /** Namespaces to create; default pid, mount, ipc, uts. */
  namespaces?: string[];
  /** linux.resources.memory.limit in bytes. */
  memoryLimit?: number;
  /** More mounts after the defaults (e.g. host bind mounts CRI would add). */
  extraMounts?: object[];
  hostname?: string;
}

/** A minimal config.json for container `id`; root.path is replaced by the agent. */
export function ociSpec(id: string, args: string[], opts: SpecOptions = {}): Record<string, unknown> {
  const namespaces = opts.namespaces ?? ["pid", "mount", "ipc", "uts"];
  return {
    ociVersion: "1.0.2",
    process: ociProcess(args, opts),
    root: { path: "rootfs", readonly: false },
    hostname: opts.hostname ?? id.slice(0, 63),
    mounts: [
      { destination: "/proc", type: "proc", source: "proc", options: ["nosuid", "noexec", "nodev"] },
      {
        destination: "/dev",
        type: "tmpfs",
        source: "tmpfs",
        options: ["nosuid", "strictatime", "mode=755", "size=65536k"],
      },
      {
        destination: "/dev/pts",
        type: "devpts",
        source: "devpts",
        options: ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
      },
      { destination: "/sys", type: "sysfs", source: "sysfs", options: ["nosuid", "noexec", "nodev", "ro"] },
      ...(opts.extraMounts ?? []),
    ],
    linux: {
      namespaces: namespaces.map((type) => ({ type })),
      cgroupsPath: opts.cgroupsPath ?? `/cloudhv/${id}`,
      resources: {
        devices: [{ allow: false, access: "rwm" }],
        ...(opts.memoryLimit ? { memory: { limit: opts.memoryLimit } } : {}),
      },
      maskedPaths: ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
      readonlyPaths: ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    },
  };
}

export const specBytes = (spec: object): Uint8Array => Buffer.from(JSON.stringify(spec));
