// Contract tests of the Cloud Hypervisor driver, run against a TEST DOUBLE of Cloud
// Hypervisor's documented REST API (test/support/ch-api-double.ts), not against Cloud
// Hypervisor itself (see cloud-hypervisor-vm.test.ts for that). The driver really spawns the
// double as its `cloud-hypervisor` binary; the double validates every request against the
// API document of CH v53.0 (rejecting unknown or ill-typed fields), records it, and bridges
// hybrid vsock to our guest agent in test mode (or a built-in agent when it is not built).
// Everything that depends on the release runs once per release the double models (v49 to
// v53: answers with nulls, stale sockets, events); what only the driver decides runs once.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { chmod, lstat, mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import pino from "pino";
import { TIMED_OUT, within } from "../src/util/time.js";
import { ChApiClient, ChApiError } from "../src/vmm/ch-api.js";
import {
  CH_BASE_KERNEL_ARGS,
  type ChVm,
  CloudHypervisorDriver,
  chPaths,
} from "../src/vmm/cloud-hypervisor.js";
import type { VmConfig } from "../src/vmm/types.js";
import { CH_VERSIONS, type ChVersion, LATEST_VERSION, type Scenario } from "./support/ch-api-double.js";

const DOUBLE = fileURLToPath(new URL("./support/ch-api-double.js", import.meta.url));
const REAL_AGENT = fileURLToPath(new URL("../../../build/guest/cloudhv-agent", import.meta.url));
const AGENT = existsSync(REAL_AGENT) ? REAL_AGENT : undefined;

interface LogEntry {
  t: string;
  method?: string;
  path?: string;
  body?: unknown;
  status?: number;
  pid?: number;
  outcome?: string;
  id?: string;
}

interface Rig {
  dir: string;
  driver: CloudHypervisorDriver;
  config: VmConfig;
  log(): Promise<LogEntry[]>;
  requests(): Promise<LogEntry[]>;
}

let root: string;
let rigs = 0;
/** The release the rigs of the running suite model. */
let currentVersion: ChVersion = LATEST_VERSION;

/** A fresh directory with a kernel, a rootfs, a `cloud-hypervisor` that is the double, a scenario. */
async function rig(scenario: Omit<Scenario, "log"> = {}, vm: Partial<VmConfig> = {}): Promise<Rig> {
  scenario = { version: currentVersion, ...scenario };
  const dir = path.join(root, `r${++rigs}`);
  await mkdir(dir);
  const logFile = path.join(dir, "requests.jsonl");
  await writeFile(
    path.join(dir, "scenario.json"),
    JSON.stringify({ log: logFile, agent: AGENT, ...scenario }),
  );
  const binary = path.join(dir, "cloud-hypervisor");
  await writeFile(
    binary,
    `#!/bin/sh\nCH_DOUBLE_SCENARIO='${dir}/scenario.json' exec '${process.execPath}' '${DOUBLE}' "$@"\n`,
  );
  await chmod(binary, 0o755);
  for (const f of ["vmlinux", "rootfs.erofs", "image.erofs", "scratch.ext4"])
    await writeFile(path.join(dir, f), "x");
  const log = async () =>
    (await readFile(logFile, "utf8").catch(() => ""))
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as LogEntry);
  return {
    dir,
    driver: new CloudHypervisorDriver({ binary }),
    config: {
      id: `vm${rigs}`,
      kernelPath: path.join(dir, "vmlinux"),
      rootfsPath: path.join(dir, "rootfs.erofs"),
      vcpus: 1,
      maxVcpus: 2,
      memoryMb: 128,
      stateDir: path.join(dir, "state"),
      ...vm,
    },
    log,
    requests: async () => (await log()).filter((e) => e.t === "request"),
  };
}

function gone(pid: number | undefined): boolean {
  if (pid === undefined) return true;
  try {
    process.kill(pid, 0);
  } catch {
    return true;
  }
  try {
    // A killed orphan may linger as a zombie until init reaps it: that is gone too.
    return /^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return true;
  }
}

async function eventually(check: () => boolean | Promise<boolean>, what: string, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A socket file nobody listens on, as a VMM killed outright leaves it. */
async function deadSocket(p: string): Promise<void> {
  const child = spawn(process.execPath, [
    "-e",
    `require("net").createServer().listen(${JSON.stringify(p)}, () => process.kill(process.pid, "SIGKILL"))`,
  ]);
  await new Promise((resolve) => child.once("exit", resolve));
  assert.ok((await lstat(p)).isSocket(), `a dead socket at ${p}`);
}

async function assertNoLeftovers(r: Rig, vm: ChVm): Promise<void> {
  await assert.rejects(stat(r.config.stateDir), { code: "ENOENT" }, "the state dir is removed");
  assert.ok(gone(vm.pid), `the VMM (pid ${vm.pid}) is gone`);
  const agents = (await r.log()).filter((e) => e.t === "agent" && e.pid !== vm.pid);
  for (const a of agents) await eventually(() => gone(a.pid), `the agent (pid ${a.pid}) to be gone`);
}

describe("Cloud Hypervisor driver against a test double of its documented REST API", () => {
  before(async () => {
    root = await mkdtemp(path.join(os.tmpdir(), "cloudhv-chd-"));
  });

  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  for (const version of CH_VERSIONS) {
    describe(`Cloud Hypervisor ${version}`, () => {
      before(() => {
        currentVersion = version;
      });

      it(`boots with vm.create (the whole config) then vm.boot, reaches the agent over hybrid vsock (${AGENT ? "real cloudhv-agent in test mode" : "built-in agent: build/guest/cloudhv-agent not built"}), and stops with vm.shutdown then vmm.shutdown`, async () => {
        const r = await rig({}, { extraKernelArgs: "cloudhv.debug=1" });
        const config: VmConfig = {
          ...r.config,
          disks: [
            { path: path.join(r.dir, "image.erofs"), serial: "img-abc", readOnly: true },
            { path: path.join(r.dir, "scratch.ext4"), serial: "scr-abc", readOnly: false },
          ],
        };
        const vm = await r.driver.launch(config);
        const reqs = await r.requests();
        const lifecycle = reqs.filter((q) => q.path !== "/api/v1/vmm.ping");
        assert.ok(reqs[0]?.path === "/api/v1/vmm.ping", "the driver waits for the API with vmm.ping");
        assert.deepEqual(
          lifecycle.map((q) => `${q.method} ${q.path} ${q.status}`),
          ["PUT /api/v1/vm.create 204", "PUT /api/v1/vm.boot 204"],
        );
        const body = lifecycle[0]?.body as { vsock: { cid: number } };
        assert.ok(Number.isInteger(body.vsock.cid) && body.vsock.cid >= 3, "a guest CID ≥ 3");
        const state = config.stateDir;
        assert.deepEqual(body, {
          payload: {
            kernel: config.kernelPath,
            cmdline: `${CH_BASE_KERNEL_ARGS} cloudhv.debug=1`,
          },
          cpus: { boot_vcpus: 1, max_vcpus: 2 },
          memory: { size: 128 * 1024 * 1024, shared: true },
          disks: [
            {
              path: config.rootfsPath,
              readonly: true,
              id: "rootfs",
              serial: "cloudhv-rootfs",
              image_type: "Raw",
            },
            {
              path: path.join(r.dir, "image.erofs"),
              readonly: true,
              id: "disk-img-abc",
              serial: "img-abc",
              image_type: "Raw",
            },
            {
              path: path.join(r.dir, "scratch.ext4"),
              readonly: false,
              id: "disk-scr-abc",
              serial: "scr-abc",
              image_type: "Raw",
            },
          ],
          rng: { src: "/dev/urandom" },
          vsock: { cid: body.vsock.cid, socket: path.join(state, "vsock.sock") },
          console: { mode: "File", file: path.join(state, "console.fifo") },
          serial: { mode: "Off" },
        });
        assert.equal(vm.consoleLogPath, path.join(state, "console.log"));
        // v49 and v50 do not know image_type: serde drops it and the image type is probed.
        const ignored = (await r.log()).filter((e) => e.t === "ignored").length;
        assert.equal(ignored, currentVersion === "v49.0" || currentVersion === "v50.0" ? 3 : 0);
        // The VMM writes the console into the FIFO; the driver drains it into console.log.
        await eventually(
          async () =>
            (await readFile(vm.consoleLogPath, "utf8").catch(() => "")).includes("guest console up"),
          "the console line to reach console.log",
        );

        const agent = await vm.connectAgent({ timeoutMs: 10_000 });
        assert.equal((await agent.health()).status, "SERVING");
        const version = await agent.version();
        assert.equal(version.protocolVersion, 1);

        const second = await r.driver.launch({
          ...r.config,
          id: "other",
          stateDir: path.join(r.dir, "state2"),
        });
        const cids = (await r.requests())
          .filter((q) => q.path === "/api/v1/vm.create")
          .map((q) => (q.body as { vsock: { cid: number } }).vsock.cid);
        assert.equal(new Set(cids).size, 2, "each VM gets its own CID");
        await second.stop();

        const before = (await r.requests()).length;
        await Promise.all([vm.stop(), vm.stop()]);
        await vm.stop();
        assert.deepEqual(
          (await r.requests()).slice(before).map((q) => `${q.method} ${q.path} ${q.status}`),
          ["PUT /api/v1/vm.shutdown 204", "PUT /api/v1/vmm.shutdown 204"],
        );
        assert.deepEqual(await vm.exited, { code: 0, signal: null });
        await assertNoLeftovers(r, vm);
      });

      it("hot-plugs a disk (vm.add-disk) and removes it (vm.remove-device), waiting until the guest ejected it", async () => {
        const r = await rig({ removeDelayMs: 150 });
        await using vm = await r.driver.launch(r.config);
        const image = path.join(r.dir, "image.erofs");
        const id = await vm.addDisk({ path: image, serial: "layer-1", readOnly: true });
        assert.equal(id, "disk-layer-1");
        const add = (await r.requests()).find((q) => q.path === "/api/v1/vm.add-disk");
        assert.equal(add?.status, 200);
        assert.deepEqual(add?.body, {
          path: image,
          readonly: true,
          id: "disk-layer-1",
          serial: "layer-1",
          image_type: "Raw",
        });
        const info = await vm.info();
        assert.equal(info.state, "running");
        assert.match(info.devices["_virtio-pci-disk-layer-1"]?.pciBdf ?? "", /^0000:00:[0-9a-f]{2}\.0$/);
        assert.ok(info.devices["disk-layer-1"]);

        const t0 = Date.now();
        await vm.removeDevice(id);
        assert.ok(Date.now() - t0 >= 100, "removeDevice waited for the eject");
        const log = await r.log();
        const removeAt = log.findIndex((e) => e.path === "/api/v1/vm.remove-device");
        assert.deepEqual(log[removeAt]?.body, { id: "disk-layer-1" });
        assert.ok(log.findIndex((e) => e.t === "ejected" && e.id === id) > removeAt);
        assert.equal((await vm.info()).devices[id], undefined);

        await assert.rejects(vm.addDisk({ path: image, serial: "bad serial!", readOnly: true }), /serial/);
        await assert.rejects(
          vm.addDisk({ path: path.join(r.dir, "missing"), serial: "m", readOnly: true }),
          /not readable/,
        );
      });

      it("hot-plugs a NIC (vm.add-net) on an existing TAP and reports counters (vm.counters)", async () => {
        const r = await rig();
        await using vm = await r.driver.launch(r.config);
        const id = await vm.addNet({ tap: "tap0cloudhv", mac: "02:00:00:00:00:01", id: "net1" });
        assert.equal(id, "net1");
        const add = (await r.requests()).find((q) => q.path === "/api/v1/vm.add-net");
        assert.deepEqual(add?.body, { tap: "tap0cloudhv", mac: "02:00:00:00:00:01", id: "net1" });
        const counters = await vm.counters();
        assert.deepEqual(counters.net1, { rx_bytes: 0, rx_frames: 0, tx_bytes: 0, tx_frames: 0 });
        assert.ok(counters.rootfs, "the rootfs disk has counters");
        assert.equal((await r.requests()).at(-1)?.method, "GET");
      });

      it("shares a directory by virtio-fs: an fs device in vm.create, another hot-plugged with vm.add-fs, on shared guest memory", async () => {
        const r = await rig();
        // The double only checks that the vhost-user socket exists (CH connects to it).
        const boot = { socket: path.join(r.dir, "boot.sock"), tag: "cloudhv", id: "fs0" };
        const later = { socket: path.join(r.dir, "later.sock"), tag: "more", id: "fs1" };
        for (const f of [boot.socket, later.socket]) await writeFile(f, "");
        await using vm = await r.driver.launch({ ...r.config, sharedFs: boot });
        const create = (await r.requests()).find((q) => q.path === "/api/v1/vm.create");
        const body = create?.body as { fs?: unknown[]; memory?: { shared?: boolean } };
        assert.deepEqual(body.fs, [
          { tag: "cloudhv", socket: boot.socket, num_queues: 1, queue_size: 1024, id: "fs0" },
        ]);
        assert.equal(body.memory?.shared, true, "vhost-user needs shared guest memory");
        assert.ok((await vm.info()).devices.fs0, "the boot-time fs device is in the device tree");

        assert.equal(await vm.addFs?.(later), "fs1");
        const add = (await r.requests()).find((q) => q.path === "/api/v1/vm.add-fs");
        assert.equal(add?.status, 200);
        assert.deepEqual(add?.body, {
          tag: "more",
          socket: later.socket,
          num_queues: 1,
          queue_size: 1024,
          id: "fs1",
        });
        assert.ok((await vm.info()).devices.fs1);
        await vm.removeDevice("fs1");
        assert.equal((await vm.info()).devices.fs1, undefined);
        // A backend that is not there: CH's error, with the endpoint, reaches the caller.
        await assert.rejects(
          vm.addFs?.({ socket: path.join(r.dir, "nobody.sock"), tag: "x", id: "fs2" }) ?? Promise.resolve(),
          (err: Error) =>
            err instanceof ChApiError && /vm\.add-fs/.test(err.message) && /nobody\.sock/.test(err.message),
        );
      });

      it("pauses and resumes the VM (vm.pause / vm.resume) and reports the state (vm.info)", async () => {
        const r = await rig();
        await using vm = await r.driver.launch(r.config);
        await vm.pause();
        assert.equal((await vm.info()).state, "paused");
        await assert.rejects(vm.pause(), (err: Error) => {
          assert.match(err.message, /PUT \/api\/v1\/vm\.pause answered 500: .*could not be paused/);
          return true;
        });
        await vm.resume();
        const info = await vm.info();
        assert.equal(info.state, "running");
        assert.equal(info.memoryBytes, 128 * 1024 * 1024);
      });

      it("a VMM that crashes mid-request: the pending request rejects at once, naming the crash; stop() still cleans up", async () => {
        const r = await rig({ crashOn: "vm.add-disk" });
        const vm = await r.driver.launch(r.config);
        await vm.connectAgent({ timeoutMs: 10_000 });
        const t0 = Date.now();
        await assert.rejects(
          vm.addDisk({ path: path.join(r.dir, "image.erofs"), serial: "img", readOnly: true }),
          /cloud-hypervisor exited \(killed by SIGKILL\) during vm\.add-disk/,
        );
        assert.ok(Date.now() - t0 < 2000, `rejected in ${Date.now() - t0} ms`);
        assert.deepEqual(await vm.exited, { code: null, signal: "SIGKILL" });
        await assert.rejects(
          vm.pause(),
          /cloud-hypervisor is not running \(killed by SIGKILL\); vm\.pause not sent/,
        );
        await vm.stop();
        await assertNoLeftovers(r, vm);
      });

      it("an error answer from the VMM becomes an error carrying its message, the endpoint and the status", async () => {
        const messages = [
          "Error from API",
          "The disk could not be added to the VM",
          "Failed to open the image: Permission denied",
        ];
        const r = await rig({ fail: { endpoint: "vm.add-disk", status: 500, messages } });
        await using vm = await r.driver.launch(r.config);
        await assert.rejects(
          vm.addDisk({ path: path.join(r.dir, "image.erofs"), serial: "img", readOnly: true }),
          (err) => {
            assert.ok(err instanceof ChApiError);
            assert.equal(err.status, 500);
            assert.equal(err.endpoint, "/api/v1/vm.add-disk");
            assert.deepEqual(err.messages, messages);
            assert.match(
              err.message,
              /PUT \/api\/v1\/vm\.add-disk answered 500: .*Failed to open the image: Permission denied/,
            );
            return true;
          },
        );
        // The VM is still usable.
        assert.equal((await vm.info()).state, "running");
      });

      it("a boot that fails leaves no process and no state dir behind", async () => {
        const r = await rig({
          fail: {
            endpoint: "vm.boot",
            status: 500,
            messages: ["Error from API", "The VM could not boot", "KVM is broken"],
          },
        });
        await assert.rejects(r.driver.launch(r.config), /vm\.boot answered 500: .*KVM is broken/);
        await assert.rejects(stat(r.config.stateDir), { code: "ENOENT" });
        const start = (await r.log()).find((e) => e.t === "start");
        await eventually(() => gone(start?.pid), "the VMM to be gone");
        assert.deepEqual(
          (await r.requests())
            .filter((q) => q.path !== "/api/v1/vmm.ping")
            .map((q) => `${q.path} ${q.status}`),
          [
            "/api/v1/vm.create 204",
            "/api/v1/vm.boot 500",
            "/api/v1/vm.shutdown 500",
            "/api/v1/vmm.shutdown 204",
          ],
        );
      });

      it("retries the vsock CONNECT while the guest boots (the VMM closes it until the agent listens)", async () => {
        const r = await rig({ refuseConnects: 4 });
        await using vm = await r.driver.launch(r.config);
        const agent = await vm.connectAgent({ timeoutMs: 10_000 });
        assert.equal((await agent.health()).status, "SERVING");
        const vsock = (await r.log()).filter((e) => e.t === "vsock").map((e) => e.outcome);
        assert.deepEqual(vsock.slice(0, 4), ["refused", "refused", "refused", "refused"]);
        assert.equal(vsock.at(-1), "ok");
      });

      it("reads vm.info as this release writes it (unset fields null up to v52, left out from v53), before and after boot, and hot-unplug completes", async () => {
        const r = await rig({ removeDelayMs: 50 });
        const nulls = version !== "v53.0";
        // Before vm.boot there is no device tree: v49-v52 say `null`.
        const sock = path.join(r.dir, "bare-api.sock");
        const bare = spawn(path.join(r.dir, "cloud-hypervisor"), ["--api-socket", `path=${sock}`], {
          stdio: "ignore",
        });
        const bareExited = new Promise((resolve) => bare.once("exit", resolve));
        try {
          const api = new ChApiClient(sock);
          await eventually(
            async () => (await api.ping().catch(() => undefined)) !== undefined,
            "the API",
            10_000,
          );
          await api.createVm({ payload: { kernel: r.config.kernelPath } });
          const raw = await api.request("GET", "vm.info");
          assert.equal(raw.body.includes('"device_tree":null'), nulls, raw.body);
          const created = await api.info();
          assert.equal(created.state, "Created");
          assert.equal(created.device_tree, undefined);
          await api.shutdownVmm();
        } finally {
          if ((await within(bareExited, 3000)) === TIMED_OUT) bare.kill("SIGKILL");
          await bareExited;
        }

        await using vm = await r.driver.launch(r.config);
        const id = await vm.addDisk({ path: path.join(r.dir, "image.erofs"), serial: "img", readOnly: true });
        const raw = (await vm.api.request("GET", "vm.info")).body;
        assert.equal(raw.includes('"pci_bdf":null'), nulls, "a device node without a PCI address");
        assert.equal(raw.includes('"parent":null'), nulls, "a PCI node without a parent");
        assert.equal(raw.includes('"firmware":null'), nulls, "an unset payload option in config");
        const info = await vm.info();
        assert.deepEqual(info.devices[id], {});
        assert.match(info.devices[`_virtio-pci-${id}`]?.pciBdf ?? "", /^0000:00:[0-9a-f]{2}\.0$/);
        await vm.removeDevice(id);
        assert.equal((await vm.info()).devices[id], undefined);
      });

      it("clears what a dead VMM left in the VM's dir (API and vsock sockets, lock, a console.log symlink) without following links", async () => {
        const r = await rig();
        await mkdir(r.config.stateDir, { recursive: true, mode: 0o700 });
        const paths = chPaths(r.config.stateDir);
        await deadSocket(paths.api);
        await deadSocket(paths.vsock);
        await writeFile(paths.apiLock, "");
        const outside = path.join(r.dir, "not-ours.txt");
        await writeFile(outside, "keep me");
        await symlink(outside, paths.console);
        await using vm = await r.driver.launch(r.config);
        const agent = await vm.connectAgent({ timeoutMs: 10_000 });
        assert.equal((await agent.health()).status, "SERVING");
        assert.equal(await readFile(outside, "utf8"), "keep me", "the symlink's target is untouched");
        assert.ok((await lstat(paths.console)).isFile(), "console.log is a file of ours again");
        const log = await r.log();
        assert.ok(!log.some((e) => e.t === "refused" || e.t === "stale-api-socket-removed"));
      });

      it(`the double refuses stale sockets as this release does: the API socket ${version === "v53.0" ? "is cleared (v53)" : "stops the VMM at start"}, the vsock socket fails vm.boot (every release)`, async () => {
        const r = await rig();
        const sock = path.join(r.dir, "stale-api.sock");
        await deadSocket(sock);
        const child = spawn(path.join(r.dir, "cloud-hypervisor"), ["--api-socket", `path=${sock}`], {
          stdio: ["ignore", "ignore", "pipe"],
        });
        let stderr = "";
        child.stderr.on("data", (d: Buffer) => {
          stderr += d.toString();
        });
        const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
        let apiPath = sock;
        let vmm = child;
        let vmmExited: Promise<unknown> = exited;
        if (version !== "v53.0") {
          assert.equal(await exited, 1);
          assert.match(stderr, /Address in use/);
          // The vsock check needs a VMM that runs: one on a clean path.
          apiPath = path.join(r.dir, "fresh-api.sock");
          vmm = spawn(path.join(r.dir, "cloud-hypervisor"), ["--api-socket", `path=${apiPath}`], {
            stdio: ["ignore", "ignore", "pipe"],
          });
          vmmExited = new Promise((resolve) => vmm.once("exit", resolve));
        }
        try {
          const api = new ChApiClient(apiPath);
          await eventually(
            async () => (await api.ping().catch(() => undefined)) !== undefined,
            "the API",
            10_000,
          );
          assert.equal(
            existsSync(`${apiPath}.lock`),
            version === "v53.0",
            "v53 keeps a lock file beside the socket",
          );
          // Every release: a vsock socket left behind fails vm.boot.
          const vsock = path.join(r.dir, "stale-vsock.sock");
          await deadSocket(vsock);
          await api.createVm({ payload: { kernel: r.config.kernelPath }, vsock: { cid: 3, socket: vsock } });
          await assert.rejects(api.bootVm(), /answered 500: .*virtio-vsock.*Address in use/);
          await api.shutdownVmm();
        } finally {
          if ((await within(vmmExited, 3000)) === TIMED_OUT) vmm.kill("SIGKILL");
          await vmmExited;
        }
      });

      for (const [fault, reason] of [
        [
          "panic",
          /^guest kernel panic: Kernel panic - not syncing: sysrq triggered crash; the guest reset itself/,
        ],
        ["reset", /^the guest reset itself \(cloud-hypervisor would have rebooted it\)$/],
        ["poweroff", /^the guest powered itself off$/],
      ] as const) {
        it(`a guest ${fault} ends the VM (no silent reboot) with the reason in its exit, leaving nothing`, async () => {
          const r = await rig({ guestFault: fault });
          const vm = await r.driver.launch(r.config);
          try {
            const agent = await vm.connectAgent({ timeoutMs: 10_000 });
            assert.equal((await agent.health()).status, "SERVING");
            process.kill(vm.pid, "SIGUSR1"); // the double's cue for the guest to fault
            const exit = await within(vm.exited, 10_000);
            assert.notEqual(exit, TIMED_OUT, "the VM ended after the fault");
            if (exit !== TIMED_OUT) assert.match(exit.reason ?? "(no reason)", reason);
          } finally {
            await vm.stop();
          }
          await assertNoLeftovers(r, vm);
          const log = await r.log();
          const faultAt = log.findIndex((e) => e.t === "guest-fault");
          assert.ok(faultAt >= 0, "the double's guest faulted");
          if (fault !== "poweroff") {
            const after = log
              .slice(faultAt)
              .filter((e) => e.t === "request")
              .map((e) => e.path);
            assert.deepEqual(
              after,
              ["/api/v1/vm.shutdown", "/api/v1/vmm.shutdown"],
              "the driver stopped the VM",
            );
          }
        });
      }
    });
  }

  describe(`what only the driver decides (Cloud Hypervisor ${LATEST_VERSION})`, () => {
    before(() => {
      currentVersion = LATEST_VERSION;
    });

    it("gives up on the agent at the deadline, saying why", async () => {
      const r = await rig({ refuseConnects: 1_000_000 });
      await using vm = await r.driver.launch(r.config);
      const t0 = Date.now();
      await assert.rejects(
        vm.connectAgent({ timeoutMs: 600 }),
        /no agent on vsock port 1024 \(gave up after \d+ attempts; last: the VMM closed the connection/,
      );
      assert.ok(Date.now() - t0 < 2000);
    });

    it("the double is strict: a field outside the documented schema is a 400 naming it", async () => {
      const r = await rig();
      await using vm = await r.driver.launch(r.config);
      await assert.rejects(
        vm.api.request("PUT", "vm.add-disk", {
          path: path.join(r.dir, "image.erofs"),
          readonly: "yes",
          serail: "x",
        }),
        (err) => {
          assert.ok(err instanceof ChApiError);
          assert.equal(err.status, 400);
          assert.match(err.message, /readonly: invalid type: expected a boolean/);
          assert.match(err.message, /serail: unknown field/);
          return true;
        },
      );
      await assert.rejects(vm.api.request("GET", "vm.boot"), /answered 400/);
      await assert.rejects(vm.api.request("GET", "vm.nonsense"), /answered 404: Not Found/);
    });

    it("a VMM that ignores vmm.shutdown is killed after the grace period", async () => {
      const r = await rig({ ignoreVmmShutdown: true });
      const vm = await r.driver.launch(r.config);
      await vm.stop();
      assert.deepEqual(await vm.exited, { code: null, signal: "SIGKILL" });
      await assertNoLeftovers(r, vm);
    });

    it("a missing binary fails the launch with the reason, leaving no state dir", async () => {
      const r = await rig();
      const driver = new CloudHypervisorDriver({ binary: path.join(r.dir, "no-such-cloud-hypervisor") });
      await assert.rejects(
        driver.launch(r.config),
        /cloud-hypervisor binary .*no-such-cloud-hypervisor not found or not executable \(runtime config cloud_hypervisor_binary\)/,
      );
      await assert.rejects(stat(r.config.stateDir), { code: "ENOENT" });
    });

    it("refuses Cloud Hypervisor older than v49 at start, naming the version and the floor", async () => {
      const r = await rig({ reportedVersion: "48.0.0" });
      await assert.rejects(
        r.driver.launch(r.config),
        /is Cloud Hypervisor 48\.0\.0; cloudhv needs v49 or newer \(runtime config cloud_hypervisor_binary\)/,
      );
      await assert.rejects(stat(r.config.stateDir), { code: "ENOENT" });
      const start = (await r.log()).find((e) => e.t === "start");
      await eventually(() => gone(start?.pid), "the VMM to be gone");
    });

    it("never takes over a socket a live process answers on, nor a state dir that is a symlink", async () => {
      const r = await rig();
      await mkdir(r.config.stateDir, { recursive: true, mode: 0o700 });
      const live = net.createServer();
      const api = chPaths(r.config.stateDir).api;
      await new Promise<void>((resolve) => live.listen(api, resolve));
      try {
        await assert.rejects(
          r.driver.launch(r.config),
          /ch-api\.sock is in use by a running process .*stop it before this VM starts/,
        );
        assert.ok((await lstat(api)).isSocket(), "the live socket is left alone");
        assert.equal((await r.log()).filter((e) => e.t === "start").length, 0, "no VMM was started");
      } finally {
        await new Promise((resolve) => live.close(resolve));
      }
      const elsewhere = path.join(r.dir, "elsewhere");
      await mkdir(elsewhere);
      const linked = path.join(r.dir, "linked-state");
      await symlink(elsewhere, linked);
      await assert.rejects(
        r.driver.launch({ ...r.config, stateDir: linked }),
        /linked-state is not a directory \(a symlink or a file\)/,
      );
    });

    it("a VMM that writes garbage to the event monitor: skipped, logged 5 times at most, the VM keeps running", async () => {
      const r = await rig({ eventGarbage: 500 });
      const lines: string[] = [];
      const log = pino({ level: "warn" }, { write: (line: string) => void lines.push(line) });
      await using vm = await r.driver.launch({ ...r.config, log });
      await eventually(() => lines.length >= 5, "the skipped records to be logged");
      const agent = await vm.connectAgent({ timeoutMs: 10_000 });
      assert.equal((await agent.health()).status, "SERVING");
      assert.equal((await vm.info()).state, "running");
      const skipped = lines.filter((l) => l.includes("event monitor: skipped"));
      assert.equal(skipped.length, 5);
    });
  });
});
