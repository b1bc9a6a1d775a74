// The DaemonSet's installer converges instead of crash-looping: with containerd not restarted
// by the installer (--restart none, or --restart auto on a node where containerd is neither a
// systemd unit nor under a known supervisor, like this machine's), `install --stay` stays up,
// not ready, says what the admin must do (log line and a Kubernetes Event on the node), and
// labels the node and turns ready as soon as containerd serves the handler — no pod restart.
// Once an uninstall starts on the node it does nothing more. Real containerd 1.6.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { afterEach, describe, it } from "node:test";
import { pino } from "pino";
import { EXIT } from "../src/exit-codes.js";
import { install, uninstall } from "../src/install.js";
import type { NodeEvents } from "../src/kube.js";
import type { NodeLabeler } from "../src/node-label.js";
import { HostRoot } from "../src/paths.js";
import { watchNode } from "../src/watch.js";
import {
  cli,
  INSTALLER,
  makeNode,
  realisticV2,
  type TestNode,
  testBundle,
  testRuntimeConfig,
} from "./support/node.js";

const log = pino({ level: "silent" });

/** The installer CLI left running; its JSON lines collected as they come. */
function startCli(args: string[]) {
  const child = spawn(process.execPath, [INSTALLER, ...args], {
    env: { ...process.env, NODE_NAME: "" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const lines: Array<Record<string, unknown>> = [];
  let out = "";
  child.stdout.on("data", (d: Buffer) => {
    out += d.toString();
    for (;;) {
      const nl = out.indexOf("\n");
      if (nl === -1) break;
      const line = out.slice(0, nl);
      out = out.slice(nl + 1);
      if (line.startsWith("{")) lines.push(JSON.parse(line) as Record<string, unknown>);
    }
  });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  return { child, lines, exited, stderr: () => stderr };
}

async function until(what: string, check: () => boolean | Promise<boolean>, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const fileExists = (f: string) =>
  readFile(f).then(
    () => true,
    () => false,
  );

describe("install --stay converges when the installer does not restart containerd (real containerd 1.6)", () => {
  let node: TestNode | undefined;
  let child: ChildProcess | undefined;
  afterEach(async () => {
    child?.kill("SIGKILL");
    child = undefined;
    await node?.stop();
    node = undefined;
  });

  it("--restart auto here picks none (containerd is no systemd unit, its parent no supervisor); stays up not ready, then ready after containerd restarts; SIGTERM exits 0", async () => {
    node = await makeNode();
    await writeFile(node.configPath, realisticV2(node.dir));
    const containerd = await node.start();
    const runtimeConfig = path.join(node.dir, "runtime-config.json");
    await writeFile(runtimeConfig, JSON.stringify(testRuntimeConfig()));
    const ready = path.join(node.dir, "ready");
    const run = startCli([
      "install",
      "--host-root",
      node.root,
      "--containerd-address",
      node.address,
      "--artifacts",
      await testBundle(),
      "--runtime-config",
      runtimeConfig,
      "--skip-host-tools-check",
      "--ready-file",
      ready,
      "--stay",
      "--watch-interval",
      "0.2",
    ]);
    child = run.child;
    await until("the installer to wait for containerd", () =>
      run.lines.some((l) => String(l.msg).startsWith("waiting for containerd to serve the cloudhv handler")),
    );
    const mode = run.lines.find((l) => l.msg === "restart mode");
    assert.equal(mode?.restart, "none");
    assert.match(
      String(mode?.why),
      /is not run by systemd .* its parent .* is not a supervisor the installer knows/,
    );
    const pending = run.lines.find((l) => /^containerd must be restarted on this node/.test(String(l.msg)));
    assert.ok(pending, "the log says what the admin must do");
    assert.equal(pending.level, 40);
    assert.match(
      String(pending.msg),
      /the installer waits and labels the node cloudhv\.io\/runtime=ready once containerd serves the handler/,
    );
    // Not ready, and still running well past the point where it used to exit 13.
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(run.child.exitCode, null, `still running (stderr: ${run.stderr()})`);
    assert.equal(await fileExists(ready), false);

    // The admin restarts containerd: ready without a pod restart.
    await containerd.restart();
    await until("the ready file", () => fileExists(ready));
    assert.ok(run.lines.some((l) => l.msg === "containerd serves the cloudhv handler: ready"));

    run.child.kill("SIGTERM");
    assert.equal(await run.exited, 0);
    assert.ok(
      run.lines.some((l) => l.msg === "stopped; cloudhv stays installed (only uninstall removes it)"),
    );
  });

  it("labels the node once the handler is live, posts an Event saying what to do, and stands back once an uninstall starts", async () => {
    node = await makeNode();
    await writeFile(node.configPath, realisticV2(node.dir));
    const containerd = await node.start();
    const root = new HostRoot(node.root);
    const ops: string[] = [];
    const labeler: NodeLabeler = {
      set: async (n) => {
        ops.push(`set ${n}`);
      },
      remove: async (n) => {
        ops.push(`remove ${n}`);
      },
    };
    const posted: Array<{ node: string; reason: string; message: string }> = [];
    const events: NodeEvents = {
      warn: async (n, reason, message) => {
        posted.push({ node: n, reason, message });
      },
    };
    const common = { root, log, labeler, events, nodeName: "node-a", containerdAddress: node.address };
    const res = await install({
      ...common,
      checkHostTools: false,
      artifacts: await testBundle(),
      runtimeConfig: testRuntimeConfig(),
    });
    assert.equal(res.live, false);
    assert.equal(res.labeled, false);
    assert.deepEqual(ops, []);
    assert.equal(posted.length, 1);
    assert.equal(posted[0]?.node, "node-a");
    assert.equal(posted[0]?.reason, "ContainerdRestartNeeded");
    assert.match(
      posted[0]?.message ?? "",
      /^cloudhv: containerd must be restarted on this node to load the cloudhv runtime/,
    );

    const ready = path.join(node.dir, "ready");
    const ac = new AbortController();
    const watching = watchNode({
      root,
      log,
      address: node.address,
      nodeName: "node-a",
      labeler,
      readyFile: ready,
      live: res.live,
      labeled: res.labeled,
      pollMs: 100,
      signal: ac.signal,
    });
    await new Promise((r) => setTimeout(r, 500));
    assert.deepEqual(ops, [], "not labeled while containerd lacks the handler");
    await containerd.restart();
    await until("the label", () => ops.length === 1);
    assert.deepEqual(ops, ["set node-a"]);
    await until("the ready file", () => fileExists(ready));

    // helm uninstall's cleanup on this node: the watch stops, nothing is labeled again.
    await uninstall({ ...common });
    assert.equal(await watching, "uninstalling");
    assert.deepEqual(ops, ["set node-a", "remove node-a", "remove node-a"]);
    assert.equal(await fileExists(ready), false);
    ac.abort();
  });
});

describe("the CLI's exit statuses and staying up (no containerd needed)", () => {
  it("uninstall --stay writes its ready file and stays up until SIGTERM, then exits 0 (the cleanup DaemonSet)", async () => {
    const dir = await mkdtemp("/var/tmp/chv-stay-");
    try {
      const ready = path.join(dir, "uninstalled");
      const run = startCli([
        "uninstall",
        "--host-root",
        dir,
        "--restart",
        "none",
        "--ready-file",
        ready,
        "--stay",
      ]);
      await until("the ready file", () => fileExists(ready));
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(run.child.exitCode, null, `still running (stderr: ${run.stderr()})`);
      run.child.kill("SIGTERM");
      assert.equal(await run.exited, 0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("a failure exits with its own status and says what it means", async () => {
    const dir = await mkdtemp("/var/tmp/chv-exit-");
    try {
      const missing = await cli(["install", "--host-root", path.join(dir, "nope"), "--restart", "none"]);
      assert.equal(missing.code, EXIT.HOST, missing.stdout);
      const usage = await cli(["install", "--no-such-flag"]);
      assert.equal(usage.code, EXIT.USAGE, usage.stdout);
      await mkdir(path.join(dir, "etc/containerd"), { recursive: true });
      await writeFile(path.join(dir, "etc/containerd/config.toml"), realisticV2(dir));
      const tools = await cli([
        "install",
        "--host-root",
        dir,
        "--restart",
        "none",
        "--artifacts",
        await testBundle(),
      ]);
      assert.equal(tools.code, EXIT.MISSING_TOOLS, tools.stdout);
      const failed = tools.lines.find((l) => l.msg === "failed");
      assert.equal(failed?.exitCode, 4);
      assert.equal(
        failed?.meaning,
        "tools the shim needs are missing on the node (each named with its package)",
      );
      assert.match(
        String(failed?.err),
        /mkfs\.erofs \(container images as erofs disks; package erofs-utils\)/,
      );
      const st = await cli([
        "status",
        "--host-root",
        dir,
        "--containerd-address",
        path.join(dir, "none.sock"),
      ]);
      assert.equal(st.code, EXIT.NOT_READY);
      assert.match(st.stdout, /cloudhv runtime absent/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
