// Cloud Hypervisor driver: one `cloud-hypervisor --api-socket` process per VM, configured and
// booted through its REST API (vm.create with the whole config, then vm.boot), devices
// hot-plugged through the same API, the agent reached over hybrid vsock (a unix socket on
// the host: `CONNECT <port>\n` → `OK <port>\n`, then the stream is the guest's vsock).
// The same binary runs on KVM (/dev/kvm) and on the Microsoft Hypervisor (/dev/mshv).
import { type ChildProcess, spawn } from "node:child_process";
import { mkdir, rm } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import type { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { AgentClient } from "../agent/client.js";
import { cgroupJoinArgv } from "../cgroup/join.js";
import { deadline, precondition, ShimError, unavailable } from "../errors.js";
import { TtrpcClient } from "../ttrpc/client.js";
import { log as rootLog } from "../util/log.js";
import { TIMED_OUT, within } from "../util/time.js";
import {
  CH_MIN_VERSION,
  ChApiClient,
  ChApiError,
  type ChDiskConfig,
  type ChFsConfig,
  type ChVmConfig,
  type ChVmmPing,
} from "./ch-api.js";
import { type ChEvent, ChEventReader, type GuestFault, guestFault } from "./ch-events.js";
import { ConsoleLog } from "./console-log.js";
import { assertBootFiles, assertReadable, clearStaleVmFiles, exists, findExecutable } from "./files.js";
import {
  AGENT_VSOCK_PORT,
  checkDiskSerial,
  type DiskSpec,
  type FsSpec,
  type HypervisorDriver,
  type NicSpec,
  type VmConfig,
  type VmCounters,
  type VmExit,
  type VmHandle,
  type VmInfo,
} from "./types.js";

/** hvc0 is the virtio-console; the legacy UART is off. no_timer_check: see BASE_KERNEL_ARGS (qemu.ts). */
export const CH_BASE_KERNEL_ARGS =
  "console=hvc0 root=/dev/vda ro rootfstype=erofs init=/init panic=-1 quiet no_timer_check";
export const CH_ROOTFS_SERIAL = "cloudhv-rootfs";
export const CH_DEFAULT_BINARY = "cloud-hypervisor";

export interface CloudHypervisorDriverOptions {
  /** Path or PATH name of the cloud-hypervisor binary. */
  binary?: string;
  /** Guest memory that may be hot-plugged later (memory.hotplug_size), MiB. */
  hotplugMemoryMb?: number;
  /** Limit for one API request (default 30 s). */
  apiTimeoutMs?: number;
}

export interface ChVmPaths {
  api: string;
  /** v53 takes a lock on this file before it clears a stale API socket. */
  apiLock: string;
  vsock: string;
  /** The guest console, capped (see ConsoleLog); CH writes it into consoleFifo. */
  console: string;
  consoleFifo: string;
}

export function chPaths(stateDir: string): ChVmPaths {
  return {
    api: path.join(stateDir, "ch-api.sock"),
    apiLock: path.join(stateDir, "ch-api.sock.lock"),
    vsock: path.join(stateDir, "vsock.sock"),
    console: path.join(stateDir, "console.log"),
    consoleFifo: path.join(stateDir, "console.fifo"),
  };
}

/**
 * What a previous VMM in the same dir may have left (a daemon that died with its VM): CH up
 * to v52 will not start on an existing API socket, and no version boots on an existing vsock
 * socket; an old console.log could be a symlink that the new log would be written through.
 */
export function chStaleNames(paths: ChVmPaths): string[] {
  return [paths.api, paths.apiLock, paths.vsock, paths.consoleFifo, paths.console, `${paths.console}.1`].map(
    (p) => path.basename(p),
  );
}

/** The event monitor's fd in the VMM (stdin, stdout, stderr, then this). */
const EVENT_FD = 3;

/** CH's major version from vmm.ping ("49.0.0"; build_version "v49.0-12-g…" as a fallback). */
export function chMajorVersion(ping: ChVmmPing): number | undefined {
  for (const text of [ping.version, ping.build_version]) {
    const m = /^v?(\d+)\./.exec(text ?? "");
    if (m) return Number(m[1]);
  }
  return undefined;
}

// Hybrid vsock CIDs are private to each VMM (no host vhost-vsock is involved), but a CID
// unique per VM keeps logs unambiguous and stays correct if a VM ever moves to vhost-vsock.
let lastCid = 2;
function nextCid(): number {
  lastCid = lastCid >= 0xffff_fffe ? 3 : lastCid + 1;
  return lastCid;
}

export function diskId(serial: string): string {
  return `disk-${serial}`;
}

function chDisk(disk: DiskSpec): ChDiskConfig {
  return {
    path: disk.path,
    readonly: disk.readOnly,
    id: diskId(disk.serial),
    serial: disk.serial,
    image_type: "Raw",
  };
}

/** One request queue of CH's default depth: virtiofsd serves one queue per device. */
export function chFs(fs: FsSpec): ChFsConfig {
  return { tag: fs.tag, socket: fs.socket, num_queues: 1, queue_size: 1024, id: fs.id };
}

/** The vm.create body for a VmConfig (pure; exported for tests). */
export function chVmConfig(
  config: VmConfig,
  paths: ChVmPaths,
  cid: number,
  opts: { hotplugMemoryMb?: number } = {},
): ChVmConfig {
  const cmdline = [CH_BASE_KERNEL_ARGS, config.extraKernelArgs].filter(Boolean).join(" ");
  const mib = 1024 * 1024;
  return {
    payload: {
      kernel: config.kernelPath,
      cmdline,
      ...(config.initrdPath ? { initramfs: config.initrdPath } : {}),
    },
    cpus: { boot_vcpus: config.vcpus, max_vcpus: Math.max(config.vcpus, config.maxVcpus ?? config.vcpus) },
    memory: {
      size: config.memoryMb * mib,
      // Shared guest memory, so that vhost-user devices (virtio-fs) can be added later.
      shared: true,
      ...(opts.hotplugMemoryMb ? { hotplug_size: opts.hotplugMemoryMb * mib } : {}),
    },
    // The rootfs first: it is the guest's /dev/vda.
    disks: [
      {
        path: config.rootfsPath,
        readonly: true,
        id: "rootfs",
        serial: CH_ROOTFS_SERIAL,
        image_type: "Raw",
      },
      ...(config.disks ?? []).map(chDisk),
    ],
    ...(config.network ? { net: [{ tap: config.network.tap, mac: config.network.mac, id: "net0" }] } : {}),
    ...(config.sharedFs ? { fs: [chFs(config.sharedFs)] } : {}),
    rng: { src: "/dev/urandom" },
    vsock: { cid, socket: paths.vsock },
    console: { mode: "File", file: paths.consoleFifo },
    serial: { mode: "Off" },
  };
}

export class CloudHypervisorDriver implements HypervisorDriver {
  readonly name = "cloud-hypervisor";
  readonly binary: string;

  constructor(private readonly opts: CloudHypervisorDriverOptions = {}) {
    this.binary = opts.binary ?? CH_DEFAULT_BINARY;
  }

  async launch(config: VmConfig): Promise<ChVm> {
    // Found before spawning: setpriv's own "failed to execute" would hide which key is wrong.
    const binary = await findExecutable(this.binary);
    if (!binary)
      throw precondition(
        `cloud-hypervisor binary ${this.binary} not found or not executable (runtime config cloud_hypervisor_binary)`,
      );
    await assertBootFiles(config);
    await mkdir(config.stateDir, { recursive: true, mode: 0o700 });
    const paths = chPaths(config.stateDir);
    const stale = await clearStaleVmFiles(config.stateDir, chStaleNames(paths));
    if (stale.length)
      (config.log ?? rootLog).warn(
        { stateDir: config.stateDir, removed: stale },
        "removed a previous VMM's files",
      );
    const body = chVmConfig(config, paths, nextCid(), {
      ...(this.opts.hotplugMemoryMb ? { hotplugMemoryMb: this.opts.hotplugMemoryMb } : {}),
    });
    let vm: ChVm | undefined;
    let consoleLog: ConsoleLog | undefined;
    try {
      consoleLog = await ConsoleLog.create({ fifo: paths.consoleFifo, log: paths.console });
      // With a pod network the VMM runs inside the pod's netns, where the TAP is. setpriv
      // execs it with a parent-death signal: if the shim daemon dies, its VMs die with it.
      const netns = config.network ? ["nsenter", `--net=${config.network.netnsPath}`, "--"] : [];
      // First of all, the VMM joins the pod's cgroup, before it runs guest code (cgroup/join.ts).
      netns.unshift(...cgroupJoinArgv(config.cgroup?.procs));
      const argv = [
        ...netns,
        "setpriv",
        "--pdeathsig",
        "KILL",
        "--",
        binary,
        "--api-socket",
        `path=${paths.api}`,
        // Guest resets and panics are events here, not a silent reboot (see ChVm.onEvent).
        "--event-monitor",
        `fd=${EVENT_FD}`,
      ];
      (config.log ?? rootLog).debug({ argv, config: body }, "starting cloud-hypervisor");
      const [command, ...args] = argv;
      const child = spawn(command as string, args, { stdio: ["ignore", "ignore", "pipe", "pipe"] });
      vm = new ChVm(config, child, paths, consoleLog, this.opts.apiTimeoutMs);
      const ping = await vm.waitForApi();
      const major = chMajorVersion(ping);
      if (major === undefined || major < CH_MIN_VERSION)
        throw precondition(
          `${binary} is Cloud Hypervisor ${ping.version || ping.build_version || "of an unknown version"}; cloudhv needs v${CH_MIN_VERSION} or newer (runtime config cloud_hypervisor_binary)`,
        );
      await vm.call("vm.create", (api) => api.createVm(body));
      await vm.call("vm.boot", (api) => api.bootVm());
      return vm;
    } catch (err) {
      if (vm) await vm.stop();
      else {
        await consoleLog?.close();
        await rm(config.stateDir, { recursive: true, force: true });
      }
      throw err;
    }
  }
}

export class ChVm implements VmHandle {
  readonly id: string;
  readonly pid: number;
  readonly consoleLogPath: string;
  readonly exited: Promise<VmExit>;
  /** The VMM's REST API; requests fail at once when the VMM exits. */
  readonly api: ChApiClient;
  private readonly vmmGone = new AbortController();
  private agents: AgentClient[] = [];
  private stderr = "";
  private stopping: Promise<void> | undefined;
  /** Sent SIGKILL (kill()): stop() only waits for the exit. */
  private killed = false;
  private exit: VmExit | undefined;
  /** The guest fault that ended the VM, if one did (the first one counts). */
  private fault: { kind: GuestFault; event: ChEvent } | undefined;
  private readonly log;

  constructor(
    private readonly config: VmConfig,
    private readonly child: ChildProcess,
    readonly paths: ChVmPaths,
    private readonly consoleLog: ConsoleLog,
    apiTimeoutMs?: number,
  ) {
    this.id = config.id;
    this.log = config.log ?? rootLog.child({ vm: config.id });
    if (child.pid === undefined) throw unavailable(`cloud-hypervisor for VM ${config.id} did not start`);
    this.pid = child.pid;
    this.consoleLogPath = paths.console;
    this.api = new ChApiClient(paths.api, {
      signal: this.vmmGone.signal,
      ...(apiTimeoutMs ? { timeoutMs: apiTimeoutMs } : {}),
    });
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (text: string) => {
      // Keep the tail only: it is for error messages, not a log.
      this.stderr = (this.stderr + text).slice(-4096);
    });
    const processExited = new Promise<VmExit>((resolve) => {
      child.on("exit", (code, signal) => {
        this.exit = { code, signal };
        this.vmmGone.abort(new Error(`cloud-hypervisor exited (${this.exitText()})`));
        for (const agent of this.agents) agent.close();
        resolve({ code, signal });
      });
    });
    child.on("error", (err) => {
      this.stderr += err.message;
    });
    const events = child.stdio[EVENT_FD] as Readable | null | undefined;
    const eventsEnded = new Promise<void>((resolve) => {
      if (!events) return resolve();
      // A VMM that writes garbage must not flood the daemon's log: the first few are enough.
      let skipped = 0;
      const reader = new ChEventReader(
        (e) => this.onEvent(e),
        (what) => {
          if (++skipped <= 5)
            this.log.warn(
              { what, skipped },
              "cloud-hypervisor event monitor: skipped (logged 5 times at most)",
            );
        },
      );
      events.setEncoding("utf8");
      events.on("data", (text: string) => reader.push(text));
      events.on("error", () => resolve());
      events.on("close", () => resolve());
    });
    // An event written just before the VMM exited (a guest power-off) may arrive after the exit;
    // the stream ends with the VMM (or, if a child of it kept the fd, shortly after).
    this.exited = processExited.then(async (exit) => {
      await within(eventsEnded, 1000);
      return this.fault ? { ...exit, reason: await this.faultReason() } : exit;
    });
  }

  /**
   * CH reboots a guest that resets (with `panic=-1` a kernel panic is a reset), and would keep
   * the pod running on a fresh guest with none of its containers. A reset, a panic reported by
   * a pvpanic device, or a power-off we did not ask for ends the VM instead; `exited` then says why.
   */
  private onEvent(e: ChEvent): void {
    const kind = guestFault(e, this.stopping !== undefined);
    if (!kind || this.fault) return;
    this.fault = { kind, event: e };
    this.log.error({ vmmPid: this.pid, event: e }, `guest fault (${kind}): stopping the VM`);
    void this.stop();
  }

  /** The fault in words, with the kernel's panic line when the console has one. */
  private async faultReason(): Promise<string> {
    const fault = this.fault;
    if (!fault) return "";
    // Drained to its end: the panic message was printed just before the reset.
    await this.consoleLog.close();
    const tail = await this.consoleLog.tail();
    const panicLine = /Kernel panic - not syncing:[^\n]*/.exec(tail)?.[0]?.slice(0, 200);
    const what = {
      reset: "the guest reset itself (cloud-hypervisor would have rebooted it)",
      panic: `the guest kernel panicked (pvpanic: ${fault.event.properties.event ?? "panic"})`,
      poweroff: "the guest powered itself off",
    }[fault.kind];
    const reason = panicLine ? `guest kernel panic: ${panicLine}; ${what}` : what;
    this.log.error({ vmmPid: this.pid, reason }, "VM ended by a guest fault");
    return reason;
  }

  private exitText(): string {
    if (!this.exit) return "running";
    return this.exit.signal ? `killed by ${this.exit.signal}` : `exit code ${this.exit.code}`;
  }

  private stderrTail(): string {
    const lines = this.stderr.trim().split("\n").slice(-6).join("\n");
    return lines ? `; its stderr ends: ${lines}` : "";
  }

  /** CH creates the API socket right after start; wait until it answers vmm.ping. */
  async waitForApi(): Promise<ChVmmPing> {
    const until = Date.now() + 10_000;
    for (;;) {
      if (this.exit)
        throw unavailable(
          `cloud-hypervisor for VM ${this.id} exited at start (${this.exitText()})${this.stderrTail()}`,
        );
      if (await exists(this.paths.api)) {
        try {
          return await this.api.ping();
        } catch (err) {
          const code = ((err as Error).cause as NodeJS.ErrnoException | undefined)?.code;
          if (code !== "ECONNREFUSED" && code !== "ENOENT" && !this.exit) throw err;
        }
      }
      if (Date.now() > until)
        throw deadline(
          `cloud-hypervisor for VM ${this.id} did not open its API socket in 10 s${this.stderrTail()}`,
        );
      await sleep(5);
    }
  }

  /**
   * Runs one API request. If it fails without an answer because the VMM died, the error says
   * so (with the end of its stderr) instead of a bare socket error.
   */
  async call<T>(what: string, fn: (api: ChApiClient) => Promise<T>): Promise<T> {
    if (this.exit)
      throw unavailable(
        `VM ${this.id}: cloud-hypervisor is not running (${this.exitText()}); ${what} not sent`,
      );
    try {
      return await fn(this.api);
    } catch (err) {
      if (err instanceof ChApiError && err.status === undefined) {
        // A reset socket usually arrives a moment before the exit event.
        await within(this.exited, 500);
        if (this.exit)
          throw new ShimError(
            "Unavailable",
            `VM ${this.id}: cloud-hypervisor exited (${this.exitText()}) during ${what}${this.stderrTail()}`,
            { cause: err },
          );
      }
      throw err;
    }
  }

  async connectAgent(opts: { timeoutMs: number }): Promise<AgentClient> {
    const until = Date.now() + opts.timeoutMs;
    const vmExited = this.exited.then(() => {
      throw unavailable(`VM ${this.id} exited while booting (${this.exitText()})${this.stderrTail()}`);
    });
    vmExited.catch(() => {});
    let sock: net.Socket;
    try {
      sock = await Promise.race([this.dialAgent(until), vmExited]);
    } catch (err) {
      throw new ShimError(
        this.exit ? "Unavailable" : "DeadlineExceeded",
        `VM ${this.id}: no agent on vsock port ${AGENT_VSOCK_PORT} (${(err as Error).message}); ${await this.consoleLog.tail()}`,
      );
    }
    const agent = new AgentClient(new TtrpcClient(sock), undefined, this.id);
    sock.resume();
    this.agents.push(agent);
    try {
      await Promise.race([agent.health({ timeoutMs: Math.max(1, until - Date.now()) }), vmExited]);
    } catch (err) {
      agent.close();
      // A reset channel usually means the VMM is going away: let its exit land first.
      const timedOut = err instanceof ShimError && err.kind === "DeadlineExceeded";
      if (!this.exit && !timedOut) await Promise.race([this.exited, sleep(1000)]);
      throw new ShimError(
        this.exit ? "Unavailable" : "DeadlineExceeded",
        `VM ${this.id}: ${this.exit ? "exited while booting" : "no answer from the guest agent"} (${(err as Error).message}); ${await this.consoleLog.tail()}`,
      );
    }
    return agent;
  }

  /**
   * Until the guest agent listens, CH closes a hybrid vsock connection after `CONNECT`
   * (the guest refused it, or did not answer in CH's 2 s). Retry, with a short pause, until
   * the deadline.
   */
  private async dialAgent(deadline: number): Promise<net.Socket> {
    let attempts = 0;
    let lastError = "";
    for (;;) {
      attempts++;
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new Error(`gave up after ${attempts - 1} attempts; last: ${lastError}`);
      try {
        return await connectHybridVsock(this.paths.vsock, AGENT_VSOCK_PORT, Math.min(remaining, 5000));
      } catch (err) {
        lastError = (err as Error).message;
        if (this.exit) throw err;
      }
      await sleep(Math.min(20 * attempts, 200, Math.max(0, deadline - Date.now())));
    }
  }

  async addDisk(disk: DiskSpec): Promise<string> {
    checkDiskSerial(disk.serial);
    await assertReadable(disk.path, `disk ${disk.serial}`);
    const body = chDisk(disk);
    const info = await this.call("vm.add-disk", (api) => api.addDisk(body));
    return info?.id ?? diskId(disk.serial);
  }

  async addFs(fs: FsSpec): Promise<string> {
    const info = await this.call("vm.add-fs", (api) => api.addFs(chFs(fs)));
    return info?.id ?? fs.id;
  }

  async addNet(nic: NicSpec): Promise<string> {
    const info = await this.call("vm.add-net", (api) =>
      api.addNet({ tap: nic.tap, mac: nic.mac, id: nic.id }),
    );
    return info?.id ?? nic.id;
  }

  /**
   * CH answers vm.remove-device at once and drops the device when the guest ejects it (ACPI
   * hotplug); wait for that, so the backing file is free when this returns.
   */
  async removeDevice(id: string): Promise<void> {
    await this.call("vm.remove-device", (api) => api.removeDevice(id));
    const until = Date.now() + 30_000;
    for (;;) {
      const info = await this.call("vm.info", (api) => api.info());
      if (!info.device_tree || !Object.hasOwn(info.device_tree, id)) return;
      if (Date.now() > until) throw deadline(`VM ${this.id}: the guest did not release ${id} in 30 s`);
      await sleep(25);
    }
  }

  async info(): Promise<VmInfo> {
    const info = await this.call("vm.info", (api) => api.info());
    const devices: VmInfo["devices"] = {};
    for (const [id, node] of Object.entries(info.device_tree ?? {}))
      devices[id] = node.pci_bdf ? { pciBdf: node.pci_bdf } : {};
    // A gdb breakpoint stops every vCPU: to us that is a paused VM.
    const state: VmInfo["state"] =
      info.state === "BreakPoint" ? "paused" : (info.state.toLowerCase() as VmInfo["state"]);
    return {
      state,
      devices,
      ...(info.memory_actual_size !== undefined ? { memoryBytes: info.memory_actual_size } : {}),
    };
  }

  counters(): Promise<VmCounters> {
    return this.call("vm.counters", (api) => api.counters());
  }

  async pause(): Promise<void> {
    await this.call("vm.pause", (api) => api.pauseVm());
  }

  async resume(): Promise<void> {
    await this.call("vm.resume", (api) => api.resumeVm());
  }

  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  async kill(): Promise<void> {
    if (this.exit) return;
    this.killed = true;
    this.child.kill("SIGKILL");
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }

  private async doStop(): Promise<void> {
    for (const agent of this.agents) agent.close();
    if (!this.exit) {
      // vm.shutdown fails when the VM never booted; vmm.shutdown ends the process either way.
      for (const step of ["vm.shutdown", "vmm.shutdown"] as const) {
        if (this.exit || this.killed) break;
        const request = step === "vm.shutdown" ? this.api.shutdownVm() : this.api.shutdownVmm();
        const outcome = await within(
          request.then(
            () => "ok",
            (err: Error) => err.message,
          ),
          2000,
        );
        if (outcome !== "ok")
          this.log.debug({ step, outcome: String(outcome) }, "cloud-hypervisor stop step");
      }
      if ((await within(this.exited, 3000)) === TIMED_OUT) {
        this.log.warn({ vmmPid: this.pid }, "cloud-hypervisor did not exit; killing it");
        this.child.kill("SIGKILL");
      }
      await this.exited;
    }
    await this.consoleLog.close();
    await rm(this.config.stateDir, { recursive: true, force: true });
  }
}

/**
 * Opens a stream to a guest vsock port through CH's hybrid vsock socket: connect, send
 * `CONNECT <port>\n`, read `OK <host port>\n`. The returned socket is paused with nothing
 * consumed past that line; hand it to a reader and resume it.
 */
export async function connectHybridVsock(
  socketPath: string,
  port: number,
  timeoutMs: number,
): Promise<net.Socket> {
  const sock = net.createConnection({ path: socketPath });
  return new Promise<net.Socket>((resolve, reject) => {
    let buffered = Buffer.alloc(0);
    const timer = setTimeout(
      () => fail(new Error(`no answer to CONNECT ${port} in ${timeoutMs} ms`)),
      timeoutMs,
    );
    const cleanup = () => {
      clearTimeout(timer);
      sock.off("data", onData);
      sock.off("error", onError);
      sock.off("close", onClose);
      sock.off("connect", onConnect);
    };
    const fail = (err: Error) => {
      cleanup();
      sock.destroy();
      reject(err);
    };
    const onConnect = () => sock.write(`CONNECT ${port}\n`);
    const onError = (err: Error) => fail(err);
    const onClose = () =>
      fail(new Error(`the VMM closed the connection to vsock port ${port} (nobody listening yet)`));
    const onData = (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      const nl = buffered.indexOf(0x0a);
      if (nl < 0) {
        if (buffered.length > 64)
          fail(new Error(`garbled hybrid vsock answer ${JSON.stringify(buffered.toString())}`));
        return;
      }
      const line = buffered.subarray(0, nl).toString("utf8").trim();
      if (!/^OK \d+$/.test(line)) {
        fail(new Error(`hybrid vsock answered ${JSON.stringify(line.slice(0, 64))} to CONNECT ${port}`));
        return;
      }
      cleanup();
      sock.pause();
      const rest = buffered.subarray(nl + 1);
      if (rest.length > 0) sock.unshift(rest);
      resolve(sock);
    };
    sock.on("connect", onConnect);
    sock.on("data", onData);
    sock.on("error", onError);
    sock.on("close", onClose);
  });
}
