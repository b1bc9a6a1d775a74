// Volumes kubelet bind-mounts into a container, made real inside the VM. kubelet's small
// managed files (resolv.conf, hosts, hostname, configmaps, secrets, projected and downwardAPI
// volumes) are copied in through the agent and re-copied when they change on the host; an
// emptyDir on tmpfs (medium: Memory) becomes a directory in guest memory shared by the pod's
// containers; every other bind mount (hostPath, PVC/CSI, disk-backed emptyDir, the termination
// log) is shared by virtio-fs (virtiofs.ts), so writes land on the host at once.
import { createHash } from "node:crypto";
import { lstat, readdir, readFile, readlink, stat, statfs } from "node:fs/promises";
import path from "node:path";
import type { AgentClient, PutFile } from "../agent/client.js";
import { invalid } from "../errors.js";
import type { VolumesRecord } from "../state/records.js";
import { logFromGuest } from "../util/guest-log.js";
import type { Logger } from "../util/log.js";
import { GUEST_SHARED, type SharedVolume } from "./virtiofs.js";

export const GUEST_VOLUMES = "/run/cloudhv/volumes";
/** Kubernetes caps a configmap or secret at 1 MiB; larger trees are not "small". */
export const MAX_COPIED_BYTES = 1024 * 1024;
const SYNC_INTERVAL_MS = 1000;
/** statfs f_type of tmpfs: an emptyDir with medium Memory. */
const TMPFS_MAGIC = 0x01021994;
/** Files kubelet and containerd write for every container: small, theirs, copied. */
const MANAGED_DESTINATIONS = new Set(["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"]);
const MANAGED_VOLUME = /\/kubernetes\.io~(configmap|secret|projected|downward-api)\//;

interface OciMount {
  destination: string;
  type?: string;
  source?: string;
  options?: string[];
}

interface Copied {
  hostPath: string;
  guestPath: string;
  signature: string;
}

/** What a container needs done to its spec's mounts before the guest can honour them. */
export class ContainerVolumes {
  private readonly copied: Copied[] = [];
  private readonly sharedDirs: string[] = [];
  /** Volumes the pod's virtio-fs serves (their spec sources already point at the guest path). */
  readonly shared: SharedVolume[] = [];
  private timer: NodeJS.Timeout | undefined;
  private syncing = false;

  private constructor(private readonly log: Logger) {}

  /**
   * Rewrites the bind mounts of `spec` in place to guest paths and remembers what to copy.
   * `podKey` groups emptyDirs of one pod.
   */
  static async plan(spec: { mounts?: OciMount[] }, containerId: string, podKey: string, log: Logger) {
    const volumes = new ContainerVolumes(log);
    for (const [index, mount] of (spec.mounts ?? []).entries()) {
      const bind = mount.type === "bind" || (mount.options ?? []).some((o) => o === "bind" || o === "rbind");
      const source = mount.source ?? "";
      if (!bind || !source) continue;
      // containerd's per-sandbox /dev/shm: the agent gives the container a tmpfs instead.
      if (mount.destination === "/dev/shm") continue;
      const readOnly = (mount.options ?? []).includes("ro");
      if (source.includes("/kubernetes.io~empty-dir/") && (await onTmpfs(source))) {
        const dir = `${GUEST_VOLUMES}/pods/${hash(podKey)}/empty-dir/${path.basename(source)}`;
        volumes.sharedDirs.push(dir);
        mount.source = dir;
        continue;
      }
      if (!MANAGED_DESTINATIONS.has(mount.destination) && !MANAGED_VOLUME.test(source)) {
        // Checked now, so that a volume the VM cannot have fails before anything is built.
        const info = await stat(source).catch((err: NodeJS.ErrnoException) => {
          throw invalid(
            `volume ${source} (mounted at ${mount.destination}) cannot be shared: ${err.code} on the host`,
          );
        });
        if (!info.isFile() && !info.isDirectory())
          throw invalid(
            `volume ${source} (mounted at ${mount.destination}) cannot be shared: neither a file nor a directory`,
          );
        const name = `${containerId}-${index}`;
        volumes.shared.push({ name, hostPath: source, readOnly, destination: mount.destination });
        mount.source = `${GUEST_SHARED}/${name}`;
        continue;
      }
      const info = await stat(source).catch((err: NodeJS.ErrnoException) => {
        throw invalid(
          `volume ${source} (mounted at ${mount.destination}) cannot be read on the host: ${err.code}`,
        );
      });
      if (!info.isFile() && !info.isDirectory()) {
        throw invalid(`volume ${source} (mounted at ${mount.destination}) is neither a file nor a directory`);
      }
      const size = info.isFile() ? info.size : await treeSize(source);
      if (size > MAX_COPIED_BYTES) {
        throw invalid(
          `volume ${source} (mounted at ${mount.destination}) holds ${size} bytes; kubelet's managed volumes ` +
            `(configmaps, secrets, projected, downwardAPI) are copied into the VM up to ${MAX_COPIED_BYTES} bytes`,
        );
      }
      const guestPath = `${GUEST_VOLUMES}/containers/${containerId}/${index}`;
      volumes.copied.push({ hostPath: source, guestPath, signature: "" });
      mount.source = guestPath;
    }
    return volumes;
  }

  /** What a later daemon needs to keep these volumes in sync and to unbind them. */
  record(): VolumesRecord {
    return {
      copied: this.copied.map(({ hostPath, guestPath }) => ({ hostPath, guestPath })),
      sharedDirs: [...this.sharedDirs],
      shared: this.shared.map((v) => ({ ...v })),
    };
  }

  /** The volumes of a container a previous daemon created (the guest already has them). */
  static adopt(record: VolumesRecord, log: Logger): ContainerVolumes {
    const volumes = new ContainerVolumes(log);
    for (const { hostPath, guestPath } of record.copied)
      volumes.copied.push({ hostPath, guestPath, signature: "" });
    volumes.sharedDirs.push(...record.sharedDirs);
    volumes.shared.push(...record.shared);
    return volumes;
  }

  get empty(): boolean {
    return this.copied.length === 0 && this.sharedDirs.length === 0 && this.shared.length === 0;
  }

  /** Puts everything in the guest (before the container is created). */
  async apply(agent: AgentClient): Promise<void> {
    for (const dir of this.sharedDirs) {
      await agent.putFiles(dir, [{ path: "", data: Buffer.alloc(0), mode: 0o777, symlink: "", isDir: true }]);
    }
    for (const volume of this.copied) await this.push(agent, volume);
  }

  /** Re-copies a volume whenever it changes on the host (kubelet updates configmaps in place). */
  startSync(agent: AgentClient): void {
    if (this.copied.length === 0) return;
    this.timer = setInterval(() => void this.syncOnce(agent), SYNC_INTERVAL_MS);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private async syncOnce(agent: AgentClient): Promise<void> {
    if (this.syncing) return;
    this.syncing = true;
    try {
      for (const volume of this.copied) {
        if ((await signature(volume.hostPath)) !== volume.signature) await this.push(agent, volume);
      }
    } catch (err) {
      const fields = { err: (err as Error).message };
      if (agent.guest) logFromGuest(this.log, agent.guest, "warn", fields, "volume sync failed; retrying");
      else this.log.warn(fields, "volume sync failed; retrying");
    } finally {
      this.syncing = false;
    }
  }

  private async push(agent: AgentClient, volume: Copied): Promise<void> {
    volume.signature = await signature(volume.hostPath);
    const files = await collect(volume.hostPath);
    await agent.putFiles(volume.guestPath, files);
  }
}

async function onTmpfs(dir: string): Promise<boolean> {
  return statfs(dir).then(
    (s) => s.type === TMPFS_MAGIC,
    () => false,
  );
}

function hash(text: string): string {
  return createHash("sha256").update(text).digest("hex").slice(0, 16);
}

async function treeSize(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) total += (await lstat(path.join(entry.parentPath, entry.name))).size;
  }
  return total;
}

/** Changes when any file, link or directory of the volume changes. */
async function signature(hostPath: string): Promise<string> {
  const info = await lstat(hostPath);
  if (!info.isDirectory()) return `${info.mtimeMs}:${info.size}:${info.ino}`;
  const parts: string[] = [];
  for (const entry of await readdir(hostPath, { withFileTypes: true, recursive: true })) {
    const full = path.join(entry.parentPath, entry.name);
    const s = await lstat(full);
    parts.push(`${full}:${s.mtimeMs}:${s.size}:${s.ino}`);
  }
  return parts.sort().join("|");
}

async function collect(hostPath: string): Promise<PutFile[]> {
  const info = await stat(hostPath);
  if (info.isFile())
    return [
      { path: "", data: await readFile(hostPath), mode: info.mode & 0o7777, symlink: "", isDir: false },
    ];
  const files: PutFile[] = [
    { path: "", data: Buffer.alloc(0), mode: info.mode & 0o7777, symlink: "", isDir: true },
  ];
  for (const entry of await readdir(hostPath, { withFileTypes: true, recursive: true })) {
    const full = path.join(entry.parentPath, entry.name);
    const rel = path.relative(hostPath, full);
    const s = await lstat(full);
    if (entry.isSymbolicLink())
      files.push({ path: rel, data: Buffer.alloc(0), mode: 0, symlink: await readlink(full), isDir: false });
    else if (entry.isDirectory())
      files.push({ path: rel, data: Buffer.alloc(0), mode: s.mode & 0o7777, symlink: "", isDir: true });
    else if (entry.isFile())
      files.push({ path: rel, data: await readFile(full), mode: s.mode & 0o7777, symlink: "", isDir: false });
  }
  // Directories first so that every file's parent exists when it is written.
  return files.sort((a, b) => Number(b.isDir) - Number(a.isDir) || a.path.length - b.path.length);
}
