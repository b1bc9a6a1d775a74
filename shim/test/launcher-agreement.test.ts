// The compiled launcher (host/launcher) and the Node.js shim must name the same daemon for the
// same inputs, or containerd's tasks would split between two daemons. Each case lays out a copy
// of the launcher as an installed shim/dist would be (a build id of our choosing, and in place
// of shim.js a stand-in that reports a fallback), listens where the TypeScript code says the
// front is, and checks the launcher found it, printed it and wrote it to the bundle. No root,
// no VM: scripts/dev.sh setup (or host/launcher/build.sh + npm run build) builds the launcher.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import {
  buildId,
  daemonSocketPathFor,
  LAUNCHER_ENTRY,
  namespaceSocketPath,
  SOCKET_SCHEME,
} from "../src/launcher/daemon-address.js";
import { messageCodec } from "../src/ttrpc/proto.js";
import { TtrpcServer } from "../src/ttrpc/server.js";
import { Code, TtrpcError } from "../src/ttrpc/status.js";

interface Run {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

let root: string;
let dist: string;
let launcher: string;
let nth = 0;
const servers: Array<{ close(): unknown }> = [];

function run(argv: string[], opts: { cwd: string; env: Record<string, string> }): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      launcher,
      argv,
      { cwd: opts.cwd, env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...opts.env }, encoding: "buffer" },
      (err, stdout, stderr) => {
        const code = err ? ((err as { code?: number }).code ?? null) : 0;
        resolve({ code: typeof code === "number" ? code : null, stdout, stderr: stderr.toString() });
      },
    );
  });
}

async function listenPlain(socket: string): Promise<void> {
  await mkdir(path.dirname(socket), { recursive: true });
  const server = net.createServer((c) => c.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(socket, resolve);
  });
  servers.push(server);
}

/** A fresh state dir, a config naming it and a bundle dir. */
async function scene(configOf: (stateDir: string) => string) {
  const dir = path.join(root, `c${++nth}`);
  const stateDir = path.join(dir, "run");
  const bundle = path.join(dir, "bundles", "task");
  await mkdir(bundle, { recursive: true });
  await mkdir(stateDir, { recursive: true });
  const config = path.join(dir, "config.json");
  const text = configOf(stateDir);
  await writeFile(config, text);
  return { dir, stateDir, bundle, config, text };
}

const quiet = { warn() {}, error() {} };

describe("compiled launcher agrees with the Node.js shim", () => {
  before(async () => {
    assert.ok(
      existsSync(LAUNCHER_ENTRY),
      `${LAUNCHER_ENTRY} is missing: run scripts/dev.sh setup (or host/launcher/build.sh, then npm run build)`,
    );
    root = await mkdtemp(path.join(os.tmpdir(), "lchk-"));
    dist = path.join(root, "shim", "dist");
    await mkdir(path.join(dist, "src", "bin"), { recursive: true });
    launcher = path.join(dist, "containerd-shim-cloudhv-v1");
    await copyFile(LAUNCHER_ENTRY, launcher);
    // The stand-in Node.js shim: says it ran, with which arguments, and exits 3.
    await writeFile(
      path.join(dist, "src", "bin", "shim.js"),
      "process.stdout.write(JSON.stringify({ fallback: process.argv.slice(2) })); process.exit(3);\n",
    );
  });
  after(async () => {
    for (const s of servers) s.close();
    await rm(root, { recursive: true, force: true });
  });

  const setBuild = (id: string) => writeFile(path.join(dist, "src", "build-id"), id);
  // The daemon's identity as the Node.js shim installed in `dist` computes it (its build id and
  // the place it lives).
  const placedBuild = () => buildId(path.join(dist, "src", "bin", "daemon.js"));

  const cases: Array<{
    name: string;
    build: string;
    config: (stateDir: string) => string;
    namespace: string;
    ttrpcEnv?: string;
    address: string;
    flagStyle?: "eq";
  }> = [
    {
      name: "containerd's usual call",
      build: "0123456789ab",
      config: (s) => JSON.stringify({ state_dir: s }),
      namespace: "k8s.io",
      address: "/run/containerd/containerd.sock",
    },
    {
      name: "TTRPC_ADDRESS with unix://, pretty config with non-ASCII text",
      build: "ffffffffffff",
      config: (s) =>
        `${JSON.stringify({ state_dir: s, note: "héllo wörld ✓", pool: { small: 2 } }, null, 2)}\n`,
      namespace: "default",
      ttrpcEnv: "unix:///run/containerd/containerd.sock.ttrpc",
      address: "/ignored",
    },
    {
      name: "non-ASCII namespace, --flag=value forms",
      build: "a1b2c3d4e5f6",
      config: (s) => `{"state_dir":"${s}","hypervisor":"qemu"}`,
      namespace: "équipe-ns",
      address: "/tmp/other containerd/c.sock",
      flagStyle: "eq",
    },
    {
      name: "same inputs, another build: another daemon",
      build: "000000000000",
      config: (s) => JSON.stringify({ state_dir: s }),
      namespace: "k8s.io",
      address: "/run/containerd/containerd.sock",
    },
  ];

  for (const c of cases) {
    it(`start finds the namespace socket the TypeScript code names: ${c.name}`, async () => {
      await setBuild(c.build);
      const sc = await scene(c.config);
      const ttrpc = (c.ttrpcEnv ?? `${c.address}.ttrpc`).replace(/^unix:\/\//, "");
      const control = daemonSocketPathFor(placedBuild(), sc.stateDir, ttrpc, sc.text);
      const nsSocket = namespaceSocketPath(control, c.namespace);
      await listenPlain(nsSocket);
      const argv =
        c.flagStyle === "eq"
          ? [`--namespace=${c.namespace}`, `--address=${c.address}`, "--id=t1", "start"]
          : [
              "-namespace",
              c.namespace,
              "-address",
              c.address,
              "-publish-binary",
              "/bin/x",
              "-id",
              "t1",
              "start",
            ];
      const env: Record<string, string> = { CLOUDHV_CONFIG: sc.config };
      if (c.ttrpcEnv) env.TTRPC_ADDRESS = c.ttrpcEnv;
      const r = await run(argv, { cwd: sc.bundle, env });
      assert.equal(r.stdout.toString(), `${SOCKET_SCHEME}${nsSocket}`, r.stderr);
      assert.equal(r.code, 0);
      assert.equal(await readFile(path.join(sc.bundle, "address"), "utf8"), `${SOCKET_SCHEME}${nsSocket}`);
    });
  }

  it("start asks the front's Admin.Listen when the namespace has no socket yet", async () => {
    const build = "5a5a5a5a5a5a";
    await setBuild(build);
    const sc = await scene((s) => JSON.stringify({ state_dir: s }));
    const control = daemonSocketPathFor(placedBuild(), sc.stateDir, "/c.sock.ttrpc", sc.text);
    const asked: string[] = [];
    const server = new TtrpcServer({ log: quiet });
    const req = messageCodec("cloudhv.shim.v1.ListenRequest");
    const res = messageCodec("cloudhv.shim.v1.ListenResponse");
    server.register("cloudhv.shim.v1.Admin", {
      Listen: async (payload) => {
        asked.push(req.decode(payload).namespace);
        return res.encode({ address: "unix:///somewhere/ns.sock" });
      },
    });
    await server.listen(control);
    servers.push({ close: () => server.close() });
    const r = await run(["-namespace", "moby", "-address", "/c.sock", "-id", "t2", "start"], {
      cwd: sc.bundle,
      env: { CLOUDHV_CONFIG: sc.config },
    });
    assert.equal(r.stdout.toString(), "unix:///somewhere/ns.sock", r.stderr);
    assert.deepEqual(asked, ["moby"]);
    assert.equal(await readFile(path.join(sc.bundle, "address"), "utf8"), "unix:///somewhere/ns.sock");
  });

  it("an app container's start goes to its sandbox's daemon (route.ts)", async () => {
    await setBuild("123123123123");
    const sc = await scene((s) => JSON.stringify({ state_dir: s }));
    const sandboxSocket = path.join(sc.dir, "sandbox-daemon.sock");
    await listenPlain(sandboxSocket);
    await mkdir(path.join(sc.bundle, "..", "sb1"));
    await writeFile(path.join(sc.bundle, "..", "sb1", "address"), ` unix://${sandboxSocket}\n`);
    await writeFile(
      path.join(sc.bundle, "config.json"),
      JSON.stringify({
        annotations: {
          "io.kubernetes.cri.container-type": "container",
          "io.kubernetes.cri.sandbox-id": "sb1",
        },
      }),
    );
    const r = await run(["-namespace", "k8s.io", "-address", "/c.sock", "-id", "app", "start"], {
      cwd: sc.bundle,
      env: { CLOUDHV_CONFIG: sc.config },
    });
    assert.equal(r.stdout.toString(), `unix://${sandboxSocket}`, r.stderr);
  });

  it("delete: the daemon's reply as is; NOT_FOUND becomes 'nothing left' (pid 0, exit 137); other errors exit 1", async () => {
    await setBuild("777777777777");
    const sc = await scene((s) => JSON.stringify({ state_dir: s }));
    const control = path.join(sc.stateDir, "shim-0123456789abcdef.sock");
    const ns = namespaceSocketPath(control, "k8s.io");
    await writeFile(path.join(sc.bundle, "address"), `${SOCKET_SCHEME}${ns}`);
    const del = messageCodec("containerd.task.v2.DeleteResponse");
    const req = messageCodec("cloudhv.shim.v1.ForceDeleteRequest");
    let answer: "reply" | "missing" | "broken" = "reply";
    const asked: string[] = [];
    const server = new TtrpcServer({ log: quiet });
    server.register("cloudhv.shim.v1.Admin", {
      ForceDelete: async (payload) => {
        const r = req.decode(payload);
        asked.push(`${r.namespace}/${r.id}`);
        if (answer === "missing") throw new TtrpcError(Code.NOT_FOUND, "no such task");
        if (answer === "broken") throw new TtrpcError(Code.INTERNAL, "disk on fire");
        return del.encode({ pid: 42, exitStatus: 3, exitedAt: { seconds: 1700000000, nanos: 5 } });
      },
    });
    await server.listen(control);
    servers.push({ close: () => server.close() });
    const argv = ["-namespace", "k8s.io", "-address", "/c.sock", "-id", "gone", "delete"];
    const opts = { cwd: sc.bundle, env: { CLOUDHV_CONFIG: sc.config } };
    let r = await run(argv, opts);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(del.decode(r.stdout), {
      pid: 42,
      exitStatus: 3,
      exitedAt: { seconds: 1700000000, nanos: 5 },
    });
    answer = "missing";
    const before = Math.floor(Date.now() / 1000);
    r = await run(argv, opts);
    assert.equal(r.code, 0, r.stderr);
    const left = del.decode(r.stdout);
    assert.equal(left.pid, 0);
    assert.equal(left.exitStatus, 137);
    assert.ok(Number(left.exitedAt?.seconds) >= before);
    answer = "broken";
    r = await run(argv, opts);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, "containerd-shim-cloudhv-v1: INTERNAL: disk on fire\n");
    assert.deepEqual(asked, ["k8s.io/gone", "k8s.io/gone", "k8s.io/gone"]);
  });

  it("anything it is not sure of goes to the Node.js shim, arguments unchanged", async () => {
    await setBuild("abcabcabcabc");
    const sc = await scene((s) => JSON.stringify({ state_dir: s }));
    const env = { CLOUDHV_CONFIG: sc.config };
    const fallback = async (argv: string[], e: Record<string, string> = env) => {
      const r = await run(argv, { cwd: sc.bundle, env: e });
      assert.equal(r.code, 3, `${argv.join(" ")}: ${r.stdout} ${r.stderr}`);
      assert.deepEqual(JSON.parse(r.stdout.toString()), { fallback: argv });
    };
    const std = ["-namespace", "k8s.io", "-address", "/c.sock", "-id", "x"];
    await fallback([...std, "start"]); // no front: the Node.js shim starts one
    await fallback(["-v"]);
    await fallback([...std, "-frobnicate", "start"]);
    await fallback([...std, "stop"]);
    await fallback(["-address", "/c.sock", "-id", "x", "start"]); // no namespace: its error
    await writeFile(sc.config, '{"state_dir": "relative/dir"}');
    await fallback([...std, "start"]);
    await writeFile(sc.config, "\ufeff{}"); // JSON.parse refuses a BOM too; the reference decides
    await fallback([...std, "start"]);
    await writeFile(path.join(dist, "src", "build-id"), "not-an-id\n");
    await writeFile(sc.config, JSON.stringify({ state_dir: sc.stateDir }));
    await fallback([...std, "start"]);
    assert.equal(existsSync(path.join(sc.bundle, "address")), false, "no address file written on a fallback");
  });
});
