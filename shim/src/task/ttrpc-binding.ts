// Puts the task service on the wire as containerd.task.v2.Task: decodes requests, takes the
// namespace from ttrpc metadata, encodes responses. Unsupported methods say so by name.

import { invalid, ShimError } from "../errors.js";
import { type MessageCodec, messageCodec, type ProtoName } from "../ttrpc/proto.js";
import type { CallContext, MethodHandler, TtrpcServer } from "../ttrpc/server.js";
import type { TaskService } from "./service.js";

export const TASK_SERVICE = "containerd.task.v2.Task";
/** containerd puts the namespace of every shim call in this ttrpc metadata key. */
export const NAMESPACE_HEADER = "containerd-namespace-ttrpc";

/** The task API's messages by short name ("CreateTaskRequest" for containerd.task.v2.…). */
type TaskMessage = ProtoName extends infer P
  ? P extends `containerd.task.v2.${infer S}`
    ? S
    : never
  : never;
const c = <N extends TaskMessage>(name: N) => messageCodec(`containerd.task.v2.${name}`);

// Requests decode to the generated shapes and responses encode from them in full, so a field
// renamed in task.proto fails the build here, where the service's own types meet the wire.
const codecs = {
  Empty: messageCodec("cloudhv.wellknown.Empty"),
  CreateTaskRequest: c("CreateTaskRequest"),
  CreateTaskResponse: c("CreateTaskResponse"),
  StartRequest: c("StartRequest"),
  StartResponse: c("StartResponse"),
  DeleteRequest: c("DeleteRequest"),
  DeleteResponse: c("DeleteResponse"),
  StateRequest: c("StateRequest"),
  StateResponse: c("StateResponse"),
  KillRequest: c("KillRequest"),
  WaitRequest: c("WaitRequest"),
  WaitResponse: c("WaitResponse"),
  PidsRequest: c("PidsRequest"),
  PidsResponse: c("PidsResponse"),
  ExecProcessRequest: c("ExecProcessRequest"),
  ResizePtyRequest: c("ResizePtyRequest"),
  CloseIORequest: c("CloseIORequest"),
  ConnectRequest: c("ConnectRequest"),
  ConnectResponse: c("ConnectResponse"),
  ShutdownRequest: c("ShutdownRequest"),
  StatsRequest: c("StatsRequest"),
  PauseRequest: c("PauseRequest"),
  ResumeRequest: c("ResumeRequest"),
  StatsResponse: c("StatsResponse"),
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
