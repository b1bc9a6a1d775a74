// Boot one microVM, wait for its agent, and report what it said and how long it took.
import { randomUUID } from "node:crypto";
import path from "node:path";
import {
  type AccelProbe,
  type HealthResponse,
  probeAccel,
  QemuDriver,
  type VersionResponse,
  type VmHandle,
} from "@cloudhv/shim";
import { QEMU_ACCEL } from "./accel.js";
import { guestArtifacts } from "./artifacts.js";

export interface BootReport {
  vmId: string;
  accel: AccelProbe;
  /** QEMU spawn → first Health reply, milliseconds. */
  bootMs: number;
  health: HealthResponse;
  version: VersionResponse;
}

export interface BootOptions {
  kernelPath?: string;
  rootfsPath?: string;
  initrdPath?: string;
  vcpus?: number;
  memoryMb?: number;
  stateRoot?: string;
  timeoutMs?: number;
  /** Called with the running VM before it is stopped (tests inspect it). */
  inspect?: (vm: VmHandle) => Promise<void>;
}

export const DEFAULT_STATE_ROOT = "/run/cloudhv";

export async function bootAndProbe(opts: BootOptions = {}): Promise<BootReport> {
  const artifacts = guestArtifacts({
    ...(opts.kernelPath ? { kernelPath: opts.kernelPath } : {}),
    ...(opts.rootfsPath ? { rootfsPath: opts.rootfsPath } : {}),
  });
  const driver = new QemuDriver({ accel: QEMU_ACCEL });
  const probe = await probeAccel(driver.binary);
  const accel: AccelProbe =
    QEMU_ACCEL === "tcg" ? { accel: "tcg", reason: `asked for; KVM here: ${probe.reason}` } : probe;
  const vmId = `boot-${randomUUID().slice(0, 8)}`;
  const started = performance.now();
  await using vm = await driver.launch({
    id: vmId,
    kernelPath: artifacts.kernelPath,
    rootfsPath: artifacts.rootfsPath,
    ...(opts.initrdPath ? { initrdPath: opts.initrdPath } : {}),
    vcpus: opts.vcpus ?? 1,
    memoryMb: opts.memoryMb ?? 256,
    stateDir: path.join(opts.stateRoot ?? DEFAULT_STATE_ROOT, "vm", vmId),
  });
  const agent = await vm.connectAgent({ timeoutMs: opts.timeoutMs ?? 60_000 });
  const bootMs = performance.now() - started;
  const health = await agent.health({ timeoutMs: 5000 });
  const version = await agent.version({ timeoutMs: 5000 });
  await opts.inspect?.(vm);
  return { vmId, accel, bootMs, health, version };
}
