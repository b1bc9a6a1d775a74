// How the installer restarts containerd on a node. systemd: nsenter into PID 1's namespaces and
// systemctl, picking the unit that is active (k3s vs k3s-agent, rke2-server vs rke2-agent).
// These machines have no systemd, so a recording `nsenter` stands in on PATH: this checks
// the exact command lines and how a failed restart reads. `auto` decides from the host's
// /proc (faked here: PID 1, containerd's argv, parent and cgroup). `signal` is run for real
// against a stand-in containerd under a supervising shell loop. The restarts themselves are
// exercised against a real containerd in restart-rollback.test.ts.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { ContainerdTarget } from "../src/containerd-target.js";
import { HostRoot } from "../src/paths.js";
import {
  chooseRestart,
  locateContainerd,
  RestartError,
  readProc,
  signalRestarter,
  systemdRestarter,
  systemdUnitOf,
  systemdUnitRestarter,
} from "../src/restart.js";

describe("systemd restarter", () => {
  let dir: string;
  let savedPath: string | undefined;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "chv-restart-"));
    // Records its argv; `systemctl is-active --quiet X` succeeds only for $ACTIVE_UNIT;
    // `systemctl restart X` fails when X is $FAILING_UNIT.
    await writeFile(
      path.join(dir, "nsenter"),
      `#!/bin/sh
echo "$*" >> "${dir}/calls"
case "$*" in
  *"systemctl is-active --quiet $ACTIVE_UNIT") exit 0 ;;
  *"systemctl is-active"*) exit 3 ;;
  *"systemctl restart $FAILING_UNIT") echo "Job for $FAILING_UNIT.service failed because the control process exited with error code." >&2; exit 1 ;;
esac
exit 0
`,
    );
    await chmod(path.join(dir, "nsenter"), 0o755);
    savedPath = process.env.PATH;
    process.env.PATH = `${dir}:${savedPath}`;
  });
  after(async () => {
    process.env.PATH = savedPath;
    delete process.env.ACTIVE_UNIT;
    delete process.env.FAILING_UNIT;
    await rm(dir, { recursive: true, force: true });
  });

  async function calls(): Promise<string[]> {
    const text = await readFile(path.join(dir, "calls"), "utf8").catch(() => "");
    await rm(path.join(dir, "calls"), { force: true });
    return text.trim().split("\n").filter(Boolean);
  }

  it("restarts the active one of k3s / k3s-agent in the host's namespaces", async () => {
    process.env.ACTIVE_UNIT = "k3s-agent";
    const r = await systemdRestarter(["k3s", "k3s-agent"]);
    assert.equal(r.describe, "systemctl restart k3s-agent (in the host's namespaces)");
    await r.restart();
    assert.deepEqual(await calls(), [
      "--target 1 --mount --uts --ipc --net --pid -- systemctl is-active --quiet k3s",
      "--target 1 --mount --uts --ipc --net --pid -- systemctl is-active --quiet k3s-agent",
      "--target 1 --mount --uts --ipc --net --pid -- systemctl restart k3s-agent",
    ]);
  });

  it("falls back to the first unit when none is active, and says why a restart failed", async () => {
    process.env.ACTIVE_UNIT = "none";
    process.env.FAILING_UNIT = "containerd";
    const r = await systemdRestarter(["containerd"]);
    await assert.rejects(
      r.restart(),
      /systemctl restart containerd failed: Job for containerd\.service failed/,
    );
    assert.deepEqual(
      (await calls()).at(-1),
      "--target 1 --mount --uts --ipc --net --pid -- systemctl restart containerd",
    );
  });
});

describe("systemd restarter: a restart that never ran", () => {
  it("says nsenter refused and that containerd was not restarted (stopped: false)", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "chv-nsenter-"));
    const saved = process.env.PATH;
    try {
      await writeFile(
        path.join(dir, "nsenter"),
        "#!/bin/sh\necho 'nsenter: cannot open /proc/1/ns/ipc: Permission denied' >&2\nexit 1\n",
      );
      await chmod(path.join(dir, "nsenter"), 0o755);
      process.env.PATH = `${dir}:${saved}`;
      await assert.rejects(systemdUnitRestarter("containerd").restart(), (err: Error) => {
        assert.ok(err instanceof RestartError);
        assert.equal(err.stopped, false);
        assert.equal(
          err.message,
          "systemctl restart containerd failed: nsenter: cannot open /proc/1/ns/ipc: Permission denied (systemctl did not run: containerd was not restarted)",
        );
        return true;
      });
    } finally {
      process.env.PATH = saved;
      await rm(dir, { recursive: true, force: true });
    }
  });
});

const plain: ContainerdTarget = {
  flavor: "containerd",
  configPath: "/etc/containerd/config.toml",
  version: 2,
  address: "/run/containerd/containerd.sock",
  services: ["containerd"],
  existed: true,
};
const k3s: ContainerdTarget = {
  flavor: "k3s",
  configPath: "/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl",
  generatedPath: "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
  version: 2,
  address: "/run/k3s/containerd/containerd.sock",
  services: ["k3s", "k3s-agent"],
  existed: false,
};

describe("--restart auto: decided from the host's PID 1 and containerd's process", () => {
  let dir: string;
  let n = 0;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "chv-proc-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  type P = { comm: string; argv?: string[]; ppid?: number; cgroup?: string };
  /** A fake /proc (and an empty host root) with these processes. */
  async function host(procs: Record<number, P>, unitFiles: string[] = []) {
    const base = path.join(dir, `h${n++}`);
    const proc = path.join(base, "proc");
    for (const [pid, p] of Object.entries(procs)) {
      const d = path.join(proc, pid);
      await mkdir(d, { recursive: true });
      const rest = Array.from({ length: 40 }, (_, i) => (i === 19 ? `${1000 + Number(pid)}` : "0"));
      rest[0] = "S";
      rest[1] = String(p.ppid ?? 1);
      await writeFile(path.join(d, "stat"), `${pid} (${p.comm}) ${rest.join(" ")}\n`);
      await writeFile(path.join(d, "comm"), `${p.comm}\n`);
      await writeFile(path.join(d, "cmdline"), `${(p.argv ?? [p.comm]).join("\0")}\0`);
      await writeFile(path.join(d, "cgroup"), p.cgroup ?? "0::/\n");
    }
    const root = path.join(base, "root");
    for (const u of unitFiles) {
      await mkdir(path.join(root, "lib/systemd/system"), { recursive: true });
      await writeFile(path.join(root, "lib/systemd/system", `${u}.service`), "[Service]\n");
    }
    await mkdir(root, { recursive: true });
    return { proc, root: new HostRoot(root) };
  }

  it("systemd host, containerd in containerd.service: systemd, that unit", async () => {
    const h = await host({
      1: { comm: "systemd" },
      812: {
        comm: "containerd",
        argv: ["/usr/bin/containerd"],
        cgroup: "0::/system.slice/containerd.service\n",
      },
    });
    const c = await chooseRestart("auto", plain, h);
    assert.equal(c.mode, "systemd");
    assert.equal(c.restarter?.describe, "systemctl restart containerd (in the host's namespaces)");
    assert.match(c.why, /PID 1 is systemd and containerd \(pid 812\) runs in containerd\.service/);
  });

  it("k3s agent under systemd: the unit containerd's cgroup names (k3s-agent)", async () => {
    const h = await host({
      1: { comm: "systemd" },
      40: { comm: "k3s-agent", cgroup: "0::/system.slice/k3s-agent.service\n" },
      41: {
        comm: "containerd",
        ppid: 40,
        argv: ["containerd", "-c", k3s.generatedPath as string, "-a", k3s.address],
        cgroup: "0::/system.slice/k3s-agent.service\n",
      },
    });
    const c = await chooseRestart("auto", k3s, h);
    assert.equal(c.mode, "systemd");
    assert.equal(c.restarter?.describe, "systemctl restart k3s-agent (in the host's namespaces)");
  });

  it("no systemd, containerd supervised by runit: signal", async () => {
    const h = await host({
      1: { comm: "runit" },
      20: { comm: "runsv", argv: ["runsv", "containerd"] },
      21: { comm: "containerd", ppid: 20, argv: ["/usr/local/bin/containerd"] },
    });
    const c = await chooseRestart("auto", plain, h);
    assert.equal(c.mode, "signal");
    assert.match(c.why, /containerd \(pid 21\) is supervised by runsv \(pid 20\)/);
  });

  it("no systemd, containerd started by a shell (the reported cluster): none, saying why and what to do", async () => {
    const h = await host({
      1: { comm: "tini" },
      7: { comm: "bash", argv: ["bash", "/start-node.sh"] },
      9: { comm: "containerd", ppid: 7, argv: ["containerd", "--config", "/etc/containerd/config.toml"] },
    });
    const c = await chooseRestart("auto", plain, h);
    assert.equal(c.mode, "none");
    assert.equal(c.restarter, undefined);
    assert.equal(
      c.why,
      "containerd (pid 9) is not run by systemd (the host's PID 1 is tini) and its parent bash (pid 7) is not a supervisor the installer knows (runsv, s6-supervise, supervise-daemon, supervisord, dinit); if it starts containerd again when it exits, use --restart signal",
    );
  });

  it("systemd host, containerd not in a unit (started by hand): none", async () => {
    const h = await host({
      1: { comm: "systemd" },
      9: {
        comm: "containerd",
        argv: ["containerd"],
        cgroup: "0::/user.slice/user-0.slice/session-3.scope\n",
      },
    });
    const c = await chooseRestart("auto", plain, h);
    assert.equal(c.mode, "none");
    assert.match(c.why, /PID 1 is systemd but containerd \(pid 9\) is not in a systemd unit/);
  });

  it("no containerd visible: systemd if the host has the unit (it is started), else none naming hostPID", async () => {
    const withUnit = await host({ 1: { comm: "systemd" } }, ["containerd"]);
    assert.equal((await chooseRestart("auto", plain, withUnit)).mode, "systemd");
    const bare = await host({ 1: { comm: "node" } });
    const c = await chooseRestart("auto", plain, bare);
    assert.equal(c.mode, "none");
    assert.match(c.why, /no containerd process is visible in .*\(the installer pod needs hostPID: true\)/);
  });

  it("finds the containerd serving Kubernetes among several (docker's has its own config); refuses to guess between two", async () => {
    const h = await host({
      1: { comm: "systemd" },
      30: {
        comm: "containerd",
        argv: ["containerd", "--config", "/var/run/docker/containerd/containerd.toml"],
      },
      31: { comm: "containerd", argv: ["/usr/bin/containerd"] },
      32: { comm: "containerd-shim", argv: ["containerd-shim-runc-v2", "-namespace", "k8s.io"] },
    });
    assert.equal((await locateContainerd(plain, h)).pid, 31);
    const two = await host({
      31: { comm: "containerd", argv: ["/usr/bin/containerd"] },
      33: { comm: "containerd", argv: ["/usr/local/bin/containerd", "--config=/etc/containerd/config.toml"] },
    });
    await assert.rejects(
      signalRestarter(plain, two).restart(),
      /2 containerd processes run with config \/etc\/containerd\/config\.toml \(pids 31, 33\); pass --containerd-pidfile/,
    );
  });

  it("a pid file that names something else is refused before any signal", async () => {
    const h = await host({ 1: { comm: "init" }, 50: { comm: "sleep" } });
    await mkdir(path.join(h.root.root, "run"), { recursive: true });
    await writeFile(path.join(h.root.root, "run/containerd.pid"), "50\n");
    await assert.rejects(
      signalRestarter(plain, { ...h, pidFile: "/run/containerd.pid" }).restart(),
      (err: Error) =>
        err instanceof RestartError &&
        !err.stopped &&
        /pid file \/run\/containerd\.pid names pid 50, which is sleep, not containerd/.test(err.message),
    );
  });

  it("reads the unit from cgroup v1 and v2 lines", () => {
    assert.equal(systemdUnitOf("0::/system.slice/containerd.service\n"), "containerd");
    assert.equal(
      systemdUnitOf("12:pids:/system.slice/k3s.service\n1:name=systemd:/system.slice/k3s.service\n"),
      "k3s",
    );
    assert.equal(systemdUnitOf("0::/kubepods/burstable/pod1/abc\n"), undefined);
  });
});

describe("--restart signal, for real: SIGTERM, and the supervisor starts containerd again", () => {
  it("stops the process the pid file names and returns once it is gone; the supervisor's new one is there", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "chv-signal-"));
    const bin = path.join(dir, "bin/containerd");
    await mkdir(path.dirname(bin));
    // A stand-in containerd (its process name is containerd) and a supervising shell loop.
    await writeFile(bin, '#!/bin/sh\ntrap "exit 0" TERM\nwhile :; do sleep 0.05; done\n');
    await chmod(bin, 0o755);
    const supervisor = spawn(
      "sh",
      [
        "-c",
        `trap 'kill $c; exit 0' TERM; while :; do "${bin}" --config /etc/containerd/config.toml & c=$!; echo $c > "${dir}/containerd.pid"; wait $c; done`,
      ],
      { stdio: "ignore" },
    );
    const pidNow = async () =>
      Number((await readFile(path.join(dir, "containerd.pid"), "utf8").catch(() => "0")).trim());
    try {
      for (let i = 0; i < 100 && !(await pidNow()); i++) await new Promise((r) => setTimeout(r, 50));
      const first = await pidNow();
      const opts = { root: new HostRoot(dir), pidFile: "/containerd.pid" };
      const r = signalRestarter(plain, opts);
      assert.match(
        r.describe,
        /SIGTERM to containerd \(pid from pid file \/containerd\.pid\); its supervisor starts it again/,
      );
      await r.restart();
      assert.equal(await readProc("/proc", first), undefined, "the old containerd is gone");
      let second = 0;
      for (let i = 0; i < 100; i++) {
        second = await pidNow();
        if (second && second !== first && (await readProc("/proc", second))) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.notEqual(second, first);
      assert.equal((await readProc("/proc", second))?.comm, "containerd");
    } finally {
      supervisor.kill("SIGTERM");
      await new Promise((r) => supervisor.once("exit", r));
      await rm(dir, { recursive: true, force: true });
    }
  });
});
