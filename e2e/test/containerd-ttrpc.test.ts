// Level 2 (protocol): our ttrpc client talking to containerd's own ttrpc server.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { after, before, describe, it } from "node:test";
import { Code, connectTtrpc, eventsForwardRequest, TtrpcError } from "@cloudhv/shim";
import { PrivateContainerd } from "../src/containerd.js";

describe("our ttrpc against containerd", () => {
  let containerd: PrivateContainerd;
  before(async () => {
    containerd = await PrivateContainerd.start();
  });
  after(async () => {
    await containerd?.stop();
  });

  it("forwards an event that `ctr events` then shows", async () => {
    const watcher: ChildProcess = spawn("ctr", ["--address", containerd.address, "events"], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    let seen = "";
    const shown = new Promise<void>((resolve) => {
      watcher.stdout?.on("data", (b: Buffer) => {
        seen += b.toString();
        if (seen.includes("/cloudhv/test")) resolve();
      });
    });
    try {
      await new Promise((r) => setTimeout(r, 300)); // let ctr subscribe
      const client = await connectTtrpc(containerd.ttrpcAddress);
      const request = eventsForwardRequest({
        namespace: "cloudhv-test",
        topic: "/cloudhv/test",
        event: { typeUrl: "containerd.events.TaskOOM", value: Buffer.from([0x0a, 0x02, 0x63, 0x31]) },
      });
      await client.call("containerd.services.events.ttrpc.v1.Events", "Forward", request, {
        timeoutMs: 5000,
      });
      await Promise.race([
        shown,
        new Promise((_, reject) => setTimeout(() => reject(new Error(`not shown: ${seen}`)), 5000)),
      ]);
      assert.match(seen, /cloudhv-test\s+\/cloudhv\/test/);
      client.close();
    } finally {
      watcher.kill();
    }
  });

  it("gets containerd's UNIMPLEMENTED status for a method it does not serve", async () => {
    const client = await connectTtrpc(containerd.ttrpcAddress);
    await assert.rejects(
      client.call("containerd.services.events.ttrpc.v1.Events", "NoSuchMethod", Buffer.alloc(0), {
        timeoutMs: 5000,
      }),
      (err: unknown) => err instanceof TtrpcError && err.code === Code.UNIMPLEMENTED,
    );
    client.close();
  });
});
