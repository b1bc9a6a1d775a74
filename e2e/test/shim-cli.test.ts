// The shim binary's contract with containerd, without a VM: flags, version, errors, and
// `delete` when nothing listens (it starts the front and its daemon).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import { exec } from "@cloudhv/shim";
import { shimProcesses, stopShim } from "../src/leaks.js";
import { SHIM_ENTRY } from "../src/runtime-install.js";

const shim = (args: string[]) => exec([process.execPath, SHIM_ENTRY, ...args], { timeoutMs: 10_000 });

describe("containerd-shim-cloudhv-v1", () => {
  it("prints its version for -v", async () => {
    const result = await shim(["-v"]);
    assert.equal(result.code, 0);
    assert.match(result.stdout, /containerd-shim-cloudhv-v1:\n\s+Version: \d+\.\d+\.\d+/);
  });

  it("names an unknown flag", async () => {
    const result = await shim(["-namespace", "default", "-bogus", "x", "start"]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /unknown flag "-bogus"/);
    assert.equal(result.stdout, "", "nothing on stdout: containerd would take it for an address");
  });

  it("names a missing action", async () => {
    const result = await shim(["-namespace", "default", "-id", "x"]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /unknown action ""/);
  });

  it("refuses to start without knowing containerd's address", async () => {
    const env = { ...process.env };
    delete env.TTRPC_ADDRESS;
    const result = await exec([process.execPath, SHIM_ENTRY, "-namespace", "default", "-id", "x", "start"], {
      timeoutMs: 10_000,
      env,
    });
    assert.equal(result.code, 1);
    assert.match(result.stderr, /neither TTRPC_ADDRESS nor -address/);
  });

  it("delete with nothing listening starts the front and its daemon, which answers 137 for a task it does not know", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-shim-cli-"));
    const ttrpc = path.join(dir, "containerd.sock.ttrpc");
    try {
      const config = path.join(dir, "config.json");
      const state = path.join(dir, "state");
      await writeFile(
        config,
        JSON.stringify({
          hypervisor: "qemu",
          state_dir: state,
          cache_dir: path.join(dir, "cache"),
          scratch_dir: path.join(dir, "scratch"),
          log_dir: path.join(dir, "log"),
        }),
      );
      const bundle = path.join(dir, "bundle");
      await mkdir(bundle);
      // Binary on stdout: spawnSync keeps the bytes.
      const r = spawnSync(process.execPath, [SHIM_ENTRY, "-namespace", "default", "-id", "gone", "delete"], {
        env: { ...process.env, CLOUDHV_CONFIG: config, TTRPC_ADDRESS: ttrpc },
        cwd: bundle,
        timeout: 60_000,
      });
      assert.equal(r.status, 0, r.stderr.toString());
      // containerd.task.v2.DeleteResponse with exit_status (field 2) = 137.
      assert.ok(r.stdout.includes(Buffer.from([0x10, 0x89, 0x01])), r.stdout.toString("hex"));
      const shim = await shimProcesses(ttrpc);
      assert.equal(shim.fronts.length, 1, "a front was started");
      assert.equal(shim.daemons.length, 1, "behind it, a daemon");
      await stopShim(ttrpc);
      // What stays: the front's log, and the marker of a directory cloudhv created.
      const left = await readdir(state);
      assert.ok(
        left.every((f) => /^shim-[0-9a-f]{16}\.log$/.test(f) || f === ".cloudhv-created"),
        `only the log stays: ${left.join(", ")}`,
      );
    } finally {
      await stopShim(ttrpc);
      await rm(dir, { recursive: true, force: true });
    }
  });
});
