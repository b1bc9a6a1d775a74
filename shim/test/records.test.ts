// Pod records (state/records.ts): what a restarted daemon reads to take over its pods. Only its
// own identity's records, only in its format; a damaged file is left alone, never trusted.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, readdir, readFile, rm, utimes, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import pino from "pino";
import { type PodRecord, RecordStore, type TaskRecord } from "../src/state/records.js";
import { sweepStaleDiskLinks, sweepStaleVmDirs } from "../src/state/sweep.js";
import { adoptedProcess, isRunning, probeProcess, processIdentity } from "../src/util/proc.js";

const silent = pino({ level: "silent" });

function podRecord(vmId: string): PodRecord {
  return {
    id: "sb1",
    key: "k8s.io/sb1",
    vmId,
    sandbox: true,
    stateDir: `/run/cloudhv/vm/${vmId}`,
    size: { vcpus: 1, maxVcpus: 1, memoryMb: 256, sources: { vcpus: "config" } },
    driver: "qemu",
    vm: { pid: 10, startTime: 5, uid: 2000000001, gid: 2000000000, ports: [], fsDevices: [] },
    containment: { qos: "Burstable" },
    containerScores: [["c1", 900]],
    members: [
      {
        id: "sb1",
        pid: 1,
        ownsPod: true,
        rootfs: {
          disks: [{ path: "/x.erofs", serial: "i1", readOnly: true }],
          rootfsSerial: "i1",
          scratchSerial: "s1",
          imageKey: "a".repeat(64),
          scratchPath: "/s.ext4",
          scratchBytes: 1024,
        },
        devices: [],
        volumes: { copied: [], sharedDirs: [], shared: [] },
      },
    ],
  };
}

const task: TaskRecord = {
  namespace: "k8s.io",
  id: "sb1",
  bundle: "/b",
  init: {
    execId: "",
    io: { stdin: "", stdout: "/o", stderr: "/e", terminal: false },
    pid: 1,
    state: "running",
  },
  execs: [],
};

describe("pod records for a restarted daemon", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "records-"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("round-trips a pod and its tasks, replaced atomically, removed on request", async () => {
    const store = new RecordStore(dir, "shim-aaaa", silent);
    await store.save("vm1", async () => ({ pod: podRecord("vm1"), tasks: [task] }));
    await store.save("vm1", async () => ({ pod: { ...podRecord("vm1"), oomScoreAdj: 500 }, tasks: [task] }));
    const [loaded, ...rest] = await store.load();
    assert.equal(rest.length, 0);
    assert.equal(loaded?.pod.oomScoreAdj, 500);
    assert.deepEqual(loaded?.tasks, [task]);
    assert.deepEqual(await readdir(dir), ["vm1.json"], "no temporary file left");
    await store.remove("vm1");
    assert.deepEqual(await store.load(), []);
  });

  it("skips another daemon's records and leaves a damaged or foreign-format one alone", async () => {
    const mine = new RecordStore(dir, "shim-aaaa", silent);
    const theirs = new RecordStore(dir, "shim-bbbb", silent);
    await theirs.save("vm2", async () => ({ pod: podRecord("vm2"), tasks: [] }));
    await writeFile(path.join(dir, "vm3.json"), "{not json");
    await writeFile(
      path.join(dir, "vm4.json"),
      JSON.stringify({ format: 99, daemon: "shim-aaaa", pod: podRecord("vm4"), tasks: [] }),
    );
    const bad = { ...podRecord("vm5"), members: [{ id: 5 }] };
    await writeFile(
      path.join(dir, "vm5.json"),
      JSON.stringify({ format: 1, daemon: "shim-aaaa", pod: bad, tasks: [] }),
    );
    assert.deepEqual(await mine.load(), []);
    assert.equal((await theirs.load()).length, 1);
    assert.equal((await readdir(dir)).length, 4, "nothing deleted");
  });

  it("a build that cannot record the pod removes its old record", async () => {
    const store = new RecordStore(dir, "shim-aaaa", silent);
    await store.save("vm1", async () => ({ pod: podRecord("vm1"), tasks: [] }));
    await store.save("vm1", async () => undefined);
    assert.deepEqual(await readdir(dir), []);
  });
});

describe("processes named by pid and start time", () => {
  it("knows this process, and not a pid with another start time", async () => {
    const me = await processIdentity(process.pid);
    assert.ok(me);
    assert.equal(await isRunning(me), true);
    assert.equal(await isRunning({ pid: process.pid, startTime: me.startTime + 1 }), false);
  });

  it("an adopted process whose pid was reused is gone and is never signalled", async () => {
    const me = await processIdentity(process.pid);
    assert.ok(me);
    const impostor = adoptedProcess({ pid: process.pid, startTime: me.startTime + 1 });
    impostor.kill("SIGKILL"); // must not reach this very process
    await impostor.exited;
    assert.equal(impostor.hasExited, true);
  });

  it("a failed /proc read (EMFILE) is retried, not taken for an exit; ENOENT is an exit", async () => {
    const me = await processIdentity(process.pid);
    assert.ok(me);
    const real = await readFile(`/proc/${process.pid}/stat`, "utf8");
    const errno = (code: string) => Object.assign(new Error(code), { code });
    // Two transient failures, then the real stat (alive), then the process is gone.
    const answers: (string | Error)[] = [errno("EMFILE"), errno("EACCES"), real, errno("ENOENT")];
    let reads = 0;
    const watched = adoptedProcess(me, async () => {
      const answer = answers[Math.min(reads++, answers.length - 1)] ?? "";
      if (answer instanceof Error) throw answer;
      return answer;
    });
    // The watcher's poll timer does not hold the event loop open; this test must.
    const hold = setInterval(() => undefined, 1000);
    await watched.exited.finally(() => clearInterval(hold));
    assert.equal(reads, 4, "exit seen only at the ENOENT read");
    assert.equal(await probeProcess(1, async () => Promise.reject(errno("EMFILE"))), "unknown");
    assert.equal(await probeProcess(1, async () => Promise.reject(errno("ESRCH"))), "gone");
  });
});

describe("sweeping VM directories no pod owns", () => {
  it("removes only old, unrecorded directories that no process works in", async () => {
    const vmDir = await mkdtemp(path.join(os.tmpdir(), "sweep-"));
    const old = Date.now() / 1000 - 600;
    for (const name of ["stale", "recorded", "fresh", "busy"]) {
      await mkdir(path.join(vmDir, name, "vmm"), { recursive: true });
      if (name !== "fresh") await utimes(path.join(vmDir, name), old, old);
    }
    // A VMM works in its VM's vmm/ directory.
    const vmm = spawn("sleep", ["30"], { cwd: path.join(vmDir, "busy", "vmm") });
    try {
      await new Promise((r) => vmm.once("spawn", r));
      const removed = await sweepStaleVmDirs(vmDir, new Set(["recorded"]), silent);
      assert.deepEqual(removed, ["stale"]);
      assert.deepEqual((await readdir(vmDir)).sort(), ["busy", "fresh", "recorded"]);
    } finally {
      vmm.kill();
      await rm(vmDir, { recursive: true, force: true });
    }
  });
});

describe("sweeping the hard-linked disks of VMs that are gone", () => {
  it("removes an old links dir whose VM dir is gone, keeps a live VM's and a fresh one", async () => {
    const root = await mkdtemp(path.join(os.tmpdir(), "sweep-links-"));
    const vmDir = path.join(root, "vm");
    const links = path.join(root, "links");
    const old = Date.now() / 1000 - 600;
    await mkdir(path.join(vmDir, "alive"), { recursive: true });
    for (const name of ["gone", "alive", "fresh"]) {
      await mkdir(path.join(links, name), { recursive: true });
      await writeFile(path.join(links, name, "disk-s1"), "");
      if (name !== "fresh") await utimes(path.join(links, name), old, old);
    }
    try {
      assert.deepEqual(await sweepStaleDiskLinks(links, vmDir, silent), ["gone"]);
      assert.deepEqual((await readdir(links)).sort(), ["alive", "fresh"]);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
