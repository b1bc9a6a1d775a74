// An in-process guest agent: our own ttrpc server speaking agent.proto with our codecs, keeping
// containers and processes in memory. The shim's AgentClient talks to it over a real unix
// socket, so unit tests exercise the same wire path as a VM, minus the VM. Every call is
// recorded, and any method can be made to fail once.

import { AGENT_PROTOCOL_VERSION } from "../../src/agent/client.js";
import { type MessageCodec, messageCodec, type ProtoName } from "../../src/ttrpc/proto.js";
import type { MethodHandler } from "../../src/ttrpc/server.js";
import { TtrpcServer } from "../../src/ttrpc/server.js";
import { Code, TtrpcError } from "../../src/ttrpc/status.js";

const SERVICE = "cloudhv.agent.v1.Agent";
// The handlers read only the fields they name, so each states its own narrow view of a message.
const codec = <T>(name: string) =>
  messageCodec(`cloudhv.agent.v1.${name}` as ProtoName) as unknown as MessageCodec<T>;

interface Ref {
  containerId: string;
  execId: string;
}

interface GuestProcess {
  pid: number;
  state: "created" | "running" | "exited";
  exitStatus: number;
  exited: Promise<void>;
  exit(status: number): void;
}

export interface AgentCall {
  method: string;
  containerId: string;
  execId: string;
}

function guestProcess(pid: number): GuestProcess {
  let resolve!: () => void;
  const exited = new Promise<void>((r) => {
    resolve = r;
  });
  const proc: GuestProcess = {
    pid,
    state: "created",
    exitStatus: 0,
    exited,
    exit(status) {
      if (proc.state === "exited") return;
      proc.state = "exited";
      proc.exitStatus = status;
      resolve();
    },
  };
  return proc;
}

export class FakeAgent {
  readonly calls: AgentCall[] = [];
  /** Guest containers by id; each maps exec id ("" = init) to its process. */
  readonly containers = new Map<string, Map<string, GuestProcess>>();
  /** The rootfs and scratch serials each CreateContainer named ("" for a sandbox the holder runs). */
  readonly disksAsked = new Map<string, [string, string]>();
  /** What ConfigureNetwork was given last. */
  network: unknown;
  /** Methods that never answer (a wedged guest). */
  readonly hanging = new Set<string>();
  /** Methods held until their release function runs (a slow guest). */
  private readonly held = new Map<string, Promise<void>>();
  /** Each WriteStdin: its size, and how many CloseStdin calls had come before it. */
  readonly stdin: Array<{ execId: string; bytes: number; closedBefore: number }> = [];
  /** ReadStream answers at once with no data and no end, as a hostile guest could. */
  emptyReads = false;
  /** The protocol version Version answers with (a test makes it another build's). */
  protocolVersion = AGENT_PROTOCOL_VERSION;
  private readonly failures = new Map<string, TtrpcError>();
  private readonly server = new TtrpcServer();
  private nextPid = 100;

  constructor() {
    const E = codec<Record<string, never>>("Empty");
    const processRef = codec<Ref>("ProcessRef");
    const containerRef = codec<{ containerId: string }>("ContainerRef");
    this.server.register(SERVICE, {
      Health: this.method("Health", codec("HealthRequest"), codec("HealthResponse"), () => ({
        status: "SERVING",
        uptimeNs: 1,
      })),
      Version: this.method("Version", codec("VersionRequest"), codec("VersionResponse"), () => ({
        agentVersion: "fake",
        protocolVersion: this.protocolVersion,
        kernelRelease: "fake",
        runtimeVersion: "fake",
      })),
      CreateContainer: this.method(
        "CreateContainer",
        codec<{ containerId: string; rootfsSerial: string; scratchSerial: string }>("CreateContainerRequest"),
        codec("CreateContainerResponse"),
        (req) => {
          this.disksAsked.set(req.containerId, [req.rootfsSerial, req.scratchSerial]);
          if (this.containers.has(req.containerId))
            throw new TtrpcError(Code.ALREADY_EXISTS, `container ${req.containerId} exists`);
          const init = guestProcess(this.nextPid++);
          this.containers.set(req.containerId, new Map([["", init]]));
          return { pid: init.pid };
        },
      ),
      ExecProcess: this.method("ExecProcess", codec<Ref>("ExecProcessRequest"), E, (req) => {
        this.container(req.containerId).set(req.execId, guestProcess(0));
        return {};
      }),
      StartProcess: this.method("StartProcess", processRef, codec("StartProcessResponse"), (ref) => {
        const proc = this.process(ref);
        if (proc.pid === 0) proc.pid = this.nextPid++;
        proc.state = "running";
        return { pid: proc.pid };
      }),
      SignalProcess: this.method(
        "SignalProcess",
        codec<Ref & { signal: number }>("SignalProcessRequest"),
        E,
        (req) => {
          const proc = this.process(req);
          if (proc.state === "running") proc.exit(128 + req.signal);
          return {};
        },
      ),
      WaitProcess: this.method(
        "WaitProcess",
        processRef,
        codec("WaitProcessResponse"),
        async (ref, signal) => {
          const proc = this.process(ref);
          await new Promise<void>((resolve, reject) => {
            void proc.exited.then(resolve);
            signal.addEventListener("abort", () => reject(signal.reason), { once: true });
          });
          return { exitStatus: proc.exitStatus, exitedAtUnixNs: Date.now() * 1e6, oomKilled: false };
        },
      ),
      ReadStream: this.method(
        "ReadStream",
        codec<Ref>("ReadStreamRequest"),
        codec("ReadStreamResponse"),
        () => ({
          data: Buffer.alloc(0),
          // A hostile guest can answer "nothing yet" at once, forever (see forward.ts).
          eof: !this.emptyReads,
        }),
      ),
      WriteStdin: this.method(
        "WriteStdin",
        codec<Ref & { data: Uint8Array }>("WriteStdinRequest"),
        codec("WriteStdinResponse"),
        (req) => {
          this.stdin.push({
            execId: req.execId,
            bytes: req.data.length,
            closedBefore: this.called("CloseStdin").length,
          });
          return { written: req.data.length };
        },
      ),
      CloseStdin: this.method("CloseStdin", processRef, E, () => ({})),
      ResizePty: this.method("ResizePty", codec<Ref>("ResizePtyRequest"), E, () => ({})),
      ListPids: this.method("ListPids", containerRef, codec("ListPidsResponse"), (ref) => ({
        pids: [...this.container(ref.containerId).values()].map((p) => p.pid).filter((pid) => pid > 0),
      })),
      ContainerStats: this.method("ContainerStats", containerRef, codec("ContainerStatsResponse"), () => ({
        cpuUsageNs: 5_000_000,
        memoryUsageBytes: 1 << 20,
        memoryLimitBytes: 1 << 28,
        pidsCurrent: 1,
      })),
      RemoveContainer: this.method("RemoveContainer", containerRef, E, (ref) => {
        this.containers.delete(ref.containerId);
        return {};
      }),
      ConfigureNetwork: this.method(
        "ConfigureNetwork",
        codec<Record<string, unknown>>("ConfigureNetworkRequest"),
        E,
        (req) => {
          this.network = req;
          return {};
        },
      ),
      PutFiles: this.method("PutFiles", codec("PutFilesRequest"), E, () => ({})),
    });
  }

  listen(socketPath: string): Promise<void> {
    return this.server.listen(socketPath);
  }

  /** Closes every connection, as a VM that stops or dies does. */
  close(): Promise<void> {
    return this.server.close();
  }

  /** Calls of `method` wait until the returned function is called. */
  hold(method: string): () => void {
    let release = () => {};
    this.held.set(
      method,
      new Promise<void>((resolve) => {
        release = () => {
          this.held.delete(method);
          resolve();
        };
      }),
    );
    return release;
  }

  /** The next call of `method` fails in the guest with `code`. */
  failNext(method: string, code: number = Code.INTERNAL, message = `${method} failed in the guest`): void {
    this.failures.set(method, new TtrpcError(code, message));
  }

  /** A guest process ends by itself (the program exited). */
  exitProcess(containerId: string, execId: string, status: number): void {
    this.process({ containerId, execId }).exit(status);
  }

  called(method: string): AgentCall[] {
    return this.calls.filter((c) => c.method === method);
  }

  private method<Req, Res>(
    name: string,
    req: { decode(b: Uint8Array): Req },
    res: { encode(v: Res): Uint8Array },
    fn: (req: Req, signal: AbortSignal) => Res | Promise<Res>,
  ): MethodHandler {
    return async (payload, ctx) => {
      const decoded = req.decode(payload);
      const ref = decoded as Partial<Ref>;
      this.calls.push({ method: name, containerId: ref.containerId ?? "", execId: ref.execId ?? "" });
      if (this.hanging.has(name)) await new Promise(() => {});
      await this.held.get(name);
      const failure = this.failures.get(name);
      if (failure) {
        this.failures.delete(name);
        throw failure;
      }
      return res.encode(await fn(decoded, ctx.signal));
    };
  }

  private container(id: string): Map<string, GuestProcess> {
    const container = this.containers.get(id);
    if (!container) throw new TtrpcError(Code.NOT_FOUND, `container ${id} not found`);
    return container;
  }

  private process(ref: Ref): GuestProcess {
    const proc = this.container(ref.containerId).get(ref.execId);
    if (!proc) throw new TtrpcError(Code.NOT_FOUND, `process ${ref.containerId}/${ref.execId} not found`);
    return proc;
  }
}
