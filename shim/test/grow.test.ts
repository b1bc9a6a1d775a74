// A pool VM grown for a bigger pod (pod/grow.ts, vmm/qemu-grow.ts): which sizes the pool can
// serve by hot-plug, the QMP commands a grow sends, and a guest that never shows the new size.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { AgentClient } from "../src/agent/client.js";
import { growPlan, growTimeoutMs, growVm, MEMORY_BLOCK_MB } from "../src/pod/grow.js";
import { freeCpuSlots, memoryArg, plugCpus, plugMemory } from "../src/vmm/qemu-grow.js";
import type { VmHandle } from "../src/vmm/types.js";

const cls = { vcpus: 1, memoryMb: 256, maxVcpus: 8 };
const limits = { maxMemoryMb: 2048, enabled: true };

describe("growing pool VMs: the size arithmetic", () => {
  it("adds the difference to the class, in whole guest memory blocks", () => {
    assert.deepEqual(growPlan(cls, { vcpus: 1, memoryMb: 256, maxVcpus: 8 }, limits), {
      add: { memoryMb: 0, vcpus: 0 },
    });
    assert.deepEqual(growPlan(cls, { vcpus: 3, memoryMb: 768, maxVcpus: 8 }, limits), {
      add: { memoryMb: 512, vcpus: 2 },
    });
    assert.deepEqual(growPlan(cls, { vcpus: 2, memoryMb: 256, maxVcpus: 8 }, limits), {
      add: { memoryMb: 0, vcpus: 1 },
    });
    assert.deepEqual(growPlan(cls, { vcpus: 1, memoryMb: 256 + MEMORY_BLOCK_MB, maxVcpus: 8 }, limits), {
      add: { memoryMb: MEMORY_BLOCK_MB, vcpus: 0 },
    });
  });

  it("refuses what hot-plug cannot give, saying why: smaller, unaligned, above the maxima, other maxVcpus, off", () => {
    const why = (size: { vcpus: number; memoryMb: number; maxVcpus: number }, l = limits) => {
      const plan = growPlan(cls, size, l);
      assert.ok("why" in plan, JSON.stringify(plan));
      return plan.why;
    };
    assert.match(why({ vcpus: 1, memoryMb: 128, maxVcpus: 8 }), /smaller than the pool's class/);
    assert.match(why({ vcpus: 1, memoryMb: 300, maxVcpus: 8 }), /44 MiB above .* 128 MiB memory block/);
    assert.match(why({ vcpus: 1, memoryMb: 4096, maxVcpus: 8 }), /4096 MiB are above max_memory_mb 2048/);
    assert.match(why({ vcpus: 2, memoryMb: 256, maxVcpus: 4 }), /maximum of 4 vCPUs is not the pool's 8/);
    assert.match(why({ vcpus: 2, memoryMb: 384, maxVcpus: 8 }, { ...limits, enabled: false }), /pool_grow/);
    // Off changes nothing for a pod of the class itself.
    assert.ok("add" in growPlan(cls, cls, { ...limits, enabled: false }));
  });

  it("waits longer for more vCPUs, never more than 30 s", () => {
    assert.equal(growTimeoutMs({ vcpus: 0 }), 10_000);
    assert.equal(growTimeoutMs({ vcpus: 7 }), 24_000);
    assert.equal(growTimeoutMs({ vcpus: 255 }), 30_000);
  });

  it("gives a pool VM room to grow on QEMU's -m only when asked", () => {
    assert.equal(memoryArg(256, undefined), "256M");
    assert.equal(memoryArg(256, 256), "256M");
    assert.equal(memoryArg(256, 8192), "256M,slots=2,maxmem=8192M");
  });
});

describe("growing pool VMs: QMP", () => {
  const answer = [
    { type: "max-x86_64-cpu", "vcpus-count": 1, props: { "socket-id": 2, "core-id": 0, "thread-id": 0 } },
    { type: "max-x86_64-cpu", "vcpus-count": 1, props: { "socket-id": 1, "core-id": 0, "thread-id": 0 } },
    {
      type: "max-x86_64-cpu",
      "vcpus-count": 1,
      props: { "socket-id": 0, "core-id": 0, "thread-id": 0 },
      "qom-path": "/machine/unattached/device[0]",
    },
  ];

  it("plugs the lowest empty vCPU slots and a shared memfd DIMM", async () => {
    const sent: Array<[string, unknown]> = [];
    const execute = async <T>(command: string, args?: Record<string, unknown>): Promise<T> => {
      sent.push([command, args]);
      return (command === "query-hotpluggable-cpus" ? answer : {}) as T;
    };
    await plugMemory(execute, 512, 0);
    await plugCpus(execute, "vm1", 2);
    assert.deepEqual(sent, [
      [
        "object-add",
        { "qom-type": "memory-backend-memfd", id: "mem-grow0", size: 512 * 2 ** 20, share: true },
      ],
      ["device_add", { driver: "pc-dimm", id: "dimm-grow0", memdev: "mem-grow0", node: 0 }],
      ["query-hotpluggable-cpus", undefined],
      [
        "device_add",
        { driver: "max-x86_64-cpu", id: "cpu-grow-1-0-0", "socket-id": 1, "core-id": 0, "thread-id": 0 },
      ],
      [
        "device_add",
        { driver: "max-x86_64-cpu", id: "cpu-grow-2-0-0", "socket-id": 2, "core-id": 0, "thread-id": 0 },
      ],
    ]);
    await assert.rejects(plugCpus(execute, "vm1", 3), /vm1: 3 vCPUs to add, 2 empty vCPU slots/);
  });

  it("drops the memory backend when the DIMM fails", async () => {
    const sent: string[] = [];
    const execute = async <T>(command: string): Promise<T> => {
      sent.push(command);
      if (command === "device_add") throw new Error("no slot");
      return {} as T;
    };
    await assert.rejects(plugMemory(execute, 128, 3), /no slot/);
    assert.deepEqual(sent, ["object-add", "device_add", "object-del"]);
  });

  it("takes nothing odd from QEMU's answer into a device_add", () => {
    const odd = [
      { type: "x; rm -rf", props: { "socket-id": 1 } },
      { type: "max-x86_64-cpu", props: { "socket-id": -1 } },
      { type: "max-x86_64-cpu", props: { "socket-id": 1, driver: 3 } },
      { type: "max-x86_64-cpu", props: { "socket-id": "1" } },
      { type: "max-x86_64-cpu", props: {} },
      null,
      "cpu",
    ];
    assert.deepEqual(freeCpuSlots(odd), []);
    assert.throws(() => freeCpuSlots({}), /did not answer a list/);
  });
});

describe("growing pool VMs: waiting for the guest", () => {
  const vm = (log: string[]) =>
    ({
      id: "vm1",
      grow: async (add: { memoryMb: number; vcpus: number }) => {
        log.push(`grow ${add.memoryMb} ${add.vcpus}`);
      },
    }) as unknown as VmHandle;

  it("returns once the guest shows the memory and CPUs online", async () => {
    const log: string[] = [];
    const seen = [
      { memTotalKiB: 200_000, onlineCpus: 1 },
      { memTotalKiB: 200_000, onlineCpus: 1 },
      { memTotalKiB: 200_000 + 512 * 1024, onlineCpus: 2 },
      { memTotalKiB: 200_000 + 512 * 1024, onlineCpus: 3 },
    ];
    const agent = { onlineResources: async () => seen.shift() } as unknown as AgentClient;
    await growVm(vm(log), agent, { memoryMb: 512, vcpus: 2 });
    assert.deepEqual(log, ["grow 512 2"]);
    assert.equal(seen.length, 0, "polled until both were there");
  });

  it("fails within its timeout when the guest never onlines them, naming what it saw", async () => {
    const agent = {
      onlineResources: async () => ({ memTotalKiB: 200_000, onlineCpus: 1 }),
    } as unknown as AgentClient;
    const t0 = performance.now();
    await assert.rejects(
      growVm(vm([]), agent, { memoryMb: 256, vcpus: 1 }, 200),
      /vm1: after hot-plugging 256 MiB and 1 vCPUs the guest shows MemTotal 200000 KiB \(wanted 454279\) and 1 CPUs online \(wanted 2\)/,
    );
    assert.ok(performance.now() - t0 < 2000);
  });
});
