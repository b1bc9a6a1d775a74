// Level 1: the containerd config edits on their own — text kept byte-for-byte where TOML
// allows it, the parsed meaning checked every time, the fallbacks, k3s/rke2 templates, and the
// errors a bad input gets. Every install/uninstall here uses --restart none on a temp root.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { pino } from "pino";
import { parse } from "smol-toml";
import {
  addImport,
  addRuntime,
  ContainerdConfigError,
  importsInclude,
  newConfig,
  removeImport,
  removeRuntime,
} from "../src/containerd-config.js";
import { detectTarget } from "../src/containerd-target.js";
import { install, planInstall, uninstall } from "../src/install.js";
import { HostRoot } from "../src/paths.js";
import { at, containerd2, realisticV2, testBundle, tree } from "./support/node.js";

async function libsOf(binary: string): Promise<string[]> {
  const { stdout } = await promisify(execFile)("ldd", [binary]);
  return [...stdout.matchAll(/(\/\S+)\s+\(0x/g)].map((m) => m[1] as string);
}

const log = pino({ level: "silent" });
const RT2 = ["plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes"];
const RT3 = ["plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes"];

describe("containerd config edits", () => {
  it("appends one block, keeps the rest byte-for-byte, and removes it back to the original", () => {
    const original = realisticV2("/run/x");
    const patched = addRuntime(original, 2, "config.toml");
    assert.equal(patched.method, "text");
    assert.ok(patched.text.startsWith(original));
    assert.equal(
      at(parse(patched.text), ...RT2, "cloudhv", "runtime_path"),
      "/opt/cloudhv/bin/containerd-shim-cloudhv-v1",
    );
    assert.equal(addRuntime(patched.text, 2, "config.toml").method, "unchanged", "patching twice = once");
    assert.equal(removeRuntime(patched.text, 2, "config.toml").text, original);
  });

  it("adds containerd's runc when the file has no runtimes (any runtimes table replaces the default)", () => {
    const patched = addRuntime(
      'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "p:1"\n',
      2,
      "c",
    );
    assert.deepEqual(Object.keys(at(parse(patched.text), ...RT2) as object).sort(), ["cloudhv", "runc"]);
    assert.equal(at(parse(patched.text), ...RT2, "runc", "runtime_type"), "io.containerd.runc.v2");
  });

  it("rewrites (values kept, comments lost, said why) when runtimes is an inline table", () => {
    const original =
      'version = 2\n# a comment\n[plugins."io.containerd.grpc.v1.cri".containerd]\n  runtimes = { runc = { runtime_type = "io.containerd.runc.v2" } }\n';
    const patched = addRuntime(original, 2, "c");
    assert.equal(patched.method, "rewritten");
    assert.match(patched.note ?? "", /inline tables/);
    const doc = parse(patched.text);
    assert.deepEqual(Object.keys(at(doc, ...RT2) as object).sort(), ["cloudhv", "runc"]);
    assert.equal(at(doc, "version"), 2);
  });

  it("refuses a different cloudhv runtime someone defined by hand; takes it over only when asked, saying so in the file", () => {
    const original = `version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cloudhv]\n  runtime_type = "io.containerd.kata.v2"\n`;
    assert.throws(
      () => addRuntime(original, 2, "/etc/containerd/config.toml"),
      (err: Error) =>
        err instanceof ContainerdConfigError &&
        /\/etc\/containerd\/config\.toml already defines a "cloudhv" runtime \(runtime_type = "io\.containerd\.kata\.v2"\) that cloudhv-installer did not write; it is not replaced silently.*--take-over-runtime \(chart: containerd\.takeOverRuntime=true\)/.test(
          err.message,
        ),
    );
    const patched = addRuntime(original, 2, "/etc/containerd/config.toml", { takeOver: true });
    assert.equal(patched.method, "rewritten");
    assert.match(
      patched.text.split("\n")[0] as string,
      /^# Rewritten by cloudhv-installer \(took over the "cloudhv" runtime defined in \/etc\/containerd\/config\.toml \(runtime_type = "io\.containerd\.kata\.v2"\)/,
    );
    assert.equal(at(parse(patched.text), ...RT2, "cloudhv", "runtime_type"), "io.containerd.cloudhv.v1");
    // Taken over once: the next install changes nothing.
    assert.equal(addRuntime(patched.text, 2, "c", { takeOver: true }).method, "unchanged");
  });

  it("writes version 1 (plugins.cri), 2 and 3 layouts for new files", () => {
    assert.equal(
      at(parse(newConfig(1)), "plugins", "cri", "containerd", "runtimes", "cloudhv", "runtime_type"),
      "io.containerd.cloudhv.v1",
    );
    assert.equal(at(parse(newConfig(2)), "version"), 2);
    const v3 = parse(newConfig(3));
    assert.equal(at(v3, "version"), 3);
    assert.deepEqual(at(v3, ...RT3, "cloudhv", "pod_annotations"), ["io.cloudhv.*", "io.katacontainers.*"]);
  });

  it("adds and removes the imports line of a version 3 config", () => {
    const original =
      'version = 3\n# top comment\n[plugins."io.containerd.cri.v1.runtime"]\n  enable_cdi = true\n';
    const added = addImport(original, "/etc/containerd/conf.d/cloudhv.toml", "/etc/containerd", "c");
    assert.equal(added.method, "text");
    assert.deepEqual(at(parse(added.text), "imports"), ["/etc/containerd/conf.d/cloudhv.toml"]);
    assert.equal(removeImport(added.text, "/etc/containerd/conf.d/cloudhv.toml", "c").text, original);
    // A glob that already takes our drop-in: nothing to change.
    const globbed = 'version = 3\nimports = ["conf.d/*.toml"]\n';
    assert.equal(
      addImport(globbed, "/etc/containerd/conf.d/cloudhv.toml", "/etc/containerd", "c").method,
      "unchanged",
    );
    assert.ok(importsInclude(["/etc/containerd/conf.d/*.toml"], "/etc/containerd/conf.d/cloudhv.toml", "/"));
    assert.ok(!importsInclude(["/etc/containerd/other/*.toml"], "/etc/containerd/conf.d/cloudhv.toml", "/"));
  });

  it("names the file, line and column of invalid TOML", () => {
    assert.throws(
      () => addRuntime("version = 2\n[plugins\nx = 1\n", 2, "/etc/containerd/config.toml"),
      (err: Error) =>
        err instanceof ContainerdConfigError &&
        /\/etc\/containerd\/config\.toml is not valid TOML \(line 2, column \d+/.test(err.message),
    );
  });

  it("refuses a config version it does not know", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "chv-ver-"));
    try {
      await mkdir(path.join(dir, "etc/containerd"), { recursive: true });
      await writeFile(path.join(dir, "etc/containerd/config.toml"), "version = 9\n");
      await assert.rejects(
        detectTarget(new HostRoot(dir)),
        /\/etc\/containerd\/config\.toml declares version = 9; cloudhv knows versions 1, 2 and 3/,
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("install on a temp root (--restart none)", () => {
  let dir: string;
  let bundle: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "chv-inst-"));
    bundle = await testBundle();
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function freshRoot(name: string): Promise<HostRoot> {
    const root = path.join(dir, name);
    await mkdir(root, { recursive: true });
    return new HostRoot(root);
  }

  it("without a config file: creates one (version from --config-version), uninstall deletes it", async () => {
    const root = await freshRoot("missing");
    await install({ root, log, checkHostTools: false, artifacts: bundle, configVersion: 2 });
    const created = await readFile(root.path("/etc/containerd/config.toml"), "utf8");
    assert.deepEqual(Object.keys(at(parse(created), ...RT2) as object).sort(), ["cloudhv", "runc"]);
    await uninstall({ root, log });
    assert.deepEqual(await tree(root.root), []);
  });

  it("without a config file: asks the node's containerd binary (2.x → version 3, 1.x → version 2)", async () => {
    const v2root = await freshRoot("probe-2");
    await mkdir(v2root.path("/usr/local/bin"), { recursive: true });
    await copyFile(await containerd2(), v2root.path("/usr/local/bin/containerd"));
    await chmod(v2root.path("/usr/local/bin/containerd"), 0o755);
    assert.equal((await detectTarget(v2root)).version, 3);
    // Debian's 1.6 is dynamically linked: give it the libraries ldd names.
    const v1root = await freshRoot("probe-1");
    for (const file of ["/usr/bin/containerd", ...(await libsOf("/usr/bin/containerd"))]) {
      await mkdir(path.dirname(v1root.path(file)), { recursive: true });
      await copyFile(file, v1root.path(file));
      await chmod(v1root.path(file), 0o755);
    }
    assert.equal((await detectTarget(v1root)).version, 2);
  });

  it("without a config file or a containerd to ask: refuses, naming the flag to pass", async () => {
    const root = await freshRoot("unknown");
    await assert.rejects(detectTarget(root), /pass --config-version 2 \(containerd 1\.x\) or 3 \(2\.x\)/);
  });

  for (const [flavor, version, template] of [
    ["k3s", 2, "config.toml.tmpl"],
    ["k3s", 3, "config-v3.toml.tmpl"],
    ["rke2", 2, "config.toml.tmpl"],
  ] as const) {
    it(`${flavor} with containerd config version ${version}: writes ${template} on containerd's base template, never the generated file`, async () => {
      const root = await freshRoot(`${flavor}-${version}`);
      const etc = `/var/lib/rancher/${flavor}/agent/etc/containerd`;
      const generated = `version = ${version}\n# generated by ${flavor}: do not edit\n`;
      await mkdir(root.path(etc), { recursive: true });
      await writeFile(root.path(`${etc}/config.toml`), generated);
      const target = await detectTarget(root);
      assert.equal(target.flavor, flavor);
      assert.equal(target.address, "/run/k3s/containerd/containerd.sock");
      const res = await install({ root, log, checkHostTools: false, artifacts: bundle });
      assert.equal(res.changes[0]?.path, `${etc}/${template}`);
      const text = await readFile(root.path(`${etc}/${template}`), "utf8");
      assert.ok(text.startsWith('{{ template "base" . }}\n'));
      const plugin = version === 3 ? "io.containerd.cri.v1.runtime" : "io.containerd.grpc.v1.cri";
      assert.match(
        text,
        new RegExp(`\\[plugins\\."${plugin.replaceAll(".", "\\.")}"\\.containerd\\.runtimes\\.cloudhv\\]`),
      );
      assert.equal(await readFile(root.path(`${etc}/config.toml`), "utf8"), generated);
      await uninstall({ root, log });
      assert.deepEqual(await tree(root.root), [
        "var/",
        "var/lib/",
        "var/lib/rancher/",
        `var/lib/rancher/${flavor}/`,
        `var/lib/rancher/${flavor}/agent/`,
        `var/lib/rancher/${flavor}/agent/etc/`,
        `var/lib/rancher/${flavor}/agent/etc/containerd/`,
        `var/lib/rancher/${flavor}/agent/etc/containerd/config.toml`,
      ]);
    });
  }

  it("k3s with the owner's own template: appends to it, uninstall gives it back byte-for-byte", async () => {
    const root = await freshRoot("k3s-own");
    const etc = "/var/lib/rancher/k3s/agent/etc/containerd";
    await mkdir(root.path(etc), { recursive: true });
    await writeFile(root.path(`${etc}/config.toml`), "version = 2\n");
    const own =
      '{{ template "base" . }}\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.gvisor]\n  runtime_type = "io.containerd.runsc.v1"\n';
    await writeFile(root.path(`${etc}/config.toml.tmpl`), own);
    const plan = await planInstall(root, await detectTarget(root));
    assert.ok(plan[0]?.after?.startsWith(own));
    await install({ root, log, checkHostTools: false, artifacts: bundle });
    await uninstall({ root, log });
    assert.equal(await readFile(root.path(`${etc}/config.toml.tmpl`), "utf8"), own);
  });

  it("a config changed after install: uninstall takes out only our block and keeps the change", async () => {
    const root = await freshRoot("edited");
    await mkdir(root.path("/etc/containerd"), { recursive: true });
    const original = realisticV2("/run/x");
    await writeFile(root.path("/etc/containerd/config.toml"), original);
    await install({ root, log, checkHostTools: false, artifacts: bundle });
    const edited = `${await readFile(root.path("/etc/containerd/config.toml"), "utf8")}\n[metrics]\n  address = "127.0.0.1:1338"\n`;
    await writeFile(root.path("/etc/containerd/config.toml"), edited);
    await uninstall({ root, log });
    const after = await readFile(root.path("/etc/containerd/config.toml"), "utf8");
    assert.ok(after.startsWith(original));
    assert.equal(at(parse(after), "metrics", "address"), "127.0.0.1:1338");
    assert.equal(at(parse(after), ...RT2, "cloudhv"), undefined);
  });

  it("rejects a bad runtime config before touching the node, naming the key", async () => {
    const root = await freshRoot("bad-config");
    await mkdir(root.path("/etc/containerd"), { recursive: true });
    await writeFile(root.path("/etc/containerd/config.toml"), "version = 2\n");
    await assert.rejects(
      install({
        root,
        log,
        checkHostTools: false,
        artifacts: bundle,
        runtimeConfig: { default_vcpus: "two" },
      }),
      /invalid runtime config the runtime config given to the installer: "default_vcpus"/,
    );
    await assert.rejects(
      install({ root, log, checkHostTools: false, artifacts: bundle, runtimeConfig: { vcpus: 2 } }),
      /unknown key "vcpus"/,
    );
    assert.deepEqual(await tree(root.root), ["etc/", "etc/containerd/", "etc/containerd/config.toml"]);
  });

  it("rejects an artifact directory that is not a bundle, naming it", async () => {
    const root = await freshRoot("bad-artifacts");
    await assert.rejects(
      install({
        root,
        log,
        checkHostTools: false,
        artifacts: path.join(dir, "nothing-here"),
        configVersion: 2,
      }),
      /cannot read the artifact manifest .*nothing-here\/manifest\.json/,
    );
    assert.deepEqual(await tree(root.root), []);
  });
});
