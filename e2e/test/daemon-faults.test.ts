// The node's shim daemon under faults and changes. Killed (kill -9) while pods run and one
// streams output: its VMs and virtiofsd outlive it, containerd's connections stay open (the
// front keeps them), a new daemon takes over from the pods' records within seconds, and every
// old pod still answers exec, stats, stop, remove and port-forward (the helpers died with the
// old daemon; the new one starts its own); afterwards nothing is left on the host.
// The runtime config changed under a running pod: its next container still joins its VM; so
// does one started by a newly installed shim build, while the new build's daemon serves new pods.
// A guest kernel panic ends its task at once, with the reason in the daemon's log.
import assert from "node:assert/strict";
import { cp, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { exec } from "@cloudhv/shim";
import { REPO_ROOT } from "../src/artifacts.js";
import type { CriClient, PodSandboxConfig } from "../src/cri/client.js";
import { portForwardExchange } from "../src/cri/port-forward.js";
import { HANDLER, type Harness, startHarness } from "../src/harness.js";
import { hypervisorSuites } from "../src/hypervisors.js";
import {
  entriesOf,
  entriesSettled,
  liveStartTime,
  processesMatching,
  settled,
  shimProcesses,
} from "../src/leaks.js";
import { SHIM_ENTRY } from "../src/runtime-install.js";

const IMAGE = "docker.io/cloudhv-test/busybox:restart";

/** The pid in each daemon lock file (backend/: the front's own locks are in the state dir). */
async function daemonPids(stateDir: string): Promise<number[]> {
  const pids: number[] = [];
  for (const dir of [path.join(stateDir, "backend")]) {
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      if (!/^shim-[0-9a-f]+\.sock\.lock$/.test(name)) continue;
      // "pid startTime" (bin/daemon.ts).
      const pid = Number((await readFile(path.join(dir, name), "utf8").catch(() => "")).trim().split(" ")[0]);
      if (pid > 0 && (await liveStartTime(pid)) !== undefined) pids.push(pid);
    }
  }
  return pids;
}

async function waitUntil<T>(what: string, ms: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) assert.fail(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A pod with one `sleep` container, its hostname its name. */
async function startPod(
  cri: CriClient,
  harness: Harness,
  name: string,
): Promise<{ podId: string; ids: string[]; config: PodSandboxConfig }> {
  const logDirectory = path.join(harness.dir, "pods", name);
  await mkdir(logDirectory, { recursive: true });
  const config: PodSandboxConfig = {
    metadata: { name, uid: `uid-${name}`, namespace: "default", attempt: 0 },
    hostname: name,
    logDirectory,
  };
  const podId = await cri.runPodSandbox(config, HANDLER);
  const id = await cri.createContainer(
    podId,
    { metadata: { name: "main" }, image: { image: IMAGE }, command: ["sleep", "3600"] },
    config,
  );
  await cri.startContainer(id);
  return { podId, ids: [id], config };
}

for (const hv of await hypervisorSuites())
  describe(`the shim daemon killed under running pods on ${hv.name}`, { skip: hv.skip ?? false }, () => {
    let harness: Harness;
    let cri: CriClient;

    before(async () => {
      harness = await startHarness({ images: [IMAGE], runtimeConfig: { ...hv.runtimeConfig } });
      cri = harness.cri;
    });

    after(async () => {
      await harness?.stop();
    });

    it("keeps every pod running; a new daemon takes over; exec, stats, stop and remove work; nothing leaks", async () => {
      const stateDir = harness.runtime.stateDir;
      const pods: Array<{ podId: string; id: string; logDirectory: string; config: PodSandboxConfig }> = [];
      for (const name of ["counter", "quiet"]) {
        const logDirectory = path.join(harness.dir, "pods", name);
        await mkdir(logDirectory, { recursive: true });
        const config: PodSandboxConfig = {
          metadata: { name, uid: `uid-${name}`, namespace: "default", attempt: 0 },
          hostname: name,
          logDirectory,
        };
        const podId = await cri.runPodSandbox(config, HANDLER);
        const command =
          name === "counter"
            ? ["sh", "-c", "i=0; while true; do echo line-$i; i=$((i+1)); usleep 50000; done"]
            : ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"];
        const id = await cri.createContainer(
          podId,
          { metadata: { name: "main" }, image: { image: IMAGE }, command, logPath: "main.log" },
          config,
        );
        await cri.startContainer(id);
        pods.push({ podId, id, logDirectory, config });
      }
      const counterLog = path.join(pods[0]?.logDirectory as string, "main.log");
      const lastLine = async () => {
        const text = await readFile(counterLog, "utf8").catch(() => "");
        const numbers = [...text.matchAll(/^\S+ stdout F line-(\d+)$/gm)].map((m) => Number(m[1]));
        return numbers.length ? Math.max(...numbers) : -1;
      };
      await waitUntil("the counter's first lines", 60_000, async () =>
        (await lastLine()) >= 5 ? true : undefined,
      );
      const vmms = await processesMatching(path.join(stateDir, "vm"));
      assert.equal(vmms.length, 2, "one VM per pod");
      const [daemon] = await daemonPids(stateDir);
      assert.ok(daemon, "a shim daemon serves the pods");
      // Port-forward helpers (one per pod) die with the daemon; the new one starts its own.
      const podsDir = path.join(stateDir, "pods");
      const helpers = await processesMatching(podsDir);
      assert.equal(helpers.length, 2, "one cloudhv-portfwd per pod");

      process.kill(daemon, "SIGKILL");
      const killedAt = Date.now();
      const successor = await waitUntil("a new daemon", 30_000, async () =>
        (await daemonPids(stateDir)).find((pid) => pid !== daemon),
      );
      // It serves once it answers: an exec through CRI goes containerd → front → new daemon.
      const quiet = pods[1];
      assert.ok(quiet);
      const exec = await cri.execSync(quiet.id, ["sh", "-c", "echo alive; exit 3"]);
      const takeoverMs = Date.now() - killedAt;
      assert.equal(exec.stdout.trim(), "alive");
      assert.equal(exec.exitCode, 3);
      assert.notEqual(successor, daemon);
      assert.deepEqual(
        (await processesMatching(path.join(stateDir, "vm"))).sort(),
        [...vmms].sort(),
        "the same VMMs still run",
      );
      // The workload kept counting and its output reaches the CRI log again.
      const before = await lastLine();
      await waitUntil("the counter's output after the takeover", 60_000, async () =>
        (await lastLine()) >= before + 20 ? true : undefined,
      );
      for (const pod of pods) {
        assert.equal(
          (await cri.containerStatus(pod.id)).state,
          "CONTAINER_RUNNING",
          `${pod.config.metadata.name} runs`,
        );
        const metrics = await harness.containerd.ctr(["-n", "k8s.io", "task", "metrics", pod.id]);
        assert.match(metrics.stdout, /memory/i, `ctr task metrics ${pod.id} reports the guest's figures`);
      }
      process.stdout.write(`# takeover: exec answered ${takeoverMs} ms after the kill\n`);
      const newHelpers = await waitUntil("the new daemon's port-forward helpers", 30_000, async () => {
        const now = await processesMatching(podsDir);
        return now.length === 2 && now.every((pid) => !helpers.includes(pid)) ? now : undefined;
      });
      assert.equal(newHelpers.length, 2);
      const forwarded = await portForwardExchange(
        await cri.portForward(quiet.podId, [8080]),
        8080,
        Buffer.from("GET /cloudhv-image HTTP/1.0\r\n\r\n"),
      );
      assert.ok(
        forwarded.data.toString().trimEnd().endsWith(IMAGE),
        `port-forward after the takeover: ${forwarded.data}`,
      );

      for (const pod of pods) {
        await cri.stopContainer(pod.id, 2);
        assert.equal((await cri.containerStatus(pod.id)).state, "CONTAINER_EXITED");
        await cri.removeContainer(pod.id);
        await cri.stopPodSandbox(pod.podId);
        await cri.removePodSandbox(pod.podId);
      }
      assert.deepEqual(await settled(() => processesMatching(path.join(stateDir, "vm"))), [], "no VMM left");
      assert.deepEqual(await settled(() => entriesOf(path.join(stateDir, "vm"))), [], "no VM state left");
      assert.deepEqual(await entriesSettled(path.join(stateDir, "records")), [], "no pod record left");
      assert.deepEqual(await settled(() => processesMatching(podsDir)), [], "no cloudhv-portfwd left");
    });

    it("a daemon killed mid-create: the next one undoes the half-built pod, the re-sent create runs it, nothing is left", async (t) => {
      const stateDir = harness.runtime.stateDir;
      const creating = path.join(stateDir, "creating");
      const name = "midcreate";
      const logDirectory = path.join(harness.dir, "pods", name);
      await mkdir(logDirectory, { recursive: true });
      const config: PodSandboxConfig = {
        metadata: { name, uid: `uid-${name}`, namespace: "default", attempt: 0 },
        hostname: name,
        logDirectory,
      };
      const started = Date.now();
      const running = cri.runPodSandbox(config, HANDLER).then(
        (id) => ({ id }),
        (err: Error) => ({ err }),
      );
      // The create's own note (state/provisional.ts), once its QEMU runs: the moment to kill.
      type Note = {
        vmId: string;
        vmm?: { process?: { pid: number; startTime: number } };
        cgroup?: { dirs: string[]; created: string[] };
        scratch?: string[];
        network?: { netnsPath: string };
      };
      const note = await waitUntil("the create's QEMU", 120_000, async () => {
        for (const file of await entriesOf(creating)) {
          const text = await readFile(path.join(creating, file), "utf8").catch(() => "");
          const parsed = text ? (JSON.parse(text) as Note) : undefined;
          if (parsed?.vmm?.process) return parsed;
        }
        return undefined;
      });
      const vmm = note.vmm?.process as { pid: number; startTime: number };
      // Should the test fail, the dead create's QEMU still goes (the harness does not own it).
      t.after(async () => {
        if ((await liveStartTime(vmm.pid)) === vmm.startTime) process.kill(vmm.pid, "SIGKILL");
      });
      const [daemon] = await daemonPids(stateDir);
      assert.ok(daemon, "a shim daemon runs the create");
      process.kill(daemon, "SIGKILL");
      const killedAfterMs = Date.now() - started;
      const result = await running;
      process.stdout.write(
        `# mid-create kill: ${killedAfterMs} ms into RunPodSandbox; the re-sent create ${"id" in result ? "ran the pod" : `failed: ${result.err.message}`} ${Date.now() - started} ms in\n`,
      );
      let logs = "";
      for (const file of (await entriesOf(harness.runtime.logDir)).filter((n) => n.endsWith(".log")))
        logs += await readFile(path.join(harness.runtime.logDir, file), "utf8");
      const undid = logs
        .split("\n")
        .find((line) => line.includes("undid a create a killed daemon left in flight"));
      assert.ok(undid, "the new daemon undid the dead create");
      process.stdout.write(`# undone: ${JSON.stringify((JSON.parse(undid) as { undid?: unknown }).undid)}\n`);
      assert.notEqual(await liveStartTime(vmm.pid), vmm.startTime, "the dead create's QEMU was stopped");
      assert.ok(
        "id" in result,
        `the re-sent RunPodSandbox runs the pod: ${"err" in result ? result.err.message : ""}`,
      );
      const podId = result.id;
      // Should the test fail, its pod goes too: the next cases count every QEMU.
      t.after(async () => {
        await cri.stopPodSandbox(podId).catch(() => undefined);
        await cri.removePodSandbox(podId).catch(() => undefined);
      });
      const id = await cri.createContainer(
        podId,
        { metadata: { name: "main" }, image: { image: IMAGE }, command: ["sleep", "3600"] },
        config,
      );
      await cri.startContainer(id);
      assert.equal((await cri.execSync(id, ["echo", "alive"])).stdout.trim(), "alive");
      assert.equal((await processesMatching(path.join(stateDir, "vm"))).length, 1, "one QEMU: the pod's");
      await cri.stopContainer(id, 2);
      await cri.removeContainer(id);
      await cri.stopPodSandbox(podId);
      await cri.removePodSandbox(podId);
      assert.deepEqual(await settled(() => processesMatching(path.join(stateDir, "vm"))), [], "no VMM left");
      assert.deepEqual(await settled(() => processesMatching(note.vmId)), [], "no process names the VM");
      assert.deepEqual(await settled(() => entriesOf(path.join(stateDir, "vm"))), [], "no VM state left");
      assert.deepEqual(await entriesSettled(path.join(stateDir, "records")), [], "no pod record left");
      assert.deepEqual(await settled(() => entriesOf(creating)), [], "no provisional record left");
      assert.deepEqual(await settled(() => entriesOf(path.join(stateDir, "pods"))), [], "no pod dir left");
      for (const dir of note.cgroup?.created ?? [])
        assert.deepEqual(await settled(() => entriesOf(dir)), [], `the create's cgroup ${dir} is gone`);
      for (const file of note.scratch ?? [])
        assert.equal(await readFile(file).catch(() => undefined), undefined, `scratch ${file} is gone`);
      if (note.network) {
        const links = await exec(["nsenter", `--net=${note.network.netnsPath}`, "--", "ip", "-o", "link"]);
        assert.doesNotMatch(links.stdout, /tap0_chv/, "no TAP of ours in the pod's netns (or no netns)");
      }
    });

    it("a daemon killed right after an app container's delete replied: its disks still leaving are finished by the next one, nothing is left", async () => {
      const stateDir = harness.runtime.stateDir;
      const { podId, ids, config } = await startPod(cri, harness, "afterdel");
      const [first] = ids as [string];
      type Rec = {
        pod: { members: Array<{ id: string; rootfs: { scratchPath: string } }>; retiring?: unknown[] };
      };
      const records = async (): Promise<Rec[]> => {
        const dir = path.join(stateDir, "records");
        const files = (await entriesOf(dir)).filter((n) => n.endsWith(".json"));
        return Promise.all(
          files.map(async (f) => JSON.parse(await readFile(path.join(dir, f), "utf8")) as Rec),
        );
      };
      const scratch = (await records()).flatMap((r) => r.pod.members).find((m) => m.id === first)
        ?.rootfs.scratchPath;
      assert.ok(scratch, "the container's scratch disk is recorded");
      // The disks hot-plugged into the pod's VM: QEMU's hard-linked files, or its bind-mounted
      // ones where they cannot be linked (vmm/qemu.ts).
      const plugged = async () => {
        const files: string[] = [];
        for (const vm of await entriesOf(path.join(stateDir, "vm")))
          for (const dir of [
            path.join(stateDir, "vm", vm, "vmm"),
            path.join(harness.runtime.cacheDir, ".vmm-disks", vm),
          ])
            files.push(...(await entriesOf(dir)).filter((f) => f.startsWith("disk-")));
        return files.sort();
      };
      const before = await plugged();
      assert.ok(before.length >= 2, `the container's disks are plugged: ${before.join(", ")}`);
      // CRI deletes the task as the container exits, within StopContainer: the reply has come.
      await cri.stopContainer(first, 2);
      const [daemon] = await daemonPids(stateDir);
      assert.ok(daemon, "a shim daemon served the delete");
      process.kill(daemon, "SIGKILL");
      const retiring = (await records()).some((r) => (r.pod.retiring?.length ?? 0) > 0);
      process.stdout.write(
        `# killed with the deleted container's disks ${retiring ? "still in the record" : "already gone"}\n`,
      );
      await cri.removeContainer(first);
      // A new container joins the pod (a new daemon takes over); the old one's scratch goes.
      const next = await cri.createContainer(
        podId,
        { metadata: { name: "next" }, image: { image: IMAGE }, command: ["sleep", "3600"] },
        config,
      );
      await cri.startContainer(next);
      assert.equal((await cri.execSync(next, ["echo", "alive"])).stdout.trim(), "alive");
      // Its disks left the VM (its scratch file goes with its snapshot, in the writable layer):
      // as many as before, the new container's instead.
      await waitUntil("the deleted container's disks unplugged", 60_000, async () => {
        const now = await plugged();
        return now.length === before.length && now.join() !== before.join() ? true : undefined;
      });
      await waitUntil("the record drops the retiring disks", 60_000, async () =>
        (await records()).every((r) => r.pod.retiring === undefined) ? true : undefined,
      );
      await cri.stopContainer(next, 2);
      await cri.removeContainer(next);
      await cri.stopPodSandbox(podId);
      await cri.removePodSandbox(podId);
      assert.deepEqual(await settled(() => processesMatching(path.join(stateDir, "vm"))), [], "no VMM left");
      assert.deepEqual(await settled(() => entriesOf(path.join(stateDir, "vm"))), [], "no VM state left");
      assert.deepEqual(await entriesSettled(path.join(stateDir, "records")), [], "no pod record left");
    });

    it("a daemon killed mid-join: the next one takes the join's disks back, the re-sent create runs the container, nothing is left", async () => {
      const stateDir = harness.runtime.stateDir;
      const creating = path.join(stateDir, "creating");
      const name = "midjoin";
      const logDirectory = path.join(harness.dir, "pods", name);
      await mkdir(logDirectory, { recursive: true });
      const config: PodSandboxConfig = {
        metadata: { name, uid: `uid-${name}`, namespace: "default", attempt: 0 },
        hostname: name,
        logDirectory,
      };
      const podId = await cri.runPodSandbox(config, HANDLER);
      const started = Date.now();
      // CRI creates the task (the join) at StartContainer.
      const id = await cri.createContainer(
        podId,
        { metadata: { name: "joiner" }, image: { image: IMAGE }, command: ["sleep", "3600"] },
        config,
      );
      const starting = cri.startContainer(id).then(
        () => ({ id }),
        (err: Error) => ({ err }),
      );
      // The join's own note, once both its disks are on their way into the VM: the moment to kill.
      type Note = { container?: string; disks?: string[]; scratch?: string[] };
      const seen = new Set<string>();
      let note: Note | undefined;
      for (const deadline = Date.now() + 120_000; !note && Date.now() < deadline; ) {
        for (const file of await entriesOf(creating)) {
          const text = await readFile(path.join(creating, file), "utf8").catch(() => "");
          const parsed = text ? (JSON.parse(text) as Note) : undefined;
          if (parsed) seen.add(`${file}:${parsed.disks?.length ?? 0}`);
          if (parsed?.container && (parsed.disks?.length ?? 0) >= 2) note = parsed;
        }
        await new Promise((r) => setTimeout(r, 10));
      }
      assert.ok(
        note,
        `the join's disks noted (seen: ${[...seen].join(", ")}; create: ${JSON.stringify(await Promise.race([starting, Promise.resolve("pending")]))})`,
      );
      const [daemon] = await daemonPids(stateDir);
      assert.ok(daemon, "a shim daemon runs the join");
      process.kill(daemon, "SIGKILL");
      const killedAfterMs = Date.now() - started;
      const result = await starting;
      process.stdout.write(
        `# mid-join kill: ${killedAfterMs} ms into StartContainer; the re-sent create ${"id" in result ? "ran the container" : `failed: ${result.err.message}`} ${Date.now() - started} ms in\n`,
      );
      let logs = "";
      for (const file of (await entriesOf(harness.runtime.logDir)).filter((n) => n.endsWith(".log")))
        logs += await readFile(path.join(harness.runtime.logDir, file), "utf8");
      const undid = logs
        .split("\n")
        .find((line) => line.includes("undid a join a killed daemon left in flight"));
      assert.ok(undid, "the new daemon undid the dead join");
      process.stdout.write(`# undone: ${JSON.stringify((JSON.parse(undid) as { undid?: unknown }).undid)}\n`);
      const ids: string[] = [];
      try {
        ids.push(id);
        assert.ok(
          "id" in result,
          `the re-sent task create runs the container: ${"err" in result ? result.err.message : ""}`,
        );
        assert.equal((await cri.execSync(id, ["echo", "alive"])).stdout.trim(), "alive");
        assert.equal(
          (await processesMatching(path.join(stateDir, "vm"))).length,
          1,
          "still one QEMU: the pod's",
        );
      } finally {
        for (const id of ids) {
          await cri.stopContainer(id, 2);
          await cri.removeContainer(id);
        }
        await cri.stopPodSandbox(podId);
        await cri.removePodSandbox(podId);
      }
      assert.deepEqual(await settled(() => processesMatching(path.join(stateDir, "vm"))), [], "no VMM left");
      assert.deepEqual(await settled(() => entriesOf(path.join(stateDir, "vm"))), [], "no VM state left");
      assert.deepEqual(await entriesSettled(path.join(stateDir, "records")), [], "no pod record left");
      assert.deepEqual(await settled(() => entriesOf(creating)), [], "no provisional record left");
      for (const file of note.scratch ?? [])
        assert.equal(await readFile(file).catch(() => undefined), undefined, `scratch ${file} is gone`);
    });

    for (const [gone, early] of [
      [false, false],
      [true, false],
      [true, true],
    ] as const)
      it(
        early
          ? "a daemon killed mid-join as soon as it started the pod's virtiofsd, that virtiofsd killed too: the next one ends it and unplugs fs0 if plugged, the re-sent create starts its own and sees the volume, nothing is left"
          : gone
            ? "a daemon killed mid-join after it started the pod's virtiofsd, that virtiofsd killed too: the next one unplugs fs0 (the re-sent create starts its own) or, once the guest may have mounted it, stops the pod with the reason; nothing is left"
            : "a daemon killed mid-join after it started the pod's virtiofsd: the next one keeps it as the pod's share, the re-sent create sees the volume, nothing is left",
        async (t) => {
          const stateDir = harness.runtime.stateDir;
          const creating = path.join(stateDir, "creating");
          const name = early ? "midjoinfsearly" : gone ? "midjoinfsgone" : "midjoinfs";
          const logDirectory = path.join(harness.dir, "pods", name);
          await mkdir(logDirectory, { recursive: true });
          const volume = await mkdtemp(path.join(harness.dir, "midjoin-volume-"));
          t.after(() => rm(volume, { recursive: true, force: true }));
          await writeFile(path.join(volume, "hello"), "from the host\n");
          const config: PodSandboxConfig = {
            metadata: { name, uid: `uid-${name}`, namespace: "default", attempt: 0 },
            hostname: name,
            logDirectory,
          };
          // A CRI sandbox boots without virtio-fs: this container's join starts the pod's virtiofsd.
          const podId = await cri.runPodSandbox(config, HANDLER);
          const started = Date.now();
          const id = await cri.createContainer(
            podId,
            {
              metadata: { name: "reader" },
              image: { image: IMAGE },
              command: ["sleep", "3600"],
              mounts: [{ containerPath: "/data", hostPath: volume }],
            },
            config,
          );
          const starting = cri.startContainer(id).then(
            () => ({ id }),
            (err: Error) => ({ err }),
          );
          // The join's note names its virtiofsd once it runs; its bind in the shared dir comes once
          // fs0 is plugged: the moment to kill (the device and virtiofsd are both there).
          type Note = {
            vmId: string;
            container?: string;
            share?: { process?: { pid: number; startTime: number } };
          };
          const [daemon] = await daemonPids(stateDir);
          assert.ok(daemon, "a shim daemon runs the join");
          const probe = async () => {
            for (const file of await entriesOf(creating)) {
              const text = await readFile(path.join(creating, file), "utf8").catch(() => "");
              const parsed = text ? (JSON.parse(text) as Note) : undefined;
              if (!parsed?.container || !parsed.share?.process) continue;
              const shared = path.join(stateDir, "pods", parsed.vmId, "shared");
              // Early: before the guest can have mounted fs0 (the join has no bind yet).
              if (early || (await entriesOf(shared)).length > 0) return parsed;
            }
            return undefined;
          };
          let note: Note | undefined;
          // Early: polled without pause, so the kill lands before the join reaches its guest.
          for (const deadline = Date.now() + 120_000; !note && Date.now() < deadline; ) {
            note = await probe();
            if (!note && !early) await new Promise((r) => setTimeout(r, 10));
          }
          assert.ok(note, "the join's virtiofsd noted");
          const virtiofsd = note.share?.process as { pid: number; startTime: number };
          const socket = path.join(stateDir, "pods", note.vmId, "virtiofsd.sock");
          // At once (no /proc scan first: the join would complete meanwhile), in one tick: the
          // daemon cannot see its virtiofsd go (its sandbox child follows it) before it dies too.
          if (gone) process.kill(virtiofsd.pid, "SIGKILL");
          process.kill(daemon, "SIGKILL");
          const killedAfterMs = Date.now() - started;
          const result = await starting;
          try {
            process.stdout.write(
              `# mid-join (virtiofsd${gone ? " gone" : ""}) kill: ${killedAfterMs} ms into StartContainer; the re-sent create ${"id" in result ? "ran the container" : `failed: ${result.err.message}`} ${Date.now() - started} ms in\n`,
            );
            let logs = "";
            for (const file of (await entriesOf(harness.runtime.logDir)).filter((n) => n.endsWith(".log")))
              logs += await readFile(path.join(harness.runtime.logDir, file), "utf8");
            const undid = logs
              .split("\n")
              .find(
                (line) => line.includes("undid a join a killed daemon left in flight") && line.includes(id),
              );
            assert.ok(undid, "the new daemon undid the dead join");
            const did = (JSON.parse(undid) as { undid?: string[] }).undid ?? [];
            process.stdout.write(`# undone: ${JSON.stringify(did)}\n`);
            // Virtiofsd gone: fs0 is unplugged when the join had not reached its guest create (the
            // guest never mounted it); past that, the pod is stopped with the reason, and the
            // re-sent create fails at once instead of on every retry.
            const failed = did.find((d) => d.startsWith("stopped the VM: the pod's virtio-fs device fs0"));
            if (gone && failed) {
              process.stdout.write(`# the pod was stopped: ${failed}\n`);
              assert.ok("err" in result, "the re-sent create fails: the pod's VM is stopped");
              assert.deepEqual(
                await settled(() => processesMatching(path.join(stateDir, "vm"))),
                [],
                "the pod's QEMU is stopped",
              );
            } else {
              if (early)
                assert.ok(
                  did.includes("stopped the dead join's virtiofsd"),
                  "the dead join's virtiofsd ended",
                );
              else if (gone)
                assert.ok(
                  did.includes("unplugged fs0 (its virtiofsd was gone)"),
                  "the dead join's fs0 was unplugged",
                );
              else
                assert.ok(
                  did.some((d) => d.startsWith(`kept virtiofsd ${virtiofsd.pid}`)),
                  "the dead join's virtiofsd became the pod's share",
                );
              assert.ok(
                "id" in result,
                `the re-sent task create runs the container: ${"err" in result ? result.err.message : ""}`,
              );
              assert.equal((await cri.execSync(id, ["cat", "/data/hello"])).stdout, "from the host\n");
              // virtiofsd and its sandbox (its child): the kept one, no second one started.
              for (const pid of await processesMatching(socket)) {
                const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
                const parent = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
                if (!gone)
                  assert.ok(
                    pid === virtiofsd.pid || parent === virtiofsd.pid,
                    `virtiofsd ${pid} is the kept one's`,
                  );
                else assert.notEqual(pid, virtiofsd.pid, "a new virtiofsd");
              }
              assert.equal(
                (await processesMatching(path.join(stateDir, "vm"))).length,
                1,
                "still one QEMU: the pod's",
              );
            }
          } finally {
            await cri.stopContainer(id, 2).catch(() => {});
            await cri.removeContainer(id).catch(() => {});
            await cri.stopPodSandbox(podId);
            await cri.removePodSandbox(podId);
          }
          assert.deepEqual(await settled(() => processesMatching(socket)), [], "no virtiofsd left");
          assert.deepEqual(
            await settled(() => processesMatching(path.join(stateDir, "vm"))),
            [],
            "no VMM left",
          );
          assert.deepEqual(
            await settled(() => entriesOf(path.join(stateDir, "pods"))),
            [],
            "no pod dir (binds, pod namespace) left",
          );
          const mounts = await readFile("/proc/self/mountinfo", "utf8");
          assert.ok(!mounts.includes(path.join(stateDir, "pods", note.vmId)), "no mount of the pod's left");
          assert.deepEqual(await settled(() => entriesOf(path.join(stateDir, "vm"))), [], "no VM state left");
          assert.deepEqual(await entriesSettled(path.join(stateDir, "records")), [], "no pod record left");
          assert.deepEqual(await settled(() => entriesOf(creating)), [], "no provisional record left");
          assert.equal(
            await readFile(path.join(volume, "hello"), "utf8"),
            "from the host\n",
            "the volume's data is intact",
          );
        },
      );

    it("a guest kernel panic ends the task at once (137), with the panic in the daemon's log", async () => {
      const stateDir = harness.runtime.stateDir;
      const started = Date.now();
      // Privileged: crun leaves /proc/sysrq-trigger writable (it is read-only otherwise).
      const run = await exec(
        [
          ...["ctr", "--address", harness.containerd.address, "-n", "k8s.io", "run", "--rm", "--privileged"],
          ...["--runtime", "io.containerd.cloudhv.v1", IMAGE, "panic-1"],
          ...["sh", "-c", "sleep 1; echo c > /proc/sysrq-trigger; sleep 600"],
        ],
        { timeoutMs: 120_000 },
      );
      assert.equal(run.code, 137, `the task is killed with its VM: ${run.stderr}`);
      assert.ok(Date.now() - started < 60_000, "not after some timeout");
      let logs = "";
      // The daemon logs to log_dir (the harness's own), its front next to its socket.
      for (const dir of [stateDir, path.join(stateDir, "backend"), path.join(harness.dir, "log")])
        for (const name of (await readdir(dir).catch(() => [] as string[])).filter((n) => n.endsWith(".log")))
          logs += await readFile(path.join(dir, name), "utf8");
      assert.match(logs, /the guest kernel panicked \(Kernel panic - not syncing: sysrq triggered crash\)/);
      assert.deepEqual(await settled(() => processesMatching(path.join(stateDir, "vm"))), [], "no VMM left");
    });

    it("a container added to a pod after a runtime config change joins the pod's VM (routed by sandbox)", async () => {
      const logDirectory = path.join(harness.dir, "pods", "routed");
      await mkdir(logDirectory, { recursive: true });
      const config: PodSandboxConfig = {
        metadata: { name: "routed", uid: "uid-routed", namespace: "default", attempt: 0 },
        hostname: "routed",
        logDirectory,
      };
      const podId = await cri.runPodSandbox(config, HANDLER);
      const first = await cri.createContainer(
        podId,
        {
          metadata: { name: "first" },
          image: { image: IMAGE },
          command: ["sleep", "3600"],
          logPath: "first.log",
        },
        config,
      );
      await cri.startContainer(first);
      const original = await readFile(harness.runtime.configPath, "utf8");
      const ids = [first];
      try {
        const changed = { ...(JSON.parse(original) as Record<string, unknown>), default_memory_mb: 384 };
        await writeFile(harness.runtime.configPath, JSON.stringify(changed, null, 2));
        const second = await cri.createContainer(
          podId,
          {
            metadata: { name: "second" },
            image: { image: IMAGE },
            command: ["sh", "-c", "grep MemTotal /proc/meminfo; sleep 3600"],
            logPath: "second.log",
          },
          config,
        );
        ids.push(second);
        await cri.startContainer(second);
        assert.equal((await cri.containerStatus(second)).state, "CONTAINER_RUNNING");
        // In the pod's own VM (the old size), not a VM of the new config's size.
        const mem = await cri.execSync(second, ["sh", "-c", "grep MemTotal /proc/meminfo"]);
        const memKiB = Number(/(\d+) kB/.exec(mem.stdout)?.[1]);
        assert.ok(memKiB > 0 && memKiB < 300 * 1024, `the container runs in the pod's VM: ${mem.stdout}`);
        assert.equal(
          (await processesMatching(path.join(harness.runtime.stateDir, "vm"))).length,
          1,
          "still one VM for the pod",
        );
      } finally {
        await writeFile(harness.runtime.configPath, original);
        for (const id of ids.reverse()) {
          await cri.stopContainer(id, 2);
          await cri.removeContainer(id);
        }
        await cri.stopPodSandbox(podId);
        await cri.removePodSandbox(podId);
      }
    });
    it("a new shim build installed: a new container in an old pod joins its VM, old pods keep serving, the new build's daemon serves new pods", async () => {
      // As the installer upgrades: the new build in a directory of its own (its daemon entry,
      // hence its build id, differs), and the shim containerd runs now points there.
      const build = await mkdtemp(path.join(REPO_ROOT, "build", "shim-upgrade-"));
      const shimLink = path.join(harness.runtime.dir, "bin", "containerd-shim-cloudhv-v1");
      const pods: Array<{ podId: string; ids: string[] }> = [];
      try {
        const old = await startPod(cri, harness, "old-build");
        pods.push(old);
        const { daemons: oldDaemons } = await shimProcesses(harness.containerd.ttrpcAddress);
        assert.equal(oldDaemons.length, 1, "one daemon (this build's) serves the old pod");
        const vmsBefore = (await processesMatching(path.join(harness.runtime.stateDir, "vm"))).length;
        await cp(path.join(REPO_ROOT, "shim", "dist", "src"), path.join(build, "shim", "dist", "src"), {
          recursive: true,
        });
        await cp(path.join(REPO_ROOT, "shim", "proto"), path.join(build, "shim", "proto"), {
          recursive: true,
        });
        await cp(path.join(REPO_ROOT, "shim", "package.json"), path.join(build, "shim", "package.json"));
        await rm(shimLink);
        await symlink(path.join(build, "shim", "dist", "src", "bin", "shim.js"), shimLink);

        // containerd 1.6 runs the new build's `start` for this container: routed to the pod's daemon.
        const second = await cri.createContainer(
          old.podId,
          { metadata: { name: "second" }, image: { image: IMAGE }, command: ["sleep", "3600"] },
          old.config,
        );
        old.ids.push(second);
        await cri.startContainer(second);
        assert.equal((await cri.containerStatus(second)).state, "CONTAINER_RUNNING");
        const hostname = await cri.execSync(second, ["hostname"]);
        assert.equal(hostname.stdout.trim(), "old-build", "the new container runs in the old pod's VM");
        assert.equal(
          (await processesMatching(path.join(harness.runtime.stateDir, "vm"))).length,
          vmsBefore,
          "no VM was added for it",
        );
        // The old pod's first container still answers.
        assert.equal((await cri.execSync(old.ids[0] as string, ["echo", "old"])).stdout.trim(), "old");

        const fresh = await startPod(cri, harness, "new-build");
        pods.push(fresh);
        assert.equal((await cri.execSync(fresh.ids[0] as string, ["echo", "new"])).stdout.trim(), "new");
        const { daemons } = await shimProcesses(harness.containerd.ttrpcAddress);
        const fromNewBuild: number[] = [];
        for (const pid of daemons)
          if ((await readFile(`/proc/${pid}/cmdline`, "utf8")).includes(build)) fromNewBuild.push(pid);
        assert.equal(fromNewBuild.length, 1, "a daemon of the new build serves the new pod");
        assert.ok(
          oldDaemons.every((pid) => daemons.includes(pid)),
          "the old build's daemon still runs (it serves the old pod)",
        );
        assert.equal(daemons.length, oldDaemons.length + 1);
      } finally {
        await rm(shimLink, { force: true });
        await symlink(SHIM_ENTRY, shimLink);
        for (const pod of pods.reverse()) {
          for (const id of [...pod.ids].reverse()) {
            await cri.stopContainer(id, 2);
            await cri.removeContainer(id);
          }
          await cri.stopPodSandbox(pod.podId);
          await cri.removePodSandbox(pod.podId);
        }
        // The new build's daemon and front end when the harness stops its shims; its files now.
        const { fronts, daemons } = await shimProcesses(harness.containerd.ttrpcAddress);
        for (const pid of [...fronts, ...daemons]) {
          const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
          if (cmdline.includes(build)) process.kill(pid, "SIGTERM");
        }
        await waitUntil("the new build's shim processes end", 30_000, async () => {
          const left = await processesMatching(build);
          return left.length === 0 ? true : undefined;
        });
        await rm(build, { recursive: true, force: true });
      }
      assert.deepEqual(
        await settled(() => processesMatching(path.join(harness.runtime.stateDir, "vm"))),
        [],
        "no VMM left",
      );
    });
  });
