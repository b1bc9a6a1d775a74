// The copier of kubelet's managed volumes (volumes/safe-copy.ts) against a hostile tree: no root,
// no VM. A volume is attacker-writable; what reaches the guest must come from inside it only,
// and nothing in it may hang the daemon or make it read more than the budgets allow.
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, open, rename, rm, symlink, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { AgentClient, PutFile } from "../src/agent/client.js";
import { ShimError } from "../src/errors.js";
import { log } from "../src/util/log.js";
import {
  checkLocalSource,
  collectVolume,
  collectVolumeSettled,
  MAX_COPIED_BYTES,
  MAX_COPIED_DEPTH,
  MAX_COPIED_ENTRIES,
  pointsDownInside,
  VolumeChanged,
  volumeSignature,
} from "../src/volumes/safe-copy.js";
import { ContainerVolumes } from "../src/volumes/volumes.js";

const MiB = 1024 * 1024;
let scratch: string;

before(async () => {
  scratch = await mkdtemp(path.join(os.tmpdir(), "safe-copy-"));
});
after(async () => {
  await rm(scratch, { recursive: true, force: true });
});

async function dirIn(name: string): Promise<string> {
  const dir = path.join(scratch, name, "volumes", "kubernetes.io~configmap", "cfg");
  await mkdir(dir, { recursive: true });
  return dir;
}

/** kubelet's atomic writer: keys in a timestamped dir, `..data` to it, each key a link through it. */
async function atomicWriter(dir: string, ts: string, keys: Record<string, string>): Promise<void> {
  const data = path.join(dir, ts);
  for (const [key, value] of Object.entries(keys)) {
    await mkdir(path.dirname(path.join(data, key)), { recursive: true });
    await writeFile(path.join(data, key), value, { mode: 0o644 });
  }
  await symlink(ts, path.join(dir, "..data_tmp"));
  await rename(path.join(dir, "..data_tmp"), path.join(dir, "..data"));
  for (const top of new Set(Object.keys(keys).map((k) => k.split("/")[0] ?? k))) {
    await symlink(`..data/${top}`, path.join(dir, top)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== "EEXIST") throw err;
    });
  }
}

const summary = (files: PutFile[]) =>
  files.map((f) => ({
    path: f.path,
    kind: f.isDir ? "dir" : f.symlink ? `-> ${f.symlink}` : `file ${f.data.toString()}`,
  }));

/** RSS after a collection, in MiB. */
function rssMiB(): number {
  (globalThis as { gc?: () => void }).gc?.();
  return process.memoryUsage().rss / MiB;
}

describe("copying kubelet's managed volumes", () => {
  it("round-trips kubelet's atomic-writer layout as links, without following them", async () => {
    const dir = await dirIn("atomic");
    await atomicWriter(dir, "..2026_12_04_10_00_00.1", { token: "t1", "ca.crt": "ca", "sub/deep": "d" });
    assert.deepEqual(summary(await collectVolume(dir, "volume cfg")), [
      { path: "", kind: "dir" },
      { path: "..2026_12_04_10_00_00.1", kind: "dir" },
      { path: "..2026_12_04_10_00_00.1/ca.crt", kind: "file ca" },
      { path: "..2026_12_04_10_00_00.1/sub", kind: "dir" },
      { path: "..2026_12_04_10_00_00.1/sub/deep", kind: "file d" },
      { path: "..2026_12_04_10_00_00.1/token", kind: "file t1" },
      { path: "..data", kind: "-> ..2026_12_04_10_00_00.1" },
      { path: "ca.crt", kind: "-> ..data/ca.crt" },
      { path: "sub", kind: "-> ..data/sub" },
      { path: "token", kind: "-> ..data/token" },
    ]);
    const before = await volumeSignature(dir, "volume cfg");
    assert.equal(await volumeSignature(dir, "volume cfg"), before, "a still volume keeps its signature");
    // An update: a new timestamped dir, `..data` switched, the old one removed.
    await atomicWriter(dir, "..2026_12_04_10_05_00.2", { token: "t2", "ca.crt": "ca", "sub/deep": "d" });
    await rm(path.join(dir, "..2026_12_04_10_00_00.1"), { recursive: true });
    assert.notEqual(await volumeSignature(dir, "volume cfg"), before, "an update changes the signature");
    const { files } = await collectVolumeSettled(dir, "volume cfg");
    const token = files.find((f) => f.path === "..2026_12_04_10_05_00.2/token");
    assert.equal(token?.data.toString(), "t2");
    assert.equal(token?.mode, 0o644);
  });

  it("plans, applies and keeps in sync a configmap through ContainerVolumes, refusing a bad update without losing the copy", async () => {
    const dir = await dirIn("plan");
    await atomicWriter(dir, "..v1", { key: "v1" });
    const spec = {
      mounts: [{ destination: "/etc/config", type: "bind", source: dir, options: ["rbind", "ro"] }],
    };
    const volumes = await ContainerVolumes.plan(spec, "c1", "pod", log);
    assert.equal(spec.mounts[0]?.source, "/run/cloudhv/volumes/containers/c1/0");
    const pushed: PutFile[][] = [];
    const agent = {
      putFiles: async (_dir: string, files: PutFile[]) => {
        pushed.push(files);
      },
    } as unknown as AgentClient;
    await volumes.apply(agent);
    assert.equal(pushed.length, 1);
    assert.equal(pushed[0]?.find((f) => f.path === "..v1/key")?.data.toString(), "v1");
    volumes.startSync(agent);
    try {
      const waitFor = async (count: number) => {
        const deadline = Date.now() + 10_000;
        while (pushed.length < count && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
        assert.equal(pushed.length, count);
      };
      await atomicWriter(dir, "..v2", { key: "v2" });
      await waitFor(2);
      assert.equal(pushed[1]?.find((f) => f.path === "..v2/key")?.data.toString(), "v2");
      // A FIFO appears: refused, nothing pushed, the guest keeps v2; removed: copied again.
      await writeFile(path.join(dir, "..v2", "key2"), "x");
      execFileSync("mkfifo", [path.join(dir, "pipe")]);
      await new Promise((r) => setTimeout(r, 2500));
      assert.equal(pushed.length, 2, "a refused volume is not pushed");
      await rm(path.join(dir, "pipe"));
      await waitFor(3);
      assert.equal(pushed[2]?.find((f) => f.path === "..v2/key2")?.data.toString(), "x");
    } finally {
      volumes.stop();
    }
  });

  it("never yields a host file outside the volume while an entry and a directory are swapped for symlinks to it, 1000 times", async () => {
    const root = path.join(scratch, "swap");
    const outside = path.join(root, "outside");
    const dir = path.join(root, "vol");
    const stage = path.join(root, "stage");
    await mkdir(outside, { recursive: true });
    await mkdir(stage, { recursive: true });
    await mkdir(path.join(dir, "sub"), { recursive: true });
    const secret = randomBytes(24).toString("hex");
    await writeFile(path.join(outside, "secret"), secret);
    await writeFile(path.join(dir, "entry"), "public");
    await writeFile(path.join(dir, "sub", "secret"), "public too");
    // The swapper runs in its own process so that it races the walk's thread-pool calls:
    // `entry` is a file or an absolute link to the secret, `rel` a file or a relative link to
    // it, `sub` a directory or a link to the directory holding the secret.
    const swapper = spawn(
      process.execPath,
      [
        "-e",
        `
        const fs = require("node:fs"); const p = require("node:path");
        const [dir, outside, stage] = process.argv.slice(1);
        const j = (n) => p.join(dir, n);
        const s = (n) => p.join(stage, n);
        const target = { entry: p.join(outside, "secret"), rel: p.relative(dir, p.join(outside, "secret")) };
        fs.writeFileSync(j("rel"), "public");
        for (const n of ["entry", "rel"]) fs.symlinkSync(target[n], s(n + ".link"));
        fs.symlinkSync(outside, s("sub.link"));
        let swaps = 0; let stop = false;
        process.on("SIGTERM", () => { stop = true; });
        const loop = () => {
          for (let i = 0; i < 200; i++) {
            for (const n of ["entry", "rel"]) {
              fs.renameSync(s(n + ".link"), j(n)); fs.writeFileSync(s(n + ".file"), "public");
              fs.renameSync(s(n + ".file"), j(n)); fs.symlinkSync(target[n], s(n + ".link"));
            }
            fs.renameSync(j("sub"), s("sub.dir")); fs.renameSync(s("sub.link"), j("sub"));
            fs.renameSync(j("sub"), s("sub.link")); fs.renameSync(s("sub.dir"), j("sub"));
            swaps++;
          }
          if (stop) { process.stdout.write(String(swaps)); process.exit(0); } else setImmediate(loop);
        };
        loop();`,
        dir,
        outside,
        stage,
      ],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    let swaps = "";
    swapper.stdout?.on("data", (d) => {
      swaps += d;
    });
    const outcomes = { copied: 0, refused: 0, changed: 0 };
    try {
      await new Promise((r) => setTimeout(r, 200));
      for (let i = 0; i < 1000; i++) {
        try {
          const files = await collectVolume(dir, "volume swap");
          outcomes.copied++;
          for (const f of files) {
            assert.ok(!f.data.toString().includes(secret), `the secret leaked through ${f.path}`);
            assert.ok(!f.symlink.includes("outside"), `a link out of the volume was kept: ${f.path}`);
          }
          assert.ok(!files.some((f) => f.path === "sub/secret" && f.data.toString() !== "public too"));
        } catch (err) {
          if (err instanceof VolumeChanged) outcomes.changed++;
          else if (err instanceof ShimError && /symlink to/.test(err.message)) outcomes.refused++;
          else throw err;
        }
      }
    } finally {
      await stopChild(swapper);
    }
    console.log(`1000 walks against ${swaps} swap rounds: ${JSON.stringify(outcomes)}`);
    assert.ok(Number(swaps) > 0, "the swapper ran");
    assert.ok(outcomes.refused > 0, "the walk saw the links (the race was exercised)");
  });

  it("refuses a link to /dev/zero, a FIFO and a socket at once, by name, without opening them or growing", async () => {
    const cases: [string, (p: string) => Promise<unknown>, RegExp][] = [
      ["zero", (p) => symlink("/dev/zero", p), /entry "zero" is a symlink to "\/dev\/zero"/],
      ["pipe", async (p) => execFileSync("mkfifo", [p]), /entry "pipe" is a FIFO/],
      [
        "sock",
        (p) =>
          new Promise<net.Server>((resolve) => {
            const server = net.createServer().listen(p, () => resolve(server));
          }),
        /entry "sock" is a socket/,
      ],
    ];
    const servers: net.Server[] = [];
    try {
      for (const [name, make, message] of cases) {
        const dir = await dirIn(`special-${name}`);
        await writeFile(path.join(dir, "ok"), "fine");
        const made = await make(path.join(dir, name));
        if (made instanceof net.Server) servers.push(made);
        const start = performance.now();
        await assert.rejects(collectVolume(dir, `volume ${name} (mounted at /etc/x)`), (err: Error) => {
          assert.match(err.message, message);
          assert.match(err.message, new RegExp(`^volume ${name} \\(mounted at /etc/x\\)`));
          assert.match(err.message, /mount the directory as a hostPath/);
          return true;
        });
        const rss = rssMiB();
        for (let i = 0; i < 200; i++) await volumeSignature(dir, "v").catch(() => undefined);
        assert.ok(rssMiB() - rss < 8, `${name}: RSS grew by ${(rssMiB() - rss).toFixed(1)} MiB`);
        assert.ok(performance.now() - start < 20_000, `${name} took ${performance.now() - start} ms`);
      }
    } finally {
      for (const server of servers) server.close();
    }
  });

  it("refuses a sparse 10 GiB file, too many entries and too deep a tree before reading them", async () => {
    const dir = await dirIn("budget");
    const big = await open(path.join(dir, "big"), "w");
    await big.truncate(10 * 1024 * MiB);
    await big.close();
    const rss = rssMiB();
    const start = performance.now();
    await assert.rejects(
      collectVolume(dir, "volume big"),
      new RegExp(
        `volume big holds more than ${MAX_COPIED_BYTES} bytes \\(entry "big" alone: ${10 * 1024 * MiB}\\)`,
      ),
    );
    // Change detection is bounded the same way (no contents read at all).
    await assert.rejects(volumeSignature(dir, "volume big"), /holds more than/);
    assert.ok(performance.now() - start < 5000, "refused without reading");
    assert.ok(rssMiB() - rss < 8, `RSS grew by ${(rssMiB() - rss).toFixed(1)} MiB`);
    // Just under the budget in two files: copied; one byte more: refused.
    await rm(path.join(dir, "big"));
    await writeFile(path.join(dir, "a"), Buffer.alloc(MAX_COPIED_BYTES / 2));
    await writeFile(path.join(dir, "b"), Buffer.alloc(MAX_COPIED_BYTES / 2));
    assert.equal((await collectVolume(dir, "v")).length, 3);
    await writeFile(path.join(dir, "c"), "x");
    await assert.rejects(collectVolume(dir, "v"), /holds more than/);

    const many = await dirIn("many");
    for (let i = 0; i <= MAX_COPIED_ENTRIES; i++) await writeFile(path.join(many, `f${i}`), "");
    await assert.rejects(collectVolume(many, "volume many"), /volume many holds more than 4096 entries/);

    const deep = await dirIn("deep");
    await mkdir(path.join(deep, ...Array.from({ length: MAX_COPIED_DEPTH + 2 }, () => "d")), {
      recursive: true,
    });
    await assert.rejects(collectVolume(deep, "volume deep"), /is more than 16 directories deep/);
  });

  it("refuses a volume that is not on a local filesystem, before touching it", async () => {
    await assert.rejects(
      checkLocalSource("/proc/sys/kernel", "volume p"),
      /volume p is not on a local filesystem \(proc at \/proc\)/,
    );
    await assert.rejects(
      collectVolume("/proc/sys/kernel", "volume p"),
      /volume p is not on a local filesystem/,
    );
    await checkLocalSource(scratch, "volume s");
  });

  it("keeps only relative links that point down inside the volume", () => {
    for (const ok of ["..data", "..data/token", "a/b/c", "..2026_12_04"]) assert.ok(pointsDownInside(ok), ok);
    for (const bad of ["", "/etc/shadow", "../x", "a/../../x", "a/..", ".", "./a", "a//b", "a/"])
      assert.ok(!pointsDownInside(bad), bad);
  });
});

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await exited;
}
