// Host side of pod networking against real network namespaces, veths and TAPs (iproute2, tc):
// the netns is set up the way CNI's bridge plugin leaves it.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { attachPodNetwork, readPodInterface } from "../src/network/pod-network.js";
import { exec, execOk } from "../src/util/exec.js";

const NS = `chv-pn-${process.pid}`;
const NETNS = `/var/run/netns/${NS}`;
const HOST_VETH = `chvpn${process.pid % 100000}`;

const inNs = async (...argv: string[]) => (await execOk(["ip", "netns", "exec", NS, ...argv])).stdout;

describe("pod network: TAP + tc redirect in the pod's netns", () => {
  before(async () => {
    await execOk(["ip", "netns", "add", NS]);
    await execOk(["ip", "link", "add", HOST_VETH, "type", "veth", "peer", "name", "eth0", "netns", NS]);
    await inNs("ip", "link", "set", "eth0", "mtu", "1450", "up");
    await inNs("ip", "addr", "add", "10.99.7.2/24", "dev", "eth0");
    await inNs("ip", "route", "add", "default", "via", "10.99.7.1");
    await inNs("ip", "route", "add", "192.168.50.0/24", "dev", "eth0");
  });

  after(async () => {
    await exec(["ip", "netns", "del", NS]);
    await exec(["ip", "link", "del", HOST_VETH]);
  });

  it("reads the CNI interface: MAC, MTU, addresses and routes", async () => {
    const iface = await readPodInterface(NETNS);
    const mac = JSON.parse(await inNs("ip", "-j", "link", "show", "eth0"))[0].address;
    assert.equal(iface.name, "eth0");
    assert.equal(iface.mac, mac);
    assert.equal(iface.mtu, 1450);
    assert.deepEqual(iface.addresses, [{ family: "inet", address: "10.99.7.2", prefixLen: 24 }]);
    assert.deepEqual(iface.routes.map((r) => [r.dest, r.gateway ?? ""]).sort(), [
      ["10.99.7.0/24", ""],
      ["192.168.50.0/24", ""],
      ["default", "10.99.7.1"],
    ]);
  });

  it("adds a TAP with the veth's MTU and redirects both ways, then removes exactly that", async () => {
    const net = await attachPodNetwork(NETNS);
    const tap = JSON.parse(await inNs("ip", "-j", "link", "show", net.tap))[0];
    assert.equal(tap.mtu, 1450);
    assert.ok(tap.flags.includes("UP"));
    for (const [dev, to] of [
      ["eth0", net.tap],
      [net.tap, "eth0"],
    ]) {
      const filters = await inNs("tc", "filter", "show", "dev", dev as string, "ingress");
      assert.match(filters, new RegExp(`mirred \\(Egress Redirect to device ${to}\\)`));
    }
    await net.detach();
    assert.equal((await exec(["ip", "netns", "exec", NS, "ip", "link", "show", net.tap])).code, 1);
    assert.doesNotMatch(await inNs("tc", "qdisc", "show", "dev", "eth0"), /ingress/);
    // The veth and its address are CNI's: untouched.
    assert.match(await inNs("ip", "addr", "show", "eth0"), /10\.99\.7\.2\/24/);
  });

  it("a redirect that cannot be set up fails the attach, removes the TAP and keeps what was not ours", async () => {
    // Someone else's ingress qdisc on the veth: ours cannot be added.
    await inNs("tc", "qdisc", "add", "dev", "eth0", "ingress");
    try {
      await assert.rejects(attachPodNetwork(NETNS), /tc -batch - exited with 1: .*Command failed -:1/s);
      assert.doesNotMatch(await inNs("ip", "link"), /tap0_chv/, "the TAP is gone");
      assert.match(await inNs("tc", "qdisc", "show", "dev", "eth0"), /ingress/, "their qdisc stays");
    } finally {
      await inNs("tc", "qdisc", "del", "dev", "eth0", "ingress");
    }
  });

  it("fails with the netns named when there is no CNI interface, leaving nothing", async () => {
    await execOk(["ip", "netns", "add", `${NS}-empty`]);
    try {
      await assert.rejects(
        attachPodNetwork(`/var/run/netns/${NS}-empty`),
        /chv-pn-\d+-empty has no ethernet interface/,
      );
      assert.doesNotMatch((await execOk(["ip", "netns", "exec", `${NS}-empty`, "ip", "link"])).stdout, /tap/);
    } finally {
      await execOk(["ip", "netns", "del", `${NS}-empty`]);
    }
  });
});
