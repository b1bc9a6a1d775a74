// Provisional records (state/provisional.ts): what a create in flight notes for a later daemon,
// and what that daemon undoes. A note whose daemon still runs, a damaged or hostile note, and a
// scratch file a pod record names are left alone; a dead daemon's create is undone.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import pino from "pino";
import {
  checkProvisional,
  PROVISIONAL_FORMAT,
  type ProvisionalFile,
  ProvisionalStore,
  undoProvisionalCreates,
} from "../src/state/provisional.js";
import { isRunning, type ProcessIdentity, processIdentity } from "../src/util/proc.js";

const silent = pino({ level: "silent" });

/** The identity of a process that has exited (its pid is free, or reused with another start time). */
async function deadProcess(): Promise<ProcessIdentity> {
  const child = spawn("sleep", ["30"], { stdio: "ignore" });
  const who = await processIdentity(child.pid as number);
  assert.ok(who);
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGKILL");
  await exited;
  return who;
}

describe("provisional records", () => {
  let dir: string;
  let stateDir: string;
  let scratchDir: string;
  let creating: string;
  const lines: Array<Record<string, unknown>> = [];
  const log = pino(
    { level: "info" },
    {
      write(line: string) {
        lines.push(JSON.parse(line) as Record<string, unknown>);
      },
    },
  );

  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-provisional-"));
    stateDir = path.join(dir, "state");
    scratchDir = path.join(dir, "scratch");
    creating = path.join(stateDir, "creating");
    await mkdir(scratchDir, { recursive: true });
    lines.length = 0;
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  function note(
    vmId: string,
    creator: ProcessIdentity,
    extra: Partial<ProvisionalFile> = {},
  ): ProvisionalFile {
    return {
      format: PROVISIONAL_FORMAT,
      daemon: "shim-test",
      creator,
      vmId,
      key: `k8s.io/${vmId}`,
      startedAtMs: Date.now(),
      ...extra,
    };
  }

  it("a create's notes are on disk, checked, as it goes, and gone once it finishes", async () => {
    const store = new ProvisionalStore(creating, "shim-test", silent);
    const journal = await store.begin("k8s.io-sb1", "k8s.io/sb1");
    const file = path.join(creating, "k8s.io-sb1.json");
    const read = async () => JSON.parse(await readFile(file, "utf8")) as unknown;
    const first = checkProvisional(await read());
    assert.ok(first.ok);
    assert.equal(first.file.creator.pid, process.pid, "names this daemon's process");
    await journal.note({ scratch: ["/var/lib/x/.cloudhv-scratch.ext4"] });
    await journal.note({ vmm: {} });
    await journal.note({ vmm: { process: { pid: 42, startTime: 7 } } });
    const later = checkProvisional(await read());
    assert.ok(later.ok);
    assert.deepEqual(later.file.scratch, ["/var/lib/x/.cloudhv-scratch.ext4"]);
    assert.deepEqual(later.file.vmm, { process: { pid: 42, startTime: 7 } });
    await journal.finish();
    assert.deepEqual(await readdir(creating), [], "no file (nor temp file) left");
    // A note after the end writes nothing.
    await journal.note({ scratch: ["/late"] });
    assert.deepEqual(await readdir(creating), []);
  });

  it("refuses notes of another format or naming paths and ids it never makes", () => {
    const who = { pid: 1, startTime: 1 };
    assert.ok(checkProvisional(note("k8s.io-sb1", who)).ok);
    const bad: Array<[string, unknown]> = [
      ["format", { ...note("v", who), format: 2 }],
      ["vmId", note("../../etc", who)],
      ["vmId", note("..", who)],
      ["scratch", note("v", who, { scratch: ["relative.ext4"] })],
      ["scratch", note("v", who, { scratch: ["/a/../b.ext4"] })],
      [
        "network",
        note("v", who, { network: { netnsPath: "/var/run/netns/x", tap: "tap0; rm -rf /" as "tap0_chv" } }),
      ],
      ["creator", { ...note("v", who), creator: { pid: -1, startTime: 1 } }],
      ["container", note("v", who, { container: "../../etc" })],
      ["disks", note("v", who, { container: "c1", disks: ["/dev/sda"] })],
    ];
    for (const [field, value] of bad) {
      const checked = checkProvisional(value);
      assert.equal(checked.ok, false, `${field}: ${JSON.stringify(value)}`);
      if (!checked.ok) assert.match(checked.problem, new RegExp(field), checked.problem);
    }
  });

  it("undoes a dead daemon's create: its VMM (found by its dir), scratch file, VM dir and note", async () => {
    const vmId = "k8s.io-dead";
    const vmDir = path.join(stateDir, "vm", vmId);
    await mkdir(path.join(vmDir, "vmm"), { recursive: true });
    // A "VMM" working in the VM's dir, whose pid the note never got (killed right after the spawn).
    const vmm = spawn("sleep", ["60"], { cwd: path.join(vmDir, "vmm"), stdio: "ignore" });
    const vmmId = await processIdentity(vmm.pid as number);
    assert.ok(vmmId);
    const vmmExit = new Promise((r) => vmm.once("exit", r));
    const scratch = path.join(scratchDir, `s${"a".repeat(19)}.ext4`);
    const kept = path.join(scratchDir, `s${"b".repeat(19)}.ext4`);
    const notOurs = path.join(scratchDir, "precious.ext4");
    for (const f of [scratch, kept, notOurs]) await writeFile(f, "x");
    await mkdir(creating, { recursive: true });
    const dead = await deadProcess();
    await writeFile(
      path.join(creating, `${vmId}.json`),
      JSON.stringify(note(vmId, dead, { vmm: {}, scratch: [scratch, kept, notOurs] })),
    );
    const undone = await undoProvisionalCreates(creating, {
      stateDir,
      scratchDir,
      recordedVms: new Set(),
      recordedScratch: new Set([kept]),
      log,
    });
    assert.deepEqual(undone, [vmId]);
    await vmmExit;
    assert.equal(await isRunning(vmmId), false, "the VMM was killed");
    assert.equal(await stat(scratch).catch(() => undefined), undefined, "its scratch file is gone");
    assert.ok(await stat(kept), "a scratch file a pod record names stays");
    assert.ok(await stat(notOurs), "a file not named like our scratch files stays");
    assert.equal(await stat(vmDir).catch(() => undefined), undefined, "the VM dir is gone");
    assert.deepEqual(await readdir(creating), [], "the note is gone");
    const line = lines.find((l) => l.msg === "undid a create a killed daemon left in flight");
    assert.ok(line, "the undo is logged");
    assert.equal(line.vm, vmId);
  });

  it("a dead join: only what it added goes (the pod's adopter takes back its disks), its scratch file too; the VM's dir stays", async () => {
    const vmId = "k8s.io-pod";
    const vmDir = path.join(stateDir, "vm", vmId);
    await mkdir(path.join(vmDir, "vmm"), { recursive: true });
    // The pod's VMM, adopted by the new daemon: a join's undo never touches it.
    const vmm = spawn("sleep", ["60"], { cwd: path.join(vmDir, "vmm"), stdio: "ignore" });
    const vmmExit = new Promise((r) => vmm.once("exit", r));
    try {
      const vmmId = await processIdentity(vmm.pid as number);
      assert.ok(vmmId);
      const scratch = path.join(scratchDir, `s${"e".repeat(19)}.ext4`);
      await writeFile(scratch, "x");
      await mkdir(creating, { recursive: true });
      const joinNote = note(vmId, await deadProcess(), {
        container: "app1",
        scratch: [scratch],
        disks: [`i${"1".repeat(19)}`, `s${"2".repeat(19)}`],
        guest: true,
      });
      await writeFile(path.join(creating, `${vmId}+app1.json`), JSON.stringify(joinNote));
      const asked: ProvisionalFile[] = [];
      const undone = await undoProvisionalCreates(creating, {
        stateDir,
        scratchDir,
        recordedVms: new Set([vmId]),
        recordedScratch: new Set(),
        undoJoin: async (n) => {
          asked.push(n);
          return ["unplugged disk x"];
        },
        log,
      });
      assert.deepEqual(undone, [`${vmId}+app1`]);
      assert.deepEqual(asked, [joinNote], "the pod's adopter was asked to take back the join's disks");
      assert.equal(await stat(scratch).catch(() => undefined), undefined, "the join's scratch file is gone");
      assert.equal(await isRunning(vmmId), true, "the pod's VMM runs on");
      assert.ok(await stat(vmDir), "the pod's VM dir stays");
      assert.deepEqual(await readdir(creating), []);
    } finally {
      vmm.kill("SIGKILL");
      await vmmExit;
    }
  });

  it("a dead join that started the pod's virtiofsd, its pod gone: that virtiofsd's share is ended in the pod's dir", async () => {
    const vmId = "k8s.io-gone";
    await mkdir(path.join(stateDir, "pods", vmId, "shared", "app1-0"), { recursive: true });
    await mkdir(creating, { recursive: true });
    const virtiofsd = await deadProcess();
    const joinNote = note(vmId, await deadProcess(), {
      container: "app1",
      share: { process: virtiofsd },
      binds: ["app1-0"],
    });
    await writeFile(path.join(creating, `${vmId}+app1.json`), JSON.stringify(joinNote));
    const stopped: Array<{ dir: string; pid: number; startTime: number; bound: string[] }> = [];
    const undone = await undoProvisionalCreates(creating, {
      stateDir,
      scratchDir,
      recordedVms: new Set(),
      recordedScratch: new Set(),
      // No pod of this daemon has the VM.
      undoJoin: async () => undefined,
      stopShare: async (share) => {
        stopped.push(share);
      },
      log,
    });
    assert.deepEqual(undone, [`${vmId}+app1`]);
    assert.deepEqual(stopped, [{ dir: path.join(stateDir, "pods", vmId), ...virtiofsd, bound: ["app1-0"] }]);
    assert.deepEqual(await readdir(creating), []);
  });

  it("leaves a live daemon's create, a damaged note and a hostile one alone; a recorded pod keeps its files", async () => {
    await mkdir(creating, { recursive: true });
    const live = await processIdentity(process.pid);
    assert.ok(live);
    const dead = await deadProcess();
    const liveScratch = path.join(scratchDir, `s${"c".repeat(19)}.ext4`);
    const recordedScratch = path.join(scratchDir, `s${"d".repeat(19)}.ext4`);
    for (const f of [liveScratch, recordedScratch]) await writeFile(f, "x");
    await writeFile(
      path.join(creating, "live.json"),
      JSON.stringify(note("live", live, { scratch: [liveScratch] })),
    );
    await writeFile(path.join(creating, "damaged.json"), "{ not json");
    // Named for one VM, about another: refused.
    await writeFile(path.join(creating, "other.json"), JSON.stringify(note("victim", dead)));
    await writeFile(
      path.join(creating, "hostile.json"),
      JSON.stringify({ ...note("hostile", dead), scratch: ["/etc/passwd/../shadow"] }),
    );
    await writeFile(
      path.join(creating, "recorded.json"),
      JSON.stringify(note("recorded", dead, { scratch: [recordedScratch] })),
    );
    const undone = await undoProvisionalCreates(creating, {
      stateDir,
      scratchDir,
      recordedVms: new Set(["recorded"]),
      recordedScratch: new Set(),
      log,
    });
    assert.deepEqual(undone, []);
    assert.deepEqual((await readdir(creating)).sort(), [
      "damaged.json",
      "hostile.json",
      "live.json",
      "other.json",
    ]);
    assert.ok(await stat(liveScratch), "a live daemon's create keeps its scratch file");
    assert.ok(await stat(recordedScratch), "a pod whose record was written keeps its scratch file");
    const refused = lines
      .filter((l) => typeof l.msg === "string" && /left alone/.test(l.msg))
      .map((l) => l.file);
    assert.deepEqual(
      refused.map((f) => path.basename(String(f))).sort(),
      ["damaged.json", "hostile.json", "other.json"],
      "each refused note is logged by name",
    );
  });
});
