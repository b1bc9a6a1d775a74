// QEMU's accelerator. KVM is the only one we treat as an isolation boundary: TCG (software
// emulation) is not one in QEMU's own security model, so it runs only when the runtime config
// asks for it (`qemu_accel: "tcg"`), never as a silent fallback.
//
// Whether KVM works is decided by trying, not by looking: /dev/kvm can exist while KVM is
// unusable (nested virtualisation that fails on the first guest instructions). The probe is a
// hint for `doctor` and for the error a KVM launch gives; it cannot prove that a real guest
// will run (nested KVM has been seen to pass it and then hang the guest's kernel).
import { access, constants } from "node:fs/promises";
import { exec } from "../util/exec.js";

export type Accel = "kvm" | "tcg";

export interface AccelProbe {
  /** "kvm" when a KVM guest ran; "tcg" when it did not (what would be needed instead). */
  accel: Accel;
  reason: string;
}

const cached = new Map<string, Promise<AccelProbe>>();

/**
 * Starts QEMU with KVM on an empty machine for a moment. A usable KVM keeps running the
 * firmware until the timeout kills it; a broken one aborts at once with a KVM error.
 */
export function probeAccel(qemuBinary: string): Promise<AccelProbe> {
  let probe = cached.get(qemuBinary);
  if (!probe) {
    probe = doProbe(qemuBinary);
    cached.set(qemuBinary, probe);
  }
  return probe;
}

async function doProbe(qemuBinary: string): Promise<AccelProbe> {
  try {
    await access("/dev/kvm", constants.R_OK | constants.W_OK);
  } catch {
    return { accel: "tcg", reason: "/dev/kvm is absent or not accessible" };
  }
  const result = await exec(
    [qemuBinary, "-accel", "kvm", "-M", "q35", "-cpu", "host", "-m", "32", "-nodefaults", "-display", "none"],
    { timeoutMs: 1500 },
  );
  if (result.signal === "SIGKILL") return { accel: "kvm", reason: "a KVM guest ran for 1.5 s" };
  const why = result.stderr.trim().split("\n")[0] ?? `exit ${result.code}`;
  return { accel: "tcg", reason: `/dev/kvm is present but unusable: ${why}` };
}

/** The message for a KVM launch on a node where the probe says KVM does not work. */
export function kvmUnusableMessage(probe: AccelProbe): string {
  return (
    `KVM is not usable on this node (${probe.reason}); fix KVM (see \`cloudhv doctor\`), or set ` +
    `"qemu_accel": "tcg" in the runtime config to run guests under software emulation, which is ` +
    "slow and not a security boundary"
  );
}
