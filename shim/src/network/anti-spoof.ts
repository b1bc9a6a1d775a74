// What the guest may send out of its TAP: only frames from the pod's own MAC and addresses.
// The TAP's ingress redirect to the CNI veth is itself the allow-list (tc u32 filters that
// match allowed frames and redirect them); a frame no filter redirects goes up the pod netns'
// own stack on the TAP, which is set up to drop it (see TAP_SYSCTLS). We use only what every
// kernel with tc has (cls_u32, act_mirred): no flower, matchall, gact, police or nftables,
// which many nodes lack. Every filter names its protocol: tc compares it with the outer one,
// so a VLAN-tagged frame (802.1Q) never matches and never leaves (a guest cannot hop VLANs).
import { isIPv4, isIPv6 } from "node:net";
import type { PodInterface } from "./pod-network.js";

const hex = (n: number, width: number) => `0x${n.toString(16).padStart(width, "0")}`;

function macBytes(mac: string): number[] {
  const bytes = mac.split(":").map((b) => Number.parseInt(b, 16));
  if (bytes.length !== 6 || bytes.some((b) => !(b >= 0 && b <= 255)))
    throw new Error(`anti-spoof: ${JSON.stringify(mac)} is not a MAC address`);
  return bytes;
}

/** The 16 bytes of an IPv6 address (the kernel's text form: `::` once, no IPv4 tail). */
export function ipv6Bytes(address: string): number[] {
  if (!isIPv6(address) || address.includes("."))
    throw new Error(`anti-spoof: ${JSON.stringify(address)} is not an IPv6 address`);
  const [head = "", tail] = address.split("::");
  const groups = (s: string) => (s ? s.split(":").map((g) => Number.parseInt(g, 16)) : []);
  const h = groups(head);
  const t = tail === undefined ? [] : groups(tail);
  const all = [...h, ...Array<number>(8 - h.length - t.length).fill(0), ...t];
  return all.flatMap((g) => [g >> 8, g & 0xff]);
}

/** fe80::/64 with the modified EUI-64 of `mac`: the link-local a Linux guest derives from it. */
export function linkLocalFromMac(mac: string): string {
  const m = macBytes(mac);
  const g = (a: number, b: number) => ((a << 8) | b).toString(16);
  return `fe80::${g((m[0] as number) ^ 0x02, m[1] as number)}:${g(m[2] as number, 0xff)}:${g(0xfe, m[3] as number)}:${g(m[4] as number, m[5] as number)}`;
}

/** u32 keys for `bytes` at `offset` (from the network header), 32 bits at a time. */
function bytesAt(bytes: number[], offset: number): string {
  const keys: string[] = [];
  for (let i = 0; i < bytes.length; i += 4) {
    const word = bytes.slice(i, i + 4);
    const value = word.reduce((acc, b) => acc * 256 + b, 0) >>> 0;
    keys.push(`match u32 ${hex(value, 8)} 0xffffffff at ${offset + i}`);
  }
  return keys.join(" ");
}

/** ICMPv6 types a pod must not send onto the bridge: router advertisement, redirect. */
const ICMP6_ROUTER_ONLY = [134, 137];
/** IPv6 headers an ND message could hide behind from a fixed-offset match: hop-by-hop, routing, destination options, AH. */
const IP6_HIDING_HEADERS = [0, 43, 60, 51];

/**
 * The TAP's tc ingress filters (lines for `tc -batch`). A match with no action stops the
 * search without redirecting: the frame goes to the TAP's stack and is dropped there.
 */
export function antiSpoofFilters(tap: string, iface: PodInterface): string[] {
  const mac = macBytes(iface.mac);
  const etherSrc = `match ether src ${iface.mac}`;
  const to = `action mirred egress redirect dev ${iface.name}`;
  const add = (prio: number, proto: string, rest: string) =>
    `filter add dev ${tap} parent ffff: prio ${prio} protocol ${proto} ${rest}`;
  const lines: string[] = [];
  const v4 = iface.addresses.filter((a) => a.family === "inet" && isIPv4(a.address)).map((a) => a.address);
  for (const ip of v4) {
    lines.push(add(10, "ip", `u32 match ip src ${ip}/32 ${etherSrc} ${to}`));
    // ARP for Ethernet/IPv4 only (other lengths would move the fields u32 checks), sender = pod.
    const spa = ip.split(".").map(Number);
    lines.push(
      add(
        11,
        "arp",
        `u32 match u32 0x00010800 0xffffffff at 0 match u16 0x0604 0xffff at 4 ${bytesAt(mac.slice(0, 4), 8)} ` +
          `match u16 ${hex(((mac[4] as number) << 8) | (mac[5] as number), 4)} 0xffff at 12 ` +
          `match u16 ${hex(((spa[0] as number) << 8) | (spa[1] as number), 4)} 0xffff at 14 ` +
          `match u16 ${hex(((spa[2] as number) << 8) | (spa[3] as number), 4)} 0xffff at 16 ${etherSrc} ${to}`,
      ),
    );
  }
  const v6 = iface.addresses.filter((a) => a.family === "inet6" && isIPv6(a.address)).map((a) => a.address);
  if (v6.length > 0) {
    const own = [...v6, linkLocalFromMac(iface.mac)];
    // Neighbour advertisements only for our own addresses (target = source = one of ours).
    for (const ip of own)
      lines.push(
        add(
          20,
          "ipv6",
          `u32 match ip6 src ${ip}/128 match ip6 protocol 58 0xff match u8 136 0xff at 40 ${bytesAt(ipv6Bytes(ip), 48)} ${etherSrc} ${to}`,
        ),
      );
    for (const type of [136, ...ICMP6_ROUTER_ONLY])
      lines.push(add(21, "ipv6", `u32 match ip6 protocol 58 0xff match u8 ${type} 0xff at 40 classid 1:1`));
    for (const next of IP6_HIDING_HEADERS)
      lines.push(add(21, "ipv6", `u32 match ip6 protocol ${next} 0xff classid 1:1`));
    for (const ip of own) lines.push(add(22, "ipv6", `u32 match ip6 src ${ip}/128 ${etherSrc} ${to}`));
  }
  return lines;
}

/**
 * What the pod netns does with a frame the filters did not redirect: nothing. The TAP has no
 * address; it does not forward (per input device for IPv4), its rp_filter refuses sources not
 * routed through it (none is), IPv6 is off on it, and `arp off` (set with the link) makes ARP
 * ignore it. All of it goes with the TAP.
 */
export function tapSysctls(tap: string, ipv6: boolean): string[] {
  return [
    `net.ipv4.conf.${tap}.forwarding=0`,
    `net.ipv4.conf.${tap}.rp_filter=1`,
    `net.ipv4.conf.${tap}.accept_local=0`,
    ...(ipv6 ? [`net.ipv6.conf.${tap}.disable_ipv6=1`] : []),
  ];
}
