// The TAP's allow-list as u32 filters (no root): what is derived from the pod's interface.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  antiSpoofFilters,
  ipv6Bytes,
  linkLocalFromMac,
  redirectAll,
  tapSysctls,
  tcLine,
} from "../src/network/anti-spoof.js";
import type { PodInterface } from "../src/network/pod-network.js";

const iface = (addresses: PodInterface["addresses"]): PodInterface => ({
  name: "eth0",
  mac: "0a:58:0a:f4:01:05",
  mtu: 1500,
  addresses,
  routes: [],
});

describe("anti-spoof filters", () => {
  it("derives the link-local a Linux guest makes from the MAC (modified EUI-64)", () => {
    assert.equal(linkLocalFromMac("0a:58:0a:f4:01:05"), "fe80::858:aff:fef4:105");
    assert.equal(linkLocalFromMac("00:00:00:00:00:00"), "fe80::200:ff:fe00:0");
  });

  it("reads IPv6 addresses as 16 bytes and refuses what is not one", () => {
    assert.deepEqual(ipv6Bytes("fd00::1:2"), [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2]);
    assert.deepEqual(ipv6Bytes("1:2:3:4:5:6:7:8").slice(-2), [0, 8]);
    assert.throws(() => ipv6Bytes("::ffff:10.0.0.1"), /not an IPv6 address/);
    assert.throws(() => ipv6Bytes("10.0.0.1"), /not an IPv6 address/);
  });

  // The keys are read as tc writes them (`tcLine`): 32-bit words at offsets from the network
  // header, the Ethernet source at -8/-4.
  const SRC_MAC = "match u32 0x0a580af4 0xffffffff at -8 match u32 0x01050000 0xffff0000 at -4";

  it("IPv4 pod: IP and ARP only from its MAC and address, redirected to the veth; no IPv6 at all", () => {
    const lines = antiSpoofFilters(
      "tap0_chv",
      iface([{ family: "inet", address: "10.244.1.5", prefixLen: 24 }]),
    ).map(tcLine);
    assert.equal(lines.length, 2);
    const [ip, arp] = lines as [string, string];
    assert.equal(
      ip,
      "filter add dev tap0_chv parent ffff: prio 10 protocol 0x0800 u32 match u32 0x0af40105 0xffffffff at 12 " +
        `${SRC_MAC} action mirred egress redirect dev eth0`,
    );
    // Ethernet/IPv4 ARP (htype 1, ptype 0800, hlen 6, plen 4); sender MAC 0a580af40105 at 8,
    // sender IP 0af40105 at 14: one word shares the MAC's tail and the IP's head.
    assert.equal(
      arp,
      "filter add dev tap0_chv parent ffff: prio 11 protocol 0x0806 u32 match u32 0x00010800 0xffffffff at 0 " +
        "match u32 0x06040000 0xffff0000 at 4 match u32 0x0a580af4 0xffffffff at 8 " +
        "match u32 0x01050af4 0xffffffff at 12 match u32 0x01050000 0xffff0000 at 16 " +
        `${SRC_MAC} action mirred egress redirect dev eth0`,
    );
    assert.ok(lines.every((l) => !/0x86dd/.test(l)));
  });

  it("IPv6 pod: its addresses and link-local, NA for itself only, RA/redirect and hiding headers stopped", () => {
    const lines = antiSpoofFilters(
      "tap0_chv",
      iface([
        { family: "inet", address: "10.244.1.5", prefixLen: 24 },
        { family: "inet6", address: "fd00::5", prefixLen: 64 },
      ]),
    ).map(tcLine);
    const v6 = lines.filter((l) => l.includes("protocol 0x86dd"));
    const icmp6 = "match u32 0x00003a00 0x0000ff00 at 4";
    const type = (t: number) => `match u32 0x${t.toString(16)}000000 0xff000000 at 40`;
    // NA: from one of ours, about one of ours (target at 48).
    const na = v6.filter((l) => l.includes(`${icmp6} ${type(136)}`) && l.includes("mirred"));
    assert.equal(na.length, 2);
    assert.ok(na.some((l) => l.includes("match u32 0xfd000000 0xffffffff at 48")));
    // The link-local fe80::858:aff:fef4:105 as the source, with the pod's MAC.
    assert.ok(
      v6.some((l) =>
        l.includes(
          "match u32 0xfe800000 0xffffffff at 8 match u32 0x00000000 0xffffffff at 12 " +
            `match u32 0x08580aff 0xffffffff at 16 match u32 0xfef40105 0xffffffff at 20 ${SRC_MAC}`,
        ),
      ),
    );
    for (const t of [134, 136, 137])
      assert.ok(
        v6.some((l) => l.endsWith(`u32 ${icmp6} ${type(t)} classid 1:1`)),
        `ICMPv6 ${t} stopped`,
      );
    for (const next of [0, 43, 60, 51])
      assert.ok(
        v6.some((l) =>
          l.endsWith(
            `u32 match u32 0x0000${next.toString(16).padStart(2, "0")}00 0x0000ff00 at 4 classid 1:1`,
          ),
        ),
        `next header ${next} stopped`,
      );
    // Everything that redirects checks the source MAC.
    assert.ok(lines.filter((l) => l.includes("mirred")).every((l) => l.includes(SRC_MAC)));
  });

  it("the veth's redirect takes every frame", () => {
    assert.equal(
      tcLine(redirectAll("eth0", "tap0_chv")),
      "filter add dev eth0 parent ffff: protocol 0x0003 u32 match u32 0x00000000 0x00000000 at 0 " +
        "action mirred egress redirect dev tap0_chv",
    );
  });

  it("refuses a MAC it cannot parse instead of writing a filter that matches nothing or anything", () => {
    assert.throws(
      () => antiSpoofFilters("tap0_chv", { ...iface([]), mac: "0a:58:zz:f4:01:05" }),
      /not a MAC/,
    );
  });

  it("TAP settings: no forwarding, strict rp_filter; IPv6 off only when the kernel has it", () => {
    assert.deepEqual(tapSysctls("tap0_chv", false).sort(), [
      "net.ipv4.conf.tap0_chv.accept_local=0",
      "net.ipv4.conf.tap0_chv.forwarding=0",
      "net.ipv4.conf.tap0_chv.rp_filter=1",
    ]);
    assert.ok(tapSysctls("tap0_chv", true).includes("net.ipv6.conf.tap0_chv.disable_ipv6=1"));
  });
});
