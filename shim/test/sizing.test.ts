import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseConfig } from "../src/config.js";
import { vmSize } from "../src/pod/sizing.js";

const config = parseConfig(
  {
    default_vcpus: 1,
    default_memory_mb: 256,
    max_vcpus: 4,
    max_memory_mb: 2048,
    enable_annotations: ["default_vcpus", "default_memory", "default_maxvcpus"],
  },
  "test",
);
const CH = "io.cloudhv.config.hypervisor.";
const KATA = "io.katacontainers.config.hypervisor.";

describe("VM sizing from annotations and pod resources", () => {
  it("uses the config defaults when nothing asks otherwise", () => {
    const size = vmSize({}, config);
    assert.deepEqual([size.vcpus, size.memoryMb, size.maxVcpus], [1, 256, 4]);
  });

  it("prefers io.cloudhv over io.katacontainers over the CRI sandbox resources", () => {
    assert.equal(vmSize({ [`${CH}default_vcpus`]: "3", [`${KATA}default_vcpus`]: "2" }, config).vcpus, 3);
    assert.equal(vmSize({ [`${KATA}default_memory`]: "512" }, config).memoryMb, 512);
    const cri = vmSize(
      {
        "io.kubernetes.cri.sandbox-cpu-quota": "150000",
        "io.kubernetes.cri.sandbox-cpu-period": "100000",
        "io.kubernetes.cri.sandbox-memory": String(512 * 2 ** 20),
      },
      config,
    );
    assert.deepEqual([cri.vcpus, cri.memoryMb], [2, 512 + 256]);
    assert.equal(
      vmSize(
        {
          [`${KATA}default_vcpus`]: "1",
          "io.kubernetes.cri.sandbox-cpu-quota": "400000",
          "io.kubernetes.cri.sandbox-cpu-period": "100000",
        },
        config,
      ).vcpus,
      1,
    );
  });

  it("names the annotation, the value and the allowed range when a value is bad", () => {
    assert.throws(() => vmSize({ [`${CH}default_memory`]: "lots" }, config), {
      message: `annotation ${CH}default_memory="lots" must be an integer from 64 to 2048 MiB (config max_memory_mb)`,
    });
    assert.throws(
      () => vmSize({ [`${KATA}default_memory`]: "4096" }, config),
      /="4096" must be an integer from 64 to 2048/,
    );
    assert.throws(
      () => vmSize({ [`${KATA}default_vcpus`]: "0" }, config),
      /default_vcpus="0" must be an integer from 1 to 4 vCPUs/,
    );
    assert.throws(() => vmSize({ [`${CH}default_vcpus`]: "1.5" }, config), /="1.5" must be an integer/);
  });

  it("refuses annotations the config does not enable, and unknown hypervisor annotations", () => {
    const strict = parseConfig({ enable_annotations: ["default_vcpus"] }, "test");
    assert.throws(
      () => vmSize({ [`${CH}default_memory`]: "512" }, strict),
      /not enabled: the runtime config's enable_annotations does not list "default_memory"/,
    );
    assert.throws(() => vmSize({ [`${KATA}kernel_params`]: "x" }, config), /kernel_params is not supported/);
  });

  it("keeps vCPUs within default_maxvcpus", () => {
    assert.throws(
      () => vmSize({ [`${CH}default_vcpus`]: "3", [`${CH}default_maxvcpus`]: "2" }, config),
      /asks for 3 vCPUs, more than the maximum of 2/,
    );
  });

  it("refuses every sizing annotation with the default config: a pod does not size its own VM", () => {
    const defaults = parseConfig({}, "test");
    assert.deepEqual(defaults.enable_annotations, []);
    assert.equal(defaults.allow_sizing_above_pod_limits, false);
    for (const key of ["default_vcpus", "default_memory", "default_maxvcpus"]) {
      assert.throws(
        () => vmSize({ [`${KATA}${key}`]: "2" }, defaults),
        new RegExp(`${key} is not enabled: the runtime config's enable_annotations does not list "${key}"`),
      );
    }
    // The pod's own resources still size it.
    const cri = vmSize({ "io.kubernetes.cri.sandbox-memory": String(300 * 2 ** 20) }, defaults);
    assert.equal(cri.memoryMb, 300 + 256);
  });

  it("never sizes the VM above the pod's limits, naming both values, unless the config allows it", () => {
    const limited = {
      "io.kubernetes.cri.sandbox-cpu-quota": "100000",
      "io.kubernetes.cri.sandbox-cpu-period": "100000",
      "io.kubernetes.cri.sandbox-cpu-shares": "1024",
      "io.kubernetes.cri.sandbox-memory": String(300 * 2 ** 20),
    };
    assert.throws(() => vmSize({ ...limited, [`${CH}default_vcpus`]: "2" }, config), {
      message:
        `annotation ${CH}default_vcpus=2 asks for 2 vCPUs, more than the pod's limit of 1 vCPUs ` +
        "(io.kubernetes.cri.sandbox-cpu-quota=100000/io.kubernetes.cri.sandbox-cpu-period=100000); " +
        "the runtime config's allow_sizing_above_pod_limits would allow it",
    });
    assert.throws(
      () => vmSize({ ...limited, [`${KATA}default_memory`]: "1024" }, config),
      /default_memory=1024 asks for 1024 MiB, more than the pod's limit of 556 MiB \(io\.kubernetes\.cri\.sandbox-memory=314572800 bytes plus default_memory_mb 256\)/,
    );
    // At or below the limits, an enabled annotation is taken.
    const within = vmSize(
      { ...limited, [`${KATA}default_memory`]: "512", [`${CH}default_vcpus`]: "1" },
      config,
    );
    assert.deepEqual([within.vcpus, within.memoryMb], [1, 512]);
    // No limit (BestEffort: quota -1, memory 0): nothing but the config bounds it.
    const unlimited = {
      "io.kubernetes.cri.sandbox-cpu-quota": "-1",
      "io.kubernetes.cri.sandbox-cpu-period": "100000",
      "io.kubernetes.cri.sandbox-memory": "0",
    };
    assert.deepEqual(
      [
        vmSize({ ...unlimited, [`${CH}default_vcpus`]: "3" }, config).vcpus,
        vmSize(unlimited, config).memoryMb,
      ],
      [3, 256],
    );
    const generous = parseConfig({ ...config, allow_sizing_above_pod_limits: true }, "test");
    assert.equal(vmSize({ ...limited, [`${CH}default_memory`]: "1024" }, generous).memoryMb, 1024);
  });

  it("takes a standalone task's limits from its spec's linux.resources", () => {
    const resources = { cpu: { quota: 200000, period: 100000 }, memory: { limit: 128 * 2 ** 20 } };
    const size = vmSize({}, config, resources);
    assert.deepEqual([size.vcpus, size.memoryMb], [2, 128 + 256]);
    assert.throws(
      () => vmSize({ [`${CH}default_vcpus`]: "3" }, config, resources),
      /asks for 3 vCPUs, more than the pod's limit of 2 vCPUs \(linux\.resources\.cpu quota=200000\/period=100000\)/,
    );
    // The CRI annotations win over the sandbox spec's own resources (the pause container's).
    assert.equal(
      vmSize({ "io.kubernetes.cri.sandbox-memory": String(64 * 2 ** 20) }, config, resources).memoryMb,
      64 + 256,
    );
  });
});
