// The front's frame relay between a containerd-side client (our TtrpcClient) and a backend
// (our TtrpcServer) that dies and comes back: the client never sees a disconnect, requests in
// flight and queued are answered by the next backend in order, garbage closes one pair only,
// and what a connection may hold is bounded.
import assert from "node:assert/strict";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { RelayListener, type RelayLog, type RelayOptions } from "../src/front/relay.js";
import { TtrpcClient } from "../src/ttrpc/client.js";
import { TtrpcServer } from "../src/ttrpc/server.js";
import { Code, TtrpcError } from "../src/ttrpc/status.js";

/** A backend daemon stand-in: answers `<name>:<payload>`, records what it was asked. */
class Backend {
  readonly server = new TtrpcServer();
  readonly seen: string[] = [];
  private readonly conns: net.Socket[] = [];
  private readonly net: net.Server;
  /** Release for `Hold` calls (never answered until then). */
  holding = true;

  constructor(
    readonly name: string,
    readonly socket: string,
  ) {
    this.server.register("test.Svc", {
      Echo: async (payload) => {
        this.seen.push(`Echo:${payload}`);
        return Buffer.from(`${name}:${payload}`);
      },
      Hold: async (payload) => {
        this.seen.push(`Hold:${payload}`);
        while (this.holding) await sleep(10);
        return Buffer.from(`${name}:${payload}`);
      },
      // A request that makes the daemon drop every connection (a crash, for the relay).
      Poison: async (payload) => {
        this.seen.push(`Poison:${payload}`);
        for (const c of this.conns) c.destroy();
        return Buffer.alloc(0);
      },
    });
    this.net = net.createServer((sock) => {
      this.conns.push(sock);
      this.server.serve(sock);
    });
  }

  get connections(): net.Socket[] {
    return this.conns;
  }

  async start(): Promise<this> {
    await rm(this.socket, { force: true });
    this.net.listen(this.socket);
    await once(this.net, "listening");
    return this;
  }

  /** Like a daemon killed: every connection drops, nothing listens. */
  async kill(): Promise<void> {
    for (const c of this.conns) c.destroy();
    await new Promise((r) => this.net.close(r));
    this.holding = false;
  }
}

function captureLog(): RelayLog & { lines: string[] } {
  const lines: string[] = [];
  return {
    lines,
    info: (_o, msg) => lines.push(msg),
    warn: (_o, msg) => lines.push(msg),
  };
}

async function until(what: string, check: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

describe("front relay", () => {
  let dir: string;
  let n = 0;
  const cleanups: Array<() => Promise<void> | void> = [];

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-front-relay-"));
  });
  after(async () => {
    for (const c of cleanups.reverse()) await c();
    await rm(dir, { recursive: true, force: true });
  });

  async function relay(opts: Omit<RelayOptions, "log"> = {}) {
    n++;
    const log = captureLog();
    const backendPath = path.join(dir, `b${n}.sock`);
    const listener = new RelayListener(path.join(dir, `f${n}.sock`), backendPath, { log, ...opts });
    await listener.listen();
    cleanups.push(() => listener.close());
    const connect = async () => {
      const client = await TtrpcClient.connect(listener.frontPath);
      cleanups.push(() => client.close());
      return client;
    };
    return { listener, backendPath, log, connect };
  }

  const call = (c: TtrpcClient, method: string, payload: string) =>
    c.call("test.Svc", method, Buffer.from(payload)).then((b) => b.toString());

  it("keeps the client's connection while the backend restarts; in-flight and queued requests are answered in order", {
    timeout: 20_000,
  }, async () => {
    const r = await relay();
    const first = await new Backend("one", r.backendPath).start();
    const client = await r.connect();
    assert.equal(await call(client, "Echo", "a"), "one:a");
    const held = call(client, "Hold", "x");
    await until("the backend got Hold", () => first.seen.includes("Hold:x"));
    await first.kill();
    // Sent while no backend listens: queued, in this order.
    const queued = [call(client, "Echo", "q1"), call(client, "Echo", "q2"), call(client, "Echo", "q3")];
    await sleep(200);
    assert.equal(client.closed, false, "containerd's side never sees the backend close");
    const second = await new Backend("two", r.backendPath).start();
    second.holding = false;
    cleanups.push(() => second.kill());
    assert.equal(await held, "two:x", "the in-flight request is answered by the new backend");
    assert.deepEqual(await Promise.all(queued), ["two:q1", "two:q2", "two:q3"]);
    assert.deepEqual(
      second.seen,
      ["Hold:x", "Echo:q1", "Echo:q2", "Echo:q3"],
      "re-sent first, then the queue",
    );
    assert.deepEqual(first.seen, ["Echo:a", "Hold:x"], "the first backend never saw the queued ones");
    assert.equal(await call(client, "Echo", "after"), "two:after");
    assert.equal(client.closed, false);
    assert.ok(r.log.lines.some((l) => /connection closed; holding/.test(l)));
    assert.ok(r.log.lines.some((l) => /reachable again/.test(l)));
  });

  it("answers held requests UNAVAILABLE after the deadline, keeps the connection and recovers", {
    timeout: 20_000,
  }, async () => {
    const r = await relay({ reconnectDeadlineMs: 300 });
    const client = await r.connect();
    const started = Date.now();
    const err = await call(client, "Echo", "nobody").catch((e: unknown) => e);
    assert.ok(err instanceof TtrpcError && err.remote && err.code === Code.UNAVAILABLE, String(err));
    assert.match((err as TtrpcError).detail, /no shim daemon answered within 300 ms/);
    assert.ok(Date.now() - started >= 250, "answered at the deadline, not before");
    // Past the deadline, requests are answered at once while nobody listens.
    const quick = Date.now();
    await assert.rejects(call(client, "Echo", "again"), /UNAVAILABLE/);
    assert.ok(Date.now() - quick < 200);
    const backend = await new Backend("late", r.backendPath).start();
    cleanups.push(() => backend.kill());
    await until("the relay reconnects", () => backend.connections.length > 0);
    assert.equal(await call(client, "Echo", "back"), "late:back");
    assert.equal(client.closed, false);
    assert.deepEqual(backend.seen, ["Echo:back"], "answered requests are not re-sent");
  });

  it("closes only the pair that got a garbage frame, from either side", { timeout: 20_000 }, async () => {
    const r = await relay();
    const backend = await new Backend("b", r.backendPath).start();
    cleanups.push(() => backend.kill());
    const a = await r.connect();
    assert.equal(await call(a, "Echo", "a"), "b:a");
    const b = await r.connect();
    assert.equal(await call(b, "Echo", "b"), "b:b");
    assert.equal(backend.connections.length, 2);
    // The backend side of a's pair sends a frame of an unknown type.
    const garbage = Buffer.from([0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 0]);
    (backend.connections[0] as net.Socket).write(garbage);
    await until("a is closed", () => a.closed);
    assert.equal(await call(b, "Echo", "still"), "b:still", "the other pair is untouched");
    // A containerd side that sends garbage loses its own connection only.
    const raw = net.createConnection({ path: r.listener.frontPath });
    await once(raw, "connect");
    raw.write(garbage);
    await once(raw, "close");
    assert.equal(await call(b, "Echo", "again"), "b:again");
    assert.equal(r.listener.connections, 1);
    assert.ok(r.log.lines.some((l) => /bad frame from the shim daemon/.test(l)));
    assert.ok(r.log.lines.some((l) => /containerd connection after a bad frame/.test(l)));
  });

  it("bounds what one connection may hold while no backend listens", { timeout: 20_000 }, async () => {
    const r = await relay({ maxPendingBytes: 64 << 10 });
    const client = await r.connect();
    const big = "x".repeat(20 << 10);
    const calls = [1, 2, 3].map((i) => call(client, "Echo", `${i}${big}`).catch((e: unknown) => e));
    await sleep(100);
    assert.equal(client.closed, false, "three 20 KiB requests fit in 64 KiB");
    const fourth = call(client, "Echo", `4${big}`).catch((e: unknown) => e);
    for (const result of await Promise.all([...calls, fourth])) {
      assert.ok(result instanceof TtrpcError && !result.remote, "the connection closed under them");
    }
    assert.ok(client.closed);
    assert.ok(
      r.log.lines.some((l) =>
        /over 65536 bytes of requests held \(3 requests, no daemon listening\)/.test(l),
      ),
    );
    assert.equal(r.listener.connections, 0, "nothing of the pair is kept");
  });

  it("stops re-sending a request that takes every backend down with it", { timeout: 20_000 }, async () => {
    const r = await relay({ maxSends: 3 });
    const backend = await new Backend("b", r.backendPath).start();
    cleanups.push(() => backend.kill());
    const client = await r.connect();
    const err = await call(client, "Poison", "p").catch((e: unknown) => e);
    assert.ok(err instanceof TtrpcError && err.remote && err.code === Code.UNAVAILABLE, String(err));
    assert.match((err as TtrpcError).detail, /went away 3 times/);
    assert.deepEqual(backend.seen, ["Poison:p", "Poison:p", "Poison:p"]);
    assert.equal(await call(client, "Echo", "ok"), "b:ok", "the connection goes on");
  });
});
