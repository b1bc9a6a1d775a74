// The wire types in src/generated/proto-types.ts are generated from shim/proto; a .proto edit
// without a regenerated file would let the TypeScript build check against stale shapes.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { PROTO_FILE_OF } from "../src/generated/proto-types.js";
import { messageCodec, type ProtoName } from "../src/ttrpc/proto.js";

/** shim/scripts, from this file in dist/test/. */
const GENERATOR = fileURLToPath(new URL("../../scripts/gen-proto-types.mjs", import.meta.url));

describe("generated proto types", () => {
  it("match shim/proto (gen-proto-types.mjs --check)", () => {
    const run = spawnSync(process.execPath, [GENERATOR, "--check"], { encoding: "utf8" });
    assert.equal(run.status, 0, `${run.stderr}(regenerate with: npm run gen:proto)`);
  });

  it("name a loadable message in its .proto file for every entry", () => {
    const names = Object.keys(PROTO_FILE_OF) as ProtoName[];
    assert.ok(names.includes("cloudhv.agent.v1.VersionResponse"));
    for (const name of names) {
      const codec = messageCodec(name);
      // An empty message decodes to the generated shape with every field at its default.
      assert.equal(typeof codec.decode(codec.encode({})), "object", name);
    }
  });
});
