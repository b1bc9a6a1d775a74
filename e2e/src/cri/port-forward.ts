// The client side of a CRI port-forward, as kubectl does it, over the streaming server's
// WebSocket protocol (v4.channel.k8s.io; Node 20 has no WebSocket client, so this is a small
// RFC 6455 client): per port, channel 0 carries data and channel 1 errors, and the server
// first sends the port (2 bytes, little-endian) on each. One exchange: send `request`,
// return what came back until the server closed.
import { randomBytes } from "node:crypto";
import http from "node:http";
import type { Socket } from "node:net";

export interface ForwardResult {
  data: Buffer;
  /** Text the server sent on the error channel (after the port prefix). */
  error: string;
}

function frame(payload: Buffer, opcode = 2): Buffer {
  const mask = randomBytes(4);
  const len = payload.length;
  const head =
    len < 126
      ? Buffer.from([0x80 | opcode, 0x80 | len])
      : Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | 126]), Buffer.from([len >> 8, len & 0xff])]);
  const body = Buffer.from(payload);
  for (let i = 0; i < body.length; i++) body[i] = (body[i] ?? 0) ^ (mask[i % 4] ?? 0);
  return Buffer.concat([head, mask, body]);
}

/** Forwards one connection to `port` of the pod behind `url` (PortForward's answer). */
export function portForwardExchange(
  url: string,
  port: number,
  request: Buffer,
  timeoutMs = 30_000,
): Promise<ForwardResult> {
  return new Promise((resolve, reject) => {
    const target = new URL(url);
    target.searchParams.append("port", String(port));
    const req = http.request(target, {
      headers: {
        Connection: "Upgrade",
        Upgrade: "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": randomBytes(16).toString("base64"),
        "Sec-WebSocket-Protocol": "v4.channel.k8s.io",
      },
    });
    const timer = setTimeout(() => {
      req.destroy();
      reject(new Error(`port-forward to ${port}: no end within ${timeoutMs} ms`));
    }, timeoutMs);
    req.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    req.on("response", (res) => {
      clearTimeout(timer);
      reject(new Error(`port-forward: the streaming server answered HTTP ${res.statusCode}, not an upgrade`));
    });
    req.on("upgrade", (_res, socket: Socket, head: Buffer) => {
      const channels: Buffer[][] = [[], []];
      let pending = head;
      let sent = false;
      const finish = () => {
        clearTimeout(timer);
        socket.destroy();
        const data = Buffer.concat(channels[0] ?? []);
        const error = Buffer.concat(channels[1] ?? []);
        // Each channel starts with the port, little-endian.
        resolve({ data: data.subarray(2), error: error.subarray(2).toString() });
      };
      const parse = () => {
        for (;;) {
          if (pending.length < 2) return;
          const b1 = pending[1] ?? 0;
          let len = b1 & 0x7f;
          let off = 2;
          if (len === 126) {
            if (pending.length < 4) return;
            len = pending.readUInt16BE(2);
            off = 4;
          } else if (len === 127) {
            if (pending.length < 10) return;
            len = Number(pending.readBigUInt64BE(2));
            off = 10;
          }
          if (pending.length < off + len) return;
          const opcode = (pending[0] ?? 0) & 0x0f;
          const payload = pending.subarray(off, off + len);
          pending = pending.subarray(off + len);
          if (opcode === 8) {
            finish();
            return;
          }
          if (opcode === 9) socket.write(frame(payload, 10));
          if ((opcode === 2 || opcode === 1) && payload.length > 0) {
            const channel = payload[0] ?? 255;
            channels[channel]?.push(payload.subarray(1));
            // The server is ready once it sent the port on the data channel.
            if (!sent && channel === 0) {
              sent = true;
              socket.write(frame(Buffer.concat([Buffer.from([0]), request])));
            }
          }
        }
      };
      socket.on("data", (d: Buffer) => {
        pending = Buffer.concat([pending, d]);
        parse();
      });
      socket.on("close", finish);
      socket.on("error", () => {});
      parse();
    });
    req.end();
  });
}
