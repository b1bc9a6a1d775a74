// The accelerator every VM that the tests, the demo and the benchmark boot asks for. These
// machines have a /dev/kvm that fails nested guests, so they opt in to TCG explicitly; a KVM
// host runs the same suites with CLOUDHV_QEMU_ACCEL=kvm.
import type { Accel } from "@cloudhv/shim";

export const QEMU_ACCEL: Accel = process.env.CLOUDHV_QEMU_ACCEL === "kvm" ? "kvm" : "tcg";
