// Decide between KVM and TCG for QEMU by trying, not by looking: /dev/kvm can exist while
// KVM is unusable (nested virtualisation that fails on the first guest instructions).
import { access, constants } from "node:fs/promises";
import { exec } from "../util/exec.js";

export type Accel = "kvm" | "tcg";

export interface AccelProbe {
  accel: Accel;
  reason: string;
}

let cached: Promise<AccelProbe> | undefined;

/**
 * Starts QEMU with KVM on an empty machine for a moment. A usable KVM keeps running the
 * firmware until the timeout kills it; a broken one aborts at once with a KVM error.
 */
export function probeAccel(qemuBinary: string): Promise<AccelProbe> {
  cached ??= doProbe(qemuBinary);
  return cached;
}

async function doProbe(qemuBinary: string): Promise<AccelProbe> {
  const forced = process.env.CLOUDHV_QEMU_ACCEL;
  if (forced === "kvm" || forced === "tcg") return { accel: forced, reason: "CLOUDHV_QEMU_ACCEL" };
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
