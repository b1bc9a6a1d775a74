// Level 4 (CRI): our CRI client drives containerd's CRI plugin like kubelet does; the pod
// runs with RuntimeClass handler `cloudhv` in one microVM, on CNI's bridge network.
import assert from "node:assert/strict";
import { chown, mkdir, readdir, readFile, rm, rmdir, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { exec } from "@cloudhv/shim";
import type { ContainerConfig, CriClient, NamespaceOptions, PodSandboxConfig } from "../src/cri/client.js";
import { portForwardExchange } from "../src/cri/port-forward.js";
import { watchFrames } from "../src/frame-watch.js";
import { HANDLER, type Harness, startHarness } from "../src/harness.js";
import { hypervisorSuites } from "../src/hypervisors.js";
import { entriesOf, podVmms, poolVmDirs, processesMatching, settled } from "../src/leaks.js";

const IMAGE_A = "docker.io/cloudhv-test/busybox:cri-a";
const IMAGE_B = "docker.io/cloudhv-test/busybox:cri-b";

for (const hv of await hypervisorSuites())
  describe(`a pod through CRI with the cloudhv handler on ${hv.name}`, { skip: hv.skip ?? false }, () => {
    let harness: Harness;
    let cri: CriClient;

    before(async () => {
      harness = await startHarness({
        images: [IMAGE_A, IMAGE_B],
        // Sizing annotations are off by default; the sizing test below uses them.
        runtimeConfig: { ...hv.runtimeConfig, enable_annotations: ["default_vcpus", "default_memory"] },
      });
      cri = harness.cri;
    });

    after(async () => {
      await harness?.stop();
    });

    it("runs two containers from different images in one VM, with CRI logs and ExecSync, and cleans up", async () => {
      assert.match((await cri.version()).runtimeName, /containerd/);
      const logDirectory = path.join(harness.dir, "pods", "p1");
      await mkdir(logDirectory, { recursive: true });
      const sandboxConfig: PodSandboxConfig = {
        metadata: { name: "p1", uid: "uid-p1", namespace: "default", attempt: 0 },
        hostname: "p1",
        logDirectory,
      };
      const podId = await cri.runPodSandbox(sandboxConfig, HANDLER);
      assert.equal((await cri.podSandboxStatus(podId)).state, "SANDBOX_READY");
      assert.equal((await cri.podSandboxStatus(podId)).runtimeHandler, "cloudhv");
      const vms = () => podVmms(harness.runtime.stateDir);
      assert.equal((await vms()).length, 1, "the pod got one VM");

      const ids: string[] = [];
      for (const [name, image] of [
        ["a", IMAGE_A],
        ["b", IMAGE_B],
      ] as const) {
        const id = await cri.createContainer(
          podId,
          {
            metadata: { name },
            image: { image },
            command: [
              "sh",
              "-c",
              `echo hello-from-${name}; cat /etc/cloudhv-image; echo err-${name} >&2; sleep 600`,
            ],
            logPath: `${name}.log`,
          },
          sandboxConfig,
        );
        await cri.startContainer(id);
        ids.push(id);
      }
      assert.equal((await vms()).length, 1, "both containers joined the pod's VM");
      for (const [i, image] of [IMAGE_A, IMAGE_B].entries()) {
        const id = ids[i] as string;
        assert.equal((await cri.containerStatus(id)).state, "CONTAINER_RUNNING");
        const exec = await cri.execSync(id, ["sh", "-c", "cat /etc/cloudhv-image; exit 4"]);
        assert.equal(exec.stdout.trim(), image);
        assert.equal(exec.exitCode, 4);
      }
      // An exec whose program the image lacks fails at once, naming it (kubectl cp probes with
      // `test -d`): containerd's cleanup after the failed start must not wait for an exit.
      const started = Date.now();
      await assert.rejects(cri.execSync(ids[0] as string, ["no-such-tool", "-d", "/tmp"]), /no-such-tool/);
      const failedMs = Date.now() - started;
      assert.ok(failedMs < 20_000, `a failed exec start answered after ${failedMs} ms`);
      assert.equal((await cri.execSync(ids[0] as string, ["true"])).exitCode, 0, "the container execs on");
      // CRI log format: "<RFC3339Nano time> <stdout|stderr> <F|P> <line>".
      const deadline = Date.now() + 20_000;
      let log = "";
      while (!/stderr F err-a/.test(log) && Date.now() < deadline) {
        log = await readFile(path.join(logDirectory, "a.log"), "utf8").catch(() => "");
        await new Promise((r) => setTimeout(r, 200));
      }
      assert.match(log, /^\S+ stdout F hello-from-a$/m);
      assert.match(log, new RegExp(`^\\S+ stdout F ${IMAGE_A.replaceAll(".", "\\.")}$`, "m"));
      assert.match(log, /^\S+ stderr F err-a$/m);

      for (const id of ids) {
        await cri.stopContainer(id, 2);
        assert.equal((await cri.containerStatus(id)).state, "CONTAINER_EXITED");
        await cri.removeContainer(id);
      }
      await cri.stopPodSandbox(podId);
      await cri.removePodSandbox(podId);
      assert.deepEqual(await cri.listPodSandbox(), []);
      assert.deepEqual(await vms(), [], "the pod's VM is gone");
    });

    it("refuses hostNetwork, hostPID and hostIPC pods at once, naming the setting, leaving nothing (containerd leaves those namespaces out of the sandbox spec)", async () => {
      const logDirectory = path.join(harness.dir, "pods", "hostns");
      await mkdir(logDirectory, { recursive: true });
      const config = (name: string, namespaceOptions: NamespaceOptions): PodSandboxConfig => ({
        metadata: { name, uid: `uid-${name}`, namespace: "default" },
        hostname: name,
        logDirectory,
        linux: { securityContext: { namespaceOptions } },
      });
      // What containerd 1.6 writes for such a pod, seen through runc (which honours it).
      // (No hostname: kubelet sets none for a host-network pod, and runc refuses one without a UTS namespace.)
      const { hostname: _, ...runcConfig } = config("hostns-runc", {
        network: "NODE",
        pid: "NODE",
        ipc: "NODE",
      });
      const runcPod = await cri.runPodSandbox(runcConfig, "runc");
      const bundle = path.join(harness.containerd.dir, "state", "io.containerd.runtime.v2.task", "k8s.io");
      const spec = JSON.parse(await readFile(path.join(bundle, runcPod, "config.json"), "utf8"));
      const types = (spec.linux.namespaces as Array<{ type: string }>).map((n) => n.type).sort();
      assert.deepEqual(types, ["mount"], "network, pid, ipc (and uts) are left out");
      await cri.stopPodSandbox(runcPod);
      await cri.removePodSandbox(runcPod);

      const vmDir = path.join(harness.runtime.stateDir, "vm");
      const before = (await cri.listPodSandbox()).length;
      for (const [name, options, setting] of [
        ["hostnet", { network: "NODE" }, "hostNetwork"],
        ["hostpid", { pid: "NODE" }, "hostPID"],
        ["hostipc", { ipc: "NODE" }, "hostIPC"],
      ] as const) {
        const t0 = performance.now();
        await assert.rejects(
          cri.runPodSandbox(config(name, options), HANDLER),
          new RegExp(
            `cloudhv runs each pod in its own VM; ${setting} cannot be honoured.*Remove ${setting}: true`,
          ),
        );
        const ms = performance.now() - t0;
        console.log(`${setting}: RunPodSandbox refused in ${Math.round(ms)} ms`);
        assert.ok(ms < 5000, `${setting} refused in ${Math.round(ms)} ms`);
        assert.deepEqual(await podVmms(harness.runtime.stateDir), [], "no VMM started");
        // With the warm pool on, its VMs (and the uid locks they hold) are no pod's state.
        const pool = await poolVmDirs(harness.runtime.stateDir);
        assert.deepEqual(
          (await entriesOf(vmDir)).filter(
            (n) => !pool.includes(n) && !(pool.length > 0 && n === ".vmm-uids"),
          ),
          [],
          "no VM state left",
        );
        assert.equal((await cri.listPodSandbox()).length, before, "containerd kept no sandbox");
        // The pod network CNI made for a hostPID/hostIPC pod went with it: no veth on our bridge.
        const veths = await exec(["ip", "-o", "link", "show", "master", harness.bridge]);
        assert.equal(veths.stdout.trim(), "", `${setting}: veths left on ${harness.bridge}`);
      }
    });

    it("applies the pod's settings in the guest: hostname, namespaced sysctls, readOnlyRootFilesystem, shareProcessNamespace; a SIGTERM right after start is not lost", async () => {
      const logDirectory = path.join(harness.dir, "pods", "podset");
      await mkdir(logDirectory, { recursive: true });
      const volume = path.join(harness.dir, "podset-volume");
      await mkdir(volume, { recursive: true });
      const sandboxConfig: PodSandboxConfig = {
        metadata: { name: "podset", uid: "uid-podset", namespace: "default" },
        hostname: "podset-host",
        logDirectory,
        linux: {
          securityContext: { namespaceOptions: { pid: "POD" } },
          // net.*: the guest's network namespace is the pod's (containerd 2 adds
          // ip_unprivileged_port_start to every pod by default).
          sysctls: {
            "kernel.shm_rmid_forced": "1",
            "fs.mqueue.msg_max": "17",
            "net.ipv4.ip_unprivileged_port_start": "80",
          },
        },
      };
      const podId = await cri.runPodSandbox(sandboxConfig, HANDLER);
      // The sandbox spec of a pod on its own network: every namespace is there (compare the
      // host-namespace test above).
      const bundle = path.join(harness.containerd.dir, "state", "io.containerd.runtime.v2.task", "k8s.io");
      const sandboxSpec = JSON.parse(await readFile(path.join(bundle, podId, "config.json"), "utf8"));
      const nsTypes = (sandboxSpec.linux.namespaces as Array<{ type: string }>).map((n) => n.type);
      assert.deepEqual([...nsTypes].sort(), ["ipc", "mount", "network", "pid", "uts"]);
      const container = async (name: string, command: string[], linux: ContainerConfig["linux"] = {}) => {
        const id = await cri.createContainer(
          podId,
          {
            metadata: { name },
            image: { image: IMAGE_A },
            command,
            logPath: `${name}.log`,
            linux,
            ...(name === "ro" ? { mounts: [{ containerPath: "/data", hostPath: volume }] } : {}),
          },
          sandboxConfig,
        );
        await cri.startContainer(id);
        return id;
      };
      const shared = { securityContext: { namespaceOptions: { pid: "POD" } } };
      const ro = await container("ro", ["sleep", "600"], {
        securityContext: { readonlyRootfs: true, namespaceOptions: { pid: "POD" } },
      });
      const peer = await container("peer", ["sh", "-c", "exec sleep 601"], shared);
      // CRI's default mode is POD; kubelet asks for CONTAINER unless shareProcessNamespace.
      const ownPid = { securityContext: { namespaceOptions: { pid: "CONTAINER" } } };
      const alone = await container("alone", ["sleep", "602"], ownPid);
      const run = async (id: string, script: string) => {
        const r = await cri.execSync(id, ["sh", "-c", script]);
        return { ...r, out: r.stdout.trim() };
      };

      // The pod's hostname in every container ([Conformance]).
      for (const id of [ro, peer, alone]) assert.equal((await run(id, "hostname")).out, "podset-host");
      // Namespaced sysctls are the pod's (its IPC namespace), in every container.
      for (const id of [peer, alone])
        assert.equal(
          (
            await run(
              id,
              "cat /proc/sys/kernel/shm_rmid_forced /proc/sys/fs/mqueue/msg_max /proc/sys/net/ipv4/ip_unprivileged_port_start",
            )
          ).out,
          "1\n17\n80",
        );
      // readOnlyRootFilesystem: the root refuses writes, the volume takes them.
      const touch = await run(ro, "touch /x");
      assert.notEqual(touch.exitCode, 0);
      assert.match(touch.stderr, /Read-only file system/);
      assert.equal((await run(ro, "echo hi > /data/note && cat /data/note")).out, "hi");
      assert.equal(await readFile(path.join(volume, "note"), "utf8"), "hi\n");
      assert.equal(
        (await run(peer, "touch /x && echo ok")).out,
        "ok",
        "other containers keep a writable root",
      );
      // shareProcessNamespace: the pod's containers see each other's processes; one with its
      // own PID namespace (the default) sees only its own.
      const ps = async (id: string) => (await run(id, "ps -o args")).stdout;
      for (const id of [ro, peer]) {
        const seen = await ps(id);
        assert.match(seen, /sleep 600/, seen);
        assert.match(seen, /sleep 601/, seen);
        assert.doesNotMatch(seen, /sleep 602/, seen);
      }
      const own = await ps(alone);
      assert.match(own, /sleep 602/);
      assert.doesNotMatch(own, /sleep 60[01]/, own);
      // PID 1 of the shared namespace is the pod's namespace holder (no pause image): a
      // container's root, without CAP_SYS_PTRACE, can neither kill it nor look inside it.
      const holder = await run(
        peer,
        "kill -KILL 1; sleep 0.3; tr '\\0' ' ' </proc/1/cmdline; echo; " +
          "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/1/status; " +
          "ls /proc/1/root/ >/dev/null 2>&1 || echo no-root; cat /proc/1/environ >/dev/null 2>&1 || echo no-environ",
      );
      // A pool VM's holder was started ahead of its pod: it took its plan on a pipe.
      assert.match(holder.out, /^\/pause --pause-holder(-pending)? /, holder.out);
      assert.match(holder.out, /CapEff:\s+0{16}\n/, holder.out);
      assert.match(holder.out, /CapBnd:\s+0{16}\n/, holder.out);
      assert.match(holder.out, /NoNewPrivs:\s+1\n/, holder.out);
      assert.match(holder.out, /no-root\nno-environ$/, holder.out);
      assert.equal((await cri.podSandboxStatus(podId)).state, "SANDBOX_READY");

      // Their disks leave the VM's hot-plug ports free for the next ones.
      for (const id of [ro, peer, alone]) {
        await cri.stopContainer(id, 2);
        await cri.removeContainer(id);
      }

      // Stop right after start: the SIGTERM reaches the process (exit 143), not the timeout's SIGKILL.
      for (const [name, command] of [
        // `wait` lets the trap run at once (a shell runs it only after a foreground `sleep`).
        ["trap", ["sh", "-c", 'trap "exit 143" TERM; while :; do sleep 1 & wait $!; done']],
        ["top", ["sh", "-c", "top"]],
      ] as const) {
        // Its own PID namespace, as kubelet's default: the process is that namespace's init.
        const id = await container(name, [...command], ownPid);
        const t0 = performance.now();
        await cri.stopContainer(id, 30);
        const seconds = (performance.now() - t0) / 1000;
        const status = await cri.containerStatus(id);
        console.log(`stop right after start (${name}): exit ${status.exitCode} in ${seconds.toFixed(2)} s`);
        assert.equal(status.state, "CONTAINER_EXITED");
        assert.equal(status.exitCode, 143, `${name}: ${status.reason}`);
        assert.ok(seconds < 3, `${name}: stopped in ${seconds.toFixed(2)} s`);
        await cri.removeContainer(id);
      }
      await cri.stopPodSandbox(podId);
      await cri.removePodSandbox(podId);
      assert.deepEqual(await settled(() => podVmms(harness.runtime.stateDir)), []);
    });

    it("loses no line of a container's output across a containerd restart", async () => {
      const logDirectory = path.join(harness.dir, "pods", "restart");
      await mkdir(logDirectory, { recursive: true });
      const sandboxConfig: PodSandboxConfig = {
        metadata: { name: "restart", uid: "uid-restart", namespace: "default", attempt: 0 },
        hostname: "restart",
        logDirectory,
      };
      const podId = await cri.runPodSandbox(sandboxConfig, HANDLER);
      const id = await cri.createContainer(
        podId,
        {
          metadata: { name: "counter" },
          image: { image: IMAGE_A },
          command: ["sh", "-c", "i=0; while true; do echo line-$i; i=$((i+1)); usleep 20000; done"],
          logPath: "counter.log",
        },
        sandboxConfig,
      );
      await cri.startContainer(id);
      const numbers = async () =>
        [
          ...(await readFile(path.join(logDirectory, "counter.log"), "utf8").catch(() => "")).matchAll(
            /^\S+ stdout F line-(\d+)$/gm,
          ),
        ].map((m) => Number(m[1]));
      const waitFor = async (min: number, what: string) => {
        const deadline = Date.now() + 90_000;
        for (;;) {
          const seen = await numbers();
          if (seen.length && Math.max(...seen) >= min) return seen;
          if (Date.now() > deadline) assert.fail(`${what}: the log reached line ${Math.max(-1, ...seen)}`);
          await new Promise((r) => setTimeout(r, 200));
        }
      };
      const before = Math.max(...(await waitFor(10, "before the restart")));
      await harness.containerd.restart();
      // containerd reopens the FIFOs; what the container wrote meanwhile must follow, in order.
      const seen = await waitFor(before + 150, "after the restart");
      const last = Math.max(...seen);
      assert.deepEqual(
        seen.slice(0, last + 1),
        Array.from({ length: last + 1 }, (_, i) => i),
        "every line, once, in order",
      );
      await cri.stopContainer(id, 2);
      await cri.removeContainer(id);
      await cri.stopPodSandbox(podId);
      await cri.removePodSandbox(podId);
    });

    it("gives the pod the CNI network: the host reaches the pod IP over TCP, the pod reaches its gateway", async () => {
      const logDirectory = path.join(harness.dir, "pods", "net");
      await mkdir(logDirectory, { recursive: true });
      const sandboxConfig: PodSandboxConfig = {
        metadata: { name: "net", uid: "uid-net", namespace: "default" },
        hostname: "net",
        logDirectory,
      };
      const podId = await cri.runPodSandbox(sandboxConfig, HANDLER);
      const ip = (await cri.podSandboxStatus(podId)).network?.ip ?? "";
      assert.match(ip, /^10\.88\.\d+\.\d+$/);
      const id = await cri.createContainer(
        podId,
        {
          metadata: { name: "web" },
          image: { image: IMAGE_A },
          command: ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"],
          logPath: "web.log",
        },
        sandboxConfig,
      );
      await cri.startContainer(id);
      // Host → pod: an HTTP GET over TCP to the pod IP, served from inside the microVM.
      let body = "";
      const deadline = Date.now() + 30_000;
      while (Date.now() < deadline) {
        try {
          body = await (
            await fetch(`http://${ip}:8080/cloudhv-image`, { signal: AbortSignal.timeout(3000) })
          ).text();
          break;
        } catch {
          await new Promise((r) => setTimeout(r, 300));
        }
      }
      assert.equal(body.trim(), IMAGE_A);
      // Pod → host: the bridge's address is the pod's default gateway.
      const ping = await cri.execSync(id, ["/bin/busybox", "ping", "-c", "1", "-W", "5", harness.gateway]);
      assert.equal(ping.exitCode, 0, ping.stdout + ping.stderr);
      // A second container of the pod shares its network: localhost reaches the first one.
      const client = await cri.createContainer(
        podId,
        {
          metadata: { name: "client" },
          image: { image: IMAGE_B },
          command: ["sleep", "600"],
          logPath: "client.log",
        },
        sandboxConfig,
      );
      await cri.startContainer(client);
      const local = await cri.execSync(client, [
        "/bin/busybox",
        "wget",
        "-q",
        "-O",
        "-",
        "http://127.0.0.1:8080/cloudhv-image",
      ]);
      assert.equal(local.stdout.trim(), IMAGE_A, local.stderr);
      await cri.stopContainer(client, 2);
      await cri.removeContainer(client);
      const eth0 = await cri.execSync(id, ["cat", "/sys/class/net/eth0/mtu", "/sys/class/net/eth0/address"]);
      assert.match(eth0.stdout, /^1500\n[0-9a-f:]{17}\n$/);

      await cri.stopContainer(id, 2);
      await cri.removeContainer(id);
      await cri.stopPodSandbox(podId);
      await cri.removePodSandbox(podId);
      const taps = await exec(["ip", "-o", "link", "show", "type", "tun"]);
      assert.doesNotMatch(taps.stdout, /tap0_chv/, "no TAP left on the host");
      assert.deepEqual(await settled(() => podVmms(harness.runtime.stateDir)), []);
    });

    it("forwards ports into the pod through CRI's PortForward (kubectl port-forward): any port, a server on the guest's 127.0.0.1 only, connections at once; nothing left after the pod", async () => {
      const logDirectory = path.join(harness.dir, "pods", "pf");
      await mkdir(logDirectory, { recursive: true });
      const sandboxConfig: PodSandboxConfig = {
        metadata: { name: "pf", uid: "uid-pf", namespace: "default" },
        hostname: "pf",
        logDirectory,
      };
      const podId = await cri.runPodSandbox(sandboxConfig, HANDLER);
      const podsDir = path.join(harness.runtime.stateDir, "pods");
      const started = Date.now();
      const id = await cri.createContainer(
        podId,
        {
          metadata: { name: "web" },
          image: { image: IMAGE_A },
          // 8080 on every address; 8081 on the guest's loopback only (unreachable from the pod IP).
          command: [
            "/bin/busybox",
            "sh",
            "-c",
            "/bin/busybox httpd -p 127.0.0.1:8081 -h /etc && exec /bin/busybox httpd -f -p 8080 -h /etc",
          ],
          logPath: "web.log",
        },
        sandboxConfig,
      );
      await cri.startContainer(id);
      const get = async (port: number) => {
        const url = await cri.portForward(podId, [port]);
        const res = await portForwardExchange(url, port, Buffer.from("GET /cloudhv-image HTTP/1.0\r\n\r\n"));
        return res.data.toString();
      };
      let first = "";
      const deadline = Date.now() + 30_000;
      while (!first.includes("200 OK") && Date.now() < deadline) {
        first = await get(8080).catch((err: unknown) => String(err));
        if (!first.includes("200 OK")) await new Promise((r) => setTimeout(r, 500));
      }
      assert.match(first, /^HTTP\/1\.[01] 200 OK/, first);
      assert.ok(first.trimEnd().endsWith(IMAGE_A), first);
      console.log(`port-forward: first answer ${Date.now() - started} ms after create`);
      const t0 = performance.now();
      const local = await get(8081);
      console.log(`port-forward: one GET through PortForward ${Math.round(performance.now() - t0)} ms`);
      assert.ok(local.trimEnd().endsWith(IMAGE_A), `a server on the guest's 127.0.0.1 only: ${local}`);
      // Five connections at once, each with its own answer.
      const many = await Promise.all([8080, 8081, 8080, 8081, 8080].map((p) => get(p)));
      for (const answer of many) assert.ok(answer.trimEnd().endsWith(IMAGE_A), answer);
      // A port nothing listens on: the connection ends at once, with no data.
      assert.equal(await get(9), "");

      // One helper for this pod, in its netns, steering by its sk_lookup program attached to
      // that netns (a BPF link it holds), with no nat rule.
      const helpers = await processesMatching(podsDir);
      assert.equal(helpers.length, 1, `one cloudhv-portfwd under ${podsDir}`);
      const argv = (await readFile(`/proc/${helpers[0]}/cmdline`, "utf8")).split("\0");
      const netns = argv[argv.indexOf("--netns") + 1] ?? "";
      const fdinfo = await Promise.all(
        (await readdir(`/proc/${helpers[0]}/fdinfo`)).map((fd) =>
          readFile(`/proc/${helpers[0]}/fdinfo/${fd}`, "utf8").catch(() => ""),
        ),
      );
      const netnsIno = (await stat(netns)).ino;
      assert.ok(
        fdinfo.some(
          (info) =>
            /link_type:\s+netns/.test(info) &&
            /attach_type:\s+36\b/.test(info) &&
            info.includes(`netns_ino:\t${netnsIno}`),
        ),
        "an sk_lookup link on the pod's netns",
      );
      const rules = await exec(["nsenter", `--net=${netns}`, "--", "iptables", "-t", "nat", "-S", "OUTPUT"]);
      assert.doesNotMatch(rules.stdout, /REDIRECT/, "no nat rule");

      await cri.stopContainer(id, 2);
      await cri.removeContainer(id);
      await cri.stopPodSandbox(podId);
      await cri.removePodSandbox(podId);
      assert.deepEqual(await settled(() => processesMatching(podsDir)), [], "no cloudhv-portfwd left");
      assert.deepEqual(await settled(() => entriesOf(podsDir)), [], "no relay socket or pod directory left");
      const netnsLeft = await stat(netns).then(
        () => true,
        () => false,
      );
      if (netnsLeft) {
        const after = await exec([
          "nsenter",
          `--net=${netns}`,
          "--",
          "iptables",
          "-t",
          "nat",
          "-S",
          "OUTPUT",
        ]);
        assert.doesNotMatch(after.stdout, /REDIRECT/, "the nat rule left in the pod netns");
      }
    });

    it("a container that forges its MAC or IP (CAP_NET_ADMIN) reaches nobody on the bridge; its real frames do", async (t) => {
      const logDirectory = path.join(harness.dir, "pods", "spoof");
      await mkdir(logDirectory, { recursive: true });
      const sandboxConfig: PodSandboxConfig = {
        metadata: { name: "spoof", uid: "uid-spoof", namespace: "default" },
        hostname: "spoof",
        logDirectory,
      };
      const podId = await cri.runPodSandbox(sandboxConfig, HANDLER);
      const ip = (await cri.podSandboxStatus(podId)).network?.ip ?? "";
      const id = await cri.createContainer(
        podId,
        {
          metadata: { name: "forger" },
          image: { image: IMAGE_A },
          command: ["sleep", "600"],
          logPath: "forger.log",
          linux: { securityContext: { capabilities: { addCapabilities: ["NET_ADMIN", "NET_RAW"] } } },
        },
        sandboxConfig,
      );
      await cri.startContainer(id);
      const sh = (script: string) => cri.execSync(id, ["/bin/sh", "-c", script], 60);
      const mac = (await sh("cat /sys/class/net/eth0/address")).stdout.trim();
      assert.match(mac, /^[0-9a-f:]{17}$/);
      const forgedMac = "02:66:66:66:66:66";
      // An address of the bridge's subnet that no pod has (host-local hands out from .2).
      const forgedIp = `${harness.gateway.split(".").slice(0, 3).join(".")}.250`;
      const watch = await watchFrames(harness.bridge, { macs: [mac, forgedMac], ips: [ip, forgedIp] });
      let seen: Record<string, number> = {};
      try {
        const real = await sh(`ping -c 2 -W 2 ${harness.gateway}`);
        assert.equal(real.exitCode, 0, real.stdout + real.stderr);
        // Another source IP, by the book (an address on eth0) and by ARP.
        const ipForge = await sh(
          `ip addr add ${forgedIp}/32 dev eth0 && ping -c 3 -W 1 -I ${forgedIp} ${harness.gateway}; ` +
            `arping -c 2 -w 2 -U -s ${forgedIp} -I eth0 ${harness.gateway}; ip addr del ${forgedIp}/32 dev eth0`,
        );
        assert.doesNotMatch(
          ipForge.stderr,
          /Operation not permitted|not found/,
          "the forger has the tools and caps",
        );
        // Another MAC on the pod's NIC.
        await sh(
          `ip link set eth0 down && ip link set eth0 address ${forgedMac} && ip link set eth0 up && ` +
            `ping -c 3 -W 1 ${harness.gateway}; arping -c 2 -w 2 -I eth0 ${harness.gateway}`,
        );
        assert.match((await sh("cat /sys/class/net/eth0/address")).stdout, new RegExp(forgedMac));
      } finally {
        seen = await watch.stop();
      }
      t.diagnostic(`frames on the bridge by source: ${JSON.stringify(seen)}`);
      assert.ok(
        (seen[mac] ?? 0) > 0 && (seen[ip] ?? 0) > 0,
        `the pod's own frames reach the bridge: ${JSON.stringify(seen)}`,
      );
      assert.equal(seen[forgedMac], 0, `frames from the forged MAC: ${JSON.stringify(seen)}`);
      assert.equal(seen[forgedIp], 0, `frames from the forged IP: ${JSON.stringify(seen)}`);

      await cri.stopContainer(id, 2);
      await cri.removeContainer(id);
      await cri.stopPodSandbox(podId);
      await cri.removePodSandbox(podId);
      // The daemon logs to log_dir (on disk), not next to its socket in the state dir.
      const logs = (await readdir(harness.runtime.logDir)).filter((n) => /^shim-.*\.log$/.test(n));
      assert.ok(logs.length > 0, "a daemon log in log_dir");
      const text = (
        await Promise.all(logs.map((n) => readFile(path.join(harness.runtime.logDir, n), "utf8")))
      ).join("");
      assert.match(text, new RegExp(`"task":"${id}".*"msg":"task created"`));
    });

    it("brings volumes into the VM: configmap-style dirs follow host updates, resolv.conf, an emptyDir shared by two containers", async () => {
      const base = path.join(harness.dir, "vol");
      const configDir = path.join(base, "volumes", "kubernetes.io~configmap", "cfg");
      const emptyDir = path.join(base, "volumes", "kubernetes.io~empty-dir", "shared");
      await mkdir(configDir, { recursive: true });
      await mkdir(emptyDir, { recursive: true });
      await writeFile(path.join(configDir, "key.txt"), "v1\n");
      const logDirectory = path.join(harness.dir, "pods", "vol");
      await mkdir(logDirectory, { recursive: true });
      const sandboxConfig: PodSandboxConfig = {
        metadata: { name: "vol", uid: "uid-vol", namespace: "default" },
        logDirectory,
      };
      const podId = await cri.runPodSandbox(sandboxConfig, HANDLER);
      const mounts = [
        { containerPath: "/etc/config", hostPath: configDir, readonly: true },
        { containerPath: "/shared", hostPath: emptyDir },
      ];
      const ids: string[] = [];
      for (const name of ["writer", "reader"]) {
        const id = await cri.createContainer(
          podId,
          {
            metadata: { name },
            image: { image: IMAGE_A },
            command: ["sleep", "600"],
            mounts,
            logPath: `${name}.log`,
          },
          sandboxConfig,
        );
        await cri.startContainer(id);
        ids.push(id);
      }
      const [writer, reader] = ids as [string, string];
      assert.equal((await cri.execSync(reader, ["cat", "/etc/config/key.txt"])).stdout, "v1\n");
      const hostResolv = await readFile("/etc/resolv.conf", "utf8");
      assert.equal((await cri.execSync(reader, ["cat", "/etc/resolv.conf"])).stdout, hostResolv);
      // The configmap changes on the host; the guest follows within seconds.
      await writeFile(path.join(configDir, "key.txt"), "v2\n");
      const deadline = Date.now() + 15_000;
      let seen = "";
      while (seen !== "v2\n" && Date.now() < deadline) {
        seen = (await cri.execSync(reader, ["cat", "/etc/config/key.txt"])).stdout;
        await new Promise((r) => setTimeout(r, 300));
      }
      assert.equal(seen, "v2\n");
      // emptyDir is one directory for the whole pod.
      assert.equal((await cri.execSync(writer, ["sh", "-c", "echo hi > /shared/note"])).exitCode, 0);
      assert.equal((await cri.execSync(reader, ["cat", "/shared/note"])).stdout, "hi\n");
      for (const id of ids) {
        await cri.stopContainer(id, 2);
        await cri.removeContainer(id);
      }
      await cri.stopPodSandbox(podId);
      await cri.removePodSandbox(podId);
      assert.deepEqual(await settled(() => podVmms(harness.runtime.stateDir)), []);
    });

    it("a read-only hostPath volume is read-only at its top only (Kubernetes' default, as runc): a tmpfs below it is writable; the host unmounts and removes its mounts below read-only and read-write volumes while the pod runs", async () => {
      const base = path.join(harness.dir, "nrro");
      const ro = path.join(base, "ro");
      const rw = path.join(base, "rw");
      const roSub = path.join(ro, "sub");
      const rwSub = path.join(rw, "sub");
      const podsDir = path.join(harness.runtime.stateDir, "pods");
      for (const sub of [roSub, rwSub]) {
        await mkdir(sub, { recursive: true });
        await exec(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", sub]);
      }
      try {
        const logDirectory = path.join(harness.dir, "pods", "nrro");
        await mkdir(logDirectory, { recursive: true });
        const sandboxConfig: PodSandboxConfig = {
          metadata: { name: "nrro", uid: "uid-nrro", namespace: "default" },
          logDirectory,
        };
        const podId = await cri.runPodSandbox(sandboxConfig, HANDLER);
        const id = await cri.createContainer(
          podId,
          {
            metadata: { name: "writer" },
            image: { image: IMAGE_A },
            command: ["sleep", "600"],
            mounts: [
              { containerPath: "/ro", hostPath: ro, readonly: true },
              { containerPath: "/rw", hostPath: rw },
            ],
            logPath: "writer.log",
          },
          sandboxConfig,
        );
        await cri.startContainer(id);
        const top = await cri.execSync(id, ["/bin/sh", "-c", "touch /ro/top"]);
        assert.notEqual(top.exitCode, 0, "the volume itself is read-only");
        assert.match(top.stderr, /Read-only file system/);
        const below = await cri.execSync(id, [
          "/bin/sh",
          "-c",
          "echo from-pod > /ro/sub/file && echo rw > /rw/sub/file",
        ]);
        assert.equal(below.exitCode, 0, `the host's tmpfs below each volume is writable: ${below.stderr}`);
        assert.equal(await readFile(path.join(roSub, "file"), "utf8"), "from-pod\n");
        assert.equal(await readFile(path.join(rwSub, "file"), "utf8"), "rw\n");
        // None of the pod's binds is in the host's mount namespace: the host's own mounts below
        // the volumes come off and their directories go while the pod runs (critest's cleanup).
        const ours = (await readFile("/proc/self/mountinfo", "utf8"))
          .split("\n")
          .map((l) => l.split(" ")[4] ?? "")
          .filter((m) => m.startsWith(`${podsDir}/`) && !/\/ns(\/mnt)?$/.test(m));
        assert.deepEqual(ours, [], "only the pod namespace's own file is in the host's namespace");
        for (const sub of [roSub, rwSub]) {
          assert.equal((await exec(["umount", sub])).code, 0, `umount ${sub}`);
          await rmdir(sub);
        }
        await cri.stopContainer(id, 2);
        await cri.removeContainer(id);
        await cri.stopPodSandbox(podId);
        await cri.removePodSandbox(podId);
        assert.deepEqual(await settled(() => entriesOf(podsDir)), []);
        const left = (await readFile("/proc/self/mountinfo", "utf8"))
          .split("\n")
          .filter((l) => l.includes(podsDir));
        assert.deepEqual(left, [], "nothing of the pod left mounted");
      } finally {
        for (const sub of [roSub, rwSub]) await exec(["umount", "--lazy", sub]);
      }
      await rm(base, { recursive: true });
    });

    it("shares hostPath volumes by virtio-fs: writes reach the host at once and stay, readOnly refuses writes, host files appear, nothing left behind", async () => {
      const base = path.join(harness.dir, "share");
      const rw = path.join(base, "rw");
      const ro = path.join(base, "ro");
      const fifo = path.join(base, "fifo");
      await mkdir(rw, { recursive: true });
      await mkdir(ro, { recursive: true });
      await writeFile(path.join(ro, "hello"), "read me\n");
      await exec(["mkfifo", fifo]);
      // A volume mounted inside another one, as runc stacks them.
      const inner = path.join(base, "inner");
      await mkdir(inner, { recursive: true });
      await writeFile(path.join(inner, "deep"), "inner volume\n");
      // kubelet's termination-log file: a file bind, shared, so the message reaches the host.
      const termination = path.join(base, "termination-log");
      await writeFile(termination, "");
      const logDirectory = path.join(harness.dir, "pods", "share");
      await mkdir(logDirectory, { recursive: true });
      const sandboxConfig: PodSandboxConfig = {
        metadata: { name: "share", uid: "uid-share", namespace: "default" },
        logDirectory,
      };
      const podsDir = path.join(harness.runtime.stateDir, "pods");
      const podId = await cri.runPodSandbox(sandboxConfig, HANDLER);
      const created = performance.now();
      const id = await cri.createContainer(
        podId,
        {
          metadata: { name: "writer" },
          image: { image: IMAGE_A },
          command: ["sleep", "600"],
          mounts: [
            { containerPath: "/data", hostPath: rw },
            { containerPath: "/ro", hostPath: ro, readonly: true },
            { containerPath: "/dev/termination-log", hostPath: termination },
            { containerPath: "/data/inner", hostPath: inner },
          ],
          logPath: "writer.log",
        },
        sandboxConfig,
      );
      await cri.startContainer(id);
      // The first container with shared volumes starts virtiofsd and hot-plugs the device.
      console.log(
        `virtio-fs: create + start of the first sharing container ${Math.round(performance.now() - created)} ms`,
      );
      // virtiofsd and its sandboxed child (its own pid namespace).
      assert.ok((await processesMatching(podsDir)).length > 0, "virtiofsd serves the pod");

      // 50 MiB written in the guest: the host has the same bytes while the pod runs.
      const t0 = performance.now();
      const wrote = await cri.execSync(id, [
        "sh",
        "-c",
        "dd if=/dev/urandom of=/data/blob bs=1M count=50 2>/dev/null && sha256sum /data/blob",
      ]);
      const seconds = (performance.now() - t0) / 1000;
      assert.equal(wrote.exitCode, 0, wrote.stderr);
      const guestSum = wrote.stdout.split(" ")[0] ?? "";
      const hostSum = async () => (await exec(["sha256sum", path.join(rw, "blob")])).stdout.split(" ")[0];
      assert.equal(await hostSum(), guestSum, "the host sees the guest's bytes at once");
      console.log(`virtio-fs: 50 MiB written (urandom + sha256 in the guest) in ${seconds.toFixed(1)} s`);

      // Throughput, for the record (TCG here): sequential write with fsync, then read after
      // dropping the guest's caches, on the virtio-fs volume and on the container's own root
      // (the guest's scratch disk); timed on the host, less the cost of an empty exec.
      const timed = async (cmd: string) => {
        const t = performance.now();
        const r = await cri.execSync(id, ["sh", "-c", cmd]);
        assert.equal(r.exitCode, 0, r.stderr);
        return (performance.now() - t) / 1000;
      };
      const idle = await timed("true");
      for (const [where, file] of [
        ["virtio-fs", "/data/zero"],
        ["scratch disk", "/zero"],
      ] as const) {
        const write =
          (await timed(`dd if=/dev/zero of=${file} bs=1M count=100 conv=fsync 2>/dev/null`)) - idle;
        const read = (await timed(`echo 3 > /proc/sys/vm/drop_caches; cat ${file} > /dev/null`)) - idle;
        await timed(`rm ${file}`);
        console.log(
          `${where}: 100 MiB sequential write ${(100 / write).toFixed(0)} MiB/s, read ${(100 / read).toFixed(0)} MiB/s`,
        );
      }

      // readOnly: the write fails in the guest with EROFS, and nothing reaches the host.
      assert.equal((await cri.execSync(id, ["cat", "/ro/hello"])).stdout, "read me\n");
      const denied = await cri.execSync(id, ["sh", "-c", "echo x > /ro/new"]);
      assert.notEqual(denied.exitCode, 0);
      assert.match(denied.stderr, /Read-only file system/);
      await assert.rejects(readFile(path.join(ro, "new")), { code: "ENOENT" });

      // The nested volume is in place; ownership and modes set in the guest are the host's.
      assert.equal((await cri.execSync(id, ["cat", "/data/inner/deep"])).stdout, "inner volume\n");
      const owned = await cri.execSync(id, [
        "sh",
        "-c",
        "echo o > /data/owned && chown 1234:5678 /data/owned && chmod 0640 /data/owned",
      ]);
      assert.equal(owned.exitCode, 0, owned.stderr);
      const hostStat = await stat(path.join(rw, "owned"));
      assert.deepEqual([hostStat.uid, hostStat.gid, hostStat.mode & 0o7777], [1234, 5678, 0o640]);
      await writeFile(path.join(rw, "host-owned"), "h");
      await chown(path.join(rw, "host-owned"), 4321, 8765);
      assert.equal(
        (await cri.execSync(id, ["sh", "-c", "stat -c %u:%g /data/host-owned"])).stdout,
        "4321:8765\n",
      );

      // A FIFO can be made in a volume; a device node cannot (virtiofsd runs without CAP_MKNOD).
      assert.equal((await cri.execSync(id, ["sh", "-c", "mkfifo /data/fifo"])).exitCode, 0);
      const node = await cri.execSync(id, ["sh", "-c", "mknod /data/null c 1 3"]);
      assert.notEqual(node.exitCode, 0, "no device node in a host volume");
      await assert.rejects(readFile(path.join(rw, "null")), { code: "ENOENT" });
      await cri.execSync(id, ["sh", "-c", "rm /data/fifo"]);
      await cri.execSync(id, ["sh", "-c", "echo goodbye > /dev/termination-log"]);
      assert.equal(
        await readFile(termination, "utf8"),
        "goodbye\n",
        "the termination message reaches the host",
      );

      // A file created on the host appears in the running container.
      await writeFile(path.join(rw, "from-host"), "hello guest\n");
      const deadline = Date.now() + 10_000;
      let seen = "";
      while (seen !== "hello guest\n" && Date.now() < deadline) {
        seen = (await cri.execSync(id, ["sh", "-c", "cat /data/from-host 2>/dev/null"])).stdout;
        if (seen !== "hello guest\n") await new Promise((r) => setTimeout(r, 200));
      }
      assert.equal(seen, "hello guest\n");

      // A volume that cannot be served fails the container, naming it and why.
      const bad = await cri.createContainer(
        podId,
        {
          metadata: { name: "bad" },
          image: { image: IMAGE_A },
          command: ["true"],
          mounts: [{ containerPath: "/pipe", hostPath: fifo }],
        },
        sandboxConfig,
      );
      await assert.rejects(
        cri.startContainer(bad),
        new RegExp(
          `volume ${fifo.replaceAll(".", "\\.")} \\(mounted at /pipe\\) cannot be shared: neither a file nor a directory`,
        ),
      );
      await cri.removeContainer(bad);

      await cri.stopContainer(id, 2);
      await cri.removeContainer(id);
      await cri.stopPodSandbox(podId);
      await cri.removePodSandbox(podId);
      assert.equal(await hostSum(), guestSum, "the bytes stay after the pod is gone");
      assert.deepEqual(await settled(() => processesMatching(podsDir)), [], "no virtiofsd left");
      assert.deepEqual(await settled(() => podVmms(harness.runtime.stateDir)), []);
      // The shared directory goes last, once its binds are unmounted.
      assert.deepEqual(await settled(() => entriesOf(podsDir)), [], "the pod's shared directory is gone");
      const mounts = await readFile("/proc/self/mountinfo", "utf8");
      assert.ok(!mounts.includes(podsDir), "no bind mount left under the pods' state dir");
      assert.deepEqual(
        (await readdir(rw)).sort(),
        ["blob", "from-host", "host-owned", "inner", "owned"],
        "the volume's files are intact (inner: the nested volume's mount point)",
      );
      assert.equal(await readFile(path.join(inner, "deep"), "utf8"), "inner volume\n");
    });

    it("sizes the pod's VM from its annotations, and fails RunPodSandbox on a bad value, leaving nothing", async () => {
      const logDirectory = path.join(harness.dir, "pods", "sized");
      await mkdir(logDirectory, { recursive: true });
      const config = (name: string, annotations: Record<string, string>): PodSandboxConfig => ({
        metadata: { name, uid: `uid-${name}`, namespace: "default" },
        logDirectory,
        annotations,
      });
      const sized = config("sized", {
        "io.katacontainers.config.hypervisor.default_vcpus": "2",
        "io.cloudhv.config.hypervisor.default_memory": "512",
      });
      const podId = await cri.runPodSandbox(sized, HANDLER);
      const id = await cri.createContainer(
        podId,
        {
          metadata: { name: "probe" },
          image: { image: IMAGE_A },
          command: ["sleep", "600"],
          logPath: "probe.log",
        },
        sized,
      );
      await cri.startContainer(id);
      assert.equal((await cri.execSync(id, ["sh", "-c", "nproc"])).stdout.trim(), "2");
      const mem = (await cri.execSync(id, ["sh", "-c", "grep MemTotal /proc/meminfo"])).stdout;
      const kib = Number(/(\d+) kB/.exec(mem)?.[1]);
      assert.ok(kib > 400 * 1024 && kib <= 512 * 1024, mem);
      await cri.stopContainer(id, 2);
      await cri.removeContainer(id);
      await cri.stopPodSandbox(podId);
      await cri.removePodSandbox(podId);

      const before = await cri.listPodSandbox();
      await assert.rejects(
        cri.runPodSandbox(
          config("badsize", { "io.cloudhv.config.hypervisor.default_memory": "lots" }),
          HANDLER,
        ),
        /annotation io\.cloudhv\.config\.hypervisor\.default_memory="lots" must be an integer from 64 to \d+ MiB/,
      );
      assert.deepEqual(await settled(() => podVmms(harness.runtime.stateDir)), []);
      assert.equal(
        (await cri.listPodSandbox()).filter((p) => p.state === "SANDBOX_READY").length,
        before.filter((p) => p.state === "SANDBOX_READY").length,
      );
    });

    it("puts the pod's VMM in the pod's cgroup (cgroupfs and systemd names) with the QoS's oom_score_adj, sizes it within the pod's limits, and removes the cgroup", async () => {
      const logDirectory = path.join(harness.dir, "pods", "cg");
      await mkdir(logDirectory, { recursive: true });
      const vmms = () => podVmms(harness.runtime.stateDir);
      const uid = `c0ffee${process.pid}`;
      // Under a cgroup root of our own (kubelet's --cgroup-root): a kubelet running on this
      // host reaps pod cgroups under /kubepods that it does not know.
      const root = `chve2e${process.pid}`;
      const pods = [
        {
          name: "cg-burstable",
          parent: `/${root}/kubepods/burstable/pod${uid}`,
          cgroup: (id: string) => `/${root}/kubepods/burstable/pod${uid}/${id}`,
          ours: `/${root}`,
          // kubelet: a Burstable container's score from its memory request
          containerScore: 640,
          expect: [999, 640],
        },
        {
          name: "cg-besteffort",
          parent: `${root}-kubepods-besteffort-pod${uid}.slice`,
          cgroup: (id: string) =>
            `/${root}.slice/${root}-kubepods.slice/${root}-kubepods-besteffort.slice/${root}-kubepods-besteffort-pod${uid}.slice/cri-containerd-${id}.scope`,
          ours: `/${root}.slice`,
          containerScore: 1000,
          expect: [1000, 1000],
        },
      ];
      for (const pod of pods) {
        const sandboxConfig: PodSandboxConfig = {
          metadata: { name: pod.name, uid: `uid-${pod.name}`, namespace: "default" },
          logDirectory,
          linux: {
            cgroupParent: pod.parent,
            resources: {
              cpuPeriod: 100000,
              cpuQuota: 100000,
              cpuShares: 1024,
              memoryLimitInBytes: 300 * 2 ** 20,
            },
          },
        };
        const podId = await cri.runPodSandbox(sandboxConfig, HANDLER);
        const [pid] = await vmms();
        assert.ok(pid, "the pod's VMM runs");
        const expected = pod.cgroup(podId);
        const cgroups = (await readFile(`/proc/${pid}/cgroup`, "utf8")).trim().split("\n");
        // Every hierarchy (v1 controllers, name=systemd, the unified one) has the VMM in the pod's cgroup.
        for (const line of cgroups) assert.equal(line.split(":").slice(2).join(":"), expected, line);
        const score = async () => Number((await readFile(`/proc/${pid}/oom_score_adj`, "utf8")).trim());
        assert.equal(await score(), pod.expect[0]);
        const id = await cri.createContainer(
          podId,
          {
            metadata: { name: "probe" },
            image: { image: IMAGE_A },
            command: ["sleep", "600"],
            logPath: `${pod.name}.log`,
            linux: { resources: { oomScoreAdj: pod.containerScore } },
          },
          sandboxConfig,
        );
        await cri.startContainer(id);
        assert.equal(await score(), pod.expect[1]);
        // Sized from the CRI sandbox resources: 1 vCPU, 300 MiB + the guest's own 256.
        assert.equal((await cri.execSync(id, ["sh", "-c", "nproc"])).stdout.trim(), "1");
        const mem = (await cri.execSync(id, ["sh", "-c", "grep MemTotal /proc/meminfo"])).stdout;
        const kib = Number(/(\d+) kB/.exec(mem)?.[1]);
        assert.ok(kib > 450 * 1024 && kib <= 556 * 1024, mem);
        await cri.stopContainer(id, 2);
        await cri.removeContainer(id);
        await cri.stopPodSandbox(podId);
        await cri.removePodSandbox(podId);
        assert.deepEqual(await vmms(), []);
        // Every directory the runtime made for the pod is gone (it made them all, up to the root).
        for (const hierarchy of ["memory", "cpuset", "unified", ""]) {
          const dir = path.join("/sys/fs/cgroup", hierarchy, pod.ours);
          await assert.rejects(stat(dir), `${dir} was removed`);
        }
        // An annotation asking for more than the pod's limits is refused, naming both.
        await assert.rejects(
          cri.runPodSandbox(
            {
              ...sandboxConfig,
              metadata: { ...sandboxConfig.metadata, name: `${pod.name}-big` },
              annotations: { "io.cloudhv.config.hypervisor.default_memory": "2048" },
            },
            HANDLER,
          ),
          /default_memory=2048 asks for 2048 MiB, more than the pod's limit of 556 MiB \(io\.kubernetes\.cri\.sandbox-memory=314572800 bytes/,
        );
        assert.deepEqual(await vmms(), []);
      }
    });

    it("a container that allocates past its memory limit is OOM-killed in the guest and CRI says OOMKilled; its pod lives on", async () => {
      const logDirectory = path.join(harness.dir, "pods", "oom");
      await mkdir(logDirectory, { recursive: true });
      const sandboxConfig: PodSandboxConfig = {
        metadata: { name: "oom", uid: "uid-oom", namespace: "default", attempt: 0 },
        hostname: "oom",
        logDirectory,
      };
      const podId = await cri.runPodSandbox(sandboxConfig, HANDLER);
      const limited = async (name: string, command: string[]) => {
        const id = await cri.createContainer(
          podId,
          {
            metadata: { name },
            image: { image: IMAGE_A },
            command,
            logPath: `${name}.log`,
            linux: { resources: { memoryLimitInBytes: 48 * 1024 * 1024 } },
          },
          sandboxConfig,
        );
        await cri.startContainer(id);
        return id;
      };
      // dd fills a 100 MiB buffer (bs): twice the container's 48 MiB limit.
      const hog = await limited("hog", [
        "sh",
        "-c",
        "dd if=/dev/zero of=/dev/null bs=100M count=1; echo survived",
      ]);
      const quiet = await limited("quiet", ["sleep", "600"]);
      const deadline = Date.now() + 120_000;
      let status = await cri.containerStatus(hog);
      while (status.state !== "CONTAINER_EXITED" && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 250));
        status = await cri.containerStatus(hog);
      }
      assert.equal(status.state, "CONTAINER_EXITED");
      assert.equal(status.reason, "OOMKilled", `exit ${status.exitCode}: ${status.message}`);
      assert.equal(
        (await cri.containerStatus(quiet)).state,
        "CONTAINER_RUNNING",
        "the pod's other container runs on",
      );
      for (const id of [hog, quiet]) {
        await cri.stopContainer(id, 2);
        await cri.removeContainer(id);
      }
      await cri.stopPodSandbox(podId);
      await cri.removePodSandbox(podId);
    });
  });
