// The installer against a real containerd 1.6 (Debian's): install into a pretend node whose
// config is a realistic one, restart containerd on the result, run a pod with handler
// `cloudhv` through CRI (sized by a pod annotation, so pod_annotations works), install again
// (nothing changes), uninstall (the original config comes back byte-for-byte, containerd
// still starts, the node keeps nothing of ours).
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import type { PrivateContainerd } from "@cloudhv/e2e/dist/src/containerd.js";
import { CriClient, type PodSandboxConfig } from "@cloudhv/e2e/dist/src/cri/client.js";
import { processesMatching } from "@cloudhv/e2e/dist/src/leaks.js";
import { buildBusyboxImage, importOciArchive } from "@cloudhv/e2e/dist/src/oci-image.js";
import { parse } from "smol-toml";
import { criStatus } from "../src/cri-status.js";
import {
  INSTALLER,
  makeNode,
  realisticV2,
  TEST_STATE,
  type TestNode,
  testBundle,
  testRuntimeConfig,
} from "./support/node.js";

const run = promisify(execFile);
const PAUSE = "docker.io/cloudhv-test/pause:1";
const BUSYBOX = "docker.io/cloudhv-test/busybox:installer";

async function cli(
  args: string[],
): Promise<{ code: number; lines: Array<Record<string, unknown>>; stdout: string }> {
  try {
    const { stdout } = await run(process.execPath, [INSTALLER, ...args], {
      env: { ...process.env, NODE_NAME: "" },
    });
    return { code: 0, lines: jsonLines(stdout), stdout };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string; message: string };
    if (e.stdout === undefined) throw err;
    return { code: e.code ?? -1, lines: jsonLines(e.stdout), stdout: `${e.stdout}${e.stderr ?? ""}` };
  }
}

function jsonLines(text: string): Array<Record<string, unknown>> {
  return text
    .split("\n")
    .filter((l) => l.startsWith(`{"`))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** Every file under `dir`, relative. */
async function tree(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(path.join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    out.push(e.isDirectory() ? `${rel}/` : rel);
    if (e.isDirectory()) out.push(...(await tree(dir, rel)));
  }
  return out.sort();
}

describe("installer with a real containerd 1.6 (config version 2, edited in place)", () => {
  let node: TestNode;
  let containerd: PrivateContainerd;
  let original: Buffer;
  let args: string[];

  before(async () => {
    node = await makeNode();
    original = Buffer.from(realisticV2(node.dir));
    await writeFile(node.configPath, original);
    containerd = await node.start();
    for (const [i, image] of [
      { name: PAUSE, config: { entrypoint: ["/bin/sleep", "2147483647"] } },
      { name: BUSYBOX },
    ].entries()) {
      const built = await buildBusyboxImage({ archivePath: path.join(node.dir, `image-${i}.tar`), ...image });
      await importOciArchive(containerd, built.archivePath, { namespace: "k8s.io" });
      await rm(built.archivePath);
    }
    const runtimeConfig = path.join(node.dir, "runtime-config.json");
    await writeFile(runtimeConfig, JSON.stringify(testRuntimeConfig()));
    args = ["--host-root", node.root, "--restart", "none", "--containerd-address", node.address];
    args.push("--artifacts", await testBundle(), "--runtime-config", runtimeConfig);
  });

  after(async () => {
    await node?.stop();
  });

  it("installs, and a pod runs with handler cloudhv sized by its annotation", async () => {
    const started = Date.now();
    const res = await cli(["install", ...args]);
    assert.equal(res.code, 0, res.stdout);
    console.log(`install took ${Date.now() - started} ms`);
    assert.ok(res.lines.some((l) => l.msg === "NODE_NAME is not set: node labeling skipped"));

    const patched = await readFile(node.configPath, "utf8");
    assert.ok(
      patched.startsWith(original.toString()),
      "the original text (comments included) is kept as it was",
    );
    const doc = parse(patched) as Record<string, any>;
    const runtimes = doc.plugins["io.containerd.grpc.v1.cri"].containerd.runtimes;
    assert.deepEqual(Object.keys(runtimes).sort(), ["cloudhv", "crun", "runc"]);
    assert.equal(runtimes.cloudhv.runtime_type, "io.containerd.cloudhv.v1");
    assert.deepEqual(runtimes.cloudhv.pod_annotations, ["io.cloudhv.*", "io.katacontainers.*"]);
    assert.equal(doc.plugins["io.containerd.gc.v1.scheduler"].pause_threshold, 0.02);

    await containerd.restart();
    const status = await criStatus(node.address);
    assert.equal(status.conditions.RuntimeReady?.status, true);
    assert.deepEqual(status.handlers.sort(), ["cloudhv", "crun", "runc"]);

    const cri = new CriClient(node.address);
    try {
      const logDirectory = path.join(node.dir, "pods", "p1");
      await mkdir(logDirectory, { recursive: true });
      const sandbox: PodSandboxConfig = {
        metadata: { name: "p1", uid: "uid-p1", namespace: "default", attempt: 0 },
        hostname: "p1",
        logDirectory,
        annotations: { "io.katacontainers.config.hypervisor.default_memory": "448" },
        linux: { securityContext: { namespaceOptions: { network: "NODE" } } },
      };
      const pod = await cri.runPodSandbox(sandbox, "cloudhv");
      assert.equal((await cri.podSandboxStatus(pod)).runtimeHandler, "cloudhv");
      const vms = await processesMatching(`${TEST_STATE}/cloudhv/`);
      assert.ok(vms.length >= 1, "the pod got a VM");
      const id = await cri.createContainer(
        pod,
        {
          metadata: { name: "hello" },
          image: { image: BUSYBOX },
          command: [
            "sh",
            "-c",
            "echo hello from an installed runtime; grep MemTotal /proc/meminfo; sleep 600",
          ],
          logPath: "hello.log",
        },
        sandbox,
      );
      await cri.startContainer(id);
      let log = "";
      const deadline = Date.now() + 30_000;
      while (!/MemTotal/.test(log) && Date.now() < deadline) {
        log = await readFile(path.join(logDirectory, "hello.log"), "utf8").catch(() => "");
        await new Promise((r) => setTimeout(r, 200));
      }
      assert.match(log, /stdout F hello from an installed runtime$/m);
      const kb = Number(/MemTotal:\s+(\d+) kB/.exec(log)?.[1]);
      // 448 MiB asked by the annotation (the default is 256): the guest sees most of it.
      assert.ok(kb > 350 * 1024 && kb <= 448 * 1024, `guest MemTotal ${kb} kB`);
      await cri.stopContainer(id, 2);
      await cri.removeContainer(id);
      await cri.stopPodSandbox(pod);
      await cri.removePodSandbox(pod);
    } finally {
      cri.close();
    }
  });

  it("installs a second time without changing anything", async () => {
    const before = await readFile(node.configPath);
    const versionsBefore = await readdir(path.join(node.root, "opt/cloudhv/versions"));
    const res = await cli(["install", ...args]);
    assert.equal(res.code, 0, res.stdout);
    assert.ok(res.lines.some((l) => l.msg === "containerd config already has the runtime"));
    assert.ok(res.lines.some((l) => l.msg === "artifacts in place" && l.copied === false));
    assert.deepEqual(await readFile(node.configPath), before);
    assert.deepEqual(await readdir(path.join(node.root, "opt/cloudhv/versions")), versionsBefore);
    const st = await cli(["status", "--json", ...args.slice(0, 6)]);
    assert.equal(st.code, 0, st.stdout);
    assert.equal(JSON.parse(st.stdout).handlerLive, true);
  });

  it("uninstalls: the original config byte-for-byte, containerd starts, nothing of ours is left", async () => {
    const res = await cli(["uninstall", ...args.slice(0, 6)]);
    assert.equal(res.code, 0, res.stdout);
    assert.deepEqual(await readFile(node.configPath), original);
    await containerd.restart();
    const status = await criStatus(node.address);
    assert.equal(status.conditions.RuntimeReady?.status, true);
    assert.deepEqual(status.handlers.sort(), ["crun", "runc"]);
    // What the pretend node had before, and nothing else (state, cache, scratch, links: gone).
    assert.deepEqual(await tree(node.root), [
      "cni/",
      "etc/",
      "etc/containerd/",
      "etc/containerd/config.toml",
      "opt/",
      "opt/node-state/",
      "usr/",
      "usr/local/",
      "usr/local/bin/",
    ]);
    const st = await cli(["status", ...args.slice(0, 6)]);
    assert.equal(st.code, 1);
    assert.match(st.stdout, /installed: {4}no/);
  });
});
