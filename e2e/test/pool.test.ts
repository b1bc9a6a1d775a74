// The warm pool (shim/src/pod/pool.ts) through CRI on QEMU: pods take pre-booted VMs, each VM
// serves one pod only (also across a daemon restart), a pod from the pool has exactly its own
// NIC, disks and volumes, the pool refills, and nothing is left once the harness stops.
import assert from "node:assert/strict";
import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { exec } from "@cloudhv/shim";
import type { CriClient, PodSandboxConfig } from "../src/cri/client.js";
import { HANDLER, type Harness, startHarness } from "../src/harness.js";
import { hypervisorSuites } from "../src/hypervisors.js";
import { entriesOf, entriesSettled, liveStartTime, processesMatching, settled } from "../src/leaks.js";

const IMAGE = "docker.io/cloudhv-test/busybox:pool";
const POOL = 2;

async function waitUntil<T>(what: string, ms: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) assert.fail(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The live daemon's pid (its lock: "pid startTime", bin/daemon.ts). */
async function daemonPid(stateDir: string): Promise<number | undefined> {
  const dir = path.join(stateDir, "backend");
  for (const name of await entriesOf(dir)) {
    if (!/^shim-[0-9a-f]+\.sock\.lock$/.test(name)) continue;
    const pid = Number((await readFile(path.join(dir, name), "utf8").catch(() => "")).trim().split(" ")[0]);
    if (pid > 0 && (await liveStartTime(pid)) !== undefined) return pid;
  }
  return undefined;
}

interface PoolStatus {
  pid: number;
  ready: number;
  booting: number;
  claimed: number;
  coldBoots: number;
  idleRssBytes: number;
}

async function poolStatus(stateDir: string): Promise<PoolStatus | undefined> {
  const dir = path.join(stateDir, "pool");
  for (const name of await entriesOf(dir)) {
    if (!name.endsWith(".json")) continue;
    const doc = await readFile(path.join(dir, name), "utf8")
      .then((t) => JSON.parse(t) as PoolStatus)
      .catch(() => undefined);
    if (doc && (await liveStartTime(doc.pid)) !== undefined) return doc;
  }
  return undefined;
}

/** The pod's record (state/records.ts): its VM id, VMM pid, NIC. */
async function podRecord(stateDir: string, podId: string) {
  const dir = path.join(stateDir, "records");
  for (const name of await readdir(dir)) {
    const doc = JSON.parse(await readFile(path.join(dir, name), "utf8"));
    if (doc.pod.id === podId)
      return doc.pod as {
        vmId: string;
        vm: { pid: number };
        network: { iface: { mac: string } };
        members: Array<{ rootfs: { rootfsSerial: string; scratchSerial: string } }>;
      };
  }
  assert.fail(`no record for pod ${podId}`);
}

for (const hv of (await hypervisorSuites()).filter((s) => s.name === "qemu"))
  describe(`the warm VM pool on ${hv.name}`, { skip: hv.skip ?? false }, () => {
    let harness: Harness;
    let cri: CriClient;
    let stateDir: string;
    let logDir: string;

    before(async () => {
      harness = await startHarness({
        images: [IMAGE],
        runtimeConfig: {
          ...hv.runtimeConfig,
          pool: POOL,
          enable_annotations: ["default_memory", "default_vcpus"],
        },
      });
      cri = harness.cri;
      stateDir = harness.runtime.stateDir;
      logDir = harness.runtime.logDir;
    });

    after(async () => {
      await harness?.stop();
      // The daemon's SIGTERM stopped its pool: no VM, no pool dir, no status file is left.
      if (stateDir) {
        assert.deepEqual(await processesMatching(path.join(stateDir, "vm")), [], "no VMM left");
        assert.deepEqual(
          (await entriesOf(path.join(stateDir, "vm"))).filter((n) => n.startsWith("pool-")),
          [],
          "no pool VM dir left",
        );
        assert.deepEqual(await entriesOf(path.join(stateDir, "pool")), [], "no pool status left");
      }
    });

    const daemonLog = async () => {
      let text = "";
      for (const name of await entriesOf(logDir)) text += await readFile(path.join(logDir, name), "utf8");
      return text;
    };
    /** VMMs of the ready (unclaimed) pool VMs: their dirs still hold the pool's marker. */
    const poolVmms = async () => {
      const pids: number[] = [];
      for (const name of await entriesOf(path.join(stateDir, "vm"))) {
        const marker = await readFile(path.join(stateDir, "vm", name, "pool.json"), "utf8").catch(() => "");
        if (marker) pids.push((JSON.parse(marker) as { vmm: { pid: number } }).vmm.pid);
      }
      return pids;
    };

    async function runPod(name: string, annotations?: Record<string, string>) {
      const logDirectory = path.join(harness.dir, "pods", name);
      await mkdir(logDirectory, { recursive: true });
      const config: PodSandboxConfig = {
        metadata: { name, uid: `uid-${name}`, namespace: "default", attempt: 0 },
        hostname: name,
        logDirectory,
        ...(annotations ? { annotations } : {}),
      };
      const t0 = performance.now();
      const podId = await cri.runPodSandbox(config, HANDLER);
      const runMs = Math.round(performance.now() - t0);
      const volume = path.join(harness.dir, "vol", name);
      await mkdir(volume, { recursive: true });
      await writeFile(path.join(volume, `only-${name}`), `${name}\n`);
      const id = await cri.createContainer(
        podId,
        {
          metadata: { name: "main" },
          image: { image: IMAGE },
          command: ["sh", "-c", `echo hello-${name}; exec /bin/busybox httpd -f -p 8080 -h /data`],
          mounts: [{ containerPath: "/data", hostPath: volume }],
          logPath: "main.log",
        },
        config,
      );
      await cri.startContainer(id);
      return { name, podId, id, volume, logDirectory, runMs };
    }

    type RunPod = Awaited<ReturnType<typeof runPod>>;

    async function removePod(pod: RunPod) {
      await cri.stopContainer(pod.id, 2);
      await cri.removeContainer(pod.id);
      await cri.stopPodSandbox(pod.podId);
      await cri.removePodSandbox(pod.podId);
    }

    /** What the guest shows: its NICs, eth0's MAC and IPv4, its disks' serials, /data. */
    async function guestView(pod: RunPod) {
      const out = await cri.execSync(pod.id, [
        "sh",
        "-c",
        // Ethernet NICs only (type 1): the kernel's own sit0 and lo are in every guest.
        "for n in /sys/class/net/*; do [ $(cat $n/type) = 1 ] && basename $n; done; echo --; cat /sys/class/net/eth0/address; echo --; ip -o -4 addr show dev eth0; echo --; " +
          "for d in /sys/block/vd*; do echo $(basename $d) $(cat $d/serial 2>/dev/null); done; echo --; ls /data",
      ]);
      assert.equal(out.exitCode, 0, out.stderr);
      const [nics, mac, addr, disks, data] = out.stdout.split("--\n").map((s) => s.trim());
      return {
        nics: (nics ?? "").split(/\s+/).sort(),
        mac: mac ?? "",
        ip: /inet (\d+\.\d+\.\d+\.\d+)\//.exec(addr ?? "")?.[1] ?? "",
        // vda is the guest rootfs; the rest are this pod's containers' disks.
        serials: (disks ?? "")
          .split("\n")
          .map((l) => l.split(" ")[1])
          .filter((s): s is string => !!s && s !== "cloudhv-rootfs")
          .sort(),
        data: (data ?? "").split(/\s+/).filter(Boolean),
      };
    }

    it("pods take pool VMs, each VM serves one pod only (across a daemon restart too), each pod has exactly its own NIC, disks and volumes; the pool refills; nothing leaks", async () => {
      // The daemon starts with the first pod, so that one finds the pool empty and boots cold.
      const first = await runPod("cold");
      const firstRecord = await podRecord(stateDir, first.podId);
      assert.doesNotMatch(firstRecord.vmId, /^pool-/, "the first pod booted cold");
      await waitUntil("the pool full", 180_000, async () => {
        const s = await poolStatus(stateDir);
        return s && s.ready === POOL ? s : undefined;
      });
      const idle = await poolStatus(stateDir);
      process.stdout.write(
        `# pool: ${POOL} ready, idle VMs ${Math.round((idle?.idleRssBytes ?? 0) / 2 ** 20)} MiB resident in all\n`,
      );

      // Every VMM (pid) and VM id any pod ever got: none may serve two pods.
      const given = new Map<string, string>();
      const pidsGiven = new Map<number, string>();
      const note = async (pod: RunPod) => {
        const rec = await podRecord(stateDir, pod.podId);
        assert.ok(
          !given.has(rec.vmId),
          `VM ${rec.vmId} of ${pod.name} already served ${given.get(rec.vmId)}`,
        );
        assert.ok(!pidsGiven.has(rec.vm.pid), `VMM ${rec.vm.pid} of ${pod.name} already served another pod`);
        given.set(rec.vmId, pod.name);
        pidsGiven.set(rec.vm.pid, pod.name);
        return rec;
      };
      await note(first);
      const pods: RunPod[] = [];
      for (const name of ["a", "b"]) {
        const pod = await runPod(name);
        const rec = await note(pod);
        assert.match(rec.vmId, /^pool-/, `pod ${name} took a pool VM`);
        process.stdout.write(`# pool hit: RunPodSandbox ${pod.runMs} ms (cold: ${first.runMs} ms)\n`);
        pods.push(pod);
      }
      assert.equal(
        (await daemonLog()).match(/sandbox VM claimed from the pool/g)?.length,
        2,
        "two hits logged",
      );

      const views = new Map<string, Awaited<ReturnType<typeof guestView>>>();
      for (const pod of pods) {
        const view = await guestView(pod);
        const rec = await podRecord(stateDir, pod.podId);
        const ip = (await cri.podSandboxStatus(pod.podId)).network?.ip ?? "";
        // Exactly one NIC, with the pod's (the veth's) MAC and IP.
        assert.deepEqual(view.nics, ["eth0"], `${pod.name}: one NIC`);
        assert.equal(view.mac, rec.network.iface.mac, `${pod.name}: eth0 has the pod's MAC`);
        assert.equal(view.ip, ip, `${pod.name}: eth0 has the pod's IP`);
        // Exactly its own disks: main's image + scratch, as recorded; the sandbox has none (the
        // guest agent's namespace holder runs it, no pause image).
        const own = rec.members
          .flatMap((m) => [m.rootfs.rootfsSerial, m.rootfs.scratchSerial])
          .filter((s) => s !== "")
          .sort();
        assert.equal(own.length, 2);
        assert.deepEqual(view.serials, own, `${pod.name}: its 2 container disks, no other`);
        // Its own volume only.
        assert.deepEqual(view.data, [`only-${pod.name}`]);
        views.set(pod.name, view);
        // Traffic flows both ways on the CNI bridge.
        const ping = await cri.execSync(pod.id, [
          "/bin/busybox",
          "ping",
          "-c",
          "1",
          "-W",
          "5",
          harness.gateway,
        ]);
        assert.equal(ping.exitCode, 0, `${pod.name} → gateway: ${ping.stdout}${ping.stderr}`);
        // Host → pod: HTTP over TCP to the pod IP, served from the pod's own volume.
        let body = "";
        await waitUntil(`host → ${pod.name} over TCP`, 30_000, async () => {
          body = await fetch(`http://${ip}:8080/only-${pod.name}`, { signal: AbortSignal.timeout(3000) })
            .then((r) => r.text())
            .catch(() => "");
          return body ? true : undefined;
        });
        assert.equal(body.trim(), pod.name);
        // The volume is shared both ways, and CRI logs work.
        const wrote = await cri.execSync(pod.id, ["sh", "-c", `echo from-${pod.name} > /data/out`]);
        assert.equal(wrote.exitCode, 0);
        assert.equal((await readFile(path.join(pod.volume, "out"), "utf8")).trim(), `from-${pod.name}`);
        await waitUntil(`${pod.name}'s log`, 20_000, async () =>
          /stdout F hello-/.test(
            await readFile(path.join(pod.logDirectory, "main.log"), "utf8").catch(() => ""),
          )
            ? true
            : undefined,
        );
      }
      const [va, vb] = [views.get("a"), views.get("b")];
      assert.ok(va && vb);
      assert.deepEqual(
        va.serials.filter((s) => vb.serials.includes(s)),
        [],
        "no disk of one pod is in the other",
      );
      assert.notEqual(va.mac, vb.mac);

      // A pod of a size the pool cannot grow to (not whole 128 MiB blocks above the class) boots
      // cold, the pool is untouched.
      const big = await runPod("big", { "io.katacontainers.config.hypervisor.default_memory": "300" });
      assert.doesNotMatch((await note(big)).vmId, /^pool-/, "another size boots cold");
      assert.match(await daemonLog(), /pod is not of the pool's size: cold boot/);
      await removePod(big);

      // Refilled after the claims, with VMs no pod had.
      await waitUntil("the pool refilled", 180_000, async () =>
        (await poolStatus(stateDir))?.ready === POOL ? true : undefined,
      );
      const ready = await poolVmms();
      assert.equal(ready.length, POOL);
      for (const pid of ready) assert.ok(!pidsGiven.has(pid), `ready pool VMM ${pid} served a pod`);

      // A daemon killed: its successor adopts the pods and stops the unclaimed pool VMs it left.
      const oldPool = await poolVmms();
      const daemon = await daemonPid(stateDir);
      assert.ok(daemon);
      process.kill(daemon, "SIGKILL");
      await waitUntil("a new daemon", 30_000, async () => {
        const pid = await daemonPid(stateDir);
        return pid && pid !== daemon ? pid : undefined;
      });
      const alive = await cri.execSync(pods[0]?.id as string, ["echo", "alive"]);
      assert.equal(alive.stdout.trim(), "alive");
      await waitUntil("the new pool full", 180_000, async () => {
        const s = await poolStatus(stateDir);
        return s && s.pid !== daemon && s.ready === POOL ? true : undefined;
      });
      const now = await processesMatching(path.join(stateDir, "vm"));
      for (const pid of oldPool)
        assert.ok(!now.includes(pid), `the dead daemon's pool VMM ${pid} was stopped`);
      const c = await runPod("c");
      assert.match((await note(c)).vmId, /^pool-/, "after the restart, pod c took a pool VM");
      pods.push(c);

      for (const pod of [first, ...pods]) await removePod(pod);
      // Only the pool's ready VMs run now, none of which served a pod.
      await waitUntil("only the pool's VMs left", 60_000, async () => {
        const left = await processesMatching(path.join(stateDir, "vm"));
        const pool = await poolVmms();
        return left.every((pid) => pool.includes(pid)) && !left.some((pid) => pidsGiven.has(pid))
          ? true
          : undefined;
      });
      assert.deepEqual(await entriesSettled(path.join(stateDir, "records")), [], "no record left");
      const taps = await exec(["ip", "-o", "link", "show", "type", "tun"]);
      assert.doesNotMatch(taps.stdout, /tap0_chv/, "no TAP left on the host");
      assert.deepEqual(
        await settled(() => entriesOf(path.join(stateDir, "pods"))),
        [],
        "no virtiofsd dir left",
      );
    });
    it("a pod bigger than the class takes a pool VM grown by hot-plug (memory and vCPUs) and sees its size inside, as a cold one of that size does", async () => {
      const BIG = {
        "io.katacontainers.config.hypervisor.default_memory": "768",
        "io.katacontainers.config.hypervisor.default_vcpus": "3",
      };
      /** What the pod's container sees: MemTotal (KiB) and nproc. */
      const inside = async (pod: RunPod) => {
        const out = await cri.execSync(pod.id, ["sh", "-c", "grep MemTotal /proc/meminfo; nproc"]);
        assert.equal(out.exitCode, 0, out.stderr);
        const memKiB = Number(/MemTotal:\s+(\d+) kB/.exec(out.stdout)?.[1]);
        return { memKiB, nproc: Number(out.stdout.trim().split("\n").at(-1)) };
      };
      const pods: Array<{ pod: RunPod; hit: boolean }> = [];
      const run = async (name: string) => {
        const pod = await runPod(name, BIG);
        const rec = (await podRecord(stateDir, pod.podId)) as unknown as {
          vmId: string;
          size: { vcpus: number; memoryMb: number };
        };
        // The record (what a later daemon adopts) describes the grown VM.
        assert.deepEqual([rec.size.vcpus, rec.size.memoryMb], [3, 768], `${name}: recorded size`);
        pods.push({ pod, hit: rec.vmId.startsWith("pool-") });
      };
      // With the pool still empty (this case alone starts the daemon) this one boots cold.
      await run("grow-0");
      await waitUntil("the pool full", 180_000, async () =>
        (await poolStatus(stateDir))?.ready === POOL ? true : undefined,
      );
      // The pool is full: both take a pool VM; the third most likely finds it empty.
      for (const name of ["grow-a", "grow-b", "grow-c"]) await run(name);
      assert.ok(pods[1]?.hit && pods[2]?.hit, "a full pool serves the bigger pods");
      assert.match(await daemonLog(), /"growMs"|growMs/);
      const seen = [];
      for (const { pod, hit } of pods)
        seen.push({ name: pod.name, hit, runMs: pod.runMs, ...(await inside(pod)) });
      process.stdout.write(`# bigger pods (768 MiB, 3 vCPUs): ${JSON.stringify(seen)}\n`);
      for (const s of seen) assert.equal(s.nproc, 3, `${s.name} sees 3 CPUs`);
      // Grown or cold, the guest has the same memory (within the kernel's own bookkeeping), more
      // than the class's 256 MiB could give.
      const cold = seen.filter((s) => !s.hit);
      for (const s of seen) {
        assert.ok(s.memKiB > 640 * 1024, `${s.name}: MemTotal ${s.memKiB} KiB`);
        for (const c of cold)
          assert.ok(
            Math.abs(s.memKiB - c.memKiB) < 32 * 1024,
            `${s.name} ${s.memKiB} KiB vs cold ${c.memKiB} KiB`,
          );
      }
      for (const { pod } of pods) await removePod(pod);
      await waitUntil("only the pool's VMs left", 60_000, async () => {
        const left = await processesMatching(path.join(stateDir, "vm"));
        const pool = await poolVmms();
        return left.every((pid) => pool.includes(pid)) ? true : undefined;
      });
    });
  });
