// The agent protocol version is checked at boot: an agent that speaks another version stops
// the boot with an error naming both versions, and the VM is stopped, not left running.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { AGENT_PROTOCOL_VERSION, AgentClient } from "../src/agent/client.js";
import { parseConfig } from "../src/config/config.js";
import { ShimError, statusOf } from "../src/errors.js";
import { Sandbox } from "../src/sandbox/sandbox.js";
import { TtrpcClient } from "../src/ttrpc/client.js";
import { messageCodec } from "../src/ttrpc/proto.js";
import { TtrpcServer } from "../src/ttrpc/server.js";
import { Code } from "../src/ttrpc/status.js";
import { log } from "../src/util/log.js";
import type { HypervisorDriver, VmHandle } from "../src/vmm/types.js";

const health = messageCodec("cloudhv.agent.v1.HealthResponse");
const version = messageCodec("cloudhv.agent.v1.VersionResponse");

describe("agent protocol version", () => {
  let dir: string;
  let sock: string;
  let protocolVersion = AGENT_PROTOCOL_VERSION;
  const server = new TtrpcServer().register("cloudhv.agent.v1.Agent", {
    Health: async () => health.encode({ status: "SERVING", uptimeNs: 1 }),
    Version: async () =>
      version.encode({ agentVersion: "9.9.9", protocolVersion, kernelRelease: "6.1", runtimeVersion: "" }),
  });

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-agent-protocol-"));
    sock = path.join(dir, "agent.sock");
    await server.listen(sock);
  });

  after(async () => {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** A driver whose VM is only the in-process agent; `stopped` counts VM stops. */
  function fakeDriver() {
    const state = { stopped: 0 };
    const driver: HypervisorDriver = {
      name: "cloud-hypervisor",
      async launch(config) {
        const vm: Partial<VmHandle> = {
          id: config.id,
          pid: process.pid,
          exited: new Promise(() => {}),
          connectAgent: async () => new AgentClient(await TtrpcClient.connect(sock)),
          stop: async () => {
            state.stopped++;
          },
        };
        return vm as VmHandle;
      },
    };
    return { driver, state };
  }

  const boot = (driver: HypervisorDriver) =>
    Sandbox.boot(
      { id: "pod1", vcpus: 1, maxVcpus: 1, memoryMb: 256, disks: [] },
      driver,
      parseConfig({ state_dir: dir }, "test"),
      log.child({ test: "agent-protocol" }),
    );

  it("boots when the agent speaks this shim's protocol", async () => {
    protocolVersion = AGENT_PROTOCOL_VERSION;
    const { driver, state } = fakeDriver();
    const sandbox = await boot(driver);
    assert.equal(state.stopped, 0);
    await sandbox.destroy();
  });

  it("refuses an agent of another protocol version, names both, and stops the VM", async () => {
    protocolVersion = AGENT_PROTOCOL_VERSION + 1;
    const { driver, state } = fakeDriver();
    const err = await boot(driver).then(
      () => assert.fail("booted with a mismatched agent"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof ShimError);
    assert.equal(statusOf(err).code, Code.FAILED_PRECONDITION);
    assert.match(
      err.message,
      new RegExp(`9\\.9\\.9.*protocol ${AGENT_PROTOCOL_VERSION + 1}.*speaks ${AGENT_PROTOCOL_VERSION}`),
    );
    assert.match(err.message, /rootfs_path/);
    assert.equal(state.stopped, 1);
  });
});
