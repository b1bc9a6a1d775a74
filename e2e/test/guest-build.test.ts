// The guest build refuses a kernel config that lost a required option, naming it; Cloud
// Hypervisor's kernel loader (rust-vmm linux-loader, built from guest/kernel/loader-check) loads
// the packed vmlinux with its PVH entry and every segment's bytes where they belong.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import { exec } from "@cloudhv/shim";
import { REPO_ROOT } from "../src/artifacts.js";
import { PVH_ENTRY, syntheticKernel } from "../src/synthetic-vmlinux.js";

const script = path.join(REPO_ROOT, "guest/kernel/build-kernel.sh");
const packer = path.join(REPO_ROOT, "guest/kernel/pack-vmlinux.mjs");
const checker = path.join(REPO_ROOT, "guest/kernel/loader-check");
const checkerTarget = path.join(
  process.env.CLOUDHV_BUILD_CACHE ?? "/var/cache/cloudhv-build",
  "kernel-loader-check-target",
);
const shipped = path.join(REPO_ROOT, "build/guest/vmlinux");

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

  it("Cloud Hypervisor's loader (linux-loader) loads the packed kernel: the shipped vmlinux with its PVH entry, a packed synthetic one into the same guest memory as its input", async (t) => {
    const cargo = await exec(["sh", "-c", 'command -v cargo || test -x "$HOME/.cargo/bin/cargo"']);
    if (cargo.code !== 0) return t.skip("needs cargo (Rust) to build guest/kernel/loader-check");
    if (!existsSync(shipped)) return t.skip(`${shipped} not built (scripts/dev.sh setup)`);
    const env = {
      ...process.env,
      CARGO_TARGET_DIR: checkerTarget,
      PATH: `${process.env.HOME}/.cargo/bin:${process.env.PATH}`,
    };
    const build = await exec(["cargo", "build", "--release", "--locked", "--quiet"], {
      cwd: checker,
      env,
      timeoutMs: 300_000,
    });
    assert.equal(build.code, 0, build.stderr);
    const bin = path.join(checkerTarget, "release/cloudhv-vmlinux-loader-check");

    const real = await exec([bin, shipped]);
    assert.equal(real.code, 0, real.stderr);
    assert.match(real.stdout, /4 PT_LOAD segments match, PVH entry 0x[0-9a-f]+/);

    const dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-loader-check-"));
    try {
      const input = path.join(dir, "vmlinux.in");
      const packed = path.join(dir, "vmlinux.packed");
      await writeFile(input, syntheticKernel());
      assert.equal((await exec(["node", packer, input, packed])).code, 0);
      const same = await exec([bin, packed, input]);
      assert.equal(same.code, 0, same.stderr);
      assert.match(same.stdout, new RegExp(`PVH entry 0x${PVH_ENTRY.toString(16)}.*guest memory identical`));

      // The check can fail: one PT_LOAD read from one byte further in the file.
      const { readFile } = await import("node:fs/promises");
      const shifted = Buffer.from(await readFile(packed));
      const second = 64 + 56;
      shifted.writeBigUInt64LE(shifted.readBigUInt64LE(second + 8) + 1n, second + 8);
      await writeFile(packed, shifted);
      const differs = await exec([bin, packed, input]);
      assert.equal(differs.code, 1);
      assert.match(differs.stderr, /guest memory differs at 0x[0-9a-f]+ between/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
