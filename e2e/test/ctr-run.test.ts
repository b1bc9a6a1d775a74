// Level 3 (VM) through containerd: `ctr run --runtime io.containerd.cloudhv.v1` on Debian's
// containerd 1.6 runs the command inside a microVM and behaves like runc from the outside.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, rmdir, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { exec } from "@cloudhv/shim";
import { mountsUnder, PrivateContainerd } from "../src/containerd.js";
import { hypervisorSuites } from "../src/hypervisors.js";
import { entriesOf, processesMatching, settled, shimProcesses, stopShim } from "../src/leaks.js";
import { buildBusyboxImage, importOciArchive } from "../src/oci-image.js";
import { installRuntime, type RuntimeInstall } from "../src/runtime-install.js";

const RUNTIME = "io.containerd.cloudhv.v1";
const IMAGE_A = "docker.io/cloudhv-test/busybox:a";
const IMAGE_B = "docker.io/cloudhv-test/busybox:b";

for (const hv of await hypervisorSuites())
  describe(`ctr run with the cloudhv runtime on ${hv.name}`, { skip: hv.skip ?? false }, () => {
    let dir: string;
    let runtime: RuntimeInstall;
    let containerd: PrivateContainerd;

    before(async () => {
      dir = await mkdtemp(path.join("/run", "chv-"));
      // Sizing annotations are off by default; the sizing test below uses them.
      runtime = await installRuntime(dir, {
        ...hv.runtimeConfig,
        enable_annotations: ["default_vcpus", "default_memory"],
      });
      containerd = await PrivateContainerd.start({ baseDir: dir, env: runtime.env });
      const images = await mkdtemp(path.join(os.tmpdir(), "cloudhv-images-"));
      try {
        for (const name of [IMAGE_A, IMAGE_B]) {
          const image = await buildBusyboxImage({
            archivePath: path.join(images, `${name.split(":")[1]}.tar`),
            name,
          });
          await importOciArchive(containerd, image.archivePath);
        }
      } finally {
        await rm(images, { recursive: true, force: true });
      }
    });

    after(async () => {
      await containerd?.stop();
      // The daemon goes idle once containerd is gone; stop it (and its front) now rather than in 5 minutes.
      if (containerd) await stopShim(containerd.ttrpcAddress);
      await rm(dir, { recursive: true, force: true });
    });

    const ctr = (args: string[], timeoutMs = 120_000) =>
      exec(["ctr", "--address", containerd.address, ...args], { timeoutMs });

    /** Polls `ctr task ls` (ctr 1.6 has no `task wait`) until the task shows `status`. */
    async function taskStatus(
      id: string,
      status: "RUNNING" | "STOPPED" | "PAUSED",
      timeoutMs = 60_000,
    ): Promise<void> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const ls = await ctr(["task", "ls"]);
        if (new RegExp(`^${id}\\s+\\d+\\s+${status}`, "m").test(ls.stdout)) return;
        if (Date.now() > deadline) assert.fail(`task ${id} did not become ${status}: ${ls.stdout}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }

    /** Deletes a stopped task and its container; returns the exit status containerd reported. */
    async function remove(id: string): Promise<number> {
      const deleted = await ctr(["task", "delete", id]);
      assert.equal(deleted.code, 0, deleted.stderr);
      assert.equal((await ctr(["container", "delete", id])).code, 0);
      return Number(/exit code (\d+)/.exec(deleted.stderr)?.[1] ?? 0);
    }

    it("prints stdout and stderr on their own streams and exits with the command's status", async () => {
      const result = await ctr([
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE_A,
        "t1",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
      ]);
      assert.equal(result.stdout, "out\n");
      assert.equal(result.stderr, "err\n");
      assert.equal(result.code, 3);
      // The shim's log lines for the task reach containerd's log through the bundle's log FIFO.
      const containerdLog = await readFile(containerd.logPath, "utf8");
      assert.match(containerdLog, /"task":"t1".*"msg":"task created"/);
    });

    it("gives each container its own image, in its own VM", async () => {
      const [a, b] = await Promise.all([
        ctr(["run", "--rm", "--runtime", RUNTIME, IMAGE_A, "img-a", "cat", "/etc/cloudhv-image"]),
        ctr(["run", "--rm", "--runtime", RUNTIME, IMAGE_B, "img-b", "cat", "/etc/cloudhv-image"]),
      ]);
      assert.equal(a.stdout.trim(), IMAGE_A, a.stderr);
      assert.equal(b.stdout.trim(), IMAGE_B, b.stderr);
    });

    it("ends a task killed with SIGKILL with 137", async () => {
      // Attached, like a user's `ctr run`: its exit code is the task's exit status.
      const attached = ctr(["run", "--rm", "--runtime", RUNTIME, IMAGE_A, "sleeper", "sleep", "600"]);
      await taskStatus("sleeper", "RUNNING");
      const kill = await ctr(["task", "kill", "--signal", "SIGKILL", "sleeper"]);
      assert.equal(kill.code, 0, kill.stderr);
      assert.equal((await attached).code, 137);
    });

    it("ends a process killed with SIGTERM with 143", async () => {
      // A container's init is PID 1 of its namespace and ignores SIGTERM unless it handles it
      // (with runc too), so the SIGTERM victim is an exec'd process.
      assert.equal(
        (await ctr(["run", "-d", "--runtime", RUNTIME, IMAGE_A, "termer", "sleep", "600"])).code,
        0,
      );
      try {
        const exec1 = ctr(["task", "exec", "--exec-id", "victim", "termer", "sleep", "600"]);
        const deadline = Date.now() + 60_000;
        while (
          !/\bsleep 600\b[\s\S]*\bsleep 600\b/.test(
            (await ctr(["task", "exec", "--exec-id", `ps${Date.now()}`, "termer", "ps"])).stdout,
          )
        ) {
          assert.ok(Date.now() < deadline, "the exec'd sleep never showed up");
          await new Promise((r) => setTimeout(r, 200));
        }
        assert.equal(
          (await ctr(["task", "kill", "--exec-id", "victim", "--signal", "SIGTERM", "termer"])).code,
          0,
        );
        assert.equal((await exec1).code, 143);
      } finally {
        await ctr(["task", "kill", "--signal", "SIGKILL", "termer"]);
        await taskStatus("termer", "STOPPED");
        assert.equal(await remove("termer"), 137);
      }
    });

    it("runs `ctr task exec` in a running task", async () => {
      assert.equal(
        (await ctr(["run", "-d", "--runtime", RUNTIME, IMAGE_A, "execer", "sleep", "600"])).code,
        0,
      );
      try {
        const result = await ctr([
          "task",
          "exec",
          "--exec-id",
          "e1",
          "execer",
          "sh",
          "-c",
          "echo hi-from-exec; exit 5",
        ]);
        assert.equal(result.stdout, "hi-from-exec\n");
        assert.equal(result.code, 5);
        const ps = await ctr(["task", "ps", "execer"]);
        assert.equal(ps.code, 0, ps.stderr);
        assert.match(ps.stdout, /^PID\s+INFO\n\d+/m);
        const metrics = await ctr(["task", "metrics", "execer"]);
        assert.equal(metrics.code, 0, metrics.stderr);
        assert.match(metrics.stdout, /memory\.usage\s+[1-9]\d*/);
        assert.match(metrics.stdout, /pids\.current\s+[1-9]/);
        assert.equal((await ctr(["task", "pause", "execer"])).code, 0);
        await taskStatus("execer", "PAUSED");
        assert.equal((await ctr(["task", "resume", "execer"])).code, 0);
        await taskStatus("execer", "RUNNING");
        assert.equal((await ctr(["task", "exec", "--exec-id", "e2", "execer", "true"])).code, 0);
      } finally {
        await ctr(["task", "kill", "--signal", "SIGKILL", "execer"]);
        await taskStatus("execer", "STOPPED");
        assert.equal(await remove("execer"), 137);
      }
    });

    it("keeps a task running across a containerd restart, then kills and deletes it", async () => {
      assert.equal(
        (await ctr(["run", "-d", "--runtime", RUNTIME, IMAGE_A, "survivor", "sleep", "600"])).code,
        0,
      );
      await containerd.restart();
      await taskStatus("survivor", "RUNNING");
      const exec1 = await ctr([
        "task",
        "exec",
        "--exec-id",
        "after-restart",
        "survivor",
        "echo",
        "still-here",
      ]);
      assert.equal(exec1.stdout, "still-here\n", exec1.stderr);
      assert.equal((await ctr(["task", "kill", "--signal", "SIGKILL", "survivor"])).code, 0);
      await taskStatus("survivor", "STOPPED");
      assert.equal(await remove("survivor"), 137);
    });

    it("runs with a terminal (`ctr run -t`)", async () => {
      // ctr -t needs a terminal of its own: script(1) gives it one.
      const command = `ctr --address ${containerd.address} run --rm -t --runtime ${RUNTIME} ${IMAGE_A} tty1 sh -c 'tty; stty size'`;
      const result = await exec(["script", "-qec", command, "/dev/null"], { timeoutMs: 120_000 });
      assert.equal(result.code, 0, result.stdout + result.stderr);
      assert.match(result.stdout, /\/dev\/pts\/\d+/);
    });

    it("streams 100 MB of stdout", async () => {
      const result = await exec(
        [
          "sh",
          "-c",
          `ctr --address ${containerd.address} run --rm --runtime ${RUNTIME} ${IMAGE_A} big sh -c 'yes 0123456789abcdef | head -c 100000000' | wc -c`,
        ],
        { timeoutMs: 300_000 },
      );
      assert.equal(result.stdout.trim(), "100000000", result.stderr);
    });

    it("sees the task exit when its VMM is killed, and leaks nothing", async () => {
      assert.equal(
        (await ctr(["run", "-d", "--runtime", RUNTIME, IMAGE_A, "victim", "sleep", "600"])).code,
        0,
      );
      const victimVm = path.join(runtime.stateDir, "vm", "default-victim");
      const [vmm] = await processesMatching(victimVm);
      assert.ok(vmm, `the task's ${hv.name} process is running`);
      process.kill(vmm, "SIGKILL");
      await taskStatus("victim", "STOPPED", 30_000);
      assert.equal(await remove("victim"), 137);
      assert.deepEqual(await settled(() => processesMatching(victimVm)), []);
    });

    it("a wedged VM (its VMM stopped) does not hold up another task: exec, task ls, kill and delete answer", async () => {
      for (const id of ["wedged", "healthy"])
        assert.equal((await ctr(["run", "-d", "--runtime", RUNTIME, IMAGE_A, id, "sleep", "600"])).code, 0);
      const [vmm] = await processesMatching(path.join(runtime.stateDir, "vm", "default-wedged"));
      assert.ok(vmm, "the wedged task's VMM runs");
      // Every vCPU and device thread of that VM stops: its agent answers nothing any more.
      process.kill(vmm, "SIGSTOP");
      try {
        const alive = await ctr(["task", "exec", "--exec-id", "e1", "healthy", "echo", "alive"], 60_000);
        assert.equal(alive.stdout, "alive\n", alive.stderr);
        const ls = await ctr(["task", "ls"], 60_000);
        assert.match(ls.stdout, /^wedged\s+\d+\s+RUNNING/m);
        assert.match(ls.stdout, /^healthy\s+\d+\s+RUNNING/m);
        assert.equal((await ctr(["task", "kill", "--signal", "SIGKILL", "healthy"], 60_000)).code, 0);
        await taskStatus("healthy", "STOPPED");
        assert.equal(await remove("healthy"), 137);
      } finally {
        process.kill(vmm, "SIGCONT");
      }
      assert.equal((await ctr(["task", "kill", "--signal", "SIGKILL", "wedged"])).code, 0);
      await taskStatus("wedged", "STOPPED");
      assert.equal(await remove("wedged"), 137);
    });

    it("runs a CRI pod's containers in the one VM its sandbox booted (disks hot-plugged)", async () => {
      const cri = (type: string, sandbox: string) => [
        "--annotation",
        `io.kubernetes.cri.container-type=${type}`,
        "--annotation",
        `io.kubernetes.cri.sandbox-id=${sandbox}`,
      ];
      const vms = () => processesMatching(path.join(runtime.stateDir, "vm"));
      assert.equal(
        (
          await ctr([
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            ...cri("sandbox", "pod1"),
            IMAGE_A,
            "pod1",
            "sleep",
            "600",
          ])
        ).code,
        0,
      );
      assert.equal((await vms()).length, 1);
      assert.equal(
        (
          await ctr([
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            ...cri("container", "pod1"),
            IMAGE_B,
            "app1",
            "sleep",
            "600",
          ])
        ).code,
        0,
      );
      assert.equal((await vms()).length, 1, "the app container joined the pod's VM");
      const seen = await ctr(["task", "exec", "--exec-id", "look", "app1", "cat", "/etc/cloudhv-image"]);
      assert.equal(seen.stdout.trim(), IMAGE_B, seen.stderr);
      const orphan = await ctr([
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        ...cri("container", "nopod"),
        IMAGE_A,
        "orphan",
        "true",
      ]);
      assert.notEqual(orphan.code, 0);
      assert.match(orphan.stderr, /sandbox nopod of container orphan/);
      await ctr(["container", "delete", "orphan"]);
      for (const id of ["app1", "pod1"]) {
        assert.equal((await ctr(["task", "kill", "--signal", "SIGKILL", id])).code, 0);
        await taskStatus(id, "STOPPED");
        assert.equal(await remove(id), 137);
      }
      assert.deepEqual(await vms(), []);
    });

    it("sizes the VM from io.cloudhv / io.katacontainers annotations, and refuses bad values by name", async () => {
      const sized = await ctr([
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        "io.cloudhv.config.hypervisor.default_vcpus=2",
        "--annotation",
        "io.katacontainers.config.hypervisor.default_memory=512",
        IMAGE_A,
        "sized",
        "sh",
        "-c",
        "nproc; grep MemTotal /proc/meminfo",
      ]);
      assert.equal(sized.code, 0, sized.stderr);
      const [cpus, mem] = sized.stdout.trim().split("\n");
      assert.equal(cpus, "2");
      const memKiB = Number(/(\d+) kB/.exec(mem ?? "")?.[1]);
      assert.ok(memKiB > 400 * 1024 && memKiB <= 512 * 1024, `guest MemTotal ${mem}`);
      const bad = await ctr([
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        "io.katacontainers.config.hypervisor.default_memory=lots",
        IMAGE_A,
        "badsize",
        "true",
      ]);
      assert.notEqual(bad.code, 0);
      assert.match(
        bad.stderr,
        /io\.katacontainers\.config\.hypervisor\.default_memory="lots" must be an integer from 64 to \d+ MiB/,
      );
      await ctr(["container", "delete", "badsize"]);
    });

    it("a changed runtime config reaches the next task through a new daemon; the old one keeps its task", async () => {
      const shims = () => shimProcesses(containerd.ttrpcAddress);
      assert.equal(
        (await ctr(["run", "-d", "--runtime", RUNTIME, IMAGE_A, "cfg-old", "sleep", "600"])).code,
        0,
      );
      const original = await readFile(runtime.configPath, "utf8");
      try {
        const before = await shims();
        const config = JSON.parse(original) as Record<string, unknown>;
        await writeFile(runtime.configPath, JSON.stringify({ ...config, default_memory_mb: 384 }, null, 2));
        const sized = await ctr([
          ...["run", "--rm", "--runtime", RUNTIME, IMAGE_A, "cfg-new"],
          ...["sh", "-c", "grep MemTotal /proc/meminfo"],
        ]);
        assert.equal(sized.code, 0, sized.stderr);
        const memKiB = Number(/(\d+) kB/.exec(sized.stdout)?.[1]);
        assert.ok(
          memKiB > 300 * 1024 && memKiB <= 384 * 1024,
          `the new task's VM has the new size: ${sized.stdout}`,
        );
        const after = await shims();
        assert.equal(
          after.daemons.length,
          before.daemons.length + 1,
          "a second daemon serves the new config",
        );
        assert.equal(after.fronts.length, before.fronts.length + 1, "behind a front of its own");
        for (const pid of before.daemons)
          assert.ok(after.daemons.includes(pid), "the first daemon still runs");
      } finally {
        await writeFile(runtime.configPath, original);
        // The old task is still the old daemon's: kill and delete reach it.
        assert.equal((await ctr(["task", "kill", "--signal", "SIGKILL", "cfg-old"])).code, 0);
        await taskStatus("cfg-old", "STOPPED");
        assert.equal(await remove("cfg-old"), 137);
      }
    });

    it("fails a task whose network namespace has no CNI interface, naming it, and releases its rootfs", async () => {
      const ns = `chv-nonet-${process.pid}`;
      assert.equal((await exec(["ip", "netns", "add", ns])).code, 0);
      try {
        const res = await ctr([
          "run",
          "--rm",
          "--runtime",
          RUNTIME,
          "--with-ns",
          `network:/var/run/netns/${ns}`,
          IMAGE_A,
          "nonet",
          "true",
        ]);
        assert.notEqual(res.code, 0);
        assert.match(res.stderr, new RegExp(`pod netns /var/run/netns/${ns} has no ethernet interface`));
        await ctr(["container", "delete", "nonet"]);
        // The rootfs was prepared at the same time: its scratch disk is gone again.
        assert.deepEqual(await settled(() => entriesOf(path.join(dir, "scratch"))), []);
      } finally {
        await exec(["ip", "netns", "del", ns]);
      }
    });

    it("shares a bind mount by virtio-fs from boot (`ctr run --mount`): the guest's write is on the host, the host's file in the guest", async () => {
      const shared = path.join(dir, "bind-vol");
      await mkdir(shared);
      await writeFile(path.join(shared, "in"), "from the host\n");
      const result = await ctr([
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--mount",
        `type=bind,src=${shared},dst=/data,options=rbind:rw`,
        IMAGE_A,
        "t-vfs",
        "sh",
        "-c",
        "cat /data/in && echo from the guest > /data/out && grep -c virtiofs /proc/mounts",
      ]);
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stdout, /^from the host\n[1-9]\d*\n$/);
      assert.equal(await readFile(path.join(shared, "out"), "utf8"), "from the guest\n");
      assert.deepEqual(
        await settled(() => entriesOf(path.join(runtime.stateDir, "pods"))),
        [],
        "virtiofsd's dir is gone",
      );
      assert.deepEqual(
        await settled(() => processesMatching(path.join(runtime.stateDir, "pods"))),
        [],
        "no virtiofsd left",
      );
    });

    it("a read-only bind (`ro`) is read-only at its top only, `rro` all the way down: a tmpfs below the first is writable, below the second it is not even shared", async () => {
      const vol = path.join(dir, "ro-vol");
      const sub = path.join(vol, "sub");
      await mkdir(sub, { recursive: true });
      await exec(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", sub]);
      try {
        const result = await ctr([
          "run",
          "--rm",
          "--runtime",
          RUNTIME,
          "--mount",
          `type=bind,src=${vol},dst=/nr,options=rbind:ro`,
          "--mount",
          `type=bind,src=${vol},dst=/rr,options=rbind:rro`,
          IMAGE_A,
          "t-rro",
          "sh",
          "-c",
          "for f in /nr/top /nr/sub/f /rr/top /rr/sub/g; do touch $f 2>/dev/null && echo $f ok || echo $f fails; done",
        ]);
        assert.equal(result.code, 0, result.stderr);
        assert.equal(result.stdout, "/nr/top fails\n/nr/sub/f ok\n/rr/top fails\n/rr/sub/g fails\n");
        assert.deepEqual(await readdir(sub), ["f"], "the write below the non-recursive one is on the host");
      } finally {
        await exec(["umount", "--lazy", sub]);
      }
      await rmdir(sub);
      assert.deepEqual(
        await settled(() => entriesOf(path.join(runtime.stateDir, "pods"))),
        [],
        "virtiofsd's dir is gone",
      );
    });

    it("leaves no VM, scratch disk, mount or state behind after the tests above", async () => {
      assert.deepEqual(
        await settled(() => processesMatching(path.join(runtime.stateDir, "vm"))),
        [],
        "no VMM of this runtime is left",
      );
      assert.deepEqual(await settled(() => entriesOf(path.join(runtime.stateDir, "vm"))), []);
      assert.deepEqual(await settled(() => entriesOf(path.join(dir, "scratch"))), []);
      assert.deepEqual(
        (await mountsUnder(runtime.cacheDir)).filter((m) => !m.includes("/snapshots/")),
        [],
      );
      assert.ok(existsSync(runtime.cacheDir));
      const cached = (await readdir(runtime.cacheDir)).filter((f) => f.endsWith(".erofs"));
      assert.equal(cached.length, 2, `one cached image per distinct image: ${cached}`);
    });
  });
