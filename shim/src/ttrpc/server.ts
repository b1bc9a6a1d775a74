// ttrpc server: serves registered services on unix sockets. Every request is isolated — a
// handler that throws becomes a status error on that stream, a malformed frame closes only
// the connection it came on — so one bad caller can never take the process down.
import { rm } from "node:fs/promises";
import net from "node:net";
import type { Duplex } from "node:stream";
import { jsonLineLog, type LineLog } from "../util/json-log.js";
import { DEFAULT_MAX_FRAME_DATA, encodeFrame, FrameDecoder, MessageType } from "./frame.js";
import { type KeyValue, requestCodec, responseCodec, type TtrpcRequest } from "./messages.js";
import { Code, TtrpcError } from "./status.js";

export interface CallContext {
  service: string;
  method: string;
  metadata: KeyValue[];
  /** Aborted when the caller's timeout passes or its connection closes. */
  signal: AbortSignal;
  /** What the listener that accepted the connection was opened with (see listen). */
  listener: Readonly<Record<string, string>>;
}

export type MethodHandler = (payload: Buffer, ctx: CallContext) => Promise<Uint8Array>;

export type StatusMapper = (err: unknown) => { code: number; message: string };

/**
 * Where the server reports bad frames and handler bugs (a pino logger fits). `fromGuest`, when
 * given, takes a failure whose text came from a guest (the daemon rate-limits those per VM).
 */
export type ServerLog = Pick<LineLog, "warn" | "error"> & {
  fromGuest?(guest: string, fields: Record<string, unknown>, msg: string): void;
};

/** Without a logger: JSON lines on stderr (the front does not load pino). */
let stderrLog: ServerLog | undefined;

/** Without a mapper: a TtrpcError keeps its code, anything else is UNKNOWN. */
const defaultStatusOf: StatusMapper = (err) =>
  err instanceof TtrpcError
    ? { code: err.code, message: err.detail }
    : { code: Code.UNKNOWN, message: err instanceof Error ? err.message : String(err) };

export class TtrpcServer {
  private readonly services = new Map<string, Map<string, MethodHandler>>();
  private readonly listeners: Array<{ server: net.Server; path: string }> = [];
  private readonly connections = new Set<Duplex>();

  private readonly log: ServerLog;

  constructor(
    private readonly options: { maxFrameData?: number; statusOf?: StatusMapper; log?: ServerLog } = {},
  ) {
    stderrLog ??= jsonLineLog(2, "cloudhv-ttrpc");
    this.log = options.log ?? stderrLog;
  }

  private get maxFrameData(): number {
    return this.options.maxFrameData ?? DEFAULT_MAX_FRAME_DATA;
  }

  private statusOf(err: unknown): { code: number; message: string } {
    return (this.options.statusOf ?? defaultStatusOf)(err);
  }

  register(service: string, methods: Record<string, MethodHandler>): this {
    const table = this.services.get(service) ?? new Map<string, MethodHandler>();
    for (const [name, handler] of Object.entries(methods)) table.set(name, handler);
    this.services.set(service, table);
    return this;
  }

  /**
   * Listens on a unix socket path (replacing a stale socket file). `attrs` reach every handler
   * called through this listener as `ctx.listener`.
   */
  async listen(path: string, attrs: Record<string, string> = {}): Promise<void> {
    await rm(path, { force: true });
    const server = net.createServer((sock) => this.serve(sock, attrs));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(path, () => {
        server.off("error", reject);
        resolve();
      });
    });
    this.listeners.push({ server, path });
  }

  /** Serves one already-established connection (also used by tests with a socket pair). */
  serve(conn: Duplex, attrs: Readonly<Record<string, string>> = {}): void {
    this.connections.add(conn);
    const decoder = new FrameDecoder(this.maxFrameData);
    const inflight = new Map<number, AbortController>();
    conn.on("data", (chunk: Buffer) => {
      let frames: ReturnType<FrameDecoder["push"]>;
      try {
        frames = decoder.push(chunk);
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, "ttrpc: closing connection after a bad frame");
        conn.destroy();
        return;
      }
      for (const frame of frames) {
        if (frame.type !== MessageType.Request) continue;
        if (frame.streamId % 2 === 0 || inflight.has(frame.streamId)) {
          this.log.warn({ streamId: frame.streamId }, "ttrpc: closing connection after an invalid stream id");
          conn.destroy();
          return;
        }
        const controller = new AbortController();
        inflight.set(frame.streamId, controller);
        void this.dispatch(frame.data, controller, attrs).then((response) => {
          inflight.delete(frame.streamId);
          if (conn.destroyed) return;
          const data = Buffer.from(responseCodec.encode(response));
          try {
            conn.write(
              encodeFrame(
                { streamId: frame.streamId, type: MessageType.Response, flags: 0, data },
                this.maxFrameData,
              ),
            );
          } catch (err) {
            const tooBig = this.statusOf(err);
            const fallback = responseCodec.encode({
              status: { code: Code.RESOURCE_EXHAUSTED, message: tooBig.message },
              payload: Buffer.alloc(0),
            });
            conn.write(
              encodeFrame({
                streamId: frame.streamId,
                type: MessageType.Response,
                flags: 0,
                data: Buffer.from(fallback),
              }),
            );
          }
        });
      }
    });
    conn.on("error", () => {});
    conn.on("close", () => {
      this.connections.delete(conn);
      for (const controller of inflight.values())
        controller.abort(new TtrpcError(Code.CANCELLED, "connection closed"));
    });
  }

  /** Whether a listener is open on `path`. */
  isListening(path: string): boolean {
    return this.listeners.some((l) => l.path === path);
  }

  async close(): Promise<void> {
    for (const conn of this.connections) conn.destroy();
    await Promise.all(
      this.listeners.map(
        ({ server, path }) =>
          new Promise<void>((resolve) =>
            server.close(() => void rm(path, { force: true }).then(() => resolve())),
          ),
      ),
    );
    this.listeners.length = 0;
  }

  private async dispatch(
    data: Buffer,
    controller: AbortController,
    attrs: Readonly<Record<string, string>>,
  ): Promise<{ status: { code: number; message: string } | null; payload: Uint8Array }> {
    let request: TtrpcRequest;
    try {
      request = requestCodec.decode(data);
    } catch (err) {
      return fail(Code.INVALID_ARGUMENT, `undecodable ttrpc request: ${(err as Error).message}`);
    }
    const handler = this.services.get(request.service)?.get(request.method);
    if (!handler) return fail(Code.UNIMPLEMENTED, `${request.service}/${request.method} is not implemented`);
    let timer: NodeJS.Timeout | undefined;
    if (request.timeoutNano > 0) {
      const ms = Math.ceil(request.timeoutNano / 1e6);
      timer = setTimeout(
        () => controller.abort(new TtrpcError(Code.DEADLINE_EXCEEDED, `deadline of ${ms} ms passed`)),
        ms,
      );
    }
    try {
      const payload = await handler(Buffer.from(request.payload), {
        service: request.service,
        method: request.method,
        metadata: request.metadata,
        signal: controller.signal,
        listener: attrs,
      });
      return { status: null, payload };
    } catch (err) {
      const status = this.statusOf(err);
      // Bugs of ours get the whole error in the log; a guest's failure outside the allow-list
      // its (cut) message, within the guest's line budget.
      if (status.code === Code.UNKNOWN || status.code === Code.INTERNAL) {
        const guest = (err as { guest?: unknown }).guest;
        const fields = { service: request.service, method: request.method };
        if (typeof guest === "string" && this.log.fromGuest)
          this.log.fromGuest(guest, { ...fields, err: status.message }, "ttrpc handler failed in the guest");
        else if (typeof guest === "string")
          this.log.error({ ...fields, guest, err: status.message }, "ttrpc handler failed in the guest");
        else this.log.error({ ...fields, err }, "ttrpc handler failed");
      }
      return { status, payload: Buffer.alloc(0) };
    } finally {
      clearTimeout(timer);
    }
  }
}

function fail(code: number, message: string) {
  return { status: { code, message }, payload: Buffer.alloc(0) };
}
