// Which driver the daemon uses: the config's `hypervisor`, and for `auto` the node's facts
// (decided from facts gathered beforehand, so every combination is checked here).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseConfig } from "../src/config.js";
import type { QemuDriver } from "../src/vmm/qemu.js";
import { type ChoiceInputs, decideHypervisor, driverForChoice } from "../src/vmm/select.js";

const BROKEN_KVM = { accel: "tcg", reason: "/dev/kvm is present but unusable: failed to set MSR" } as const;
const WORKING_KVM = { accel: "kvm", reason: "a KVM guest ran for 1.5 s" } as const;

function facts(over: Partial<ChoiceInputs> = {}): ChoiceInputs {
  return {
    devices: { kvm: true, mshv: false },
    cloudHypervisor: "/opt/cloudhv/bin/cloud-hypervisor",
    qemu: "/usr/bin/qemu-system-x86_64",
    kvmProbe: WORKING_KVM,
    ...over,
  };
}

const auto = parseConfig({}, "test");

describe("hypervisor choice", () => {
  it("auto: Cloud Hypervisor on a working KVM or on MSHV", () => {
    const kvm = decideHypervisor(auto, facts());
    assert.equal(kvm.name, "cloud-hypervisor");
    assert.match(kvm.reason, /KVM \(\/dev\/kvm\)/);
    const mshv = decideHypervisor(
      auto,
      facts({ devices: { kvm: false, mshv: true }, kvmProbe: undefined, qemu: undefined }),
    );
    assert.equal(mshv.name, "cloud-hypervisor");
    assert.match(mshv.reason, /MSHV/);
    assert.equal(driverForChoice(auto, kvm).name, "cloud-hypervisor");
  });

  it("auto where /dev/kvm cannot run a guest: QEMU with KVM, marked broken; never a silent TCG", () => {
    const choice = decideHypervisor(auto, facts({ kvmProbe: BROKEN_KVM }));
    assert.equal(choice.name, "qemu");
    assert.equal(choice.accel, "kvm");
    assert.equal(choice.broken, true);
    assert.match(
      choice.reason,
      /KVM does not run guests here: QEMU with KVM, which does not work here .*failed to set MSR.*qemu_accel/,
    );
    const driver = driverForChoice(auto, choice);
    assert.equal(driver.name, "qemu");
    assert.equal((driver as QemuDriver).accel, "kvm");
  });

  it("qemu_accel=tcg is the explicit opt-in to software emulation, and says it is no boundary", () => {
    const tcg = parseConfig({ qemu_accel: "tcg" }, "test");
    const choice = decideHypervisor(tcg, facts({ kvmProbe: BROKEN_KVM }));
    assert.equal(choice.name, "qemu");
    assert.equal(choice.accel, "tcg");
    assert.equal(choice.broken, undefined);
    assert.match(choice.reason, /QEMU with TCG \(qemu_accel=tcg: .*not a security boundary\)/);
    assert.equal((driverForChoice(tcg, choice) as QemuDriver).accel, "tcg");
    assert.throws(() => parseConfig({ qemu_accel: "auto" }, "test"), /"qemu_accel"/);
  });

  it("auto: QEMU when cloud-hypervisor is not installed, or there is no hypervisor device", () => {
    const noCh = decideHypervisor(auto, facts({ cloudHypervisor: undefined }));
    assert.equal(noCh.name, "qemu");
    assert.match(
      noCh.reason,
      /cloud-hypervisor \(\/opt\/cloudhv\/bin\/cloud-hypervisor\) is not installed: QEMU with KVM/,
    );
    const noDevice = decideHypervisor(
      auto,
      facts({ devices: { kvm: false, mshv: false }, kvmProbe: BROKEN_KVM }),
    );
    assert.equal(noDevice.name, "qemu");
    assert.match(noDevice.reason, /neither \/dev\/kvm nor \/dev\/mshv exists/);
  });

  it("an explicit hypervisor wins over the node's facts", () => {
    const ch = parseConfig({ hypervisor: "cloud-hypervisor" }, "test");
    assert.equal(
      decideHypervisor(ch, facts({ kvmProbe: BROKEN_KVM, cloudHypervisor: undefined })).name,
      "cloud-hypervisor",
    );
    const qemu = parseConfig({ hypervisor: "qemu" }, "test");
    const choice = decideHypervisor(qemu, facts());
    assert.equal(choice.name, "qemu");
    assert.match(choice.reason, /config hypervisor=qemu: QEMU with KVM/);
    assert.equal(decideHypervisor(qemu, facts({ qemu: undefined, kvmProbe: undefined })).name, "qemu");
  });
});
