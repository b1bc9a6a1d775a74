// Upgrade on a real containerd 1.6 with --restart auto: installing a new version while a
// cloudhv pod runs switches the launcher to the new version without restarting containerd;
// the running pod keeps being served by the old version's shim daemon, a new pod gets the new
// version's, the old version stays as `previous`, and uninstall (pods gone) leaves nothing.
import assert from "node:assert/strict";
import { cp, mkdir, readFile, readlink, utimes, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { PrivateContainerd } from "@cloudhv/e2e/dist/src/containerd.js";
import { CriClient, type PodSandboxConfig } from "@cloudhv/e2e/dist/src/cri/client.js";
import { processesMatching } from "@cloudhv/e2e/dist/src/leaks.js";
import { pino } from "pino";
import { readManifest, writeManifest } from "../src/artifacts.js";
import { install, uninstall } from "../src/install.js";
import { HostRoot } from "../src/paths.js";
import {
  BUSYBOX,
  importTestImages,
  makeNode,
  realisticV2,
  type TestNode,
  testBundle,
  testRuntimeConfig,
  tree,
} from "./support/node.js";

const log = pino({ level: "silent" });

describe("upgrade while a cloudhv pod runs (real containerd 1.6)", () => {
  let node: TestNode;
  let containerd: PrivateContainerd;
  let cri: CriClient;

  before(async () => {
    node = await makeNode();
    await writeFile(node.configPath, realisticV2(node.dir));
    containerd = await node.start();
    await importTestImages(containerd, node.dir);
    cri = new CriClient(node.address);
  });
  after(async () => {
    cri?.close();
    await node?.stop();
  });

  async function startPod(name: string): Promise<{ pod: string; ctr: string }> {
    const logDirectory = path.join(node.dir, "pods", name);
    await mkdir(logDirectory, { recursive: true });
    const sandbox: PodSandboxConfig = {
      metadata: { name, uid: `uid-${name}`, namespace: "default", attempt: 0 },
      hostname: name,
      logDirectory,
    };
    const pod = await cri.runPodSandbox(sandbox, "cloudhv");
    const ctr = await cri.createContainer(
      pod,
      { metadata: { name: "app" }, image: { image: BUSYBOX }, command: ["sleep", "600"], logPath: "app.log" },
      sandbox,
    );
    await cri.startContainer(ctr);
    return { pod, ctr };
  }

  /** Shim daemons serving this node's containerd, by the version directory they run from. */
  async function daemonVersions(): Promise<string[]> {
    const pids = await processesMatching(`--containerd-ttrpc ${node.address}.ttrpc`);
    const out: string[] = [];
    for (const pid of pids) {
      const cmdline = (await readFile(`/proc/${pid}/cmdline`, "utf8")).split("\0");
      const m = /\/opt\/cloudhv\/versions\/([^/]+)\//.exec(
        cmdline.find((w) => w.endsWith("bin/daemon.js")) ?? "",
      );
      if (m) out.push(m[1] as string);
    }
    return out.sort();
  }

  it("switches versions without restarting containerd; the old pod keeps running, a new one uses the new version", async () => {
    const root = new HostRoot(node.root);
    let restarts = 0;
    const common = {
      root,
      log,
      checkHostTools: false,
      containerdAddress: node.address,
      restarter: {
        describe: "restart the test's containerd",
        restart: async () => {
          restarts++;
          await containerd.restart();
        },
      },
    };
    const a = await install({ ...common, artifacts: await testBundle(), runtimeConfig: testRuntimeConfig() });
    assert.equal(restarts, 1);
    const first = await startPod("old");
    assert.deepEqual(await daemonVersions(), [a.version]);

    // "A new build": same files, the daemon entry rebuilt (its mtime is the build id), new version.
    const next = path.join(node.dir, "bundle-next");
    await cp(await testBundle(), next, { recursive: true, preserveTimestamps: true });
    const now = new Date();
    await utimes(path.join(next, "shim/dist/src/bin/daemon.js"), now, now);
    const manifest = await writeManifest(next, `${(await readManifest(next)).version}-next`);
    const b = await install({ ...common, artifacts: next, runtimeConfig: testRuntimeConfig() });
    assert.equal(b.version, manifest.version);
    assert.equal(b.previous, a.version);
    assert.deepEqual(b.changes, [], "containerd's config is not touched by an upgrade");
    assert.equal(b.restarted, false);
    assert.equal(restarts, 1, "containerd was not restarted");
    assert.equal(await readlink(root.path("/opt/cloudhv/current")), `versions/${b.version}`);
    assert.equal(await readlink(root.path("/opt/cloudhv/previous")), `versions/${a.version}`);

    // The running pod is still served by the old daemon.
    const alive = await cri.execSync(first.ctr, ["echo", "still here"]);
    assert.equal(alive.stdout.trim(), "still here");
    assert.equal((await cri.containerStatus(first.ctr)).state, "CONTAINER_RUNNING");
    const second = await startPod("new");
    assert.equal((await cri.containerStatus(second.ctr)).state, "CONTAINER_RUNNING");
    assert.deepEqual(await daemonVersions(), [a.version, b.version].sort());

    for (const p of [first, second]) {
      await cri.stopContainer(p.ctr, 2);
      await cri.removeContainer(p.ctr);
      await cri.stopPodSandbox(p.pod);
      await cri.removePodSandbox(p.pod);
    }
    const un = await uninstall(common);
    assert.deepEqual(un.inUse, []);
    assert.deepEqual(await daemonVersions(), [], "idle daemons were stopped");
    assert.ok(!(await tree(node.root)).some((f) => f.startsWith("opt/cloudhv")), "no /opt/cloudhv left");
  });
});
