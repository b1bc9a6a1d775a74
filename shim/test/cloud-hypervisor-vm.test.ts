// The boot scenario through the Cloud Hypervisor driver with a REAL cloud-hypervisor: our guest
// (build/guest/vmlinux + rootfs.erofs) boots, the agent answers Health and Version over hybrid
// vsock, the VM stops, nothing is left behind. It needs a cloud-hypervisor binary and a working
// KVM or MSHV; without them it is reported as skipped, with the exact reason.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { AGENT_PROTOCOL_VERSION } from "../src/agent/client.js";
import { loadConfig } from "../src/config.js";
import { CloudHypervisorDriver } from "../src/vmm/cloud-hypervisor.js";
import { cloudHypervisorAvailability } from "../src/vmm/select.js";

const GUEST = fileURLToPath(new URL("../../../build/guest/", import.meta.url));
const KERNEL = path.join(GUEST, "vmlinux");
const ROOTFS = path.join(GUEST, "rootfs.erofs");

/** The cloud-hypervisor to use: $CLOUDHV_CLOUD_HYPERVISOR, then PATH, then the runtime config's. */
async function candidates(): Promise<string[]> {
  const list: string[] = [];
  if (process.env.CLOUDHV_CLOUD_HYPERVISOR) list.push(process.env.CLOUDHV_CLOUD_HYPERVISOR);
  list.push("cloud-hypervisor");
  try {
    list.push((await loadConfig()).cloud_hypervisor_binary);
  } catch {
    // a broken runtime config is not this test's business
  }
  return list;
}

/** Why this node cannot run the scenario, or undefined when it can. */
async function unavailable(): Promise<{ binary?: string; why?: string }> {
  const { binary, reason } = await cloudHypervisorAvailability(await candidates());
  if (reason || !binary) return { why: reason ?? "no cloud-hypervisor" };
  if (!existsSync(KERNEL) || !existsSync(ROOTFS))
    return { why: `guest not built (${KERNEL}, ${ROOTFS}): run scripts/dev.sh setup` };
  return { binary };
}

describe("Cloud Hypervisor driver with a real cloud-hypervisor", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-chvm-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("boots our guest, the agent answers Health and Version over hybrid vsock, stop leaves nothing", async (t) => {
    const { binary, why } = await unavailable();
    if (why || !binary) {
      t.skip(`skipped: ${why}`);
      return;
    }
    t.diagnostic(`cloud-hypervisor: ${binary}`);
    const driver = new CloudHypervisorDriver({ binary });
    const stateDir = path.join(dir, "vm");
    const t0 = Date.now();
    const vm = await driver.launch({
      id: "ch-boot",
      kernelPath: KERNEL,
      rootfsPath: ROOTFS,
      vcpus: 1,
      memoryMb: 256,
      stateDir,
    });
    try {
      const agent = await vm.connectAgent({ timeoutMs: 30_000 });
      t.diagnostic(`agent answered ${Date.now() - t0} ms after launch`);
      assert.equal((await agent.health()).status, "SERVING");
      const version = await agent.version();
      assert.equal(version.protocolVersion, AGENT_PROTOCOL_VERSION);
      assert.ok(version.kernelRelease.length > 0);
      assert.equal((await vm.info()).state, "running");
    } finally {
      await vm.stop();
    }
    const exit = await vm.exited;
    assert.deepEqual(exit, { code: 0, signal: null }, "cloud-hypervisor exited by vmm.shutdown");
    await assert.rejects(stat(stateDir), { code: "ENOENT" });
    assert.throws(() => process.kill(vm.pid, 0), { code: "ESRCH" });
  });
});
