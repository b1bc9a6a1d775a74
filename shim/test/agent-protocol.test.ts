// The agent protocol version is checked at boot: an agent that speaks another version stops
// the create with an error naming both versions, and the VM and everything else is undone.
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, it } from "node:test";
import { AGENT_PROTOCOL_VERSION } from "../src/agent/client.js";
import { ShimError } from "../src/errors.js";
import { Code } from "../src/ttrpc/status.js";
import { codeOf, TaskRig } from "./support/task-rig.js";

describe("agent protocol version", () => {
  let rig: TaskRig;
  beforeEach(async () => {
    rig = await TaskRig.open();
  });
  afterEach(async () => {
    await rig.close();
  });

  it("boots when the agent speaks this shim's protocol", async () => {
    await rig.create("same");
    assert.equal(rig.vm.agent.protocolVersion, AGENT_PROTOCOL_VERSION);
    assert.ok(rig.vm.agent.calls.some((c) => c.method === "Version"));
  });

  it("refuses an agent of another protocol version, names both, and leaves nothing", async () => {
    rig.driver.onLaunch = (vm) => {
      vm.agent.protocolVersion = AGENT_PROTOCOL_VERSION + 1;
    };
    const err = await rig.create("other").then(
      () => assert.fail("booted with a mismatched agent"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof ShimError);
    assert.equal(codeOf(err), Code.FAILED_PRECONDITION);
    assert.match(
      err.message,
      new RegExp(`fake.*protocol ${AGENT_PROTOCOL_VERSION + 1}.*speaks ${AGENT_PROTOCOL_VERSION}`),
    );
    assert.match(err.message, /rootfs_path/);
    assert.deepEqual(await rig.settled(), { tasks: [], vms: [], rootfs: [], network: [] });
  });
});
