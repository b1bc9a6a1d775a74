// Which daemon a shim call reaches: one per build (and config, and containerd). Installed builds
// all carry mtime 0 (the installer image's layers are reproducible), so the build id must tell
// them apart by where they are installed.
import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, utimes, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { buildId, DAEMON_ENTRY } from "../src/launcher/daemon-address.js";

describe("daemon build id", () => {
  let dir: string;
  const entry = (version: string) => path.join(dir, "versions", version, "shim/dist/src/bin/daemon.js");

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-build-id-"));
    for (const v of ["0.1.0+aaaaaaaaaaaa", "0.1.0+bbbbbbbbbbbb"]) {
      await mkdir(path.dirname(entry(v)), { recursive: true });
      await writeFile(entry(v), "// the same daemon code\n");
      await utimes(entry(v), 0, 0); // as unpacked from the installer image
    }
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("differs between two installed builds with the same mtime, and is stable for one", () => {
    const a = buildId(entry("0.1.0+aaaaaaaaaaaa"));
    const b = buildId(entry("0.1.0+bbbbbbbbbbbb"));
    assert.notEqual(a, b, "an upgrade's new pods get the new build's daemon");
    assert.equal(buildId(entry("0.1.0+aaaaaaaaaaaa")), a, "a build keeps its daemon");
    assert.match(a, /^[0-9a-f]{12}$/);
    assert.equal(buildId(), buildId(DAEMON_ENTRY));
  });
});
