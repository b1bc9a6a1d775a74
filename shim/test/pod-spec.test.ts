// The CRI sandbox checks on the OCI spec (pod/spec.ts): which host namespaces a pod asks for.
import assert from "node:assert/strict";
import { statSync } from "node:fs";
import { describe, it } from "node:test";
import { hostNamespacesAsked, isHostNamespace, type OciSpec } from "../src/pod/spec.js";

const sandbox = (namespaces: Array<{ type: string; path?: string }>): OciSpec => ({ linux: { namespaces } });
const POD = [
  { type: "pid" },
  { type: "ipc" },
  { type: "uts" },
  { type: "mount" },
  { type: "network", path: "/var/run/netns/cni-1234" },
];
const asked = (spec: OciSpec, isHost = (_t: string, _p: string) => false) =>
  hostNamespacesAsked(spec, isHost).map((a) => a.setting);

describe("host namespaces a CRI sandbox asks for", () => {
  it("none for a pod as containerd 1.6 writes it (CNI netns path, new pid and ipc)", () => {
    assert.deepEqual(asked(sandbox(POD)), []);
  });

  it("each namespace containerd leaves out names its Kubernetes setting", () => {
    const without = (type: string) => sandbox(POD.filter((n) => n.type !== type));
    assert.deepEqual(asked(without("network")), ["hostNetwork"]);
    assert.deepEqual(asked(without("pid")), ["hostPID"]);
    assert.deepEqual(asked(without("ipc")), ["hostIPC"]);
    assert.deepEqual(asked(without("uts")), [], "UTS alone is not a host setting");
    assert.deepEqual(asked(sandbox([{ type: "mount" }])), ["hostNetwork", "hostPID", "hostIPC"]);
    assert.deepEqual(asked({}), ["hostNetwork", "hostPID", "hostIPC"], "no linux section at all");
  });

  it("a path naming the host's own namespace counts as the host's", () => {
    const spec = sandbox([...POD.filter((n) => n.type !== "pid"), { type: "pid", path: "/proc/1/ns/pid" }]);
    assert.deepEqual(
      asked(spec, (t, p) => t === "pid" && p === "/proc/1/ns/pid"),
      ["hostPID"],
    );
  });

  it("isHostNamespace compares device and inode with PID 1's", () => {
    // PID 1's own namespace file is the host's, when we may look at it (not as every user).
    const readable = (() => {
      try {
        return statSync("/proc/1/ns/net").ino > 0;
      } catch {
        return false;
      }
    })();
    assert.equal(isHostNamespace("network", "/proc/1/ns/net"), readable);
    assert.equal(isHostNamespace("network", "/nonexistent/netns"), false);
    assert.equal(isHostNamespace("uts", "/proc/1/ns/uts"), false, "only network, pid and ipc are checked");
  });
});
