// Level 3 (VM): real QEMU (KVM when it works, TCG otherwise), our kernel, rootfs and agent.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, QemuDriver, statusOf } from "@cloudhv/shim";
import { QEMU_ACCEL } from "../src/accel.js";
import { guestArtifacts } from "../src/artifacts.js";
import { bootAndProbe } from "../src/boot.js";
import { entriesOf, processesMatching } from "../src/leaks.js";

describe("guest boot under QEMU", () => {
  let stateRoot: string;
  before(async () => {
    // Short path: unix socket paths must stay under 108 bytes.
    stateRoot = await mkdtemp(path.join("/run", "cloudhv-test-"));
  });
  after(async () => {
    await rm(stateRoot, { recursive: true, force: true });
  });

  it("boots, answers Health and Version over the virtio-serial channel, and leaves nothing behind", async () => {
    let qemuPid = 0;
    let stateDir = "";
    const report = await bootAndProbe({
      stateRoot,
      inspect: async (vm) => {
        qemuPid = vm.pid;
        stateDir = path.dirname(vm.consoleLogPath);
        // The VMM's own sockets live in its own dir (vmm/), which its uid owns.
        assert.ok(
          existsSync(path.join(stateDir, "vmm", "agent.sock")),
          "agent socket exists while the VM runs",
        );
        assert.deepEqual(await processesMatching(`cloudhv-${vm.id}`), [vm.pid]);
      },
    });
    assert.equal(report.health.status, "SERVING");
    assert.ok(report.health.uptimeNs > 0, "guest uptime is reported");
    assert.equal(report.version.protocolVersion, 1);
    assert.match(report.version.kernelRelease, /^6\.1\./);
    assert.match(report.version.runtimeVersion, /^crun version /);
    assert.ok(qemuPid > 0);
    assert.deepEqual(await processesMatching(`cloudhv-${report.vmId}`), [], "no QEMU process is left");
    assert.equal(existsSync(stateDir), false, "the VM's state dir (sockets, console log) is removed");
    assert.deepEqual(await entriesOf(path.join(stateRoot, "vm")), []);
  });

  it("reports a VMM that dies while the guest boots, and still cleans up", async () => {
    const artifacts = guestArtifacts();
    const vm = await new QemuDriver({ accel: QEMU_ACCEL }).launch({
      id: "boot-killed",
      ...artifacts,
      vcpus: 1,
      memoryMb: 256,
      stateDir: path.join(stateRoot, "vm", "boot-killed"),
    });
    try {
      const connecting = vm.connectAgent({ timeoutMs: 60_000 });
      process.kill(vm.pid, "SIGKILL");
      await assert.rejects(connecting, (err: unknown) => {
        assert.equal(statusOf(err).code, Code.UNAVAILABLE, String(err));
        assert.match(String(err), /exited while booting/);
        return true;
      });
      assert.equal((await vm.exited).signal, "SIGKILL");
    } finally {
      // Also on a failed assertion: a VM handle left open keeps the test process alive.
      await vm.stop();
    }
    assert.deepEqual(await processesMatching("cloudhv-boot-killed"), []);
    assert.equal(existsSync(path.join(stateRoot, "vm", "boot-killed")), false);
  });

  it("refuses a missing kernel with an error that names the file", async () => {
    const tmp = await mkdtemp(path.join(os.tmpdir(), "cloudhv-boot-"));
    try {
      const { rootfsPath } = guestArtifacts();
      await assert.rejects(
        new QemuDriver({ accel: QEMU_ACCEL }).launch({
          id: "boot-nokernel",
          kernelPath: path.join(tmp, "no-such-vmlinux"),
          rootfsPath,
          vcpus: 1,
          memoryMb: 128,
          stateDir: path.join(stateRoot, "vm", "boot-nokernel"),
        }),
        /no-such-vmlinux/,
      );
      assert.equal(existsSync(path.join(stateRoot, "vm", "boot-nokernel")), false);
      assert.deepEqual(await processesMatching("cloudhv-boot-nokernel"), []);
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  });
});
