// The harness as a person uses it: `up` in the background, `env`, ctr against it, `down`.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import { exec } from "@cloudhv/shim";
import { REPO_ROOT } from "../src/artifacts.js";
import { processesMatching } from "../src/leaks.js";

const CLI = path.join(REPO_ROOT, "e2e/dist/src/bin/harness.js");
const CRI_CLI = path.join(REPO_ROOT, "e2e/dist/src/bin/cri.js");

describe("cloudhv-harness up / env / down, and cloudhv-cri against it", () => {
  it("serves ctr with the cloudhv runtime and leaves nothing after down", async () => {
    const tmp = await mkdtemp(path.join(os.tmpdir(), "cloudhv-harness-cli-"));
    const state = path.join(tmp, "state.json");
    const up = spawn(process.execPath, [CLI, "--state", state, "up"], { stdio: "ignore" });
    try {
      const deadline = Date.now() + 120_000;
      while (!existsSync(state)) {
        assert.ok(Date.now() < deadline && up.exitCode === null, "harness did not come up");
        await new Promise((r) => setTimeout(r, 200));
      }
      const env = await exec([process.execPath, CLI, "--state", state, "env"]);
      const address = /CONTAINERD_ADDRESS=(\S+)/.exec(env.stdout)?.[1] ?? "";
      assert.ok(existsSync(address), env.stdout);
      const run = await exec(
        [
          "ctr",
          "--address",
          address,
          "-n",
          "k8s.io",
          "run",
          "--rm",
          "--runtime",
          "io.containerd.cloudhv.v1",
          "docker.io/cloudhv-test/busybox:1",
          "h1",
          "cat",
          "/etc/cloudhv-image",
        ],
        { timeoutMs: 120_000 },
      );
      assert.equal(run.stdout.trim(), "docker.io/cloudhv-test/busybox:1", run.stderr);
      // The crictl-like CLI against the same harness, with crictl-style JSON configs.
      const cri = (...args: string[]) =>
        exec([process.execPath, CRI_CLI, "--address", address, ...args], { timeoutMs: 180_000 });
      const podFile = path.join(tmp, "pod.json");
      const ctrFile = path.join(tmp, "container.json");
      await writeFile(
        podFile,
        JSON.stringify({
          metadata: { name: "clipod", uid: "clipod-uid", namespace: "default" },
          log_directory: tmp,
          // A pod network (cloudhv refuses hostNetwork); sysctl keys must reach CRI as written.
          linux: { sysctls: { "kernel.shm_rmid_forced": "1" } },
        }),
      );
      await writeFile(
        ctrFile,
        JSON.stringify({
          metadata: { name: "c1" },
          image: { image: "docker.io/cloudhv-test/busybox:1" },
          command: ["sh", "-c", "echo from-cli-pod; sleep 600"],
          log_path: "c1.log",
        }),
      );
      const pod = (await cri("runp", podFile)).stdout.trim();
      assert.match(pod, /^[0-9a-f]{64}$/);
      const id = (await cri("create", pod, ctrFile, podFile)).stdout.trim();
      assert.equal((await cri("start", id)).code, 0);
      const execd = await cri(
        "exec",
        id,
        "sh",
        "-c",
        "cat /proc/sys/kernel/shm_rmid_forced; echo out; exit 3",
      );
      assert.equal(execd.stdout, "1\nout\n");
      assert.equal(execd.code, 3);
      assert.match((await cri("logs", id)).stdout, /^from-cli-pod$/m);
      assert.match((await cri("pods")).stdout, new RegExp(`^${pod}\\tSANDBOX_READY\\tcloudhv$`, "m"));
      assert.equal((await cri("stopp", pod)).code, 0);
      assert.equal((await cri("rmp", pod)).code, 0);
      const down = await exec([process.execPath, CLI, "--state", state, "down"], { timeoutMs: 90_000 });
      assert.equal(down.code, 0, down.stderr);
      assert.equal(existsSync(state), false);
      assert.equal(existsSync(address), false, "the harness directory is gone");
      assert.deepEqual(await processesMatching(address), [], "containerd and the shim daemon are gone");
      const again = await exec([process.execPath, CLI, "--state", state, "env"]);
      assert.equal(again.code, 1);
      assert.match(again.stderr, /no harness is running/);
    } finally {
      if (up.exitCode === null) up.kill("SIGTERM");
      await rm(tmp, { recursive: true, force: true });
    }
  });
});
