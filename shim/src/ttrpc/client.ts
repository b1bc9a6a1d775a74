// ttrpc client: many concurrent unary calls over one stream connection (unix socket, vsock
// bridge, virtio-serial backing socket). Client streams use odd ids, as the protocol requires.
import { once } from "node:events";
import net from "node:net";
import type { Duplex } from "node:stream";
import { DEFAULT_MAX_FRAME_DATA, encodeFrame, FrameDecoder, FrameError, MessageType } from "./frame.js";
import { type KeyValue, requestCodec, responseCodec } from "./messages.js";
import { Code, TtrpcError } from "./status.js";

export interface CallOptions {
  /** Local deadline; also sent to the server as the request's timeout. 0 = none. */
  timeoutMs?: number;
  metadata?: KeyValue[];
  signal?: AbortSignal;
}

interface Pending {
  resolve(payload: Buffer): void;
  reject(err: Error): void;
}

const MAX_STREAM_ID = 0xffff_ffff;

export class TtrpcClient {
  private nextStreamId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly decoder: FrameDecoder;
  private closedError: Error | undefined;

  constructor(
    private readonly conn: Duplex,
    private readonly maxFrameData = DEFAULT_MAX_FRAME_DATA,
  ) {
    this.decoder = new FrameDecoder(maxFrameData);
    conn.on("data", (chunk: Buffer) => this.onData(chunk));
    conn.on("error", (err) =>
      this.fail(new TtrpcError(Code.UNAVAILABLE, `ttrpc connection error: ${err.message}`)),
    );
    conn.on("close", () => this.fail(new TtrpcError(Code.UNAVAILABLE, "ttrpc connection closed")));
  }

  static async connect(path: string, opts: { timeoutMs?: number } = {}): Promise<TtrpcClient> {
    const sock = net.createConnection({ path });
    const timer = opts.timeoutMs
      ? setTimeout(() => sock.destroy(new Error("connect timed out")), opts.timeoutMs)
      : undefined;
    try {
      await once(sock, "connect");
    } finally {
      clearTimeout(timer);
    }
    return new TtrpcClient(sock);
  }

  get closed(): boolean {
    return this.closedError !== undefined;
  }

  async call(service: string, method: string, payload: Uint8Array, opts: CallOptions = {}): Promise<Buffer> {
    if (this.closedError) throw this.closedError;
    const streamId = this.allocateStreamId();
    const timeoutMs = opts.timeoutMs ?? 0;
    const request = requestCodec.encode({
      service,
      method,
      payload,
      timeoutNano: timeoutMs * 1_000_000,
      metadata: opts.metadata ?? [],
    });
    const frame = encodeFrame(
      { streamId, type: MessageType.Request, flags: 0, data: Buffer.from(request) },
      this.maxFrameData,
    );
    const where = `${service}/${method}`;
    return new Promise<Buffer>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const onAbort = () => settle(new TtrpcError(Code.CANCELLED, `${where} cancelled`));
      const settle = (err: Error | undefined, value?: Buffer) => {
        if (!this.pending.delete(streamId)) return;
        clearTimeout(timer);
        opts.signal?.removeEventListener("abort", onAbort);
        if (err) reject(err);
        else resolve(value ?? Buffer.alloc(0));
      };
      this.pending.set(streamId, { resolve: (v) => settle(undefined, v), reject: (e) => settle(e) });
      if (timeoutMs > 0) {
        timer = setTimeout(
          () =>
            settle(new TtrpcError(Code.DEADLINE_EXCEEDED, `${where} got no answer within ${timeoutMs} ms`)),
          timeoutMs,
        );
      }
      if (opts.signal) {
        if (opts.signal.aborted) return onAbort();
        opts.signal.addEventListener("abort", onAbort, { once: true });
      }
      this.conn.write(frame);
    });
  }

  close(): void {
    this.fail(new TtrpcError(Code.UNAVAILABLE, "ttrpc client closed"));
  }

  private allocateStreamId(): number {
    const id = this.nextStreamId;
    if (id > MAX_STREAM_ID) {
      throw new TtrpcError(Code.RESOURCE_EXHAUSTED, "ttrpc stream ids exhausted on this connection");
    }
    this.nextStreamId += 2;
    return id;
  }

  private onData(chunk: Buffer): void {
    let frames: ReturnType<FrameDecoder["push"]>;
    try {
      frames = this.decoder.push(chunk);
    } catch (err) {
      const message = err instanceof FrameError ? err.message : String(err);
      this.fail(new TtrpcError(Code.DATA_LOSS, `bad frame from ttrpc server: ${message}`));
      return;
    }
    for (const frame of frames) {
      // Responses for streams we no longer wait on (timed out, cancelled) are dropped.
      const waiter = this.pending.get(frame.streamId);
      if (!waiter || frame.type !== MessageType.Response) continue;
      let response: ReturnType<typeof responseCodec.decode>;
      try {
        response = responseCodec.decode(frame.data);
      } catch (err) {
        waiter.reject(
          new TtrpcError(Code.DATA_LOSS, `undecodable ttrpc response: ${(err as Error).message}`),
        );
        continue;
      }
      const status = response.status;
      if (status && status.code !== Code.OK) waiter.reject(new TtrpcError(status.code, status.message, true));
      else waiter.resolve(Buffer.from(response.payload));
    }
  }

  private fail(err: Error): void {
    if (!this.closedError) {
      this.closedError = err;
      this.conn.destroy();
    }
    for (const waiter of [...this.pending.values()]) waiter.reject(err);
  }
}
