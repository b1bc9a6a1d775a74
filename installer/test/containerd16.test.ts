// The installer against a real containerd 1.6 (Debian's): install into a pretend node whose
// config is a realistic one, restart containerd on the result, run a pod with handler
// `cloudhv` through CRI (sized by a pod annotation, so pod_annotations works), install again
// (nothing changes), uninstall (the original config comes back byte-for-byte, containerd
// still starts, the node keeps nothing of ours).
import assert from "node:assert/strict";
import { readdir, readFile, readlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { PrivateContainerd } from "@cloudhv/e2e/dist/src/containerd.js";
import { parse } from "smol-toml";
import { criStatus } from "../src/cri-status.js";
import {
  at,
  cli,
  importTestImages,
  makeNode,
  realisticV2,
  runTestPod,
  type TestNode,
  testBundle,
  testRuntimeConfig,
  tree,
} from "./support/node.js";

const CRI = ["plugins", "io.containerd.grpc.v1.cri"];

describe("installer with a real containerd 1.6 (config version 2, edited in place)", () => {
  let node: TestNode;
  let containerd: PrivateContainerd;
  let original: Buffer;
  let base: string[];
  let installArgs: string[];

  before(async () => {
    node = await makeNode();
    original = Buffer.from(realisticV2(node.dir));
    await writeFile(node.configPath, original);
    containerd = await node.start();
    await importTestImages(containerd, node.dir);
    const runtimeConfig = path.join(node.dir, "runtime-config.json");
    await writeFile(runtimeConfig, JSON.stringify(testRuntimeConfig()));
    base = ["--host-root", node.root, "--restart", "none", "--containerd-address", node.address];
    installArgs = [
      ...base,
      "--artifacts",
      await testBundle(),
      "--runtime-config",
      runtimeConfig,
      // The pretend root has no /usr/bin of its own (containerd's namespace uses this machine's).
      "--skip-host-tools-check",
    ];
  });

  after(async () => {
    await node?.stop();
  });

  it("installs, and a pod runs with handler cloudhv sized by its annotation", async () => {
    const started = Date.now();
    const res = await cli(["install", ...installArgs]);
    assert.equal(res.code, 0, res.stdout);
    console.log(`install (copy ~110 MB bundle, patch config) took ${Date.now() - started} ms`);
    assert.ok(res.lines.some((l) => l.msg === "NODE_NAME is not set: node labeling skipped"));

    const patched = await readFile(node.configPath, "utf8");
    assert.ok(
      patched.startsWith(original.toString()),
      "the original text (comments included) is kept as it was",
    );
    const doc = parse(patched);
    const runtimes = at(doc, ...CRI, "containerd", "runtimes") as Record<string, Record<string, unknown>>;
    assert.deepEqual(Object.keys(runtimes).sort(), ["cloudhv", "crun", "runc"]);
    assert.equal(runtimes.cloudhv?.runtime_type, "io.containerd.cloudhv.v1");
    assert.deepEqual(runtimes.cloudhv?.pod_annotations, ["io.cloudhv.*", "io.katacontainers.*"]);
    assert.equal(at(doc, "plugins", "io.containerd.gc.v1.scheduler", "pause_threshold"), 0.02);
    // containerd runs the version's compiled launcher (the bundle has one after scripts/dev.sh setup).
    const shim = await readlink(path.join(node.root, "opt/cloudhv/bin/containerd-shim-cloudhv-v1"));
    assert.match(shim, /^\.\.\/versions\/[^/]+\/shim\/dist\/containerd-shim-cloudhv-v1$/);

    await containerd.restart();
    const status = await criStatus(node.address);
    assert.equal(status.conditions.RuntimeReady?.status, true);
    assert.deepEqual(status.handlers.sort(), ["cloudhv", "crun", "runc"]);

    const pod = await runTestPod(node.address, node.dir);
    assert.ok(pod.vms >= 1, "the pod got a VM");
    assert.match(pod.log, /stdout F hello from an installed runtime$/m);
    // 448 MiB asked by the annotation (the default is 256): the guest sees most of it.
    assert.ok(
      pod.memTotalKb > 350 * 1024 && pod.memTotalKb <= 448 * 1024,
      `guest MemTotal ${pod.memTotalKb} kB`,
    );
  });

  it("installs a second time without changing anything", async () => {
    const before = await readFile(node.configPath);
    const versionsBefore = await readdir(path.join(node.root, "opt/cloudhv/versions"));
    const res = await cli(["install", ...installArgs]);
    assert.equal(res.code, 0, res.stdout);
    assert.ok(res.lines.some((l) => l.msg === "containerd config already has the runtime"));
    assert.ok(res.lines.some((l) => l.msg === "artifacts in place" && l.copied === false));
    assert.deepEqual(await readFile(node.configPath), before);
    assert.deepEqual(await readdir(path.join(node.root, "opt/cloudhv/versions")), versionsBefore);
    const st = await cli(["status", "--json", ...base]);
    assert.equal(st.code, 0, st.stdout);
    assert.equal(JSON.parse(st.stdout).handlerLive, true);
  });

  it("uninstalls: the original config byte-for-byte, containerd starts, nothing of ours is left", async () => {
    const res = await cli(["uninstall", ...base]);
    assert.equal(res.code, 0, res.stdout);
    assert.deepEqual(await readFile(node.configPath), original);
    await containerd.restart();
    const status = await criStatus(node.address);
    assert.equal(status.conditions.RuntimeReady?.status, true);
    assert.deepEqual(status.handlers.sort(), ["crun", "runc"]);
    // What the pretend node had before, and nothing else (state, cache, scratch, links: gone).
    assert.deepEqual(await tree(node.root), [
      "cni/",
      "cni/10-cloudhv.conflist",
      "etc/",
      "etc/containerd/",
      "etc/containerd/config.toml",
      "opt/",
      "opt/node-state/",
      "usr/",
      "usr/local/",
      "usr/local/bin/",
    ]);
    const st = await cli(["status", ...base]);
    assert.equal(st.code, 11, "status: not installed");
    assert.match(st.stdout, /installed: {4}no/);
  });
});
