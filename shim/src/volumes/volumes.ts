// Volumes kubelet bind-mounts into a container, made real inside the VM. kubelet's small
// managed files (resolv.conf, hosts, hostname, configmaps, secrets, projected and downwardAPI
// volumes) are read as untrusted trees (safe-copy.ts), copied in through the agent and copied
// again when they change on the host; an emptyDir on tmpfs (medium: Memory) becomes a directory
// in guest memory shared by the pod's containers; every other bind mount (hostPath, PVC/CSI,
// disk-backed emptyDir, the termination log) is shared by virtio-fs (virtiofs.ts), so writes
// land on the host at once.
import { createHash } from "node:crypto";
import { realpath, stat, statfs } from "node:fs/promises";
import path from "node:path";
import type { AgentClient, PutFile } from "../agent/client.js";
import { invalid } from "../errors.js";
import { writableMountsBelow } from "../rootfs/mountinfo.js";
import type { VolumesRecord } from "../state/records.js";
import { logFromGuest } from "../util/guest-log.js";
import type { Logger } from "../util/log.js";
import {
  checkLocalSource,
  collectVolumeOnce,
  collectVolumeSettled,
  VolumeChanged,
  volumeSignature,
} from "./safe-copy.js";
import { GUEST_SHARED, type SharedVolume } from "./virtiofs.js";

export const GUEST_VOLUMES = "/run/cloudhv/volumes";
const SYNC_INTERVAL_MS = 1000;
/** statfs f_type of tmpfs: an emptyDir with medium Memory. */
const TMPFS_MAGIC = 0x01021994;
/** Files kubelet and containerd write for every container: small, theirs, copied. */
const MANAGED_DESTINATIONS = new Set(["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"]);
const MANAGED_VOLUME = /\/kubernetes\.io~(configmap|secret|projected|downward-api)\//;
/** Read-write host mounts below one read-only volume that keep their own bind in the guest. */
const MAX_WRITABLE_SUBMOUNTS = 32;

interface OciMount {
  destination: string;
  type?: string;
  source?: string;
  options?: string[];
}

interface Copied {
  hostPath: string;
  /** "volume <source> (mounted at <destination>)", for errors and logs. */
  label: string;
  guestPath: string;
  signature: string;
  /** What the next push sends: read at plan time, then by each sync that saw a change. */
  files: PutFile[] | undefined;
  /** The last sync failure logged, so that a volume refused every second is logged once. */
  lastError?: string | undefined;
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
   * `podKey` groups emptyDirs of one pod. `recursiveReadOnly` makes every read-only shared
   * volume recursively read-only (runtime config recursive_read_only_volumes).
   */
  static async plan(
    spec: { mounts?: OciMount[] },
    containerId: string,
    podKey: string,
    log: Logger,
    recursiveReadOnly = false,
  ) {
    const volumes = new ContainerVolumes(log);
    const extra: Array<{ after: OciMount; mount: OciMount }> = [];
    for (const [index, mount] of (spec.mounts ?? []).entries()) {
      const bind = mount.type === "bind" || (mount.options ?? []).some((o) => o === "bind" || o === "rbind");
      const source = mount.source ?? "";
      if (!bind || !source) continue;
      // containerd's per-sandbox /dev/shm: the agent gives the container a tmpfs instead.
      if (mount.destination === "/dev/shm") continue;
      const options = mount.options ?? [];
      // `rro` (containerd 2's CRI recursive_read_only) is read-only too.
      const readOnly = options.includes("ro") || options.includes("rro");
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
        const recursive = readOnly && (recursiveReadOnly || options.includes("rro"));
        const propagation = options.some((o) => /^r?(slave|shared)$/.test(o)) ? "slave" : "private";
        volumes.shared.push({
          name,
          hostPath: source,
          readOnly,
          recursiveReadOnly: recursive,
          propagation,
          destination: mount.destination,
        });
        mount.source = `${GUEST_SHARED}/${name}`;
        // Recursive read-only: the share holds nothing below the volume, so the guest's plain
        // read-only bind is read-only all the way down.
        if (recursive) mount.options = [...options.filter((o) => o !== "rro" && o !== "ro"), "ro"];
        // Read-only is not recursive (runc, Kubernetes' default): the host's read-write mounts
        // below the volume stay writable. In the guest they are virtio-fs submounts, which
        // would take the read-only flag of the container's bind: each gets a bind of its own.
        else if (readOnly && info.isDirectory()) {
          const host = await realpath(source);
          const keep = options.filter((o) => /^r?(private|slave|shared)$/.test(o));
          for (const below of await writableMountsBelow(host, MAX_WRITABLE_SUBMOUNTS)) {
            const rel = below.slice(host === "/" ? 0 : host.length);
            extra.push({
              after: mount,
              mount: {
                destination: path.posix.join(mount.destination, rel),
                type: "bind",
                source: `${GUEST_SHARED}/${name}${rel}`,
                options: ["rbind", "rw", ...keep],
              },
            });
          }
        }
        continue;
      }
      // Read now (budgets, types, links), so that a volume the VM cannot have fails here,
      // naming itself, before anything is built.
      const label = `volume ${source} (mounted at ${mount.destination})`;
      await checkLocalSource(source, label);
      const first = await collectVolumeSettled(source, label);
      const guestPath = `${GUEST_VOLUMES}/containers/${containerId}/${index}`;
      volumes.copied.push({ hostPath: source, label, guestPath, ...first });
      mount.source = guestPath;
    }
    // Each added bind right after its volume's (and after any added before it), so that crun
    // mounts it on top.
    for (const { after, mount } of extra.reverse()) {
      const mounts = spec.mounts ?? [];
      mounts.splice(mounts.indexOf(after) + 1, 0, mount);
    }
    return volumes;
  }

  /** What a later daemon needs to keep these volumes in sync and to unbind them. */
  record(): VolumesRecord {
    return {
      copied: this.copied.map(({ hostPath, guestPath, label }) => ({ hostPath, guestPath, label })),
      sharedDirs: [...this.sharedDirs],
      shared: this.shared.map((v) => ({ ...v })),
    };
  }

  /** The volumes of a container a previous daemon created (the guest already has them). */
  static adopt(record: VolumesRecord, log: Logger): ContainerVolumes {
    const volumes = new ContainerVolumes(log);
    for (const { hostPath, guestPath, label } of record.copied)
      volumes.copied.push({ hostPath, guestPath, label, signature: "", files: undefined });
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
    // Each volume has a guest path of its own: they go at once (one agent call each).
    await Promise.all(this.copied.map((volume) => this.push(agent, volume)));
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
      for (const volume of this.copied) await this.syncVolume(agent, volume);
    } finally {
      this.syncing = false;
    }
  }

  /**
   * One volume: a stat-only walk (bounded like the copy) decides; a changed volume is read
   * again. A refused or unsettled volume keeps its last copy in the guest and is logged once
   * per distinct reason; a later good state is copied again.
   */
  private async syncVolume(agent: AgentClient, volume: Copied): Promise<void> {
    try {
      if ((await volumeSignature(volume.hostPath, volume.label)) === volume.signature) return;
      const next = await collectVolumeOnce(volume.hostPath, volume.label);
      volume.files = next.files;
      await this.push(agent, volume);
      volume.signature = next.signature;
      volume.lastError = undefined;
    } catch (err) {
      if (err instanceof VolumeChanged) return;
      const message = (err as Error).message;
      if (message !== volume.lastError) {
        const msg = "volume sync failed; the guest keeps the last copy, retrying";
        // A guest that fails every put must not flood the log (util/guest-log.ts).
        if (agent.guest) logFromGuest(this.log, agent.guest, "warn", { err: message }, msg);
        else this.log.warn({ err: message }, msg);
      }
      volume.lastError = message;
    }
  }

  private async push(agent: AgentClient, volume: Copied): Promise<void> {
    const files = volume.files ?? (await collectVolumeSettled(volume.hostPath, volume.label)).files;
    await agent.putFiles(volume.guestPath, files);
    // Contents are not kept between pushes: the next change reads the volume again.
    volume.files = undefined;
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
