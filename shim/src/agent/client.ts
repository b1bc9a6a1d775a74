// Typed client for the guest agent's ttrpc service (shim/proto/agent.proto; the types are
// generated from it). The guest is untrusted: every reply is bounded and checked before the
// host uses it, and its errors reach containerd only through the allow-list of errors.ts.
import { fromAgentCall, ShimError, truncateUntrusted } from "../errors.js";
import type { CallOptions, TtrpcClient } from "../ttrpc/client.js";
import { type MessageCodec, messageCodec, type ProtoMessage, type ProtoName } from "../ttrpc/proto.js";

const SERVICE = "cloudhv.agent.v1.Agent";

/** The agent's messages by short name ("HealthResponse" for cloudhv.agent.v1.HealthResponse). */
type AgentMessage = ProtoName extends infer P ? (P extends `cloudhv.agent.v1.${infer S}` ? S : never) : never;
type M<N extends AgentMessage> = ProtoMessage<`cloudhv.agent.v1.${N}`>;

// Requests are the full generated shapes (not ProtoInput): a field added or renamed in
// agent.proto must fail the build where the host builds the request.
export type HealthResponse = M<"HealthResponse">;
export type VersionResponse = M<"VersionResponse">;
export type ProcessRef = M<"ProcessRef">;
export type CreateContainerRequest = M<"CreateContainerRequest">;
export type ExecProcessRequest = M<"ExecProcessRequest">;
export type WaitProcessResponse = M<"WaitProcessResponse">;
export type ContainerStats = M<"ContainerStatsResponse">;
export type StdStream = M<"ReadStreamRequest">["stream"];
export type PutFile = M<"PutFile">;
export type GuestNetwork = M<"ConfigureNetworkRequest">;

const codec = <N extends AgentMessage>(name: N) => messageCodec(`cloudhv.agent.v1.${name}`);

const codecs = {
  Empty: codec("Empty"),
  HealthRequest: codec("HealthRequest"),
  HealthResponse: codec("HealthResponse"),
  VersionRequest: codec("VersionRequest"),
  VersionResponse: codec("VersionResponse"),
  ContainerRef: codec("ContainerRef"),
  ProcessRef: codec("ProcessRef"),
  CreateContainerRequest: codec("CreateContainerRequest"),
  CreateContainerResponse: codec("CreateContainerResponse"),
  ExecProcessRequest: codec("ExecProcessRequest"),
  StartProcessResponse: codec("StartProcessResponse"),
  SignalProcessRequest: codec("SignalProcessRequest"),
  WaitProcessResponse: codec("WaitProcessResponse"),
  ReadStreamRequest: codec("ReadStreamRequest"),
  ReadStreamResponse: codec("ReadStreamResponse"),
  WriteStdinRequest: codec("WriteStdinRequest"),
  WriteStdinResponse: codec("WriteStdinResponse"),
  ResizePtyRequest: codec("ResizePtyRequest"),
  ListPidsResponse: codec("ListPidsResponse"),
  ContainerStatsResponse: codec("ContainerStatsResponse"),
  ConfigureNetworkRequest: codec("ConfigureNetworkRequest"),
  PutFilesRequest: codec("PutFilesRequest"),
  PortForwardOpenRequest: codec("PortForwardOpenRequest"),
  PortForwardOpenResponse: codec("PortForwardOpenResponse"),
  PortForwardReadRequest: codec("PortForwardReadRequest"),
  PortForwardWriteRequest: codec("PortForwardWriteRequest"),
  PortForwardCloseRequest: codec("PortForwardCloseRequest"),
  OnlineResourcesResponse: codec("OnlineResourcesResponse"),
};

/** The protocol version this host side speaks; `checkProtocol` refuses an agent with another. */
export const AGENT_PROTOCOL_VERSION = 1;
/** Largest stdout/stderr chunk asked for in one ReadStream. */
export const READ_CHUNK_BYTES = 256 * 1024;
const MAX_PID = 4_194_304;
/**
 * Every call without its own deadline gets this one: a guest that never answers must not hold
 * a containerd request (and the resources behind it) forever. The long polls are exempt: they
 * wait, by design, as long as the process runs or its pipe is full.
 */
export const DEFAULT_CALL_TIMEOUT_MS = 120_000;
const LONG_POLLS = new Set([
  "WaitProcess",
  "ReadStream",
  "WriteStdin",
  "PortForwardRead",
  "PortForwardWrite",
]);
const MAX_VERSION_TEXT = 256;

function invalid(what: string): never {
  throw new ShimError("DataLoss", `guest agent sent an invalid ${truncateUntrusted(what)}`);
}

function checkPid(pid: number, what: string): number {
  if (!Number.isInteger(pid) || pid <= 0 || pid > MAX_PID) invalid(`${what} pid ${pid}`);
  return pid;
}

export class AgentClient {
  constructor(
    readonly ttrpc: TtrpcClient,
    private readonly defaultTimeoutMs = DEFAULT_CALL_TIMEOUT_MS,
    /** The VM this agent runs in: errors name it, and its log lines are limited by it. */
    readonly guest?: string,
  ) {}

  private async call<Req, Res>(
    method: string,
    reqCodec: MessageCodec<Req>,
    req: Req,
    resCodec: MessageCodec<Res>,
    opts?: CallOptions,
  ): Promise<Res> {
    let reply: Buffer;
    const deadline =
      opts?.timeoutMs !== undefined || LONG_POLLS.has(method)
        ? opts
        : { ...opts, timeoutMs: this.defaultTimeoutMs };
    try {
      reply = await this.ttrpc.call(SERVICE, method, reqCodec.encode(req), deadline);
    } catch (err) {
      throw fromAgentCall(method, err, this.guest);
    }
    try {
      return resCodec.decode(reply);
    } catch (err) {
      invalid(`${method} reply (${(err as Error).message})`);
    }
  }

  health(opts?: CallOptions): Promise<HealthResponse> {
    return this.call("Health", codecs.HealthRequest, {}, codecs.HealthResponse, opts);
  }

  async version(opts?: CallOptions): Promise<VersionResponse> {
    const version = await this.call("Version", codecs.VersionRequest, {}, codecs.VersionResponse, opts);
    for (const key of ["agentVersion", "kernelRelease", "runtimeVersion"] as const)
      version[key] = truncateUntrusted(version[key], MAX_VERSION_TEXT);
    return version;
  }

  /** Asks the agent its protocol version; one this host does not speak fails with both named. */
  async checkProtocol(opts?: CallOptions): Promise<VersionResponse> {
    const version = await this.version(opts);
    if (version.protocolVersion !== AGENT_PROTOCOL_VERSION) {
      throw new ShimError(
        "FailedPrecondition",
        `the guest agent (${version.agentVersion}) speaks agent protocol ${version.protocolVersion}, ` +
          `this shim speaks ${AGENT_PROTOCOL_VERSION}: install the guest rootfs built with this shim ` +
          "(rootfs_path in the runtime config)",
      );
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
    // Decoded bytes are Buffers (messageCodec's bytes option); this is a view, not a copy.
    return { data: Buffer.from(res.data.buffer, res.data.byteOffset, res.data.length), eof: res.eof };
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

  /** Onlines hot-plugged CPUs and memory in the guest; what is online (guest-reported: untrusted). */
  async onlineResources(opts?: CallOptions): Promise<{ memTotalKiB: number; onlineCpus: number }> {
    const res = await this.call("OnlineResources", codecs.Empty, {}, codecs.OnlineResourcesResponse, opts);
    return { memTotalKiB: Number(res.memTotalKib), onlineCpus: Number(res.onlineCpus) };
  }

  async putFiles(dir: string, files: PutFile[], opts?: CallOptions): Promise<void> {
    await this.call("PutFiles", codecs.PutFilesRequest, { dir, files }, codecs.Empty, opts);
  }

  async removeContainer(containerId: string, opts?: CallOptions): Promise<void> {
    await this.call("RemoveContainer", codecs.ContainerRef, { containerId }, codecs.Empty, opts);
  }

  /** Opens a TCP connection to `port` on the guest's loopback (port-forward); its id. */
  async portForwardOpen(port: number, opts?: CallOptions): Promise<number> {
    const res = await this.call(
      "PortForwardOpen",
      codecs.PortForwardOpenRequest,
      { port },
      codecs.PortForwardOpenResponse,
      opts,
    );
    if (!Number.isSafeInteger(res.connId) || res.connId <= 0)
      invalid(`port-forward connection id ${res.connId}`);
    return res.connId;
  }

  async portForwardRead(connId: number, opts?: CallOptions): Promise<{ data: Buffer; eof: boolean }> {
    const req = { connId, maxBytes: READ_CHUNK_BYTES };
    const res = await this.call(
      "PortForwardRead",
      codecs.PortForwardReadRequest,
      req,
      codecs.ReadStreamResponse,
      opts,
    );
    if (res.data.length > READ_CHUNK_BYTES) invalid(`port-forward chunk of ${res.data.length} bytes`);
    return { data: Buffer.from(res.data.buffer, res.data.byteOffset, res.data.length), eof: res.eof };
  }

  async portForwardWrite(connId: number, data: Uint8Array, opts?: CallOptions): Promise<void> {
    await this.call("PortForwardWrite", codecs.PortForwardWriteRequest, { connId, data }, codecs.Empty, opts);
  }

  async portForwardClose(connId: number, writeOnly: boolean, opts?: CallOptions): Promise<void> {
    await this.call(
      "PortForwardClose",
      codecs.PortForwardCloseRequest,
      { connId, writeOnly },
      codecs.Empty,
      opts,
    );
  }

  close(): void {
    this.ttrpc.close();
  }
}
