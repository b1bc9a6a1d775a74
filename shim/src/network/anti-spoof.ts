// What the guest may send out of its TAP: only frames from the pod's own MAC and addresses.
// The TAP's ingress redirect to the CNI veth is itself the allow-list (u32 filters that
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

/** One u32 key: the 32-bit word at `at` (bytes from the network header, a multiple of 4), masked, equals `value`. */
export interface U32Key {
  value: number;
  mask: number;
  at: number;
}

/**
 * A u32 filter on a device's ingress. It ends the search when it matches: the frame goes to
 * `redirect`'s egress (act_mirred), or, with `classid` only, up the pod netns' stack on the TAP.
 */
export interface U32Filter {
  dev: string;
  /** 0: the kernel picks one. */
  prio: number;
  /** The ethertype it applies to (ETHERTYPE). */
  protocol: number;
  keys: U32Key[];
  redirect?: string;
  classid?: number;
}

export const ETHERTYPE = { all: 0x0003, ip: 0x0800, arp: 0x0806, ipv6: 0x86dd } as const;
/** Class 1:1: a name for "matched, not redirected". */
const STOP_CLASS = 0x0001_0001;

/** `value` (of `bits` bits) at byte `at`, as the key for its aligned word. */
function field(value: number, bits: 8 | 16 | 32, at: number): U32Key {
  const shift = 32 - bits - 8 * (at & 3);
  if (shift < 0) throw new Error(`anti-spoof: a ${bits}-bit field at ${at} crosses a word`);
  const mask = bits === 32 ? 0xffffffff : ((1 << bits) - 1) * 2 ** shift;
  return { value: (value * 2 ** shift) >>> 0, mask: mask >>> 0, at: at - (at & 3) };
}

/** Keys for `bytes` at `at` (a multiple of 4), a word at a time; a last partial word is masked to its bytes. */
function bytesAt(bytes: number[], at: number): U32Key[] {
  const keys: U32Key[] = [];
  for (let i = 0; i < bytes.length; i += 4) {
    const word = bytes.slice(i, i + 4);
    const value = word.reduce((acc, b) => acc * 256 + b, 0) * 2 ** (8 * (4 - word.length));
    const mask = (2 ** (8 * word.length) - 1) * 2 ** (8 * (4 - word.length));
    keys.push({ value: value >>> 0, mask: mask >>> 0, at: at + i });
  }
  return keys;
}

/** Keys on one word are merged into one (as tc merges them): one compare per word. */
function merged(...parts: U32Key[][]): U32Key[] {
  const keys: U32Key[] = [];
  for (const k of parts.flat()) {
    const same = keys.find((o) => o.at === k.at);
    if (!same) keys.push({ ...k });
    else if (((same.value ^ k.value) & same.mask & k.mask) !== 0)
      throw new Error(`anti-spoof: conflicting keys at ${k.at}`);
    else {
      same.value = (same.value | k.value) >>> 0;
      same.mask = (same.mask | k.mask) >>> 0;
    }
  }
  return keys;
}

const etherSrc = (mac: number[]) => bytesAt(mac, -8);
const ip6Protocol = (next: number) => [field(next, 8, 6)];
const ip6Src = (address: string) => bytesAt(ipv6Bytes(address), 8);
const icmp6Type = (type: number) => [field(type, 8, 40)];

/** The tc command that makes the same filter: for error messages, logs, and checking against tc. */
export function tcLine(f: U32Filter): string {
  const hex8 = (n: number) => hex(n, 8);
  const keys = f.keys.map((k) => `match u32 ${hex8(k.value)} ${hex8(k.mask)} at ${k.at}`).join(" ");
  const then = f.redirect
    ? `action mirred egress redirect dev ${f.redirect}`
    : `classid ${(f.classid ?? STOP_CLASS) >>> 16}:${(f.classid ?? STOP_CLASS) & 0xffff}`;
  const prio = f.prio ? ` prio ${f.prio}` : "";
  return `filter add dev ${f.dev} parent ffff:${prio} protocol ${hex(f.protocol, 4)} u32 ${keys} ${then}`;
}

/** tc's ingress redirect of every frame arriving on `from` (the veth) to the egress of `to`. */
export function redirectAll(from: string, to: string): U32Filter {
  return { dev: from, prio: 0, protocol: ETHERTYPE.all, keys: [{ value: 0, mask: 0, at: 0 }], redirect: to };
}

/** ICMPv6 types a pod must not send onto the bridge: router advertisement, redirect. */
const ICMP6_ROUTER_ONLY = [134, 137];
/** IPv6 headers an ND message could hide behind from a fixed-offset match: hop-by-hop, routing, destination options, AH. */
const IP6_HIDING_HEADERS = [0, 43, 60, 51];

/**
 * The TAP's ingress filters. A match with no redirect stops the search: the frame goes to the
 * TAP's stack and is dropped there.
 */
export function antiSpoofFilters(tap: string, iface: PodInterface): U32Filter[] {
  const mac = macBytes(iface.mac);
  const pass = (prio: number, protocol: number, keys: U32Key[]): U32Filter => ({
    dev: tap,
    prio,
    protocol,
    keys,
    redirect: iface.name,
  });
  const stop = (prio: number, protocol: number, keys: U32Key[]): U32Filter => ({
    dev: tap,
    prio,
    protocol,
    keys,
    classid: STOP_CLASS,
  });
  const filters: U32Filter[] = [];
  const v4 = iface.addresses.filter((a) => a.family === "inet" && isIPv4(a.address)).map((a) => a.address);
  for (const ip of v4) {
    const spa = ip.split(".").map(Number);
    filters.push(pass(10, ETHERTYPE.ip, merged(bytesAt(spa, 12), etherSrc(mac))));
    // ARP for Ethernet/IPv4 only (other lengths would move the fields u32 checks), sender = pod.
    filters.push(
      pass(
        11,
        ETHERTYPE.arp,
        merged(
          [field(0x00010800, 32, 0), field(0x0604, 16, 4)],
          bytesAt(mac, 8),
          [field(((spa[0] as number) << 8) | (spa[1] as number), 16, 14)],
          [field(((spa[2] as number) << 8) | (spa[3] as number), 16, 16)],
          etherSrc(mac),
        ),
      ),
    );
  }
  const v6 = iface.addresses.filter((a) => a.family === "inet6" && isIPv6(a.address)).map((a) => a.address);
  if (v6.length > 0) {
    const own = [...v6, linkLocalFromMac(iface.mac)];
    // Neighbour advertisements only for our own addresses (target = source = one of ours).
    for (const ip of own)
      filters.push(
        pass(
          20,
          ETHERTYPE.ipv6,
          merged(ip6Src(ip), ip6Protocol(58), icmp6Type(136), bytesAt(ipv6Bytes(ip), 48), etherSrc(mac)),
        ),
      );
    for (const type of [136, ...ICMP6_ROUTER_ONLY])
      filters.push(stop(21, ETHERTYPE.ipv6, merged(ip6Protocol(58), icmp6Type(type))));
    for (const next of IP6_HIDING_HEADERS) filters.push(stop(21, ETHERTYPE.ipv6, ip6Protocol(next)));
    for (const ip of own) filters.push(pass(22, ETHERTYPE.ipv6, merged(ip6Src(ip), etherSrc(mac))));
  }
  return filters;
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
