// A pod's mount namespace is kept by binding its file (volumes/mount-namespace.ts). On a kernel
// that numbers namespaces per CPU the bind is refused on some CPUs; it must still succeed.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { exec } from "../src/util/exec.js";
import { parseCpuList } from "../src/volumes/mount-namespace.js";

const probe = fileURLToPath(new URL("./support/mount-namespace-probe.js", import.meta.url));

describe("the pod's mount namespace", () => {
  it("reads the kernel's CPU lists", () => {
    assert.deepEqual(parseCpuList("0"), [0]);
    assert.deepEqual(parseCpuList("0-3,8,10-11\n"), [0, 1, 2, 3, 8, 10, 11]);
    assert.throws(() => parseCpuList("0-"), /not a CPU list/);
    assert.throws(() => parseCpuList("a"), /not a CPU list/);
  });

  const why = process.getuid?.() !== 0 ? "needs root" : os.cpus().length < 2 ? "needs two CPUs" : undefined;
  it("is bound whichever CPU the daemon's own namespace was made on", { skip: why }, async (t) => {
    const cpus = os.cpus().map((_, i) => i);
    for (const outer of cpus) {
      const dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-mntns-"));
      try {
        const r = await exec(
          ["taskset", "--cpu-list", String(outer), "unshare", "--mount", "--propagation", "private"].concat([
            "taskset",
            "--cpu-list",
            `0-${cpus.length - 1}`,
            process.execPath,
            probe,
            dir,
          ]),
          { timeoutMs: 60_000 },
        );
        assert.equal(r.code, 0, r.stderr);
        const got = JSON.parse(r.stdout.trim().split("\n").at(-1) as string) as {
          refused?: number;
          bound: number;
          error?: string;
        };
        if (got.refused === undefined) continue;
        t.diagnostic(`namespace made on CPU ${outer}: a plain bind is refused on CPU ${got.refused}`);
        assert.equal(got.error, undefined);
        assert.equal(got.bound, 5);
        return;
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    }
    t.skip("this kernel numbers namespaces in the order they are made: no CPU refuses the bind");
  });
});
