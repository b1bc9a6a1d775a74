// The daemon's side of cloudhv-net (network/net-helper.ts) against a stand-in helper (no root):
// answers matched by id in any order, failures with their step, what is not an answer ignored,
// a helper that dies or hangs failing its requests with a reason, and started again.
import assert from "node:assert/strict";
import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { NetHelper, NetHelperError } from "../src/network/net-helper.js";

/** Answers by op: see each test. Every start is counted in `starts` (next to the script). */
const STAND_IN = `#!${process.execPath}
const fs = require("node:fs");
const starts = process.argv[1] + ".starts";
fs.appendFileSync(starts, "x");
let held;
require("node:readline").createInterface({ input: process.stdin }).on("line", (line) => {
  const req = JSON.parse(line);
  const say = (a) => process.stdout.write(JSON.stringify({ id: req.id, ...a }) + "\\n");
  switch (req.op) {
    case "echo": return say({ ok: true, got: req.value });
    case "fail": return say({ ok: false, step: "tc", index: 3, error: "File exists" });
    case "garbage": process.stdout.write("not json\\n{\\"id\\":\\"x\\"}\\n"); return say({ ok: true });
    case "hold": held = say; return;
    case "release": held({ ok: true, got: "held" }); return say({ ok: true, got: "released" });
    case "die": process.stderr.write("netlink: out of luck\\n"); process.exit(3);
    case "silent": return;
  }
});
`;

describe("the pod network helper's client", () => {
  let dir = "";
  let script = "";
  const starts = async () => (await import("node:fs")).readFileSync(`${script}.starts`, "utf8").length;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-net-helper-"));
    script = path.join(dir, "cloudhv-net");
    await writeFile(script, STAND_IN);
    await chmod(script, 0o755);
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it("matches answers to requests by id, in whatever order they come", async () => {
    const helper = new NetHelper(script);
    try {
      const held = helper.request("hold", {});
      const released = await helper.request("release", {});
      assert.equal(released.got, "released");
      assert.equal((await held).got, "held");
      assert.deepEqual((await helper.request("echo", { value: [1, "two"] })).got, [1, "two"]);
    } finally {
      helper.close();
    }
  });

  it("a failure names its step and tc operation", async () => {
    const helper = new NetHelper(script);
    try {
      const err = await helper.request("fail", {}).catch((e: unknown) => e);
      assert.ok(err instanceof NetHelperError);
      assert.equal(err.step, "tc");
      assert.equal(err.index, 3);
      assert.equal(err.message, "File exists");
    } finally {
      helper.close();
    }
  });

  it("ignores lines that are not answers", async () => {
    const helper = new NetHelper(script);
    try {
      assert.equal((await helper.request("garbage", {})).ok, true);
    } finally {
      helper.close();
    }
  });

  it("a helper that dies fails what it had in flight with its stderr, and the next request starts another", async () => {
    const helper = new NetHelper(script);
    try {
      const before = await starts();
      const pending = helper.request("silent", {});
      await assert.rejects(
        helper.request("die", {}),
        /cloudhv-net \(.*\) exited \(3\): netlink: out of luck/,
      );
      await assert.rejects(pending, /exited \(3\)/);
      assert.equal((await helper.request("echo", { value: 1 })).got, 1);
      assert.equal(await starts(), before + 2, "started by the first request, once more after the death");
    } finally {
      helper.close();
    }
  });

  it("a helper that does not answer fails the request in time", async () => {
    const helper = new NetHelper(script, 200);
    try {
      await assert.rejects(helper.request("silent", {}), /did not answer silent within 200 ms/);
    } finally {
      helper.close();
    }
  });

  it("a helper that is not there fails every request with the path", async () => {
    const helper = new NetHelper(path.join(dir, "missing"));
    await assert.rejects(helper.request("echo", {}), /cloudhv-net \(.*missing\) could not run: .*ENOENT/);
  });
});
