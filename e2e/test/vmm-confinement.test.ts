// Level 3 (VM): the VMM is confined (vmm/confine.ts). A QEMU with a pod network runs as a
// uid of its own with QEMU's seccomp filter, no capabilities and no_new_privs; asked through
// QMP to open a host file that is not its own, it is refused; the guest still boots, takes a
// hot-plugged disk and answers; nothing is left behind.
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readFile, readlink, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import {
  type AgentClient,
  attachPodNetwork,
  createScratchDisk,
  DEFAULT_VMM_UIDS,
  exec,
  execOk,
  NetHelper,
  type PodNetwork,
  QemuDriver,
  type QemuVm,
} from "@cloudhv/shim";
import { QEMU_ACCEL } from "../src/accel.js";
import { guestArtifacts, REPO_ROOT } from "../src/artifacts.js";
import { entriesOf, processesMatching } from "../src/leaks.js";

const NS = `chv-conf-${process.pid}`;
const HOST_VETH = `chvcf${process.pid % 100000}`;

function statusField(status: string, name: string): string {
  const line = status.split("\n").find((l) => l.startsWith(`${name}:`));
  assert.ok(line, `/proc/PID/status has ${name}`);
  return line.slice(name.length + 1).trim();
}

describe("QEMU runs confined: own uid, seccomp, no capabilities, only its own files", () => {
  let tmp: string;
  let stateRoot: string;
  let net: PodNetwork;
  const helper = new NetHelper(path.join(REPO_ROOT, "build/host/cloudhv-net"));
  let vm: QemuVm;
  let agent: AgentClient;

  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), "cloudhv-confine-"));
    stateRoot = await mkdtemp(path.join("/run", "chv-cf-"));
    await execOk(["ip", "netns", "add", NS]);
    await execOk(["ip", "link", "add", HOST_VETH, "type", "veth", "peer", "name", "eth0", "netns", NS]);
    await execOk(["ip", "netns", "exec", NS, "ip", "link", "set", "eth0", "up"]);
    await execOk(["ip", "netns", "exec", NS, "ip", "addr", "add", "10.99.8.2/24", "dev", "eth0"]);
    net = await attachPodNetwork(helper, `/var/run/netns/${NS}`, "tap0_chv", {
      tapGroup: DEFAULT_VMM_UIDS.first,
    });
    vm = await new QemuDriver({ accel: QEMU_ACCEL, diskLinks: path.join(stateRoot, "links") }).launch({
      id: "confined",
      ...guestArtifacts(),
      vcpus: 1,
      memoryMb: 256,
      stateDir: path.join(stateRoot, "vm", "confined"),
      network: { netnsPath: net.netnsPath, tap: net.tap, mac: net.iface.mac },
    });
    agent = await vm.connectAgent({ timeoutMs: 60_000 });
  });

  after(async () => {
    await vm?.stop();
    await net?.detach();
    helper.close();
    await exec(["ip", "netns", "del", NS]);
    await exec(["ip", "link", "del", HOST_VETH]);
    await rm(tmp, { recursive: true, force: true });
    await rm(stateRoot, { recursive: true, force: true });
  });

  /** QEMU, asked through QMP to open `filename` as a disk, is refused by the kernel. */
  async function assertRefusedToOpen(filename: string): Promise<void> {
    await assert.rejects(
      vm.qmpExecute("blockdev-add", {
        driver: "raw",
        "node-name": "evil",
        file: { driver: "file", filename, "read-only": true },
      }),
      /Permission denied/,
      filename,
    );
  }

  it("runs as a non-root uid of the range, seccomp mode 2, no capabilities, no_new_privs", async () => {
    const status = await readFile(`/proc/${vm.pid}/status`, "utf8");
    const uids = statusField(status, "Uid").split(/\s+/).map(Number);
    assert.equal(new Set(uids).size, 1, `real, effective, saved and fs uid agree: ${uids}`);
    const uid = uids[0] as number;
    assert.ok(
      uid > DEFAULT_VMM_UIDS.first && uid < DEFAULT_VMM_UIDS.first + DEFAULT_VMM_UIDS.count,
      `uid ${uid}`,
    );
    assert.deepEqual(
      statusField(status, "Gid").split(/\s+/).map(Number),
      Array(4).fill(DEFAULT_VMM_UIDS.first),
    );
    assert.equal(statusField(status, "Groups"), "");
    assert.equal(statusField(status, "Seccomp"), "2");
    for (const set of ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"])
      assert.equal(BigInt(`0x${statusField(status, set)}`), 0n, `${set} is empty`);
    assert.equal(statusField(status, "NoNewPrivs"), "1");
    // Its own mount namespace (the private /dev/net/tun lives there), and the pod's netns.
    assert.notEqual(await readlink(`/proc/${vm.pid}/ns/mnt`), await readlink("/proc/self/ns/mnt"));
    assert.equal((await stat(`/proc/${vm.pid}/ns/net`)).ino, (await stat(net.netnsPath)).ino);
  });

  it("asked through QMP to open /etc/shadow or the shim's state, QEMU is refused", async () => {
    for (const filename of ["/etc/shadow", path.join(stateRoot, "vm", "confined", "console.log")])
      await assertRefusedToOpen(filename);
  });

  it("reaches its own hard-linked disks only through its bind: not its links dir's host path, nor another VM's", async () => {
    const links = path.join(stateRoot, "links");
    const until = Date.now() + 10_000;
    while (
      !(await readFile(`/proc/${vm.pid}/mountinfo`, "utf8")).includes("/vmm/disks") &&
      Date.now() < until
    )
      await new Promise((r) => setTimeout(r, 20));
    // Another VM's links dir, holding a world-readable image as every linked image is.
    await mkdir(path.join(links, "other"), { mode: 0o711 });
    const image = path.join(links, "other", "disk-x");
    await writeFile(image, "not yours", { mode: 0o644 });
    await mkdir(path.join(links, "confined"), { recursive: true });
    const own = path.join(links, "confined", "disk-y");
    await writeFile(own, "", { mode: 0o644 });
    try {
      for (const filename of [image, own]) await assertRefusedToOpen(filename);
      // Its own, by the name the driver gives it, through the bind.
      await vm.qmpExecute("blockdev-add", {
        driver: "raw",
        "node-name": "mine",
        file: { driver: "file", filename: "disks/disk-y", "read-only": true },
      });
      await vm.qmpExecute("blockdev-del", { "node-name": "mine" });
    } finally {
      await rm(path.join(links, "other"), { recursive: true, force: true });
      await rm(own, { force: true });
    }
  });

  it("the guest answers and takes a hot-plugged disk; a read-only disk not readable by all is refused", async () => {
    assert.equal((await agent.health({ timeoutMs: 10_000 })).status, "SERVING");
    const scratch = await createScratchDisk(path.join(tmp, "scratch.ext4"), 64 * 1024 * 1024);
    const id = await vm.addDisk({ path: scratch.path, serial: "cf-scratch", readOnly: false });
    await vm.removeDevice(id);
    await scratch.remove();
    const secret = path.join(tmp, "secret.img");
    await execOk(["truncate", "-s", "1M", secret]);
    await execOk(["chmod", "0600", secret]);
    await assert.rejects(
      vm.addDisk({ path: secret, serial: "cf-secret", readOnly: true }),
      /not world-readable/,
    );
  });

  it("leaves no VMM, no state and no uid lock behind", async () => {
    await vm.stop();
    assert.deepEqual(await entriesOf(path.join(stateRoot, "links")), [], "its links dir went with it");
    assert.deepEqual(await processesMatching(stateRoot), []);
    assert.deepEqual(await entriesOf(path.join(stateRoot, "vm")), []);
  });
});
