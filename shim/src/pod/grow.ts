// A pod bigger than the pool's class can still take a pool VM: the difference is hot-plugged
// at the claim (vmm/qemu-grow.ts), and the claim waits until the guest has it online. The
// rules say which sizes can be served so; the others boot cold (pods.ts bootFromPool).
import type { AgentClient } from "../agent/client.js";
import { deadline, unimplemented } from "../errors.js";
import type { VmHandle } from "../vmm/types.js";
import type { VmSize } from "./sizing.js";

/** The guest onlines memory in blocks of this size (x86-64 below 64 GiB of RAM). */
export const MEMORY_BLOCK_MB = 128;

/**
 * How long a claim waits for the guest to show what was plugged: bringing a CPU up is the slow
 * part under TCG (~0.2-0.5 s each on a busy host), so each vCPU adds to it, up to 30 s.
 */
export function growTimeoutMs(add: { vcpus: number }): number {
  return Math.min(30_000, 10_000 + 2000 * add.vcpus);
}

type Class = { vcpus: number; memoryMb: number; maxVcpus: number };

/** What to hot-plug into a pool VM of class `cls` for a pod of `size`; `why` when it cannot be served so. */
export function growPlan(
  cls: Class,
  size: Pick<VmSize, "vcpus" | "memoryMb" | "maxVcpus">,
  limits: { maxMemoryMb: number; enabled: boolean },
): { add: { memoryMb: number; vcpus: number } } | { why: string } {
  if (size.maxVcpus !== cls.maxVcpus)
    return { why: `its maximum of ${size.maxVcpus} vCPUs is not the pool's ${cls.maxVcpus}` };
  if (size.vcpus < cls.vcpus || size.memoryMb < cls.memoryMb)
    return { why: "it is smaller than the pool's class (a VM never shrinks)" };
  const add = { memoryMb: size.memoryMb - cls.memoryMb, vcpus: size.vcpus - cls.vcpus };
  if (add.memoryMb === 0 && add.vcpus === 0) return { add };
  if (!limits.enabled) return { why: "growing pool VMs is off (config pool_grow)" };
  if (add.memoryMb % MEMORY_BLOCK_MB !== 0)
    return {
      why: `its memory is ${add.memoryMb} MiB above the pool's, not a multiple of the guest's ${MEMORY_BLOCK_MB} MiB memory block`,
    };
  if (size.memoryMb > limits.maxMemoryMb)
    return { why: `its ${size.memoryMb} MiB are above max_memory_mb ${limits.maxMemoryMb}` };
  return { add };
}

/**
 * Hot-plugs `add` into a pool VM and waits until its guest shows it: MemTotal up by the
 * plugged memory (3% slack for what the kernel keeps) and the plugged CPUs online too. The numbers are
 * the guest's word: a guest that never onlines them only fails its own claim, within the timeout.
 */
export async function growVm(
  vm: VmHandle,
  agent: AgentClient,
  add: { memoryMb: number; vcpus: number },
  timeoutMs = growTimeoutMs(add),
): Promise<{ plugMs: number; onlineMs: number; polls: number }> {
  if (!vm.grow) throw unimplemented(`VM ${vm.id}: its hypervisor cannot hot-plug memory or vCPUs`);
  const until = Date.now() + timeoutMs;
  const left = () => Math.max(1, until - Date.now());
  const before = await agent.onlineResources({ timeoutMs: left() });
  const t0 = performance.now();
  await vm.grow(add);
  const plugMs = Math.round(performance.now() - t0);
  let polls = 0;
  const wantKiB = before.memTotalKiB + Math.floor(add.memoryMb * 1024 * 0.97);
  const wantCpus = before.onlineCpus + add.vcpus;
  for (;;) {
    const now = await agent.onlineResources({ timeoutMs: left() });
    polls++;
    if (now.memTotalKiB >= wantKiB && now.onlineCpus >= wantCpus)
      return { plugMs, onlineMs: Math.round(performance.now() - t0) - plugMs, polls };
    if (Date.now() >= until)
      throw deadline(
        `VM ${vm.id}: after hot-plugging ${add.memoryMb} MiB and ${add.vcpus} vCPUs the guest shows ` +
          `MemTotal ${now.memTotalKiB} KiB (wanted ${wantKiB}) and ${now.onlineCpus} CPUs online ` +
          `(wanted ${wantCpus}) after ${timeoutMs} ms`,
      );
    await new Promise((r) => setTimeout(r, 10));
  }
}
