// Typed client for Cloud Hypervisor's REST API on its --api-socket (HTTP/1.1 over a unix
// socket). The contract is CH's OpenAPI document (vmm/src/api/openapi/cloud-hypervisor.yaml)
// as of Cloud Hypervisor v53.0; the types below mirror the parts of it this project uses.
// Oldest version these bodies suit: v49 (a NIC without `ip`/`mask`; v35 added disk `serial`).
// Answers are read as every supported release writes them: up to v52 CH serializes an unset
// optional field as `null` (vm.info's device_tree before boot, a device node's parent and
// pci_bdf, options inside config); v53 omits it. Both mean "absent" here.
import http from "node:http";
import { z } from "zod";
import { ShimError } from "../errors.js";

export const CH_API_ROOT = "/api/v1";
/** The Cloud Hypervisor release whose API document this client follows. */
export const CH_API_VERSION = "v53.0";
/** Oldest release whose API takes our bodies as meant (see the header). */
export const CH_MIN_VERSION = 49;

// ---- request bodies (components/schemas in the OpenAPI document) ----

export interface ChPayloadConfig {
  kernel?: string;
  cmdline?: string;
  initramfs?: string;
  firmware?: string;
}

export interface ChCpusConfig {
  boot_vcpus: number;
  max_vcpus: number;
}

export interface ChMemoryConfig {
  /** Bytes. */
  size: number;
  /** Bytes that may be hot-plugged later. */
  hotplug_size?: number;
  /** MAP_SHARED guest memory: needed by vhost-user devices (virtio-fs). */
  shared?: boolean;
  mergeable?: boolean;
}

export type ChImageType = "FixedVhd" | "Qcow2" | "Raw" | "Vhdx" | "Unknown";

export interface ChDiskConfig {
  path: string;
  readonly?: boolean;
  direct?: boolean;
  id?: string;
  /** virtio-blk serial (the guest reads it from /sys/block/<dev>/serial). */
  serial?: string;
  /** v53 warns when the type is left to auto-detection (deprecated). */
  image_type?: ChImageType;
  num_queues?: number;
  queue_size?: number;
}

export interface ChNetConfig {
  tap?: string;
  mac?: string;
  mtu?: number;
  id?: string;
  num_queues?: number;
  queue_size?: number;
}

/** A virtio-fs device served by a vhost-user daemon (virtiofsd) on `socket`. */
export interface ChFsConfig {
  tag: string;
  socket: string;
  /** Required by the document (defaults there: 1 and 1024). */
  num_queues: number;
  queue_size: number;
  id?: string;
  pci_segment?: number;
}

export interface ChRngConfig {
  src: string;
}

export interface ChVsockConfig {
  /** Guest CID, ≥ 3. */
  cid: number;
  /** Host unix socket of the hybrid vsock (CONNECT <port>\n → OK <port>\n). */
  socket: string;
  id?: string;
}

export type ChConsoleMode = "Off" | "Pty" | "Tty" | "File" | "Socket" | "Null";

export interface ChConsoleConfig {
  mode: ChConsoleMode;
  file?: string;
  socket?: string;
}

export interface ChVmConfig {
  payload: ChPayloadConfig;
  cpus?: ChCpusConfig;
  memory?: ChMemoryConfig;
  disks?: ChDiskConfig[];
  net?: ChNetConfig[];
  fs?: ChFsConfig[];
  rng?: ChRngConfig;
  vsock?: ChVsockConfig;
  /** virtio-console (hvc0 in the guest). */
  console?: ChConsoleConfig;
  /** The legacy 8250 UART (ttyS0). */
  serial?: ChConsoleConfig;
}

// ---- responses, checked before use ----

const pingSchema = z.looseObject({
  version: z.string(),
  build_version: z.string().optional(),
  pid: z.number().optional(),
  features: z.array(z.string()).optional(),
});
export type ChVmmPing = z.infer<typeof pingSchema>;

const pciDeviceInfoSchema = z.looseObject({ id: z.string().min(1), bdf: z.string() });
export type ChPciDeviceInfo = z.infer<typeof pciDeviceInfoSchema>;

/** An optional field: omitted (v53) or `null` (v49-v52), read as undefined either way. */
const absent = <T extends z.ZodType>(schema: T) =>
  schema
    .nullish()
    .transform((v) => v ?? undefined)
    .optional();

const deviceNodeSchema = z.looseObject({
  id: absent(z.string()),
  parent: absent(z.string()),
  children: absent(z.array(z.string())),
  pci_bdf: absent(z.string()),
});

const vmInfoSchema = z.looseObject({
  config: z.looseObject({}),
  state: z.enum(["Created", "Running", "Shutdown", "Paused", "BreakPoint"]),
  memory_actual_size: absent(z.number()),
  device_tree: absent(z.record(z.string(), deviceNodeSchema)),
});
export type ChVmInfo = z.output<typeof vmInfoSchema>;

const countersSchema = z.record(z.string(), z.record(z.string(), z.number()));
export type ChVmCounters = z.infer<typeof countersSchema>;

// ---- errors ----

/**
 * A request that did not succeed. `status` is set when CH answered (non-2xx); then `messages`
 * is CH's error chain (v53 sends a JSON array of strings; older releases a plain string).
 * Without `status` the request never got an answer (socket gone, VMM died, timeout): Unavailable;
 * a refused request is Internal (we sent something CH does not take).
 */
export class ChApiError extends ShimError {
  override readonly name = "ChApiError";
  constructor(
    readonly method: string,
    readonly endpoint: string,
    readonly status: number | undefined,
    readonly messages: string[],
    options?: { cause?: unknown },
  ) {
    const what = `cloud-hypervisor API ${method} ${endpoint}`;
    const detail = messages.join(": ");
    super(
      status === undefined ? "Unavailable" : "Internal",
      status === undefined
        ? `${what}: no answer: ${detail}`
        : `${what} answered ${status}${detail ? `: ${detail}` : ""}`,
      options,
    );
  }
}

/** CH's error body: a JSON array of messages (v53), a JSON string, or plain text. */
export function errorMessages(body: string): string[] {
  const text = body.trim();
  if (!text) return [];
  try {
    const parsed: unknown = JSON.parse(text);
    if (Array.isArray(parsed) && parsed.every((m) => typeof m === "string")) return parsed as string[];
    if (typeof parsed === "string") return [parsed];
  } catch {
    // not JSON: plain text
  }
  return [text.slice(0, 2000)];
}

const MAX_RESPONSE_BYTES = 4 * 1024 * 1024;

export interface ChApiClientOptions {
  /** Per-request limit (default 30 s). */
  timeoutMs?: number;
  /** Aborting it fails every pending and later request at once (e.g. when the VMM exits). */
  signal?: AbortSignal;
}

type Method = "GET" | "PUT";

export class ChApiClient {
  private readonly timeoutMs: number;

  constructor(
    readonly socketPath: string,
    private readonly opts: ChApiClientOptions = {},
  ) {
    this.timeoutMs = opts.timeoutMs ?? 30_000;
  }

  ping(): Promise<ChVmmPing> {
    return this.json("GET", "vmm.ping", undefined, pingSchema);
  }

  async shutdownVmm(): Promise<void> {
    await this.request("PUT", "vmm.shutdown");
  }

  async createVm(config: ChVmConfig): Promise<void> {
    await this.request("PUT", "vm.create", config);
  }

  async bootVm(): Promise<void> {
    await this.request("PUT", "vm.boot");
  }

  async shutdownVm(): Promise<void> {
    await this.request("PUT", "vm.shutdown");
  }

  async deleteVm(): Promise<void> {
    await this.request("PUT", "vm.delete");
  }

  async pauseVm(): Promise<void> {
    await this.request("PUT", "vm.pause");
  }

  async resumeVm(): Promise<void> {
    await this.request("PUT", "vm.resume");
  }

  info(): Promise<ChVmInfo> {
    return this.json("GET", "vm.info", undefined, vmInfoSchema);
  }

  counters(): Promise<ChVmCounters> {
    return this.json("GET", "vm.counters", undefined, countersSchema);
  }

  /** Hot-plugs a disk; on a booted VM CH answers its PCI address (a cold add answers 204). */
  addDisk(disk: ChDiskConfig): Promise<ChPciDeviceInfo | undefined> {
    return this.optionalJson("vm.add-disk", disk, pciDeviceInfoSchema);
  }

  addFs(fs: ChFsConfig): Promise<ChPciDeviceInfo | undefined> {
    return this.optionalJson("vm.add-fs", fs, pciDeviceInfoSchema);
  }

  addNet(nic: ChNetConfig): Promise<ChPciDeviceInfo | undefined> {
    return this.optionalJson("vm.add-net", nic, pciDeviceInfoSchema);
  }

  /** Asks the guest to release a device; CH answers before the guest has (see vm.info). */
  async removeDevice(id: string): Promise<void> {
    await this.request("PUT", "vm.remove-device", { id });
  }

  private async json<T>(method: Method, endpoint: string, body: unknown, schema: z.ZodType<T>): Promise<T> {
    const res = await this.request(method, endpoint, body);
    return this.parse(method, endpoint, res.body, schema);
  }

  private async optionalJson<T>(
    endpoint: string,
    body: unknown,
    schema: z.ZodType<T>,
  ): Promise<T | undefined> {
    const res = await this.request("PUT", endpoint, body);
    return res.status === 204 || !res.body.trim() ? undefined : this.parse("PUT", endpoint, res.body, schema);
  }

  private parse<T>(method: Method, endpoint: string, body: string, schema: z.ZodType<T>): T {
    let doc: unknown;
    try {
      doc = JSON.parse(body);
    } catch (err) {
      throw new ChApiError(method, `${CH_API_ROOT}/${endpoint}`, 200, [
        `the answer is not JSON: ${(err as Error).message}`,
      ]);
    }
    const result = schema.safeParse(doc);
    if (!result.success) {
      const issue = result.error.issues[0];
      throw new ChApiError(method, `${CH_API_ROOT}/${endpoint}`, 200, [
        `unexpected answer: ${issue ? `${issue.path.join(".") || "(body)"}: ${issue.message}` : "invalid"}`,
      ]);
    }
    return result.data;
  }

  /**
   * One request on a fresh connection. Bodies always carry Content-Length (CH's HTTP server
   * does not decode chunked bodies); an action without a body sends none (CH answers 400 to a
   * body it does not expect).
   */
  request(method: Method, endpoint: string, body?: unknown): Promise<{ status: number; body: string }> {
    const urlPath = `${CH_API_ROOT}/${endpoint}`;
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const fail = (messages: string[], cause?: unknown) =>
      new ChApiError(method, urlPath, undefined, messages, { cause });
    const signal = this.opts.signal;
    if (signal?.aborted) return Promise.reject(fail([reasonText(signal.reason)]));
    return new Promise((resolve, reject) => {
      let settled = false;
      const settle = (err: Error | undefined, value?: { status: number; body: string }) => {
        if (settled) return;
        settled = true;
        signal?.removeEventListener("abort", onAbort);
        clearTimeout(timer);
        if (err) reject(err);
        else if (value) resolve(value);
      };
      const req = http.request({
        socketPath: this.socketPath,
        method,
        path: urlPath,
        agent: false,
        headers: {
          Host: "localhost",
          Accept: "application/json",
          "Content-Length": payload?.length ?? 0,
          ...(payload ? { "Content-Type": "application/json" } : {}),
        },
      });
      const onAbort = () => {
        settle(fail([reasonText(signal?.reason)]));
        req.destroy();
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      const timer = setTimeout(() => {
        settle(fail([`no answer in ${this.timeoutMs} ms`]));
        req.destroy();
      }, this.timeoutMs);
      req.on("error", (err) => settle(fail([err.message], err)));
      req.on("response", (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (chunk: Buffer) => {
          size += chunk.length;
          if (size > MAX_RESPONSE_BYTES) {
            settle(fail([`answer larger than ${MAX_RESPONSE_BYTES} bytes`]));
            req.destroy();
          } else chunks.push(chunk);
        });
        res.on("error", (err) => settle(fail([err.message], err)));
        res.on("aborted", () => settle(fail(["the connection closed mid-answer"])));
        res.on("end", () => {
          const status = res.statusCode ?? 0;
          const text = Buffer.concat(chunks).toString("utf8");
          if (status >= 200 && status < 300) settle(undefined, { status, body: text });
          else settle(new ChApiError(method, urlPath, status, errorMessages(text)));
        });
      });
      req.end(payload);
    });
  }
}

function reasonText(reason: unknown): string {
  if (reason instanceof Error) return reason.message;
  return typeof reason === "string" ? reason : "aborted";
}
