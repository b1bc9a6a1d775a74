// The pod's cgroup: cgroupsPath in both drivers' forms, the QoS class kubelet's names tell,
// the QoS → oom_score_adj rule, the hierarchies of a mountinfo, and the VMM's join wrapper.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import pino from "pino";
import { PodCgroup, parseCgroupMounts } from "../src/cgroup/cgroup.js";
import { cgroupJoinArgv } from "../src/cgroup/join.js";
import { oomScoreAdjFor } from "../src/cgroup/oom.js";
import { qosOf, resolveCgroupsPath } from "../src/cgroup/path.js";

const silent = pino({ level: "silent" });

describe("the pod's cgroup path", () => {
  it("takes a cgroupfs path as is, relative to each hierarchy's root", () => {
    assert.deepEqual(resolveCgroupsPath("/kubepods/besteffort/pod1234/abc"), {
      driver: "cgroupfs",
      path: "/kubepods/besteffort/pod1234/abc",
    });
    assert.equal(resolveCgroupsPath("/k8s.io//abc/").path, "/k8s.io/abc");
    assert.equal(resolveCgroupsPath("default/t1").path, "/default/t1");
  });

  it("expands systemd's slice:prefix:name as runc does", () => {
    assert.deepEqual(resolveCgroupsPath("kubepods-besteffort-pod12_34.slice:cri-containerd:abc"), {
      driver: "systemd",
      path: "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12_34.slice/cri-containerd-abc.scope",
    });
    assert.equal(
      resolveCgroupsPath("kubepods-pod9.slice:cri-containerd:x").path,
      "/kubepods.slice/kubepods-pod9.slice/cri-containerd-x.scope",
    );
    assert.equal(resolveCgroupsPath(":cri-containerd:x").path, "/system.slice/cri-containerd-x.scope");
    assert.equal(resolveCgroupsPath("-.slice::x").path, "/x.scope");
  });

  it("refuses a path that could leave the hierarchy, or a malformed slice, as INVALID_ARGUMENT", () => {
    for (const bad of [
      "/kubepods/../../etc",
      "..",
      "/",
      "a--b.slice:p:n",
      "-a.slice:p:n",
      "x.service:p:n",
      "a:b",
    ]) {
      assert.throws(() => resolveCgroupsPath(bad), { kind: "InvalidArgument" }, bad);
    }
  });

  it("tells the pod's QoS class from kubelet's names, both drivers", () => {
    const qos = (p: string) => qosOf(resolveCgroupsPath(p).path);
    assert.equal(qos("/kubepods/besteffort/pod1/abc"), "BestEffort");
    assert.equal(qos("/kubepods/burstable/pod1/abc"), "Burstable");
    assert.equal(qos("/kubepods/pod1/abc"), "Guaranteed");
    assert.equal(qos("kubepods-besteffort-pod1.slice:cri-containerd:abc"), "BestEffort");
    assert.equal(qos("kubepods-burstable-pod1.slice:cri-containerd:abc"), "Burstable");
    assert.equal(qos("kubepods-pod1.slice:cri-containerd:abc"), "Guaranteed");
    assert.equal(qos("/k8s.io/abc"), undefined);
    assert.equal(qos("/default/t1"), undefined);
  });
});

describe("the VMM's oom_score_adj", () => {
  it("follows kubelet's QoS policy", () => {
    assert.equal(oomScoreAdjFor("Guaranteed", [500]), -997);
    assert.equal(oomScoreAdjFor("BestEffort", [-997]), 1000);
    // Burstable: the least protected Burstable score until a container joined...
    assert.equal(oomScoreAdjFor("Burstable", []), 999);
    // ...then its most protected container's, kept inside the Burstable range.
    assert.equal(oomScoreAdjFor("Burstable", [700, 412]), 412);
    assert.equal(oomScoreAdjFor("Burstable", [-998]), 3);
    assert.equal(oomScoreAdjFor("Burstable", [1000]), 999);
    // A cgroup kubelet did not name: the spec's own value, or none.
    assert.equal(oomScoreAdjFor(undefined, [], 250), 250);
    assert.equal(oomScoreAdjFor(undefined, []), undefined);
  });
});

describe("cgroup hierarchies", () => {
  it("finds every v1 hierarchy and the unified one of a hybrid host, each once", () => {
    const mountinfo = [
      "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755",
      "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct",
      "34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children",
      "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd",
      "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate",
      "99 12 0:29 / /mnt/again rw,relatime - cgroup cgroup rw,cpu,cpuacct",
    ].join("\n");
    assert.deepEqual(parseCgroupMounts(mountinfo), [
      { mount: "/sys/fs/cgroup/cpu,cpuacct", version: 1, controllers: ["cpu", "cpuacct"] },
      { mount: "/sys/fs/cgroup/cpuset", version: 1, controllers: ["cpuset"] },
      { mount: "/sys/fs/cgroup/systemd", version: 1, controllers: ["name=systemd"] },
      { mount: "/sys/fs/cgroup/unified", version: 2, controllers: [] },
    ]);
    assert.deepEqual(parseCgroupMounts("25 20 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw"), [
      { mount: "/sys/fs/cgroup", version: 2, controllers: [] },
    ]);
  });

  it("creates what is missing in every hierarchy, and removes only what it created", async () => {
    const root = await mkdtemp(path.join(os.tmpdir(), "cloudhv-cg-"));
    try {
      const cpuset = path.join(root, "cpuset");
      const memory = path.join(root, "memory");
      // kubelet made the pod's cgroup in one hierarchy already.
      await mkdir(path.join(memory, "kubepods", "pod1"), { recursive: true });
      await mkdir(path.join(cpuset, "kubepods"), { recursive: true });
      const hierarchies = [
        { mount: cpuset, version: 1 as const, controllers: ["cpuset"] },
        { mount: memory, version: 1 as const, controllers: ["memory"] },
      ];
      const cg = await PodCgroup.open("/kubepods/pod1/sb", hierarchies, silent);
      assert.deepEqual(cg.procs, [
        path.join(cpuset, "kubepods/pod1/sb/cgroup.procs"),
        path.join(memory, "kubepods/pod1/sb/cgroup.procs"),
      ]);
      await cg.remove();
      const exists = (p: string) =>
        stat(p).then(
          () => true,
          () => false,
        );
      assert.equal(await exists(path.join(memory, "kubepods/pod1/sb")), false, "ours went");
      assert.equal(await exists(path.join(cpuset, "kubepods/pod1")), false, "ours went, parent too");
      assert.equal(await exists(path.join(memory, "kubepods/pod1")), true, "kubelet's stays");
      assert.equal(await exists(path.join(cpuset, "kubepods")), true, "kubelet's stays");
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
  it("a hierarchy that fails the open leaves nothing it or the others made", async () => {
    const root = await mkdtemp(path.join(os.tmpdir(), "cloudhv-cg-"));
    try {
      const cpu = path.join(root, "cpu");
      const memory = path.join(root, "memory");
      await mkdir(cpu);
      // Not a directory: every mkdir below it fails (ENOTDIR).
      await writeFile(memory, "");
      const hierarchies = [
        { mount: cpu, version: 1 as const, controllers: ["cpu"] },
        { mount: memory, version: 1 as const, controllers: ["memory"] },
      ];
      await assert.rejects(
        PodCgroup.open("/kubepods/pod1/sb", hierarchies, silent),
        /cannot create the pod's cgroup/,
      );
      assert.deepEqual(await readdir(cpu), [], "what the open made in the other hierarchy went, parents too");
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});

describe("the VMM's cgroup join wrapper", () => {
  const run = (argv: string[]) =>
    new Promise<{ code: number | null; stdout: string; pid: number }>((resolve) => {
      const [cmd, ...args] = argv;
      const child = spawn(cmd as string, args, { stdio: ["ignore", "pipe", "ignore"] });
      let stdout = "";
      child.stdout.on("data", (d) => {
        stdout += d;
      });
      child.on("close", (code) => resolve({ code, stdout, pid: child.pid ?? -1 }));
    });

  it("writes the VMM's own pid to every cgroup.procs, then execs it with the same pid", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-join-"));
    try {
      const procs = [path.join(dir, "a.procs"), path.join(dir, "b.procs")];
      const out = await run([...cgroupJoinArgv(procs), "/bin/sh", "-c", "echo $$"]);
      assert.equal(out.code, 0);
      assert.equal(out.stdout.trim(), String(out.pid), "exec kept the pid");
      for (const file of procs) assert.equal((await readFile(file, "utf8")).trim(), String(out.pid));
      assert.deepEqual(cgroupJoinArgv([]), [], "no cgroup, no wrapper");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("runs nothing when a cgroup cannot be joined", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-join-"));
    try {
      const marker = path.join(dir, "ran");
      const out = await run([
        ...cgroupJoinArgv([path.join(dir, "missing", "cgroup.procs")]),
        "touch",
        marker,
      ]);
      assert.equal(out.code, 125);
      await assert.rejects(stat(marker), "the VMM never ran");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
