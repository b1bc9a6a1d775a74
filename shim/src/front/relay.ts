// The front's ttrpc relay: one containerd connection, one connection to the daemon's backend
// socket, whole frames only. containerd takes the close of a shim connection for the shim's
// death, so when the daemon goes away the containerd side stays open: requests in flight and
// new ones wait (bounded) until a daemon listens again, then are re-sent in their order.
import { rm } from "node:fs/promises";
import net from "node:net";
import type { Duplex } from "node:stream";
import {
  DEFAULT_MAX_FRAME_DATA,
  encodeFrame,
  FrameDecoder,
  FrameError,
  MessageType,
} from "../ttrpc/frame.js";
import { responseCodec } from "../ttrpc/messages.js";
import { Code } from "../ttrpc/status.js";

/** What the relay logs through (a pino logger fits). */
export interface RelayLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface RelayOptions {
  log: RelayLog;
  /** Request bytes held per connection (in flight + waiting for a daemon); past it, the pair closes. */
  maxPendingBytes?: number;
  /** How long requests wait for a daemon before they are answered UNAVAILABLE. */
  reconnectDeadlineMs?: number;
  /** A request is written to a daemon at most this many times (a request that kills every daemon it reaches ends there). */
  maxSends?: number;
  retryMinMs?: number;
  retryMaxMs?: number;
  maxFrameData?: number;
  /**
   * Called when the backend socket does not accept (a new daemon does not listen for this
   * namespace yet): the front asks it to.
   */
  onBackendMissing?: () => void;
}

export const RELAY_DEFAULTS = {
  maxPendingBytes: 16 << 20,
  reconnectDeadlineMs: 60_000,
  maxSends: 3,
  retryMinMs: 50,
  retryMaxMs: 1000,
} as const;

interface PendingRequest {
  frame: Buffer;
  /** How many times it was written to a daemon connection. */
  sends: number;
}

/** One containerd connection and its backend connection. */
export class RelayPair {
  private readonly opts: Required<Omit<RelayOptions, "log" | "onBackendMissing">>;
  private readonly onBackendMissing: () => void;
  private readonly log: RelayLog;
  private readonly clientDecoder: FrameDecoder;
  private backendDecoder: FrameDecoder;
  private backend: net.Socket | undefined;
  private connecting: net.Socket | undefined;
  /** Requests not answered yet, in arrival order: written to the daemon or waiting for one. */
  private readonly pending = new Map<number, PendingRequest>();
  private pendingBytes = 0;
  private retryDelay: number;
  private retryTimer: NodeJS.Timeout | undefined;
  private deadlineTimer: NodeJS.Timeout | undefined;
  /** Set once the deadline passed with no daemon: new requests are answered at once. */
  private failFast = false;
  private clientPaused = false;
  private everConnected = false;
  private closed = false;

  constructor(
    private readonly client: Duplex,
    private readonly backendPath: string,
    options: RelayOptions,
    private readonly onClose: (pair: RelayPair) => void = () => {},
  ) {
    const { log, onBackendMissing, ...rest } = options;
    this.log = log;
    this.onBackendMissing = onBackendMissing ?? (() => {});
    this.opts = { ...RELAY_DEFAULTS, maxFrameData: DEFAULT_MAX_FRAME_DATA, ...rest };
    this.retryDelay = this.opts.retryMinMs;
    this.clientDecoder = new FrameDecoder(this.opts.maxFrameData);
    this.backendDecoder = new FrameDecoder(this.opts.maxFrameData);
    client.on("data", (chunk: Buffer) => this.onClientData(chunk));
    client.on("error", () => {});
    client.on("close", () => this.close());
    this.backendDown();
  }

  /** Requests held (in flight or waiting) and their bytes: for tests and logs. */
  get held(): { requests: number; bytes: number } {
    return { requests: this.pending.size, bytes: this.pendingBytes };
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Closes both sides; `why` (a protocol or memory violation) is logged. */
  close(why?: string): void {
    if (this.closed) return;
    this.closed = true;
    if (why) this.log.warn({ backend: this.backendPath, held: this.pending.size }, why);
    clearTimeout(this.retryTimer);
    clearTimeout(this.deadlineTimer);
    this.connecting?.destroy();
    this.backend?.destroy();
    this.client.destroy();
    this.pending.clear();
    this.pendingBytes = 0;
    this.onClose(this);
  }

  private onClientData(chunk: Buffer): void {
    let frames: ReturnType<FrameDecoder["push"]>;
    try {
      frames = this.clientDecoder.push(chunk);
    } catch (err) {
      this.close(`relay: closing a containerd connection after a bad frame: ${messageOf(err)}`);
      return;
    }
    for (const frame of frames) {
      if (this.closed) return;
      const bytes = encodeFrame(frame, this.opts.maxFrameData);
      if (frame.type !== MessageType.Request) {
        // The task API is unary: containerd sends only requests. Anything else cannot be
        // replayed, so it passes only while a daemon is there.
        if (this.backend) this.writeBackend(bytes);
        else
          this.log.warn(
            { streamId: frame.streamId, type: frame.type },
            "relay: dropped a non-request frame while no daemon listens",
          );
        continue;
      }
      // What the daemon's server would close the connection for: caught here, or a replay
      // would make every new daemon close it again.
      if (frame.streamId % 2 === 0 || this.pending.has(frame.streamId)) {
        this.close(`relay: closing a containerd connection after an invalid stream id ${frame.streamId}`);
        return;
      }
      if (this.failFast) {
        this.answer(frame.streamId, "no shim daemon is listening (it is being restarted); retry later");
        continue;
      }
      if (this.pendingBytes + bytes.length > this.opts.maxPendingBytes) {
        this.close(
          `relay: closing a containerd connection: over ${this.opts.maxPendingBytes} bytes of requests ` +
            `held (${this.pending.size} requests${this.backend ? "" : ", no daemon listening"})`,
        );
        return;
      }
      const entry = { frame: bytes, sends: 0 };
      this.pending.set(frame.streamId, entry);
      this.pendingBytes += bytes.length;
      if (this.backend) this.send(entry);
    }
  }

  private onBackendData(sock: net.Socket, chunk: Buffer): void {
    if (sock !== this.backend) return;
    let frames: ReturnType<FrameDecoder["push"]>;
    try {
      frames = this.backendDecoder.push(chunk);
    } catch (err) {
      this.close(
        `relay: closing a connection pair after a bad frame from the shim daemon: ${messageOf(err)}`,
      );
      return;
    }
    for (const frame of frames) {
      if (this.closed) return;
      if (frame.type === MessageType.Response) {
        const entry = this.pending.get(frame.streamId);
        // Already answered (UNAVAILABLE after the deadline) or never asked: containerd must
        // not get a second answer.
        if (!entry) continue;
        this.forget(frame.streamId, entry);
      }
      this.writeClient(encodeFrame(frame, this.opts.maxFrameData));
    }
  }

  private send(entry: PendingRequest): void {
    entry.sends++;
    this.writeBackend(entry.frame);
  }

  private forget(streamId: number, entry: PendingRequest): void {
    this.pending.delete(streamId);
    this.pendingBytes -= entry.frame.length;
  }

  /** Answers a request on the daemon's behalf with UNAVAILABLE. */
  private answer(streamId: number, message: string): void {
    const data = Buffer.from(
      responseCodec.encode({ status: { code: Code.UNAVAILABLE, message }, payload: Buffer.alloc(0) }),
    );
    this.writeClient(encodeFrame({ streamId, type: MessageType.Response, flags: 0, data }));
  }

  // Back-pressure both ways: a side that cannot take more pauses the other until it drains.
  private writeBackend(bytes: Buffer): void {
    const backend = this.backend;
    if (!backend || backend.write(bytes) || this.clientPaused) return;
    this.clientPaused = true;
    this.client.pause();
    backend.once("drain", () => this.resumeClient());
  }

  private resumeClient(): void {
    this.clientPaused = false;
    this.client.resume();
  }

  private writeClient(bytes: Buffer): void {
    if (this.client.destroyed || this.client.write(bytes)) return;
    const backend = this.backend;
    if (!backend || backend.isPaused()) return;
    backend.pause();
    this.client.once("drain", () => backend.resume());
  }

  private backendDown(): void {
    this.resumeClient();
    clearTimeout(this.deadlineTimer);
    this.deadlineTimer = setTimeout(() => this.deadlinePassed(), this.opts.reconnectDeadlineMs);
    this.deadlineTimer.unref();
    this.connect();
  }

  private deadlinePassed(): void {
    if (this.closed || this.backend) return;
    this.failFast = true;
    this.log.warn(
      { backend: this.backendPath, answered: this.pending.size, afterMs: this.opts.reconnectDeadlineMs },
      "relay: no shim daemon listens; answering held requests UNAVAILABLE and still trying",
    );
    for (const [streamId, entry] of [...this.pending]) {
      this.forget(streamId, entry);
      this.answer(
        streamId,
        `no shim daemon answered within ${this.opts.reconnectDeadlineMs} ms; retry later`,
      );
    }
  }

  private connect(): void {
    if (this.closed) return;
    const sock = net.createConnection({ path: this.backendPath });
    this.connecting = sock;
    sock.once("connect", () => {
      sock.removeAllListeners("error");
      this.connecting = undefined;
      this.connected(sock);
    });
    sock.once("error", () => {
      // Nobody listens yet (no socket, or a stale one): the daemon is starting again.
      this.connecting = undefined;
      sock.destroy();
      if (this.closed) return;
      this.onBackendMissing();
      this.retryTimer = setTimeout(() => this.connect(), this.retryDelay);
      this.retryDelay = Math.min(this.retryDelay * 2, this.opts.retryMaxMs);
    });
  }

  private connected(sock: net.Socket): void {
    if (this.closed) {
      sock.destroy();
      return;
    }
    clearTimeout(this.deadlineTimer);
    this.backend = sock;
    this.backendDecoder = new FrameDecoder(this.opts.maxFrameData);
    this.retryDelay = this.opts.retryMinMs;
    this.failFast = false;
    sock.on("data", (chunk: Buffer) => this.onBackendData(sock, chunk));
    sock.on("error", () => {});
    sock.on("close", () => this.lost(sock));
    let resent = 0;
    for (const [streamId, entry] of [...this.pending]) {
      if (entry.sends >= this.opts.maxSends) {
        this.forget(streamId, entry);
        this.answer(
          streamId,
          `the shim daemon went away ${entry.sends} times while this request was in flight; not sent again`,
        );
        continue;
      }
      if (entry.sends > 0) resent++;
      this.send(entry);
    }
    if (this.everConnected)
      this.log.info(
        { backend: this.backendPath, resent, sent: this.pending.size - resent },
        "relay: shim daemon reachable again; requests held for it sent",
      );
    this.everConnected = true;
  }

  private lost(sock: net.Socket): void {
    if (sock !== this.backend || this.closed) return;
    this.backend = undefined;
    this.log.warn(
      { backend: this.backendPath, inFlight: this.pending.size },
      "relay: shim daemon connection closed; holding containerd's connection until a daemon listens",
    );
    this.backendDown();
  }
}

/** A front socket: every containerd connection accepted on it gets its own RelayPair. */
export class RelayListener {
  private server: net.Server | undefined;
  private readonly pairs = new Set<RelayPair>();

  constructor(
    readonly frontPath: string,
    readonly backendPath: string,
    private readonly options: RelayOptions,
  ) {}

  get connections(): number {
    return this.pairs.size;
  }

  async listen(): Promise<void> {
    await rm(this.frontPath, { force: true });
    const server = net.createServer((sock) => {
      this.pairs.add(new RelayPair(sock, this.backendPath, this.options, (p) => this.pairs.delete(p)));
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.frontPath, () => {
        server.off("error", reject);
        resolve();
      });
    });
    this.server = server;
  }

  /** Stops accepting, closes every pair, removes the socket file. */
  async close(): Promise<void> {
    for (const pair of [...this.pairs]) pair.close();
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    await rm(this.frontPath, { force: true });
  }
}

function messageOf(err: unknown): string {
  return err instanceof FrameError || err instanceof Error ? err.message : String(err);
}
