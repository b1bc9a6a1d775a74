// Which driver the daemon uses: the config's `hypervisor`, and for `auto` the node's facts
// (decided from facts gathered beforehand, so every combination is checked here).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseConfig } from "../src/config/config.js";
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

  it("auto: QEMU with TCG where /dev/kvm exists but cannot run a guest (our CI machines)", () => {
    const choice = decideHypervisor(auto, facts({ kvmProbe: BROKEN_KVM }));
    assert.equal(choice.name, "qemu");
    assert.match(choice.reason, /KVM does not run guests here: QEMU with TCG .*failed to set MSR/);
    assert.equal(driverForChoice(auto, choice).name, "qemu");
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
