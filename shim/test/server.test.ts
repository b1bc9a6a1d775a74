// Our ttrpc server with our client, over a real unix socket: dispatch, status mapping,
// deadlines, and isolation of a connection that sends garbage.
import assert from "node:assert/strict";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { TtrpcClient } from "../src/ttrpc/client.js";
import { TtrpcServer } from "../src/ttrpc/server.js";
import { Code, TtrpcError } from "../src/ttrpc/status.js";

describe("ttrpc server", () => {
  let dir: string;
  let sock: string;
  const server = new TtrpcServer();
  let sawAbort: unknown;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-ttrpc-server-"));
    sock = path.join(dir, "s.sock");
    server.register("test.Echo", {
      Echo: async (payload, ctx) =>
        Buffer.concat([Buffer.from(`${ctx.metadata.map((m) => m.value).join(",")}:`), payload]),
      NotFound: async () => {
        throw new TtrpcError(Code.NOT_FOUND, "container c9 not found");
      },
      Crash: async () => {
        throw new Error("handler bug");
      },
      Slow: (_payload, ctx) =>
        new Promise((_resolve, reject) => {
          ctx.signal.addEventListener("abort", () => {
            sawAbort = ctx.signal.reason;
            reject(ctx.signal.reason);
          });
        }),
    });
    await server.listen(sock);
  });

  after(async () => {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("dispatches by service and method and passes metadata", async () => {
    const client = await TtrpcClient.connect(sock);
    const reply = await client.call("test.Echo", "Echo", Buffer.from("hello"), {
      metadata: [{ key: "k", value: "v" }],
    });
    assert.equal(reply.toString(), "v:hello");
    client.close();
  });

  it("answers UNIMPLEMENTED for an unknown method and keeps serving", async () => {
    const client = await TtrpcClient.connect(sock);
    await assert.rejects(client.call("test.Echo", "Nope", Buffer.alloc(0)), /UNIMPLEMENTED: test.Echo\/Nope/);
    await assert.rejects(client.call("no.Such", "Echo", Buffer.alloc(0)), /UNIMPLEMENTED/);
    assert.equal((await client.call("test.Echo", "Echo", Buffer.from("x"))).toString(), ":x");
    client.close();
  });

  it("maps handler errors to statuses: typed errors keep their code, bugs become UNKNOWN", async () => {
    const client = await TtrpcClient.connect(sock);
    await assert.rejects(client.call("test.Echo", "NotFound", Buffer.alloc(0)), (err: unknown) => {
      return (
        err instanceof TtrpcError && err.code === Code.NOT_FOUND && /container c9 not found/.test(err.message)
      );
    });
    await assert.rejects(client.call("test.Echo", "Crash", Buffer.alloc(0)), /UNKNOWN: handler bug/);
    client.close();
  });

  it("aborts a handler when the request's timeout passes", async () => {
    const client = await TtrpcClient.connect(sock);
    // The client waits longer than the server-side deadline it sends, so the server's answer wins.
    const call = client.call("test.Echo", "Slow", Buffer.alloc(0), { timeoutMs: 100 });
    await assert.rejects(call, /DEADLINE_EXCEEDED/);
    await new Promise((r) => setTimeout(r, 50));
    assert.ok(sawAbort instanceof TtrpcError);
    client.close();
  });

  it("closes only the connection that sends a malformed frame", async () => {
    const good = await TtrpcClient.connect(sock);
    const bad = net.createConnection(sock);
    await once(bad, "connect");
    const header = Buffer.alloc(10);
    header.writeUInt32BE(100 << 20, 0);
    header.writeUInt8(1, 8);
    bad.write(header);
    await once(bad, "close");
    assert.equal((await good.call("test.Echo", "Echo", Buffer.from("still here"))).toString(), ":still here");
    good.close();
  });

  it("rejects an even (server-side) stream id from a client by closing that connection", async () => {
    const bad = net.createConnection(sock);
    await once(bad, "connect");
    const { encodeFrame } = await import("../src/ttrpc/frame.js");
    bad.write(encodeFrame({ streamId: 2, type: 1, flags: 0, data: Buffer.alloc(0) }));
    await once(bad, "close");
  });
});
