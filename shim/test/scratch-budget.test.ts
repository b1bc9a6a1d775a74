// Scratch disk sizes (config, annotation) and the node's scratch budget ledger: no root, no VM.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { parseByteQuantity, parseConfig } from "../src/config.js";
import { ShimError } from "../src/errors.js";
import { SCRATCH_SIZE_ANNOTATION, scratchSize } from "../src/pod/scratch-size.js";
import { vmSize } from "../src/pod/sizing.js";
import { ScratchBudget } from "../src/rootfs/scratch-budget.js";

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const app = { kind: "container", sandboxId: "s1" } as const;

describe("scratch disk size", () => {
  it("reads byte quantities as Kubernetes writes them, and nothing else", () => {
    assert.equal(parseByteQuantity("10Gi"), 10 * GiB);
    assert.equal(parseByteQuantity("500M"), 500e6);
    assert.equal(parseByteQuantity(" 4096 "), 4096);
    assert.equal(parseByteQuantity(1024), 1024);
    for (const bad of ["", "1.5Gi", "-1", "10GB", "Gi", "1e9", "99999999999999999Ti", -5, 1.5, null])
      assert.equal(parseByteQuantity(bad), undefined, String(bad));
  });

  it("takes scratch_size from the config (quantity or bytes), or its old name, or 10 GiB", () => {
    const size = (doc: Record<string, unknown>) => scratchSize({}, parseConfig(doc, "t"), app);
    assert.deepEqual(size({}), { bytes: 10 * GiB, source: "default scratch_size" });
    assert.deepEqual(size({ scratch_size: "2Gi" }), { bytes: 2 * GiB, source: "config scratch_size" });
    // Whole 4 KiB blocks, rounded down: the disk never exceeds what was asked.
    assert.equal(size({ scratch_size: "100M" }).bytes, 99_999_744);
    assert.deepEqual(size({ scratch_disk_bytes: 128 * MiB }), {
      bytes: 128 * MiB,
      source: "config scratch_disk_bytes",
    });
    assert.throws(
      () => parseConfig({ scratch_size: "1Gi", scratch_disk_bytes: GiB }, "cfg.json"),
      /"scratch_disk_bytes": set scratch_size only/,
    );
    assert.throws(
      () => parseConfig({ scratch_size: "10 GB" }, "cfg.json"),
      /scratch_size must be a byte count/,
    );
    assert.throws(() => parseConfig({ scratch_size: "1Mi" }, "cfg.json"), /of at least 67108864/);
    assert.equal(parseConfig({ scratch_budget: "40Gi" }, "t").scratch_budget, 40 * GiB);
    assert.equal(parseConfig({}, "t").scratch_budget, 0);
  });

  it("gives a CRI sandbox (pause) the smallest disk", () => {
    const size = scratchSize({}, parseConfig({}, "t"), { kind: "sandbox", sandboxId: "s1" });
    assert.equal(size.bytes, 16 * MiB);
  });

  it("takes the annotation only when enable_annotations lists scratch_size, within the budget", () => {
    const ann = { [SCRATCH_SIZE_ANNOTATION]: "3Gi" };
    assert.throws(
      () => scratchSize(ann, parseConfig({}, "t"), app),
      (err: unknown) =>
        err instanceof ShimError &&
        err.kind === "InvalidArgument" &&
        /annotation io\.cloudhv\.config\.hypervisor\.scratch_size is not enabled: the runtime config's enable_annotations does not list "scratch_size"/.test(
          err.message,
        ),
    );
    const enabled = parseConfig({ enable_annotations: ["scratch_size"], scratch_budget: "4Gi" }, "t");
    assert.deepEqual(scratchSize(ann, enabled, app), {
      bytes: 3 * GiB,
      source: `annotation ${SCRATCH_SIZE_ANNOTATION}`,
    });
    assert.throws(
      () => scratchSize({ [SCRATCH_SIZE_ANNOTATION]: "5Gi" }, enabled, app),
      /scratch_size="5Gi" must be a byte quantity \(like "2Gi"\) from 16777216 bytes to the node's scratch_budget of 4294967296 bytes/,
    );
    // Untrusted text is cut before it goes into the message.
    assert.throws(
      () => scratchSize({ [SCRATCH_SIZE_ANNOTATION]: "x".repeat(10_000) }, enabled, app),
      (err: unknown) => err instanceof Error && err.message.length < 400,
    );
    // The sandbox's VM sizing knows the key (it is not an unknown hypervisor annotation).
    assert.equal(vmSize(ann, enabled).vcpus, 1);
  });
});

describe("the node's scratch budget", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-budget-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("holds disks up to the budget, refuses the next one by name, and frees on release", async () => {
    const ledger = path.join(dir, "a");
    const budget = new ScratchBudget(ledger, 10 * GiB);
    const one = await budget.reserve(4 * GiB, "container c1 (config scratch_size)");
    const two = await budget.reserve(4 * GiB, "container c2 (config scratch_size)");
    await assert.rejects(
      budget.reserve(4 * GiB, "container c3 (config scratch_size)"),
      (err: unknown) =>
        err instanceof ShimError &&
        err.kind === "ResourceExhausted" &&
        err.message ===
          "scratch disk of 4 GiB (4294967296 bytes) for container c3 (config scratch_size) does not fit in the node's scratch budget: " +
            "scratch_budget is 10 GiB (10737418240 bytes) and 8 GiB is held by 2 other scratch disk(s); " +
            "raise scratch_budget or lower scratch_size in the runtime config, or run fewer containers on this node",
    );
    // The refused create left no entry behind.
    assert.equal((await readdir(ledger)).length, 2);
    assert.deepEqual(await budget.held(), { total: 8 * GiB, disks: 2 });
    await one.release();
    await one.release();
    const three = await budget.reserve(6 * GiB, "container c3");
    await two.release();
    await three.release();
    assert.deepEqual(await readdir(ledger), []);
  });

  it("counts other daemons sharing the ledger, and drops the entries of a daemon that is gone", async () => {
    const ledger = path.join(dir, "b");
    const mine = new ScratchBudget(ledger, 10 * GiB);
    await mine.reserve(GiB, "container c0");
    // Another daemon (a live process) holds 6 GiB; a dead one held 8 GiB.
    const other = spawn("sleep", ["60"], { stdio: "ignore" });
    try {
      const stat = await readFile(`/proc/${other.pid}/stat`, "utf8");
      const start = stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
      await writeFile(path.join(ledger, `${other.pid}.${start}.0.${6 * GiB}`), "");
      await writeFile(path.join(ledger, `${other.pid}.1.0.${8 * GiB}`), "");
      await writeFile(path.join(ledger, "not-an-entry"), "");
      await assert.rejects(
        mine.reserve(4 * GiB, "container c1"),
        /7 GiB is held by 2 other scratch disk\(s\)/,
      );
      const fits = await mine.reserve(3 * GiB, "container c1");
      assert.equal((await readdir(ledger)).filter((n) => n.startsWith(`${other.pid}.1.`)).length, 0);
      await fits.release();
    } finally {
      other.kill("SIGKILL");
      await new Promise((r) => other.once("exit", r));
    }
    // The other daemon died: its disks no longer count.
    assert.deepEqual(await mine.held(), { total: GiB, disks: 1 });
  });

  it("counts a disk taken over from a dead daemon without refusing it, and refuses the next create", async () => {
    const ledger = path.join(dir, "d");
    const budget = new ScratchBudget(ledger, 2 * GiB);
    const adopted = await budget.adopt(3 * GiB);
    assert.deepEqual(await budget.held(), { total: 3 * GiB, disks: 1 });
    await assert.rejects(budget.reserve(GiB, "container c9"), /3 GiB is held by 1 other scratch disk/);
    await adopted.release();
    await (await budget.reserve(GiB, "container c9")).release();
    assert.deepEqual(await readdir(ledger), []);
  });

  it("refuses a disk bigger than the whole budget without touching the ledger; 0 means no budget", async () => {
    const ledger = path.join(dir, "c");
    await assert.rejects(
      new ScratchBudget(ledger, GiB).reserve(2 * GiB, "container big"),
      /scratch disk of 2 GiB .* for container big does not fit in the node's scratch budget: scratch_budget is 1 GiB/,
    );
    const free = await new ScratchBudget(ledger, 0).reserve(1000 * GiB, "container any");
    await free.release();
    await assert.rejects(readdir(ledger), { code: "ENOENT" });
  });
});
