// TaskService and the pod module through a fake VMM whose agents are in-process ttrpc servers
// (test/support): the containerd contract and its failure paths, without root, VM or containerd.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { closeSync, constants, openSync, writeSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Code } from "../src/ttrpc/status.js";
import type { FakeVm, VmStep } from "./support/fake-vmm.js";
import { codeOf, NS, TaskRig } from "./support/task-rig.js";

const NETNS = "/var/run/netns/cni-unit";
const EXEC_SPEC = {
  typeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process",
  value: Buffer.from("{}"),
};

function execRequest(id: string, execId: string) {
  return { id, execId, terminal: false, stdin: "", stdout: "", stderr: "", spec: EXEC_SPEC };
}

/** Asserts `work` fails with error kind `kind`, which reaches containerd as `code`. */
async function rejectsWith(work: Promise<unknown>, kind: string, code: number): Promise<Error> {
  let caught: Error | undefined;
  await assert.rejects(work, (err: unknown) => {
    assert.equal((err as { kind?: string }).kind, kind, String(err));
    assert.equal(codeOf(err), code, String(err));
    caught = err as Error;
    return true;
  });
  return caught as Error;
}

const NOTHING_LEFT = { tasks: [], vms: [], rootfs: [], network: [] };

describe("TaskService with a fake VMM and an in-process agent", () => {
  let rig: TaskRig;
  beforeEach(async () => {
    rig = await TaskRig.open({ max_containers_per_vm: 2 });
  });
  afterEach(async () => {
    await rig.close();
  });

  it("counts a create in flight as a task, so the daemon's idle exit waits for it", async () => {
    let release = () => {};
    rig.driver.onLaunch = (vm) => {
      release = vm.agent.hold("CreateContainer");
    };
    const creating = rig.create("slow");
    while (!rig.driver.vms[0]?.agent.called("CreateContainer").length)
      await new Promise((r) => setTimeout(r, 10));
    assert.equal(rig.tasks.size, 1, "the create in flight counts");
    release();
    await creating;
    assert.equal(rig.tasks.size, 1, "the created task counts");
  });

  it("runs a plain task in a VM of its own and leaves nothing after delete", async () => {
    const pid = await rig.create("t1", { netns: NETNS });
    const vm = rig.vm;
    assert.deepEqual(
      vm.config.disks?.map((d) => d.serial),
      ["it1", "st1"],
    );
    assert.equal(vm.config.network?.mac, "02:42:0a:58:00:07");
    assert.deepEqual(vm.agent.network, {
      interfaces: [
        // Dual-stack: the IPv6 address reaches the guest too.
        {
          mac: "02:42:0a:58:00:07",
          mtu: 1500,
          // A cold VM's NIC has the pod's MAC from its boot: no placeholder to replace.
          placeholderMac: "",
          addresses: [
            { address: "10.88.0.7", prefixLen: 16 },
            { address: "fd00::7", prefixLen: 64 },
          ],
        },
      ],
      routes: [{ dest: "default", gateway: "10.88.0.1", mac: "02:42:0a:58:00:07" }],
    });
    assert.equal(rig.tasks.state(NS, "t1", "").status, "CREATED");
    assert.equal((await rig.tasks.start(NS, "t1", "")).pid, pid);
    assert.equal(rig.tasks.state(NS, "t1", "").status, "RUNNING");
    // Sent again (the front re-sends a Start a killed daemon had taken): the same pid, no
    // second TaskStart.
    assert.equal((await rig.tasks.start(NS, "t1", "")).pid, pid);
    vm.agent.exitProcess("t1", "", 3);
    assert.equal((await rig.tasks.wait(NS, "t1", "")).exitStatus, 3);
    assert.equal((await rig.tasks.delete(NS, "t1", "")).exitStatus, 3);
    assert.equal(vm.killed, true, "the VM ended before the delete replied");
    assert.deepEqual(
      rig.events.events.map((e) => e.name),
      ["TaskCreate", "TaskStart", "TaskExit", "TaskDelete"],
    );
    assert.deepEqual(await rig.settled(), NOTHING_LEFT);
  });

  it("deletes a pod: replies once the VMM is gone, detaches the pod network after the reply (its record kept until then); a create into the same netns and the daemon's exit wait for it; nothing is left", async () => {
    await rig.create("t1", { netns: NETNS });
    const vm = rig.vm;
    await rig.tasks.start(NS, "t1", "");
    vm.agent.exitProcess("t1", "", 0);
    await rig.tasks.wait(NS, "t1", "");
    let detach = () => {};
    rig.network.detachGate = new Promise<void>((r) => {
      detach = r;
    });
    let created = false;
    let lingered = false;
    try {
      assert.equal((await rig.tasks.delete(NS, "t1", "")).exitStatus, 0);
      assert.ok(vm.stopped, "the VM is gone before the reply");
      assert.deepEqual([...rig.network.attached], [NETNS], "the TAP is still leaving the netns");
      assert.deepEqual(
        (await rig.records.load()).map((r) => r.pod.vmId),
        [vm.id],
        "the pod's record stays until its netns is left",
      );
      void rig.create("t2", { netns: NETNS }).then(() => {
        created = true;
      });
      void rig.tasks.lingering().then(() => {
        lingered = true;
      });
      await new Promise((r) => setTimeout(r, 30));
      assert.equal(created, false, "a create into the same netns waits for the detach");
      assert.equal(lingered, false, "the daemon's exit waits for the detach");
    } finally {
      rig.network.detachGate = undefined;
      detach();
    }
    for (let i = 0; i < 400 && !(created && lingered); i++) await sleep(5);
    assert.ok(created && lingered, "once detached, t2 is created and the exit's wait ends");
    assert.deepEqual(
      (await rig.records.load()).map((r) => r.pod.vmId),
      [rig.vm.id],
      "t1's record went once its netns was left; t2's is there",
    );
    await rig.tasks.start(NS, "t2", "");
    rig.vm.agent.exitProcess("t2", "", 0);
    await rig.tasks.wait(NS, "t2", "");
    await rig.tasks.delete(NS, "t2", "");
    await rig.tasks.lingering();
    assert.deepEqual(await rig.settled(), NOTHING_LEFT);
  });

  describe("undo of a half-done create", () => {
    it("agent CreateContainer fails: VM stopped, rootfs released, network detached, no task", async () => {
      rig.driver.onLaunch = (vm) => vm.agent.failNext("CreateContainer", Code.INTERNAL, "crun: boom");
      await assert.rejects(rig.create("t1", { netns: NETNS }), /crun: boom/);
      assert.equal(rig.driver.vms.length, 1, "the VM was booted");
      assert.deepEqual(await rig.settled(), NOTHING_LEFT);
      assert.deepEqual(rig.events.events, [], "no event for a task that never was");
      // The id is free again: nothing of the failed create is remembered.
      rig.driver.onLaunch = () => {};
      await rig.create("t1", { netns: NETNS });
      assert.deepEqual(rig.leftovers().tasks, ["t1"]);
    });

    const failures: Array<[string, (r: TaskRig) => void]> = [
      ["rootfs", (r) => r.rootfs.failNext()],
      ["pod network", (r) => r.network.failNext()],
      ...(["launch", "connectAgent"] as VmStep[]).map((step): [string, (r: TaskRig) => void] => [
        step,
        (r) => r.driver.failNext(step),
      ]),
      [
        "guest network",
        (r) => {
          r.driver.onLaunch = (vm) => vm.agent.failNext("ConfigureNetwork");
        },
      ],
    ];
    for (const [step, fail] of failures) {
      it(`${step} fails: whatever was built is undone`, async () => {
        fail(rig);
        await assert.rejects(rig.create("t1", { netns: NETNS }));
        assert.deepEqual(await rig.settled(), NOTHING_LEFT);
      });
    }

    it("an app container's CreateContainer fails: disks unplugged, rootfs released, pod slot given back", async () => {
      await rig.create("pod", { role: "sandbox", netns: NETNS });
      const vm = rig.vm;
      await rig.create("app1", { role: "container", sandbox: "pod" });
      vm.agent.failNext("CreateContainer");
      await assert.rejects(rig.create("app2", { role: "container", sandbox: "pod" }));
      assert.deepEqual(
        [...vm.plugged.values()].map((d) => d.serial),
        ["iapp1", "sapp1"],
      );
      assert.deepEqual(rig.leftovers().rootfs.sort(), [`${NS}/app1`, `${NS}/pod`]);
      assert.deepEqual(rig.leftovers().tasks.sort(), ["app1", "pod"]);
      assert.equal(vm.stopped, false, "the pod's VM keeps running");
      // max_containers_per_vm is 2: the failed create must not hold the second slot.
      await rig.create("app2", { role: "container", sandbox: "pod" });
    });
  });

  it("refuses an app container beyond max_containers_per_vm with RESOURCE_EXHAUSTED", async () => {
    await rig.create("pod", { role: "sandbox" });
    const vm = rig.vm;
    await rig.create("app1", { role: "container", sandbox: "pod" });
    await rig.create("app2", { role: "container", sandbox: "pod" });
    await rejectsWith(
      rig.create("app3", { role: "container", sandbox: "pod" }),
      "ResourceExhausted",
      Code.RESOURCE_EXHAUSTED,
    );
    assert.ok(!rig.rootfs.held.has(`${NS}/app3`), "nothing prepared for a refused container");
    assert.equal(vm.plugged.size, 4);
    assert.equal(rig.driver.vms.length, 1, "no VM of its own either");
    // One leaves, one more fits.
    await rig.tasks.delete(NS, "app1", "");
    assert.equal(vm.plugged.size, 2, "app1's disks were unplugged");
    assert.ok(!vm.agent.containers.has("app1"), "app1 was removed in the guest");
    await rig.create("app3", { role: "container", sandbox: "pod" });
  });

  it("refuses a sandbox asking for hostNetwork, hostPID or hostIPC at once, naming each, building nothing", async () => {
    for (const host of [["network"], ["pid"], ["ipc"], ["network", "pid", "ipc"]] as const) {
      const err = await rejectsWith(
        rig.create("hostpod", { role: "sandbox", hostNamespaces: [...host] }),
        "InvalidArgument",
        Code.INVALID_ARGUMENT,
      );
      const settings = host.map((t) => ({ network: "hostNetwork", pid: "hostPID", ipc: "hostIPC" })[t]);
      assert.match(
        err.message,
        new RegExp(`cloudhv runs each pod in its own VM; ${settings.join(", ")} cannot be honoured`),
      );
      assert.match(err.message, new RegExp(`Remove ${settings.map((s) => `${s}: true`).join(", ")}`));
      assert.equal(rig.driver.vms.length, 0, "no VM was launched");
      assert.deepEqual(await rig.settled(), NOTHING_LEFT);
    }
    // A plain task (ctr run) without a network namespace still runs: only CRI pods are refused.
    await rig.create("plain", { hostNamespaces: ["network"] });
  });

  it("refuses an app container whose sandbox runs no VM with NOT_FOUND", async () => {
    await rejectsWith(
      rig.create("orphan", { role: "container", sandbox: "nopod" }),
      "NotFound",
      Code.NOT_FOUND,
    );
    assert.deepEqual(await rig.settled(), NOTHING_LEFT);
  });

  it("refuses to delete a running process with FAILED_PRECONDITION and keeps it", async () => {
    await rig.create("t1");
    await rig.tasks.start(NS, "t1", "");
    await rig.tasks.exec(NS, execRequest("t1", "e1"));
    await rig.tasks.start(NS, "t1", "e1");
    await rejectsWith(rig.tasks.delete(NS, "t1", ""), "FailedPrecondition", Code.FAILED_PRECONDITION);
    await rejectsWith(rig.tasks.delete(NS, "t1", "e1"), "FailedPrecondition", Code.FAILED_PRECONDITION);
    assert.equal(rig.tasks.state(NS, "t1", "").status, "RUNNING");
    assert.equal(rig.tasks.state(NS, "t1", "e1").status, "RUNNING");
    assert.equal(rig.vm.stopped, false);
    assert.deepEqual(rig.events.named("TaskDelete"), []);
  });

  it("reports TaskExit for every process of a pod whose VM dies, started or not", async () => {
    await rig.create("pod", { role: "sandbox", netns: NETNS });
    const vm: FakeVm = rig.vm;
    await rig.tasks.start(NS, "pod", "");
    await rig.tasks.exec(NS, execRequest("pod", "e1")); // added, never started
    await rig.create("app", { role: "container", sandbox: "pod" }); // created, never started
    await vm.die();
    const exits = await rig.events.waitFor("TaskExit", 3);
    assert.deepEqual(exits.map((e) => `${e.containerId}/${e.id}:${e.exitStatus}`).sort(), [
      "app/app:137",
      "pod/e1:137",
      "pod/pod:137",
    ]);
    for (const [id, execId] of [
      ["pod", ""],
      ["pod", "e1"],
      ["app", ""],
    ] as const) {
      assert.equal((await rig.tasks.wait(NS, id, execId)).exitStatus, 137);
      assert.equal(rig.tasks.state(NS, id, execId).status, "STOPPED");
    }
    // containerd then deletes them; the dead pod's leftovers are released all the same.
    await rig.tasks.delete(NS, "app", "");
    await rig.tasks.delete(NS, "pod", "");
    assert.deepEqual(await rig.settled(), NOTHING_LEFT);
  });

  it("a VM ended by a guest fault: every task of the pod exits 137 and the log names the reason for each", async () => {
    await rig.create("pod", { role: "sandbox", netns: NETNS });
    await rig.tasks.start(NS, "pod", "");
    await rig.create("app", { role: "container", sandbox: "pod" });
    await rig.tasks.start(NS, "app", "");
    const reason = "guest kernel panic: Kernel panic - not syncing: sysrq triggered crash";
    await rig.vm.die(reason);
    const exits = await rig.events.waitFor("TaskExit", 2);
    assert.deepEqual(exits.map((e) => `${e.containerId}:${e.exitStatus}`).sort(), ["app:137", "pod:137"]);
    const lines = rig.logLines.map((l) => JSON.parse(l) as { task?: string; msg: string; exit?: unknown });
    for (const task of ["pod", "app"]) {
      const line = lines.find((l) => l.task === task && l.msg.startsWith("sandbox VM exited"));
      assert.equal(line?.msg, `sandbox VM exited: ${reason}`, `the log line for ${task}`);
      assert.deepEqual(line?.exit, { code: null, signal: "SIGKILL", reason });
    }
    await rig.tasks.delete(NS, "app", "");
    await rig.tasks.delete(NS, "pod", "");
    assert.deepEqual(await rig.settled(), NOTHING_LEFT);
  });

  describe("exec ids", () => {
    beforeEach(async () => {
      await rig.create("t1");
      await rig.tasks.start(NS, "t1", "");
    });

    it("a duplicate exec id is ALREADY_EXISTS and never reaches the guest", async () => {
      await rig.tasks.exec(NS, execRequest("t1", "e1"));
      await rejectsWith(rig.tasks.exec(NS, execRequest("t1", "e1")), "AlreadyExists", Code.ALREADY_EXISTS);
      assert.equal(rig.vm.agent.called("ExecProcess").length, 1);
      assert.deepEqual(rig.events.named("TaskExecAdded"), [{ containerId: "t1", execId: "e1" }]);
    });

    it("a malformed exec id is INVALID_ARGUMENT and never reaches the guest", async () => {
      for (const bad of ["", "../e", "-e", "e/1", "x".repeat(129)]) {
        await rejectsWith(
          rig.tasks.exec(NS, execRequest("t1", bad)),
          "InvalidArgument",
          Code.INVALID_ARGUMENT,
        );
      }
      assert.equal(rig.vm.agent.called("ExecProcess").length, 0);
    });

    it("an exec the guest cannot start is over: Wait returns, kill says so, delete frees it (containerd's cleanup does not hang)", async () => {
      await rig.tasks.exec(NS, execRequest("t1", "nope"));
      rig.vm.agent.failNext(
        "StartProcess",
        Code.INTERNAL,
        "crun exec: executable file `test` not found in $PATH",
      );
      const err = await rejectsWith(rig.tasks.start(NS, "t1", "nope"), "Internal", Code.INTERNAL);
      assert.match(err.message, /`test` not found/);
      // containerd's WithProcessKill after a failed Start: Wait, kill, wait for the exit, Delete.
      const waited = await Promise.race([
        rig.tasks.wait(NS, "t1", "nope"),
        new Promise<"hung">((r) => setTimeout(() => r("hung"), 2000).unref()),
      ]);
      assert.notEqual(waited, "hung", "Wait on an exec that never started returns");
      assert.equal((waited as { exitStatus: number }).exitStatus, 255);
      assert.equal(rig.tasks.state(NS, "t1", "nope").status, "STOPPED");
      await rejectsWith(rig.tasks.kill(NS, "t1", "nope", 9, false), "NotFound", Code.NOT_FOUND);
      assert.equal((await rig.tasks.delete(NS, "t1", "nope")).exitStatus, 255);
      assert.equal(rig.tasks.state(NS, "t1", "").status, "RUNNING", "the container runs on");
    });

    it("CloseIO right after containerd's last stdin write: every byte reaches the guest before its stdin closes", async () => {
      // CRI's exec (kubectl exec -i, kubectl cp): copy, close the FIFO, CloseIO at once.
      const dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-closeio-"));
      try {
        const fifo = path.join(dir, "stdin");
        execFileSync("mkfifo", [fifo]);
        await rig.tasks.exec(NS, { ...execRequest("t1", "tar"), stdin: fifo });
        await rig.tasks.start(NS, "t1", "tar");
        const release = rig.vm.agent.hold("WriteStdin"); // the copy is on its way to the guest
        const fd = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
        writeSync(fd, Buffer.alloc(10240, 1)); // a tar of one small file
        closeSync(fd);
        while (!rig.vm.agent.called("WriteStdin").length) await sleep(5);
        const closing = rig.tasks.closeIO(NS, "t1", "tar", true);
        await sleep(200);
        release();
        await closing;
        const wrote = rig.vm.agent.stdin.filter((w) => w.execId === "tar");
        assert.equal(
          wrote.reduce((n, w) => n + w.bytes, 0),
          10240,
          "every byte written reached the guest",
        );
        assert.deepEqual(
          wrote.map((w) => w.closedBefore),
          wrote.map(() => 0),
          "no byte after the guest's stdin was closed",
        );
        assert.ok(rig.vm.agent.called("CloseStdin").length >= 1, "stdin closed");
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });

    it("announces an exit only once the kill that caused it is answered (containerd closes a task's connection when it hears of the exit)", async () => {
      const release = rig.vm.agent.hold("SignalProcess");
      const killed = rig.tasks.kill(NS, "t1", "", 15, false);
      await sleep(20); // the signal is in the guest
      rig.vm.agent.exitProcess("t1", "", 143); // the exit comes back before the kill's answer
      await sleep(100);
      assert.deepEqual(rig.events.named("TaskExit"), [], "no TaskExit while the kill is unanswered");
      release();
      await killed;
      const [exit] = await rig.events.waitFor("TaskExit", 1);
      assert.equal(exit?.exitStatus, 143);
    });

    it("a kill whose process ended meanwhile (the guest's answer lost with the VM) is NOT_FOUND", async () => {
      const release = rig.vm.agent.hold("SignalProcess");
      const killed = rig.tasks.kill(NS, "t1", "", 9, false);
      await sleep(20); // the signal is in the guest
      rig.vm.agent.exitProcess("t1", "", 137);
      rig.vm.agent.failNext("SignalProcess", Code.UNAVAILABLE, "ttrpc client closed");
      release();
      await rejectsWith(killed, "NotFound", Code.NOT_FOUND);
    });

    it("an unknown exec id is NOT_FOUND; exec in a stopped container is FAILED_PRECONDITION", async () => {
      await rejectsWith(rig.tasks.start(NS, "t1", "nope"), "NotFound", Code.NOT_FOUND);
      assert.throws(
        () => rig.tasks.state(NS, "t1", "nope"),
        (err) => codeOf(err) === Code.NOT_FOUND,
      );
      await rig.tasks.kill(NS, "t1", "", 9, false);
      await rig.tasks.wait(NS, "t1", "");
      await rejectsWith(
        rig.tasks.exec(NS, execRequest("t1", "e2")),
        "FailedPrecondition",
        Code.FAILED_PRECONDITION,
      );
    });
  });

  it("a malformed task id is INVALID_ARGUMENT before anything is built; an unknown one NOT_FOUND", async () => {
    for (const bad of ["../etc", "", "a/b", "-t"]) {
      const req = await rig.request("placeholder");
      await rejectsWith(rig.tasks.create(NS, { ...req, id: bad }), "InvalidArgument", Code.INVALID_ARGUMENT);
    }
    assert.equal(rig.driver.vms.length, 0);
    assert.deepEqual(await rig.settled(), NOTHING_LEFT);
    await rejectsWith(rig.tasks.start(NS, "nope", ""), "NotFound", Code.NOT_FOUND);
    await rejectsWith(rig.tasks.delete(NS, "nope", ""), "NotFound", Code.NOT_FOUND);
    await rejectsWith(rig.tasks.kill(NS, "nope", "", 9, false), "NotFound", Code.NOT_FOUND);
    await rejectsWith(rig.tasks.wait(NS, "nope", ""), "NotFound", Code.NOT_FOUND);
    // The same id in another namespace is another task.
    await rig.create("t1");
    await rejectsWith(rig.tasks.start("other", "t1", ""), "NotFound", Code.NOT_FOUND);
  });

  it("pauses only a VM a task owns: a pod's app container is UNIMPLEMENTED", async () => {
    await rig.create("pod", { role: "sandbox" });
    await rig.create("app", { role: "container", sandbox: "pod" });
    await rig.tasks.start(NS, "pod", "");
    await rig.tasks.start(NS, "app", "");
    await rejectsWith(rig.tasks.pause(NS, "app"), "Unimplemented", Code.UNIMPLEMENTED);
    await rig.tasks.pause(NS, "pod");
    assert.equal(rig.vm.paused, true);
    assert.equal(rig.tasks.state(NS, "pod", "").status, "PAUSED");
    await rig.tasks.resume(NS, "pod");
    assert.equal(rig.vm.paused, false);
  });
});

describe("an app container's delete replies before its disks leave the VM", () => {
  let rig: TaskRig;
  beforeEach(async () => {
    rig = await TaskRig.open();
  });
  afterEach(async () => {
    await rig.close();
  });

  const deleteApp = async (vm: FakeVm, id: string) => {
    vm.agent.exitProcess(id, "", 0);
    await rig.tasks.wait(NS, id, "");
    await rig.tasks.delete(NS, id, "");
  };
  const serials = (vm: FakeVm) => [...vm.plugged.values()].map((d) => d.serial).sort();
  const recordOf = async (vm: FakeVm) =>
    JSON.parse(await readFile(path.join(rig.dir, "state", "records", `${vm.id}.json`), "utf8")) as {
      pod: { members: Array<{ id: string }>; retiring?: Array<{ id: string }> };
    };

  it("unplugs after the reply, releases the files only then; a create of the same id waits for it", async () => {
    await rig.create("pod", { role: "sandbox" });
    await rig.tasks.start(NS, "pod", "");
    const vm = rig.vm;
    await rig.create("app", { role: "container", sandbox: "pod" });
    await rig.tasks.start(NS, "app", "");
    let ack!: () => void;
    vm.unplugGate = new Promise((resolve) => {
      ack = resolve;
    });
    await deleteApp(vm, "app");
    // Replied: the guest container goes, its disks are still in the VM and their files held.
    assert.deepEqual(rig.leftovers().tasks, ["pod"]);
    const until = Date.now() + 2000;
    while (vm.agent.containers.has("app") && Date.now() < until) await sleep(5);
    assert.deepEqual([...vm.agent.containers.keys()], ["pod"], "the guest container was removed");
    assert.deepEqual(serials(vm), ["iapp", "sapp"]);
    assert.deepEqual(rig.leftovers().rootfs.sort(), [`${NS}/app`, `${NS}/pod`]);
    assert.deepEqual(
      (await recordOf(vm)).pod.retiring?.map((m) => m.id),
      ["app"],
      "a later daemon would finish them",
    );
    // The same id again (same serials): its create waits until the old disks are gone.
    let created = false;
    const again = rig.create("app", { role: "container", sandbox: "pod" }).then(() => {
      created = true;
    });
    await sleep(50);
    assert.equal(created, false, "the create waits for the old disks");
    ack();
    await again;
    await rig.tasks.start(NS, "app", "");
    assert.deepEqual(serials(vm), ["iapp", "sapp"], "the new container's disks, once");
    assert.deepEqual(rig.leftovers().rootfs.sort(), [`${NS}/app`, `${NS}/pod`]);
    const record = await recordOf(vm);
    assert.equal(record.pod.retiring, undefined, "the record no longer names retiring disks");
    assert.deepEqual(record.pod.members.map((m) => m.id).sort(), ["app", "pod"]);
    await deleteApp(vm, "app");
    await deleteApp(vm, "pod");
    assert.deepEqual(await rig.settled(), NOTHING_LEFT);
  });

  it("disks the guest did not release: a create of the same id fails at once naming why, another id joins; the pod's delete releases them", async () => {
    await rig.create("pod", { role: "sandbox" });
    await rig.tasks.start(NS, "pod", "");
    const vm = rig.vm;
    await rig.create("app", { role: "container", sandbox: "pod" });
    await rig.tasks.start(NS, "app", "");
    vm.unplugGate = "timeout";
    await deleteApp(vm, "app");
    const err = await rejectsWith(
      rig.create("app", { role: "container", sandbox: "pod" }),
      "FailedPrecondition",
      Code.FAILED_PRECONDITION,
    );
    assert.match(
      err.message,
      /container app was deleted from pod pod but the guest did not release its disks/,
    );
    assert.deepEqual(rig.leftovers().rootfs.sort(), [`${NS}/app`, `${NS}/pod`], "kept while the VMM runs");
    vm.unplugGate = undefined;
    await rig.create("other", { role: "container", sandbox: "pod" });
    await rig.tasks.start(NS, "other", "");
    await deleteApp(vm, "other");
    await deleteApp(vm, "pod");
    assert.deepEqual(await rig.settled(), NOTHING_LEFT);
  });

  it("a guest that never lets go of the disks holds nothing past the VMM: the pod's delete releases them", async () => {
    await rig.create("pod", { role: "sandbox" });
    await rig.tasks.start(NS, "pod", "");
    const vm = rig.vm;
    await rig.create("app", { role: "container", sandbox: "pod" });
    await rig.tasks.start(NS, "app", "");
    vm.unplugGate = "never";
    const started = performance.now();
    await deleteApp(vm, "app");
    assert.ok(performance.now() - started < 2000, "the delete does not wait for the unplug");
    await sleep(20);
    assert.deepEqual(
      rig.leftovers().rootfs.sort(),
      [`${NS}/app`, `${NS}/pod`],
      "QEMU may still read the files: kept while the VMM runs",
    );
    // The sandbox's delete stops the VM: the unplugs are abandoned and the files go.
    await deleteApp(vm, "pod");
    assert.equal(vm.stopped, true);
    assert.deepEqual(await rig.settled(), NOTHING_LEFT);
  });
});
