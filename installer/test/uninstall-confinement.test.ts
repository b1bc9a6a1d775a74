// Uninstall removes a directory it created only while it is still that directory: never a
// disk mounted on it since, a directory made again by someone else at the same path, a symlink
// put in its place, or a pod volume a dead daemon left bound below the shim's state dir; `/` and
// system directories never. Real mounts (tmpfs, bind) on temp roots; needs root.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, readdir, readFile, rm, rmdir, symlink, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { execOk, mkdirMarked, mountPointsUnder } from "@cloudhv/shim";
import { pino } from "pino";
import { install, readState, uninstall } from "../src/install.js";
import { CREATED_MARKER } from "../src/owned-dirs.js";
import { HostRoot } from "../src/paths.js";
import { realisticV2, testBundle } from "./support/node.js";

const log = pino({ level: "silent" });
const base = { log, checkHostTools: false } as const;
const NVME = { scratch_dir: "/mnt/nvme", state_dir: "/run/chv-state" };

describe("uninstall removes only directories that are still the ones it created", () => {
  let dir: string;
  let bundle: string;
  let n = 0;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "chv-confine-"));
    bundle = await testBundle();
  });
  after(async () => {
    for (const m of await mountPointsUnder(dir)) await execOk(["umount", "-l", m]);
    await rm(dir, { recursive: true, force: true });
  });

  async function installed(): Promise<HostRoot> {
    const root = new HostRoot(path.join(dir, `node-${n++}`));
    await mkdir(root.path("/etc/containerd"), { recursive: true });
    await mkdir(root.path("/mnt"), { recursive: true });
    await writeFile(root.path("/etc/containerd/config.toml"), realisticV2("/run/x"));
    await install({ ...base, root, artifacts: bundle, runtimeConfig: NVME });
    return root;
  }

  it("marks the directories it creates, and removes them with what the shim put there", async () => {
    const root = await installed();
    const state = await readState(root);
    assert.ok(state?.ownedDirs?.includes("/mnt/nvme"));
    assert.equal(state?.markers, true);
    assert.ok((await readdir(root.path("/mnt/nvme"))).includes(CREATED_MARKER));
    await writeFile(root.path("/mnt/nvme/s1.ext4"), "x");
    await mkdir(root.path("/run/chv-state/vm/abc"), { recursive: true });
    const res = await uninstall({ root, log });
    assert.deepEqual(res.left, []);
    assert.deepEqual(await readdir(root.path("/mnt")), []);
    assert.ok(res.removed.includes("/mnt/nvme"));
  });

  it("a state_dir that existed before: only the shim's entries made since go; the admin's stay, the directory too", async () => {
    const root = new HostRoot(path.join(dir, `node-${n++}`));
    await mkdir(root.path("/etc/containerd"), { recursive: true });
    await mkdir(root.path("/mnt"), { recursive: true });
    await writeFile(root.path("/etc/containerd/config.toml"), realisticV2("/run/x"));
    // The admin's: a file, and a `pods` directory of their own (a name the shim also uses).
    await mkdir(root.path("/run/chv-state/pods"), { recursive: true });
    await writeFile(root.path("/run/chv-state/admin-note"), "mine\n");
    await writeFile(root.path("/run/chv-state/pods/theirs"), "theirs\n");
    await install({ ...base, root, artifacts: bundle, runtimeConfig: NVME });
    // Installing twice records nothing new (what the shim made by then is not "before").
    await mkdir(root.path("/run/chv-state/records"));
    await install({ ...base, root, artifacts: bundle, runtimeConfig: NVME });
    assert.deepEqual((await readState(root))?.sharedStateDir, {
      dir: "/run/chv-state",
      before: ["admin-note", "pods"],
    });
    // What the shim daemon and its front leave once idle.
    for (const d of ["vm/k8s.io-abc", "backend", "vmm", "pool", "creating"])
      await mkdir(root.path(`/run/chv-state/${d}`), { recursive: true });
    for (const f of [
      "shim-0123456789abcdef.sock",
      "shim-0123456789abcdef.sock.lock",
      "backend/shim-0123456789abcdef.sock.lock",
      "records/vm1.json",
    ])
      await writeFile(root.path(`/run/chv-state/${f}`), "");
    await writeFile(root.path("/run/chv-state/someone-elses.sock"), "");
    const res = await uninstall({ root, log });
    assert.deepEqual(res.left, []);
    assert.deepEqual((await readdir(root.path("/run/chv-state"))).sort(), [
      "admin-note",
      "pods",
      "someone-elses.sock",
    ]);
    assert.deepEqual(await readdir(root.path("/run/chv-state/pods")), ["theirs"]);
  });

  it("stops the pool VMs a killed daemon left (they would keep our files in use); a live daemon's stay", async () => {
    const root = await installed();
    const identity = async (pid: number) => {
      const stat = await readFile(`/proc/${pid}/stat`, "utf8");
      return { pid, startTime: Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]) };
    };
    // A daemon that is gone: a process that exited.
    const gone = spawn("sleep", ["30"], { stdio: "ignore" });
    const goneExit = new Promise((r) => gone.once("exit", r));
    const deadDaemon = await identity(gone.pid as number);
    gone.kill("SIGKILL");
    await goneExit;
    const vms: Array<{ dir: string; child: ReturnType<typeof spawn> }> = [];
    const exits = new Map<ReturnType<typeof spawn>, Promise<unknown>>();
    for (const [name, daemon] of [
      ["pool-1-1", deadDaemon],
      ["pool-2-1", await identity(process.pid)],
    ] as const) {
      const dir = root.path(`/run/chv-state/vm/${name}`);
      await mkdir(path.join(dir, "vmm"), { recursive: true });
      const child = spawn("sleep", ["60"], { cwd: path.join(dir, "vmm"), stdio: "ignore" });
      exits.set(child, new Promise((r) => child.once("exit", r)));
      const vmm = await identity(child.pid as number);
      await writeFile(path.join(dir, "pool.json"), JSON.stringify({ daemon, vmm }));
      vms.push({ dir, child });
    }
    const [orphan, live] = vms as [(typeof vms)[0], (typeof vms)[0]];
    const orphanExit = exits.get(orphan.child);
    try {
      await uninstall({ root, log });
      await orphanExit;
      assert.equal(orphan.child.signalCode, "SIGKILL", "the orphaned pool VM was stopped");
      assert.equal(live.child.exitCode, null, "a live daemon's pool VM runs on");
      assert.equal(live.child.signalCode, null);
    } finally {
      for (const { child } of vms) child.kill("SIGKILL");
    }
  });

  it("leaves a disk mounted on the scratch_dir it created, with its data, and says why", async () => {
    const root = await installed();
    await execOk(["mount", "-t", "tmpfs", "-o", "size=4m", "nvme", root.path("/mnt/nvme")]);
    try {
      await writeFile(root.path("/mnt/nvme/customer.db"), "precious\n");
      const res = await uninstall({ root, log });
      assert.deepEqual(res.left, [
        {
          path: "/mnt/nvme",
          reason: "a filesystem is mounted on it: it is not the directory cloudhv created",
        },
      ]);
      assert.equal(await readFile(root.path("/mnt/nvme/customer.db"), "utf8"), "precious\n");
      assert.ok(!res.removed.includes("/mnt/nvme"));
      // The rest went.
      await assert.rejects(readdir(root.path("/opt/cloudhv")), { code: "ENOENT" });
    } finally {
      await execOk(["umount", root.path("/mnt/nvme")]);
    }
  });

  it("leaves a directory someone made again at the same path (no marker), and a symlink put in its place", async () => {
    const root = await installed();
    await rm(root.path("/mnt/nvme"), { recursive: true });
    await mkdir(root.path("/mnt/nvme"));
    await writeFile(root.path("/mnt/nvme/data"), "theirs\n");
    const elsewhere = root.path("/srv/data");
    await mkdir(elsewhere, { recursive: true });
    await writeFile(path.join(elsewhere, "keep"), "theirs too\n");
    await rm(root.path("/run/chv-state"), { recursive: true });
    await symlink(elsewhere, root.path("/run/chv-state"));
    const res = await uninstall({ root, log });
    assert.deepEqual(
      res.left.map((l) => l.path),
      ["/run/chv-state", "/mnt/nvme"],
    );
    assert.match(res.left[0]?.reason ?? "", /not a directory any more/);
    assert.match(
      res.left[1]?.reason ?? "",
      /has no \.cloudhv-created marker: not the directory cloudhv created/,
    );
    assert.equal(await readFile(root.path("/mnt/nvme/data"), "utf8"), "theirs\n");
    assert.equal(await readFile(path.join(elsewhere, "keep"), "utf8"), "theirs too\n");
  });

  it("never enters a pod volume bound below the state dir (a dead daemon's leftover): the rest goes", async () => {
    const root = await installed();
    const volume = root.path("/srv/volume");
    await mkdir(volume, { recursive: true });
    await writeFile(path.join(volume, "user-file"), "user data\n");
    const target = root.path("/run/chv-state/pods/vm1/shared/c1-0");
    await mkdir(target, { recursive: true });
    await writeFile(root.path("/run/chv-state/shim-1.log"), "log\n");
    await execOk(["mount", "--bind", volume, target]);
    try {
      const res = await uninstall({ root, log });
      assert.deepEqual(
        res.left.map((l) => [l.path, l.reason]),
        [
          [
            "/run/chv-state/pods/vm1/shared/c1-0",
            "something is mounted there (a pod volume?): unmount it, then remove it",
          ],
        ],
      );
      assert.equal(await readFile(path.join(volume, "user-file"), "utf8"), "user data\n");
      // Everything else in the state dir went; the path to the mount stays.
      assert.deepEqual(await readdir(root.path("/run/chv-state")), ["pods"]);
      assert.ok(!res.removed.includes("/run/chv-state"));
    } finally {
      await execOk(["umount", target]);
    }
  });

  it("finds a mount below the state dir when an ancestor is a symlink (mountinfo names real paths)", async () => {
    const root = new HostRoot(path.join(dir, `node-${n++}`));
    await mkdir(root.path("/etc/containerd"), { recursive: true });
    await writeFile(root.path("/etc/containerd/config.toml"), realisticV2("/run/x"));
    await mkdir(root.path("/data/srv"), { recursive: true });
    await symlink("data/srv", root.path("/srv"));
    await install({ ...base, root, artifacts: bundle, runtimeConfig: { state_dir: "/srv/chv-state" } });
    const volume = root.path("/data/volume");
    await mkdir(volume);
    await writeFile(path.join(volume, "user-file"), "user data\n");
    const target = root.path("/data/srv/chv-state/pods/vm1/shared/c1-0");
    await mkdir(target, { recursive: true });
    await execOk(["mount", "--bind", volume, target]);
    try {
      const res = await uninstall({ root, log });
      assert.deepEqual(
        res.left.map((l) => l.path),
        ["/srv/chv-state/pods/vm1/shared/c1-0"],
      );
      assert.equal(await readFile(path.join(volume, "user-file"), "utf8"), "user data\n");
    } finally {
      await execOk(["umount", target]);
    }
  });

  it("takes a state dir the shim made again after a reboot (it marks what it creates)", async () => {
    const root = await installed();
    // A reboot empties /run; the shim's `start` makes its state dir again.
    await rm(root.path("/run/chv-state"), { recursive: true });
    await mkdirMarked(root.path("/run/chv-state"), 0o711);
    await writeFile(root.path("/run/chv-state/shim-1.log"), "log\n");
    const res = await uninstall({ root, log });
    assert.deepEqual(res.left, []);
    await assert.rejects(readdir(root.path("/run/chv-state")), { code: "ENOENT" });
  });

  it("marks the directories of a state written before markers on the next install", async () => {
    const root = await installed();
    const file = root.path("/opt/cloudhv/installer-state.json");
    const state = JSON.parse(await readFile(file, "utf8"));
    delete state.markers;
    await writeFile(file, JSON.stringify(state));
    await rm(root.path(`/mnt/nvme/${CREATED_MARKER}`));
    await install({ ...base, root, artifacts: bundle, runtimeConfig: NVME });
    assert.equal((await readState(root))?.markers, true);
    assert.ok((await readdir(root.path("/mnt/nvme"))).includes(CREATED_MARKER));
    assert.deepEqual((await uninstall({ root, log })).left, []);
    assert.deepEqual(await readdir(root.path("/mnt")), []);
  });

  it("refuses / and system directories a tampered state names, whatever is in them", async () => {
    const root = await installed();
    const file = root.path("/opt/cloudhv/installer-state.json");
    const state = JSON.parse(await readFile(file, "utf8"));
    state.ownedDirs.push("/", "/mnt", "/etc");
    await writeFile(file, JSON.stringify(state));
    await writeFile(root.path(`/etc/${CREATED_MARKER}`), "forged\n");
    const res = await uninstall({ root, log });
    assert.deepEqual(
      res.left.map((l) => l.path),
      ["/", "/mnt", "/etc"],
    );
    assert.ok((await readdir(root.path("/etc/containerd"))).includes("config.toml"));
    await rmdir(root.path("/mnt")).catch(() => undefined);
  });
});
