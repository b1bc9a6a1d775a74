import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseShimFlags } from "../src/launcher/flags.js";

describe("shim flags (Go flag syntax, as containerd passes them)", () => {
  it("parses containerd's start invocation", () => {
    const inv = parseShimFlags([
      "-namespace",
      "k8s.io",
      "-address",
      "/run/containerd/containerd.sock",
      "-publish-binary",
      "/usr/bin/containerd",
      "-id",
      "abc",
      "-debug",
      "start",
    ]);
    assert.equal(inv.namespace, "k8s.io");
    assert.equal(inv.address, "/run/containerd/containerd.sock");
    assert.equal(inv.publishBinary, "/usr/bin/containerd");
    assert.equal(inv.id, "abc");
    assert.equal(inv.debug, true);
    assert.equal(inv.action, "start");
  });

  it("accepts --flag=value and -bundle for delete", () => {
    const inv = parseShimFlags(["--namespace=default", "-id=x", "-bundle", "/b", "delete"]);
    assert.deepEqual([inv.namespace, inv.id, inv.bundle, inv.action], ["default", "x", "/b", "delete"]);
  });

  it("rejects unknown flags, missing values and a second action", () => {
    assert.throws(() => parseShimFlags(["-nope", "start"]), /unknown flag "-nope"/);
    assert.throws(() => parseShimFlags(["-id"]), /flag "-id" needs a value/);
    assert.throws(() => parseShimFlags(["start", "delete"]), /unexpected argument "delete"/);
  });
});
