// The guest build refuses a kernel config that lost a required option, naming it.
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import { exec } from "@cloudhv/shim";
import { REPO_ROOT } from "../src/artifacts.js";

const script = path.join(REPO_ROOT, "guest/kernel/build-kernel.sh");

describe("guest kernel build", () => {
  it("fails naming the options olddefconfig dropped when a dependency is removed", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-kconfig-"));
    try {
      const broken = path.join(dir, "no-block.config");
      await writeFile(broken, "# CONFIG_BLOCK is not set\n");
      const result = await exec([script, "--config-only", "--extra-config", broken, "--out", dir], {
        timeoutMs: 180_000,
      });
      assert.equal(result.code, 1, result.stderr);
      assert.match(result.stderr, /olddefconfig dropped options/);
      assert.match(result.stderr, /CONFIG_VIRTIO_BLK=y \(now: absent\)/);
      assert.match(result.stderr, /CONFIG_EROFS_FS=y \(now: absent\)/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("accepts the shipped config and keeps PVH, virtio, vsock, erofs, hotplug and what privileged pods use (bridge, netfilter, IPVS)", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-kconfig-"));
    try {
      const result = await exec([script, "--config-only", "--out", dir], { timeoutMs: 180_000 });
      assert.equal(result.code, 0, result.stderr);
      const { readFile } = await import("node:fs/promises");
      const config = await readFile(path.join(dir, "vmlinux.config"), "utf8");
      for (const option of [
        "PVH",
        "VIRTIO_PCI",
        "VIRTIO_BLK",
        "VIRTIO_CONSOLE",
        "VIRTIO_VSOCKETS",
        "EROFS_FS",
        "HOTPLUG_PCI_PCIE",
        "BRIDGE",
        "VETH",
        "TUN",
        "NF_TABLES",
        "IP_NF_NAT",
        "IP6_NF_NAT",
        "IP_VS",
      ]) {
        assert.match(config, new RegExp(`^CONFIG_${option}=y$`, "m"), option);
      }
      assert.match(config, /^# CONFIG_MODULES is not set$/m);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
