// How ContainerVolumes.plan turns a spec's read-only bind mounts into shared volumes (no root,
// no VM): read-only at the top only by default, with a bind of its own in the spec for each
// read-write host mount below the volume; recursive with `rro` or the runtime config's
// recursive_read_only_volumes (nothing below shared, plain `ro` in the guest); propagation.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { log } from "../src/util/log.js";
import { GUEST_SHARED } from "../src/volumes/virtiofs.js";
import { ContainerVolumes } from "../src/volumes/volumes.js";

interface Mount {
  destination: string;
  type?: string;
  source?: string;
  options?: string[];
}

/** "/" always has read-write mounts below it here (/proc, /dev): a volume that has some. */
function rootVolume(options: string[]): { mounts: Mount[] } {
  return {
    mounts: [
      { destination: "/host", type: "bind", source: "/", options },
      { destination: "/after", type: "bind", source: "/proc", options: ["rbind", "rw"] },
    ],
  };
}

describe("ContainerVolumes.plan: read-only shared volumes", () => {
  it("read-only at the top only: each read-write host mount below gets a read-write bind of its own, right after the volume", async () => {
    const spec = rootVolume(["rbind", "rprivate", "ro"]);
    const volumes = await ContainerVolumes.plan(spec, "c1", "pod", log);
    const [volume] = volumes.shared;
    assert.equal(volume?.readOnly, true);
    assert.equal(volume?.recursiveReadOnly, false);
    assert.equal(volume?.propagation, "private");
    const added = spec.mounts.slice(1, -1);
    assert.ok(added.length > 0 && added.length <= 32, `binds for the mounts below: ${added.length}`);
    const proc = added.find((m) => m.destination === "/host/proc");
    assert.deepEqual(proc, {
      destination: "/host/proc",
      type: "bind",
      source: `${GUEST_SHARED}/c1-0/proc`,
      options: ["rbind", "rw", "rprivate"],
    });
    for (const m of added)
      assert.ok(m.destination.startsWith("/host/") && m.source?.startsWith(`${GUEST_SHARED}/c1-0/`));
    assert.equal(spec.mounts.at(-1)?.destination, "/after", "the spec's own next mount stays after them");
  });

  it("rro: recursive, nothing added, a plain ro bind in the guest", async () => {
    const spec = rootVolume(["rbind", "rro"]);
    const volumes = await ContainerVolumes.plan(spec, "c2", "pod", log);
    assert.equal(volumes.shared[0]?.readOnly, true);
    assert.equal(volumes.shared[0]?.recursiveReadOnly, true);
    assert.deepEqual(spec.mounts[0]?.options, ["rbind", "ro"]);
    assert.deepEqual(
      spec.mounts.map((m) => m.destination),
      ["/host", "/after"],
    );
  });

  it("recursive_read_only_volumes makes every read-only volume recursive; read-write ones are untouched; rslave asks for the host's later mounts", async () => {
    const spec = rootVolume(["rbind", "rslave", "ro"]);
    const volumes = await ContainerVolumes.plan(spec, "c3", "pod", log, true);
    assert.equal(volumes.shared[0]?.recursiveReadOnly, true);
    assert.equal(volumes.shared[0]?.propagation, "slave");
    assert.deepEqual(
      spec.mounts.map((m) => m.destination),
      ["/host", "/after"],
    );
    assert.equal(volumes.shared[1]?.readOnly, false);
    assert.equal(volumes.shared[1]?.recursiveReadOnly, false);
  });
});
