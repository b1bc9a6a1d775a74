// The shim binary's contract with containerd, without a VM: flags, version, errors.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { exec } from "@cloudhv/shim";
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
});
