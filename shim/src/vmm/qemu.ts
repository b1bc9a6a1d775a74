// QEMU driver: q35 machine (PCIe, so disks and NICs can be hot-plugged later), QMP for
// control, the agent over a virtio-serial port backed by a unix socket, console to a file.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { chown, link, mkdir, open, readFile, rm, stat } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { z } from "zod";
import { AgentClient } from "../agent/client.js";
import { cgroupJoinArgv } from "../cgroup/join.js";
import { deadline, exhausted, invalid, notFound, precondition, ShimError, unavailable } from "../errors.js";
import { TtrpcClient } from "../ttrpc/client.js";
import { log as rootLog } from "../util/log.js";
import { adoptedProcess, childProcess, type HostProcess, processIdentity } from "../util/proc.js";
import { TIMED_OUT, within } from "../util/time.js";
import { type Accel, kvmUnusableMessage, probeAccel } from "./accel.js";
import {
  allocateVmmUser,
  bindAllIntoVmm,
  bindDirIntoVmm,
  confinedArgv,
  DEFAULT_VMM_UIDS,
  makeVmmDir,
  PassedFiles,
  reclaimVmmUser,
  type VmmUidRange,
  type VmmUser,
} from "./confine.js";
import { ConsoleLog } from "./console-log.js";
import { assertBootFiles, assertReadable, exists } from "./files.js";
import { memoryArg, plugCpus, plugMemory } from "./qemu-grow.js";
import { QmpClient, type QmpEvent } from "./qmp.js";
import {
  AGENT_PORT_NAME,
  checkDiskSerial,
  type DiskSpec,
  type FsSpec,
  type HypervisorDriver,
  type NicSpec,
  type VmConfig,
  type VmExit,
  type VmHandle,
} from "./types.js";

/** How long a new daemon waits for an adopted QEMU's QMP greeting before giving the VM up. */
const ADOPT_QMP_MS = 10_000;

/** Free PCIe root ports per VM, i.e. how many devices can be hot-plugged at once. */
export const HOTPLUG_PORTS = 8;

/** A pool VM's extra ports: its pod's NIC and sandbox disks arrive by hot-plug too (pod/pool.ts). */
export const POOL_EXTRA_PORTS = 3;

/** Root ports a VM gets: a pool VM (isolatedNetwork) has as many free for app containers as a cold one. */
export function hotplugPorts(config: Pick<VmConfig, "isolatedNetwork">): number {
  return HOTPLUG_PORTS + (config.isolatedNetwork ? POOL_EXTRA_PORTS : 0);
}

// no_timer_check: under load (TCG, a burst of boots) the IO-APIC timer check can fail and panic
// the guest ("IO-APIC + timer doesn't work!"). Virtual timers are known good; Kata skips it too.
export const BASE_KERNEL_ARGS =
  "console=ttyS0 root=/dev/vda ro rootfstype=erofs init=/init panic=-1 quiet no_timer_check";

export interface QemuDriverOptions {
  binary?: string;
  /**
   * The accelerator (the runtime config's `qemu_accel`); default KVM. TCG is never chosen on
   * the driver's own: it is not a security boundary.
   */
  accel?: Accel;
  /** Where each VMM's uid comes from (runtime config vmm_uid_first/vmm_uid_count). */
  uids?: VmmUidRange;
  /**
   * A root-only directory on the disks' filesystem (the rootfs cache's): each VM gets one of its
   * own in it, where its hot-plugged disks are hard-linked (QemuVm.startDiskLinks). Absent:
   * every disk is bind-mounted.
   */
  diskLinks?: string;
}

/**
 * QEMU's own seccomp filter: no obsolete syscalls, no set*uid/gid, no fork/exec, no
 * scheduler/affinity changes. QEMU's -runas cannot be used with elevateprivileges=deny (its
 * setuid would hit the filter), so the shim drops privileges before exec (confine.ts).
 */
export const QEMU_SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

export class QemuDriver implements HypervisorDriver {
  readonly name = "qemu";
  readonly binary: string;
  readonly accel: Accel;
  readonly uids: VmmUidRange;

  constructor(opts: QemuDriverOptions = {}) {
    this.binary = opts.binary ?? "qemu-system-x86_64";
    this.accel = opts.accel ?? "kvm";
    this.uids = opts.uids ?? DEFAULT_VMM_UIDS;
    if (opts.diskLinks) this.diskLinks = opts.diskLinks;
  }

  readonly diskLinks?: string;

  async adopt(
    config: Pick<VmConfig, "id" | "stateDir" | "log">,
    record: unknown,
  ): Promise<QemuVm | undefined> {
    const checked = qemuRecord.safeParse(record);
    if (!checked.success) throw invalid(`VM ${config.id}: its record is not a QEMU record`);
    const vm = await QemuVm.adopt(config as VmConfig, checked.data);
    // Its disks are bind-mounted from now on (whether the dead daemon's bind of the links dir
    // was made is not known); the dir still goes with the VM.
    if (vm && this.diskLinks) vm.diskLinksDir = path.join(this.diskLinks, config.id);
    return vm;
  }

  async launch(config: VmConfig): Promise<QemuVm> {
    await assertBootFiles(config);
    const accel = this.accel;
    if (accel === "kvm") {
      // Fail fast, naming the fix, rather than a QEMU error or a guest that never answers.
      const probe = await probeAccel(this.binary);
      if (probe.accel !== "kvm") throw new ShimError("FailedPrecondition", kvmUnusableMessage(probe));
    }
    await mkdir(config.stateDir, { recursive: true, mode: 0o700 });
    const vmmDir = path.join(config.stateDir, "vmm");
    const paths = qemuPaths(config.stateDir);
    let vm: QemuVm | undefined;
    let consoleLog: ConsoleLog | undefined;
    let user: VmmUser | undefined;
    const files = new PassedFiles();
    try {
      // Several daemons may share state_dir: the uid locks live next to the VMs' dirs.
      user = await allocateVmmUser(path.join(path.dirname(config.stateDir), ".vmm-uids"), this.uids);
      await makeVmmDir(config.stateDir, user);
      consoleLog = await ConsoleLog.create({ fifo: paths.consoleFifo, log: paths.console });
      await chown(paths.consoleFifo, user.uid, user.gid);
      if (config.sharedFs) await handFsSocket(config.sharedFs, vmmDir, user);
      const argv = await qemuArgv(config, accel, files);
      (config.log ?? rootLog).debug({ argv: [this.binary, ...argv], uid: user.uid }, "starting qemu");
      // Same pid all the way down (sh, nsenter, unshare, sh, setpriv all exec): see confine.ts.
      // First of all, the VMM joins the pod's cgroup, before it runs guest code (cgroup/join.ts).
      const [command, ...args] = [
        ...cgroupJoinArgv(config.cgroup?.procs),
        ...(config.nice !== undefined ? ["nice", "-n", String(config.nice)] : []),
        ...confinedArgv([this.binary, ...argv], user, config.network?.netnsPath, {
          isolatedNetwork: config.isolatedNetwork === true,
          ...(config.isolatedNetwork && config.isolatedNic ? { isolatedTap: config.isolatedNic.tap } : {}),
        }),
      ];
      // stderr to a file, not a pipe: QEMU outlives the daemon (a restarted one adopts it).
      const stderr = await open(paths.stderr, "a", 0o600);
      const child = spawn(command as string, args, {
        // Relative socket paths: QEMU needs no right on the dirs above its own.
        cwd: vmmDir,
        stdio: ["ignore", "ignore", stderr.fd, ...files.stdio()],
      });
      await stderr.close();
      await files.close();
      if (child.pid === undefined) throw unavailable(`qemu for VM ${config.id} did not start`);
      vm = new QemuVm(config, childProcess(child), paths, consoleLog, user);
      // The uid stays taken while this QEMU lives, whichever daemon serves it then.
      const identity = await processIdentity(vm.pid);
      if (identity) await user.holdFor(identity);
      await vm.waitForSockets();
      if (this.diskLinks) vm.startDiskLinks(path.join(this.diskLinks, config.id));
      return vm;
    } catch (err) {
      await files.close();
      if (vm) await vm.stop();
      else {
        await consoleLog?.close();
        await rm(config.stateDir, { recursive: true, force: true });
        await user?.release();
      }
      throw err;
    }
  }
}

/** Everything the driver needs to adopt a running QEMU: kept in the pod's record (state/). */
const qemuRecord = z.object({
  pid: z.number().int().positive(),
  startTime: z.number().int().nonnegative(),
  uid: z.number().int().positive(),
  gid: z.number().int().positive(),
  /** Root port index → hot-plugged device id. */
  ports: z.array(
    z.tuple([
      z
        .number()
        .int()
        .min(0)
        .max(HOTPLUG_PORTS + POOL_EXTRA_PORTS - 1),
      z.string(),
    ]),
  ),
  fsDevices: z.array(z.string()),
  /** Root ports of a pool VM (hotplugPorts); absent: HOTPLUG_PORTS. */
  portCount: z
    .number()
    .int()
    .min(1)
    .max(HOTPLUG_PORTS + POOL_EXTRA_PORTS)
    .optional(),
});
export type QemuRecord = z.infer<typeof qemuRecord>;

function qemuPaths(stateDir: string): QemuPaths {
  const vmmDir = path.join(stateDir, "vmm");
  return {
    qmp: path.join(vmmDir, "qmp.sock"),
    agent: path.join(vmmDir, "agent.sock"),
    console: path.join(stateDir, "console.log"),
    consoleFifo: path.join(vmmDir, "console.fifo"),
    stderr: path.join(stateDir, "qemu.stderr"),
    vmmDir,
  };
}

interface QemuPaths {
  qmp: string;
  agent: string;
  /** QEMU's stderr (root's, in the state dir): for error messages. */
  stderr: string;
  /** The guest console, capped (see ConsoleLog); QEMU writes it into consoleFifo. */
  console: string;
  consoleFifo: string;
  /** The VMM's own dir (its cwd), owned by its uid. */
  vmmDir: string;
}

/**
 * QEMU's argv. Every file it boots from is opened here and passed as an fd: the kernel and
 * initramfs as /proc/self/fd/N (QEMU's loader opens a path), disks through -add-fd fdsets (the
 * block layer takes /dev/fdset/N); sockets and FIFO are relative to its cwd (see launch).
 */
export async function qemuArgv(config: VmConfig, accel: Accel, files: PassedFiles): Promise<string[]> {
  const cmdline = [BASE_KERNEL_ARGS, config.extraKernelArgs].filter(Boolean).join(" ");
  const fdsets: string[] = [];
  const fdset = async (file: string, readOnly: boolean) => {
    const fd = await files.add(file, true);
    fdsets.push("-add-fd", `fd=${fd},set=${fd}`);
    // QEMU opens a writable image read-only first, then again read-write: the set needs both.
    if (!readOnly) fdsets.push("-add-fd", `fd=${await files.add(file, false)},set=${fd}`);
    return `/dev/fdset/${fd}`;
  };
  const kernel = `/proc/self/fd/${await files.add(config.kernelPath, true)}`;
  const initrd = config.initrdPath ? `/proc/self/fd/${await files.add(config.initrdPath, true)}` : undefined;
  const rootfs = await fdset(config.rootfsPath, true);
  // A pool VM's NIC (isolatedNic) is on a TAP in its own empty netns, as a cold pod's is in the pod's.
  const nic = config.network ?? (config.isolatedNetwork ? config.isolatedNic : undefined);
  if (nic && !/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.test(nic.mac))
    throw invalid(`"${nic.mac}" is not a MAC address`);
  const disks: string[] = [];
  for (const disk of config.disks ?? []) disks.push(await fdset(disk.path, disk.readOnly));
  return [
    "-sandbox",
    QEMU_SANDBOX,
    ...fdsets,
    "-name",
    `cloudhv-${config.id}`,
    "-machine",
    "q35",
    "-accel",
    accel === "tcg" ? "tcg,thread=multi" : "kvm",
    "-cpu",
    accel === "kvm" ? "host" : "max",
    "-smp",
    `${config.vcpus},maxcpus=${Math.max(config.vcpus, config.maxVcpus ?? config.vcpus)}`,
    "-m",
    memoryArg(config.memoryMb, config.maxMemoryMb),
    // Guest RAM in a shared memfd: vhost-user devices (virtiofsd) map it, also when the
    // virtio-fs device is hot-plugged later.
    "-object",
    `memory-backend-memfd,id=mem,size=${config.memoryMb}M,share=on`,
    "-numa",
    "node,memdev=mem",
    "-nodefaults",
    "-no-user-config",
    "-nographic",
    "-no-reboot",
    "-kernel",
    kernel,
    "-append",
    cmdline,
    ...(initrd ? ["-initrd", initrd] : []),
    "-drive",
    `file=${rootfs},if=none,id=rootfs,format=raw,readonly=on`,
    "-device",
    "virtio-blk-pci,drive=rootfs,serial=cloudhv-rootfs",
    ...(config.disks ?? []).flatMap((disk, i) => [
      "-drive",
      `file=${disks[i]},if=none,id=disk${i},format=raw,readonly=${disk.readOnly ? "on" : "off"},cache=none,aio=threads`,
      "-device",
      `virtio-blk-pci,drive=disk${i},serial=${disk.serial}`,
    ]),
    // Empty PCIe root ports: each can take one hot-plugged disk or NIC later.
    ...Array.from({ length: hotplugPorts(config) }, (_, i) => [
      "-device",
      `pcie-root-port,id=hp${i},bus=pcie.0,chassis=${i + 1},slot=${i + 1}`,
    ]).flat(),
    ...(config.sharedFs
      ? [
          "-chardev",
          `socket,id=chr-${config.sharedFs.id},path=${fsSocketName(config.sharedFs)}`,
          "-device",
          `vhost-user-fs-pci,chardev=chr-${config.sharedFs.id},tag=${config.sharedFs.tag},id=${config.sharedFs.id}`,
        ]
      : []),
    ...(nic
      ? [
          "-netdev",
          `tap,id=net0,ifname=${nic.tap},script=no,downscript=no`,
          "-device",
          `virtio-net-pci,netdev=net0,mac=${nic.mac}`,
        ]
      : []),
    "-device",
    "virtio-rng-pci",
    ...(config.freePageReporting ? ["-device", "virtio-balloon-pci,id=balloon0,free-page-reporting=on"] : []),
    "-device",
    "virtio-serial-pci,id=vser0",
    "-chardev",
    "socket,id=agent,path=agent.sock,server=on,wait=off",
    "-device",
    `virtserialport,bus=vser0.0,chardev=agent,name=${AGENT_PORT_NAME}`,
    "-chardev",
    "file,id=console,path=console.fifo",
    "-serial",
    "chardev:console",
    "-qmp",
    "unix:qmp.sock,server=on,wait=off",
  ];
}

export class QemuVm implements VmHandle {
  readonly id: string;
  readonly pid: number;
  readonly consoleLogPath: string;
  readonly exited: Promise<VmExit>;
  private qmp: QmpClient | undefined;
  private agents: AgentClient[] = [];
  private stopping: Promise<void> | undefined;
  /** Sent SIGKILL (kill()): stop() only waits for the exit. */
  private killed = false;
  /** This VM's dir of hard-linked disks on the host (startDiskLinks); removed with the VM. */
  diskLinksDir: string | undefined;
  /** Settles once the links dir's bind is made or has failed (startDiskLinks). */
  private diskLinks: Promise<void> | undefined;
  /** diskLinksDir, once the VMM sees it as `<vmmDir>/disks`; until then (or if never), binds. */
  private diskLinksBound: string | undefined;
  /** Root port index → the hot-plugged device on it. */
  private readonly busyPorts = new Map<number, string>();
  /** Hot-plugged virtio-fs devices (a chardev to remove with them, not a block node). */
  private readonly fsDevices = new Set<string>();
  /** Root ports this VM has (hotplugPorts; from the record when adopted). */
  private portCount: number;

  private freePort(): number {
    const port = [...Array(this.portCount).keys()].find((i) => !this.busyPorts.has(i));
    if (port === undefined) throw exhausted(`VM ${this.id}: all ${this.portCount} hot-plug ports are in use`);
    return port;
  }

  /** A free port, taken for `id` at once: plugs running at the same time never pick the same one. */
  private takePort(id: string): number {
    const port = this.freePort();
    this.busyPorts.set(port, id);
    return port;
  }

  /** Hot-plugged NICs (a netdev to remove with them). */
  private readonly netDevices = new Set<string>();
  private hasExited = false;
  private readonly log;

  constructor(
    private readonly config: VmConfig,
    private readonly proc: HostProcess,
    private readonly paths: QemuPaths,
    private readonly consoleLog: ConsoleLog,
    private readonly user: VmmUser,
  ) {
    this.id = config.id;
    this.portCount = hotplugPorts(config);
    this.log = config.log ?? rootLog.child({ vm: config.id });
    this.pid = proc.pid;
    this.consoleLogPath = paths.console;
    this.exited = proc.exited.then(async (exit) => {
      this.hasExited = true;
      for (const agent of this.agents) agent.close();
      const reason = await this.endReason();
      if (!reason) return exit;
      this.log.warn({ vmmPid: this.pid, reason }, `VM ended: ${reason}`);
      return { ...exit, reason };
    });
  }

  /** What QEMU said when the guest ended (QMP SHUTDOWN/GUEST_PANICKED), for the VM's exit. */
  private shutdownReason: string | undefined;

  private watchQmp(qmp: QmpClient): void {
    qmp.on("event", (event) => {
      if (event.event === "GUEST_PANICKED") this.shutdownReason = "guest-panic";
      else if (event.event === "SHUTDOWN" && this.shutdownReason === undefined) {
        const reason = event.data?.reason;
        if (typeof reason === "string") this.shutdownReason = reason.slice(0, 64);
      }
    });
  }

  /** The VM's end in words, with the guest's panic line when its console has one. */
  private async endReason(): Promise<string | undefined> {
    const why = this.shutdownReason;
    if (why === undefined || why === "host-qmp-quit" || why === "host-signal") return undefined;
    const console = await readFile(this.paths.console, "utf8").catch(() => "");
    // The guest wrote it: one line, bounded, printable.
    const panic = /Kernel panic - not syncing:[^\n]{0,160}/
      .exec(console.slice(-65536))?.[0]
      ?.replace(/[^\x20-\x7e]/g, "");
    if (why === "guest-reset" || why === "guest-panic")
      return panic
        ? `the guest kernel panicked (${panic.trim()})`
        : why === "guest-panic"
          ? "the guest kernel panicked"
          : "the guest reset itself (a reboot, or a kernel panic: panic=-1 makes a panic a reset)";
    if (why === "guest-shutdown") return "the guest powered itself off";
    return `QEMU ended the VM (${why})`;
  }

  /**
   * Takes over a QEMU that a previous daemon started (it outlived that daemon): its QMP, its
   * console, its uid and hot-plug state as the record has them. Undefined when that QEMU is gone.
   */
  static async adopt(config: VmConfig, record: QemuRecord): Promise<QemuVm | undefined> {
    const who = { pid: record.pid, startTime: record.startTime };
    const paths = qemuPaths(config.stateDir);
    const now = await processIdentity(record.pid);
    if (now?.startTime !== record.startTime) return undefined;
    const user = await reclaimVmmUser(
      path.join(path.dirname(config.stateDir), ".vmm-uids"),
      { uid: record.uid, gid: record.gid },
      who,
    );
    const consoleLog = await ConsoleLog.adopt({ fifo: paths.consoleFifo, log: paths.console });
    const vm = new QemuVm(config, adoptedProcess(who), paths, consoleLog, user);
    for (const [port, id] of record.ports) vm.busyPorts.set(port, id);
    for (const id of record.fsDevices) vm.fsDevices.add(id);
    if (record.portCount !== undefined) vm.portCount = record.portCount;
    try {
      // Bounded: a wedged QEMU (stopped, or never greeting) must not hold up the takeover of
      // every other pod; QEMU takes the new client once it has seen the old one go.
      const until = Date.now() + ADOPT_QMP_MS;
      const qmp = await within(
        retryRefused(() => QmpClient.connect(paths.qmp), until),
        ADOPT_QMP_MS,
      );
      if (qmp === TIMED_OUT) throw deadline(`QMP did not greet within ${ADOPT_QMP_MS} ms`);
      vm.qmp = qmp;
      vm.watchQmp(vm.qmp);
    } catch (err) {
      vm.log.warn({ err: (err as Error).message }, "adopted qemu: QMP unreachable; stopping it");
      await vm.stop();
      return undefined;
    }
    return vm;
  }

  /** What a later daemon needs to adopt this QEMU. */
  async record(): Promise<QemuRecord> {
    const identity = await processIdentity(this.pid);
    return {
      pid: this.pid,
      startTime: identity?.startTime ?? 0,
      uid: this.user.uid,
      gid: this.user.gid,
      ports: [...this.busyPorts],
      fsDevices: [...this.fsDevices],
      ...(this.portCount !== HOTPLUG_PORTS ? { portCount: this.portCount } : {}),
    };
  }

  /** The tail of QEMU's stderr, for error messages. */
  private async stderrTail(): Promise<string> {
    const text = await readFile(this.paths.stderr, "utf8").catch(() => "");
    return text.slice(-4096).trim();
  }

  /** QEMU creates its sockets before running the guest; then QMP is ready to take commands. */
  async waitForSockets(): Promise<void> {
    const until = Date.now() + 10_000;
    for (;;) {
      if (this.hasExited)
        throw unavailable(`qemu for VM ${this.id} exited at start: ${await this.stderrTail()}`);
      if ((await exists(this.paths.qmp)) && (await exists(this.paths.agent))) break;
      if (Date.now() > until) throw deadline(`qemu for VM ${this.id} did not create its sockets in 10 s`);
      await sleep(5);
    }
    this.qmp = await retryRefused(() => QmpClient.connect(this.paths.qmp), until);
    this.watchQmp(this.qmp);
  }

  async connectAgent(opts: { timeoutMs: number }): Promise<AgentClient> {
    const until = Date.now() + opts.timeoutMs;
    const sock = await Promise.race([
      retryRefused(async () => {
        const s = net.createConnection({ path: this.paths.agent });
        await once(s, "connect");
        return s;
      }, until),
      this.exited.then(() => {
        throw unavailable(`VM ${this.id} exited before the agent channel opened`);
      }),
    ]);
    const agent = new AgentClient(new TtrpcClient(sock), undefined, this.id);
    this.agents.push(agent);
    // The request waits in the socket until the agent opens its port; QEMU does not read the
    // chardev before the guest side is open, so nothing is lost while the guest boots.
    const remaining = Math.max(1, until - Date.now());
    try {
      await Promise.race([
        agent.health({ timeoutMs: remaining }),
        this.exited.then(async () => {
          throw unavailable(
            `VM ${this.id} exited while booting: ${(await this.stderrTail()) || "see console log"}`,
          );
        }),
      ]);
    } catch (err) {
      agent.close();
      // A reset channel usually means QEMU is going away: give its exit a moment to land, so
      // the error says the VM died rather than "no answer".
      const timedOut = err instanceof ShimError && err.kind === "DeadlineExceeded";
      if (!this.hasExited && !timedOut) await Promise.race([this.exited, sleep(1000)]);
      const message = this.hasExited
        ? `VM ${this.id} exited while booting (${(err as Error).message})`
        : `VM ${this.id}: no answer from the guest agent in ${opts.timeoutMs} ms (${(err as Error).message})`;
      throw new ShimError(
        this.hasExited ? "Unavailable" : "DeadlineExceeded",
        `${message}; ${await this.consoleLog.tail()}`,
        {
          cause: err,
        },
      );
    }
    return agent;
  }

  async addDisk(disk: DiskSpec): Promise<string> {
    const [id] = await this.addDisks([disk]);
    return id as string;
  }

  /**
   * A container's disks at once: one bind-mount spawn for all of them (a spawn costs
   * milliseconds here), then each disk's QMP commands. All or nothing: on a failure the disks
   * plugged so far are unplugged again and every bind mount is gone.
   */
  async addDisks(disks: DiskSpec[], contentReady?: Promise<void>): Promise<string[]> {
    // A sandbox's first container has none: no bind-mount spawn for nothing.
    if (disks.length === 0) return [];
    // Its rejection is this call's error, once the plugs get to it.
    contentReady?.catch(() => {});
    const qmp = this.control();
    for (const disk of disks) {
      checkDiskSerial(disk.serial);
      await assertReadable(disk.path, `disk ${disk.serial}`);
      await this.grant(disk);
    }
    const names = disks.map((disk) => `disk-${disk.serial}`);
    // Hard links where the disks share the links dir's filesystem (no spawn), else bind mounts.
    let files = await this.linkDisks(disks, names);
    if (!files) {
      await bindAllIntoVmm(
        this.pid,
        disks.map((disk, i) => ({ source: disk.path, name: names[i] as string })),
        this.paths.vmmDir,
      );
      files = names;
    }
    const opened = files;
    // Every disk's commands are sent at once: QEMU runs them in order, without a round trip
    // between them (each disk takes its own hot-plug port before its first command).
    const settled = await Promise.allSettled(
      disks.map((disk, i) => this.plugBound(qmp, disk, opened[i] as string, contentReady)),
    );
    const plugged = settled.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
    const failed = settled.find((r) => r.status === "rejected");
    if (!failed) return plugged;
    for (const id of plugged.reverse()) await this.removeDevice(id).catch(() => {});
    await Promise.all(names.map((name) => this.dropDiskFile(name)));
    throw failed.reason;
  }

  /**
   * Readies hard-linked disks (addDisks): `hostDir`, this VM's own directory on the disks'
   * filesystem, root's and 0711, is bind-mounted into the VMM's mount namespace as
   * `<vmmDir>/disks`: a disk linked into it later is there for the VMM with no spawn, and it is
   * the only one of these directories the VMM can reach. Runs beside the guest's boot (one
   * spawn); until it is done, or if it fails, disks are bind-mounted one container at a time.
   */
  startDiskLinks(hostDir: string): void {
    this.diskLinksDir = hostDir;
    const ready = (async () => {
      await mkdir(path.dirname(hostDir), { recursive: true, mode: 0o700 });
      // Fresh: nothing a dead VM of the same name left may reach this one.
      await rm(hostDir, { recursive: true, force: true });
      await mkdir(hostDir, { mode: 0o711 });
      await bindDirIntoVmm(this.pid, hostDir, path.join(this.paths.vmmDir, "disks"));
      this.diskLinksBound = hostDir;
    })();
    this.diskLinks = ready.catch((err: unknown) => {
      this.log.warn({ err: (err as Error).message }, "disks will be bind-mounted: no links dir");
    });
  }

  /**
   * Hard-links each disk into this VM's links dir, as `names`; returns the names QEMU opens them
   * by, or undefined (nothing left linked) where that cannot be: no links dir yet, or a disk on
   * another filesystem (EXDEV).
   */
  private async linkDisks(disks: DiskSpec[], names: string[]): Promise<string[] | undefined> {
    const dir = this.diskLinksBound;
    if (!dir) return undefined;
    const made: string[] = [];
    try {
      for (const [i, disk] of disks.entries()) {
        const file = path.join(dir, names[i] as string);
        // A name left by a plug that failed halfway (same serial) is replaced.
        await rm(file, { force: true });
        await link(disk.path, file);
        made.push(file);
      }
      return names.map((name) => `disks/${name}`);
    } catch (err) {
      await Promise.all(made.map((file) => rm(file, { force: true })));
      this.log.debug({ err: (err as Error).message }, "disks bind-mounted: they cannot be hard-linked");
      return undefined;
    }
  }

  /** A disk's name for the VMM goes: its hard link, or its bind-mount target. */
  private async dropDiskFile(name: string): Promise<void> {
    await rm(path.join(this.paths.vmmDir, name), { force: true });
    if (this.diskLinksDir) await rm(path.join(this.diskLinksDir, name), { force: true });
  }

  /**
   * One disk whose file the VMM opens as `file` (relative to its dir): its block node, then,
   * once its content is ready, its device (the guest scans a disk as soon as it appears).
   */
  private async plugBound(
    qmp: QmpClient,
    disk: DiskSpec,
    file: string,
    contentReady?: Promise<void>,
  ): Promise<string> {
    const id = `hd-${disk.serial}`;
    const node = `node-${disk.serial}`;
    const port = this.takePort(id);
    try {
      await qmp.execute("blockdev-add", {
        driver: "raw",
        "node-name": node,
        "read-only": disk.readOnly,
        // Relative to QEMU's cwd, its own dir: it could not reach the path the shim uses.
        file: { driver: "file", filename: file, aio: "threads", "read-only": disk.readOnly },
      });
    } catch (err) {
      this.busyPorts.delete(port);
      throw err;
    }
    try {
      await contentReady;
      await qmp.execute("device_add", {
        driver: "virtio-blk-pci",
        id,
        drive: node,
        serial: disk.serial,
        bus: `hp${port}`,
      });
    } catch (err) {
      this.busyPorts.delete(port);
      await qmp.execute("blockdev-del", { "node-name": node }).catch(() => {});
      throw err;
    }
    return id;
  }

  private async plugFs(qmp: QmpClient, fs: FsSpec, chardev: string, port: number): Promise<void> {
    await handFsSocket(fs, this.paths.vmmDir, this.user);
    // virtiofsd binds its socket a moment before it listens (PodShare waits for the file only):
    // a connect in between is refused. Retried, bounded, as retryRefused does for QEMU's own.
    const until = Date.now() + 5000;
    for (;;) {
      try {
        await qmp.execute("chardev-add", {
          id: chardev,
          backend: {
            type: "socket",
            data: { addr: { type: "unix", data: { path: fsSocketName(fs) } }, server: false },
          },
        });
        break;
      } catch (err) {
        if (!/Connection refused/.test((err as Error).message) || Date.now() > until) throw err;
        await sleep(20);
      }
    }
    try {
      await qmp.execute("device_add", {
        driver: "vhost-user-fs-pci",
        id: fs.id,
        chardev,
        tag: fs.tag,
        bus: `hp${port}`,
      });
    } catch (err) {
      await qmp.execute("chardev-remove", { id: chardev }).catch(() => {});
      throw err;
    }
  }

  async addFs(fs: FsSpec): Promise<string> {
    const qmp = this.control();
    const chardev = `chr-${fs.id}`;
    const port = this.takePort(fs.id);
    try {
      await this.plugFs(qmp, fs, chardev, port);
    } catch (err) {
      this.busyPorts.delete(port);
      throw err;
    }
    this.fsDevices.add(fs.id);
    return fs.id;
  }

  /**
   * Hot-plugs a NIC on `nic.tap`, a TAP that exists in the VMM's netns and its group may attach
   * to: QEMU opens /dev/net/tun itself (no fd passing over QMP from Node), no script runs.
   */
  async addNet(nic: NicSpec): Promise<string> {
    const qmp = this.control();
    if (!/^[A-Za-z0-9_]{1,15}$/.test(nic.tap))
      throw invalid(`TAP name "${nic.tap}" is not a valid interface name`);
    if (!/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.test(nic.mac)) throw invalid(`"${nic.mac}" is not a MAC address`);
    const port = this.takePort(nic.id);
    const netdev = `nd-${nic.id}`;
    try {
      await qmp.execute("netdev_add", {
        type: "tap",
        id: netdev,
        ifname: nic.tap,
        script: "no",
        downscript: "no",
      });
    } catch (err) {
      this.busyPorts.delete(port);
      throw err;
    }
    try {
      await qmp.execute("device_add", {
        driver: "virtio-net-pci",
        id: nic.id,
        netdev,
        mac: nic.mac,
        bus: `hp${port}`,
      });
    } catch (err) {
      this.busyPorts.delete(port);
      await qmp.execute("netdev_del", { id: netdev }).catch(() => {});
      throw err;
    }
    this.netDevices.add(nic.id);
    return nic.id;
  }

  async removeStrayDisk(serial: string): Promise<boolean> {
    checkDiskSerial(serial);
    const qmp = this.control();
    const id = `hd-${serial}`;
    if ([...this.busyPorts.values()].includes(id)) return false;
    let found = false;
    const deleted = this.deviceDeleted(id);
    try {
      await qmp.execute("device_del", { id });
      found = true;
      if ((await within(deleted.done, 30_000)) === TIMED_OUT)
        throw deadline(`VM ${this.id}: the guest did not release ${id} in 30 s`);
    } catch (err) {
      // No such device: the join died before device_add (or after the guest let go).
      if (found) throw err;
    } finally {
      deleted.cancel();
    }
    const node = await qmp.execute("blockdev-del", { "node-name": `node-${serial}` }).then(
      () => true,
      () => false,
    );
    await this.dropDiskFile(`disk-${serial}`);
    return found || node;
  }

  async adoptStrayFs(id: string): Promise<boolean> {
    if (this.fsDevices.has(id)) return true;
    if (!/^[A-Za-z0-9_-]{1,32}$/.test(id)) throw invalid(`"${id}" is not a device id`);
    const qmp = this.control();
    // The device's bus is its root port's: "/machine/peripheral/hp<N>/hp<N>".
    const bus = await qmp
      .execute<unknown>("qom-get", { path: `/machine/peripheral/${id}`, property: "parent_bus" })
      .catch(() => undefined);
    if (bus === undefined) {
      // No device: a chardev the dead join added before its device_add would block the next.
      await qmp.execute("chardev-remove", { id: `chr-${id}` }).catch(() => {});
      return false;
    }
    const port = /^\/machine\/peripheral\/hp(\d{1,3})\/hp\1$/.exec(String(bus).slice(0, 128))?.[1];
    if (port === undefined || Number(port) >= this.portCount)
      throw unavailable(`VM ${this.id}: device ${id} is on an unexpected bus ${String(bus).slice(0, 128)}`);
    const holder = this.busyPorts.get(Number(port));
    if (holder !== undefined && holder !== id)
      throw unavailable(`VM ${this.id}: device ${id} is on port ${port}, which ${holder} holds`);
    this.busyPorts.set(Number(port), id);
    this.fsDevices.add(id);
    return true;
  }

  /** Resolves when QEMU says the guest let go of device `id`. */
  private deviceDeleted(id: string): { done: Promise<void>; cancel: () => void } {
    const qmp = this.control();
    let onEvent: (event: QmpEvent) => void = () => {};
    const done = new Promise<void>((resolve) => {
      onEvent = (event: QmpEvent) => {
        if (event.event === "DEVICE_DELETED" && event.data?.device === id) {
          qmp.off("event", onEvent);
          resolve();
        }
      };
      qmp.on("event", onEvent);
    });
    return { done, cancel: () => qmp.off("event", onEvent) };
  }

  async removeDevice(id: string): Promise<void> {
    const qmp = this.control();
    const port = [...this.busyPorts].find(([, dev]) => dev === id)?.[0];
    if (port === undefined) throw notFound(`VM ${this.id}: hot-plugged device ${id}`);
    const deleted = new Promise<void>((resolve) => {
      const onEvent = (event: QmpEvent) => {
        if (event.event === "DEVICE_DELETED" && event.data?.device === id) {
          qmp.off("event", onEvent);
          resolve();
        }
      };
      qmp.on("event", onEvent);
    });
    await qmp.execute("device_del", { id });
    // The guest's PCIe hotplug driver releases the device after its attention-button delay.
    if ((await within(deleted, 30_000)) === TIMED_OUT)
      throw deadline(`VM ${this.id}: the guest did not release ${id} in 30 s`);
    if (this.fsDevices.delete(id)) await qmp.execute("chardev-remove", { id: `chr-${id}` });
    else if (this.netDevices.delete(id)) await qmp.execute("netdev_del", { id: `nd-${id}` });
    else {
      await qmp.execute("blockdev-del", { "node-name": id.replace(/^hd-/, "node-") });
      // Unlinking the bind-mount target detaches it in QEMU's namespace.
      await this.dropDiskFile(id.replace(/^hd-/, "disk-"));
    }
    this.busyPorts.delete(port);
  }

  /**
   * A hot-plugged disk is opened by QEMU itself (QMP cannot take an fd from node), as the VM's
   * uid: a writable disk (this container's scratch) becomes the VM's; a read-only one (shared
   * image cache) must already be readable by all, and is never given away.
   */
  private async grant(disk: DiskSpec): Promise<void> {
    if (!disk.readOnly) {
      await chown(disk.path, this.user.uid, this.user.gid);
      return;
    }
    if (((await stat(disk.path)).mode & 0o004) === 0)
      throw precondition(
        `read-only disk ${disk.path} is not world-readable; the VMM (uid ${this.user.uid}) cannot open it`,
      );
  }

  /** DIMMs plugged so far (their ids are numbered). */
  private grownDimms = 0;

  async grow(add: { memoryMb: number; vcpus: number }): Promise<void> {
    const execute = <T>(command: string, args?: Record<string, unknown>) =>
      this.control().execute<T>(command, args);
    if (add.memoryMb > 0) await plugMemory(execute, add.memoryMb, this.grownDimms++);
    if (add.vcpus > 0) await plugCpus(execute, this.id, add.vcpus);
  }

  /** One QMP command as is: for diagnostics and the tests of what QEMU itself refuses. */
  qmpExecute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    return this.control().execute<T>(command, args);
  }

  async pause(): Promise<void> {
    await this.control().execute("stop");
  }

  async resume(): Promise<void> {
    await this.control().execute("cont");
  }

  private control(): QmpClient {
    if (!this.qmp || this.hasExited) throw unavailable(`VM ${this.id} is not running`);
    return this.qmp;
  }

  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  async kill(): Promise<void> {
    if (this.hasExited) return;
    this.killed = true;
    await this.proc.kill("SIGKILL");
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }

  private async doStop(): Promise<void> {
    for (const agent of this.agents) agent.close();
    if (!this.hasExited) {
      try {
        if (this.qmp && !this.killed) await within(this.qmp.execute("quit"), 2000);
      } catch {
        // QMP gone: the process is exiting or wedged; the kill below settles it.
      }
      if ((await within(this.exited, 3000)) === TIMED_OUT) {
        this.log.warn({ vmmPid: this.pid }, "qemu did not quit; killing it");
        this.proc.kill("SIGKILL");
      }
      await this.exited;
    }
    this.qmp?.close();
    await this.consoleLog.close();
    // Made (or given up) before it goes: nothing is created after the removal.
    await this.diskLinks;
    if (this.diskLinksDir) await rm(this.diskLinksDir, { recursive: true, force: true });
    await rm(this.config.stateDir, { recursive: true, force: true });
    await this.user.release();
  }
}

/**
 * QEMU creates a socket file (bind) a moment before it listens on it: a connect in between is
 * refused. Retry that, and only that, until the deadline.
 */
async function retryRefused<T>(connect: () => Promise<T>, deadline: number): Promise<T> {
  for (;;) {
    try {
      return await connect();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if ((code !== "ECONNREFUSED" && code !== "ENOENT") || Date.now() > deadline) throw err;
      await sleep(5);
    }
  }
}

/** virtiofsd's socket as QEMU names it: relative to its working directory, its own dir. */
function fsSocketName(fs: FsSpec): string {
  return `${fs.id}.sock`;
}

/**
 * Hands virtiofsd's socket to this VMM alone: the socket (root's, in the pod's dir, which the
 * VMM's uid cannot reach) is given to the VM's uid and hard-linked into the VMM's own dir.
 * A unix socket is found by its inode, so the link connects to the same virtiofsd.
 */
async function handFsSocket(fs: FsSpec, vmmDir: string, user: { uid: number; gid: number }): Promise<void> {
  await chown(fs.socket, user.uid, user.gid);
  const name = path.join(vmmDir, fsSocketName(fs));
  await rm(name, { force: true });
  await link(fs.socket, name);
}
