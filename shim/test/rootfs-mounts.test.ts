// containerd rootfs mounts → RootfsSource, and the errors for what we cannot deliver.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { RootfsError } from "../src/rootfs/errors.js";
import { type ContainerdMount, parseRootfsMounts, splitLowerdir } from "../src/rootfs/mounts.js";

const SNAP = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots";

const overlay = (options: string[]): ContainerdMount => ({ type: "overlay", source: "overlay", options });

function rejects(mounts: ContainerdMount[], pattern: RegExp, kind = "InvalidArgument") {
  assert.throws(
    () => parseRootfsMounts(mounts),
    (err: unknown) => {
      assert.ok(err instanceof RootfsError, `not a RootfsError: ${String(err)}`);
      assert.equal(err.kind, kind);
      assert.match(err.message, pattern);
      return true;
    },
  );
}

describe("parseRootfsMounts", () => {
  it("reads an active overlay snapshot: lowers topmost first, upper and work", () => {
    const source = parseRootfsMounts([
      overlay([
        "index=off",
        `workdir=${SNAP}/9/work`,
        `upperdir=${SNAP}/9/fs`,
        `lowerdir=${SNAP}/3/fs:${SNAP}/2/fs:${SNAP}/1/fs`,
      ]),
    ]);
    assert.deepEqual(source, {
      lowerDirs: [`${SNAP}/3/fs`, `${SNAP}/2/fs`, `${SNAP}/1/fs`],
      upperDir: `${SNAP}/9/fs`,
      workDir: `${SNAP}/9/work`,
      readOnly: false,
    });
  });

  it("reads a view (lowers only) as read-only, and accepts harmless options", () => {
    const source = parseRootfsMounts([
      overlay(["ro", "userxattr", "index=off", `lowerdir=${SNAP}/3/fs:${SNAP}/2/fs`]),
    ]);
    assert.deepEqual(source, { lowerDirs: [`${SNAP}/3/fs`, `${SNAP}/2/fs`], readOnly: true });
  });

  it("reads bind mounts: ro is one layer, rw is a writable layer with no parent", () => {
    assert.deepEqual(
      parseRootfsMounts([{ type: "bind", source: `${SNAP}/1/fs`, options: ["ro", "rbind"] }]),
      {
        lowerDirs: [`${SNAP}/1/fs`],
        readOnly: true,
      },
    );
    assert.deepEqual(
      parseRootfsMounts([{ type: "bind", source: `${SNAP}/5/fs`, options: ["rbind", "rw"] }]),
      {
        lowerDirs: [],
        upperDir: `${SNAP}/5/fs`,
        readOnly: false,
      },
    );
  });

  it("splits lowerdir at unescaped colons only", () => {
    assert.deepEqual(splitLowerdir("/a:/b\\:c:/d"), ["/a", "/b:c", "/d"]);
    assert.deepEqual(splitLowerdir("/only"), ["/only"]);
  });

  it("names the mount and option it cannot handle", () => {
    rejects([], /no mounts given/);
    rejects(
      [overlay([`lowerdir=${SNAP}/1/fs`]), overlay([`lowerdir=${SNAP}/2/fs`])],
      /2 mounts given \(overlay, overlay\)/,
    );
    rejects(
      [{ type: "devmapper", source: "/dev/dm-3", options: [] }],
      /source "\/dev\/dm-3".*mount type "devmapper" is not supported/,
    );
    rejects(
      [overlay(["index=off", `upperdir=${SNAP}/9/fs`, `workdir=${SNAP}/9/work`])],
      /type "overlay".*option "lowerdir" is missing/,
    );
    rejects([overlay([`lowerdir=${SNAP}/1/fs`, "metacopy=on"])], /option "metacopy=on" is not supported/);
    rejects(
      [overlay([`lowerdir=${SNAP}/1/fs`, "uidmap=0:1000:65536"])],
      /option "uidmap=0:1000:65536" is not supported/,
    );
    rejects(
      [overlay([`lowerdir=${SNAP}/1/fs`, `upperdir=${SNAP}/9/fs`])],
      /option "upperdir" needs "workdir"/,
    );
    rejects(
      [overlay(["lowerdir=snapshots/1/fs"])],
      /"lowerdir=snapshots\/1\/fs" has a relative path "snapshots\/1\/fs"/,
    );
    rejects([overlay([`lowerdir=${SNAP}/1/fs::${SNAP}/2/fs`])], /has an empty directory/);
    rejects(
      [overlay([`lowerdir=${SNAP}/1/fs`, `lowerdir=${SNAP}/2/fs`])],
      /option "lowerdir" is given twice/,
    );
    rejects(
      [{ type: "bind", source: `${SNAP}/1/fs`, options: ["rbind", "idmap"] }],
      /type "bind".*option "idmap" is not supported/,
    );
  });
});
