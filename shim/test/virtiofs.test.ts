// PodShare against the real virtiofsd (build/host/virtiofsd; skipped when not built) without a
// VM: binds in the shared directory, read-only binds, propagation into virtiofsd's own mount
// namespace, and a teardown that leaves nothing and never touches the volumes' data. Root only
// (bind mounts), as the shim runs. What the guest would get is checked through virtiofsd's own
// view (/proc/<virtiofsd>/root: the shared directory in its sandbox); the binds are not in the
// host's namespace at all.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, rmdir, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { exec, execOk } from "../src/util/exec.js";
import { log } from "../src/util/log.js";
import { PodShare, volumesFailed } from "../src/volumes/virtiofs.js";

const VIRTIOFSD = fileURLToPath(new URL("../../../build/host/virtiofsd", import.meta.url));
const skip = !existsSync(VIRTIOFSD)
  ? "build/host/virtiofsd is not built (host/virtiofsd/build.sh)"
  : process.getuid?.() !== 0
    ? "needs root (bind mounts)"
    : false;

async function mountsUnder(dir: string, mountinfo = "/proc/self/mountinfo"): Promise<string[]> {
  const text = await readFile(mountinfo, "utf8").catch(() => "");
  return text
    .split("\n")
    .map((line) => line.split(" ")[4] ?? "")
    .filter((point) => point.startsWith(dir));
}

/** PIDs whose command line names `needle` (virtiofsd and its sandboxed child). */
async function pidsNaming(needle: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, "utf8").catch(() => "");
    if (cmdline.includes(needle)) pids.push(Number(entry));
  }
  return pids;
}

describe("PodShare: one virtiofsd per pod, one bind mount per volume", { skip }, () => {
  let root: string;
  let n = 0;
  /** Stopped before the directory is removed, even after a failed assertion: a recursive
   * delete through a live bind would delete the volume's data. */
  const started: PodShare[] = [];

  before(async () => {
    root = await mkdtemp(path.join(os.tmpdir(), "cloudhv-vfs-"));
  });

  after(async () => {
    for (const share of started) await share.stop();
    assert.deepEqual(await mountsUnder(root), [], "no mount left before the test data goes");
    await rm(root, { recursive: true, force: true });
  });

  async function volumeDirs() {
    const base = path.join(root, `case${++n}`);
    const rw = path.join(base, "rw");
    const ro = path.join(base, "ro");
    await mkdir(rw, { recursive: true });
    await mkdir(ro, { recursive: true });
    await writeFile(path.join(rw, "data"), "rw data\n");
    await writeFile(path.join(ro, "data"), "ro data\n");
    const file = path.join(base, "termination-log");
    await writeFile(file, "");
    return { base, rw, ro, file, podDir: path.join(base, "pod") };
  }

  /** The shared directory as virtiofsd serves it (its sandbox's root). */
  async function servedDir(share: PodShare): Promise<string> {
    const pids = await pidsNaming(share.fs.socket);
    assert.ok(pids.length > 0, "virtiofsd runs");
    return `/proc/${Math.max(...pids)}/root`;
  }

  it("binds volumes (read-only ones read-only), reaches virtiofsd's namespace with later binds, and tears down leaving the data alone", async () => {
    const v = await volumeDirs();
    const share = await PodShare.start({ binary: VIRTIOFSD, dir: v.podDir, log });
    started.push(share);
    const pids = await pidsNaming(share.fs.socket);
    assert.ok(pids.length > 0, "virtiofsd runs");
    assert.equal(share.fs.tag, "cloudhv");

    assert.equal(
      await share.add({ name: "c1-0", hostPath: v.rw, readOnly: false, destination: "/data" }),
      "/run/cloudhv/shared/c1-0",
    );
    await share.add({ name: "c1-1", hostPath: v.ro, readOnly: true, destination: "/ro" });
    await share.add({ name: "c1-2", hostPath: v.file, readOnly: false, destination: "/dev/termination-log" });
    const shared = await servedDir(share);
    assert.equal(await readFile(path.join(shared, "c1-0", "data"), "utf8"), "rw data\n");
    await writeFile(path.join(shared, "c1-0", "new"), "x");
    assert.equal(await readFile(path.join(v.rw, "new"), "utf8"), "x", "a write lands in the volume");
    await assert.rejects(writeFile(path.join(shared, "c1-1", "new"), "x"), { code: "EROFS" });
    await writeFile(path.join(shared, "c1-2"), "bye\n");
    assert.equal(await readFile(v.file, "utf8"), "bye\n", "a file volume is bound as a file");

    // Binds made after virtiofsd started are in its own (sandboxed) mount namespace too.
    const seen = await Promise.all(pids.map((pid) => mountsUnder("/", `/proc/${pid}/mountinfo`)));
    assert.ok(
      seen.some((points) => points.some((p) => p.endsWith("/c1-1"))),
      `virtiofsd sees the later binds: ${JSON.stringify(seen)}`,
    );

    await assert.rejects(
      share.add({ name: "c1-0", hostPath: v.rw, readOnly: false, destination: "/again" }),
      /already bound/,
    );
    await assert.rejects(
      share.add({ name: "c1-9", hostPath: path.join(v.base, "missing"), readOnly: false, destination: "/m" }),
      /volume .*missing \(mounted at \/m\) cannot be read on the host: ENOENT/,
    );

    assert.deepEqual(
      (await mountsUnder(v.base)).sort(),
      [path.join(v.podDir, "ns"), path.join(v.podDir, "ns", "mnt")],
      "no bind in the host's namespace, only the pod namespace's own file",
    );
    const podNs = path.join(v.podDir, "ns", "mnt");
    const inPodNs = (await execOk(["nsenter", `--mount=${podNs}`, "cat", "/proc/self/mountinfo"])).stdout;
    assert.ok(!inPodNs.includes(path.join(v.podDir, "stage")), "no staging bind left in the pod's namespace");
    assert.ok(
      inPodNs.includes(path.join(v.podDir, "shared", "c1-1")),
      "the binds are in the pod's namespace",
    );
    await share.remove(["c1-0"]);
    assert.equal(existsSync(path.join(shared, "c1-0")), false, "a removed volume's mount point is gone");

    await share.stop();
    await share.stop(); // idempotent
    assert.deepEqual(await pidsNaming(share.fs.socket), [], "no virtiofsd left");
    assert.deepEqual(await mountsUnder(v.podDir), [], "no mount left");
    assert.equal(existsSync(v.podDir), false, "the pod's directory is gone");
    assert.equal(await readFile(path.join(v.rw, "data"), "utf8"), "rw data\n", "the volumes' data is intact");
    assert.equal(await readFile(path.join(v.ro, "data"), "utf8"), "ro data\n");
  });

  it("read-only is at the top only (rro: all the way down); the host unmounts and removes its mounts below any volume while the pod runs; propagation as asked", async () => {
    const v = await volumeDirs();
    // A tmpfs below each volume, as critest's read-only spec makes it.
    const tmpfsBelow = async (dir: string) => {
      const sub = path.join(dir, "tmpfs");
      await mkdir(sub);
      await execOk(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", sub]);
      return sub;
    };
    const roSub = await tmpfsBelow(v.ro);
    const rwSub = await tmpfsBelow(v.rw);
    const rro = path.join(v.base, "rro");
    await mkdir(rro);
    const rroSub = await tmpfsBelow(rro);
    // rslave: the host's later mounts reach the pod (the volume is a shared mount, as
    // critest's propagation specs make it); rprivate: they do not.
    const slave = path.join(v.base, "slave");
    await mkdir(path.join(slave, "later"), { recursive: true });
    await execOk(["mount", "--rbind", slave, slave]);
    await execOk(["mount", "--make-rshared", slave]);
    const share = await PodShare.start({ binary: VIRTIOFSD, dir: v.podDir, log });
    started.push(share);
    try {
      await share.add({ name: "c2-0", hostPath: v.ro, readOnly: true, destination: "/ro" });
      await share.add({ name: "c2-1", hostPath: v.rw, readOnly: false, destination: "/rw" });
      await share.add({
        name: "c2-2",
        hostPath: rro,
        readOnly: true,
        recursiveReadOnly: true,
        destination: "/rro",
      });
      await share.add({
        name: "c2-3",
        hostPath: slave,
        readOnly: false,
        propagation: "slave",
        destination: "/s",
      });
      await share.add({
        name: "c2-4",
        hostPath: slave,
        readOnly: false,
        propagation: "private",
        destination: "/p",
      });
      const served = await servedDir(share);
      await assert.rejects(writeFile(path.join(served, "c2-0", "top"), "x"), { code: "EROFS" });
      await writeFile(path.join(served, "c2-0", "tmpfs", "file"), "below ro\n");
      assert.equal(
        await readFile(path.join(roSub, "file"), "utf8"),
        "below ro\n",
        "the tmpfs below is writable",
      );
      await writeFile(path.join(served, "c2-1", "tmpfs", "file"), "below rw\n");
      assert.equal(await readFile(path.join(rwSub, "file"), "utf8"), "below rw\n");
      // rro: the tmpfs is not there at all; its (read-only) directory is.
      await assert.rejects(writeFile(path.join(served, "c2-2", "tmpfs", "file"), "x"), { code: "EROFS" });
      await assert.rejects(writeFile(path.join(served, "c2-2", "top"), "x"), { code: "EROFS" });

      await execOk(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", path.join(slave, "later")]);
      await writeFile(path.join(slave, "later", "flag"), "");
      assert.ok(
        existsSync(path.join(served, "c2-3", "later", "flag")),
        "rslave: the host's later mount is seen",
      );
      assert.ok(!existsSync(path.join(served, "c2-4", "later", "flag")), "rprivate: it is not");
      await execOk(["umount", path.join(slave, "later")]);

      // The host unmounts its tmpfs and removes its directory while the pod runs (critest's
      // cleanup does): no copy of ours in the host's namespace keeps it a mount point.
      for (const sub of [roSub, rwSub, rroSub]) {
        await execOk(["umount", "--lazy", sub]);
        await rmdir(sub);
      }
      assert.ok(!existsSync(path.join(served, "c2-0", "tmpfs")), "gone from the pod's view as well");
    } finally {
      await share.stop();
      for (const sub of [roSub, rwSub, rroSub]) await exec(["umount", "--lazy", sub]);
      await exec(["umount", "--recursive", "--lazy", slave]);
    }
    assert.deepEqual(await mountsUnder(v.base), [], "nothing left mounted");
    assert.equal(existsSync(v.podDir), false);
  });

  it("a later daemon adopts the share from its record: its binds go into the same pod namespace, and its stop leaves nothing", async () => {
    const v = await volumeDirs();
    const first = await PodShare.start({ binary: VIRTIOFSD, dir: v.podDir, log });
    started.push(first);
    await first.add({ name: "c3-0", hostPath: v.rw, readOnly: false, destination: "/a" });
    const adopted = await PodShare.adopt(await first.record(), log);
    started.push(adopted);
    await adopted.add({ name: "c3-1", hostPath: v.ro, readOnly: true, destination: "/b" });
    const served = await servedDir(adopted);
    assert.equal(await readFile(path.join(served, "c3-1", "data"), "utf8"), "ro data\n");
    await assert.rejects(writeFile(path.join(served, "c3-1", "new"), "x"), { code: "EROFS" });
    await adopted.stop();
    assert.deepEqual(await pidsNaming(adopted.fs.socket), [], "no virtiofsd left");
    assert.deepEqual(await mountsUnder(v.base), [], "nothing left mounted");
    assert.equal(existsSync(v.podDir), false, "the pod's directory is gone");
    assert.equal(await readFile(path.join(v.rw, "data"), "utf8"), "rw data\n");
  });

  it("a missing virtiofsd fails naming the config key, leaving nothing; the error names the volumes", async () => {
    const v = await volumeDirs();
    const err = await PodShare.start({ binary: path.join(v.base, "nope"), dir: v.podDir, log }).then(
      () => assert.fail("started"),
      (e: Error) => e,
    );
    assert.match(
      err.message,
      /virtiofsd .*nope not found or not executable \(runtime config virtiofsd_binary\)/,
    );
    assert.equal(existsSync(v.podDir), false);
    const named = volumesFailed(
      [{ name: "c-0", hostPath: v.rw, readOnly: false, destination: "/data" }],
      err,
    );
    assert.match(
      named.message,
      /^volume .*\/rw \(mounted at \/data\) cannot be shared into the VM: virtiofsd/,
    );
    assert.equal(named.kind, "FailedPrecondition");
  });

  it("a virtiofsd that exits at start fails with its message and unmounts the shared directory", async () => {
    const v = await volumeDirs();
    const fake = path.join(v.base, "fake-virtiofsd");
    await writeFile(fake, "#!/bin/sh\necho 'no shared dir for you' >&2\nexit 1\n", { mode: 0o755 });
    await assert.rejects(
      PodShare.start({ binary: fake, dir: v.podDir, log }),
      /virtiofsd exited at start: no shared dir for you/,
    );
    assert.deepEqual(await mountsUnder(v.podDir), []);
    assert.equal(existsSync(v.podDir), false);
  });
});
