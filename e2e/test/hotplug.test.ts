// Level 3 (VM): disks hot-plugged into a running VM over QMP (PCIe root ports) are found by
// the agent by serial and can run a container; pause/resume stop and continue the guest.
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readFile, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import {
  type AgentClient,
  Code,
  createScratchDisk,
  execOk,
  QemuDriver,
  statusOf,
  type VmHandle,
} from "@cloudhv/shim";
import { QEMU_ACCEL } from "../src/accel.js";
import { guestArtifacts } from "../src/artifacts.js";
import { processesMatching } from "../src/leaks.js";
import { stageBusyboxRoot } from "../src/oci-image.js";
import { ociSpec, specBytes } from "../src/oci-spec.js";

async function collect(agent: AgentClient, containerId: string): Promise<string> {
  let out = "";
  for (;;) {
    const { data, eof } = await agent.readStream({ containerId, execId: "" }, "STDOUT");
    out += data.toString();
    if (eof) return out;
  }
}

describe("QEMU hot-plug and pause", () => {
  let tmp: string;
  let stateRoot: string;
  let vm: VmHandle;
  let agent: AgentClient;
  let image: string;

  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "cloudhv-hotplug-"));
    stateRoot = await mkdtemp(path.join("/run", "chv-hp-"));
    const root = path.join(tmp, "root");
    await stageBusyboxRoot(root);
    // Another filesystem than the links dir's, mounted before the VMM's namespace is made (as a
    // node's disks are): what is there cannot be hard-linked.
    await mkdir(path.join(tmp, "other-fs"));
    await execOk([
      "mount",
      "-t",
      "tmpfs",
      "-o",
      "size=96m",
      "cloudhv-hotplug-test",
      path.join(tmp, "other-fs"),
    ]);
    image = path.join(tmp, "image.erofs");
    await execOk(["mkfs.erofs", "--quiet", "--all-root", image, root]);
    // Its disks are hard-linked into a dir of its own (tmp is the disks' filesystem).
    vm = await new QemuDriver({ accel: QEMU_ACCEL, diskLinks: path.join(tmp, "links") }).launch({
      id: "hotplug",
      ...guestArtifacts(),
      vcpus: 1,
      memoryMb: 256,
      stateDir: path.join(stateRoot, "vm"),
    });
    agent = await vm.connectAgent({ timeoutMs: 60_000 });
  });

  after(async () => {
    await vm?.stop();
    await execOk(["umount", path.join(tmp, "other-fs")]).catch(() => {});
    await rm(tmp, { recursive: true, force: true });
    await rm(stateRoot, { recursive: true, force: true });
  });

  it("runs a container from disks plugged in after boot, found by serial", async () => {
    const scratch = await createScratchDisk(path.join(tmp, "scratch.ext4"), 64 * 1024 * 1024);
    const imageId = await vm.addDisk({ path: image, serial: "hp-image", readOnly: true });
    const scratchId = await vm.addDisk({ path: scratch.path, serial: "hp-scratch", readOnly: false });
    await agent.createContainer({
      containerId: "hot1",
      ociSpec: specBytes(
        ociSpec("hot1", ["sh", "-c", "cat /etc/passwd | head -n 1; echo written > /f; cat /f"]),
      ),
      rootfsSerial: "hp-image",
      scratchSerial: "hp-scratch",
      terminal: false,
      stdin: false,
    });
    const output = collect(agent, "hot1");
    await agent.startProcess({ containerId: "hot1", execId: "" });
    assert.equal((await agent.waitProcess({ containerId: "hot1", execId: "" })).exitStatus, 0);
    assert.equal(await output, "root:x:0:0:root:/root:/bin/sh\nwritten\n");
    await agent.removeContainer("hot1");
    await vm.removeDevice(scratchId);
    await vm.removeDevice(imageId);
    await scratch.remove();
  });

  it("plugs a container's disks in one call; a batch QEMU refuses halfway leaves none of it", async () => {
    assert.ok(vm.addDisks, "the QEMU driver plugs disks in batches");
    const qmp = (vm as unknown as { qmpExecute<T>(cmd: string, args?: object): Promise<T> }).qmpExecute.bind(
      vm,
    );
    const nodes = async () =>
      (await qmp<Array<{ "node-name": string }>>("query-named-block-nodes")).map((n) => n["node-name"]);
    const scratch = await createScratchDisk(path.join(tmp, "batch.ext4"), 64 * 1024 * 1024);
    const other = await createScratchDisk(path.join(tmp, "batch2.ext4"), 64 * 1024 * 1024);
    const ids = await vm.addDisks([
      { path: image, serial: "hb-image", readOnly: true },
      { path: scratch.path, serial: "hb-scratch", readOnly: false },
    ]);
    assert.deepEqual(ids, ["hd-hb-image", "hd-hb-scratch"]);
    // Hard links in the VM's own dir, which the VMM sees through one bind mount: no mount per disk.
    const linked = path.join(tmp, "links", "hotplug", "disk-hb-scratch");
    assert.equal((await stat(linked)).ino, (await stat(scratch.path)).ino, "the scratch disk is hard-linked");
    const vmmMounts = await readFile(`/proc/${vm.pid}/mountinfo`, "utf8");
    assert.ok(!vmmMounts.includes("disk-hb-"), "no bind mount per disk in the VMM's namespace");
    assert.ok(vmmMounts.includes(path.join(stateRoot, "vm", "vmm", "disks")), "the links dir is bound");
    await agent.createContainer({
      containerId: "hot2",
      ociSpec: specBytes(ociSpec("hot2", ["sh", "-c", "echo batch > /f; cat /f"])),
      rootfsSerial: "hb-image",
      scratchSerial: "hb-scratch",
      terminal: false,
      stdin: false,
    });
    const output = collect(agent, "hot2");
    await agent.startProcess({ containerId: "hot2", execId: "" });
    assert.equal((await agent.waitProcess({ containerId: "hot2", execId: "" })).exitStatus, 0);
    assert.equal(await output, "batch\n");
    await agent.removeContainer("hot2");
    // The second disk's node name is taken (hb-image is plugged): QEMU refuses it after the first.
    await assert.rejects(
      vm.addDisks([
        { path: other.path, serial: "hb-new", readOnly: false },
        { path: image, serial: "hb-image", readOnly: true },
      ]),
      /node-hb-image/,
    );
    assert.ok(!(await nodes()).includes("node-hb-new"), "the first disk of the refused batch is unplugged");
    assert.ok((await nodes()).includes("node-hb-scratch"), "disks of the earlier batch stay");
    await assert.rejects(stat(path.join(stateRoot, "vm", "vmm", "disk-hb-new")), { code: "ENOENT" });
    for (const id of ids.reverse()) await vm.removeDevice(id);
    assert.ok(!(await nodes()).some((n) => n.startsWith("node-hb-")));
    await assert.rejects(stat(linked), { code: "ENOENT" }, "an unplugged disk's link goes");
    await scratch.remove();
    await other.remove();
  });

  it("opens a batch's files while their content is made, shows the guest the disks only once it is ready; content that fails leaves nothing", async () => {
    assert.ok(vm.addDisks);
    const qmp = (vm as unknown as { qmpExecute<T>(cmd: string, args?: object): Promise<T> }).qmpExecute.bind(
      vm,
    );
    const nodes = async () =>
      (await qmp<Array<{ "node-name": string }>>("query-named-block-nodes")).map((n) => n["node-name"]);
    const devices = async () =>
      (await qmp<Array<{ name: string }>>("qom-list", { path: "/machine/peripheral" })).map((p) => p.name);
    const scratch = await createScratchDisk(path.join(tmp, "later.ext4"), 64 * 1024 * 1024);
    let ready: () => void = () => {};
    const content = new Promise<void>((resolve) => {
      ready = resolve;
    });
    const plugging = vm.addDisks(
      [
        { path: image, serial: "hl-image", readOnly: true },
        { path: scratch.path, serial: "hl-scratch", readOnly: false },
      ],
      content,
    );
    const until = Date.now() + 10_000;
    while (!(await nodes()).includes("node-hl-scratch") && Date.now() < until) await sleep(20);
    assert.ok((await nodes()).includes("node-hl-image"), "the files are opened before the content is ready");
    assert.ok(
      !(await devices()).some((d) => d.startsWith("hd-hl-")),
      "no device before the content is ready",
    );
    ready();
    const ids = await plugging;
    assert.deepEqual(ids, ["hd-hl-image", "hd-hl-scratch"]);
    assert.ok((await devices()).includes("hd-hl-scratch"));
    for (const id of ids.reverse()) await vm.removeDevice(id);

    await assert.rejects(
      vm.addDisks(
        [
          { path: image, serial: "hr-image", readOnly: true },
          { path: scratch.path, serial: "hr-scratch", readOnly: false },
        ],
        Promise.reject(new Error("scratch disk: mkfs.ext4 failed")),
      ),
      /mkfs\.ext4 failed/,
    );
    assert.ok(!(await nodes()).some((n) => n.startsWith("node-hr-")), "no block node of the failed batch");
    assert.ok(!(await devices()).some((d) => d.startsWith("hd-hr-")), "no device of the failed batch");
    await assert.rejects(stat(path.join(stateRoot, "vm", "vmm", "disk-hr-scratch")), { code: "ENOENT" });
    await scratch.remove();
  });

  it("bind-mounts a container's disks where one cannot be hard-linked (another filesystem)", async () => {
    assert.ok(vm.addDisks);
    const other = path.join(tmp, "other-fs");
    const scratch = await createScratchDisk(path.join(other, "x.ext4"), 64 * 1024 * 1024);
    const ids = await vm.addDisks([
      { path: image, serial: "hx-image", readOnly: true },
      { path: scratch.path, serial: "hx-scratch", readOnly: false },
    ]);
    const vmmMounts = await readFile(`/proc/${vm.pid}/mountinfo`, "utf8");
    assert.ok(vmmMounts.includes("disk-hx-scratch"), "the scratch disk is bind-mounted");
    assert.ok(vmmMounts.includes("disk-hx-image"), "and so is its image, in the same spawn");
    await assert.rejects(stat(path.join(tmp, "links", "hotplug", "disk-hx-image")), { code: "ENOENT" });
    for (const id of ids.reverse()) await vm.removeDevice(id);
    await scratch.remove();
  });

  it("refuses a disk whose file does not exist, naming it", async () => {
    await assert.rejects(
      vm.addDisk({ path: path.join(tmp, "missing.img"), serial: "nope", readOnly: true }),
      /missing\.img/,
    );
  });

  it("pauses and resumes the whole guest", async () => {
    await vm.pause();
    await assert.rejects(
      agent.health({ timeoutMs: 1500 }),
      (err: unknown) => statusOf(err).code === Code.DEADLINE_EXCEEDED,
    );
    await vm.resume();
    assert.equal((await agent.health({ timeoutMs: 10_000 })).status, "SERVING");
  });

  it("leaves no VMM behind", async () => {
    await vm.stop();
    assert.deepEqual(await processesMatching(stateRoot), []);
    await assert.rejects(
      stat(path.join(tmp, "links", "hotplug")),
      { code: "ENOENT" },
      "its links dir is gone",
    );
  });
});
