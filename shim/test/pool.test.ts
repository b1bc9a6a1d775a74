// The warm pool's bookkeeping (pod/pool.ts) on fake VMs, and a CRI sandbox that takes a pool VM
// through the task service on the fake VMM (support/task-rig.ts): fill, claim, never reuse,
// refill after claims and failures, fall back to a cold boot, close.
import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import pino from "pino";
import type { AgentClient } from "../src/agent/client.js";
import { parseConfig } from "../src/config.js";
import { checkPool } from "../src/doctor.js";
import { POOL_BOOT_NIC, POOL_WARMUP_ARG, type PoolOptions, VmPool, type WarmVm } from "../src/pod/pool.js";
import type { VmExit, VmHandle } from "../src/vmm/types.js";
import { TaskRig } from "./support/task-rig.js";

const quiet = pino({ level: "silent" });

/** A VM that only knows whether it was stopped. */
function fakeWarm(id: string, pid: number) {
  let end!: (exit: VmExit) => void;
  const exited = new Promise<VmExit>((resolve) => {
    end = resolve;
  });
  const state = { stopped: false, agentClosed: false };
  const vm = {
    id,
    pid,
    consoleLogPath: "/dev/null",
    exited,
    async stop() {
      state.stopped = true;
      end({ code: 0, signal: null });
    },
  } as unknown as VmHandle;
  const agent = {
    close() {
      state.agentClosed = true;
    },
  } as unknown as AgentClient;
  const warm: WarmVm = { vm, agent, bootMs: 1 };
  return { warm, state, die: () => end({ code: null, signal: "SIGKILL" }) };
}

type Booted = ReturnType<typeof fakeWarm>;

/** A pool whose boots are recorded; `gate` holds each boot until released when set. */
function poolRig(opts: Partial<PoolOptions> & { target: number; failFirst?: number }) {
  const booted: Booted[] = [];
  let concurrent = 0;
  let maxConcurrent = 0;
  let failures = opts.failFirst ?? 0;
  let busy = false;
  const pool = new VmPool({
    log: quiet,
    busy: () => busy,
    retryMs: { min: 5, max: 20 },
    pollMs: 5,
    rss: async () => 1000,
    boot: async (id) => {
      concurrent++;
      maxConcurrent = Math.max(maxConcurrent, concurrent);
      await new Promise((r) => setTimeout(r, 5));
      concurrent--;
      if (failures > 0) {
        failures--;
        throw new Error("boot failed (fake)");
      }
      const b = fakeWarm(id, 5000 + booted.length);
      booted.push(b);
      return b.warm;
    },
    ...opts,
  });
  return {
    pool,
    booted,
    maxConcurrent: () => maxConcurrent,
    setBusy: (v: boolean) => {
      busy = v;
    },
  };
}

async function until(what: string, check: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) assert.fail(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe("the warm VM pool (bookkeeping)", () => {
  it("fills to its target one boot at a time, hands each VM out once, and refills after claims", async () => {
    const rig = poolRig({ target: 3 });
    rig.pool.start();
    await until("pool full", () => rig.pool.stats().ready === 3);
    assert.equal(rig.maxConcurrent(), 1, "one boot at a time");
    const seen = new Set<string>();
    for (let i = 0; i < 6; i++) {
      await until("a ready VM", () => rig.pool.stats().ready > 0);
      const warm = rig.pool.take();
      assert.ok(warm);
      assert.ok(!seen.has(warm.vm.id), `${warm.vm.id} handed out twice`);
      seen.add(warm.vm.id);
    }
    await until("refilled", () => rig.pool.stats().ready === 3);
    const stats = rig.pool.stats();
    assert.equal(stats.claimed, 6);
    assert.equal(rig.booted.length, 9, "3 + one per claim");
    assert.equal(stats.idleRssBytes > 0 || stats.ready === 3, true);
    await rig.pool.close();
    assert.ok(
      rig.booted.filter((b) => !seen.has(b.warm.vm.id)).every((b) => b.state.stopped),
      "close stopped the unclaimed VMs",
    );
    assert.ok(
      rig.booted.filter((b) => seen.has(b.warm.vm.id)).every((b) => !b.state.stopped),
      "close left the claimed VMs (the pods') alone",
    );
    assert.equal(rig.pool.take(), undefined, "a closed pool hands out nothing");
  });

  it("does not start a refill boot while pod creates are in flight", async () => {
    const rig = poolRig({ target: 1 });
    rig.setBusy(true);
    rig.pool.start();
    await new Promise((r) => setTimeout(r, 60));
    assert.equal(rig.booted.length, 0, "no boot while busy");
    assert.equal(rig.pool.take(), undefined);
    rig.setBusy(false);
    await until("pool full", () => rig.pool.stats().ready === 1);
    await rig.pool.close();
  });

  it("counts failed boots and retries after a back-off until the pool is full", async () => {
    const rig = poolRig({ target: 2, failFirst: 3 });
    rig.pool.start();
    await until("pool full", () => rig.pool.stats().ready === 2);
    assert.equal(rig.pool.stats().refillFailures, 3);
    await rig.pool.close();
  });

  it("never hands out again a VM whose claim failed: it is stopped, counted, and replaced", async () => {
    const rig = poolRig({ target: 2 });
    rig.pool.start();
    await until("pool full", () => rig.pool.stats().ready === 2);
    const failed = rig.pool.take();
    assert.ok(failed);
    await rig.pool.discard(failed);
    const record = rig.booted.find((b) => b.warm === failed);
    assert.ok(record?.state.stopped, "the VM of a failed claim is stopped");
    assert.equal(rig.pool.stats().claimFailures, 1);
    await until("refilled", () => rig.pool.stats().ready === 2);
    // Every VM the pool hands out from now on is another one.
    for (let i = 0; i < 4; i++) {
      await until("a ready VM", () => rig.pool.stats().ready > 0);
      const next = rig.pool.take();
      assert.ok(next);
      assert.notEqual(next.vm.id, failed.vm.id, "the failed VM came back");
      assert.notEqual(next, failed);
    }
    await rig.pool.close();
  });

  it("drops a ready VM that dies and boots a replacement; close stops a boot in progress", async () => {
    let release: (() => void) | undefined;
    const rig = poolRig({ target: 1 });
    rig.pool.start();
    await until("pool full", () => rig.pool.stats().ready === 1);
    const dying = rig.booted[0];
    assert.ok(dying);
    dying.die();
    await until("replaced", () => rig.booted.length === 2 && rig.pool.stats().ready === 1);
    assert.ok(dying.state.stopped, "the dead VM's host side was cleaned up (stop)");
    assert.notEqual(rig.pool.take()?.vm.id, dying.warm.vm.id);

    // A boot that finishes after close: its VM is stopped, not kept.
    const slow = poolRig({
      target: 1,
      boot: async (id) => {
        await new Promise<void>((r) => {
          release = r;
        });
        const b = fakeWarm(id, 7000);
        slow.booted.push(b);
        return b.warm;
      },
    });
    slow.pool.start();
    await until("boot started", () => release !== undefined);
    const closing = slow.pool.close();
    release?.();
    await closing;
    assert.equal(slow.booted.length, 1);
    assert.ok(slow.booted[0]?.state.stopped, "the VM booted during close was stopped");
    await rig.pool.close();
  });
});

describe("a CRI sandbox from the warm pool (task service on the fake VMM)", () => {
  const rigs: TaskRig[] = [];
  after(async () => {
    for (const rig of rigs) await rig.close();
  });

  it("claims a pool VM: its boot NIC moved into the pod netns and given the pod's MAC, disks hot-plugged, cgroup joined, priority and OOM score set; no VM serves two pods; a failed claim stops the VM and the pod boots cold", async () => {
    const rig = await TaskRig.open({ pool: 2 }, { retryMs: { min: 5, max: 20 } });
    rigs.push(rig);
    const pool = rig.tasks.pool;
    assert.ok(pool);
    pool.start();
    await until("pool full", () => pool.stats().ready === 2);
    assert.equal(
      rig.tasks.poolStats()?.ready,
      2,
      "the task service shows the pool's state (metrics read it)",
    );
    const poolVms = rig.driver.vms.map((vm) => vm.id);
    assert.ok(
      rig.driver.vms.every((vm) => vm.config.isolatedNetwork === true && vm.config.nice === 19),
      "pool VMs boot in an empty netns at nice 19",
    );
    assert.ok(
      rig.driver.vms.every((vm) => (vm.config.disks ?? []).length === 0 && !vm.config.network),
      "pool VMs boot with no pod disk and no pod network",
    );
    assert.ok(
      rig.driver.vms.every(
        (vm) => vm.config.isolatedNic?.tap === "tap0_chv" && vm.config.isolatedNic.mac === POOL_BOOT_NIC.mac,
      ),
      "pool VMs boot with a NIC on a TAP in their own netns, with the placeholder MAC",
    );
    assert.ok(
      rig.driver.vms.every((vm) => vm.config.extraKernelArgs?.split(" ").includes(POOL_WARMUP_ARG)),
      "pool VMs boot with the warm-up's kernel argument (config pool_warm_up, on by default)",
    );

    const owners = new Map<string, string>();
    // Every sandbox has kubelet's resolv.conf bind, as a CRI one does.
    const resolv = path.join(rig.dir, "resolv.conf");
    await writeFile(resolv, "nameserver 10.0.0.10\n");
    const sandbox = async (name: string) => {
      await rig.create(name, {
        role: "sandbox",
        netns: `/var/run/netns/${name}`,
        cgroupsPath: `/kubepods/besteffort/pod-${name}/${name}`,
        mounts: [{ destination: "/etc/resolv.conf", type: "bind", source: resolv, options: ["rbind", "ro"] }],
      });
      const vm = rig.driver.vms.find((v) => v.agent.containers.has(name));
      assert.ok(vm, `a VM runs ${name}`);
      assert.ok(!owners.has(vm.id), `VM ${vm.id} of ${name} already served ${owners.get(vm.id)}`);
      owners.set(vm.id, name);
      return vm;
    };
    const a = await sandbox("pa");
    assert.ok(poolVms.includes(a.id), "the first sandbox took a pool VM");
    assert.equal(a.nics.length, 0, "no NIC hot-plugged");
    assert.deepEqual(
      rig.network.moved.get(a.id),
      { tap: "tap0_chv", netnsPath: "/var/run/netns/pa" },
      "the NIC's TAP moved into the pod's netns",
    );
    const told = a.agent.network as { interfaces: Array<{ mac: string; placeholderMac: string }> };
    assert.deepEqual(
      told.interfaces.map((i) => [i.mac, i.placeholderMac]),
      [["02:42:0a:58:00:07", POOL_BOOT_NIC.mac]],
      "the guest gives its NIC the pod's MAC in place of the placeholder",
    );
    assert.equal(a.plugged.size, 2, "its image and scratch disks hot-plugged");
    assert.ok(
      rig.containment.joined.some((j) => j.pid === a.pid),
      "VMM moved into the pod cgroup",
    );
    assert.deepEqual(
      rig.containment.nice.filter((n) => n.pid === a.pid),
      [{ pid: a.pid, nice: 0 }],
    );
    assert.equal(rig.containment.scoreOf(a.pid), 1000, "BestEffort's OOM score");

    // The next claim fails at a disk hot-plug: that VM is stopped and the pod boots cold, with
    // its spec as containerd wrote it (the claim's rewrite of its mounts is not reused).
    rig.driver.failNext("addDisk");
    const b = await sandbox("pb");
    assert.ok(!poolVms.includes(b.id), "after the failed claim, pb booted cold");
    assert.ok(!b.config.extraKernelArgs?.includes(POOL_WARMUP_ARG), "a cold boot has no warm-up");
    const failedVm = rig.driver.vms.find((v) => poolVms.includes(v.id) && v.id !== a.id && v.stopped);
    assert.ok(failedVm, "the pool VM whose claim failed was stopped");
    assert.equal(pool.stats().claimFailures, 1);

    // Refilled with new VMs; pods keep getting VMs no pod had.
    await until("refilled", () => pool.stats().ready === 2);
    for (const name of ["pc", "pd", "pe"]) {
      await until("a ready VM", () => pool.stats().ready > 0);
      const vm = await sandbox(name);
      assert.ok(vm.id.startsWith("pool-"), `${name} took a pool VM`);
      assert.notEqual(vm.id, failedVm.id);
    }
    for (const name of ["pa", "pb", "pc", "pd", "pe"]) await rig.tasks.forceDelete("unit", name);
    await pool.close();
    assert.deepEqual(await rig.settled(), { tasks: [], vms: [], rootfs: [], network: [] });
  });
});

describe("config pool_warm_up: false", () => {
  it("boots pool VMs without the warm-up's kernel argument, keeping the configured ones", async () => {
    const rig = await TaskRig.open({ pool: 1, pool_warm_up: false, kernel_args: "quiet" });
    try {
      const pool = rig.tasks.pool;
      assert.ok(pool);
      pool.start();
      await until("pool full", () => pool.stats().ready === 1);
      assert.deepEqual(
        rig.driver.vms.map((vm) => vm.config.extraKernelArgs),
        ["quiet"],
      );
      await pool.close();
    } finally {
      await rig.close();
    }
  });
});

/** A task rig whose pool of one VM is full: the rig, its pool and that VM. */
async function fullPoolOfOne() {
  const rig = await TaskRig.open({ pool: 1 }, { retryMs: { min: 5, max: 20 } });
  try {
    const pool = rig.tasks.pool;
    assert.ok(pool);
    pool.start();
    await until("pool full", () => pool.stats().ready === 1);
    const [poolVm] = rig.driver.vms;
    assert.ok(poolVm);
    return { rig, pool, poolVm };
  } catch (err) {
    await rig.close();
    throw err;
  }
}

/**
 * After pod "pa"'s claim of `poolVm` failed at `step`: that VM was stopped, the pod booted cold
 * and one failed claim is counted; then the pod and the pool go, and nothing is left.
 */
async function assertBootedColdAfterFailedClaim(
  { rig, pool, poolVm }: Awaited<ReturnType<typeof fullPoolOfOne>>,
  step: string,
): Promise<void> {
  assert.ok(poolVm.stopped, `the pool VM whose ${step} failed was stopped`);
  const cold = rig.driver.vms.find((v) => v.agent.containers.has("pa") && v !== poolVm);
  assert.ok(cold && !cold.id.startsWith("pool-"), "the pod booted cold");
  assert.equal(pool.stats().claimFailures, 1);
  await rig.tasks.forceDelete("unit", "pa");
  await pool.close();
  assert.deepEqual(await rig.settled(), { tasks: [], vms: [], rootfs: [], network: [] });
}

/** Pod "pa"'s sandbox being created on a pod network whose NIC attach waits for `attach()`. */
function createWithNicHeld(rig: TaskRig): { creating: Promise<number>; attach: () => void } {
  const { promise, release } = held();
  rig.network.warmGate = promise;
  const creating = rig.create("pa", {
    role: "sandbox",
    netns: "/var/run/netns/pa",
    cgroupsPath: "/kubepods/besteffort/pod-pa/pa",
  });
  return { creating, attach: release };
}

/** A promise that resolves once `release` is called: holds a fake's step. */
function held(): { promise: Promise<void>; release: () => void } {
  let release = () => {};
  const promise = new Promise<void>((r) => {
    release = r;
  });
  return { promise, release };
}

describe("a pool hit's host work runs at once", () => {
  it("plugs the pod's disks and joins its cgroup while the NIC is still being attached", async () => {
    const { rig, pool, poolVm } = await fullPoolOfOne();
    try {
      const { creating, attach } = createWithNicHeld(rig);
      try {
        await until("disks plugged", () => poolVm.plugged.size === 2);
        assert.ok(!rig.network.moved.has(poolVm.id), "the NIC is not attached yet");
        assert.ok(
          rig.containment.joined.some((j) => j.pid === poolVm.pid),
          "VMM already in the pod cgroup",
        );
      } finally {
        attach();
        await creating.catch(() => {});
      }
      await creating;
      assert.ok(rig.network.moved.has(poolVm.id));
      assert.ok(poolVm.agent.containers.has("pa"), "the pod runs in the pool VM");
      await rig.tasks.forceDelete("unit", "pa");
      await pool.close();
      assert.deepEqual(await rig.settled(), { tasks: [], vms: [], rootfs: [], network: [] });
    } finally {
      await rig.close();
    }
  });
});

describe("a pool hit's guest work runs while the NIC is attached and the VMM joins the pod cgroup", () => {
  it("creates the first container before the NIC is attached; a NIC that then fails stops the VM, the pod boots cold, nothing is left", async () => {
    const { rig, pool, poolVm } = await fullPoolOfOne();
    try {
      const { creating, attach } = createWithNicHeld(rig);
      try {
        await until("the guest created the sandbox", () => poolVm.agent.containers.has("pa"));
        assert.equal(poolVm.agent.network, undefined, "the guest has no network yet");
        rig.network.warmGate = undefined;
        rig.network.failNext();
      } finally {
        attach();
      }
      await creating;
      assert.deepEqual([...rig.network.attached], ["/var/run/netns/pa"], "only the cold VM's network");
      await assertBootedColdAfterFailedClaim({ rig, pool, poolVm }, "NIC");
    } finally {
      await rig.close();
    }
  });

  it("joins the pod cgroup while the guest creates the first container, and replies only once joined; a join that fails stops the VM, the pod boots cold, nothing is left", async () => {
    const { rig, pool, poolVm } = await fullPoolOfOne();
    try {
      const { promise: joinHeld, release: join } = held();
      rig.containment.joinGate = joinHeld;
      let replied = false;
      const creating = rig
        .create("pa", { role: "sandbox", cgroupsPath: "/kubepods/besteffort/pod-pa/pa" })
        .finally(() => {
          replied = true;
        });
      try {
        await until("the guest created the sandbox", () => poolVm.agent.containers.has("pa"));
        assert.ok(
          rig.containment.nice.some((n) => n.pid === poolVm.pid && n.nice === 0),
          "normal priority before the guest works for the pod",
        );
        await new Promise((r) => setTimeout(r, 20));
        assert.ok(!replied, "no reply before the VMM is in the pod cgroup");
        rig.containment.joinGate = undefined;
        rig.containment.failNextJoin();
      } finally {
        join();
      }
      await creating;
      assert.ok(!rig.containment.joined.some((j) => j.pid === poolVm.pid), "it never joined");
      await assertBootedColdAfterFailedClaim({ rig, pool, poolVm }, "cgroup join");
    } finally {
      await rig.close();
    }
  });
});

describe("cloudhv doctor on the warm pool", () => {
  it("shows each live daemon's pool from its status file, ignores a dead daemon's, says when the pool is off", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-pool-doctor-"));
    try {
      const off = await checkPool(parseConfig({ state_dir: dir, pool: 0 }, "test"));
      assert.deepEqual(
        off.map((c) => [c.id, c.status]),
        [["pool", "info"]],
      );
      assert.match(off[0]?.detail ?? "", /off \(config pool: 0\)/);
      const config = parseConfig({ state_dir: dir, pool: 2 }, "test");
      await mkdir(path.join(dir, "pool"));
      const status = {
        target: 2,
        ready: 2,
        booting: 0,
        claimed: 5,
        coldBoots: 1,
        claimFailures: 0,
        refillFailures: 0,
        refilled: 7,
      };
      await writeFile(
        path.join(dir, "pool", "shim-live.json"),
        JSON.stringify({ pid: process.pid, ...status, idleRssBytes: 280 * 2 ** 20 }),
      );
      // A pid no process has (above the kernel's pid_max).
      await writeFile(path.join(dir, "pool", "shim-dead.json"), JSON.stringify({ pid: 2 ** 23, ...status }));
      const on = await checkPool(config);
      assert.equal(on.length, 1, "the dead daemon's file is ignored");
      assert.equal(on[0]?.status, "pass");
      assert.match(
        on[0]?.detail ?? "",
        /2\/2 ready, 0 booting, 5 claimed, 1 cold boots, .*idle VMs 280 MiB resident/,
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
