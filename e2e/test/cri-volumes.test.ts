// Level 4 (CRI), volumes a real workload relies on, and volumes an attacker controls: through
// containerd's CRI plugin like kubelet, kubelet's on-disk layouts under the harness's own dir.
// Root (bind mounts, tmpfs), as the harness is.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdir, readdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { exec } from "@cloudhv/shim";
import type { CriClient, PodSandboxConfig } from "../src/cri/client.js";
import { HANDLER, type Harness, startHarness } from "../src/harness.js";
import { hypervisorSuites } from "../src/hypervisors.js";
import { entriesOf, podVmIds, processesMatching, settled, vmmsLeft } from "../src/leaks.js";
import { startSwapper } from "../src/swapper.js";

const IMAGE = "docker.io/cloudhv-test/busybox:cri-a";
const MiB = 1024 * 1024;

/** kubelet's atomic writer: keys in a timestamped dir, `..data` to it, each key a link through it. */
async function configmap(dir: string, ts: string, keys: Record<string, string>): Promise<void> {
  await mkdir(path.join(dir, ts), { recursive: true });
  for (const [key, value] of Object.entries(keys)) await writeFile(path.join(dir, ts, key), value);
  await symlink(ts, path.join(dir, "..data_tmp"));
  await exec(["mv", "-T", path.join(dir, "..data_tmp"), path.join(dir, "..data")]);
  for (const key of Object.keys(keys))
    await symlink(`..data/${key}`, path.join(dir, key)).catch(() => undefined);
}

for (const hv of await hypervisorSuites())
  describe(`pod volumes through CRI on ${hv.name}`, { skip: hv.skip ?? false }, () => {
    let harness: Harness;
    let cri: CriClient;
    let n = 0;

    before(async () => {
      harness = await startHarness({
        images: [IMAGE],
        runtimeConfig: { ...hv.runtimeConfig, enable_annotations: ["default_memory"] },
      });
      cri = harness.cri;
    });

    after(async () => {
      await harness?.stop();
    });

    /** The harness's shim daemon (its control socket is in the harness's state dir). */
    async function daemonRssKiB(): Promise<number> {
      // The daemon (behind its front) listens in backend/.
      const [pid] = await processesMatching(path.join(harness.runtime.stateDir, "backend", "shim-"));
      assert.ok(pid, "the shim daemon runs");
      const status = await readFile(`/proc/${pid}/status`, "utf8");
      return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1]);
    }

    async function pod(name: string, annotations: Record<string, string> = {}) {
      const logDirectory = path.join(harness.dir, "pods", name);
      await mkdir(logDirectory, { recursive: true });
      const config: PodSandboxConfig = {
        metadata: { name, uid: `uid-${name}`, namespace: "default" },
        logDirectory,
        annotations,
      };
      const id = await cri.runPodSandbox(config, HANDLER);
      // Its VM, named while it runs: with the warm pool on, one taken from the pool (pool-…).
      const vmIds = await podVmIds(harness.runtime.stateDir, [id]);
      console.log(`pod ${name}: VM ${vmIds.join(" ")}`);
      return { config, id, vmIds };
    }

    async function container(
      p: { config: PodSandboxConfig; id: string },
      name: string,
      mounts: { containerPath: string; hostPath: string; readonly?: boolean }[],
    ): Promise<string> {
      return cri.createContainer(
        p.id,
        {
          metadata: { name, attempt: n++ },
          image: { image: IMAGE },
          command: ["sleep", "600"],
          mounts,
          logPath: `${name}-${n}.log`,
        },
        p.config,
      );
    }

    async function removePod(p: { id: string }, ids: string[]) {
      for (const id of ids) {
        await cri.stopContainer(id, 2).catch(() => undefined);
        await cri.removeContainer(id);
      }
      await cri.stopPodSandbox(p.id);
      await cri.removePodSandbox(p.id);
    }

    it("never exposes a host secret swapped into a configmap volume while the container starts and runs; /dev/zero and FIFO entries fail fast by name; the daemon does not grow", async () => {
      const base = path.join(harness.dir, "hostile");
      const cfg = path.join(base, "volumes", "kubernetes.io~configmap", "cfg");
      const outside = path.join(base, "outside");
      const stage = path.join(base, "stage");
      for (const dir of [cfg, outside, stage]) await mkdir(dir, { recursive: true });
      const secret = randomBytes(24).toString("hex");
      await writeFile(path.join(outside, "secret"), `${secret}\n`);
      await configmap(cfg, "..2026_12_04_10_00_00.1", { key: "public\n" });
      const p = await pod("hostile");
      const ids: string[] = [];
      const swapper = startSwapper(cfg, path.join(outside, "secret"), stage, 50);
      const outcomes: string[] = [];
      try {
        // While the swaps run, a start either copies one clean state or is refused by name.
        let victim: string | undefined;
        for (let attempt = 0; attempt < 10 && !victim; attempt++) {
          const id = await container(p, "victim", [
            { containerPath: "/etc/config", hostPath: cfg, readonly: true },
          ]);
          try {
            await cri.startContainer(id);
            victim = id;
            outcomes.push("started");
          } catch (err) {
            const message = (err as Error).message;
            assert.match(
              message,
              /volume \S+ \(mounted at \/etc\/config\)(: entry "(entry|rel|sub)" is a symlink to| changed while it was read)/,
            );
            outcomes.push(message.includes("symlink to") ? "refused: link" : "refused: unsettled");
            await cri.removeContainer(id);
          }
        }
        assert.ok(victim, `the container started once in 10 tries: ${outcomes.join(", ")}`);
        ids.push(victim);
        // It runs while the swaps go on and the 1 s sync copies (or refuses) each new state.
        for (let i = 0; i < 10; i++) {
          const grep = await cri.execSync(victim, ["sh", "-c", `grep -Rs ${secret} /etc/config; echo rc=$?`]);
          assert.doesNotMatch(grep.stdout, new RegExp(secret), "the host secret reached the guest");
          assert.match(grep.stdout, /rc=1/);
          await new Promise((r) => setTimeout(r, 1000));
        }
        assert.equal((await cri.execSync(victim, ["cat", "/etc/config/key"])).stdout, "public\n");
        // The sync did meet the hostile states, and refused them by name (logged, not copied).
        // The daemon logs to the harness's log_dir.
        const logDir = path.join(harness.dir, "log");
        const logs = await Promise.all(
          (await readdir(logDir))
            .filter((f) => /^shim-.*\.log/.test(f))
            .map((f) => readFile(path.join(logDir, f), "utf8")),
        );
        assert.match(logs.join(""), /volume sync failed/);
        assert.ok(
          logs.some(
            (l) => l.includes(`${cfg} (mounted at /etc/config): entry`) && l.includes("is a symlink to"),
          ),
          "the sync refused a hostile state",
        );
      } finally {
        const swaps = await swapper.stop();
        console.log(`swap rounds ${swaps}; starts: ${outcomes.join(", ")}`);
        assert.ok(swaps > 0);
      }

      // A /dev/zero link and a FIFO: each start fails at once, naming the volume and the entry.
      const rssBefore = await daemonRssKiB();
      for (const [name, make, why] of [
        ["zero", (f: string) => symlink("/dev/zero", f), /entry "zero" is a symlink to "\/dev\/zero"/],
        ["pipe", (f: string) => exec(["mkfifo", f]), /entry "pipe" is a FIFO/],
      ] as const) {
        const dir = path.join(base, "volumes", "kubernetes.io~secret", name);
        await mkdir(dir, { recursive: true });
        await writeFile(path.join(dir, "ok"), "fine\n");
        await make(path.join(dir, name));
        for (let i = 0; i < 3; i++) {
          const id = await container(p, `bad-${name}`, [
            { containerPath: "/etc/bad", hostPath: dir, readonly: true },
          ]);
          const t0 = performance.now();
          await assert.rejects(cri.startContainer(id), (err: Error) => {
            assert.match(
              err.message,
              new RegExp(`volume ${dir.replaceAll(".", "\\.")} \\(mounted at /etc/bad\\)`),
            );
            assert.match(err.message, why);
            return true;
          });
          const ms = performance.now() - t0;
          assert.ok(ms < 10_000, `refused in ${Math.round(ms)} ms`);
          if (i === 0) console.log(`${name}: start refused in ${Math.round(ms)} ms`);
          await cri.removeContainer(id);
        }
      }
      const grown = (await daemonRssKiB()) - rssBefore;
      console.log(`daemon RSS change over 6 refused starts: ${(grown / 1024).toFixed(1)} MiB`);
      assert.ok(grown < 8 * 1024, `the daemon grew by ${grown} KiB`);
      await removePod(p, ids);
      assert.deepEqual(await settled(() => vmmsLeft(harness.runtime.stateDir, p.vmIds)), []);
    });

    it("holds a workload's data: 200 MiB to a hostPath and a PVC, a disk-backed emptyDir of 200 MiB shared on a 256 MiB VM, medium Memory, subPaths of a file and a directory; nothing left after", async () => {
      const base = path.join(harness.dir, "store");
      const podDir = path.join(base, "pods", "uid-store");
      const hostPath = path.join(base, "hostpath");
      const pvc = path.join(podDir, "volumes", "kubernetes.io~csi", "pv-1", "mount");
      const disk = path.join(podDir, "volumes", "kubernetes.io~empty-dir", "cache");
      const memory = path.join(podDir, "volumes", "kubernetes.io~empty-dir", "mem");
      const subFile = path.join(podDir, "volume-subpaths", "data", "writer", "4");
      const subDir = path.join(podDir, "volume-subpaths", "data", "writer", "5");
      for (const dir of [hostPath, pvc, disk, memory, subDir, path.join(hostPath, "conf.d")])
        await mkdir(dir, { recursive: true });
      await writeFile(path.join(hostPath, "app.conf"), "from host\n");
      await writeFile(path.join(hostPath, "conf.d", "a"), "a\n");
      await writeFile(subFile, "");
      const mounted: string[] = [];
      const podsDir = path.join(harness.runtime.stateDir, "pods");
      try {
        // kubelet: an emptyDir with medium Memory is a tmpfs; a subPath is a bind of the target.
        await exec(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", memory]);
        mounted.push(memory);
        await exec(["mount", "--bind", path.join(hostPath, "app.conf"), subFile]);
        mounted.push(subFile);
        await exec(["mount", "--bind", path.join(hostPath, "conf.d"), subDir]);
        mounted.push(subDir);

        const p = await pod("store", { "io.cloudhv.config.hypervisor.default_memory": "256" });
        const shared = [
          { containerPath: "/cache", hostPath: disk },
          { containerPath: "/mem", hostPath: memory },
        ];
        const writer = await container(p, "writer", [
          { containerPath: "/data", hostPath },
          { containerPath: "/pvc", hostPath: pvc },
          ...shared,
          { containerPath: "/etc/app.conf", hostPath: subFile },
          { containerPath: "/etc/conf.d", hostPath: subDir },
        ]);
        await cri.startContainer(writer);
        const reader = await container(p, "reader", shared);
        await cri.startContainer(reader);
        const ids = [writer, reader];
        const sh = async (id: string, script: string, timeout = 300) => {
          const r = await cri.execSync(id, ["sh", "-c", script], timeout);
          assert.equal(r.exitCode, 0, `${script}: ${r.stderr}`);
          return r.stdout;
        };
        const mem = await sh(writer, "grep MemTotal /proc/meminfo");
        assert.ok(Number(/(\d+) kB/.exec(mem)?.[1]) <= 256 * 1024, mem);

        // 200 MiB to the hostPath and the PVC: the host has the same bytes while the pod runs.
        const t0 = performance.now();
        const sums = await sh(
          writer,
          "dd if=/dev/urandom of=/data/blob bs=1M count=200 2>/dev/null && cp /data/blob /pvc/blob && sha256sum /data/blob /pvc/blob",
        );
        console.log(
          `200 MiB written to the hostPath and copied to the PVC in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
        );
        const [guestData, guestPvc] = sums.split("\n").map((l) => l.split(" ")[0]);
        assert.equal(guestData, guestPvc);
        const hostSum = async (file: string) => (await exec(["sha256sum", file])).stdout.split(" ")[0];
        assert.equal(await hostSum(path.join(hostPath, "blob")), guestData);
        assert.equal(await hostSum(path.join(pvc, "blob")), guestData);

        // The disk-backed emptyDir holds 200 MiB on a 256 MiB VM (on the host's disk, not in
        // guest RAM), and both containers see the same file.
        const wrote = await sh(
          writer,
          "dd if=/dev/urandom of=/cache/blob bs=1M count=200 2>/dev/null && sha256sum /cache/blob",
        );
        assert.equal(await sh(reader, "sha256sum /cache/blob"), wrote);
        assert.equal(
          (await exec(["stat", "-c", "%s", path.join(disk, "blob")])).stdout.trim(),
          String(200 * MiB),
        );
        // medium: Memory is a tmpfs in the guest, shared by the pod's containers, not on the host.
        assert.equal((await sh(reader, "stat -f -c %T /mem")).trim(), "tmpfs");
        await sh(writer, "echo in-memory > /mem/note");
        assert.equal(await sh(reader, "cat /mem/note"), "in-memory\n");
        assert.deepEqual(await readdir(memory), []);

        // subPaths as with runc: the file's content, a write reaches the host file; the
        // directory alone, a new file in it lands in the host's directory.
        assert.equal(await sh(writer, "cat /etc/app.conf"), "from host\n");
        await sh(writer, "echo from guest > /etc/app.conf");
        assert.equal(await readFile(path.join(hostPath, "app.conf"), "utf8"), "from guest\n");
        assert.equal(await sh(writer, "ls /etc/conf.d"), "a\n");
        await sh(writer, "echo b > /etc/conf.d/b");
        assert.equal(await readFile(path.join(hostPath, "conf.d", "b"), "utf8"), "b\n");

        await removePod(p, ids);
        assert.equal(await hostSum(path.join(hostPath, "blob")), guestData, "the bytes stay after the pod");
        assert.equal(await hostSum(path.join(pvc, "blob")), guestData);
        const left = await settled(() => processesMatching(podsDir));
        const what = await Promise.all(
          left.map((p) =>
            readFile(`/proc/${p}/cmdline`, "utf8").then(
              (c) => `${p}: ${c.replaceAll("\0", " ")}`,
              () => `${p}`,
            ),
          ),
        );
        assert.deepEqual(what, [], "no virtiofsd left");
        assert.deepEqual(await settled(() => vmmsLeft(harness.runtime.stateDir, p.vmIds)), []);
        // The shared directory goes last, once its binds are unmounted.
        assert.deepEqual(await settled(() => entriesOf(podsDir)), [], "the pod's shared directory is gone");
        const mountinfo = await readFile("/proc/self/mountinfo", "utf8");
        assert.ok(!mountinfo.includes(podsDir), "no bind mount left under the pods' state dir");
      } finally {
        for (const point of mounted.reverse()) await exec(["umount", point]).catch(() => undefined);
        await rm(base, { recursive: true, force: true });
      }
    });
  });
