// The TAP's allow-list as tc lines (no root): what is derived from the pod's interface.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { antiSpoofFilters, ipv6Bytes, linkLocalFromMac, tapSysctls } from "../src/network/anti-spoof.js";
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

  it("IPv4 pod: IP and ARP only from its MAC and address, redirected to the veth; no IPv6 at all", () => {
    const lines = antiSpoofFilters(
      "tap0_chv",
      iface([{ family: "inet", address: "10.244.1.5", prefixLen: 24 }]),
    );
    assert.equal(lines.length, 2);
    const [ip, arp] = lines as [string, string];
    assert.match(
      ip,
      /^filter add dev tap0_chv parent ffff: prio 10 protocol ip u32 match ip src 10\.244\.1\.5\/32 /,
    );
    assert.match(ip, /match ether src 0a:58:0a:f4:01:05 action mirred egress redirect dev eth0$/);
    // sender MAC 0a580af4 0105, sender IP 0af4 0105 at their ARP offsets
    assert.match(arp, /protocol arp u32 match u32 0x00010800 0xffffffff at 0 match u16 0x0604 0xffff at 4 /);
    assert.match(arp, /match u32 0x0a580af4 0xffffffff at 8 match u16 0x0105 0xffff at 12 /);
    assert.match(arp, /match u16 0x0af4 0xffff at 14 match u16 0x0105 0xffff at 16 /);
    assert.ok(lines.every((l) => !/ipv6/.test(l)));
  });

  it("IPv6 pod: its addresses and link-local, NA for itself only, RA/redirect and hiding headers stopped", () => {
    const lines = antiSpoofFilters(
      "tap0_chv",
      iface([
        { family: "inet", address: "10.244.1.5", prefixLen: 24 },
        { family: "inet6", address: "fd00::5", prefixLen: 64 },
      ]),
    );
    const v6 = lines.filter((l) => l.includes("protocol ipv6"));
    assert.equal(v6.filter((l) => / u8 136 0xff at 40 /.test(l) && l.includes("mirred")).length, 2);
    assert.ok(v6.some((l) => l.includes("match ip6 src fe80::858:aff:fef4:105/128 match ether src")));
    assert.ok(v6.some((l) => l.includes("match u32 0xfd000000 0xffffffff at 48")));
    for (const type of [134, 136, 137])
      assert.ok(
        v6.some((l) => l.includes(`u8 ${type} 0xff at 40 classid 1:1`)),
        `ICMPv6 ${type} stopped`,
      );
    for (const next of [0, 43, 60, 51])
      assert.ok(
        v6.some((l) => l.includes(`protocol ${next} 0xff classid 1:1`)),
        `next header ${next} stopped`,
      );
    // Everything that redirects checks the source MAC.
    assert.ok(
      lines.filter((l) => l.includes("mirred")).every((l) => l.includes("match ether src 0a:58:0a:f4:01:05")),
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
