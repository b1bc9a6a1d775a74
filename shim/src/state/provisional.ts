// A pod's create in flight, on disk: a daemon killed in the middle of one (SIGKILL, OOM) leaves
// a VMM, virtiofsd, a cgroup, a TAP and a scratch file that no record names (records.ts is
// written only once the create completed). So before each of those is made, the create notes
// what it is about to make in <state_dir>/creating/<vm>.json; the file goes once the pod's
// record is written, or once a failed create undid its own work. A daemon starting on the
// state dir undoes every such file whose creator (pid + start time) is gone, before it serves:
// so the create containerd sends again finds nothing of the dead one in its way.
//
// The file is root's, on tmpfs, but still read as untrusted: versioned and checked, and what it
// may touch is derived from the VM id (the VM's and the pod's dirs), or checked against the
// shapes we make (scratch file names, cgroup dirs, the TAP's name); processes are signalled only
// when their pid and start time match, or when they work in the VM's own dir.
import {
  lstat,
  mkdir,
  readdir,
  readFile,
  readlink,
  rename,
  rm,
  rmdir,
  stat,
  unlink,
  writeFile,
} from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { z } from "zod";
import { exec } from "../util/exec.js";
import type { Logger } from "../util/log.js";
import { isRunning, type ProcessIdentity, processIdentity } from "../util/proc.js";

export const PROVISIONAL_FORMAT = 1;

/** The TAP's name in the pod's netns (network/pod-network.ts; pods.ts passes it). */
export const POD_TAP = "tap0_chv";
/** The scratch file's name in a container's writable layer (pod/rootfs.ts SCRATCH_IN_LAYER). */
const SCRATCH_IN_LAYER = ".cloudhv-scratch.ext4";

const identity = z.object({ pid: z.number().int().positive(), startTime: z.number().int().nonnegative() });
/** VM ids name dirs and sockets (pod.ts vmId): never a path. */
const vmIdPattern = z
  .string()
  .regex(/^[A-Za-z0-9_.-]{1,64}$/)
  .refine((s) => s !== "." && s !== "..", "not a VM id");
const absolute = z
  .string()
  .max(4096)
  .refine(
    (p) => path.isAbsolute(p) && path.normalize(p) === p && !p.includes("\0"),
    "not a normal absolute path",
  );
const ifname = z.string().regex(/^[A-Za-z0-9_.-]{1,15}$/);
/** Container ids (util/ids.ts ID_PATTERN); a plain name, never a path. */
const containerId = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/)
  .refine((s) => s !== "." && s !== "..", "not a container id");
/** virtio-blk serials (pod/rootfs.ts): a role letter and 19 hex digits. */
const diskSerial = z.string().regex(/^[a-z][0-9a-f]{19}$/);

const provisionalFile = z.object({
  format: z.literal(PROVISIONAL_FORMAT),
  /** The daemon identity (socket name) that made it, for the log. */
  daemon: z.string().max(256),
  /** The daemon process: while it runs, its create is in progress and is left alone. */
  creator: identity,
  vmId: vmIdPattern,
  /** namespace/pod id, for the log. */
  key: z.string().max(512),
  startedAtMs: z.number(),
  /** The pod's cgroup once made (cgroup.ts record). */
  cgroup: z
    .object({
      path: z.string().max(4096),
      dirs: z.array(absolute).max(16),
      created: z.array(absolute).max(64),
    })
    .optional(),
  /** The pod netns a TAP is (about to be) put in, and the pod's interface once known. */
  // Only our own TAP's name: an undo never deletes another link.
  network: z
    .object({ netnsPath: absolute, tap: z.literal(POD_TAP).optional(), iface: ifname.optional() })
    .optional(),
  /** Scratch files (about to be) made for the pod's containers. */
  scratch: z.array(absolute).max(16).optional(),
  /** virtiofsd is (about to be) started in the pod's dir; its identity once it runs. */
  share: z.object({ process: identity.optional() }).optional(),
  /** The VMM is (about to be) started in the VM's dir; its identity once it runs. */
  vmm: z.object({ process: identity.optional() }).optional(),
  /**
   * A join: an app container's create in a running (recorded) pod. Its note never names the
   * pod's VMM, cgroup or TAP: only what the join adds, which the adopting daemon takes back.
   */
  container: containerId.optional(),
  /** Disks (by serial) (about to be) hot-plugged for the joining container. */
  disks: z.array(diskSerial).max(16).optional(),
  /** Shared volumes (their names under the pod's shared dir) (about to be) bound for it. */
  binds: z.array(containerId).max(256).optional(),
  /** The container is (about to be) created in the guest. */
  guest: z.boolean().optional(),
});
export type ProvisionalFile = z.infer<typeof provisionalFile>;
type Notes = Partial<
  Pick<ProvisionalFile, "cgroup" | "network" | "scratch" | "share" | "vmm" | "disks" | "binds" | "guest">
>;

/** A note's file name: the VM's id, and the joining container's for a join. */
function noteName(vmId: string, container?: string): string {
  return container ? `${vmId}+${container}.json` : `${vmId}.json`;
}

/** Checks a provisional file's content: the parsed file, or why it is refused. */
export function checkProvisional(
  value: unknown,
): { ok: true; file: ProvisionalFile } | { ok: false; problem: string } {
  const checked = provisionalFile.safeParse(value);
  if (checked.success) return { ok: true, file: checked.data };
  const issue = checked.error.issues[0];
  return { ok: false, problem: `${issue?.path.join(".") || "(file)"}: ${issue?.message ?? "invalid"}` };
}

/** One create's notes: each `note` is on disk when it resolves (written atomically, in order). */
export class Provisional {
  private writing: Promise<void> = Promise.resolve();
  private done = false;

  constructor(
    private readonly file: string,
    private content: ProvisionalFile,
    private readonly log: Logger,
  ) {}

  get vmId(): string {
    return this.content.vmId;
  }

  /** Adds to what the create made (or is about to make); resolves once written. */
  note(notes: Notes): Promise<void> {
    // Lists grow; everything else is replaced.
    const grown = (key: "scratch" | "disks" | "binds") => {
      const more = notes[key];
      const list = more ? [...(this.content[key] ?? []), ...more] : this.content[key];
      return list ? { [key]: list } : {};
    };
    this.content = { ...this.content, ...notes, ...grown("scratch"), ...grown("disks"), ...grown("binds") };
    return this.enqueue(() => write(this.file, this.content));
  }

  /** The create is over (its record written, or its own undo done): nothing to undo later. */
  finish(): Promise<void> {
    return this.enqueue(async () => {
      this.done = true;
      await rm(this.file, { force: true });
    });
  }

  private enqueue(work: () => Promise<void>): Promise<void> {
    const next = this.writing.then(async () => {
      if (!this.done) await work();
    });
    // A failed write is logged and does not block the next (the create goes on regardless).
    this.writing = next.catch((err: unknown) =>
      this.log.error(
        { vm: this.content.vmId, err: (err as Error).message },
        "could not write the create's provisional record",
      ),
    );
    return this.writing;
  }
}

async function write(file: string, content: ProvisionalFile): Promise<void> {
  const tmp = `${file}.tmp`;
  await writeFile(tmp, JSON.stringify(content), { mode: 0o600 });
  await rename(tmp, file);
}

/** Where creates in flight are noted: <state_dir>/creating. */
export class ProvisionalStore {
  private creator: Promise<ProcessIdentity | undefined> | undefined;

  constructor(
    readonly dir: string,
    readonly daemon: string,
    private readonly log: Logger,
  ) {}

  /**
   * Starts noting a create for `vmId` (a pod's boot; with `container`, that container's join):
   * the file exists (naming this daemon) when this resolves.
   */
  async begin(vmId: string, key: string, container?: string): Promise<Provisional> {
    this.creator ??= processIdentity(process.pid);
    const creator = await this.creator;
    if (!creator) throw new Error("cannot read this daemon's own /proc entry");
    const content: ProvisionalFile = {
      format: PROVISIONAL_FORMAT,
      daemon: this.daemon,
      creator,
      vmId,
      key: key.slice(0, 512),
      startedAtMs: Date.now(),
      ...(container ? { container } : {}),
    };
    const checked = checkProvisional(content);
    if (!checked.ok) throw new Error(`VM id ${vmId}: cannot note its create (${checked.problem})`);
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const file = path.join(this.dir, noteName(vmId, container));
    await write(file, content);
    return new Provisional(file, content, this.log);
  }
}

export interface UndoContext {
  stateDir: string;
  /** Where scratch files are made outside writable layers (config scratch_dir). */
  scratchDir: string;
  /** Scratch files a pod record names (any daemon's): never removed. */
  recordedScratch: ReadonlySet<string>;
  /** VM ids a pod record names: their create completed; only the note goes. */
  recordedVms: ReadonlySet<string>;
  /**
   * Takes back what a dead join added to its pod, when this daemon adopted that pod (the guest
   * container, hot-plugged disks, binds); what it did. Absent or undefined: the pod is gone.
   */
  undoJoin?: (note: ProvisionalFile) => Promise<string[] | undefined>;
  /** Ends a dead create's virtiofsd share (volumes/virtiofs.ts PodShare: adopt, then stop). */
  stopShare?: (share: { dir: string; pid: number; startTime: number; bound: string[] }) => Promise<void>;
  log: Logger;
}

/** At most this many files are read: a directory this full is not ours to trust. */
const MAX_FILES = 4096;
/** Files over this are not read. */
const MAX_BYTES = 64 * 1024;

/**
 * Undoes every create a dead daemon left in flight (see the top of this file). Returns the VM
 * ids undone. Run before the daemon serves, after it adopted its recorded pods.
 */
export async function undoProvisionalCreates(dir: string, ctx: UndoContext): Promise<string[]> {
  const { log } = ctx;
  const names = (await readdir(dir).catch(() => [] as string[]))
    .filter((n) => n.endsWith(".json"))
    .slice(0, MAX_FILES);
  const undone: string[] = [];
  for (const name of names) {
    const file = path.join(dir, name);
    const info = await lstat(file).catch(() => undefined);
    if (!info?.isFile() || info.size > MAX_BYTES) {
      log.error({ file, size: info?.size }, "provisional record is not a small regular file; left alone");
      continue;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(await readFile(file, "utf8"));
    } catch {
      log.error({ file }, "provisional record is not JSON; left alone");
      continue;
    }
    const checked = checkProvisional(parsed);
    if (!checked.ok) {
      log.error(
        { file, problem: checked.problem },
        "provisional record does not match its format; left alone",
      );
      continue;
    }
    const note = checked.file;
    if (noteName(note.vmId, note.container) !== name) {
      log.error(
        { file, vm: note.vmId },
        "provisional record's VM id does not match its file name; left alone",
      );
      continue;
    }
    // Its daemon still runs: a create in progress (another daemon's, during an upgrade).
    if (await isRunning(note.creator)) continue;
    if (note.container) {
      // A join: the pod is the adopted one's (or gone); only what the join added goes.
      const joined = await ctx.undoJoin?.(note);
      const did = [...(joined ?? []), ...(await removeScratch(note, ctx))];
      // The pod is gone (its VM did not outlive the daemon): a virtiofsd the join started for
      // it is no record's, so it ends here with its binds and the pod's namespace.
      if (joined === undefined && note.share) {
        const podDir = path.join(ctx.stateDir, "pods", note.vmId);
        const gone = note.share.process ?? { pid: 0, startTime: 0 };
        const bound = await readdir(path.join(podDir, "shared")).catch(() => [] as string[]);
        await ctx.stopShare?.({ dir: podDir, ...gone, bound });
        did.push("stopped the join's virtiofsd");
      }
      await rm(file, { force: true });
      if (did.length > 0) {
        log.warn(
          {
            vm: note.vmId,
            container: note.container,
            daemon: note.daemon,
            creatorPid: note.creator.pid,
            undid: did,
          },
          "undid a join a killed daemon left in flight",
        );
        undone.push(`${note.vmId}+${note.container}`);
      }
      continue;
    }
    if (ctx.recordedVms.has(note.vmId)) {
      // The pod's record was written before the daemon died: the pod was adopted (or released).
      await rm(file, { force: true });
      continue;
    }
    const did = await undoOne(note, ctx);
    await rm(file, { force: true });
    log.warn(
      { vm: note.vmId, pod: note.key, daemon: note.daemon, creatorPid: note.creator.pid, undid: did },
      "undid a create a killed daemon left in flight",
    );
    undone.push(note.vmId);
  }
  return undone;
}

/** Undoes one create, newest work first (as a failed create's own undo would). */
async function undoOne(note: ProvisionalFile, ctx: UndoContext): Promise<string[]> {
  const did: string[] = [];
  const vmDir = path.join(ctx.stateDir, "vm", note.vmId);
  const podDir = path.join(ctx.stateDir, "pods", note.vmId);
  // The VMM: the one noted, and any process working in the VM's dir (one killed between its
  // spawn and the note).
  const vmms = await processesIn(vmDir);
  if (note.vmm?.process) vmms.push(note.vmm.process);
  if (await killAll(vmms)) did.push("stopped the VMM");
  // Its uid lock names it: free it now (the allocator would, later).
  await freeUidLocks(path.join(ctx.stateDir, "vm", ".vmm-uids"), vmms);
  if (note.share || (await exists(podDir))) {
    const socket = path.join(podDir, "virtiofsd.sock");
    const helpers = await processesNaming(socket);
    if (note.share?.process) helpers.push(note.share.process);
    if (await killAll(helpers)) did.push("stopped virtiofsd");
    // virtiofs.ts's own teardown: the binds come off in the pod's mount namespace, which goes
    // too, then its files. Every name in the shared dir is one of the pod's binds.
    const bound = await readdir(path.join(podDir, "shared")).catch(() => [] as string[]);
    const gone = note.share?.process ?? { pid: 0, startTime: 0 };
    await ctx.stopShare?.({ dir: podDir, ...gone, bound });
    // Also the port-forward helper's files (it died with its daemon). Never recursively
    // while anything is still mounted there: a volume's bind would take host data with it.
    if ((await mountsUnder(podDir)).length === 0) {
      await rm(podDir, { recursive: true, force: true });
      did.push("removed the pod's dir");
    } else ctx.log.error({ dir: podDir }, "a volume is still mounted in the pod's dir; left in place");
  }
  // Never in the daemon's own (the host's) netns: a pod's TAP lives in the pod's.
  if (note.network && !(await sameNetns(note.network.netnsPath, "/proc/self/ns/net"))) {
    const tap = POD_TAP;
    const netns = `--net=${note.network.netnsPath}`;
    const del = await exec(["nsenter", netns, "--", "ip", "link", "del", tap]);
    if (del.code === 0) did.push(`removed TAP ${tap}`);
    if (note.network.iface)
      await exec(["nsenter", netns, "--", "tc", "qdisc", "del", "dev", note.network.iface, "ingress"]);
  }
  if (note.cgroup) {
    for (const dir of [...note.cgroup.created].reverse()) {
      if (!isCgroupDir(dir)) continue;
      if (await rmdirPatient(dir, note.cgroup.dirs.includes(dir))) did.push(`removed cgroup ${dir}`);
    }
  }
  did.push(...(await removeScratch(note, ctx)));
  if ((await mountsUnder(vmDir)).length === 0) await rm(vmDir, { recursive: true, force: true });
  return did;
}

/** The note's scratch files, but never one a pod record names or one not shaped like ours. */
async function removeScratch(note: ProvisionalFile, ctx: UndoContext): Promise<string[]> {
  const did: string[] = [];
  for (const file of note.scratch ?? []) {
    if (ctx.recordedScratch.has(file)) continue;
    if (!isScratchFile(file, ctx.scratchDir)) continue;
    const gone = await unlink(file).then(
      () => true,
      () => false,
    );
    if (gone) did.push(`removed scratch ${file}`);
  }
  return did;
}

/** A scratch file of ours: in scratch_dir, or the fixed name in a writable layer. */
function isScratchFile(file: string, scratchDir: string): boolean {
  const inDir =
    path.dirname(file) === path.normalize(scratchDir) && /^s[0-9a-f]{19}\.ext4$/.test(path.basename(file));
  return inDir || path.basename(file) === SCRATCH_IN_LAYER;
}

/** Only under a cgroup filesystem's usual mount. */
function isCgroupDir(dir: string): boolean {
  return dir.startsWith("/sys/fs/cgroup/") && !dir.split("/").includes("..");
}

/** rmdir, waiting a little while a killed VMM's cgroup empties; whether it was removed. */
async function rmdirPatient(dir: string, leaf: boolean): Promise<boolean> {
  for (let attempt = 0; ; attempt++) {
    try {
      await rmdir(dir);
      return true;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (leaf && code === "EBUSY" && attempt < 40) {
        await sleep(50);
        continue;
      }
      return false;
    }
  }
}

/** Whether two netns paths are one namespace (same device and inode); a missing one is not. */
async function sameNetns(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([stat(a).catch(() => undefined), stat(b).catch(() => undefined)]);
  return x !== undefined && y !== undefined && x.dev === y.dev && x.ino === y.ino;
}

async function exists(p: string): Promise<boolean> {
  return (await lstat(p).catch(() => undefined)) !== undefined;
}

/** Live processes whose working directory is `dir` or under it (a confined QEMU works in vm/<id>/vmm). */
async function processesIn(dir: string): Promise<ProcessIdentity[]> {
  const found: ProcessIdentity[] = [];
  for (const entry of await readdir("/proc").catch(() => [] as string[])) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const cwd = await readlink(`/proc/${entry}/cwd`).catch(() => undefined);
    if (!cwd || (cwd !== dir && !cwd.startsWith(`${dir}/`))) continue;
    const who = await processIdentity(Number(entry));
    if (who) found.push(who);
  }
  return found;
}

/** Live processes with `arg` as one of their arguments (virtiofsd names its socket). */
async function processesNaming(arg: string): Promise<ProcessIdentity[]> {
  const found: ProcessIdentity[] = [];
  for (const entry of await readdir("/proc").catch(() => [] as string[])) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, "utf8").catch(() => "");
    if (!cmdline.split("\0").includes(arg)) continue;
    const who = await processIdentity(Number(entry));
    if (who) found.push(who);
  }
  return found;
}

/** SIGKILLs each process that is still that very process, and waits (2 s at most) until they are gone. */
async function killAll(who: readonly ProcessIdentity[]): Promise<boolean> {
  let killed = false;
  for (const p of who) {
    if (!(await isRunning(p))) continue;
    try {
      process.kill(p.pid, "SIGKILL");
      killed = true;
    } catch {
      // Gone meanwhile.
    }
  }
  for (let i = 0; i < 200; i++) {
    const alive = await Promise.all(who.map((p) => isRunning(p)));
    if (!alive.includes(true)) break;
    await sleep(10);
  }
  return killed;
}

async function freeUidLocks(lockDir: string, vmms: readonly ProcessIdentity[]): Promise<void> {
  if (vmms.length === 0) return;
  const held = new Set(vmms.map((p) => `${p.pid} ${p.startTime}`));
  for (const uid of await readdir(lockDir).catch(() => [] as string[])) {
    const owner = await readFile(path.join(lockDir, uid), "utf8").catch(() => "");
    if (held.has(owner.trim())) await rm(path.join(lockDir, uid), { force: true });
  }
}

/** Mount points at or under `dir` in this mount namespace (/proc/self/mountinfo, field 5). */
async function mountsUnder(dir: string): Promise<string[]> {
  const text = await readFile("/proc/self/mountinfo", "utf8").catch(() => "");
  const decode = (s: string) =>
    s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
  return text
    .split("\n")
    .map((line) => decode(line.split(" ")[4] ?? ""))
    .filter((m) => m === dir || m.startsWith(`${dir}/`));
}
