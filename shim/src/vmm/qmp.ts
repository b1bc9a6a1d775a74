// QMP (QEMU Machine Protocol) client: JSON objects over a unix socket, one command at a time
// in flight per id, asynchronous events delivered to listeners.
import { EventEmitter, once } from "node:events";
import net from "node:net";
import { ShimError } from "../errors.js";

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export class QmpError extends ShimError {
  override readonly name = "QmpError";
  /** A closed QMP means QEMU is gone (Unavailable); a refused command is ours to explain (Internal). */
  constructor(kind: "Unavailable" | "Internal", message: string) {
    super(kind, message);
  }
}

interface Waiter {
  command: string;
  resolve(value: unknown): void;
  reject(err: Error): void;
}

export class QmpClient extends EventEmitter<{ event: [QmpEvent]; close: [] }> {
  private buffer = "";
  private nextId = 1;
  private readonly waiters = new Map<string, Waiter>();
  private greeted: Promise<void>;
  private closed = false;

  private constructor(private readonly sock: net.Socket) {
    super();
    let onGreeting: () => void = () => {};
    this.greeted = new Promise((resolve) => {
      onGreeting = resolve;
    });
    sock.setEncoding("utf8");
    sock.on("data", (text: string) => {
      this.buffer += text;
      let nl = this.buffer.indexOf("\n");
      while (nl >= 0) {
        const line = this.buffer.slice(0, nl).trim();
        this.buffer = this.buffer.slice(nl + 1);
        if (line) this.onMessage(JSON.parse(line) as Record<string, unknown>, onGreeting);
        nl = this.buffer.indexOf("\n");
      }
    });
    sock.on("error", () => {});
    sock.on("close", () => {
      this.closed = true;
      for (const w of this.waiters.values())
        w.reject(new QmpError("Unavailable", `QMP closed before ${w.command} answered`));
      this.waiters.clear();
      this.emit("close");
    });
  }

  static async connect(path: string): Promise<QmpClient> {
    const sock = net.createConnection({ path });
    await once(sock, "connect");
    const client = new QmpClient(sock);
    await client.greeted;
    await client.execute("qmp_capabilities");
    return client;
  }

  async execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed) throw new QmpError("Unavailable", `QMP is closed; cannot run ${command}`);
    const id = `c${this.nextId++}`;
    const reply = new Promise<unknown>((resolve, reject) =>
      this.waiters.set(id, { command, resolve, reject }),
    );
    this.sock.write(
      `${JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id })}\n`,
    );
    return (await reply) as T;
  }

  close(): void {
    this.sock.destroy();
  }

  private onMessage(msg: Record<string, unknown>, onGreeting: () => void): void {
    if ("QMP" in msg) {
      onGreeting();
      return;
    }
    if (typeof msg.event === "string") {
      this.emit("event", msg as unknown as QmpEvent);
      return;
    }
    const id = typeof msg.id === "string" ? msg.id : undefined;
    const waiter = id ? this.waiters.get(id) : undefined;
    if (!id || !waiter) return;
    this.waiters.delete(id);
    if ("error" in msg) {
      const error = msg.error as { class?: string; desc?: string };
      waiter.reject(
        new QmpError(
          "Internal",
          `QMP ${waiter.command} failed: ${error.desc ?? "unknown error"} (${error.class})`,
        ),
      );
    } else {
      waiter.resolve(msg.return);
    }
  }
}
