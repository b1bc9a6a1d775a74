// The installer against a real containerd 2.1 (built from the Go module proxy by
// scripts/build-containerd2.sh, cached): a version 3 config gets a drop-in through `imports`
// (containerd 2 merges imports deeply — checked here by the other runtimes surviving), the CRI
// plugin serves handler `cloudhv` with our runtime type, and uninstall restores the original
// byte-for-byte. A pod runs with handler `cloudhv` (containerd 2.1 writes OCI spec 1.2.1; the
// agent hands the guest's crun 1.8 a spec version it knows).
import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { PrivateContainerd } from "@cloudhv/e2e/dist/src/containerd.js";
import { parse } from "smol-toml";
import { criStatus } from "../src/cri-status.js";
import {
  at,
  cli,
  containerd2,
  importTestImages,
  makeNode,
  realisticV3,
  runTestPod,
  type TestNode,
  testBundle,
  testRuntimeConfig,
  tree,
} from "./support/node.js";

describe("installer with a real containerd 2.1 (config version 3, drop-in through imports, a pod runs)", () => {
  let node: TestNode;
  let containerd: PrivateContainerd;
  let original: Buffer;
  let base: string[];
  let binary: string;

  before(async () => {
    binary = await containerd2();
    node = await makeNode();
    original = Buffer.from(realisticV3(node.dir));
    await writeFile(node.configPath, original);
    containerd = await node.start(binary);
    await importTestImages(containerd, node.dir);
    const runtimeConfig = path.join(node.dir, "runtime-config.json");
    await writeFile(runtimeConfig, JSON.stringify(testRuntimeConfig()));
    base = ["--host-root", node.root, "--restart", "none", "--containerd-address", node.address];
    const res = await cli([
      "install",
      ...base,
      "--artifacts",
      await testBundle(),
      "--runtime-config",
      runtimeConfig,
      "--skip-host-tools-check",
    ]);
    assert.equal(res.code, 0, res.stdout);
  });

  after(async () => {
    await node?.stop();
  });

  it("writes a drop-in and one imports line; containerd 2 keeps every other runtime", async () => {
    const version = (await containerd.ctr(["version"])).stdout;
    assert.match(version, /Server:[\s\S]*Version:\s+v2\.1\./);
    const patched = await readFile(node.configPath, "utf8");
    const lines = patched.split("\n");
    const added = lines.filter((l) => !original.toString().split("\n").includes(l));
    assert.deepEqual(added, [
      'imports = ["/etc/containerd/conf.d/cloudhv.toml"] # added by cloudhv-installer',
    ]);
    const dropIn = parse(await readFile(path.join(node.root, "etc/containerd/conf.d/cloudhv.toml"), "utf8"));
    assert.equal(at(dropIn, "version"), 3);
    assert.equal(
      at(
        dropIn,
        "plugins",
        "io.containerd.cri.v1.runtime",
        "containerd",
        "runtimes",
        "cloudhv",
        "runtime_type",
      ),
      "io.containerd.cloudhv.v1",
    );

    await containerd.restart();
    const status = await criStatus(node.address);
    assert.equal(status.conditions.RuntimeReady?.status, true);
    assert.deepEqual(status.handlers.sort(), ["cloudhv", "crun", "runc"]);
  });

  it("runs a pod with handler cloudhv through containerd 2's CRI, sized by its annotation", async () => {
    const pod = await runTestPod(node.address, node.dir);
    assert.ok(pod.vms >= 1, "the pod got a VM");
    assert.match(pod.log, /stdout F hello from an installed runtime$/m);
    assert.ok(
      pod.memTotalKb > 350 * 1024 && pod.memTotalKb <= 448 * 1024,
      `guest MemTotal ${pod.memTotalKb} kB`,
    );
  });

  it("uninstalls: the original config byte-for-byte, the drop-in gone, containerd 2 starts", async () => {
    const res = await cli(["uninstall", ...base]);
    assert.equal(res.code, 0, res.stdout);
    assert.deepEqual(await readFile(node.configPath), original);
    await containerd.restart();
    const status = await criStatus(node.address);
    assert.deepEqual(status.handlers.sort(), ["crun", "runc"]);
    assert.deepEqual(await tree(path.join(node.root, "etc")), ["containerd/", "containerd/config.toml"]);
  });
});
