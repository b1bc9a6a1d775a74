// `--restart auto` against a real containerd 1.6: the installer restarts containerd itself,
// waits for the handler, labels the node only then, and unlabels it before anything else on
// uninstall. And when containerd cannot come up with the patched config (a containerd that
// refuses any config naming cloudhv: the simulated failure), the config is rolled back,
// containerd is brought back on the original, the node is not labeled, and install fails
// saying so.
import assert from "node:assert/strict";
import { chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { afterEach, describe, it } from "node:test";
import type { PrivateContainerd } from "@cloudhv/e2e/dist/src/containerd.js";
import { pino } from "pino";
import { criStatus } from "../src/cri-status.js";
import { EXIT, exitCodeFor } from "../src/exit-codes.js";
import { install, readState, uninstall } from "../src/install.js";
import type { NodeLabeler } from "../src/node-label.js";
import { HostRoot } from "../src/paths.js";
import { RestartError, type Restarter } from "../src/restart.js";
import {
  cli,
  makeNode,
  realisticV2,
  type TestNode,
  testBundle,
  testRuntimeConfig,
  tree,
} from "./support/node.js";

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
      checkHostTools: false,
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
      checkHostTools: false,
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
    const before = await tree(node.root);
    await assert.rejects(
      install({
        root,
        log,
        restarter,
        containerdAddress: node.address,
        nodeName: "node-a",
        labeler,
        healthTimeoutMs: 10_000,
        checkHostTools: false,
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
    // A failed first install leaves nothing behind: no state, no backup, no /opt/cloudhv.
    assert.equal(await readState(root), undefined);
    assert.deepEqual(await tree(node.root), before);
  });
});

describe("restarts for real (containerd 1.6): signal mode, a restart that never ran, a CRI table in an import", () => {
  let node: TestNode | undefined;
  afterEach(async () => {
    await node?.stop();
    node = undefined;
  });

  it("--restart signal: SIGTERM to the pid file's containerd, its supervisor starts it again; uninstall does it again", async () => {
    node = await makeNode();
    const original = Buffer.from(realisticV2(node.dir));
    await writeFile(node.configPath, original);
    await mkdir(path.join(node.root, "run"));
    const pidFile = path.join(node.root, "run/containerd-test.pid");
    // The supervisor: starts containerd again whenever it exits, and writes its pid.
    const supervisor = path.join(node.dir, "supervise");
    await writeFile(
      supervisor,
      `#!/bin/sh\ntrap 'kill $c; wait $c; exit 0' TERM\nwhile :; do containerd "$@" & c=$!; echo $c > ${pidFile}; wait $c; sleep 0.2; done\n`,
    );
    await chmod(supervisor, 0o755);
    await node.start(supervisor);
    const pid = async () => Number((await readFile(pidFile, "utf8")).trim());
    const first = await pid();
    const before = await tree(node.root);
    const runtimeConfig = path.join(node.dir, "runtime-config.json");
    await writeFile(runtimeConfig, JSON.stringify(testRuntimeConfig()));
    const base = [
      "--host-root",
      node.root,
      "--restart",
      "signal",
      "--containerd-pidfile",
      "/run/containerd-test.pid",
      "--containerd-address",
      node.address,
    ];
    const args = [
      ...base,
      "--artifacts",
      await testBundle(),
      "--runtime-config",
      runtimeConfig,
      "--skip-host-tools-check",
    ];
    const res = await cli(["install", ...args]);
    assert.equal(res.code, 0, res.stdout);
    assert.ok(res.lines.some((l) => l.msg === "restart mode" && l.restart === "signal"));
    assert.ok(res.lines.some((l) => l.msg === "containerd is healthy" && l.handler === "live"));
    const second = await pid();
    assert.notEqual(second, first, "containerd was restarted by its supervisor");
    assert.deepEqual((await criStatus(node.address)).handlers.sort(), ["cloudhv", "crun", "runc"]);

    const again = await cli(["install", ...args]);
    assert.equal(again.code, 0, again.stdout);
    assert.equal(await pid(), second, "installed and live: not restarted again");

    const un = await cli(["uninstall", ...base]);
    assert.equal(un.code, 0, un.stdout);
    assert.notEqual(await pid(), second);
    assert.deepEqual((await criStatus(node.address)).handlers.sort(), ["crun", "runc"]);
    assert.deepEqual(await readFile(node.configPath), original);
    assert.deepEqual(await tree(node.root), before);
  });

  it("a restart that could not run leaves containerd serving its old config, and says exactly that", async () => {
    node = await makeNode();
    const original = Buffer.from(realisticV2(node.dir));
    await writeFile(node.configPath, original);
    await node.start();
    const root = new HostRoot(node.root);
    const before = await tree(node.root);
    await assert.rejects(
      install({
        root,
        log,
        containerdAddress: node.address,
        checkHostTools: false,
        restarter: {
          describe: "systemctl restart containerd (in the host's namespaces)",
          restart: async () => {
            throw new RestartError(
              "systemctl restart containerd failed: nsenter: cannot open /proc/1/ns/ipc: Permission denied (systemctl did not run: containerd was not restarted)",
              false,
            );
          },
        },
        artifacts: await testBundle(),
        runtimeConfig: testRuntimeConfig(),
      }),
      (err: Error) => {
        assert.equal(exitCodeFor(err), EXIT.RESTART_FAILED);
        assert.match(
          err.message,
          /^containerd was not restarted \(.*Permission denied.*\)\. It still runs its previous config and serves CRI; the config change was undone/,
        );
        assert.doesNotMatch(err.message, /not healthy/);
        return true;
      },
    );
    assert.deepEqual(await readFile(node.configPath), original);
    assert.deepEqual(await tree(node.root), before);
    assert.deepEqual((await criStatus(node.address)).handlers.sort(), ["crun", "runc"]);
  });

  it("a version 2 config whose CRI table is in an imported file: containerd 1.6 serves cloudhv and the other runtimes", async () => {
    node = await makeNode();
    // The main file keeps the node's settings; the CRI plugin's whole table lives in cri.toml.
    const full = realisticV2(node.dir);
    const at = full.indexOf('  [plugins."io.containerd.grpc.v1.cri"]');
    const end = full.indexOf("  # Site tooling reads this.");
    const main = `${full.slice(0, at)}${full.slice(end)}`.replace(
      "version = 2\n",
      'version = 2\nimports = ["cri.toml"]\n',
    );
    const cri = `# the CRI plugin, managed apart\n${full.slice(at, end).replace(/^ {2}/gm, "")}`;
    await writeFile(node.configPath, main);
    await writeFile(path.join(node.root, "etc/containerd/cri.toml"), cri);
    const containerd = await node.start();
    assert.deepEqual(
      (await criStatus(node.address)).handlers.sort(),
      ["crun", "runc"],
      "containerd takes the import's CRI table",
    );
    const restarter = restarterFor(containerd);
    const common = { root: new HostRoot(node.root), log, restarter, containerdAddress: node.address };
    const res = await install({
      ...common,
      checkHostTools: false,
      artifacts: await testBundle(),
      runtimeConfig: testRuntimeConfig(),
    });
    assert.deepEqual(
      res.changes.map((c) => c.path),
      ["/etc/containerd/cri.toml"],
    );
    assert.equal(res.restarted, true);
    assert.deepEqual((await criStatus(node.address)).handlers.sort(), ["cloudhv", "crun", "runc"]);
    await uninstall(common);
    assert.equal(await readFile(node.configPath, "utf8"), main);
    assert.equal(await readFile(path.join(node.root, "etc/containerd/cri.toml"), "utf8"), cri);
    assert.deepEqual((await criStatus(node.address)).handlers.sort(), ["crun", "runc"]);
  });
});
