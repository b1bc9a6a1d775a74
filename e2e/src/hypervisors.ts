// The hypervisors a VM-level suite runs under: QEMU everywhere, Cloud Hypervisor where this
// node can run it (a cloud-hypervisor binary and MSHV or a working KVM). A suite that cannot
// run here says "skipped: <exact reason>" instead of passing quietly.
import { cloudHypervisorAvailability } from "@cloudhv/shim";
import { QEMU_ACCEL } from "./accel.js";

export interface HypervisorSuite {
  name: "qemu" | "cloud-hypervisor";
  /** Runtime config keys that select this hypervisor. */
  runtimeConfig: Record<string, unknown>;
  /** Set when this node cannot run it: the reason, for node:test's `skip`. */
  skip?: string;
}

/** $CLOUDHV_CLOUD_HYPERVISOR, then PATH, then where the installer puts it. */
export function cloudHypervisorCandidates(): string[] {
  const env = process.env.CLOUDHV_CLOUD_HYPERVISOR;
  return [...(env ? [env] : []), "cloud-hypervisor", "/opt/cloudhv/bin/cloud-hypervisor"];
}

export async function hypervisorSuites(): Promise<HypervisorSuite[]> {
  const ch = await cloudHypervisorAvailability(cloudHypervisorCandidates());
  return [
    {
      name: "qemu",
      runtimeConfig: {
        hypervisor: "qemu",
        qemu_accel: QEMU_ACCEL,
        // The suites once more with the warm pool on (CLOUDHV_E2E_POOL=2): pods then take pool VMs.
        ...(process.env.CLOUDHV_E2E_POOL ? { pool: Number(process.env.CLOUDHV_E2E_POOL) } : {}),
      },
    },
    {
      name: "cloud-hypervisor",
      runtimeConfig: {
        hypervisor: "cloud-hypervisor",
        ...(ch.binary ? { cloud_hypervisor_binary: ch.binary } : {}),
      },
      ...(ch.binary ? {} : { skip: `skipped: ${ch.reason}` }),
    },
  ];
}
