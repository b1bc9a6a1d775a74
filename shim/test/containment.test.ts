// The pod module puts the VMM in the pod's cgroup and scores it by the pod's QoS (fake VMM,
// cgroup hierarchies in a temp dir, recorded OOM scores), and leaves no cgroup it made.
import assert from "node:assert/strict";
import { mkdir, stat } from "node:fs/promises";
import path from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import { NS, TaskRig } from "./support/task-rig.js";

const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

describe("a pod's VMM inside the pod's cgroup, scored by its QoS", () => {
  let rig: TaskRig;
  beforeEach(async () => {
    rig = await TaskRig.open();
  });
  afterEach(async () => {
    await rig.close();
  });

  for (const [driver, cgroupsPath, dir] of [
    ["cgroupfs", "/kubepods/burstable/podu1/sb", "kubepods/burstable/podu1/sb"],
    [
      "systemd",
      "kubepods-burstable-podu1.slice:cri-containerd:sb",
      "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podu1.slice/cri-containerd-sb.scope",
    ],
  ] as const) {
    it(`launches the VMM joining the sandbox's cgroup (${driver}), removes what it created, keeps kubelet's`, async () => {
      const kubelets = path.join(rig.containment.root, "memory", path.dirname(dir));
      await mkdir(kubelets, { recursive: true });
      await rig.create("sb", { role: "sandbox", cgroupsPath, oomScoreAdj: -998 });
      const vm = rig.vm;
      assert.deepEqual(vm.config.cgroup?.procs, [
        path.join(rig.containment.root, "cpu", dir, "cgroup.procs"),
        path.join(rig.containment.root, "memory", dir, "cgroup.procs"),
      ]);
      for (const h of ["cpu", "memory"]) assert.ok(await exists(path.join(rig.containment.root, h, dir)));
      await rig.tasks.delete(NS, "sb", "");
      assert.ok(
        rig.driver.vms.every((vm) => vm.killed || vm.stopped),
        "the VM ended before the reply",
      );
      // What outlives the VMM goes after the reply, once it exited (Pod.leave).
      await rig.tasks.lingering();
      assert.equal(await exists(path.join(rig.containment.root, "memory", dir)), false, "our leaf went");
      assert.equal(
        await exists(path.join(rig.containment.root, "cpu", "kubepods")),
        false,
        "all we made went",
      );
      assert.equal(await exists(kubelets), true, "kubelet's pod cgroup stays");
    });
  }

  it("scores Guaranteed -997 and BestEffort 1000, whatever the spec says (the sandbox's is always -998)", async () => {
    await rig.create("g", { role: "sandbox", cgroupsPath: "/kubepods/podg/g", oomScoreAdj: -998 });
    assert.equal(rig.containment.scoreOf(rig.vm.pid), -997);
    await rig.tasks.delete(NS, "g", "");
    await rig.create("b", {
      role: "sandbox",
      cgroupsPath: "kubepods-besteffort-podb.slice:cri-containerd:b",
      oomScoreAdj: -998,
    });
    assert.equal(rig.containment.scoreOf(rig.vm.pid), 1000);
    await rig.tasks.delete(NS, "b", "");
  });

  it("scores a Burstable pod as its most protected container, within the Burstable range", async () => {
    await rig.create("sb", {
      role: "sandbox",
      cgroupsPath: "/kubepods/burstable/pod2/sb",
      oomScoreAdj: -998,
    });
    const pid = rig.vm.pid;
    assert.equal(rig.containment.scoreOf(pid), 999, "no container yet: least protected Burstable");
    await rig.create("c1", { role: "container", sandbox: "sb", oomScoreAdj: 640 });
    assert.equal(rig.containment.scoreOf(pid), 640);
    await rig.create("c2", { role: "container", sandbox: "sb", oomScoreAdj: 900 });
    assert.equal(rig.containment.scoreOf(pid), 640);
    await rig.tasks.delete(NS, "c1", "");
    assert.equal(rig.containment.scoreOf(pid), 900, "c1 left: c2's score");
    await rig.tasks.delete(NS, "c2", "");
    await rig.tasks.delete(NS, "sb", "");
  });

  it("a standalone task uses its own cgroupsPath and the spec's score; none given, none set", async () => {
    await rig.create("t1", { cgroupsPath: "/default/t1", oomScoreAdj: 300 });
    assert.equal(rig.containment.scoreOf(rig.vm.pid), 300);
    assert.deepEqual(rig.vm.config.cgroup?.procs?.length, 2);
    await rig.tasks.delete(NS, "t1", "");
    await rig.create("t2");
    assert.equal(rig.vm.config.cgroup, undefined);
    assert.equal(rig.containment.scoreOf(rig.vm.pid), undefined);
    await rig.tasks.delete(NS, "t2", "");
    await rig.tasks.lingering();
    assert.equal(await exists(path.join(rig.containment.root, "cpu", "default")), false);
  });

  it("refuses a malformed cgroupsPath as INVALID_ARGUMENT before anything is built", async () => {
    await assert.rejects(rig.create("bad", { role: "sandbox", cgroupsPath: "/kubepods/../../etc" }), {
      kind: "InvalidArgument",
    });
    assert.deepEqual(await rig.settled(), { tasks: [], vms: [], rootfs: [], network: [] });
  });

  it("a VM that fails to launch leaves no cgroup", async () => {
    rig.driver.failNext("launch");
    await assert.rejects(rig.create("sb", { role: "sandbox", cgroupsPath: "/kubepods/besteffort/pod3/sb" }));
    assert.equal(await exists(path.join(rig.containment.root, "cpu", "kubepods")), false);
    assert.deepEqual(await rig.settled(), { tasks: [], vms: [], rootfs: [], network: [] });
  });
});
