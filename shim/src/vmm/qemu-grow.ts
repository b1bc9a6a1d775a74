// Growing a running QEMU VM: memory by an ACPI pc-dimm on a shared memfd (virtiofsd maps all
// guest RAM, hot-plugged RAM too), vCPUs by device_add of the slots query-hotpluggable-cpus
// lists as empty. The VM must have been launched with room (qemuArgv: slots/maxmem, maxcpus).
import { exhausted, invalid } from "../errors.js";

type Execute = <T = unknown>(command: string, args?: Record<string, unknown>) => Promise<T>;

/** Memory slots a growable VM gets: one grow plugs one DIMM. */
export const GROW_SLOTS = 2;

/** The `-m` argument: room to grow to maxMemoryMb when it is above memoryMb. */
export function memoryArg(memoryMb: number, maxMemoryMb: number | undefined): string {
  if (maxMemoryMb === undefined || maxMemoryMb <= memoryMb) return `${memoryMb}M`;
  return `${memoryMb}M,slots=${GROW_SLOTS},maxmem=${maxMemoryMb}M`;
}

export interface CpuSlot {
  type: string;
  props: Record<string, number>;
}

/**
 * The empty vCPU slots in query-hotpluggable-cpus' answer, lowest ids first. QEMU's answer is
 * checked (a guest that took QEMU over must not steer device_add): CPU type names and small
 * integer topology ids only.
 */
export function freeCpuSlots(answer: unknown): CpuSlot[] {
  if (!Array.isArray(answer)) throw invalid("query-hotpluggable-cpus did not answer a list");
  const free: CpuSlot[] = [];
  for (const entry of answer.slice(0, 1024)) {
    if (typeof entry !== "object" || entry === null) continue;
    const e = entry as { type?: unknown; props?: unknown; "qom-path"?: unknown };
    if (e["qom-path"] !== undefined) continue;
    if (typeof e.type !== "string" || !/^[a-z0-9_-]{1,64}-cpu$/.test(e.type)) continue;
    if (typeof e.props !== "object" || e.props === null) continue;
    const props: Record<string, number> = {};
    let ok = true;
    for (const [k, v] of Object.entries(e.props)) {
      if (!/^[a-z]{1,16}-id$/.test(k) || !Number.isInteger(v) || (v as number) < 0 || (v as number) > 4096)
        ok = false;
      else props[k] = v as number;
    }
    if (ok && Object.keys(props).length > 0) free.push({ type: e.type, props });
  }
  const key = (s: CpuSlot) => ["socket-id", "die-id", "core-id", "thread-id"].map((k) => s.props[k] ?? 0);
  return free.sort((a, b) => {
    const [ka, kb] = [key(a), key(b)];
    for (let i = 0; i < ka.length; i++) if (ka[i] !== kb[i]) return (ka[i] as number) - (kb[i] as number);
    return 0;
  });
}

/** Plugs one DIMM of `memoryMb` (its backend is removed again when the device fails). */
export async function plugMemory(execute: Execute, memoryMb: number, n: number): Promise<void> {
  const mem = `mem-grow${n}`;
  await execute("object-add", {
    "qom-type": "memory-backend-memfd",
    id: mem,
    size: memoryMb * 2 ** 20,
    share: true,
  });
  try {
    await execute("device_add", { driver: "pc-dimm", id: `dimm-grow${n}`, memdev: mem, node: 0 });
  } catch (err) {
    await execute("object-del", { id: mem }).catch(() => {});
    throw err;
  }
}

/** Plugs `count` vCPUs into the lowest empty slots. */
export async function plugCpus(execute: Execute, vmId: string, count: number): Promise<void> {
  const free = freeCpuSlots(await execute("query-hotpluggable-cpus"));
  if (free.length < count)
    throw exhausted(`VM ${vmId}: ${count} vCPUs to add, ${free.length} empty vCPU slots (maxcpus)`);
  for (const slot of free.slice(0, count)) {
    const ids = Object.values(slot.props).join("-");
    await execute("device_add", { driver: slot.type, id: `cpu-grow-${ids}`, ...slot.props });
  }
}
