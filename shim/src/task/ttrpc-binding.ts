// Puts the task service on the wire as containerd.task.v2.Task: decodes requests, takes the
// namespace from ttrpc metadata, encodes responses. Unsupported methods say so by name.
import type { MessageCodec } from "../ttrpc/proto.js";
import { messageCodec } from "../ttrpc/proto.js";
import type { CallContext, MethodHandler, TtrpcServer } from "../ttrpc/server.js";
import { invalid, ShimError } from "./errors.js";
import type { CreateTaskRequest, ExecRequest, TaskService, TaskState } from "./service.js";

export const TASK_SERVICE = "containerd.task.v2.Task";
/** containerd puts the namespace of every shim call in this ttrpc metadata key. */
export const NAMESPACE_HEADER = "containerd-namespace-ttrpc";

const PROTO = "containerd/task.proto";
const c = <T>(name: string): MessageCodec<T> => messageCodec<T>(PROTO, `containerd.task.v2.${name}`);

interface IdReq {
  id: string;
  execId: string;
}

const codecs = {
  Empty: messageCodec<Record<string, never>>("wellknown.proto", "cloudhv.wellknown.Empty"),
  CreateTaskRequest: c<CreateTaskRequest>("CreateTaskRequest"),
  CreateTaskResponse: c<{ pid: number }>("CreateTaskResponse"),
  StartRequest: c<IdReq>("StartRequest"),
  StartResponse: c<{ pid: number }>("StartResponse"),
  DeleteRequest: c<IdReq>("DeleteRequest"),
  DeleteResponse: c<{ pid: number; exitStatus: number; exitedAt: unknown }>("DeleteResponse"),
  StateRequest: c<IdReq>("StateRequest"),
  StateResponse: c<TaskState>("StateResponse"),
  KillRequest: c<IdReq & { signal: number; all: boolean }>("KillRequest"),
  WaitRequest: c<IdReq>("WaitRequest"),
  WaitResponse: c<{ exitStatus: number; exitedAt: unknown }>("WaitResponse"),
  PidsRequest: c<{ id: string }>("PidsRequest"),
  PidsResponse: c<{ processes: Array<{ pid: number }> }>("PidsResponse"),
  ExecProcessRequest: c<ExecRequest>("ExecProcessRequest"),
  ResizePtyRequest: c<IdReq & { width: number; height: number }>("ResizePtyRequest"),
  CloseIORequest: c<IdReq & { stdin: boolean }>("CloseIORequest"),
  ConnectRequest: c<{ id: string }>("ConnectRequest"),
  ConnectResponse: c<{ shimPid: number; taskPid: number; version: string }>("ConnectResponse"),
  ShutdownRequest: c<{ id: string; now: boolean }>("ShutdownRequest"),
  StatsRequest: c<{ id: string }>("StatsRequest"),
  PauseRequest: c<{ id: string }>("PauseRequest"),
  ResumeRequest: c<{ id: string }>("ResumeRequest"),
  StatsResponse: c<{ stats: { typeUrl: string; value: Uint8Array } }>("StatsResponse"),
};

/**
 * containerd does not always put the namespace in the ttrpc metadata (1.6 omits it on task
 * calls), so every namespace gets its own listener and the listener says which it is.
 */
function namespaceOf(ctx: CallContext): string {
  const ns = ctx.metadata.find((kv) => kv.key === NAMESPACE_HEADER)?.value ?? ctx.listener.namespace;
  if (!ns) throw invalid(`${ctx.method}: no containerd namespace in the request or the listener`);
  return ns;
}

function unary<Req, Res>(
  reqCodec: MessageCodec<Req>,
  resCodec: MessageCodec<Res>,
  fn: (ns: string, req: Req) => Promise<Res> | Res,
): MethodHandler {
  return async (payload, ctx) => resCodec.encode(await fn(namespaceOf(ctx), reqCodec.decode(payload)));
}

const empty = {};

function unsupported(what: string): MethodHandler {
  return async () => {
    throw new ShimError("Unimplemented", `${what} is not supported by the cloudhv runtime`);
  };
}

export function bindTaskService(server: TtrpcServer, tasks: TaskService, onShutdown: () => void): void {
  server.register(TASK_SERVICE, {
    Create: unary(codecs.CreateTaskRequest, codecs.CreateTaskResponse, (ns, r) => tasks.create(ns, r)),
    Start: unary(codecs.StartRequest, codecs.StartResponse, (ns, r) => tasks.start(ns, r.id, r.execId)),
    Delete: unary(codecs.DeleteRequest, codecs.DeleteResponse, (ns, r) => tasks.delete(ns, r.id, r.execId)),
    State: unary(codecs.StateRequest, codecs.StateResponse, (ns, r) => tasks.state(ns, r.id, r.execId)),
    Kill: unary(codecs.KillRequest, codecs.Empty, async (ns, r) => {
      await tasks.kill(ns, r.id, r.execId, r.signal, r.all);
      return empty;
    }),
    Wait: unary(codecs.WaitRequest, codecs.WaitResponse, (ns, r) => tasks.wait(ns, r.id, r.execId)),
    Pids: unary(codecs.PidsRequest, codecs.PidsResponse, async (ns, r) => ({
      processes: (await tasks.pids(ns, r.id)).map((pid) => ({ pid })),
    })),
    Exec: unary(codecs.ExecProcessRequest, codecs.Empty, async (ns, r) => {
      await tasks.exec(ns, r);
      return empty;
    }),
    ResizePty: unary(codecs.ResizePtyRequest, codecs.Empty, async (ns, r) => {
      await tasks.resizePty(ns, r.id, r.execId, r.width, r.height);
      return empty;
    }),
    CloseIO: unary(codecs.CloseIORequest, codecs.Empty, async (ns, r) => {
      await tasks.closeIO(ns, r.id, r.execId, r.stdin);
      return empty;
    }),
    Connect: unary(codecs.ConnectRequest, codecs.ConnectResponse, (ns, r) => tasks.connect(ns, r.id)),
    Shutdown: unary(codecs.ShutdownRequest, codecs.Empty, () => {
      onShutdown();
      return empty;
    }),
    Pause: unary(codecs.PauseRequest, codecs.Empty, async (ns, r) => {
      await tasks.pause(ns, r.id);
      return empty;
    }),
    Resume: unary(codecs.ResumeRequest, codecs.Empty, async (ns, r) => {
      await tasks.resume(ns, r.id);
      return empty;
    }),
    Checkpoint: unsupported("Checkpoint"),
    Update: unsupported("Update (resizing a running task)"),
    Stats: unary(codecs.StatsRequest, codecs.StatsResponse, async (ns, r) => ({
      stats: await tasks.stats(ns, r.id),
    })),
  });
}
