// A running microVM and its agent connection: what a pod (or a standalone task) lives in.
import path from "node:path";
import type { AgentClient } from "../agent/client.js";
import type { RuntimeConfig } from "../config/config.js";
import type { Logger } from "../util/log.js";
import type { DiskSpec, HypervisorDriver, VmConfig, VmExit, VmHandle } from "../vmm/types.js";

export interface SandboxSpec {
  id: string;
  vcpus: number;
  maxVcpus: number;
  memoryMb: number;
  disks: DiskSpec[];
  network?: VmConfig["network"];
}

export class Sandbox {
  private constructor(
    readonly id: string,
    readonly vm: VmHandle,
    readonly agent: AgentClient,
    /** Milliseconds from VMM start to the agent's first answer. */
    readonly bootMs: number,
  ) {}

  static async boot(
    spec: SandboxSpec,
    driver: HypervisorDriver,
    config: RuntimeConfig,
    log: Logger,
  ): Promise<Sandbox> {
    const started = performance.now();
    const vmLog = log.child({ vm: spec.id });
    const vm = await driver.launch({
      id: spec.id,
      kernelPath: config.kernel_path,
      rootfsPath: config.rootfs_path,
      ...(config.kernel_args ? { extraKernelArgs: config.kernel_args } : {}),
      vcpus: spec.vcpus,
      maxVcpus: spec.maxVcpus,
      memoryMb: spec.memoryMb,
      stateDir: path.join(config.state_dir, "vm", spec.id),
      disks: spec.disks,
      ...(spec.network ? { network: spec.network } : {}),
      log: vmLog,
    });
    try {
      const agent = await vm.connectAgent({ timeoutMs: config.agent_boot_timeout_ms });
      const bootMs = performance.now() - started;
      // A guest rootfs from another build fails here, by name, not later as a garbled call.
      const version = await agent.checkProtocol({ timeoutMs: 5000 });
      vmLog.info(
        { vmmPid: vm.pid, bootMs: Math.round(bootMs), agentVersion: version.agentVersion },
        "sandbox VM ready",
      );
      return new Sandbox(spec.id, vm, agent, bootMs);
    } catch (err) {
      await vm.stop();
      throw err;
    }
  }

  get exited(): Promise<VmExit> {
    return this.vm.exited;
  }

  async destroy(): Promise<void> {
    this.agent.close();
    await this.vm.stop();
  }
}
