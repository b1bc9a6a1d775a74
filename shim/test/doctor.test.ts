// `cloudhv doctor` run as the operator runs it (a process, its stdout and exit code), on this
// node: the KVM check is real (it runs a probe guest), so the expectations follow what KVM
// does here, checked independently with the same probe the QEMU driver uses.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { probeAccel } from "../src/vmm/accel.js";

const CLI = fileURLToPath(new URL("../src/bin/cloudhv.js", import.meta.url));
const GUEST = fileURLToPath(new URL("../../../build/guest/", import.meta.url));

const CHECK_IDS = [
  "config",
  "kvm",
  "mshv",
  "hypervisor",
  "qemu",
  "cloud-hypervisor",
  "virtiofsd",
  "net-helper",
  "kernel",
  "rootfs",
  "containerd",
  "cri-runtime",
  "shim",
  "tool:ip",
  "tool:tc",
  "tool:nsenter",
  "tool:mkfs.erofs",
  "tool:mkfs.ext4",
  "tool:setpriv",
  "tool:unshare",
  "tool:taskset",
  "tool:crun",
  "cgroup",
  "pool",
];

interface Check {
  id: string;
  title: string;
  status: "pass" | "warn" | "fail" | "info";
  detail: string;
  fix?: string;
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function doctor(args: string[]): Promise<Run> {
  const env = { ...process.env };
  delete env.CLOUDHV_QEMU_ACCEL;
  delete env.CLOUDHV_CONFIG;
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, "doctor", ...args], { env, timeout: 20_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

function parse(run: Run): { ok: boolean; checks: Check[] } {
  const report = JSON.parse(run.stdout) as { ok: boolean; checks: Check[] };
  assert.equal(run.code, report.ok ? 0 : 1, "exit 1 exactly when a check fails");
  assert.equal(report.ok, !report.checks.some((c) => c.status === "fail"), "warnings do not fail");
  return report;
}

const byId = (checks: Check[], id: string): Check => {
  const c = checks.find((x) => x.id === id);
  assert.ok(c, `check ${id} is reported`);
  return c;
};

describe("cloudhv doctor", () => {
  let dir: string;
  let goodConfig: string;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-doctor-"));
    goodConfig = path.join(dir, "config.json");
    await writeFile(
      goodConfig,
      JSON.stringify({
        kernel_path: path.join(GUEST, "vmlinux"),
        rootfs_path: path.join(GUEST, "rootfs.erofs"),
        cloud_hypervisor_binary: path.join(dir, "no-cloud-hypervisor-here"),
      }),
    );
  });

  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("--json reports every check, each failure with its fix", async () => {
    const run = await doctor(["--config", goodConfig, "--json"]);
    const { checks } = parse(run);
    assert.deepEqual(
      checks.map((c) => c.id),
      CHECK_IDS,
    );
    for (const c of checks) {
      assert.ok(["pass", "warn", "fail", "info"].includes(c.status), `${c.id}: status ${c.status}`);
      assert.ok(c.detail.length > 0, `${c.id} has a detail`);
      if (c.status === "fail") assert.ok(c.fix, `${c.id} fails with a fix`);
    }
    assert.equal(byId(checks, "config").status, "pass");
    assert.equal(byId(checks, "tool:crun").status, "info");
    if (existsSync(path.join(GUEST, "rootfs.erofs"))) {
      assert.equal(byId(checks, "rootfs").status, "pass");
      assert.match(byId(checks, "rootfs").detail, /erofs/);
      assert.equal(byId(checks, "kernel").status, "pass");
    }
  });

  it("reports whether KVM really runs a guest here; without KVM, QEMU fails unless TCG is opted into", async (t) => {
    const tcgConfig = path.join(dir, "tcg.json");
    await writeFile(
      tcgConfig,
      JSON.stringify({ ...JSON.parse(await readFile(goodConfig, "utf8")), qemu_accel: "tcg" }),
    );
    const { checks } = parse(await doctor(["--config", goodConfig, "--json"]));
    const tcgChecks = parse(await doctor(["--config", tcgConfig, "--json"])).checks;
    const kvm = byId(checks, "kvm");
    const hypervisor = byId(checks, "hypervisor");
    if (!existsSync("/dev/kvm")) {
      t.diagnostic("this node has no /dev/kvm");
      assert.match(kvm.detail, /\/dev\/kvm is absent/);
      assert.match(hypervisor.detail, /^qemu: /);
      return;
    }
    const probe = await probeAccel("qemu-system-x86_64");
    t.diagnostic(`independent probe on this node: ${probe.accel} (${probe.reason})`);
    if (probe.accel === "tcg") {
      // Our development machines: /dev/kvm exists, but nested KVM fails on the first guest.
      // The default (KVM) fails with the fix; the TCG opt-in warns that it is no boundary.
      assert.equal(kvm.status, "fail");
      assert.match(kvm.detail, /^\/dev\/kvm is present but unusable: /);
      assert.ok(kvm.fix);
      assert.equal(hypervisor.status, "fail");
      assert.match(hypervisor.detail, /^qemu: .*QEMU with KVM, which does not work here/);
      assert.match(hypervisor.fix ?? "", /"qemu_accel": "tcg"/);
      assert.equal(byId(tcgChecks, "kvm").status, "warn");
      assert.equal(byId(tcgChecks, "hypervisor").status, "warn");
      assert.match(byId(tcgChecks, "hypervisor").detail, /^qemu: .*QEMU with TCG .*not a security boundary/);
    } else {
      assert.equal(kvm.status, "pass");
      assert.match(hypervisor.detail, /^qemu: .*QEMU with KVM/);
    }
    const text = await doctor(["--config", goodConfig]);
    assert.match(text.stdout, /KVM\s+\/dev\/kvm is/);
    assert.match(text.stdout, /hypervisor in use\s+qemu: /);
  });

  it("a config with an unknown key: names the key and exits non-zero", async () => {
    const bad = path.join(dir, "bad.json");
    await writeFile(bad, JSON.stringify({ hypervisr: "qemu" }));
    const text = await doctor(["--config", bad]);
    assert.equal(text.code, 1);
    assert.match(
      text.stdout,
      /FAIL\s+runtime config\s+invalid runtime config .*bad\.json: unknown key "hypervisr"/,
    );
    assert.match(text.stdout, /fix: correct .*bad\.json/);
    const json = await doctor(["--config", bad, "--json"]);
    const { ok, checks } = parse(json);
    assert.equal(ok, false);
    assert.match(byId(checks, "config").detail, /unknown key "hypervisr"/);
  });

  it("finds the cloudhv CRI runtime handler in containerd's config, or says how to add it", async () => {
    const registered = path.join(dir, "containerd-registered.toml");
    await writeFile(
      registered,
      [
        "version = 2",
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cloudhv]',
        '  runtime_type = "io.containerd.cloudhv.v1"',
        "",
      ].join("\n"),
    );
    const withHandler = parse(
      await doctor(["--config", goodConfig, "--containerd-config", registered, "--json"]),
    );
    const found = byId(withHandler.checks, "cri-runtime");
    assert.equal(found.status, "pass", found.detail);
    assert.match(found.detail, /runtimes\.cloudhv: runtime_type = "io\.containerd\.cloudhv\.v1"/);

    const plain = path.join(dir, "containerd-plain.toml");
    await writeFile(plain, "version = 2\n");
    const without = parse(await doctor(["--config", goodConfig, "--containerd-config", plain, "--json"]));
    const missing = byId(without.checks, "cri-runtime");
    assert.equal(missing.status, "fail");
    assert.match(missing.detail, /not registered/);
    assert.match(missing.fix ?? "", /runtimes\.cloudhv\] runtime_type = "io\.containerd\.cloudhv\.v1"/);
    assert.equal(without.ok, false);
  });
});
