// A HypervisorDriver without a hypervisor: each "VM" is a FakeAgent on a unix socket, and
// connectAgent returns the shim's real AgentClient connected to it. Tests see what was
// launched, plugged, paused and stopped, make any step fail, and make a VM die.
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { AgentClient } from "../../src/agent/client.js";
import { TtrpcClient } from "../../src/ttrpc/client.js";
import type { DiskSpec, HypervisorDriver, NicSpec, VmConfig, VmExit, VmHandle } from "../../src/vmm/types.js";
import { FakeAgent } from "./fake-agent.js";

/** The VM steps a test can make fail. */
export type VmStep = "launch" | "connectAgent" | "addDisk";

export class FakeVm implements VmHandle {
  readonly consoleLogPath = "/dev/null";
  readonly exited: Promise<VmExit>;
  readonly agent = new FakeAgent();
  /** Hot-plugged devices by id. */
  readonly plugged = new Map<string, DiskSpec>();
  paused = false;
  stopped = false;
  private resolveExit!: (exit: VmExit) => void;
  private nextDevice = 0;

  constructor(
    readonly config: VmConfig,
    readonly pid: number,
    private readonly socketPath: string,
    private readonly driver: FakeDriver,
  ) {
    this.exited = new Promise((resolve) => {
      this.resolveExit = resolve;
    });
  }

  get id(): string {
    return this.config.id;
  }

  async connectAgent(): Promise<AgentClient> {
    this.driver.check("connectAgent");
    return new AgentClient(
      await TtrpcClient.connect(this.socketPath, { timeoutMs: 2000 }),
      undefined,
      this.id,
    );
  }

  /** When set, stop() waits for it first (a VMM slow to quit). */
  stopGate: Promise<void> | undefined;

  async stop(): Promise<void> {
    if (this.stopped) return;
    await this.stopGate;
    this.stopped = true;
    await this.agent.close();
    this.resolveExit({ code: 0, signal: null });
  }

  /** Sent SIGKILL (kill()): its guest is gone; stop() still reaps it. */
  killed = false;

  async kill(): Promise<void> {
    if (this.stopped) return;
    this.killed = true;
    await this.agent.close();
  }

  /**
   * The VMM process dies on its own (killed, crashed), or the driver ended the VM for a guest
   * fault (`reason`): the guest and its agent go with it.
   */
  async die(reason?: string): Promise<void> {
    this.stopped = true;
    await this.agent.close();
    this.resolveExit({ code: null, signal: "SIGKILL", ...(reason ? { reason } : {}) });
  }

  async addDisk(disk: DiskSpec): Promise<string> {
    this.driver.check("addDisk");
    const id = `disk${this.nextDevice++}`;
    this.plugged.set(id, disk);
    return id;
  }

  /** NICs hot-plugged (a pool VM's, at its claim). */
  readonly nics: NicSpec[] = [];

  async addNet(nic: NicSpec): Promise<string> {
    this.nics.push(nic);
    return nic.id;
  }

  /** When set, unplugs wait for it (a guest slow to let go); "never": a guest that never acks. */
  unplugGate: Promise<void> | "never" | "timeout" | undefined;

  async removeDevice(id: string): Promise<void> {
    if (this.unplugGate === "never") await new Promise(() => {});
    // What the driver says when its unplug timeout passes.
    if (this.unplugGate === "timeout")
      throw new Error(`VM ${this.id}: the guest did not release ${id} in 30 s`);
    await this.unplugGate;
    if (!this.plugged.delete(id)) throw new Error(`no device ${id}`);
  }

  async pause(): Promise<void> {
    this.paused = true;
  }

  /** A later "daemon" adopts this VM by its pid (FakeDriver.adopt). */
  async record(): Promise<unknown> {
    return { fakePid: this.pid };
  }

  async resume(): Promise<void> {
    this.paused = false;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

export class FakeDriver implements HypervisorDriver {
  readonly name = "qemu";
  readonly vms: FakeVm[] = [];
  private readonly failing = new Set<VmStep>();
  private nextPid = 1000;

  /** `dir` holds the agents' sockets. `onLaunch` prepares each new VM's agent (e.g. a failure). */
  constructor(
    private readonly dir: string,
    public onLaunch: (vm: FakeVm) => void = () => {},
  ) {}

  /** The next `step` of any VM fails. */
  failNext(step: VmStep): void {
    this.failing.add(step);
  }

  check(step: VmStep): void {
    if (this.failing.delete(step)) throw new Error(`${step} failed (fake VMM)`);
  }

  get running(): FakeVm[] {
    return this.vms.filter((vm) => !vm.stopped);
  }

  /** The VM a previous "daemon" launched, if it still runs (the same object: its agent kept its state). */
  async adopt(_config: Pick<VmConfig, "id" | "stateDir">, record: unknown): Promise<FakeVm | undefined> {
    const pid = (record as { fakePid?: number }).fakePid;
    return this.vms.find((vm) => vm.pid === pid && !vm.stopped);
  }

  async launch(config: VmConfig): Promise<FakeVm> {
    this.check("launch");
    // As a real driver does: the VM's dir exists while it runs (a pool VM's marker goes there).
    await mkdir(config.stateDir, { recursive: true });
    const vm = new FakeVm(config, this.nextPid++, path.join(this.dir, `vm${this.vms.length}.sock`), this);
    await vm.agent.listen(path.join(this.dir, `vm${this.vms.length}.sock`));
    this.vms.push(vm);
    this.onLaunch(vm);
    return vm;
  }
}
