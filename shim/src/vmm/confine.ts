// Least privilege for the VMM (both drivers): each VM's VMM runs as a uid of its own from a
// configured range, with no capabilities (bounding set empty too), no_new_privs, no
// supplementary groups, in a mount namespace of its own. The guest is untrusted and so is a
// VMM that it may have taken over: this is what such a VMM keeps.
//
// What it must open is opened before the drop or handed over: the shim passes the boot files as
// file descriptors; the VMM's sockets and console FIFO live in a directory that uid owns; the
// TAP is owned by the VMM group and /dev/net/tun (0600 on many hosts) is replaced, in the
// VMM's mount namespace only, by a node of that group.
import {
  chmod,
  chown,
  constants,
  type FileHandle,
  mkdir,
  open,
  readFile,
  rm,
  rmdir,
  writeFile,
} from "node:fs/promises";
import path from "node:path";
import { exhausted, invalid } from "../errors.js";
import { execOk } from "../util/exec.js";
import { isRunning, type ProcessIdentity, processIdentity } from "../util/proc.js";

/** Default range: far above distro (<60000) and Kubernetes user-namespace (65536 × n) uids. */
export const DEFAULT_VMM_UID_FIRST = 2_000_000_000;
export const DEFAULT_VMM_UID_COUNT = 65_536;

export interface VmmUidRange {
  /** The VMM group's gid (owner group of TAPs); uids first+1 … first+count-1 are VMs'. */
  first: number;
  count: number;
}

export const DEFAULT_VMM_UIDS: VmmUidRange = { first: DEFAULT_VMM_UID_FIRST, count: DEFAULT_VMM_UID_COUNT };

export interface VmmUser {
  uid: number;
  /** Shared by every VMM: a TAP is in its pod's netns, which no other VMM can enter. */
  gid: number;
  /** From now on the uid is held by this VMM process (it outlives the daemon), not the daemon. */
  holdFor(vmm: ProcessIdentity): Promise<void>;
  release(): Promise<void>;
}

/** A lock holds "pid" (a daemon allocating) or "pid startTime" (the VMM that has the uid). */
async function lockHolderAlive(text: string): Promise<boolean> {
  const [pid, startTime] = text.trim().split(" ").map(Number);
  if (!pid || pid <= 0) return false;
  if (startTime !== undefined && Number.isFinite(startTime)) return isRunning({ pid, startTime });
  if (pid === process.pid) return true;
  return (await processIdentity(pid)) !== undefined;
}

function userWithLock(lockDir: string, lock: string, uid: number, gid: number): VmmUser {
  return {
    uid,
    gid,
    async holdFor(vmm) {
      await writeFile(lock, `${vmm.pid} ${vmm.startTime}\n`, { mode: 0o600 });
    },
    async release() {
      await rm(lock, { force: true });
      // The last VM out removes the dir: a state dir with no VMs is empty.
      await rmdir(lockDir).catch(() => {});
    },
  };
}

/** The uid of an adopted VMM: its lock is re-taken for it (a lock that died with it is made again). */
export async function reclaimVmmUser(
  lockDir: string,
  user: { uid: number; gid: number },
  vmm: ProcessIdentity,
): Promise<VmmUser> {
  await mkdir(lockDir, { recursive: true, mode: 0o700 });
  const taken = userWithLock(lockDir, path.join(lockDir, String(user.uid)), user.uid, user.gid);
  await taken.holdFor(vmm);
  return taken;
}

/**
 * Takes a free uid from the range: a lock file `<lockDir>/<uid>` made with O_EXCL holds it
 * (several shim daemons may share a state dir). Once the VMM runs the lock names it (pid and
 * start time): the uid is free again only when that VMM is gone, whatever became of the daemon.
 */
export async function allocateVmmUser(
  lockDir: string,
  range: VmmUidRange = DEFAULT_VMM_UIDS,
): Promise<VmmUser> {
  if (range.count < 2 || range.first < 1 || range.first + range.count > 2 ** 32 - 1)
    throw invalid(`VMM uid range ${range.first}+${range.count} is not a usable uid range`);
  await mkdir(lockDir, { recursive: true, mode: 0o700 });
  const slots = range.count - 1;
  const start = Math.floor(Math.random() * slots);
  for (let i = 0; i < slots; i++) {
    const uid = range.first + 1 + ((start + i) % slots);
    const lock = path.join(lockDir, String(uid));
    try {
      await writeFile(lock, `${process.pid}\n`, { flag: "wx", mode: 0o600 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") {
        // The last release removed the dir meanwhile.
        await mkdir(lockDir, { recursive: true, mode: 0o700 });
        i--;
        continue;
      }
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      if (await lockHolderAlive(await readFile(lock, "utf8").catch(() => ""))) continue;
      await rm(lock, { force: true });
      i--; // retry this uid (another daemon may win the race: then EEXIST again)
      continue;
    }
    return userWithLock(lockDir, lock, uid, range.first);
  }
  throw exhausted(`all ${slots} VMM uids from ${range.first + 1} are in use (runtime config vmm_uid_count)`);
}

// Runs in the VMM's new mount namespace, as root, before the drop: a private /dev/net/tun of
// the VMM group (the host's may be 0600). A fixed script: everything variable comes as "$@".
const TUN_SCRIPT = [
  "set -e",
  "mount -t tmpfs -o mode=0755,size=16k,nosuid,noexec cloudhv-tun /dev/net",
  "mknod -m 0660 /dev/net/tun c 10 200",
  'chgrp "$1" /dev/net/tun',
  "shift",
  'exec "$@"',
].join("\n");

// TUN_SCRIPT for a pool VM that boots with its NIC: the TAP (name "$2") is made in the VMM's
// empty netns, owned by the VMM group, before the drop; the unprivileged VMM then attaches to it.
const TUN_TAP_SCRIPT = [
  "set -e",
  "mount -t tmpfs -o mode=0755,size=16k,nosuid,noexec cloudhv-tun /dev/net",
  "mknod -m 0660 /dev/net/tun c 10 200",
  'chgrp "$1" /dev/net/tun',
  'ip tuntap add dev "$2" mode tap group "$1"',
  "shift 2",
  'exec "$@"',
].join("\n");

/**
 * The argv that starts `vmm` confined: in the pod's netns (if any), in a private mount
 * namespace, as `user`. No parent-death signal: the VMM outlives the daemon, and the next daemon
 * adopts it (state/records.ts).
 */
export function confinedArgv(
  vmm: string[],
  user: { uid: number; gid: number },
  netnsPath?: string,
  opts: { isolatedNetwork?: boolean; isolatedTap?: string } = {},
): string[] {
  if (opts.isolatedTap !== undefined && !/^[A-Za-z0-9_]{1,15}$/.test(opts.isolatedTap))
    throw invalid(`TAP name "${opts.isolatedTap}" is not a valid interface name`);
  const drop = [
    "setpriv",
    `--reuid=${user.uid}`,
    `--regid=${user.gid}`,
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
    "--no-new-privs",
    "--",
    ...vmm,
  ];
  // A pool VM: an empty netns of its own, where its TAP is made (at its start with isolatedTap,
  // else at claim) and then moved into the pod's netns (network/pod-network.ts); the tun node
  // is needed to attach.
  if (!netnsPath && opts.isolatedNetwork)
    return [
      "unshare",
      "--net",
      "--mount",
      "--propagation=private",
      "--",
      "sh",
      "-c",
      opts.isolatedTap !== undefined ? TUN_TAP_SCRIPT : TUN_SCRIPT,
      "cloudhv-vmm",
      String(user.gid),
      ...(opts.isolatedTap !== undefined ? [opts.isolatedTap] : []),
      ...drop,
    ];
  if (!netnsPath) return ["unshare", "--mount", "--propagation=private", "--", ...drop];
  return [
    "nsenter",
    `--net=${netnsPath}`,
    "--",
    "unshare",
    "--mount",
    "--propagation=private",
    "--",
    "sh",
    "-c",
    TUN_SCRIPT,
    "cloudhv-vmm",
    String(user.gid),
    ...drop,
  ];
}

/** The VMM's own directory (its sockets, its FIFO): `<stateDir>/vmm`, owned by its uid. */
export async function makeVmmDir(stateDir: string, user: { uid: number; gid: number }): Promise<string> {
  const dir = path.join(stateDir, "vmm");
  // The state dir stays root's (console.log is written there by the shim as root): the VMM may
  // pass through it, not list or change it.
  await chmod(stateDir, 0o711);
  await mkdir(dir, { mode: 0o700 });
  await chown(dir, user.uid, user.gid);
  return dir;
}

/** Files opened by the shim and passed to the VMM as fds 3, 4, …: closed once it runs. */
export class PassedFiles {
  private readonly handles: FileHandle[] = [];

  /** Opens `file` and returns the fd number the VMM will have it on. */
  async add(file: string, readOnly: boolean): Promise<number> {
    const fh = await open(file, readOnly ? constants.O_RDONLY : constants.O_RDWR);
    this.handles.push(fh);
    return 2 + this.handles.length;
  }

  /** spawn's stdio entries for fds 3… */
  stdio(): number[] {
    return this.handles.map((fh) => fh.fd);
  }

  async close(): Promise<void> {
    await Promise.all(this.handles.splice(0).map((fh) => fh.close().catch(() => {})));
  }
}

/**
 * Makes a file the shim chose visible to a running VMM as `<vmmDir>/<name>`: a bind mount in
 * the VMM's mount namespace only (the path outside may be in a directory the VMM cannot
 * enter). Removing the target on the host side detaches the mount (Linux ≥ 3.18), and the
 * namespace dies with the VMM: nothing is left on the host either way.
 */
export async function bindIntoVmm(
  vmmPid: number,
  source: string,
  vmmDir: string,
  name: string,
): Promise<string> {
  const [target] = await bindAllIntoVmm(vmmPid, [{ source, name }], vmmDir);
  return target as string;
}

/**
 * Makes the directory `source` the VMM's `target` (a new directory in its own dir): a bind
 * mount in the VMM's mount namespace only. What is added to `source` later shows through it.
 */
export async function bindDirIntoVmm(vmmPid: number, source: string, target: string): Promise<void> {
  await mkdir(target, { mode: 0o711 });
  try {
    await execOk(["nsenter", `--target=${vmmPid}`, "--mount", "--", "mount", "--bind", source, target]);
  } catch (err) {
    await rm(target, { recursive: true, force: true });
    throw err;
  }
}

/**
 * bindIntoVmm for several files with one spawn. On a failure no target is left (a mount made
 * before it goes with its target).
 */
export async function bindAllIntoVmm(
  vmmPid: number,
  files: Array<{ source: string; name: string }>,
  vmmDir: string,
): Promise<string[]> {
  const targets = files.map((f) => path.join(vmmDir, f.name));
  try {
    for (const target of targets) await writeFile(target, "", { mode: 0o600 });
    // A fixed script: the paths (the shim's own) are arguments, pairs of source and target.
    // The mounts run at once (one exec each); any that fails fails the script.
    await execOk([
      "nsenter",
      `--target=${vmmPid}`,
      "--mount",
      "--",
      "sh",
      "-c",
      'pids=""; while [ $# -gt 1 ]; do mount --bind "$1" "$2" & pids="$pids $!"; shift 2; done; ' +
        "ok=0; for p in $pids; do wait $p || ok=1; done; exit $ok",
      "cloudhv-bind",
      ...files.flatMap((f, i) => [f.source, targets[i] as string]),
    ]);
  } catch (err) {
    await Promise.all(targets.map((t) => rm(t, { force: true })));
    throw err;
  }
  return targets;
}
