// Which driver runs the VMs: the config's `hypervisor` key, and for `auto` what this node has.
// Cloud Hypervisor needs a working KVM (/dev/kvm) or the Microsoft Hypervisor (/dev/mshv);
// QEMU runs with KVM, or with TCG where the config asks for it (`qemu_accel`).
import { stat } from "node:fs/promises";
import path from "node:path";
import type { RuntimeConfig } from "../config.js";
import { type Accel, type AccelProbe, probeAccel } from "./accel.js";
import { CloudHypervisorDriver } from "./cloud-hypervisor.js";
import { findExecutable } from "./files.js";
import { QemuDriver } from "./qemu.js";
import type { HypervisorDriver } from "./types.js";

export interface HypervisorDevices {
  /** /dev/kvm exists (it may still be unusable: see probeAccel). */
  kvm: boolean;
  /** /dev/mshv exists: Linux runs as the root partition of the Microsoft Hypervisor. */
  mshv: boolean;
}

export async function hypervisorDevices(): Promise<HypervisorDevices> {
  const present = (p: string) =>
    stat(p).then(
      () => true,
      () => false,
    );
  const [kvm, mshv] = await Promise.all([present("/dev/kvm"), present("/dev/mshv")]);
  return { kvm, mshv };
}

export interface HypervisorChoice {
  name: "qemu" | "cloud-hypervisor";
  /** One sentence: why this driver (and for QEMU, which accelerator). */
  reason: string;
  /** For QEMU: the accelerator it will use (the config's `qemu_accel`). */
  accel?: Accel;
  /** For QEMU with KVM: true when the probe says KVM does not work, so every pod will fail. */
  broken?: boolean;
}

export interface ChoiceInputs {
  devices: HypervisorDevices;
  /** The resolved cloud-hypervisor binary, if installed. */
  cloudHypervisor: string | undefined;
  /** The resolved QEMU binary, if installed. */
  qemu: string | undefined;
  /** Whether KVM runs a guest (QEMU's probe); absent when QEMU is not installed. */
  kvmProbe: AccelProbe | undefined;
}

export async function gatherChoiceInputs(config: RuntimeConfig): Promise<ChoiceInputs> {
  const [devices, cloudHypervisor, qemu] = await Promise.all([
    hypervisorDevices(),
    findExecutable(config.cloud_hypervisor_binary),
    findExecutable(config.qemu_binary),
  ]);
  const kvmProbe = qemu ? await probeAccel(qemu) : undefined;
  return { devices, cloudHypervisor, qemu, kvmProbe };
}

/** The decision itself, from facts gathered beforehand (pure, so it is tested directly). */
export function decideHypervisor(config: RuntimeConfig, facts: ChoiceInputs): HypervisorChoice {
  const qemuChoice = (why: string): HypervisorChoice => {
    const accel = config.qemu_accel;
    const probe = facts.kvmProbe;
    if (accel === "tcg")
      return {
        name: "qemu",
        accel,
        reason: `${why}: QEMU with TCG (qemu_accel=tcg: software emulation, slow, not a security boundary)`,
      };
    if (!probe)
      return { name: "qemu", accel, reason: `${why}: QEMU with KVM (${config.qemu_binary} not found)` };
    if (probe.accel !== "kvm")
      return {
        name: "qemu",
        accel,
        broken: true,
        reason: `${why}: QEMU with KVM, which does not work here (${probe.reason}): pods will fail until KVM works or qemu_accel is "tcg"`,
      };
    return { name: "qemu", accel, reason: `${why}: QEMU with KVM` };
  };
  if (config.hypervisor === "qemu") return qemuChoice("config hypervisor=qemu");
  if (config.hypervisor === "cloud-hypervisor")
    return { name: "cloud-hypervisor", reason: "config hypervisor=cloud-hypervisor" };
  // auto
  if (!facts.cloudHypervisor)
    return qemuChoice(
      `hypervisor=auto and cloud-hypervisor (${config.cloud_hypervisor_binary}) is not installed`,
    );
  if (facts.devices.mshv)
    return { name: "cloud-hypervisor", reason: "hypervisor=auto: cloud-hypervisor on MSHV (/dev/mshv)" };
  if (!facts.devices.kvm) return qemuChoice("hypervisor=auto and neither /dev/kvm nor /dev/mshv exists");
  if (facts.kvmProbe && facts.kvmProbe.accel !== "kvm")
    return qemuChoice("hypervisor=auto and KVM does not run guests here");
  return { name: "cloud-hypervisor", reason: "hypervisor=auto: cloud-hypervisor on KVM (/dev/kvm)" };
}

export async function chooseHypervisor(config: RuntimeConfig): Promise<HypervisorChoice> {
  return decideHypervisor(config, await gatherChoiceInputs(config));
}

export interface CloudHypervisorAvailability {
  /** The binary to use, when this node can run Cloud Hypervisor guests. */
  binary?: string;
  /** Why it cannot, in one sentence (for "skipped: <reason>" and doctor). */
  reason?: string;
}

/**
 * Whether this node can run guests with Cloud Hypervisor: the first of `candidates` that is
 * installed, and a hypervisor it can use (MSHV, or a KVM that really runs a guest).
 */
export async function cloudHypervisorAvailability(
  candidates: string[],
  qemuBinary = "qemu-system-x86_64",
): Promise<CloudHypervisorAvailability> {
  let binary: string | undefined;
  for (const c of candidates) {
    binary = await findExecutable(c);
    if (binary) break;
  }
  // Every reason, not the first: "no binary" alone would hide that KVM is broken too.
  const reasons: string[] = [];
  if (!binary)
    reasons.push(
      `cloud-hypervisor binary not found (looked for: ${candidates
        .map((c) => (c.includes("/") ? c : `${c} on PATH`))
        .join(", ")})`,
    );
  const devices = await hypervisorDevices();
  if (!devices.mshv) {
    if (!devices.kvm) reasons.push("neither /dev/kvm nor /dev/mshv exists");
    else {
      const qemu = await findExecutable(qemuBinary);
      const probe = qemu ? await probeAccel(qemu) : undefined;
      if (probe && probe.accel !== "kvm") reasons.push(`KVM does not run guests here (${probe.reason})`);
    }
  }
  return binary && !reasons.length ? { binary } : { reason: reasons.join("; ") };
}

/**
 * Where QEMU's VMs get their dirs of hard-linked disks: in the rootfs cache (the disks'
 * filesystem; root's, so no VMM reaches another's dir but through its own bind mount).
 */
export function diskLinksDir(config: RuntimeConfig): string {
  return path.join(config.cache_dir, ".vmm-disks");
}

/** The driver for a choice made by chooseHypervisor (see it for `auto`). */
export function driverForChoice(config: RuntimeConfig, choice: HypervisorChoice): HypervisorDriver {
  const uids = { first: config.vmm_uid_first, count: config.vmm_uid_count };
  return choice.name === "cloud-hypervisor"
    ? new CloudHypervisorDriver({ binary: config.cloud_hypervisor_binary })
    : new QemuDriver({
        binary: config.qemu_binary,
        accel: config.qemu_accel,
        uids,
        diskLinks: diskLinksDir(config),
      });
}

export { findExecutable };
