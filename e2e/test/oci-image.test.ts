// Test images built as OCI archives, imported into a private containerd and run with runc.
import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { PrivateContainerd } from "../src/containerd.js";
import {
  BUSYBOX_IMAGE,
  buildBusyboxImage,
  buildOciArchive,
  importOciArchive,
  refTag,
  stageBusyboxRoot,
} from "../src/oci-image.js";

const NS = "cloudhv-test";

describe("OCI image archives", () => {
  let dir: string;
  let containerd: PrivateContainerd;
  let seq = 0;

  const run = async (image: string, args: readonly string[] = []) =>
    (
      await containerd.ctr(
        ["-n", NS, "run", "--rm", "--runtime", "io.containerd.runc.v2", image, `t${++seq}`, ...args],
        {
          timeoutMs: 30_000,
        },
      )
    ).stdout;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-oci-"));
    containerd = await PrivateContainerd.start();
  });
  after(async () => {
    await containerd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it("takes the tag from the reference", () => {
    assert.equal(refTag("docker.io/cloudhv-test/busybox:1"), "1");
    assert.equal(refTag("localhost:5000/x/y"), "latest");
    assert.equal(refTag("busybox"), "latest");
  });

  it("builds the same archive digests twice (deterministic layers)", async () => {
    const a = await buildBusyboxImage({ archivePath: path.join(dir, "a.tar") });
    const b = await buildBusyboxImage({ archivePath: path.join(dir, "b.tar") });
    assert.equal(a.manifestDigest, b.manifestDigest);
    assert.deepEqual(a.layers, b.layers);
  });

  it("imports a busybox image that runs `echo hi` with runc", async () => {
    const image = await buildBusyboxImage({ archivePath: path.join(dir, "busybox.tar") });
    await importOciArchive(containerd, image.archivePath, { namespace: NS });
    const listed = (await containerd.ctr(["-n", NS, "images", "ls", "-q"])).stdout;
    assert.match(listed, new RegExp(`^${BUSYBOX_IMAGE}$`, "m"));
    assert.equal(await run(BUSYBOX_IMAGE, ["echo", "hi"]), "hi\n");
    assert.equal(await run(BUSYBOX_IMAGE, ["cat", "/etc/cloudhv-image"]), `${BUSYBOX_IMAGE}\n`);
  });

  it("makes a second, distinct image that shares the busybox layer", async () => {
    const name = "docker.io/cloudhv-test/other:2";
    const base = await buildBusyboxImage({ archivePath: path.join(dir, "base.tar") });
    const other = await buildBusyboxImage({ archivePath: path.join(dir, "other.tar"), name, bigFileMb: 2 });
    assert.notEqual(other.manifestDigest, base.manifestDigest);
    assert.equal(other.layers[0]?.digest, base.layers[0]?.digest);
    await importOciArchive(containerd, other.archivePath, { namespace: NS });
    assert.equal(await run(name, ["cat", "/etc/cloudhv-image"]), `${name}\n`);
    assert.equal(await run(name, ["wc", "-c", "/data/big.bin"]), `${2 << 20} /data/big.bin\n`);
  });

  it("applies config (Cmd, Env, WorkingDir) and layer order, whiteouts and opaque dirs", async () => {
    const name = "docker.io/cloudhv-test/layers:1";
    const [l0, l1, l2] = ["l0", "l1", "l2"].map((n) => path.join(dir, n)) as [string, string, string];
    await mkdir(l0);
    await stageBusyboxRoot(l0);
    await mkdir(path.join(l1, "data", "opaque"), { recursive: true });
    await mkdir(path.join(l1, "etc"), { recursive: true });
    await writeFile(path.join(l1, "data", "a.txt"), "A1\n");
    await writeFile(path.join(l1, "data", "keep.txt"), "K\n");
    await writeFile(path.join(l1, "data", "opaque", "old.txt"), "old\n");
    await writeFile(path.join(l1, "etc", "gone"), "here\n");
    await mkdir(path.join(l2, "data", "opaque"), { recursive: true });
    await mkdir(path.join(l2, "etc"), { recursive: true });
    await writeFile(path.join(l2, "data", "a.txt"), "A2\n");
    await writeFile(path.join(l2, "etc", ".wh.gone"), "");
    await writeFile(path.join(l2, "data", "opaque", ".wh..wh..opq"), "");
    await writeFile(path.join(l2, "data", "opaque", "new.txt"), "new\n");
    const image = await buildOciArchive(
      {
        name,
        layers: [l0, l1, l2],
        config: {
          cmd: ["/bin/sh", "-c", "echo $GREETING; ls"],
          env: ["PATH=/bin", "GREETING=hello"],
          workingDir: "/data",
        },
      },
      path.join(dir, "layers.tar"),
    );
    assert.equal(image.layers.length, 3);
    await importOciArchive(containerd, image.archivePath, { namespace: NS });
    assert.equal(await run(name), "hello\na.txt\nkeep.txt\nopaque\n");
    assert.equal(await run(name, ["cat", "/data/a.txt", "/data/keep.txt"]), "A2\nK\n");
    assert.equal(await run(name, ["ls", "/data/opaque"]), "new.txt\n");
    assert.doesNotMatch(await run(name, ["ls", "-a", "/etc"]), /gone/);
  });
});
