// A pod's shared volumes: one virtiofsd per pod serving one directory, <pod dir>/shared, into
// which each shared volume is bind-mounted (read-only binds for readOnly volumes). A volume
// for a container that joins later is one more bind mount under that directory, seen by the
// running virtiofsd through mount propagation: no new device, no new daemon.
//
// The binds live in a mount namespace of the pod's own (<pod dir>/ns/mnt, a slave of the
// host's), never in the host's: a copy there of a host mount below a volume would make its
// directory a mount point in the host's namespace, so the host could not remove it (EBUSY)
// while the pod runs. runc's copies are in the container's namespace for the same reason.
//
// Teardown never removes a directory recursively: the shared directory holds bind mounts of
// the user's data. Mount points are unmounted first, then removed one by one with rmdir/unlink,
// which fail rather than delete anything still mounted.
import { spawn } from "node:child_process";
import { lstat, mkdir, open, readdir, readFile, rmdir, stat, unlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { cgroupJoinArgv } from "../cgroup/join.js";
import { precondition, ShimError, unavailable } from "../errors.js";
import { exec, execOk } from "../util/exec.js";
import type { Logger } from "../util/log.js";
import { adoptedProcess, childProcess, type HostProcess, isRunning, processIdentity } from "../util/proc.js";
import { TIMED_OUT, within } from "../util/time.js";
import { findExecutable } from "../vmm/files.js";
import type { FsSpec } from "../vmm/types.js";
import { bindNewMountNamespace } from "./mount-namespace.js";

/** The tag the guest agent mounts (guest/agent/src/shared.rs). */
export const SHARED_TAG = "cloudhv";
/** Where the guest mounts the pod's virtio-fs (guest/agent/src/shared.rs). */
export const GUEST_SHARED = "/run/cloudhv/shared";
export const FS_DEVICE_ID = "fs0";

/** One volume of one container, bound into the shared directory under `name`. */
export interface SharedVolume {
  /** A plain file name, unique in the pod (container id + mount index). */
  name: string;
  hostPath: string;
  readOnly: boolean;
  /**
   * Read-only all the way down (the OCI `rro` option, or the runtime config's
   * recursive_read_only_volumes): no host mount below the volume is shared. Otherwise a
   * read-only volume is read-only at its top only, as runc's and Kubernetes' default.
   */
  recursiveReadOnly?: boolean | undefined;
  /**
   * "slave": mounts the host makes below the volume later reach the pod (rslave/rshared,
   * Kubernetes' HostToContainer/Bidirectional); "private" (the default, rprivate): they do not.
   */
  propagation?: "private" | "slave" | undefined;
  /** Where the container sees it (for error messages). */
  destination: string;
}

/** What a later daemon needs to adopt a pod's virtiofsd (kept in the pod's record). */
export interface ShareRecord {
  dir: string;
  pid: number;
  startTime: number;
  /** Names of the volumes bound into the shared directory. */
  bound: string[];
}

export class PodShare {
  private readonly bound = new Set<string>();
  private stopping: Promise<void> | undefined;

  private constructor(
    /** <state_dir>/pods/<vm id>: the socket and the shared directory. */
    readonly dir: string,
    private readonly proc: HostProcess,
    private readonly log: Logger,
  ) {}

  /**
   * The virtiofsd a previous daemon started for this pod. When it is gone, what it left (binds,
   * socket) is still removed by the returned share's stop().
   */
  static async adopt(record: ShareRecord, log: Logger): Promise<PodShare> {
    const who = { pid: record.pid, startTime: record.startTime };
    const share = new PodShare(record.dir, adoptedProcess(who), log);
    for (const name of record.bound) share.bound.add(name);
    return share;
  }

  /**
   * Whether `who` is still that very process and a virtiofsd of the pod in `dir` (its command
   * line names the pod's socket): a noted pid is never trusted on its own.
   */
  static async serves(dir: string, who: { pid: number; startTime: number }): Promise<boolean> {
    if (!(await isRunning(who))) return false;
    return (await processesServing(socketPath(dir))).includes(who.pid) && (await isRunning(who));
  }

  async record(): Promise<ShareRecord> {
    return {
      dir: this.dir,
      pid: this.proc.pid,
      startTime: (await processIdentity(this.proc.pid))?.startTime ?? 0,
      bound: [...this.bound],
    };
  }

  get sharedDir(): string {
    return path.join(this.dir, "shared");
  }

  get fs(): FsSpec {
    return { socket: socketPath(this.dir), tag: SHARED_TAG, id: FS_DEVICE_ID };
  }

  /**
   * Prepares the shared directory (a shared mount, so later binds reach virtiofsd's own mount
   * namespace) and starts virtiofsd on it; resolves once its socket listens.
   */
  static async start(opts: {
    binary: string;
    dir: string;
    log: Logger;
    /** The pod's cgroup.procs files: virtiofsd's memory and CPU count against the pod. */
    cgroupProcs?: readonly string[] | undefined;
  }): Promise<PodShare> {
    const { dir, log } = opts;
    // Found first: setpriv's own "failed to execute" would not say which key is wrong.
    const binary = await findExecutable(opts.binary);
    if (!binary)
      throw precondition(
        `virtiofsd ${opts.binary} not found or not executable (runtime config virtiofsd_binary)`,
      );
    const shared = path.join(dir, "shared");
    await mkdir(shared, { recursive: true, mode: 0o700 });
    let share: PodShare | undefined;
    try {
      await makePodNamespace(dir, log);
      // In the pod's namespace, a peer group of its own (private first, then shared): the
      // volumes' binds reach virtiofsd's namespace, and nothing else.
      await inPod(dir, [
        "sh",
        "-c",
        'mount --bind "$1" "$1" && mount --make-private "$1" && mount --make-shared "$1"',
        "cloudhv-share",
        shared,
      ]);
      // Sandboxed: its own mount/pid/net namespaces with the shared directory as its root, and
      // a seccomp filter that kills it on any other syscall. It runs as root (it must act as
      // any file owner in the volumes) with virtiofsd's reduced capability set, less mknod.
      const argv = [
        ...cgroupJoinArgv(opts.cgroupProcs),
        "nsenter",
        `--mount=${nsFile(dir)}`,
        "--",
        binary,
        "--socket-path",
        socketPath(dir),
        "--shared-dir",
        shared,
        "--sandbox",
        "namespace",
        "--seccomp",
        "kill",
        // No device nodes in the user's volumes: the guest could plant one for host programs.
        "--modcaps=-mknod",
        "--cache",
        "auto",
        "--log-level",
        "warn",
      ];
      log.debug({ argv }, "starting virtiofsd");
      // No parent-death signal and no pipe: virtiofsd outlives the daemon like the VMM it serves.
      const stderr = await open(stderrPath(dir), "a", 0o600);
      const child = spawn(argv[0] as string, argv.slice(1), { stdio: ["ignore", "ignore", stderr.fd] });
      await stderr.close();
      if (child.pid === undefined) {
        await new Promise((resolve) => child.once("error", resolve));
        throw unavailable(`virtiofsd could not be started (${argv[0]})`);
      }
      share = new PodShare(dir, childProcess(child), log);
      await share.waitForSocket();
      log.info({ virtiofsdPid: child.pid, dir }, "virtiofsd serving the pod's shared volumes");
      return share;
    } catch (err) {
      if (share) await share.stop();
      else {
        await unmountAndRemove(dir, [shared], log);
        await dropPodNamespace(dir, log);
        await removeIfEmpty(dir);
      }
      throw err;
    }
  }

  private async waitForSocket(): Promise<void> {
    const until = Date.now() + 10_000;
    for (;;) {
      if (this.proc.hasExited) {
        const stderr = await readFile(stderrPath(this.dir), "utf8").catch(() => "");
        throw unavailable(`virtiofsd exited at start: ${stderr.slice(-2048).trim() || "no message"}`);
      }
      if (
        await lstat(socketPath(this.dir)).then(
          (s) => s.isSocket(),
          () => false,
        )
      )
        return;
      if (Date.now() > until) throw unavailable(`virtiofsd did not create its socket in 10 s`);
      await sleep(10);
    }
  }

  /** Binds each volume into the shared directory; returns its path in the guest. */
  async add(volume: SharedVolume): Promise<string> {
    if (!/^[A-Za-z0-9_.-]+$/.test(volume.name) || volume.name.startsWith("."))
      throw new ShimError(
        "Internal",
        `shared volume name ${JSON.stringify(volume.name)} is not a plain name`,
      );
    const what = `volume ${volume.hostPath} (mounted at ${volume.destination})`;
    if (!path.isAbsolute(volume.hostPath))
      throw new ShimError("InvalidArgument", `${what}: the host path must be absolute`);
    const info = await stat(volume.hostPath).catch((err: NodeJS.ErrnoException) => {
      throw new ShimError("InvalidArgument", `${what} cannot be read on the host: ${err.code}`);
    });
    if (!info.isFile() && !info.isDirectory())
      throw new ShimError("InvalidArgument", `${what} is neither a file nor a directory`);
    const target = path.join(this.sharedDir, volume.name);
    if (this.bound.has(volume.name))
      throw new ShimError("AlreadyExists", `${what}: ${target} is already bound`);
    // The mount points are a file for a file volume (the termination log), else a directory.
    const stage = path.join(this.dir, "stage", volume.name);
    await mkdir(path.dirname(stage), { recursive: true, mode: 0o700 });
    for (const point of [target, stage]) {
      if (info.isFile()) await writeFile(point, "", { flag: "wx", mode: 0o600 });
      else await mkdir(point, { mode: 0o700 });
    }
    this.bound.add(volume.name);
    try {
      await inPod(this.dir, ["sh", "-c", BIND_SCRIPT, "cloudhv-bind", ...bindArgs(volume), stage, target]);
    } catch (err) {
      await this.remove([volume.name]);
      throw unavailable(`${what} cannot be shared into the VM: ${(err as Error).message}`, err);
    } finally {
      await (info.isFile() ? unlink(stage) : rmdir(stage)).catch((err: Error) =>
        this.log.error({ stage, err: err.message }, "could not remove a volume's staging point"),
      );
      await removeIfEmpty(path.dirname(stage));
    }
    return `${GUEST_SHARED}/${volume.name}`;
  }

  /** Unbinds volumes (a container left the pod). Never throws: failures are logged. */
  async remove(names: readonly string[]): Promise<void> {
    const mine = names.filter((n) => this.bound.has(n));
    await unmountAndRemove(
      this.dir,
      mine.map((n) => path.join(this.sharedDir, n)),
      this.log,
    );
    for (const n of mine) this.bound.delete(n);
  }

  /**
   * Unbinds volumes this share was not told of: those a join a killed daemon left in flight
   * bound (state/provisional.ts). Names are plain file names (the note is checked).
   */
  async unbindStray(names: readonly string[]): Promise<void> {
    const stray = names.filter((n) => !this.bound.has(n) && n === path.basename(n) && n !== "..");
    await unmountAndRemove(
      this.dir,
      stray.map((n) => path.join(this.sharedDir, n)),
      this.log,
    );
    await this.removeStaging(stray);
  }

  /** Staging points a killed add() left (a later add of that name would fail on them). */
  private async removeStaging(names: readonly string[]): Promise<void> {
    const stage = path.join(this.dir, "stage");
    await unmountAndRemove(
      this.dir,
      names.map((n) => path.join(stage, n)),
      this.log,
    );
    await removeIfEmpty(stage);
  }

  /** Stops virtiofsd, unbinds every volume, removes the pod's directory. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    if (!this.proc.hasExited) {
      // virtiofsd exits by itself when the VMM disconnects; this is for the other cases.
      this.proc.kill("SIGTERM");
      if ((await within(this.proc.exited, 3000)) === TIMED_OUT) {
        this.log.warn({ virtiofsdPid: this.proc.pid }, "virtiofsd did not exit; killing it");
        this.proc.kill("SIGKILL");
        await this.proc.exited;
      }
    }
    // virtiofsd's sandbox is a child in namespaces of its own, ended by a parent-death signal:
    // it may outlive its parent by a moment. The pod's binds come off once it is gone too.
    await endStragglers(socketPath(this.dir), this.log);
    await this.remove([...this.bound]);
    await this.removeStaging(await readdir(path.join(this.dir, "stage")).catch(() => [] as string[]));
    await unmountAndRemove(this.dir, [this.sharedDir], this.log);
    await dropPodNamespace(this.dir, this.log);
    // virtiofsd's socket and the pid file it locks next to it.
    for (const file of [socketPath(this.dir), `${socketPath(this.dir)}.pid`, stderrPath(this.dir)])
      await unlink(file).catch(() => {});
    await removeIfEmpty(this.dir);
  }
}

/** An error about serving `volumes`, naming each one and why. */
export function volumesFailed(volumes: readonly SharedVolume[], err: unknown): ShimError {
  const names = volumes.map((v) => `${v.hostPath} (mounted at ${v.destination})`).join(", ");
  const why = (err as Error).message;
  const kind = err instanceof ShimError ? err.kind : "Unavailable";
  return new ShimError(kind, `volume ${names} cannot be shared into the VM: ${why}`, { cause: err });
}

function socketPath(dir: string): string {
  return path.join(dir, "virtiofsd.sock");
}

/** Processes whose command line names `socket`: this pod's virtiofsd (parent or sandbox). */
async function processesServing(socket: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir("/proc").catch(() => [] as string[])) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, "utf8").catch(() => "");
    if (cmdline.split("\0").includes(socket)) pids.push(Number(entry));
  }
  return pids;
}

/** Waits up to 3 s for every virtiofsd process of this socket to end, then kills what is left. */
async function endStragglers(socket: string, log: Logger): Promise<void> {
  const until = Date.now() + 3000;
  let left = await processesServing(socket);
  while (left.length > 0 && Date.now() < until) {
    await sleep(50);
    left = await processesServing(socket);
  }
  for (const pid of left) {
    log.warn({ virtiofsdPid: pid }, "virtiofsd's sandbox outlived it; killing it");
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // Gone meanwhile.
    }
  }
}

function stderrPath(dir: string): string {
  return path.join(dir, "virtiofsd.stderr");
}

/**
 * Binds $2 (the host path; $1 is --bind or --rbind) at $5, a staging point in no peer group
 * (a plain directory of the pod's namespace), sets its propagation ($3) and read-only flag
 * ($4) there, then binds that at $6 in the shared directory. Flags and propagation are set
 * before the volume reaches the shared directory: virtiofsd's copy is made by propagation at
 * that moment and does not follow a later remount (a read-only remount after the bind would
 * leave virtiofsd's copy writable). The staging point is unmounted at the end; after a failure
 * the caller's rmdir/unlink of it in the host's namespace (where it is no mount point) detaches
 * what is left on it.
 */
const BIND_SCRIPT = [
  "set -e",
  'mount "$1" "$2" "$5"',
  'mount "--make-r$3" "$5"',
  'if [ "$4" = ro ]; then mount -o remount,bind,ro "$5"; fi',
  'mount --rbind "$5" "$6"',
  'umount --lazy "$5"',
].join("\n");

/** $1..$4 of BIND_SCRIPT for `volume` (the staging point and target follow). */
function bindArgs(volume: SharedVolume): string[] {
  // Recursive read-only: a single bind, nothing below it shared; and private, so that no
  // host mount reaches it later either.
  const recursiveReadOnly = volume.readOnly && volume.recursiveReadOnly === true;
  return [
    recursiveReadOnly ? "--bind" : "--rbind",
    volume.hostPath,
    !recursiveReadOnly && volume.propagation === "slave" ? "slave" : "private",
    volume.readOnly ? "ro" : "rw",
  ];
}

/** The pod's mount namespace, kept by a bind of its nsfs file. */
function nsFile(dir: string): string {
  return path.join(dir, "ns", "mnt");
}

/**
 * A mount namespace for the pod's binds: a copy of the host's whose mounts are slaves (the
 * host's later mounts below a shared mount still reach it; nothing made in it reaches the
 * host). Its nsfs file is bound on <dir>/ns/mnt, which must sit on a private mount.
 */
async function makePodNamespace(dir: string, log: Logger): Promise<void> {
  const nsDir = path.dirname(nsFile(dir));
  await mkdir(nsDir, { mode: 0o700 });
  await execOk(["mount", "--bind", nsDir, nsDir]);
  await execOk(["mount", "--make-private", nsDir]);
  await writeFile(nsFile(dir), "", { flag: "wx", mode: 0o600 });
  await bindNewMountNamespace(nsFile(dir), log);
}

/** Ends the pod's namespace (every bind left in it goes with it) and removes its files. */
async function dropPodNamespace(dir: string, log: Logger): Promise<void> {
  const nsDir = path.dirname(nsFile(dir));
  await unmountAndRemove(undefined, [nsFile(dir), nsDir], log);
}

/** Runs argv in the pod's mount namespace. */
async function inPod(dir: string, argv: readonly string[]): Promise<void> {
  await execOk(["nsenter", `--mount=${nsFile(dir)}`, "--", ...argv]);
}

/**
 * Detaches every mount on each target (lazily: virtiofsd may still hold files open in them;
 * the data is on the host's disk either way), then removes the emptied mount point. The
 * mounts are in the pod's namespace of `podDir` (none: the host's; so too for a pod whose
 * binds a daemon before the pod namespaces made in the host's).
 */
async function unmountAndRemove(
  podDir: string | undefined,
  targets: readonly string[],
  log: Logger,
): Promise<void> {
  const ns = podDir === undefined ? undefined : nsFile(podDir);
  const inNs = ns !== undefined && (await isMountPoint(ns));
  for (const target of targets) {
    // Stacked mounts (a bind over a bind) come off one at a time.
    for (let i = 0; i < 16; i++) {
      const umount = ["umount", "--lazy", target];
      const r = await exec(inNs ? ["nsenter", `--mount=${ns}`, "--", ...umount] : umount);
      if (r.code !== 0) break;
    }
    const info = await lstat(target).catch(() => undefined);
    if (!info) continue;
    try {
      if (info.isDirectory()) await rmdir(target);
      else await unlink(target);
    } catch (err) {
      log.error({ target, err: (err as Error).message }, "could not remove a shared volume's mount point");
    }
  }
}

/** Whether `file` is a mount point in the host's namespace (the pod namespace's nsfs bind). */
async function isMountPoint(file: string): Promise<boolean> {
  const mountinfo = await readFile("/proc/self/mountinfo", "utf8").catch(() => "");
  // mountinfo writes space, tab, newline and backslash as \ooo octal escapes.
  const escaped = file.replace(/[ \t\n\\]/g, (c) => `\\${c.charCodeAt(0).toString(8).padStart(3, "0")}`);
  return mountinfo.split("\n").some((line) => line.split(" ")[4] === escaped);
}

async function removeIfEmpty(dir: string): Promise<void> {
  await rmdir(dir).catch(() => {});
}
