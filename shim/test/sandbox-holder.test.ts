// A CRI sandbox run by the guest agent's namespace holder (config sandbox_holder, the default):
// the daemon prepares no rootfs and plugs no disks for it, the agent is asked for a sandbox
// without serials, its app containers still get their disks, and a restarted daemon adopts it.
import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";
import { isNoRootfs, noRootfs } from "../src/pod/rootfs.js";
import { NS, TaskRig } from "./support/task-rig.js";

describe("a CRI sandbox without a pause container (sandbox_holder)", () => {
  let rig: TaskRig | undefined;
  afterEach(async () => {
    await rig?.close();
    rig = undefined;
  });

  it("prepares no rootfs and no disks for the sandbox; app containers get theirs; adopted after a restart", async () => {
    const r = await TaskRig.open({ sandbox_holder: true });
    rig = r;
    await r.create("sb", { role: "sandbox" });
    await r.tasks.start(NS, "sb", "");
    const vm = r.vm;
    assert.deepEqual(vm.config.disks ?? [], [], "the VM boots without disks");
    assert.deepEqual([...r.rootfs.held], [], "no rootfs prepared for the sandbox");
    assert.deepEqual(vm.agent.disksAsked.get("sb"), ["", ""], "the agent is asked for the holder");

    await r.create("app", { role: "container", sandbox: "sb" });
    await r.tasks.start(NS, "app", "");
    assert.deepEqual(vm.agent.disksAsked.get("app"), ["iapp", "sapp"]);
    assert.deepEqual([...r.rootfs.held], [`${NS}/app`]);

    assert.equal(await r.restartDaemon(), 2);
    assert.equal(r.tasks.state(NS, "sb", "").status, "RUNNING");
    assert.equal(r.vm, vm, "the same VM, not a new one");

    for (const id of ["app", "sb"]) {
      vm.agent.exitProcess(id, "", 0);
      await r.tasks.wait(NS, id, "");
      await r.tasks.delete(NS, id, "");
    }
    assert.deepEqual(await r.settled(), { tasks: [], vms: [], rootfs: [], network: [] });
  });

  it("sandbox_holder: false keeps the pause image's disks; plain tasks always get theirs", async () => {
    const r = await TaskRig.open({ sandbox_holder: false });
    rig = r;
    await r.create("sb", { role: "sandbox" });
    assert.deepEqual(r.vm.agent.disksAsked.get("sb"), ["isb", "ssb"]);
    await r.tasks.forceDelete(NS, "sb");
    const h = await TaskRig.open({ sandbox_holder: true });
    await h.create("plain");
    const asked = h.vm.agent.disksAsked.get("plain");
    await h.close();
    assert.deepEqual(asked, ["iplain", "splain"], "a plain task is never the holder");
  });

  it("only the all-empty record means no rootfs", () => {
    const none = noRootfs();
    assert.ok(none.record && isNoRootfs(none.record));
    assert.ok(!isNoRootfs({ ...(none.record ?? {}), imageKey: "0".repeat(64), scratchPath: "/s" } as never));
  });
});
