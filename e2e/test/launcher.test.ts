// The compiled launcher as containerd runs it on a node: the harness's containerd runs pods
// through it, and with the daemon up it answers `start` (a served namespace, a new one through
// Admin.Listen) and `delete` itself — no Node.js fallback (CLOUDHV_LAUNCHER_TRACE would say) —
// with exactly what the Node.js shim answers.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, readlink } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { HANDLER, type Harness, startHarness } from "../src/harness.js";
import { LAUNCHER_ENTRY, SHIM_ENTRY } from "../src/runtime-install.js";

interface Run {
  code: number;
  stdout: Buffer;
  stderr: string;
}

function run(argv: string[], cwd: string, env: NodeJS.ProcessEnv): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      argv[0] as string,
      argv.slice(1),
      { cwd, env, encoding: "buffer", timeout: 60_000 },
      (err, stdout, stderr) => {
        const code = err ? Number((err as { code?: unknown }).code ?? 1) : 0;
        resolve({ code, stdout, stderr: stderr.toString() });
      },
    );
  });
}

describe("the compiled launcher in front of a running daemon", () => {
  let harness: Harness;
  let pod: string;

  before(async () => {
    harness = await startHarness();
    const logDirectory = path.join(harness.dir, "pods", "l1");
    await mkdir(logDirectory, { recursive: true });
    pod = await harness.cri.runPodSandbox(
      {
        metadata: { name: "l1", uid: "uid-l1", namespace: "default", attempt: 0 },
        hostname: "l1",
        logDirectory,
      },
      HANDLER,
    );
  });
  after(async () => {
    if (pod) {
      await harness.cri.stopPodSandbox(pod).catch(() => {});
      await harness.cri.removePodSandbox(pod).catch(() => {});
    }
    await harness?.stop();
  });

  it("is what containerd runs, and answers start and delete itself with the Node.js shim's answers", async () => {
    const shimLink = path.join(harness.runtime.dir, "bin", "containerd-shim-cloudhv-v1");
    assert.equal(await readlink(shimLink), LAUNCHER_ENTRY, "containerd's shim is the launcher");
    const env = {
      ...harness.runtime.env,
      TTRPC_ADDRESS: harness.containerd.ttrpcAddress,
      CLOUDHV_LAUNCHER_TRACE: "1",
    };
    const args = (ns: string, action: string) => [
      "-namespace",
      ns,
      "-address",
      harness.containerd.address,
      "-publish-binary",
      "containerd",
      "-id",
      "l-task",
      action,
    ];
    // k8s.io is served (the pod's namespace); "launcher-ns" is not yet: Admin.Listen opens it.
    for (const ns of ["k8s.io", "launcher-ns"]) {
      const mine = await mkdtemp(path.join(harness.dir, "lb-"));
      const ref = await mkdtemp(path.join(harness.dir, "nb-"));
      const fast = await run([shimLink, ...args(ns, "start")], mine, env);
      assert.equal(fast.code, 0, fast.stderr);
      assert.equal(fast.stderr, "", `${ns}: the launcher answered itself (no fallback)`);
      const node = await run([process.execPath, SHIM_ENTRY, ...args(ns, "start")], ref, env);
      assert.equal(node.code, 0, node.stderr);
      assert.equal(fast.stdout.toString(), node.stdout.toString(), `${ns}: the same address`);
      assert.match(fast.stdout.toString(), /^unix:\/\/\//);
      assert.equal(await readFile(path.join(mine, "address"), "utf8"), fast.stdout.toString());

      // A task the daemon does not know: "nothing left", as the Node.js shim says it.
      const del = await run([shimLink, ...args(ns, "delete")], mine, env);
      assert.equal(del.code, 0, del.stderr);
      assert.equal(del.stderr, "", `${ns}: delete answered by the launcher`);
      const nodeDel = await run([process.execPath, SHIM_ENTRY, ...args(ns, "delete")], ref, env);
      assert.equal(nodeDel.code, 0, nodeDel.stderr);
      // Both: pid 0 (08 00), exit status 137 (10 89 01), then the exit time (which may differ).
      assert.deepEqual([...del.stdout.subarray(0, 5)], [0x08, 0x00, 0x10, 0x89, 0x01]);
      assert.deepEqual([...nodeDel.stdout.subarray(0, 5)], [0x08, 0x00, 0x10, 0x89, 0x01]);
    }
  });
});
