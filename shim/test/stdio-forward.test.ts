// Agent calls and the stdio forwarder against an in-process agent: a guest that never answers
// or answers at once with nothing can neither hold a call forever nor make the daemon spin.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import pino from "pino";
import { AgentClient } from "../src/agent/client.js";
import { statusOf } from "../src/errors.js";
import { StdioForwarder } from "../src/stdio/forward.js";
import { TtrpcClient } from "../src/ttrpc/client.js";
import { Code } from "../src/ttrpc/status.js";
import { FakeAgent } from "./support/fake-agent.js";

describe("agent calls", () => {
  it("end at the client's default deadline when the guest never answers; long polls have none", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-deadline-"));
    const agent = new FakeAgent();
    await agent.listen(path.join(dir, "agent.sock"));
    const client = new AgentClient(await TtrpcClient.connect(path.join(dir, "agent.sock")), 300);
    try {
      agent.hanging.add("ListPids");
      agent.hanging.add("WaitProcess");
      const tooLate = sleep(5000, undefined, { ref: false }).then(() =>
        assert.fail("ListPids still pending after 5 s"),
      );
      await assert.rejects(Promise.race([client.listPids("c"), tooLate]), (err: unknown) => {
        assert.equal(statusOf(err).code, Code.DEADLINE_EXCEEDED, String(err));
        return true;
      });
      // WaitProcess waits as long as the process runs: still pending after twice the deadline.
      const waiting = client.waitProcess({ containerId: "c", execId: "" }).then(
        () => "answered",
        () => "failed",
      );
      assert.equal(await Promise.race([waiting, sleep(600).then(() => "pending")]), "pending");
    } finally {
      client.ttrpc.close();
      await agent.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("stdio forwarder", () => {
  let dir: string;
  let agent: FakeAgent;
  let client: AgentClient;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-stdio-"));
    agent = new FakeAgent();
    await agent.listen(path.join(dir, "agent.sock"));
    client = new AgentClient(await TtrpcClient.connect(path.join(dir, "agent.sock")));
  });

  after(async () => {
    client.ttrpc.close();
    await agent.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("backs off when the guest answers every read at once with nothing", async () => {
    agent.emptyReads = true;
    // A FIFO as containerd gives; the forwarder holds a read end of its own, so no reader is needed.
    const out = path.join(dir, "stdout");
    execFileSync("mkfifo", [out]);
    const forwarder = new StdioForwarder(
      client,
      { containerId: "c", execId: "" },
      { stdin: "", stdout: out, stderr: "", terminal: false },
      pino({ level: "silent" }),
    );
    await sleep(1000);
    forwarder.close();
    const reads = agent.called("ReadStream").length;
    // Without the back-off this is thousands a second; with it, about ten.
    assert.ok(reads >= 1 && reads < 40, `${reads} ReadStream calls in 1 s`);
  });
});
