// Each pod's state on disk, so that a daemon that died (crash, OOM kill, bad upgrade) is not the
// end of its pods: the VMMs and virtiofsd outlive it, and the next daemon of the same identity
// reads these records and adopts every pod (task/service.ts restore). One JSON file per pod
// under <state_dir>/records (tmpfs), replaced atomically (write + rename), versioned and
// checked on read: a record from another format or a damaged one is reported and left alone.
import { mkdir, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { z } from "zod";
import type { Logger } from "../util/log.js";

export const RECORD_FORMAT = 1;

const stdio = z.object({ stdin: z.string(), stdout: z.string(), stderr: z.string(), terminal: z.boolean() });

const processRecord = z.object({
  execId: z.string(),
  io: stdio,
  pid: z.number().int(),
  state: z.enum(["created", "running", "stopped"]),
  exitStatus: z.number().int().optional(),
  exitedAtMs: z.number().optional(),
});
export type ProcessRecord = z.infer<typeof processRecord>;

const taskRecord = z.object({
  namespace: z.string(),
  id: z.string(),
  bundle: z.string(),
  init: processRecord,
  execs: z.array(processRecord),
});
export type TaskRecord = z.infer<typeof taskRecord>;

const disk = z.object({ path: z.string(), serial: z.string(), readOnly: z.boolean() });

const rootfsRecord = z.object({
  disks: z.array(disk),
  rootfsSerial: z.string(),
  scratchSerial: z.string(),
  /** The cached erofs image (its key in the cache) and the scratch disk file. */
  imageKey: z.string(),
  scratchPath: z.string(),
  /** Its size, entered again in the node's scratch budget by the adopting daemon. */
  scratchBytes: z.number().int().nonnegative(),
});
export type RootfsRecord = z.infer<typeof rootfsRecord>;

const sharedVolume = z.object({
  name: z.string(),
  hostPath: z.string(),
  readOnly: z.boolean(),
  recursiveReadOnly: z.boolean().optional(),
  propagation: z.enum(["private", "slave"]).optional(),
  destination: z.string(),
});

const volumesRecord = z.object({
  copied: z.array(z.object({ hostPath: z.string(), guestPath: z.string(), label: z.string() })),
  sharedDirs: z.array(z.string()),
  shared: z.array(sharedVolume),
});
export type VolumesRecord = z.infer<typeof volumesRecord>;

const memberRecord = z.object({
  id: z.string(),
  pid: z.number().int(),
  ownsPod: z.boolean(),
  rootfs: rootfsRecord,
  devices: z.array(z.string()),
  volumes: volumesRecord,
});
export type MemberRecord = z.infer<typeof memberRecord>;

const podRecord = z.object({
  id: z.string(),
  key: z.string(),
  vmId: z.string(),
  sandbox: z.boolean(),
  stateDir: z.string(),
  size: z.object({
    vcpus: z.number().int(),
    maxVcpus: z.number().int(),
    memoryMb: z.number().int(),
    sources: z.record(z.string(), z.string()),
  }),
  driver: z.enum(["qemu", "cloud-hypervisor"]),
  /** The driver's own record (vmm/qemu.ts QemuRecord). */
  vm: z.unknown(),
  network: z
    .object({
      netnsPath: z.string(),
      tap: z.string(),
      iface: z.object({
        name: z.string(),
        mac: z.string(),
        mtu: z.number().int(),
        addresses: z.array(
          z.object({ family: z.enum(["inet", "inet6"]), address: z.string(), prefixLen: z.number().int() }),
        ),
        routes: z.array(z.object({ dest: z.string(), gateway: z.string().optional() })),
      }),
    })
    .optional(),
  cgroup: z.object({ path: z.string(), dirs: z.array(z.string()), created: z.array(z.string()) }).optional(),
  share: z
    .object({ dir: z.string(), pid: z.number().int(), startTime: z.number(), bound: z.array(z.string()) })
    .optional(),
  containment: z.object({
    qos: z.enum(["Guaranteed", "Burstable", "BestEffort"]).optional(),
    specOomScoreAdj: z.number().int().optional(),
    cgroupPath: z.string().optional(),
  }),
  oomScoreAdj: z.number().int().optional(),
  containerScores: z.array(z.tuple([z.string(), z.number().int()])),
  members: z.array(memberRecord),
  /** App containers deleted whose disks were still leaving the VM (Pod.retire): the next daemon finishes. */
  retiring: z.array(memberRecord).optional(),
});
export type PodRecord = z.infer<typeof podRecord>;

const recordFile = z.object({
  format: z.literal(RECORD_FORMAT),
  /** The daemon identity that owns the pod (its socket's name): only that daemon adopts it. */
  daemon: z.string(),
  pod: podRecord,
  tasks: z.array(taskRecord),
});
export type RecordFile = z.infer<typeof recordFile>;

export class RecordStore {
  /** Writes to one pod's file, one at a time and in order. */
  private readonly queues = new Map<string, Promise<void>>();

  constructor(
    readonly dir: string,
    /** This daemon's identity, written into each record it owns. */
    readonly daemon: string,
    private readonly log: Logger,
  ) {}

  private file(vmId: string): string {
    return path.join(this.dir, `${vmId}.json`);
  }

  /**
   * Replaces the pod's record. `build` runs when the write's turn comes (the latest state); when
   * it returns undefined the pod cannot be recorded and any old record is removed.
   */
  save(vmId: string, build: () => Promise<Omit<RecordFile, "format" | "daemon"> | undefined>): Promise<void> {
    return this.enqueue(vmId, async () => {
      const built = await build();
      if (!built) {
        await rm(this.file(vmId), { force: true });
        return;
      }
      const content: RecordFile = { format: RECORD_FORMAT, daemon: this.daemon, ...built };
      await mkdir(this.dir, { recursive: true, mode: 0o700 });
      const file = this.file(vmId);
      const tmp = `${file}.tmp`;
      await writeFile(tmp, JSON.stringify(content), { mode: 0o600 });
      await rename(tmp, file);
    });
  }

  remove(vmId: string): Promise<void> {
    return this.enqueue(vmId, () => rm(this.file(vmId), { force: true }));
  }

  private enqueue(vmId: string, work: () => Promise<void>): Promise<void> {
    const previous = this.queues.get(vmId) ?? Promise.resolve();
    const next = previous.then(work).catch((err: unknown) => {
      this.log.error({ vm: vmId, err: (err as Error).message }, "could not write the pod's record");
    });
    this.queues.set(vmId, next);
    void next.then(() => {
      if (this.queues.get(vmId) === next) this.queues.delete(vmId);
    });
    return next;
  }

  /** The VM id of every record here, whichever daemon owns it. */
  async allVmIds(): Promise<Set<string>> {
    const names = await readdir(this.dir).catch(() => [] as string[]);
    return new Set(names.filter((n) => n.endsWith(".json")).map((n) => n.slice(0, -".json".length)));
  }

  /** This daemon's records; any other file (another daemon's, another format, damaged) is skipped. */
  async load(): Promise<RecordFile[]> {
    const names = await readdir(this.dir).catch(() => [] as string[]);
    const records: RecordFile[] = [];
    for (const name of names.filter((n) => n.endsWith(".json"))) {
      const text = await readFile(path.join(this.dir, name), "utf8").catch(() => "");
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        this.log.error({ record: name }, "pod record is not JSON; left alone");
        continue;
      }
      const daemon = (parsed as { daemon?: unknown } | null)?.daemon;
      if (daemon !== this.daemon) continue;
      const checked = recordFile.safeParse(parsed);
      if (!checked.success) {
        this.log.error(
          { record: name, problem: checked.error.issues[0]?.message, at: checked.error.issues[0]?.path },
          "pod record does not match this daemon's format; left alone",
        );
        continue;
      }
      records.push(checked.data);
    }
    return records;
  }

  /**
   * The scratch files every record here names, whichever daemon owns it (read loosely: this is
   * a list of files never to remove, so an unreadable record only names nothing).
   */
  async allScratchPaths(): Promise<Set<string>> {
    const paths = new Set<string>();
    const names = await readdir(this.dir).catch(() => [] as string[]);
    for (const name of names.filter((n) => n.endsWith(".json"))) {
      try {
        const doc = JSON.parse(await readFile(path.join(this.dir, name), "utf8")) as {
          pod?: { members?: Array<{ rootfs?: { scratchPath?: unknown } }> };
        };
        for (const m of doc.pod?.members ?? [])
          if (typeof m.rootfs?.scratchPath === "string") paths.add(m.rootfs.scratchPath);
      } catch {
        // Not JSON: names nothing.
      }
    }
    return paths;
  }
}
