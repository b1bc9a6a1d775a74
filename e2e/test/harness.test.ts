// The harness cleans up after a test that did not: a pod left running with a CNI network is
// stopped and removed by harness.stop(), so its netns, veth and VM do not outlive the harness.
import assert from "node:assert/strict";
import { mkdir, readdir } from "node:fs/promises";
import path from "node:path";
import { describe, it } from "node:test";
import { exec } from "@cloudhv/shim";
import { HANDLER, startHarness } from "../src/harness.js";
import { processesMatching } from "../src/leaks.js";

const netnsNames = async () => (await readdir("/var/run/netns").catch(() => [])).sort();

describe("local harness", () => {
  it("stop() removes the pods a test left running: no netns, veth, VM or bridge remains", async () => {
    const netnsBefore = await netnsNames();
    const harness = await startHarness();
    const vms = path.join(harness.runtime.stateDir, "vm");
    let stopped = false;
    try {
      const logDirectory = path.join(harness.dir, "pods", "left");
      await mkdir(logDirectory, { recursive: true });
      const podId = await harness.cri.runPodSandbox(
        { metadata: { name: "left", uid: "uid-left", namespace: "default" }, logDirectory },
        HANDLER,
      );
      assert.match((await harness.cri.podSandboxStatus(podId)).network?.ip ?? "", /^10\.88\./);
      assert.equal((await processesMatching(vms)).length, 1, "the pod's VM runs");
      const netnsDuring = await netnsNames();
      assert.equal(netnsDuring.length, netnsBefore.length + 1, "CNI made the pod's netns");
      // The test "forgets" the pod and stops the harness.
      await harness.stop();
      stopped = true;
      assert.deepEqual(await netnsNames(), netnsBefore, "the pod's netns is gone");
      assert.deepEqual(await processesMatching(vms), [], "the pod's VM is gone");
      const bridge = await exec(["ip", "link", "show", harness.bridge]);
      assert.notEqual(bridge.code, 0, "the bridge is gone");
      const veths = await exec(["ip", "-o", "link", "show", "master", harness.bridge]);
      assert.equal(veths.stdout.trim(), "", "no veth is left on the bridge");
    } finally {
      if (!stopped) await harness.stop();
    }
  });
});
