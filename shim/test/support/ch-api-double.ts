#!/usr/bin/env node
// A TEST DOUBLE of Cloud Hypervisor, not Cloud Hypervisor. It is run as the
// `cloud_hypervisor_binary` (`ch-api-double --api-socket path=… --event-monitor fd=N`), so the
// driver really spawns, talks to and stops a process. It serves CH's REST API as documented for
// v53.0 (vmm/src/api/openapi/cloud-hypervisor.yaml) and behaves like CH's HTTP layer where the
// tests depend on it: 204 for actions, 200 + JSON for answers, errors as a JSON array of
// messages, 404 for an unknown path, 400 for a body that does not deserialize, 500 for an
// action the VM's state does not allow. It is stricter than CH in one way on purpose: CH
// silently ignores unknown fields (serde's default), so a misspelt field would be dropped
// without a word; here it is a 400 naming the field.
//
// It models each release from v49.0 to v53.0 (Scenario.version; PROFILES says what differs,
// each difference read from CH's source at that tag), and CH's event monitor: events as
// pretty-printed JSON objects each followed by a blank line, on the fd or path given, dropped
// when the reader does not keep up. A guest fault (Scenario.guestFault) happens on SIGUSR1.
//
// Hybrid vsock is emulated on the vsock socket from vm.create: `CONNECT <port>\n` to the agent
// port is answered `OK <n>\n` and bridged to a ttrpc agent — our real guest agent in test mode
// when the scenario names its binary, else a built-in Health/Version agent.
//
// The scenario comes from the JSON file named by $CH_DOUBLE_SCENARIO (see Scenario); every
// request and notable event is appended to its `log` file as one JSON line.
import { type ChildProcess, spawn } from "node:child_process";
import { appendFileSync, closeSync, existsSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { messageCodec } from "../../src/ttrpc/proto.js";
import { TtrpcServer } from "../../src/ttrpc/server.js";

export interface Scenario {
  /** JSON-lines record of requests ({t:"request",…}) and events. */
  log: string;
  /** SIGKILL itself when this endpoint (e.g. "vm.add-disk") is requested: a VMM crash. */
  crashOn?: string;
  /** Answer this endpoint with an error (CH's error-chain body). */
  fail?: { endpoint: string; status: number; messages: string[] };
  /** Close this many CONNECTs to the agent port first, as CH does while the guest boots. */
  refuseConnects?: number;
  /** Our guest agent binary (run with --test-mode); else a built-in Node agent. */
  agent?: string;
  /** How long the "guest" takes to eject a removed device (default 100 ms). */
  removeDelayMs?: number;
  /** Answer vmm.shutdown but keep running (to test the driver's SIGKILL fallback). */
  ignoreVmmShutdown?: boolean;
  /** The release modelled (default: the newest). */
  version?: ChVersion;
  /**
   * What the guest does on SIGUSR1: `panic` (the kernel prints its panic line on the console,
   * then, with panic=-1, resets), `reset` (a reboot or triple fault: CH reboots the VM) or
   * `poweroff` (CH shuts the VM down and exits).
   */
  guestFault?: "panic" | "reset" | "poweroff";
  /** Records that are not events, written to the event monitor at boot (a VMM gone wrong). */
  eventGarbage?: number;
  /** What vmm.ping reports as `version` (default: the modelled release's, e.g. "49.0.0"). */
  reportedVersion?: string;
}

/** The Cloud Hypervisor releases the double models. */
export const CH_VERSIONS = ["v49.0", "v50.0", "v51.0", "v52.0", "v53.0"] as const;
export type ChVersion = (typeof CH_VERSIONS)[number];

/** How a release differs from the newest, where it matters to the driver. */
interface Profile {
  /**
   * Up to v52 an unset Option in an answer is `null` (vm.info: device_tree before boot, a
   * device node's parent and pci_bdf, options inside config); v53 omits it (commit "vmm: omit
   * unset Option fields from API responses").
   */
  nullsInAnswers: boolean;
  /**
   * v53 locks `<api socket>.lock` and removes a stale API socket before it binds; earlier
   * releases exit at start when the path exists. No release removes it on exit.
   */
  clearsStaleApiSocket: boolean;
  /** v53 answers 404 to a request on a VM not created; earlier releases 500. */
  notCreatedStatus: number;
  /** DiskConfig fields this release does not know: serde ignores them (recorded as "ignored"). */
  unknownDiskFields: readonly string[];
}

const PROFILES: Record<ChVersion, Profile> = {
  "v49.0": {
    nullsInAnswers: true,
    clearsStaleApiSocket: false,
    notCreatedStatus: 500,
    unknownDiskFields: ["image_type", "lock_granularity"],
  },
  "v50.0": {
    nullsInAnswers: true,
    clearsStaleApiSocket: false,
    notCreatedStatus: 500,
    unknownDiskFields: ["image_type", "lock_granularity"],
  },
  "v51.0": {
    nullsInAnswers: true,
    clearsStaleApiSocket: false,
    notCreatedStatus: 500,
    unknownDiskFields: ["lock_granularity"],
  },
  "v52.0": {
    nullsInAnswers: true,
    clearsStaleApiSocket: false,
    notCreatedStatus: 500,
    unknownDiskFields: [],
  },
  "v53.0": {
    nullsInAnswers: false,
    clearsStaleApiSocket: true,
    notCreatedStatus: 404,
    unknownDiskFields: [],
  },
};

export const LATEST_VERSION: ChVersion = "v53.0";
export const DOUBLE_VERSION = "v53.0.0-cloudhv-test-double";
const AGENT_PORT = 1024;

// ---- the documented request schemas (the parts CH v53 documents for these objects) ----

type Schema =
  | { kind: "string" }
  | { kind: "bool" }
  | { kind: "int"; min: number; max: number }
  | { kind: "enum"; values: readonly string[] }
  | { kind: "array"; items: Schema }
  | { kind: "object"; fields: Record<string, Schema>; required?: readonly string[] }
  /** Documented, but the double does not model it: a 400 saying so (never silently accepted). */
  | { kind: "not-modelled" };

const str: Schema = { kind: "string" };
const bool: Schema = { kind: "bool" };
const int = (min: number, max: number): Schema => ({ kind: "int", min, max });
const u8 = int(0, 0xff);
const u16 = int(0, 0xffff);

const u64 = int(0, Number.MAX_SAFE_INTEGER);
const enumOf = (...values: string[]): Schema => ({ kind: "enum", values });
const obj = (fields: Record<string, Schema>, required: string[] = []): Schema => ({
  kind: "object",
  fields,
  required,
});
const NM: Schema = { kind: "not-modelled" };
const pci = { pci_segment: u16, pci_device_id: u8 };
const consoleMode = enumOf("Off", "Pty", "Tty", "File", "Socket", "Null");

const diskConfig = obj({
  path: str,
  readonly: bool,
  direct: bool,
  iommu: bool,
  num_queues: u64,
  queue_size: u16,
  vhost_user: bool,
  vhost_socket: str,
  rate_limiter_config: NM,
  ...pci,
  id: str,
  serial: str,
  rate_limit_group: str,
  queue_affinity: NM,
  backing_files: bool,
  sparse: bool,
  image_type: enumOf("FixedVhd", "Qcow2", "Raw", "Vhdx", "Unknown"),
  lock_granularity: enumOf("ByteRange", "Full"),
});

const netConfig = obj({
  tap: str,
  ip: str,
  mask: str,
  mac: str,
  host_mac: str,
  mtu: u16,
  iommu: bool,
  num_queues: u64,
  queue_size: u16,
  vhost_user: bool,
  vhost_socket: str,
  vhost_mode: enumOf("Client", "Server"),
  id: str,
  ...pci,
  rate_limiter_config: NM,
  offload_tso: bool,
  offload_ufo: bool,
  offload_csum: bool,
});

// FsConfig: tag, socket, num_queues and queue_size are required (the document's defaults are
// for the CLI); pci_segment and id as for other devices.
const fsConfig = obj({ tag: str, socket: str, num_queues: u64, queue_size: u16, ...pci, id: str }, [
  "num_queues",
  "queue_size",
  "socket",
  "tag",
]);

const vmConfig = obj(
  {
    payload: obj({ firmware: str, kernel: str, cmdline: str, initramfs: str, igvm: str, host_data: str }),
    cpus: obj(
      {
        boot_vcpus: int(1, 0xffff_ffff),
        max_vcpus: int(1, 0xffff_ffff),
        topology: NM,
        kvm_hyperv: bool,
        max_phys_bits: u8,
        nested: bool,
        affinity: NM,
        features: NM,
        core_scheduling: enumOf("Vm", "Vcpu", "Off"),
      },
      ["boot_vcpus", "max_vcpus"],
    ),
    memory: obj(
      {
        size: u64,
        hotplug_size: u64,
        hotplugged_size: u64,
        mergeable: bool,
        hotplug_method: enumOf("Acpi", "VirtioMem"),
        shared: bool,
        hugepages: bool,
        hugepage_size: u64,
        prefault: bool,
        reserve: bool,
        thp: bool,
        zones: NM,
      },
      ["size"],
    ),
    rate_limit_groups: NM,
    disks: { kind: "array", items: diskConfig },
    net: { kind: "array", items: netConfig },
    rng: obj({ id: str, ...pci, iommu: bool, src: str }, ["src"]),
    balloon: NM,
    fs: { kind: "array", items: fsConfig },
    "generic-vhost-user": NM,
    pmem: NM,
    serial: obj({ file: str, socket: str, mode: consoleMode }, ["mode"]),
    console: obj({ file: str, socket: str, mode: consoleMode, iommu: bool, id: str, ...pci }, ["mode"]),
    debug_console: NM,
    devices: NM,
    user_devices: NM,
    vdpa: NM,
    vsock: obj({ cid: int(3, 0xffff_ffff), socket: str, iommu: bool, ...pci, id: str }, ["cid", "socket"]),
    numa: NM,
    iommu: bool,
    watchdog: bool,
    rtc: NM,
    pvpanic: bool,
    pci_segments: NM,
    platform: NM,
    tpm: NM,
    landlock_enable: bool,
    landlock_rules: NM,
  },
  ["payload"],
);

const removeDevice = obj({ id: str }, ["id"]);

// VmConfig's and PayloadConfig's Option fields (v52's vm_config.rs, the ones a default build
// serializes): unset, they are written as null up to v52.
const VM_CONFIG_OPTIONS = [
  "payload",
  "rate_limit_groups",
  "disks",
  "net",
  "balloon",
  "fs",
  "pmem",
  "devices",
  "user_devices",
  "vdpa",
  "vsock",
  "numa",
  "pci_segments",
  "platform",
  "tpm",
  "landlock_rules",
] as const;
const PAYLOAD_OPTIONS = ["firmware", "kernel", "cmdline", "initramfs"] as const;

/** The config as v49-v52 echo it in vm.info: every unset Option as null. */
function withNulls(config: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...config };
  for (const key of VM_CONFIG_OPTIONS) out[key] ??= null;
  if (out.payload && typeof out.payload === "object") {
    const payload: Record<string, unknown> = { ...(out.payload as Record<string, unknown>) };
    for (const key of PAYLOAD_OPTIONS) payload[key] ??= null;
    out.payload = payload;
  }
  return out;
}

function validate(value: unknown, schema: Schema, at: string): string[] {
  const where = at || "(body)";
  switch (schema.kind) {
    case "string":
      return typeof value === "string" ? [] : [`${where}: invalid type: expected a string`];
    case "bool":
      return typeof value === "boolean" ? [] : [`${where}: invalid type: expected a boolean`];
    case "int":
      if (typeof value !== "number" || !Number.isInteger(value))
        return [`${where}: invalid type: expected an integer`];
      return value < schema.min || value > schema.max
        ? [`${where}: invalid value ${value}: expected ${schema.min}..=${schema.max}`]
        : [];
    case "enum":
      return typeof value === "string" && schema.values.includes(value)
        ? []
        : [`${where}: unknown variant ${JSON.stringify(value)}, expected one of ${schema.values.join(", ")}`];
    case "array":
      if (!Array.isArray(value)) return [`${where}: invalid type: expected an array`];
      return value.flatMap((item, i) => validate(item, schema.items, `${at}[${i}]`));
    case "object": {
      if (typeof value !== "object" || value === null || Array.isArray(value))
        return [`${where}: invalid type: expected an object`];
      const record = value as Record<string, unknown>;
      const problems: string[] = [];
      for (const key of schema.required ?? [])
        if (!(key in record)) problems.push(`${at ? `${at}.` : ""}${key}: missing field`);
      for (const [key, item] of Object.entries(record)) {
        const field = schema.fields[key];
        const sub = at ? `${at}.${key}` : key;
        if (!field) problems.push(`${sub}: unknown field (not in the documented schema)`);
        else problems.push(...validate(item, field, sub));
      }
      return problems;
    }
    case "not-modelled":
      return [`${where}: documented, but not modelled by the test double`];
  }
}

// ---- the VMM's state ----

type State = "NotCreated" | "Created" | "Running" | "Paused" | "Shutdown";

interface Device {
  id: string;
  kind: "disk" | "net" | "fs" | "rng" | "vsock" | "console";
  bdf: string;
  config: Record<string, unknown>;
}

class ApiError {
  constructor(
    readonly status: number,
    readonly messages: string[],
  ) {}
}

let profile: Profile = PROFILES[LATEST_VERSION];
let version: ChVersion = LATEST_VERSION;

const notCreated = (what: string) =>
  new ApiError(profile.notCreatedStatus, ["Error from API", what, "VM is not created"]);

// ---- the event monitor ----

let eventFd: number | undefined;
const monitorStart = process.hrtime.bigint();

/** One event as CH writes it: serde_json's pretty form (2 spaces), then a blank line. */
function emit(source: string, event: string, properties?: Record<string, string>): void {
  record({ t: "event", source, event, ...(properties ? { properties } : {}) });
  if (eventFd === undefined) return;
  const ns = process.hrtime.bigint() - monitorStart;
  const doc = {
    timestamp: { secs: Number(ns / 1_000_000_000n), nanos: Number(ns % 1_000_000_000n) },
    source,
    event,
    properties: properties ?? null,
  };
  writeEventText(`${JSON.stringify(doc, null, 2)}\n\n`);
}

function writeEventText(text: string): void {
  if (eventFd === undefined) return;
  try {
    writeSync(eventFd, text);
  } catch {
    // CH's fd is non-blocking and a failed write is dropped: the VMM never waits for a reader.
  }
}

class Vmm {
  state: State = "NotCreated";
  config: Record<string, unknown> | undefined;
  private devices = new Map<string, Device>();
  private nextSlot = 1;
  private counters: Record<string, number> = { disk: 0, net: 0 };
  private vsockServer: net.Server | undefined;
  private agent: { socket: string; stop(): Promise<void> } | undefined;
  private refusals: number;
  private hostPort = 1234;
  private readonly bridges = new Set<net.Socket>();

  constructor(private readonly scenario: Scenario) {
    this.refusals = scenario.refuseConnects ?? 0;
  }

  handle(method: string, endpoint: string, body: unknown): { status: number; json?: unknown } {
    const s = this.scenario;
    if (s.fail && s.fail.endpoint === endpoint) throw new ApiError(s.fail.status, s.fail.messages);
    switch (endpoint) {
      case "vmm.ping":
        return {
          status: 200,
          json: {
            build_version: `${version}-cloudhv-test-double`,
            version: this.scenario.reportedVersion ?? `${version.slice(1)}.0`,
            pid: process.pid,
            features: ["kvm"],
          },
        };
      case "vm.create": {
        if (this.state !== "NotCreated")
          throw new ApiError(500, [
            "Error from API",
            "The VM could not be created",
            "The VM is already created",
          ]);
        const vm = { ...(body as Record<string, unknown>) };
        if (Array.isArray(vm.disks))
          vm.disks = (vm.disks as Array<Record<string, unknown>>).map((d) =>
            this.ignoreUnknownFields("disk", d),
          );
        this.config = vm;
        this.state = "Created";
        return { status: 204 };
      }
      case "vm.boot":
        return this.boot();
      case "vm.info":
        if (!this.config) throw notCreated("The VM info is not available");
        return { status: 200, json: this.info() };
      case "vm.counters":
        return { status: 200, json: this.vmCounters() };
      case "vm.pause":
        this.need(["Running"], "The VM could not be paused");
        emit("vm", "pausing");
        this.state = "Paused";
        emit("vm", "paused");
        return { status: 204 };
      case "vm.resume":
        this.need(["Paused"], "The VM could not be resumed");
        emit("vm", "resuming");
        this.state = "Running";
        emit("vm", "resumed");
        return { status: 204 };
      case "vm.shutdown":
        this.need(["Running", "Paused"], "The VM could not shut down");
        this.state = "Shutdown";
        void this.powerOff();
        emit("vm", "shutdown");
        return { status: 204 };
      case "vm.delete":
        this.delete();
        return { status: 204 };
      case "vm.add-disk":
        return this.addDevice("disk", body as Record<string, unknown>);
      case "vm.add-net":
        return this.addDevice("net", body as Record<string, unknown>);
      case "vm.add-fs":
        return this.addDevice("fs", body as Record<string, unknown>);
      case "vm.remove-device":
        return this.remove((body as { id: string }).id);
      default:
        throw new Error(`no handler for ${method} ${endpoint}`);
    }
  }

  /** vm.delete, and the first half of a VMM shutdown. */
  delete(): void {
    if (!this.config) return;
    if (this.state === "Running" || this.state === "Paused") {
      this.state = "Shutdown";
      emit("vm", "shutdown");
    }
    void this.powerOff();
    this.state = "NotCreated";
    this.config = undefined;
    this.devices.clear();
    emit("vm", "deleted");
  }

  /**
   * The guest does something the VMM must answer for (SIGUSR1). A kernel panic prints its line
   * and then resets (panic=-1); on a reset CH reboots the VM: a new guest, none of the old
   * one's state; on a power-off CH shuts the VM down and the process exits.
   */
  async guestFault(kind: "panic" | "reset" | "poweroff"): Promise<"exit" | undefined> {
    if (this.state !== "Running") return undefined;
    record({ t: "guest-fault", kind });
    const c = this.config as { console?: { mode: string; file?: string }; vsock?: { socket: string } };
    if (kind === "panic" && c.console?.mode === "File" && c.console.file) {
      const fd = openSync(c.console.file, "a");
      writeSync(fd, "Kernel panic - not syncing: sysrq triggered crash\n");
      closeSync(fd);
    }
    if (kind === "poweroff") {
      this.delete();
      emit("vmm", "shutdown");
      return "exit";
    }
    emit("vm", "rebooting");
    await this.powerOff();
    emit("vm", "rebooted");
    // CH serves API requests between the reboot's steps on one thread; one that stopped the VM
    // meanwhile wins here.
    if (c.vsock && this.state === "Running") await this.powerOn(c.vsock.socket);
    return undefined;
  }

  private need(states: State[], what: string): void {
    if (!this.config) throw notCreated(what);
    if (!states.includes(this.state))
      throw new ApiError(500, ["Error from API", what, `Invalid VM state transition: ${this.state}`]);
  }

  /** What CH checks when it builds the VM (vm.boot), in the double's words. */
  private boot(): { status: number } {
    if (!this.config) throw notCreated("The VM could not boot");
    if (this.state === "Running" || this.state === "Paused")
      throw new ApiError(500, ["Error from API", "The VM could not boot", "VM is already running"]);
    const c = this.config as {
      payload: { kernel?: string; firmware?: string; initramfs?: string };
      cpus?: { boot_vcpus: number; max_vcpus: number };
      disks?: Array<Record<string, unknown>>;
      net?: Array<Record<string, unknown>>;
      fs?: Array<Record<string, unknown>>;
      memory?: { shared?: boolean };
      console?: { mode: string; file?: string };
      serial?: { mode: string; file?: string };
      vsock?: { cid: number; socket: string; id?: string };
      rng?: { src: string };
    };
    const problems: string[] = [];
    if (!c.payload.kernel && !c.payload.firmware) problems.push("payload: neither kernel nor firmware given");
    for (const file of [c.payload.kernel, c.payload.firmware, c.payload.initramfs])
      if (file && !existsSync(file)) problems.push(`cannot open ${file}`);
    if (c.cpus && c.cpus.max_vcpus < c.cpus.boot_vcpus)
      problems.push(`max CPUs (${c.cpus.max_vcpus}) lower than boot CPUs (${c.cpus.boot_vcpus})`);
    for (const con of [c.console, c.serial])
      if (con?.mode === "File" && !con.file) problems.push("console mode File needs a file");
    const ids = new Set<string>();
    for (const fs of c.fs ?? []) problems.push(...this.fsProblems(fs, c.memory));
    for (const dev of [...(c.disks ?? []), ...(c.net ?? []), ...(c.fs ?? []), c.vsock ?? {}]) {
      const id = (dev as { id?: string }).id;
      if (id === undefined) continue;
      if (id.startsWith("__")) problems.push(`identifier ${id} is reserved`);
      if (ids.has(id)) problems.push(`identifier ${id} is not unique`);
      ids.add(id);
    }
    for (const disk of c.disks ?? []) {
      if (typeof disk.path !== "string") problems.push("a disk without a path");
      else if (!existsSync(disk.path)) problems.push(`cannot open disk ${disk.path}`);
    }
    if (problems.length)
      throw new ApiError(500, [
        "Error from API",
        "The VM could not boot",
        "Error validating configuration",
        ...problems,
      ]);
    // Every release binds the hybrid vsock socket without removing what is there first (it
    // removes it on a clean shutdown only): a socket left by a VMM that died fails the boot.
    if (c.vsock && existsSync(c.vsock.socket))
      throw new ApiError(500, [
        "Error from API",
        "The VM could not boot",
        "Cannot create virtio-vsock device",
        `Error binding the host socket ${c.vsock.socket}: Address in use (os error 98)`,
      ]);
    emit("vm", "booting");
    if (this.devices.size === 0) {
      for (const disk of c.disks ?? []) this.attach("disk", disk);
      for (const nic of c.net ?? []) this.attach("net", nic);
      for (const fs of c.fs ?? []) this.attach("fs", fs);
      if (c.rng) this.attach("rng", { ...c.rng, id: "__rng" });
      if (c.console && c.console.mode !== "Off") this.attach("console", { ...c.console, id: "__console" });
      if (c.vsock) this.attach("vsock", { ...c.vsock, id: c.vsock.id ?? "_vsock0" });
    }
    this.state = "Running";
    // CH opens a File console with create+truncate and writes the guest's output to it; a
    // FIFO without a reader would block here, as it would block CH.
    if (c.console?.mode === "File" && c.console.file) {
      const fd = openSync(c.console.file, "w");
      writeSync(fd, "double: guest console up\n");
      closeSync(fd);
    }
    if (c.vsock) void this.powerOn(c.vsock.socket);
    for (const d of this.devices.values())
      if (d.kind !== "console") emit("virtio-device", "activated", { id: d.id });
    emit("vm", "booted");
    for (let i = 0; i < (this.scenario.eventGarbage ?? 0); i++) writeEventText(`garbage ${i}\n\n`);
    return { status: 204 };
  }

  private attach(kind: Device["kind"], config: Record<string, unknown>): Device {
    let id = config.id as string | undefined;
    if (!id) {
      id = `_${kind}${this.counters[kind] ?? 0}`;
      this.counters[kind] = (this.counters[kind] ?? 0) + 1;
    }
    const bdf = `0000:00:${(this.nextSlot++).toString(16).padStart(2, "0")}.0`;
    const device = { id, kind, bdf, config: { ...config, id } };
    this.devices.set(id, device);
    return device;
  }

  /**
   * What CH refuses for a virtio-fs device: vhost-user needs shared guest memory, and CH
   * connects to the backend's socket at once (a socket nobody listens on is an error).
   */
  private fsProblems(fs: Record<string, unknown>, memory: { shared?: boolean } | undefined): string[] {
    const problems: string[] = [];
    if (memory?.shared !== true)
      problems.push("Using vhost-user requires using shared memory or huge pages (memory.shared)");
    if (typeof fs.tag !== "string" || fs.tag.length === 0 || Buffer.byteLength(fs.tag) > 36)
      problems.push(`virtio-fs tag ${JSON.stringify(fs.tag)} must be 1-36 bytes`);
    if (typeof fs.socket !== "string" || !existsSync(fs.socket))
      problems.push(`Failed connecting the backend after trying for 1 minute: ${String(fs.socket)}`);
    return problems;
  }

  private addDevice(
    kind: "disk" | "net" | "fs",
    body: Record<string, unknown>,
  ): { status: number; json?: unknown } {
    const what = {
      disk: "The disk could not be added to the VM",
      net: "The network device could not be added to the VM",
      fs: "The virtio-fs device could not be added to the VM",
    }[kind];
    if (!this.config) throw notCreated(what);
    body = this.ignoreUnknownFields(kind, body);
    const id = body.id as string | undefined;
    if (id?.startsWith("__")) throw new ApiError(500, ["Error from API", what, `Invalid identifier: ${id}`]);
    if (id && this.devices.has(id))
      throw new ApiError(500, ["Error from API", what, `Identifier ${id} is not unique`]);
    if (kind === "disk" && (typeof body.path !== "string" || !existsSync(body.path)))
      throw new ApiError(500, ["Error from API", what, `Cannot open disk path ${String(body.path)}`]);
    if (kind === "fs") {
      const problems = this.fsProblems(body, this.config.memory as { shared?: boolean } | undefined);
      if (problems.length) throw new ApiError(500, ["Error from API", what, ...problems]);
    }
    const list = kind === "disk" ? "disks" : kind;
    const configs = ((this.config[list] as unknown[] | undefined) ?? []).slice();
    if (this.state === "Created") {
      // Cold add: recorded in the config, no PCI device yet.
      configs.push(body);
      this.config[list] = configs;
      return { status: 204 };
    }
    if (this.state !== "Running" && this.state !== "Paused")
      throw new ApiError(500, ["Error from API", what, "VM is not running"]);
    const device = this.attach(kind, body);
    configs.push(device.config);
    this.config[list] = configs;
    return { status: 200, json: { id: device.id, bdf: device.bdf } };
  }

  private remove(id: string): { status: number } {
    if (!this.config) throw notCreated("The device could not be removed from the VM");
    const device = this.devices.get(id);
    if (!device)
      throw new ApiError(500, [
        "Error from API",
        "The device could not be removed from the VM",
        `Unknown device id: ${id}`,
      ]);
    const forget = () => {
      this.devices.delete(id);
      const list = device.kind === "disk" ? "disks" : device.kind === "net" ? "net" : undefined;
      if (list && this.config)
        this.config[list] = ((this.config[list] as Array<{ id?: string }>) ?? []).filter((d) => d.id !== id);
      record({ t: "ejected", id });
    };
    // The guest ejects the device a moment later (ACPI hotplug); vm.info shows it until then.
    if (this.state === "Running") setTimeout(forget, this.scenario.removeDelayMs ?? 100);
    else forget();
    return { status: 204 };
  }

  private info(): unknown {
    const config = this.config as { memory?: { size?: number } };
    // An unset Option: null up to v52, left out from v53.
    const unset = profile.nullsInAnswers ? null : undefined;
    const tree: Record<string, unknown> = {};
    for (const d of this.devices.values()) {
      const pciNode = `_virtio-pci-${d.id}`;
      tree[d.id] = { id: d.id, resources: [], parent: pciNode, children: [], pci_bdf: unset };
      tree[pciNode] = { id: pciNode, resources: [], parent: unset, children: [d.id], pci_bdf: d.bdf };
    }
    const booted = this.state === "Running" || this.state === "Paused" || this.state === "Shutdown";
    const answer = {
      config: profile.nullsInAnswers ? withNulls(this.config ?? {}) : this.config,
      state: this.state === "NotCreated" ? "Created" : this.state,
      memory_actual_size: config.memory?.size ?? 512 * 1024 * 1024,
      // No VM object before vm.boot: no device tree.
      device_tree: booted ? tree : unset,
    };
    // JSON.stringify drops undefined members, as v53 drops unset Options.
    return answer;
  }

  /** Fields this release does not know are dropped by serde without a word. */
  ignoreUnknownFields(kind: "disk" | "net" | "fs", body: Record<string, unknown>): Record<string, unknown> {
    if (kind !== "disk") return body;
    const kept = { ...body };
    for (const field of profile.unknownDiskFields)
      if (field in kept) {
        delete kept[field];
        record({ t: "ignored", field, version });
      }
    return kept;
  }

  private vmCounters(): Record<string, Record<string, number>> {
    if (!this.config) throw notCreated("The VM counters are not available");
    if (this.state !== "Running" && this.state !== "Paused")
      throw new ApiError(500, ["Error from API", "The VM counters are not available", "VM is not running"]);
    const out: Record<string, Record<string, number>> = {};
    for (const d of this.devices.values()) {
      if (d.kind === "disk") out[d.id] = { read_bytes: 0, read_ops: 0, write_bytes: 0, write_ops: 0 };
      if (d.kind === "net") out[d.id] = { rx_bytes: 0, rx_frames: 0, tx_bytes: 0, tx_frames: 0 };
    }
    return out;
  }

  /** The "guest" boots: the hybrid vsock socket opens, the agent starts a moment later. */
  private async powerOn(vsockPath: string): Promise<void> {
    const server = net.createServer((conn) => this.onVsockConnection(conn));
    this.vsockServer = server;
    server.listen(vsockPath);
    const agentSocket = path.join(path.dirname(vsockPath), "double-agent.sock");
    rmSync(agentSocket, { force: true });
    this.agent = this.scenario.agent
      ? await startRealAgent(this.scenario.agent, agentSocket)
      : await startBuiltinAgent(agentSocket);
  }

  /** The guest stops; the vsock socket goes with the device (a crash leaves it behind). */
  async powerOff(): Promise<void> {
    for (const b of this.bridges) b.destroy();
    const server = this.vsockServer;
    this.vsockServer = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    await this.agent?.stop();
    this.agent = undefined;
  }

  private onVsockConnection(conn: net.Socket): void {
    conn.on("error", () => {});
    let buf = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      const nl = buf.indexOf(0x0a);
      if (nl < 0) {
        if (buf.length > 32) conn.destroy(); // CH reads at most a short command line
        return;
      }
      conn.off("data", onData);
      conn.pause();
      const line = buf.subarray(0, nl).toString();
      const rest = buf.subarray(nl + 1);
      const port = /^CONNECT (\d+)$/.exec(line)?.[1];
      if (!port) {
        record({ t: "vsock", outcome: "malformed", line });
        conn.destroy();
        return;
      }
      if (this.refusals > 0) {
        this.refusals--;
        record({ t: "vsock", outcome: "refused", port: Number(port) });
        conn.destroy();
        return;
      }
      if (Number(port) !== AGENT_PORT || !this.agent || this.state !== "Running") {
        record({ t: "vsock", outcome: "no listener", port: Number(port) });
        conn.destroy();
        return;
      }
      const upstream = net.createConnection({ path: this.agent.socket });
      upstream.on("error", () => conn.destroy());
      upstream.once("connect", () => {
        record({ t: "vsock", outcome: "ok", port: Number(port) });
        conn.write(`OK ${this.hostPort++}\n`);
        if (rest.length) upstream.write(rest);
        conn.pipe(upstream);
        upstream.pipe(conn);
        conn.resume();
      });
      for (const s of [conn, upstream]) {
        this.bridges.add(s);
        s.on("close", () => {
          this.bridges.delete(s);
          conn.destroy();
          upstream.destroy();
        });
      }
    };
    conn.on("data", onData);
  }
}

// ---- agents ----

async function waitForSocket(p: string, child?: ChildProcess): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!existsSync(p)) {
    if (child && child.exitCode !== null) throw new Error(`agent exited with ${child.exitCode}`);
    if (Date.now() > deadline) throw new Error(`agent socket ${p} did not appear`);
    await sleep(5);
  }
}

async function startRealAgent(
  binary: string,
  socket: string,
): Promise<{ socket: string; stop(): Promise<void> }> {
  // pdeathsig: when the double is killed (a "crash"), its agent goes too.
  const child = spawn(
    "setpriv",
    ["--pdeathsig", "KILL", "--", binary, "--test-mode", "--listen", `unix://${socket}`],
    {
      stdio: ["ignore", "ignore", "ignore"],
    },
  );
  const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
  record({ t: "agent", kind: "cloudhv-agent", pid: child.pid });
  await waitForSocket(socket, child);
  return {
    socket,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      await Promise.race([exited, sleep(2000).then(() => child.kill("SIGKILL"))]);
    },
  };
}

async function startBuiltinAgent(socket: string): Promise<{ socket: string; stop(): Promise<void> }> {
  const health = messageCodec("cloudhv.agent.v1.HealthResponse");
  const version = messageCodec("cloudhv.agent.v1.VersionResponse");
  const started = process.hrtime.bigint();
  const server = new TtrpcServer().register("cloudhv.agent.v1.Agent", {
    Health: async () =>
      health.encode({ status: "SERVING", uptimeNs: Number(process.hrtime.bigint() - started) }),
    Version: async () =>
      version.encode({
        agentVersion: "0.0.0-double",
        protocolVersion: 1,
        kernelRelease: "double",
        runtimeVersion: "none",
      }),
  });
  await server.listen(socket);
  record({ t: "agent", kind: "builtin", pid: process.pid });
  return { socket, stop: () => server.close() };
}

// ---- HTTP ----

let logFile: string | undefined;
function record(entry: Record<string, unknown>): void {
  if (logFile) appendFileSync(logFile, `${JSON.stringify(entry)}\n`);
}

const GET = new Set(["vmm.ping", "vm.info", "vm.counters"]);
const PUT_EMPTY = new Set(["vmm.shutdown", "vm.boot", "vm.shutdown", "vm.delete", "vm.pause", "vm.resume"]);
const PUT_BODY: Record<string, Schema> = {
  "vm.create": vmConfig,
  "vm.add-disk": diskConfig,
  "vm.add-net": netConfig,
  "vm.add-fs": fsConfig,
  "vm.remove-device": removeDevice,
};

function send(res: http.ServerResponse, status: number, json?: unknown): void {
  const body = json === undefined ? "" : JSON.stringify(json);
  res.writeHead(status, {
    Server: "Cloud Hypervisor API (test double)",
    "Content-Type": "application/json",
    "Content-Length": Buffer.byteLength(body),
  });
  res.end(body);
}

function serve(apiSocket: string, scenario: Scenario): void {
  const vmm = new Vmm(scenario);
  // Like CH, it leaves its API socket behind when it exits (no release removes it).
  const exitNow = async (code: number) => {
    vmm.delete();
    emit("vmm", "shutdown");
    await vmm.powerOff();
    process.exit(code);
  };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const raw = Buffer.concat(chunks).toString("utf8");
      const url = req.url ?? "";
      const endpoint = url.startsWith("/api/v1/") ? url.slice("/api/v1/".length) : "";
      let body: unknown;
      const answer = (status: number, json?: unknown) => {
        record({ t: "request", method: req.method, path: url, body: body ?? null, status });
        send(res, status, json);
      };
      const known = GET.has(endpoint) || PUT_EMPTY.has(endpoint) || endpoint in PUT_BODY;
      if (!known) return answer(404, ["Not Found"]);
      if (req.headers["transfer-encoding"])
        return answer(400, ["Bad Request", "chunked bodies are not supported"]);
      const wantMethod = GET.has(endpoint) ? "GET" : "PUT";
      if (req.method !== wantMethod) return answer(400, ["Bad Request"]);
      const schema = PUT_BODY[endpoint];
      if (schema) {
        if (!raw) return answer(400, ["Bad Request"]);
        try {
          body = JSON.parse(raw);
        } catch (err) {
          return answer(400, ["Failed to deserialize JSON", (err as Error).message]);
        }
        const problems = validate(body, schema, "");
        if (problems.length) return answer(400, ["Failed to deserialize JSON", ...problems]);
      } else if (raw) {
        body = raw;
        return answer(400, ["Bad Request"]);
      }
      if (scenario.crashOn === endpoint) {
        record({ t: "crash", endpoint, method: req.method, body: body ?? null });
        process.kill(process.pid, "SIGKILL");
        return;
      }
      if (endpoint === "vmm.shutdown") {
        answer(204);
        if (!scenario.ignoreVmmShutdown) res.on("finish", () => void exitNow(0));
        return;
      }
      try {
        const out = vmm.handle(req.method ?? "", endpoint, body);
        answer(out.status, out.json);
      } catch (err) {
        if (err instanceof ApiError) answer(err.status, err.messages);
        else answer(500, ["Internal Server Error", (err as Error).message]);
      }
    });
  });
  if (existsSync(apiSocket)) {
    if (!profile.clearsStaleApiSocket) {
      // What v49-v52 do: bind fails, the VMM exits before it serves anything.
      record({ t: "refused", why: "stale API socket", version });
      process.stderr.write(
        `Error booting VMM: Error creation API server's socket: Address in use (os error 98) (${apiSocket})\n`,
      );
      process.exit(1);
    }
    record({ t: "stale-api-socket-removed", version });
    rmSync(apiSocket, { force: true });
  }
  // v53 holds a lock on this file while it runs; the file stays after it exits.
  if (profile.clearsStaleApiSocket) closeSync(openSync(`${apiSocket}.lock`, "a"));
  server.listen(apiSocket);
  process.on("SIGTERM", () => void exitNow(0));
  process.on("SIGINT", () => void exitNow(0));
  process.on("SIGUSR1", () => {
    if (!scenario.guestFault) return;
    void vmm.guestFault(scenario.guestFault).then((outcome) => {
      if (outcome === "exit") void vmm.powerOff().then(() => process.exit(0));
    });
  });
}

/** `--name value` or `--name=value`. */
function optionValue(argv: string[], name: string): string | undefined {
  const i = argv.findIndex((a) => a === name || a.startsWith(`${name}=`));
  if (i < 0) return undefined;
  return argv[i]?.includes("=") ? argv[i]?.slice(name.length + 1) : argv[i + 1];
}

function main(argv: string[]): void {
  if (argv.includes("--version")) {
    const scenarioFile = process.env.CH_DOUBLE_SCENARIO;
    const v = scenarioFile ? (JSON.parse(readFileSync(scenarioFile, "utf8")) as Scenario).version : undefined;
    process.stdout.write(`cloud-hypervisor ${v ? `${v}.0-cloudhv-test-double` : DOUBLE_VERSION}\n`);
    return;
  }
  const spec = optionValue(argv, "--api-socket");
  if (!spec) {
    // `node --test` runs every file under a test/ directory; as a test file this is a no-op.
    if (process.env.NODE_TEST_CONTEXT) return;
    process.stderr.write("ch-api-double: usage: ch-api-double --api-socket path=<socket>\n");
    process.exit(2);
  }
  const apiSocket = spec.startsWith("path=") ? spec.slice("path=".length) : spec;
  const scenarioFile = process.env.CH_DOUBLE_SCENARIO;
  const scenario: Scenario = scenarioFile
    ? (JSON.parse(readFileSync(scenarioFile, "utf8")) as Scenario)
    : { log: "/dev/null" };
  logFile = scenario.log;
  version = scenario.version ?? LATEST_VERSION;
  profile = PROFILES[version];
  const monitor = optionValue(argv, "--event-monitor");
  if (monitor?.startsWith("fd=")) eventFd = Number(monitor.slice(3));
  else if (monitor?.startsWith("path=")) eventFd = openSync(monitor.slice(5), "w");
  else if (monitor !== undefined) {
    process.stderr.write("Error parsing --event-monitor: path or fd required\n");
    process.exit(1);
  }
  record({ t: "start", pid: process.pid, argv, version });
  emit("vmm", "starting");
  serve(apiSocket, scenario);
}

main(process.argv.slice(2));
