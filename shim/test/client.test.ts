// The client against an in-process peer built from our own codec: exercises ordering,
// deadlines, status errors and protocol violations that a well-behaved server never shows.
import assert from "node:assert/strict";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { TtrpcClient } from "../src/ttrpc/client.js";
import { encodeFrame, FrameDecoder, MessageType } from "../src/ttrpc/frame.js";
import { requestCodec, responseCodec, type TtrpcRequest } from "../src/ttrpc/messages.js";
import { Code, TtrpcError } from "../src/ttrpc/status.js";

type Handler = (req: TtrpcRequest, streamId: number, sock: net.Socket) => void;

function reply(
  sock: net.Socket,
  streamId: number,
  payload: string,
  status?: { code: number; message: string },
) {
  const data = Buffer.from(responseCodec.encode({ status: status ?? null, payload: Buffer.from(payload) }));
  sock.write(encodeFrame({ streamId, type: MessageType.Response, flags: 0, data }));
}

describe("ttrpc client", () => {
  let dir: string;
  let server: net.Server;
  let handler: Handler = () => {};
  const socketPath = () => path.join(dir, "peer.sock");

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-ttrpc-"));
    server = net.createServer((sock) => {
      const decoder = new FrameDecoder();
      sock.on("data", (chunk: Buffer) => {
        for (const frame of decoder.push(chunk))
          handler(requestCodec.decode(frame.data), frame.streamId, sock);
      });
      sock.on("error", () => {});
    });
    server.listen(socketPath());
    await once(server, "listening");
  });

  after(async () => {
    server.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("matches concurrent answers to their calls by odd stream ids, in any order", async () => {
    const seen: TtrpcRequest[] = [];
    const held: Array<[number, net.Socket]> = [];
    handler = (req, id, sock) => {
      seen.push(req);
      held.push([id, sock]);
      if (held.length === 3) for (const [sid, s] of held.reverse()) reply(s, sid, `answer-${sid}`);
    };
    const client = await TtrpcClient.connect(socketPath());
    const answers = await Promise.all([
      client.call("svc.A", "One", Buffer.from("1"), {
        timeoutMs: 5000,
        metadata: [{ key: "k", value: "v" }],
      }),
      client.call("svc.A", "Two", Buffer.from("2")),
      client.call("svc.B", "Three", Buffer.from("3")),
    ]);
    assert.deepEqual(
      answers.map((a) => a.toString()),
      ["answer-1", "answer-3", "answer-5"],
    );
    assert.deepEqual(
      seen.map((r) => [r.service, r.method, Buffer.from(r.payload).toString()]),
      [
        ["svc.A", "One", "1"],
        ["svc.A", "Two", "2"],
        ["svc.B", "Three", "3"],
      ],
    );
    assert.equal(seen[0]?.timeoutNano, 5_000_000_000);
    assert.deepEqual(seen[0]?.metadata, [{ key: "k", value: "v" }]);
    client.close();
  });

  it("turns a non-OK status into a TtrpcError with the peer's code and message", async () => {
    handler = (_req, id, sock) =>
      reply(sock, id, "", { code: Code.NOT_FOUND, message: "container c1 not found" });
    const client = await TtrpcClient.connect(socketPath());
    await assert.rejects(client.call("svc", "Get", Buffer.alloc(0)), (err: unknown) => {
      assert.ok(err instanceof TtrpcError);
      assert.equal(err.code, Code.NOT_FOUND);
      assert.match(err.message, /NOT_FOUND: container c1 not found/);
      return true;
    });
    client.close();
  });

  it("gives up at the deadline, ignores the late answer and keeps the connection usable", async () => {
    let calls = 0;
    handler = (_req, id, sock) => {
      calls++;
      if (calls === 1) setTimeout(() => reply(sock, id, "late"), 150);
      else reply(sock, id, "on time");
    };
    const client = await TtrpcClient.connect(socketPath());
    await assert.rejects(client.call("svc", "Slow", Buffer.alloc(0), { timeoutMs: 50 }), /DEADLINE_EXCEEDED/);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal((await client.call("svc", "Fast", Buffer.alloc(0))).toString(), "on time");
    client.close();
  });

  it("fails every pending call and closes when the peer sends an oversize frame", async () => {
    handler = (_req, _id, sock) => {
      const header = Buffer.alloc(10);
      header.writeUInt32BE(64 << 20, 0);
      header.writeUInt8(MessageType.Response, 8);
      sock.write(header);
    };
    const client = await TtrpcClient.connect(socketPath());
    await assert.rejects(client.call("svc", "X", Buffer.alloc(0)), /DATA_LOSS: bad frame.*over the/);
    assert.ok(client.closed);
    await assert.rejects(client.call("svc", "Y", Buffer.alloc(0)), /DATA_LOSS/);
  });

  it("fails pending calls with UNAVAILABLE when the peer hangs up", async () => {
    handler = (_req, _id, sock) => sock.destroy();
    const client = await TtrpcClient.connect(socketPath());
    await assert.rejects(client.call("svc", "X", Buffer.alloc(0)), /UNAVAILABLE/);
  });

  it("honours an abort signal", async () => {
    handler = () => {};
    const client = await TtrpcClient.connect(socketPath());
    const ac = new AbortController();
    const call = client.call("svc", "Never", Buffer.alloc(0), { signal: ac.signal });
    ac.abort();
    await assert.rejects(call, /CANCELLED/);
    client.close();
  });
});
