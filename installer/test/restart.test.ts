// How the installer restarts containerd on a node: nsenter into PID 1's namespaces and
// systemctl, picking the unit that is active (k3s vs k3s-agent, rke2-server vs rke2-agent).
// These machines have no systemd, so a recording `nsenter` stands in on PATH: this checks
// the exact command lines and how a failed restart reads. The restart itself is exercised
// against a real containerd in restart-rollback.test.ts.
import assert from "node:assert/strict";
import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { systemdRestarter } from "../src/restart.js";

describe("systemd restarter", () => {
  let dir: string;
  let savedPath: string | undefined;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "chv-restart-"));
    // Records its argv; `systemctl is-active --quiet X` succeeds only for $ACTIVE_UNIT;
    // `systemctl restart X` fails when X is $FAILING_UNIT.
    await writeFile(
      path.join(dir, "nsenter"),
      `#!/bin/sh
echo "$*" >> "${dir}/calls"
case "$*" in
  *"systemctl is-active --quiet $ACTIVE_UNIT") exit 0 ;;
  *"systemctl is-active"*) exit 3 ;;
  *"systemctl restart $FAILING_UNIT") echo "Job for $FAILING_UNIT.service failed because the control process exited with error code." >&2; exit 1 ;;
esac
exit 0
`,
    );
    await chmod(path.join(dir, "nsenter"), 0o755);
    savedPath = process.env.PATH;
    process.env.PATH = `${dir}:${savedPath}`;
  });
  after(async () => {
    process.env.PATH = savedPath;
    delete process.env.ACTIVE_UNIT;
    delete process.env.FAILING_UNIT;
    await rm(dir, { recursive: true, force: true });
  });

  async function calls(): Promise<string[]> {
    const text = await readFile(path.join(dir, "calls"), "utf8").catch(() => "");
    await rm(path.join(dir, "calls"), { force: true });
    return text.trim().split("\n").filter(Boolean);
  }

  it("restarts the active one of k3s / k3s-agent in the host's namespaces", async () => {
    process.env.ACTIVE_UNIT = "k3s-agent";
    const r = await systemdRestarter(["k3s", "k3s-agent"]);
    assert.equal(r.describe, "systemctl restart k3s-agent (in the host's namespaces)");
    await r.restart();
    assert.deepEqual(await calls(), [
      "--target 1 --mount --uts --ipc --net --pid -- systemctl is-active --quiet k3s",
      "--target 1 --mount --uts --ipc --net --pid -- systemctl is-active --quiet k3s-agent",
      "--target 1 --mount --uts --ipc --net --pid -- systemctl restart k3s-agent",
    ]);
  });

  it("falls back to the first unit when none is active, and says why a restart failed", async () => {
    process.env.ACTIVE_UNIT = "none";
    process.env.FAILING_UNIT = "containerd";
    const r = await systemdRestarter(["containerd"]);
    await assert.rejects(
      r.restart(),
      /systemctl restart containerd failed: Job for containerd\.service failed/,
    );
    assert.deepEqual(
      (await calls()).at(-1),
      "--target 1 --mount --uts --ipc --net --pid -- systemctl restart containerd",
    );
  });
});
