// Host side of pod networking against real network namespaces, veths and TAPs, through the real
// helper (cloudhv-net, built by guest/agent/build.sh), read back with iproute2 and tc: the netns
// is set up the way CNI's bridge plugin leaves it.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { antiSpoofFilters, linkLocalFromMac, redirectAll, tcLine } from "../src/network/anti-spoof.js";
import { NetHelper } from "../src/network/net-helper.js";
import { holdNetns } from "../src/network/netns-hold.js";
import {
  attachBootNic,
  attachPodNetwork,
  attachWarmNic,
  readPodInterface,
} from "../src/network/pod-network.js";
import { POOL_BOOT_NIC } from "../src/pod/pool.js";
import { exec, execOk } from "../src/util/exec.js";
import { confinedArgv } from "../src/vmm/confine.js";
import {
  arp,
  ether,
  type Frame,
  hopByHop,
  icmp6,
  ipv6,
  marker,
  sendThroughTap,
  udp4,
} from "./support/tap-frames.js";

const HELPER = fileURLToPath(new URL("../../../build/host/cloudhv-net", import.meta.url));
const helper = new NetHelper(HELPER);
const skip = existsSync(HELPER) ? false : "build/host/cloudhv-net is not built (guest/agent/build.sh)";
after(() => helper.close());

const NS = `chv-pn-${process.pid}`;
const NETNS = `/var/run/netns/${NS}`;
const HOST_VETH = `chvpn${process.pid % 100000}`;

/** An action's index is the kernel's to pick (the lowest free once the last pod's are freed). */
const actionIndexes = (tcShow: string) => tcShow.replace(/index \d+ ref \d+ bind \d+/g, "index N");
const inNs = async (...argv: string[]) => (await execOk(["ip", "netns", "exec", NS, ...argv])).stdout;

describe("pod network: TAP + tc redirect in the pod's netns", { skip }, () => {
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
    const iface = await readPodInterface(helper, NETNS);
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
    const net = await attachPodNetwork(helper, NETNS);
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

  it("a redirect that cannot be set up fails the attach, names the operation, removes the TAP and keeps what was not ours", async () => {
    // Someone else's ingress qdisc on the veth: ours cannot be added.
    await inNs("tc", "qdisc", "add", "dev", "eth0", "ingress");
    try {
      await assert.rejects(
        attachPodNetwork(helper, NETNS),
        /tc operation 1 \(qdisc add dev eth0 ingress\) failed: .*File exists/,
      );
      assert.doesNotMatch(await inNs("ip", "link"), /tap0_chv/, "the TAP is gone");
      assert.match(await inNs("tc", "qdisc", "show", "dev", "eth0"), /ingress/, "their qdisc stays");
    } finally {
      await inNs("tc", "qdisc", "del", "dev", "eth0", "ingress");
    }
  });

  it("a TAP that cannot take the veth's MTU fails the attach last, leaving no TAP and no qdisc", async () => {
    // 65535 suits a veth; a TAP's largest is 65521: the last step fails, after the filters.
    await inNs("ip", "link", "set", "eth0", "mtu", "65535");
    try {
      await assert.rejects(
        attachPodNetwork(helper, NETNS),
        /the TAP's MTU and up failed: tap0_chv: Invalid argument/,
      );
    } finally {
      await inNs("ip", "link", "set", "eth0", "mtu", "1450");
    }
    assert.doesNotMatch(await inNs("ip", "link"), /tap0_chv/, "the TAP is gone");
    assert.doesNotMatch(
      await inNs("tc", "qdisc", "show", "dev", "eth0"),
      /ingress/,
      "the veth's qdisc is gone",
    );
  });

  it("attach and detach start no process: they work with no tool on PATH", async () => {
    const savedPath = process.env.PATH;
    process.env.PATH = "/nonexistent";
    try {
      const attached = await attachPodNetwork(helper, NETNS);
      await attached.detach();
    } finally {
      process.env.PATH = savedPath;
    }
    assert.doesNotMatch(await inNs("ip", "link"), /tap0_chv/);
    assert.doesNotMatch(await inNs("tc", "qdisc", "show", "dev", "eth0"), /ingress/);
  });

  it("the helper's filters read back as tc's own for the same keys (netlink encoding checked against tc)", async () => {
    // Dual-stack, for every kind of filter.
    await inNs("ip", "addr", "add", "fd00:99:7::2/64", "dev", "eth0", "nodad");
    const iface = await readPodInterface(helper, NETNS);
    const filters = [redirectAll("eth0", "tap0_chv"), ...antiSpoofFilters("tap0_chv", iface)];
    const twin = `${NS}-tc`;
    await execOk(["ip", "netns", "add", twin]);
    try {
      const inTwin = async (...argv: string[]) =>
        (await execOk(["ip", "netns", "exec", twin, ...argv])).stdout;
      await inTwin("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1");
      await inTwin("ip", "tuntap", "add", "dev", "tap0_chv", "mode", "tap");
      const batch = ["qdisc add dev eth0 ingress", "qdisc add dev tap0_chv ingress", ...filters.map(tcLine)];
      await execOk(["ip", "netns", "exec", twin, "tc", "-batch", "-"], { input: `${batch.join("\n")}\n` });
      const attached = await attachPodNetwork(helper, NETNS);
      try {
        for (const dev of ["eth0", "tap0_chv"]) {
          const ours = actionIndexes(await inNs("tc", "filter", "show", "dev", dev, "ingress"));
          const tcs = actionIndexes(await inTwin("tc", "filter", "show", "dev", dev, "ingress"));
          assert.equal(ours, tcs, `filters on ${dev}`);
          assert.match(ours, /match/);
        }
      } finally {
        await attached.detach();
      }
    } finally {
      await execOk(["ip", "netns", "del", twin]);
      await inNs("ip", "addr", "del", "fd00:99:7::2/64", "dev", "eth0");
    }
  });

  it("the helper checks what it is asked again: unknown ops, bad names, non-net sysctls, keys off a word are refused", async () => {
    await assert.rejects(helper.request("bogus", {}), /unknown op/);
    await assert.rejects(
      helper.request("link-del", { netns: NETNS, dev: "../eth0" }),
      /is not an interface name/,
    );
    const setup = (over: Record<string, unknown>) =>
      helper.request("setup", {
        from: NETNS,
        netns: NETNS,
        tap: "tap0_chv",
        mtu: 1450,
        create: true,
        ...over,
      });
    await assert.rejects(setup({ sysctls: ["kernel.panic=1"] }), /not a net\.\* sysctl/);
    await assert.rejects(
      setup({
        tc: [{ filter: { dev: "tap0_chv", prio: 1, protocol: 3, keys: [{ value: 0, mask: 0, at: 2 }] } }],
      }),
      /a multiple of 4/,
    );
    await helper.request("link-del", { netns: NETNS, dev: "tap0_chv" });
    assert.doesNotMatch(await inNs("ip", "link"), /tap0_chv/);
  });

  it("a helper that dies is started again by the next request", async () => {
    const pids = async () =>
      (await exec(["pgrep", "-f", "-x", HELPER])).stdout.trim().split("\n").filter(Boolean).map(Number);
    await readPodInterface(helper, NETNS);
    const [pid] = await pids();
    assert.ok(pid, "the helper runs");
    process.kill(pid, "SIGKILL");
    await new Promise((r) => setTimeout(r, 100));
    const iface = await readPodInterface(helper, NETNS);
    assert.equal(iface.name, "eth0");
    const [again] = await pids();
    assert.ok(again && again !== pid, "a new helper answered");
  });

  /** What a pod netns holds of ours: the TAP's link settings and sysctls, both devices' filters. */
  const podSide = async (tap: string) => {
    const link = JSON.parse(await inNs("ip", "-j", "link", "show", tap))[0];
    return {
      link: { mtu: link.mtu, flags: link.flags, group: link.group },
      sysctl: await inNs(
        "sysctl",
        `net.ipv4.conf.${tap}.forwarding`,
        `net.ipv4.conf.${tap}.rp_filter`,
        `net.ipv4.conf.${tap}.accept_local`,
        `net.ipv6.conf.${tap}.disable_ipv6`,
      ),
      vethFilters: actionIndexes(await inNs("tc", "filter", "show", "dev", "eth0", "ingress")),
      tapFilters: actionIndexes(await inNs("tc", "filter", "show", "dev", tap, "ingress")),
    };
  };

  /** A stand-in VMM: a process in an empty netns of its own, as a pool VM's QEMU is. */
  const fakeVmm = () => {
    const child = spawn("unshare", ["--net", "--", "sleep", "60"], { stdio: "ignore" });
    return { child, pid: child.pid as number, netns: `/proc/${child.pid}/ns/net` };
  };

  it("a pool VM's NIC: made in the VMM's netns, hot-plugged, moved; the pod netns ends as a cold attach leaves it", async () => {
    const cold = await attachPodNetwork(helper, NETNS);
    const expected = await podSide(cold.tap);
    await cold.detach();
    const vmm = fakeVmm();
    try {
      await new Promise((r) => setTimeout(r, 100));
      const plugged: Array<{ tap: string; mac: string; inVmmNetns: boolean }> = [];
      const net = await attachWarmNic(
        helper,
        {
          pid: vmm.pid,
          addNet: async (nic) => {
            const there = await exec(["nsenter", `--net=${vmm.netns}`, "--", "ip", "link", "show", nic.tap]);
            plugged.push({ tap: nic.tap, mac: nic.mac, inVmmNetns: there.code === 0 });
            return nic.id;
          },
        },
        NETNS,
      );
      const mac = JSON.parse(await inNs("ip", "-j", "link", "show", "eth0"))[0].address;
      assert.deepEqual(plugged, [{ tap: "tap0_chv", mac, inVmmNetns: true }]);
      assert.deepEqual(await podSide(net.tap), expected);
      await net.detach();
      assert.equal((await exec(["ip", "netns", "exec", NS, "ip", "link", "show", net.tap])).code, 1);
      assert.doesNotMatch(await inNs("tc", "qdisc", "show", "dev", "eth0"), /ingress/);
      assert.doesNotMatch(
        (await execOk(["nsenter", `--net=${vmm.netns}`, "--", "ip", "link"])).stdout,
        /tap0_chv/,
      );
    } finally {
      vmm.child.kill("SIGKILL");
    }
  });

  it("a pool VM's NIC from its boot: the confined VMM starts beside its TAP (VMM group) in its own netns; the claim moves it and the pod netns ends as a cold attach leaves it", async () => {
    const cold = await attachPodNetwork(helper, NETNS);
    const expected = await podSide(cold.tap);
    await cold.detach();
    // The VMM as the pool starts it (vmm/confine.ts), a shell standing in for QEMU: it lists its
    // netns' links (with the TAP's owner group) as the unprivileged uid, then waits.
    const user = { uid: 2_000_000_077, gid: 2_000_000_000 };
    const argv = confinedArgv(
      ["sh", "-c", "ip -j -d link show; echo; id -u; exec sleep 60"],
      user,
      undefined,
      { isolatedNetwork: true, isolatedTap: POOL_BOOT_NIC.tap },
    );
    const child = spawn(argv[0] as string, argv.slice(1), { stdio: ["ignore", "pipe", "inherit"] });
    let seen = "";
    child.stdout.on("data", (d: Buffer) => {
      seen += d.toString();
    });
    try {
      const until = Date.now() + 5000;
      while (!/\n\d+\n/.test(seen) && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
      const [links = "[]", uid] = seen.trim().split(/\n+/);
      const seenLinks = (
        JSON.parse(links) as Array<{
          ifname: string;
          linkinfo?: { info_data?: { type?: string; group?: number } };
        }>
      ).map((l) => [l.ifname, l.linkinfo?.info_data?.type ?? "", l.linkinfo?.info_data?.group ?? -1]);
      assert.deepEqual(seenLinks, [
        ["lo", "", -1],
        [POOL_BOOT_NIC.tap, "tap", user.gid],
      ]);
      assert.equal(uid, String(user.uid), "the VMM runs as its own uid");
      const net = await attachBootNic(helper, child.pid as number, NETNS, POOL_BOOT_NIC.tap);
      assert.deepEqual(
        await podSide(net.tap),
        expected,
        "same filters, sysctls and link as a cold pod's TAP",
      );
      assert.doesNotMatch(
        (await execOk(["nsenter", `--net=/proc/${child.pid}/ns/net`, "--", "ip", "link"])).stdout,
        /tap0_chv/,
        "the TAP left the VMM's netns",
      );
      await net.detach();
      assert.equal((await exec(["ip", "netns", "exec", NS, "ip", "link", "show", net.tap])).code, 1);
      assert.doesNotMatch(await inNs("tc", "qdisc", "show", "dev", "eth0"), /ingress/);
    } finally {
      child.kill("SIGKILL");
    }
  });

  it("a pool VM's NIC from its boot that cannot move (no CNI interface) is left in the VMM's netns, to die with it; the pod netns is untouched", async () => {
    await execOk(["ip", "netns", "add", `${NS}-bare`]);
    const vmm = fakeVmm();
    try {
      await new Promise((r) => setTimeout(r, 100));
      await execOk([
        "nsenter",
        `--net=${vmm.netns}`,
        "--",
        "ip",
        "tuntap",
        "add",
        "dev",
        "tap0_chv",
        "mode",
        "tap",
      ]);
      await assert.rejects(
        attachBootNic(helper, vmm.pid, `/var/run/netns/${NS}-bare`),
        /has no ethernet interface/,
      );
      assert.doesNotMatch((await execOk(["ip", "netns", "exec", `${NS}-bare`, "ip", "link"])).stdout, /tap/);
    } finally {
      vmm.child.kill("SIGKILL");
      await execOk(["ip", "netns", "del", `${NS}-bare`]);
    }
  });

  it("a pool VM's NIC that the VMM refuses leaves no TAP in either netns and no qdisc", async () => {
    const vmm = fakeVmm();
    try {
      await new Promise((r) => setTimeout(r, 100));
      await assert.rejects(
        attachWarmNic(
          helper,
          { pid: vmm.pid, addNet: () => Promise.reject(new Error("netdev_add refused")) },
          NETNS,
        ),
        /netdev_add refused/,
      );
      assert.doesNotMatch(
        (await execOk(["nsenter", `--net=${vmm.netns}`, "--", "ip", "link"])).stdout,
        /tap0_chv/,
      );
      assert.doesNotMatch(await inNs("ip", "link"), /tap0_chv/);
      assert.doesNotMatch(await inNs("tc", "qdisc", "show", "dev", "eth0"), /ingress/);
    } finally {
      vmm.child.kill("SIGKILL");
    }
  });

  it("detaches through a held netns after containerd removed its name and CNI's DEL took the veth: the TAP goes, no error, the netns with it", async () => {
    const ns = `${NS}-held`;
    const veth = `chvph${process.pid % 100000}`;
    await execOk(["ip", "netns", "add", ns]);
    try {
      await execOk(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns]);
      await execOk(["ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up"]);
      await execOk(["ip", "netns", "exec", ns, "ip", "addr", "add", "10.99.9.2/24", "dev", "eth0"]);
      const net = await attachPodNetwork(helper, `/var/run/netns/${ns}`);
      const held = await holdNetns(`/var/run/netns/${ns}`);
      assert.ok(held, "the netns is there to hold");
      const links = async () =>
        (await execOk(["nsenter", `--net=${held.path}`, "--", "ip", "-o", "link"])).stdout;
      try {
        // What the Pod's delete races with: CNI's DEL, then the netns's removal.
        await execOk(["ip", "link", "del", veth]);
        await execOk(["ip", "netns", "del", ns]);
        assert.match(await links(), /tap0_chv/, "the held netns still has the TAP");
        await net.detach(held.path);
        assert.doesNotMatch(await links(), /tap0_chv/, "the TAP is gone");
      } finally {
        await held.release();
      }
    } finally {
      await exec(["ip", "netns", "del", ns]);
      await exec(["ip", "link", "del", veth]);
    }
    assert.equal(
      await holdNetns(`/var/run/netns/${ns}`),
      undefined,
      "a netns whose name is gone: nothing to hold",
    );
  });

  it("fails with the netns named when there is no CNI interface, leaving nothing", async () => {
    await execOk(["ip", "netns", "add", `${NS}-empty`]);
    try {
      await assert.rejects(
        attachPodNetwork(helper, `/var/run/netns/${NS}-empty`),
        /chv-pn-\d+-empty has no ethernet interface/,
      );
      assert.doesNotMatch((await execOk(["ip", "netns", "exec", `${NS}-empty`, "ip", "link"])).stdout, /tap/);
    } finally {
      await execOk(["ip", "netns", "del", `${NS}-empty`]);
    }
  });
});

// A hostile guest writes frames into its TAP; a neighbour on the same bridge must see only the
// ones from the pod's own MAC and addresses. Worst case for the pod netns: forwarding on (as on
// a Kubernetes node, whose setting new netns inherit), rp_filter off, the neighbour resolved.
describe("pod network: the TAP lets out only the pod's own MAC and addresses", { skip }, () => {
  const POD = `chv-as-${process.pid}`;
  const BR = `chv-asb-${process.pid}`;
  const NB = `chv-asn-${process.pid}`;
  const POD_IP = "10.99.8.2";
  const NB_IP = "10.99.8.3";
  const POD_IP6 = "fd00:99:8::2";
  const NB_IP6 = "fd00:99:8::3";
  const FORGED_MAC = "02:66:66:66:66:66";
  const BCAST = "ff:ff:ff:ff:ff:ff";
  const ALL_NODES = "33:33:00:00:00:01";
  let podMac = "";
  let net: Awaited<ReturnType<typeof attachPodNetwork>> | undefined;
  const ip = (ns: string, ...argv: string[]) => execOk(["ip", "-n", ns, ...argv]);

  before(async () => {
    for (const ns of [POD, BR, NB]) await execOk(["ip", "netns", "add", ns]);
    await ip(POD, "link", "add", "eth0", "type", "veth", "peer", "name", "brp", "netns", BR);
    await ip(NB, "link", "add", "eth0", "type", "veth", "peer", "name", "brn", "netns", BR);
    await ip(BR, "link", "add", "br0", "type", "bridge");
    for (const dev of ["brp", "brn"]) await ip(BR, "link", "set", dev, "master", "br0", "up");
    await ip(BR, "link", "set", "br0", "up");
    for (const [ns, v4, v6] of [
      [POD, POD_IP, POD_IP6],
      [NB, NB_IP, NB_IP6],
    ] as const) {
      await ip(ns, "addr", "add", `${v4}/24`, "dev", "eth0");
      await ip(ns, "addr", "add", `${v6}/64`, "dev", "eth0", "nodad");
      await ip(ns, "link", "set", "eth0", "up");
    }
    await execOk([
      "ip",
      "netns",
      "exec",
      POD,
      "sysctl",
      "-q",
      "-w",
      "net.ipv4.ip_forward=1",
      "net.ipv4.conf.all.rp_filter=0",
      "net.ipv4.conf.default.rp_filter=0",
    ]);
    podMac = JSON.parse((await ip(POD, "-j", "link", "show", "eth0")).stdout)[0].address;
    // A neighbour entry the pod netns already has (CNI's, or static): routing out of it needs
    // no ARP, whose replies the veth's redirect would hand to the guest.
    const nbMac = JSON.parse((await ip(NB, "-j", "link", "show", "eth0")).stdout)[0].address;
    await ip(POD, "neigh", "add", NB_IP, "lladdr", nbMac, "dev", "eth0", "nud", "permanent");
  });

  after(async () => {
    await net?.detach();
    for (const ns of [POD, BR, NB]) await exec(["ip", "netns", "del", ns]);
  });

  it("forged MAC, IP, ARP sender, VLAN tag, ND target, RA: none reaches the neighbour; the pod's own frames do", async () => {
    net = await attachPodNetwork(helper, `/var/run/netns/${POD}`);
    const podLL = linkLocalFromMac(podMac);
    const tapMac = JSON.parse((await ip(POD, "-j", "link", "show", net.tap)).stdout)[0].address as string;
    const m = marker;
    const frames: Frame[] = [
      // Allowed: must arrive (else the test proves nothing).
      { name: "ok-udp4", bytes: ether(BCAST, podMac, 0x0800, udp4(POD_IP, NB_IP, m("ok-udp4"))) },
      { name: "ok-arp", bytes: ether(BCAST, podMac, 0x0806, arp(podMac, POD_IP, NB_IP, m("ok-arp"))) },
      { name: "ok-ip6", bytes: ether(ALL_NODES, podMac, 0x86dd, ipv6(POD_IP6, "ff02::1", 59, m("ok-ip6"))) },
      {
        name: "ok-na-ll",
        bytes: ether(ALL_NODES, podMac, 0x86dd, ipv6(podLL, "ff02::1", 58, icmp6(136, podLL, m("ok-na-ll")))),
      },
      // Forged: must not.
      { name: "mac4", bytes: ether(BCAST, FORGED_MAC, 0x0800, udp4(POD_IP, NB_IP, m("mac4"))) },
      { name: "ip4", bytes: ether(BCAST, podMac, 0x0800, udp4("10.99.8.77", NB_IP, m("ip4"))) },
      { name: "arp-sha", bytes: ether(BCAST, podMac, 0x0806, arp(FORGED_MAC, POD_IP, NB_IP, m("arp-sha"))) },
      { name: "arp-spa", bytes: ether(BCAST, podMac, 0x0806, arp(podMac, "10.99.8.1", NB_IP, m("arp-spa"))) },
      { name: "arp-eth", bytes: ether(BCAST, FORGED_MAC, 0x0806, arp(podMac, POD_IP, NB_IP, m("arp-eth"))) },
      { name: "vlan", bytes: ether(BCAST, podMac, 0x0800, udp4(POD_IP, NB_IP, m("vlan")), 7) },
      { name: "ethertype", bytes: ether(BCAST, podMac, 0x88b5, m("ethertype")) },
      // To the TAP's own MAC, for the pod netns to route: it must not.
      { name: "routed", bytes: ether(tapMac, podMac, 0x0800, udp4("10.99.8.77", NB_IP, m("routed"))) },
      {
        name: "ip6",
        bytes: ether(ALL_NODES, podMac, 0x86dd, ipv6("fd00:99:8::77", "ff02::1", 59, m("ip6"))),
      },
      { name: "mac6", bytes: ether(ALL_NODES, FORGED_MAC, 0x86dd, ipv6(POD_IP6, "ff02::1", 59, m("mac6"))) },
      {
        name: "na-target",
        bytes: ether(
          ALL_NODES,
          podMac,
          0x86dd,
          ipv6(POD_IP6, "ff02::1", 58, icmp6(136, NB_IP6, m("na-target"))),
        ),
      },
      {
        name: "na-hbh",
        bytes: ether(
          ALL_NODES,
          podMac,
          0x86dd,
          ipv6(POD_IP6, "ff02::1", 0, hopByHop(58, icmp6(136, NB_IP6, m("na-hbh")))),
        ),
      },
      {
        name: "ra",
        bytes: ether(ALL_NODES, podMac, 0x86dd, ipv6(podLL, "ff02::1", 58, icmp6(134, "::", m("ra")))),
      },
    ];
    const seen = await sendThroughTap({
      tapNetns: `/var/run/netns/${POD}`,
      tap: net.tap,
      watchNetns: `/var/run/netns/${NB}`,
      watchIface: "eth0",
      frames,
    });
    assert.deepEqual(seen, ["ok-arp", "ok-ip6", "ok-na-ll", "ok-udp4"]);
  });

  it("the rules go with the TAP", async () => {
    assert.ok(net);
    await net.detach();
    const left = (await exec(["ip", "netns", "exec", POD, "tc", "filter", "show", "dev", net.tap, "ingress"]))
      .code;
    assert.notEqual(left, 0, "the TAP and its filters are gone");
    assert.doesNotMatch((await ip(POD, "link")).stdout, /tap0_chv/);
  });
});
