// The one CRI call the installer needs — RuntimeService/Status with verbose info — spoken
// directly over HTTP/2 on containerd's unix socket. It tells whether containerd came back
// healthy and which runtime handlers its CRI plugin loaded; a gRPC library would be most of
// the installer's size for this one unary call.
import http2 from "node:http2";
import net from "node:net";

export interface CriStatus {
  /** RuntimeReady / NetworkReady → status. */
  conditions: Record<string, { status: boolean; reason: string; message: string }>;
  /** Handler names: from runtime_handlers (containerd ≥ 2.0), else from the verbose config. */
  handlers: string[];
  /** info["config"] parsed, when containerd sent it. */
  config?: Record<string, unknown>;
}

export class CriError extends Error {
  override readonly name = "CriError";
}

/** Minimal protobuf reader: enough for StatusResponse. */
class Reader {
  private pos = 0;
  constructor(private readonly buf: Buffer) {}
  get done(): boolean {
    return this.pos >= this.buf.length;
  }
  varint(): number {
    let result = 0;
    let shift = 0;
    for (;;) {
      if (this.pos >= this.buf.length) throw new CriError("truncated protobuf varint");
      const byte = this.buf[this.pos++] as number;
      result += (byte & 0x7f) * 2 ** shift;
      if (byte < 0x80) return result;
      shift += 7;
      if (shift > 63) throw new CriError("protobuf varint too long");
    }
  }
  bytes(): Buffer {
    const len = this.varint();
    if (this.pos + len > this.buf.length) throw new CriError("truncated protobuf field");
    const out = this.buf.subarray(this.pos, this.pos + len);
    this.pos += len;
    return out;
  }
  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 2) this.bytes();
    else if (wire === 1) this.pos += 8;
    else if (wire === 5) this.pos += 4;
    else throw new CriError(`unsupported protobuf wire type ${wire}`);
  }
  /** Calls `field(number, wire)` for each field; it must consume the value or return false. */
  fields(field: (no: number, wire: number) => boolean): void {
    while (!this.done) {
      const key = this.varint();
      const no = Math.floor(key / 8);
      const wire = key & 7;
      if (!field(no, wire)) this.skip(wire);
    }
  }
}

export function decodeStatusResponse(buf: Buffer): CriStatus {
  const out: CriStatus = { conditions: {}, handlers: [] };
  const info: Record<string, string> = {};
  const root = new Reader(buf);
  root.fields((no, wire) => {
    if (wire !== 2) return false;
    const value = root.bytes();
    if (no === 1) {
      // RuntimeStatus { repeated RuntimeCondition conditions = 1; }
      const rs = new Reader(value);
      rs.fields((cno, cwire) => {
        if (cno !== 1 || cwire !== 2) return false;
        const cond = new Reader(rs.bytes());
        let type = "";
        const c = { status: false, reason: "", message: "" };
        cond.fields((f, w) => {
          if (f === 2 && w === 0) c.status = cond.varint() !== 0;
          else if (w === 2 && f >= 1 && f <= 4) {
            const s = cond.bytes().toString("utf8");
            if (f === 1) type = s;
            else if (f === 3) c.reason = s;
            else if (f === 4) c.message = s;
          } else return false;
          return true;
        });
        out.conditions[type] = c;
        return true;
      });
    } else if (no === 2) {
      // map<string,string> info = 2: entries { key = 1; value = 2; }
      const entry = new Reader(value);
      let k = "";
      let v = "";
      entry.fields((f, w) => {
        if (w !== 2 || (f !== 1 && f !== 2)) return false;
        const s = entry.bytes().toString("utf8");
        if (f === 1) k = s;
        else v = s;
        return true;
      });
      info[k] = v;
    } else if (no === 3) {
      // RuntimeHandler { string name = 1; ... }
      const h = new Reader(value);
      h.fields((f, w) => {
        if (f !== 1 || w !== 2) return false;
        const name = h.bytes().toString("utf8");
        if (name && !out.handlers.includes(name)) out.handlers.push(name);
        return true;
      });
    }
    return true;
  });
  if (info.config) {
    try {
      out.config = JSON.parse(info.config) as Record<string, unknown>;
    } catch {
      // Leave config out; the conditions are what matter most.
    }
    const runtimes = (out.config?.containerd as { runtimes?: Record<string, unknown> } | undefined)?.runtimes;
    for (const name of Object.keys(runtimes ?? {})) if (!out.handlers.includes(name)) out.handlers.push(name);
  }
  return out;
}

/** CRI Status (verbose) from the containerd socket at `socketPath`. */
export async function criStatus(socketPath: string, timeoutMs = 5000): Promise<CriStatus> {
  const body = await unaryCall(
    socketPath,
    "/runtime.v1.RuntimeService/Status",
    Buffer.from([0x08, 0x01]),
    timeoutMs,
  );
  return decodeStatusResponse(body);
}

function unaryCall(socketPath: string, method: string, message: Buffer, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const session = http2.connect("http://localhost", { createConnection: () => net.connect(socketPath) });
    const timer = setTimeout(() => {
      session.destroy();
      reject(new CriError(`CRI ${method} on ${socketPath}: no answer in ${timeoutMs} ms`));
    }, timeoutMs);
    const fail = (err: Error) => {
      clearTimeout(timer);
      session.destroy();
      reject(new CriError(`CRI ${method} on ${socketPath}: ${err.message}`));
    };
    session.on("error", fail);
    const frame = Buffer.alloc(5 + message.length);
    frame.writeUInt8(0, 0);
    frame.writeUInt32BE(message.length, 1);
    message.copy(frame, 5);
    const req = session.request({
      ":method": "POST",
      ":path": method,
      "content-type": "application/grpc",
      te: "trailers",
    });
    const chunks: Buffer[] = [];
    let grpcStatus: string | undefined;
    let grpcMessage = "";
    req.on("response", (headers) => {
      if (headers["grpc-status"] !== undefined) grpcStatus = String(headers["grpc-status"]);
    });
    req.on("trailers", (trailers) => {
      grpcStatus = String(trailers["grpc-status"] ?? grpcStatus ?? "");
      grpcMessage = decodeURIComponent(String(trailers["grpc-message"] ?? ""));
    });
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("error", fail);
    req.on("end", () => {
      clearTimeout(timer);
      session.close();
      if (grpcStatus !== "0") {
        reject(
          new CriError(
            `CRI ${method} on ${socketPath}: grpc-status ${grpcStatus ?? "missing"} ${grpcMessage}`.trim(),
          ),
        );
        return;
      }
      const data = Buffer.concat(chunks);
      if (data.length < 5 || data.readUInt8(0) !== 0) {
        reject(new CriError(`CRI ${method} on ${socketPath}: malformed gRPC reply (${data.length} bytes)`));
        return;
      }
      const len = data.readUInt32BE(1);
      if (5 + len > data.length) {
        reject(new CriError(`CRI ${method} on ${socketPath}: truncated gRPC reply`));
        return;
      }
      resolve(data.subarray(5, 5 + len));
    });
    req.end(frame);
  });
}
