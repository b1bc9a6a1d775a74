// A container's writable disk through CRI on the local harness: bounded by scratch_size (ENOSPC
// in the guest, the host file never larger), counted in containerd's CRI stats as the writable
// layer (what kubelet's ephemeral-storage eviction reads), and the node's scratch_budget refusing
// a create with a message that names it.
import assert from "node:assert/strict";
import { mkdir, readdir, stat, statfs } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { exec } from "@cloudhv/shim";
import type { CriClient, PodSandboxConfig } from "../src/cri/client.js";
import { HANDLER, type Harness, startHarness } from "../src/harness.js";
import { hypervisorSuites } from "../src/hypervisors.js";
import { podVmIds, vmmsLeft } from "../src/leaks.js";

const IMAGE = "docker.io/cloudhv-test/busybox:scratch";
const MiB = 1024 ** 2;
const LIMIT = 64 * MiB;
// One app container's disk fits; a second one does not (the sandbox is the guest agent's
// namespace holder: no disk of its own).
const BUDGET = 100 * MiB;

/** The scratch files of this harness's containers (in their snapshots' upperdirs). */
async function scratchFiles(dir: string): Promise<string[]> {
  const found = await exec(["find", dir, "-name", ".cloudhv-scratch.ext4", "-type", "f"]);
  return found.stdout.split("\n").filter(Boolean);
}

for (const hv of await hypervisorSuites())
  describe(`scratch disk limits through CRI on ${hv.name}`, { skip: hv.skip ?? false }, () => {
    let harness: Harness;
    let cri: CriClient;
    let podId: string;
    let sandboxConfig: PodSandboxConfig;
    let vmIds: string[] = [];

    before(async () => {
      harness = await startHarness({
        images: [IMAGE],
        runtimeConfig: { ...hv.runtimeConfig, scratch_size: `${LIMIT}`, scratch_budget: `${BUDGET}` },
      });
      cri = harness.cri;
      const logDirectory = path.join(harness.dir, "pods", "scratch");
      await mkdir(logDirectory, { recursive: true });
      sandboxConfig = {
        metadata: { name: "scratch", uid: "uid-scratch", namespace: "default", attempt: 0 },
        hostname: "scratch",
        logDirectory,
      };
      podId = await cri.runPodSandbox(sandboxConfig, HANDLER);
      // Its VM, named while it runs: with the warm pool on (CLOUDHV_E2E_POOL), maybe a pool VM.
      vmIds = await podVmIds(harness.runtime.stateDir, [podId]);
    });

    after(async () => {
      await harness?.stop();
    });

    const create = (name: string) =>
      cri.createContainer(
        podId,
        {
          metadata: { name },
          image: { image: IMAGE },
          command: ["sleep", "600"],
          logPath: `${name}.log`,
        },
        sandboxConfig,
      );

    let writer = "";
    it("a container writing past scratch_size gets ENOSPC; the host file holds no more than the limit", async (t) => {
      writer = await create("writer");
      await cri.startContainer(writer);
      const files = await scratchFiles(harness.dir);
      // The writer's, in its writable layer (the sandbox has none: config sandbox_holder).
      assert.equal(files.length, 1, files.join(", "));
      const sizes = await Promise.all(files.map(async (f) => (await stat(f)).size));
      assert.deepEqual(sizes, [LIMIT]);
      const file = files[sizes.indexOf(LIMIT)] as string;
      const freeBefore = await statfs(path.dirname(file));
      const started = performance.now();
      const dd = await cri.execSync(
        writer,
        ["sh", "-c", "dd if=/dev/zero of=/fill bs=1M count=200 conv=fsync; echo dd-exit=$?; sync"],
        300,
      );
      t.diagnostic(`filling the disk: ${((performance.now() - started) / 1000).toFixed(1)} s`);
      assert.match(dd.stdout + dd.stderr, /No space left on device/);
      assert.match(dd.stdout, /dd-exit=1/);
      const filled = await cri.execSync(writer, ["sh", "-c", "ls -l /fill"]);
      const written = Number(filled.stdout.trim().split(/\s+/)[4]);
      assert.ok(written > LIMIT / 2 && written < LIMIT, `the guest wrote ${written} bytes`);
      // On the host: the file's blocks never pass its size, whatever the guest writes.
      const after = await stat(file);
      assert.equal(after.size, LIMIT);
      assert.ok(after.blocks * 512 <= LIMIT, `allocated ${after.blocks * 512} bytes`);
      assert.ok(after.blocks * 512 >= written, `allocated ${after.blocks * 512} < written ${written}`);
      // The filesystem's free space, for the record (others share it; the file is the bound).
      const freeAfter = await statfs(path.dirname(file));
      t.diagnostic(
        `host filesystem free space dropped by ${((freeBefore.bfree - freeAfter.bfree) * freeAfter.bsize) / MiB} MiB; file allocation ${(after.blocks * 512) / MiB} MiB (limit ${LIMIT / MiB} MiB)`,
      );
    });

    it("CRI ContainerStats reports the guest's writes as the writable layer's used bytes", async (t) => {
      assert.ok(writer, "needs the container of the test above");
      // containerd measures snapshots every 10 s (its stats_collect_period).
      const started = Date.now();
      let used: number | undefined;
      while (Date.now() - started < 60_000) {
        used = await cri.writableLayerBytes(writer);
        if (used !== undefined && used >= LIMIT / 2) break;
        await new Promise((r) => setTimeout(r, 1000));
      }
      t.diagnostic(`writable layer used_bytes ${used} after ${((Date.now() - started) / 1000).toFixed(1)} s`);
      assert.ok(used !== undefined && used >= LIMIT / 2, `used_bytes ${used}`);
      assert.ok(used <= LIMIT + 1 * MiB, `used_bytes ${used} beyond the limit`);
    });

    it("the node's scratch_budget refuses the next container, naming the budget and its key", async () => {
      const id = await create("over");
      // containerd creates the task (and so the disk) at StartContainer.
      await assert.rejects(
        cri.startContainer(id),
        /scratch disk of 64 MiB \(67108864 bytes\) for container [0-9a-f]{64} \(config scratch_size\) does not fit in the node's scratch budget: scratch_budget is 100 MiB \(104857600 bytes\) and 64 MiB is held by 1 other scratch disk\(s\); raise scratch_budget or lower scratch_size/,
      );
      await cri.removeContainer(id);
      // The refused create left no disk and no ledger entry.
      assert.equal((await scratchFiles(harness.dir)).length, 1);
      assert.equal((await readdir(path.join(harness.runtime.stateDir, "scratch-budget"))).length, 1);
    });

    it("a container removed and the next created at once gets the budget and disks its predecessor held", async () => {
      assert.ok(writer, "needs the container of the tests above");
      // The delete replies before the old disks leave the VM (Pod.retire): the next create,
      // which the budget fits only without them, waits for them rather than being refused.
      await cri.stopContainer(writer, 2);
      await cri.removeContainer(writer);
      const next = await create("next");
      await cri.startContainer(next);
      assert.equal(
        (await cri.execSync(next, ["sh", "-c", "test ! -e /fill && echo fresh"])).stdout.trim(),
        "fresh",
      );
      const files = await scratchFiles(harness.dir);
      assert.equal(files.length, 1, files.join(", "));
      assert.equal((await readdir(path.join(harness.runtime.stateDir, "scratch-budget"))).length, 1);
      writer = next;
    });

    it("removing the containers and the pod leaves no scratch file, ledger entry or VM", async () => {
      await cri.stopContainer(writer, 2);
      await cri.removeContainer(writer);
      await cri.stopPodSandbox(podId);
      await cri.removePodSandbox(podId);
      assert.deepEqual(await scratchFiles(harness.dir), []);
      assert.deepEqual(await readdir(path.join(harness.runtime.stateDir, "scratch-budget")), []);
      assert.deepEqual(await vmmsLeft(harness.runtime.stateDir, vmIds), []);
    });
  });
