// The installer image, built without Docker (OCI archive), imported into a real containerd and
// run with runc the way the DaemonSet runs it: the node's root bind-mounted at /host. Nothing
// from this machine is visible inside but that mount, so this proves the image is complete
// (Node runtime, installer, its dependencies, the bundle with shim, kernel and rootfs).
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, readFile, readlink, rm } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { guestArtifacts } from "@cloudhv/e2e/dist/src/artifacts.js";
import { PrivateContainerd } from "@cloudhv/e2e/dist/src/containerd.js";
import { parse } from "smol-toml";
import { readManifest, verifyBundle } from "../src/artifacts.js";
import { buildImage, ENTRYPOINT } from "../src/image.js";
import { at, tree } from "./support/node.js";

describe("installer image (OCI archive, no Docker)", () => {
  let dir: string;
  let containerd: PrivateContainerd;
  let name: string;
  let bundleVersion: string;

  before(async () => {
    dir = await mkdtemp("/var/tmp/chv-image-");
    const { kernelPath, rootfsPath } = guestArtifacts();
    const started = Date.now();
    const image = await buildImage({
      archivePath: path.join(dir, "installer.tar"),
      name: "docker.io/cloudhv-test/installer:test",
      kernel: kernelPath,
      rootfs: rootfsPath,
    });
    console.log(`image build took ${Date.now() - started} ms`);
    name = image.name;
    bundleVersion = image.version;
    containerd = await PrivateContainerd.start();
    await containerd.ctr(["images", "import", image.archivePath], { timeoutMs: 300_000 });
  });

  after(async () => {
    await containerd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  async function runImage(id: string, host: string, args: string[]) {
    return containerd.ctr(
      // ctr's command replaces the image's entrypoint, so it is named again.
      [
        "run",
        "--rm",
        "--mount",
        `type=bind,src=${host},dst=/host,options=rbind:rw`,
        name,
        id,
        ENTRYPOINT,
        ...args,
      ],
      { timeoutMs: 120_000 },
    );
  }

  it("prints the installer's help by default", async () => {
    const res = await containerd.ctr(["run", "--rm", name, "help"], { timeoutMs: 60_000 });
    assert.equal(res.code, 0);
    assert.match(res.stdout, /Usage: cloudhv-installer \[options\] \[command\]/);
    assert.match(res.stdout, /install \[options\]/);
    assert.match(res.stdout, /uninstall \[options\]/);
  });

  it("installs onto a node root mounted at /host and uninstalls again, from inside the image", async () => {
    const host = path.join(dir, "node");
    await mkdir(path.join(host, "etc/containerd"), { recursive: true });
    const res = await runImage("install", host, [
      "install",
      "--restart",
      "none",
      "--config-version",
      "2",
      "--skip-host-tools-check",
    ]);
    assert.match(res.stdout, /"msg":"cloudhv installed"/);
    const installed = path.join(host, "opt/cloudhv/versions", bundleVersion);
    const manifest = await readManifest(installed);
    assert.equal(await verifyBundle(installed, manifest), undefined, "the copy on the node is intact");
    assert.ok(
      "rootfs.erofs" in manifest.files && "vmlinux" in manifest.files && "node/bin/node" in manifest.files,
    );
    // virtiofsd ships with the runtime and is where the runtime config's default looks for it.
    assert.ok("bin/virtiofsd" in manifest.files);
    assert.ok("bin/cloudhv-portfwd" in manifest.files);
    assert.ok("bin/cloudhv-net" in manifest.files);
    assert.equal(
      await readlink(path.join(host, "opt/cloudhv/bin/virtiofsd")),
      `../versions/${bundleVersion}/bin/virtiofsd`,
    );
    assert.equal(
      await readlink(path.join(host, "opt/cloudhv/bin/cloudhv-portfwd")),
      `../versions/${bundleVersion}/bin/cloudhv-portfwd`,
    );
    assert.equal(
      await readlink(path.join(host, "opt/cloudhv/bin/cloudhv-net")),
      `../versions/${bundleVersion}/bin/cloudhv-net`,
    );
    const config = parse(await readFile(path.join(host, "etc/containerd/config.toml"), "utf8"));
    assert.equal(
      at(config, "plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes", "cloudhv", "runtime_type"),
      "io.containerd.cloudhv.v1",
    );
    assert.deepEqual(await readdir(path.join(host, "opt/cloudhv/versions")), [bundleVersion]);

    const un = await runImage("uninstall", host, ["uninstall", "--restart", "none"]);
    assert.match(un.stdout, /"msg":"cloudhv uninstalled"/);
    assert.deepEqual(await tree(host), ["etc/", "etc/containerd/"]);
  });
});
