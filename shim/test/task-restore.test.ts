// A restarted daemon takes over from the pods' records (TaskService.restore): the tasks keep
// running and answer as before; exits that happened meanwhile are reported; a VM that died
// meanwhile has its tasks announced as killed and its host resources released.
import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import { NS, TaskRig } from "./support/task-rig.js";

describe("a restarted daemon takes over its predecessor's pods", () => {
  let rig: TaskRig;
  beforeEach(async () => {
    rig = await TaskRig.open();
  });
  afterEach(async () => {
    await rig.close();
  });

  const recordFiles = () => readdir(path.join(rig.dir, "state", "records")).catch(() => [] as string[]);

  it("serves a running pod's tasks: state, exec, kill, wait, delete; nothing left afterwards", async () => {
    await rig.create("sb", { role: "sandbox" });
    await rig.tasks.start(NS, "sb", "");
    await rig.create("app", { role: "container", sandbox: "sb" });
    await rig.tasks.start(NS, "app", "");
    const vm = rig.vm;
    rig.events.events.length = 0;

    assert.equal(await rig.restartDaemon(), 2);
    assert.equal(rig.tasks.state(NS, "app", "").status, "RUNNING");
    assert.equal(rig.tasks.state(NS, "sb", "").status, "RUNNING");
    assert.deepEqual(rig.events.events, [], "nothing re-published");
    assert.equal(rig.vm, vm, "the same VM, not a new one");

    // A new container can still join the adopted sandbox.
    await rig.create("late", { role: "container", sandbox: "sb" });
    await rig.tasks.start(NS, "late", "");

    await rig.tasks.exec(NS, {
      id: "app",
      execId: "e1",
      terminal: false,
      stdin: "",
      stdout: "",
      stderr: "",
      spec: {
        typeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process",
        value: Buffer.from("{}"),
      },
    });
    await rig.tasks.start(NS, "app", "e1");
    vm.agent.exitProcess("app", "e1", 4);
    assert.equal((await rig.tasks.wait(NS, "app", "e1")).exitStatus, 4);

    for (const id of ["late", "app", "sb"]) {
      vm.agent.exitProcess(id, "", 0);
      await rig.tasks.wait(NS, id, "");
      await rig.tasks.delete(NS, id, "");
    }
    assert.deepEqual(await rig.settled(), { tasks: [], vms: [], rootfs: [], network: [] });
    assert.deepEqual(await recordFiles(), [], "no record left");
  });

  it("a daemon killed right after an app container's delete reply: the next unplugs its disks and releases them", async () => {
    await rig.create("sb", { role: "sandbox" });
    await rig.tasks.start(NS, "sb", "");
    await rig.create("app", { role: "container", sandbox: "sb" });
    await rig.tasks.start(NS, "app", "");
    const vm = rig.vm;
    // The dead daemon's unplugs never finish.
    vm.unplugGate = "never";
    vm.agent.exitProcess("app", "", 0);
    await rig.tasks.wait(NS, "app", "");
    await rig.tasks.delete(NS, "app", "");
    // Its unplugs stay stuck; the new daemon's are answered.
    vm.unplugGate = undefined;
    assert.equal(await rig.restartDaemon(), 1, "only the sandbox is a task");
    const until = Date.now() + 2000;
    while (rig.leftovers().rootfs.length > 1 && Date.now() < until)
      await new Promise((r) => setTimeout(r, 5));
    assert.deepEqual(rig.leftovers().rootfs, [`${NS}/sb`], "the deleted container's files are released");
    assert.deepEqual([...vm.plugged.values()], [], "its disks left the VM");
    // The record was written again without them.
    while (Date.now() < until) {
      const record = JSON.parse(
        await readFile(path.join(rig.dir, "state", "records", `${vm.id}.json`), "utf8"),
      );
      if (record.pod.retiring === undefined) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    const record = JSON.parse(
      await readFile(path.join(rig.dir, "state", "records", `${vm.id}.json`), "utf8"),
    );
    assert.equal(record.pod.retiring, undefined);
    // The same id joins again.
    await rig.create("app", { role: "container", sandbox: "sb" });
    await rig.tasks.start(NS, "app", "");
    for (const id of ["app", "sb"]) {
      vm.agent.exitProcess(id, "", 0);
      await rig.tasks.wait(NS, id, "");
      await rig.tasks.delete(NS, id, "");
    }
    assert.deepEqual(await rig.settled(), { tasks: [], vms: [], rootfs: [], network: [] });
    assert.deepEqual(await recordFiles(), [], "no record left");
  });

  it("a daemon killed while an app container's disks were leaving, and the VM gone meanwhile: all released", async () => {
    await rig.create("sb", { role: "sandbox" });
    await rig.tasks.start(NS, "sb", "");
    await rig.create("app", { role: "container", sandbox: "sb" });
    await rig.tasks.start(NS, "app", "");
    const vm = rig.vm;
    vm.unplugGate = "never";
    vm.agent.exitProcess("app", "", 0);
    await rig.tasks.wait(NS, "app", "");
    await rig.tasks.delete(NS, "app", "");
    // Gone without a word to anyone (as in the case below): the old daemon's unplugs stay stuck.
    vm.stopped = true;
    await vm.agent.close();
    assert.equal(await rig.restartDaemon(), 0);
    assert.deepEqual(await rig.settled(), { tasks: [], vms: [], rootfs: [], network: [] });
    assert.deepEqual(await recordFiles(), []);
  });

  it("a save that waited its turn past the pod's removal leaves no record (a late exit's)", async () => {
    await rig.create("sb", { role: "sandbox" });
    await rig.tasks.start(NS, "sb", "");
    const pod = rig.tasks.list()[0]?.pod;
    assert.ok(pod);
    assert.equal((await recordFiles()).length, 1);
    rig.vm.agent.exitProcess("sb", "", 0);
    await rig.tasks.wait(NS, "sb", "");
    await rig.tasks.delete(NS, "sb", "");
    // What recordExit does when an exit lands after the delete: it must not bring the record back.
    await (rig.tasks as unknown as { persist(p: typeof pod): Promise<void> }).persist(pod);
    assert.deepEqual(await recordFiles(), [], "no record left");
  });

  it("reports an exit that happened while no daemon watched, with its real status", async () => {
    await rig.create("t1");
    await rig.tasks.start(NS, "t1", "");
    const vm = rig.vm;
    // The daemon is gone (its service dropped below); the process ends meanwhile.
    await rig.restartDaemon();
    vm.agent.exitProcess("t1", "", 7);
    assert.equal((await rig.tasks.wait(NS, "t1", "")).exitStatus, 7);
    assert.ok(rig.events.named("TaskExit").some((e) => e.containerId === "t1" && e.exitStatus === 7));
    await rig.tasks.delete(NS, "t1", "");
    assert.deepEqual(await rig.settled(), { tasks: [], vms: [], rootfs: [], network: [] });
  });

  it("announces the tasks of a VM that died meanwhile as killed and releases what it held", async () => {
    await rig.create("t2");
    await rig.tasks.start(NS, "t2", "");
    const vm = rig.vm;
    // Gone without a word to anyone: no daemon watched it.
    vm.stopped = true;
    await vm.agent.close();
    rig.events.events.length = 0;
    assert.equal(await rig.restartDaemon(), 0);
    assert.deepEqual(
      rig.events.named("TaskExit").map((e) => [e.containerId, e.exitStatus]),
      [["t2", 137]],
    );
    assert.deepEqual(await rig.settled(), { tasks: [], vms: [], rootfs: [], network: [] });
    assert.deepEqual(await recordFiles(), []);
  });
  it("asks an adopted VM's agent again on a fresh connection when the first try gets no answer", async () => {
    await rig.create("t3");
    await rig.tasks.start(NS, "t3", "");
    const vm = rig.vm;
    rig.events.events.length = 0;
    // As on virtio-serial when the guest drops the new daemon's first request with the old
    // connection's leftovers: that try fails, the pod is not given up.
    rig.driver.failNext("connectAgent");
    assert.equal(await rig.restartDaemon(), 1);
    assert.equal(rig.tasks.state(NS, "t3", "").status, "RUNNING");
    assert.equal(vm.stopped, false, "the VM was not stopped");
    assert.deepEqual(rig.events.named("TaskExit"), []);
    vm.agent.exitProcess("t3", "", 0);
    await rig.tasks.wait(NS, "t3", "");
    await rig.tasks.delete(NS, "t3", "");
    assert.deepEqual(await rig.settled(), { tasks: [], vms: [], rootfs: [], network: [] });
  });
});
