// Typed client for the guest agent's ttrpc service (shim/proto/agent.proto). The guest is
// untrusted: every reply is bounded and checked before the host uses it.
import type { CallOptions, TtrpcClient } from "../ttrpc/client.js";
import { messageCodec } from "../ttrpc/proto.js";
import { Code, TtrpcError } from "../ttrpc/status.js";

const SERVICE = "cloudhv.agent.v1.Agent";
const PROTO = "agent.proto";

export interface HealthResponse {
  status: "STATUS_UNSPECIFIED" | "SERVING";
  uptimeNs: number;
}

export interface VersionResponse {
  agentVersion: string;
  protocolVersion: number;
  kernelRelease: string;
  runtimeVersion: string;
}

export interface ProcessRef {
  containerId: string;
  /** "" for the container's init process. */
  execId: string;
}

export interface CreateContainerRequest {
  containerId: string;
  ociSpec: Uint8Array;
  rootfsSerial: string;
  scratchSerial: string;
  terminal: boolean;
  stdin: boolean;
}

export interface ExecProcessRequest extends ProcessRef {
  processSpec: Uint8Array;
  terminal: boolean;
  stdin: boolean;
}

export interface WaitProcessResponse {
  exitStatus: number;
  exitedAtUnixNs: number;
  oomKilled: boolean;
}

export interface ContainerStats {
  cpuUsageNs: number;
  memoryUsageBytes: number;
  memoryLimitBytes: number;
  pidsCurrent: number;
}

export type StdStream = "STDOUT" | "STDERR";

export interface PutFile {
  path: string;
  data: Uint8Array;
  mode: number;
  symlink: string;
  isDir: boolean;
}

export interface GuestNetwork {
  interfaces: Array<{ mac: string; mtu: number; addresses: Array<{ address: string; prefixLen: number }> }>;
  routes: Array<{ dest: string; gateway: string; mac: string }>;
}

type Empty = Record<string, never>;

function codec<T>(name: string) {
  return messageCodec<T>(PROTO, `cloudhv.agent.v1.${name}`);
}

const codecs = {
  Empty: codec<Empty>("Empty"),
  HealthRequest: codec<Empty>("HealthRequest"),
  HealthResponse: codec<HealthResponse>("HealthResponse"),
  VersionRequest: codec<Empty>("VersionRequest"),
  VersionResponse: codec<VersionResponse>("VersionResponse"),
  ContainerRef: codec<{ containerId: string }>("ContainerRef"),
  ProcessRef: codec<ProcessRef>("ProcessRef"),
  CreateContainerRequest: codec<CreateContainerRequest>("CreateContainerRequest"),
  CreateContainerResponse: codec<{ pid: number }>("CreateContainerResponse"),
  ExecProcessRequest: codec<ExecProcessRequest>("ExecProcessRequest"),
  StartProcessResponse: codec<{ pid: number }>("StartProcessResponse"),
  SignalProcessRequest: codec<ProcessRef & { signal: number; all: boolean }>("SignalProcessRequest"),
  WaitProcessResponse: codec<WaitProcessResponse>("WaitProcessResponse"),
  ReadStreamRequest: codec<ProcessRef & { stream: StdStream; maxBytes: number }>("ReadStreamRequest"),
  ReadStreamResponse: codec<{ data: Buffer; eof: boolean }>("ReadStreamResponse"),
  WriteStdinRequest: codec<ProcessRef & { data: Uint8Array }>("WriteStdinRequest"),
  WriteStdinResponse: codec<{ written: number }>("WriteStdinResponse"),
  ResizePtyRequest: codec<ProcessRef & { width: number; height: number }>("ResizePtyRequest"),
  ListPidsResponse: codec<{ pids: number[] }>("ListPidsResponse"),
  ContainerStatsResponse: codec<ContainerStats>("ContainerStatsResponse"),
  ConfigureNetworkRequest: codec<GuestNetwork>("ConfigureNetworkRequest"),
  PutFilesRequest: codec<{ dir: string; files: PutFile[] }>("PutFilesRequest"),
};

/** The protocol version this host side speaks; the agent reports its own in Version. */
export const AGENT_PROTOCOL_VERSION = 1;
/** Largest stdout/stderr chunk asked for in one ReadStream. */
export const READ_CHUNK_BYTES = 256 * 1024;
const MAX_PID = 4_194_304;

function invalid(what: string): never {
  throw new TtrpcError(Code.DATA_LOSS, `guest agent sent an invalid ${what}`);
}

function checkPid(pid: number, what: string): number {
  if (!Number.isInteger(pid) || pid <= 0 || pid > MAX_PID) invalid(`${what} pid ${pid}`);
  return pid;
}

export class AgentClient {
  constructor(readonly ttrpc: TtrpcClient) {}

  private async call<Req, Res>(
    method: string,
    reqCodec: { encode(v: Req): Uint8Array },
    req: Req,
    resCodec: { decode(b: Uint8Array): Res },
    opts?: CallOptions,
  ): Promise<Res> {
    return resCodec.decode(await this.ttrpc.call(SERVICE, method, reqCodec.encode(req), opts));
  }

  health(opts?: CallOptions): Promise<HealthResponse> {
    return this.call("Health", codecs.HealthRequest, {}, codecs.HealthResponse, opts);
  }

  async version(opts?: CallOptions): Promise<VersionResponse> {
    const version = await this.call("Version", codecs.VersionRequest, {}, codecs.VersionResponse, opts);
    for (const key of ["agentVersion", "kernelRelease", "runtimeVersion"] as const) {
      if (version[key].length > 256) version[key] = `${version[key].slice(0, 256)}…`;
    }
    return version;
  }

  async createContainer(req: CreateContainerRequest, opts?: CallOptions): Promise<number> {
    const res = await this.call(
      "CreateContainer",
      codecs.CreateContainerRequest,
      req,
      codecs.CreateContainerResponse,
      opts,
    );
    return checkPid(res.pid, "container");
  }

  async execProcess(req: ExecProcessRequest, opts?: CallOptions): Promise<void> {
    await this.call("ExecProcess", codecs.ExecProcessRequest, req, codecs.Empty, opts);
  }

  async startProcess(ref: ProcessRef, opts?: CallOptions): Promise<number> {
    const res = await this.call("StartProcess", codecs.ProcessRef, ref, codecs.StartProcessResponse, opts);
    return checkPid(res.pid, "started process");
  }

  async signalProcess(ref: ProcessRef, signal: number, all: boolean, opts?: CallOptions): Promise<void> {
    await this.call(
      "SignalProcess",
      codecs.SignalProcessRequest,
      { ...ref, signal, all },
      codecs.Empty,
      opts,
    );
  }

  async waitProcess(ref: ProcessRef, opts?: CallOptions): Promise<WaitProcessResponse> {
    const res = await this.call("WaitProcess", codecs.ProcessRef, ref, codecs.WaitProcessResponse, opts);
    if (!Number.isInteger(res.exitStatus) || res.exitStatus < 0 || res.exitStatus > 255 + 128) {
      invalid(`exit status ${res.exitStatus}`);
    }
    return res;
  }

  async readStream(
    ref: ProcessRef,
    stream: StdStream,
    opts?: CallOptions,
  ): Promise<{ data: Buffer; eof: boolean }> {
    const req = { ...ref, stream, maxBytes: READ_CHUNK_BYTES };
    const res = await this.call("ReadStream", codecs.ReadStreamRequest, req, codecs.ReadStreamResponse, opts);
    if (res.data.length > READ_CHUNK_BYTES) invalid(`${stream} chunk of ${res.data.length} bytes`);
    return res;
  }

  async writeStdin(ref: ProcessRef, data: Uint8Array, opts?: CallOptions): Promise<number> {
    const res = await this.call(
      "WriteStdin",
      codecs.WriteStdinRequest,
      { ...ref, data },
      codecs.WriteStdinResponse,
      opts,
    );
    if (res.written > data.length) invalid(`stdin write count ${res.written}`);
    return res.written;
  }

  async closeStdin(ref: ProcessRef, opts?: CallOptions): Promise<void> {
    await this.call("CloseStdin", codecs.ProcessRef, ref, codecs.Empty, opts);
  }

  async resizePty(ref: ProcessRef, width: number, height: number, opts?: CallOptions): Promise<void> {
    await this.call("ResizePty", codecs.ResizePtyRequest, { ...ref, width, height }, codecs.Empty, opts);
  }

  async listPids(containerId: string, opts?: CallOptions): Promise<number[]> {
    const res = await this.call(
      "ListPids",
      codecs.ContainerRef,
      { containerId },
      codecs.ListPidsResponse,
      opts,
    );
    if (res.pids.length > 65_536) invalid(`pid list of ${res.pids.length} entries`);
    return res.pids.map((pid) => checkPid(pid, "listed"));
  }

  containerStats(containerId: string, opts?: CallOptions): Promise<ContainerStats> {
    return this.call(
      "ContainerStats",
      codecs.ContainerRef,
      { containerId },
      codecs.ContainerStatsResponse,
      opts,
    );
  }

  async configureNetwork(network: GuestNetwork, opts?: CallOptions): Promise<void> {
    await this.call("ConfigureNetwork", codecs.ConfigureNetworkRequest, network, codecs.Empty, opts);
  }

  async putFiles(dir: string, files: PutFile[], opts?: CallOptions): Promise<void> {
    await this.call("PutFiles", codecs.PutFilesRequest, { dir, files }, codecs.Empty, opts);
  }

  async removeContainer(containerId: string, opts?: CallOptions): Promise<void> {
    await this.call("RemoveContainer", codecs.ContainerRef, { containerId }, codecs.Empty, opts);
  }

  close(): void {
    this.ttrpc.close();
  }
}
