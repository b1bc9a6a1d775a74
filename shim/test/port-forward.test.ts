// Port-forward's host half against a real network namespace and the real cloudhv-portfwd
// (built by guest/agent/build.sh), with a stand-in for the guest agent: a connection to any
// port on the netns's 127.0.0.1 reaches the daemon with the port asked for, steered by the
// helper's sk_lookup program or, where that is off, the nat rule the daemon adds; stopping
// leaves neither behind.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import type { AgentClient } from "../src/agent/client.js";
import { PodPortForward } from "../src/network/port-forward.js";
import { exec, execOk } from "../src/util/exec.js";
import { log } from "../src/util/log.js";

const HELPER = fileURLToPath(new URL("../../../build/host/cloudhv-portfwd", import.meta.url));
const skip =
  process.getuid?.() !== 0
    ? "needs root (network namespaces)"
    : existsSync(HELPER)
      ? false
      : "build/host/cloudhv-portfwd is not built (guest/agent/build.sh)";
const NS = `chv-pf-${process.pid}`;
const NETNS = `/var/run/netns/${NS}`;

/** A guest agent that refuses every connection, noting the port each one asked for. */
function refusingAgent(asked: number[]): AgentClient {
  return {
    portForwardOpen: async (port: number) => {
      asked.push(port);
      throw new Error("refused by the stand-in");
    },
  } as unknown as AgentClient;
}

/** Connects to 127.0.0.1:port in the netns; resolves once the connection ended. */
const dial = (port: number) =>
  exec(["ip", "netns", "exec", NS, "bash", "-c", `exec 3<>/dev/tcp/127.0.0.1/${port}; cat <&3`], {
    timeoutMs: 10_000,
  });

const natRules = async () =>
  (await execOk(["ip", "netns", "exec", NS, "iptables", "-t", "nat", "-S", "OUTPUT"])).stdout;

describe("port-forward: the helper in the pod's netns", { skip }, () => {
  let dir = "";

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-pf-"));
    await execOk(["ip", "netns", "add", NS]);
    await execOk(["ip", "-n", NS, "link", "set", "lo", "up"]);
  });
  after(async () => {
    await exec(["ip", "netns", "del", NS]);
    await rm(dir, { recursive: true, force: true });
  });

  for (const mode of ["sk_lookup", "nat"] as const)
    it(`${mode === "nat" ? "without sk_lookup, by the daemon's nat rule" : "steered by its sk_lookup program"}: any port reaches the daemon with the port asked for; nothing is left`, async () => {
      let binary = HELPER;
      if (mode === "nat") {
        // As on a kernel without sk_lookup: the helper is told not to try.
        binary = path.join(dir, "portfwd-nat");
        await writeFile(binary, `#!/bin/sh\nexec ${HELPER} "$@" --no-sk-lookup\n`);
        await chmod(binary, 0o755);
      }
      const asked: number[] = [];
      const forward = await PodPortForward.start({
        binary,
        dir: path.join(dir, mode),
        netnsPath: NETNS,
        agent: refusingAgent(asked),
        log,
      });
      try {
        await dial(8080);
        await dial(9);
        assert.deepEqual(asked, [8080, 9]);
        if (mode === "nat") assert.match(await natRules(), /REDIRECT --to-ports 1023/);
        else assert.doesNotMatch(await natRules(), /REDIRECT/);
      } finally {
        await forward.stop();
      }
      assert.doesNotMatch(await natRules(), /REDIRECT/, "no nat rule left");
      assert.notEqual((await dial(8080)).code, 0, "refused: nothing listens or steers there now");
      assert.deepEqual(asked, [8080, 9]);
    });
});
