// Level 4 (CRI), dual-stack: a CNI bridge with an IPv4 and an IPv6 range; the pod's VM gets
// both addresses and both default routes on its eth0, is reachable over IPv6 from the host,
// reaches the bridge's IPv6 gateway, and cannot send from an IPv6 address that is not its own.
import assert from "node:assert/strict";
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { CriClient, PodSandboxConfig } from "../src/cri/client.js";
import { watchFrames } from "../src/frame-watch.js";
import { HANDLER, type Harness, startHarness } from "../src/harness.js";
import { hypervisorSuites } from "../src/hypervisors.js";
import { podVmIds, readyPoolVms, settled, vmmsLeft } from "../src/leaks.js";

const IMAGE = "docker.io/cloudhv-test/busybox:dual";

/** The guest's IPv6 addresses on eth0, from /proc/net/if_inet6 (32 hex digits each). */
function inet6Of(procNetIfInet6: string, dev: string): string[] {
  return procNetIfInet6
    .split("\n")
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f[5] === dev && f[0]?.length === 32)
    .map((f) => (f[0]?.match(/.{4}/g) ?? []).join(":"));
}

/** The 8 full groups of an IPv6 address, as /proc/net/if_inet6 spells it. */
function expand6(address: string): string {
  const [head = "", tail = ""] = address.split("::");
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const all = [...h, ...Array<string>(8 - h.length - t.length).fill("0"), ...t];
  return all.map((g) => g.padStart(4, "0")).join(":");
}

for (const hv of await hypervisorSuites())
  describe(`a dual-stack pod through CRI with the cloudhv handler on ${hv.name}`, {
    skip: hv.skip ?? false,
  }, () => {
    let harness: Harness;
    let cri: CriClient;

    before(async () => {
      harness = await startHarness({ images: [IMAGE], runtimeConfig: hv.runtimeConfig, dualStack: true });
      cri = harness.cri;
    });

    after(async () => {
      await harness?.stop();
    });

    it("gives the guest's eth0 the pod's IPv4 and IPv6 addresses and routes: the host reaches it over IPv6, it reaches the IPv6 gateway, a forged IPv6 source reaches nobody", async (t) => {
      const gateway6 = harness.gateway6 ?? "";
      assert.match(gateway6, /^fd00:/);
      const logDirectory = path.join(harness.dir, "pods", "dual");
      await mkdir(logDirectory, { recursive: true });
      const sandboxConfig: PodSandboxConfig = {
        metadata: { name: "dual", uid: "uid-dual", namespace: "default" },
        hostname: "dual",
        logDirectory,
      };
      // With the warm pool on (CLOUDHV_E2E_POOL), the pod takes a pool VM (its NIC from the VM's
      // boot, given the pod's MAC): a first pod starts the daemon, whose pool then fills.
      const pooled = Number(hv.runtimeConfig.pool ?? 0) > 0;
      if (pooled) {
        const warmUp = await cri.runPodSandbox(
          { ...sandboxConfig, metadata: { name: "warm-up", uid: "uid-warm-up", namespace: "default" } },
          HANDLER,
        );
        await cri.stopPodSandbox(warmUp);
        await cri.removePodSandbox(warmUp);
        const until = Date.now() + 180_000;
        while ((await readyPoolVms(harness.runtime.stateDir)).dirs.length === 0 && Date.now() < until)
          await new Promise((r) => setTimeout(r, 200));
      }
      const podId = await cri.runPodSandbox(sandboxConfig, HANDLER);
      const vmIds = await podVmIds(harness.runtime.stateDir, [podId]);
      t.diagnostic(`the pod's VM: ${vmIds.join(" ")}`);
      if (pooled) assert.match(vmIds[0] ?? "", /^pool-/, "with the pool on, the pod took a pool VM");
      const status = (await cri.podSandboxStatus(podId)) as unknown as {
        network: { ip: string; additionalIps?: Array<{ ip: string }> };
      };
      const ip4 = status.network.ip;
      const ip6 =
        [status.network.ip, ...(status.network.additionalIps ?? []).map((a) => a.ip)].find((a) =>
          a.includes(":"),
        ) ?? "";
      assert.match(ip4, /^10\.88\./);
      assert.ok(
        ip6?.startsWith("fd00:88:"),
        `CNI gave the pod an IPv6 address: ${JSON.stringify(status.network)}`,
      );
      const id = await cri.createContainer(
        podId,
        {
          metadata: { name: "web" },
          image: { image: IMAGE },
          command: ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"],
          logPath: "web.log",
          linux: { securityContext: { capabilities: { addCapabilities: ["NET_ADMIN", "NET_RAW"] } } },
        },
        sandboxConfig,
      );
      await cri.startContainer(id);
      const sh = (script: string) => cri.execSync(id, ["/bin/sh", "-c", script], 60);

      // Both families on the guest's eth0, and both default routes.
      const inet6 = inet6Of((await sh("cat /proc/net/if_inet6")).stdout, "eth0");
      assert.ok(inet6.includes(expand6(ip6)), `guest eth0 has ${ip6}: ${inet6.join(" ")}`);
      const inet4 = (await sh("ip -4 addr show dev eth0")).stdout;
      assert.match(inet4, new RegExp(`inet ${ip4.replaceAll(".", "\\.")}/24`));
      const routes6 = (await sh("ip -6 route show")).stdout;
      assert.match(routes6, new RegExp(`default via ${gateway6}`), routes6);

      // Host → pod over IPv6: an HTTP GET to the pod's IPv6 address, served in the microVM.
      let body = "";
      const deadline = Date.now() + 30_000;
      while (Date.now() < deadline) {
        try {
          body = await (
            await fetch(`http://[${ip6}]:8080/cloudhv-image`, { signal: AbortSignal.timeout(3000) })
          ).text();
          break;
        } catch {
          await new Promise((r) => setTimeout(r, 300));
        }
      }
      assert.equal(body.trim(), IMAGE);

      // Pod → IPv6 gateway, and a forged IPv6 source (an address of the range no pod has).
      const mac = (await sh("cat /sys/class/net/eth0/address")).stdout.trim();
      const forged6 = `${gateway6.replace(/1$/, "")}fa`;
      const watch = await watchFrames(harness.bridge, { macs: [mac], ips: [ip6, forged6] });
      let seen: Record<string, number> = {};
      try {
        const real = await sh(`ping -6 -c 2 -W 3 ${gateway6}`);
        assert.equal(real.exitCode, 0, real.stdout + real.stderr);
        // No DAD on eth0 (the agent turned it off): the address is usable at once.
        const added = await sh(`ip -6 addr add ${forged6}/128 dev eth0`);
        assert.equal(added.exitCode, 0, `the forger can add an address: ${added.stderr}`);
        const forge = await sh(`ping -6 -c 3 -W 1 -I ${forged6} ${gateway6}`);
        t.diagnostic(`forged ping: exit ${forge.exitCode}: ${forge.stdout} ${forge.stderr}`);
        assert.doesNotMatch(forge.stderr, /Operation not permitted|not found|invalid|bind/i, forge.stderr);
        assert.notEqual(forge.exitCode, 0, `the forged source got an answer: ${forge.stdout}`);
        await sh(`ip -6 addr del ${forged6}/128 dev eth0`);
      } finally {
        seen = await watch.stop();
      }
      t.diagnostic(`frames on the bridge by source: ${JSON.stringify(seen)}`);
      assert.ok((seen[ip6] ?? 0) > 0, `the pod's own IPv6 frames reach the bridge: ${JSON.stringify(seen)}`);
      assert.equal(seen[forged6], 0, `frames from the forged IPv6 source: ${JSON.stringify(seen)}`);

      await cri.stopContainer(id, 2);
      await cri.removeContainer(id);
      await cri.stopPodSandbox(podId);
      await cri.removePodSandbox(podId);
      assert.deepEqual(await settled(() => vmmsLeft(harness.runtime.stateDir, vmIds)), []);
    });
  });
