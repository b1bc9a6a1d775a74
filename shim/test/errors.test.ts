// The one mapping from host errors to ttrpc codes (errors.ts): each kind's code, guest codes
// through the allow-list, guest text cut before it reaches a log or containerd. The agent
// cases go over a real socket: an in-process agent answers with the status under test.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { AgentClient } from "../src/agent/client.js";
import {
  type ErrorKind,
  fromAgentCall,
  KIND_CODES,
  MAX_GUEST_TEXT_BYTES,
  ShimError,
  statusOf,
  truncateUntrusted,
} from "../src/errors.js";
import { NetworkError } from "../src/network/pod-network.js";
import { RootfsError } from "../src/rootfs/errors.js";
import { TtrpcClient } from "../src/ttrpc/client.js";
import { TtrpcServer } from "../src/ttrpc/server.js";
import { Code, TtrpcError } from "../src/ttrpc/status.js";
import { ExecError } from "../src/util/exec.js";
import { ChApiError } from "../src/vmm/ch-api.js";

const EXPECTED: Record<ErrorKind, number> = {
  InvalidArgument: Code.INVALID_ARGUMENT,
  NotFound: Code.NOT_FOUND,
  AlreadyExists: Code.ALREADY_EXISTS,
  FailedPrecondition: Code.FAILED_PRECONDITION,
  ResourceExhausted: Code.RESOURCE_EXHAUSTED,
  Unimplemented: Code.UNIMPLEMENTED,
  Unavailable: Code.UNAVAILABLE,
  DeadlineExceeded: Code.DEADLINE_EXCEEDED,
  DataLoss: Code.DATA_LOSS,
  Internal: Code.INTERNAL,
};

describe("statusOf", () => {
  it("maps every error kind to its code and keeps the message", () => {
    assert.deepEqual(Object.keys(KIND_CODES).sort(), Object.keys(EXPECTED).sort());
    for (const [kind, code] of Object.entries(EXPECTED)) {
      assert.deepEqual(statusOf(new ShimError(kind as ErrorKind, `a ${kind} failure`)), {
        code,
        message: `a ${kind} failure`,
      });
    }
  });

  it("maps the other modules' error types through their kinds", () => {
    assert.equal(statusOf(new RootfsError("NotFound", "layer gone")).code, Code.NOT_FOUND);
    assert.equal(statusOf(new NetworkError("no eth0")).code, Code.FAILED_PRECONDITION);
    const failedTool = { argv: ["mkfs.erofs"], code: 1, signal: null, stdout: "", stderr: "boom" };
    assert.equal(statusOf(new ExecError(failedTool)).code, Code.UNAVAILABLE);
    assert.equal(statusOf(new ChApiError("PUT", "vm.boot", undefined, ["reset"])).code, Code.UNAVAILABLE);
    assert.equal(statusOf(new ChApiError("PUT", "vm.boot", 400, ["bad"])).code, Code.INTERNAL);
  });

  it("keeps our own transport codes and makes a plain Error UNKNOWN", () => {
    assert.deepEqual(statusOf(new TtrpcError(Code.UNAVAILABLE, "ttrpc connection closed")), {
      code: Code.UNAVAILABLE,
      message: "ttrpc connection closed",
    });
    assert.deepEqual(statusOf(new Error("a bug")), { code: Code.UNKNOWN, message: "a bug" });
  });

  it("never passes a peer's code through, and cuts its text", () => {
    const status = statusOf(new TtrpcError(Code.UNAUTHENTICATED, "x".repeat(10_000), true));
    assert.equal(status.code, Code.INTERNAL);
    assert.ok(Buffer.byteLength(status.message) < MAX_GUEST_TEXT_BYTES + 64, status.message);
  });
});

describe("truncateUntrusted", () => {
  it("leaves short text alone and cuts long text on a character boundary, saying so", () => {
    assert.equal(truncateUntrusted("short"), "short");
    const cut = truncateUntrusted("é".repeat(1000), 11);
    assert.equal(cut, `${"é".repeat(5)}… (2000 bytes, cut)`);
  });
});

describe("guest agent errors", () => {
  let dir: string;
  let agent: AgentClient;
  let reply: TtrpcError = new TtrpcError(Code.OK, "");
  const server = new TtrpcServer().register("cloudhv.agent.v1.Agent", {
    RemoveContainer: async () => {
      throw reply;
    },
  });

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-errors-"));
    const sock = path.join(dir, "agent.sock");
    await server.listen(sock);
    agent = new AgentClient(await TtrpcClient.connect(sock));
  });

  after(async () => {
    agent.close();
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** What containerd would get when the agent answers RemoveContainer with `code`. */
  async function statusFor(code: number, message: string) {
    reply = new TtrpcError(code, message);
    const err = await agent.removeContainer("c1").then(
      () => assert.fail("RemoveContainer succeeded"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof ShimError, `not a ShimError: ${String(err)}`);
    return statusOf(err);
  }

  it("keeps the codes of the allow-list", async () => {
    for (const code of [
      Code.INVALID_ARGUMENT,
      Code.NOT_FOUND,
      Code.ALREADY_EXISTS,
      Code.FAILED_PRECONDITION,
      Code.RESOURCE_EXHAUSTED,
      Code.UNIMPLEMENTED,
    ]) {
      const status = await statusFor(code, "container c1 is busy");
      assert.equal(status.code, code);
      assert.match(status.message, /RemoveContainer.*container c1 is busy/);
    }
  });

  it("turns UNAUTHENTICATED, UNAVAILABLE and unknown codes into INTERNAL", async () => {
    for (const code of [Code.UNAUTHENTICATED, Code.UNAVAILABLE, Code.PERMISSION_DENIED, 99]) {
      const status = await statusFor(code, "nope");
      assert.equal(status.code, Code.INTERNAL, `guest code ${code}`);
    }
    assert.match((await statusFor(Code.UNAUTHENTICATED, "nope")).message, /UNAUTHENTICATED/);
  });

  it("cuts a long message from the guest", async () => {
    const status = await statusFor(Code.NOT_FOUND, `${"a".repeat(50_000)}END`);
    assert.equal(status.code, Code.NOT_FOUND);
    assert.ok(Buffer.byteLength(status.message) < MAX_GUEST_TEXT_BYTES + 100, `${status.message.length}`);
    assert.doesNotMatch(status.message, /END/);
    assert.match(status.message, /50003 bytes, cut/);
  });

  it("makes a lost agent UNAVAILABLE and a timeout DEADLINE_EXCEEDED", () => {
    const gone = fromAgentCall("Health", new TtrpcError(Code.UNAVAILABLE, "ttrpc connection closed"));
    assert.equal(statusOf(gone).code, Code.UNAVAILABLE);
    const slow = fromAgentCall("Health", new TtrpcError(Code.DEADLINE_EXCEEDED, "no answer within 5 ms"));
    assert.equal(statusOf(slow).code, Code.DEADLINE_EXCEEDED);
    // Only a status the guest sent is the guest's: the same code from our client stays ours.
    const remote = fromAgentCall("Health", new TtrpcError(Code.DEADLINE_EXCEEDED, "guest says so", true));
    assert.equal(statusOf(remote).code, Code.INTERNAL);
  });
});
