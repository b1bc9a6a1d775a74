// `--restart auto` against a real containerd 1.6: the installer restarts containerd itself,
// waits for the handler, labels the node only then, and unlabels it before anything else on
// uninstall. And when containerd cannot come up with the patched config (a containerd that
// refuses any config naming cloudhv: the simulated failure), the config is rolled back,
// containerd is brought back on the original, the node is not labeled, and install fails
// saying so.
import assert from "node:assert/strict";
import { chmod, readdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { afterEach, describe, it } from "node:test";
import type { PrivateContainerd } from "@cloudhv/e2e/dist/src/containerd.js";
import { pino } from "pino";
import { criStatus } from "../src/cri-status.js";
import { install, readState, uninstall } from "../src/install.js";
import type { NodeLabeler } from "../src/node-label.js";
import { HostRoot } from "../src/paths.js";
import type { Restarter } from "../src/restart.js";
import { makeNode, realisticV2, type TestNode, testBundle, testRuntimeConfig } from "./support/node.js";

const log = pino({ level: "silent" });

/** Records label calls with what containerd served at that moment. */
function recordingLabeler(address: string, configPath: string) {
  const calls: Array<{ op: "set" | "remove"; node: string; handlers: string[]; configHasRuntime: boolean }> =
    [];
  const record = async (op: "set" | "remove", node: string) => {
    const handlers = (await criStatus(address)).handlers.sort();
    calls.push({
      op,
      node,
      handlers,
      configHasRuntime: (await readFile(configPath, "utf8")).includes("cloudhv.v1"),
    });
  };
  const labeler: NodeLabeler = { set: (n) => record("set", n), remove: (n) => record("remove", n) };
  return { labeler, calls };
}

function restarterFor(containerd: PrivateContainerd): Restarter & { count: number } {
  const r = {
    describe: "restart the test's containerd",
    count: 0,
    async restart() {
      r.count++;
      await containerd.restart();
    },
  };
  return r;
}

describe("installer --restart auto with a real containerd 1.6", () => {
  let node: TestNode | undefined;
  afterEach(async () => {
    await node?.stop();
    node = undefined;
  });

  it("restarts containerd, labels the node only once the handler is live, unlabels first on uninstall", async () => {
    node = await makeNode();
    const original = Buffer.from(realisticV2(node.dir));
    await writeFile(node.configPath, original);
    const containerd = await node.start();
    const restarter = restarterFor(containerd);
    const { labeler, calls } = recordingLabeler(node.address, node.configPath);
    const common = {
      root: new HostRoot(node.root),
      log,
      restarter,
      containerdAddress: node.address,
      nodeName: "node-a",
      labeler,
    };
    const res = await install({
      ...common,
      artifacts: await testBundle(),
      runtimeConfig: testRuntimeConfig(),
    });
    assert.equal(res.restarted, true);
    assert.equal(res.labeled, true);
    assert.equal(restarter.count, 1);
    assert.deepEqual(calls, [
      { op: "set", node: "node-a", handlers: ["cloudhv", "crun", "runc"], configHasRuntime: true },
    ]);

    // Installed and live: a second install neither restarts nor rewrites.
    const again = await install({
      ...common,
      artifacts: await testBundle(),
      runtimeConfig: testRuntimeConfig(),
    });
    assert.equal(again.restarted, false);
    assert.deepEqual(again.changes, []);
    assert.equal(restarter.count, 1);

    const un = await uninstall(common);
    assert.equal(un.restarted, true);
    assert.equal(restarter.count, 2);
    assert.deepEqual(calls[2], {
      op: "remove",
      node: "node-a",
      handlers: ["cloudhv", "crun", "runc"],
      configHasRuntime: true,
    });
    assert.deepEqual(await readFile(node.configPath), original);
    assert.deepEqual((await criStatus(node.address)).handlers.sort(), ["crun", "runc"]);
  });

  it("rolls the config back when containerd does not come up with it, and does not label the node", async () => {
    node = await makeNode();
    const original = Buffer.from(realisticV2(node.dir));
    await writeFile(node.configPath, original);
    // The simulated failure: this containerd exits at once on any config that names our runtime type.
    const refusing = path.join(node.dir, "refusing-containerd");
    await writeFile(
      refusing,
      '#!/bin/sh\nif grep -q io.containerd.cloudhv.v1 /etc/containerd/config.toml; then echo "simulated: cannot load this config" >&2; exit 1; fi\nexec containerd "$@"\n',
    );
    await chmod(refusing, 0o755);
    const containerd = await node.start(refusing);
    const restarter = restarterFor(containerd);
    const { labeler, calls } = recordingLabeler(node.address, node.configPath);
    const root = new HostRoot(node.root);
    await assert.rejects(
      install({
        root,
        log,
        restarter,
        containerdAddress: node.address,
        nodeName: "node-a",
        labeler,
        healthTimeoutMs: 10_000,
        artifacts: await testBundle(),
        runtimeConfig: testRuntimeConfig(),
      }),
      /containerd did not come up with the cloudhv runtime \(containerd exited with 1.*\); the previous config was restored and containerd is healthy again/,
    );
    assert.equal(restarter.count, 2, "one restart with the patch, one after the rollback");
    assert.deepEqual(await readFile(node.configPath), original);
    assert.deepEqual(calls, [], "the node was not labeled");
    const status = await criStatus(node.address);
    assert.equal(status.conditions.RuntimeReady?.status, true);
    assert.deepEqual(status.handlers.sort(), ["crun", "runc"]);
    // The state says what is on disk: no config of ours, no backup to restore from.
    assert.deepEqual((await readState(root))?.files, []);
    assert.deepEqual(await readdir(path.join(node.root, "opt/cloudhv/backup")), []);
  });
});
