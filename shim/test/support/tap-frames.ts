// Plays a hostile guest: writes raw Ethernet frames into a pod's TAP (as the VMM would) and
// reports which of them another netns saw. Node cannot ioctl /dev/net/tun, so a few lines of
// python3 do the socket work; the frames are built here.
import { ipv6Bytes } from "../../src/network/anti-spoof.js";
import { execOk } from "../../src/util/exec.js";

export interface Frame {
  name: string;
  bytes: Buffer;
}

const PY = `
import ctypes, fcntl, json, os, socket, struct, sys, time
req = json.load(sys.stdin)
libc = ctypes.CDLL(None, use_errno=True)
def enter(path):
    fd = os.open(path, os.O_RDONLY)
    if libc.setns(fd, 0x40000000) != 0:
        raise OSError(ctypes.get_errno(), "setns " + path)
    os.close(fd)
enter(req["watchNetns"])
rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
rx.bind((req["watchIface"], 0))
rx.settimeout(0.2)
enter(req["tapNetns"])
tun = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(tun, 0x400454ca, struct.pack("16sH", req["tap"].encode(), 0x0002 | 0x1000))
time.sleep(0.3)
for f in req["frames"]:
    os.write(tun, bytes.fromhex(f["hex"]))
seen = set()
deadline = time.time() + req["waitS"]
while time.time() < deadline:
    try:
        data = rx.recv(65535)
    except socket.timeout:
        continue
    for f in req["frames"]:
        if bytes.fromhex(f["marker"]) in data:
            seen.add(f["name"])
os.close(tun)
print(json.dumps(sorted(seen)))
`;

/**
 * Writes `frames` into `tap` (in `tapNetns`) and returns the names of those whose marker (the
 * frame's last 16 bytes) showed up on `watchIface` in `watchNetns` within `waitS` seconds.
 */
export async function sendThroughTap(opts: {
  tapNetns: string;
  tap: string;
  watchNetns: string;
  watchIface: string;
  frames: Frame[];
  waitS?: number;
}): Promise<string[]> {
  const input = JSON.stringify({
    tapNetns: opts.tapNetns,
    tap: opts.tap,
    watchNetns: opts.watchNetns,
    watchIface: opts.watchIface,
    waitS: opts.waitS ?? 1.5,
    frames: opts.frames.map((f) => ({
      name: f.name,
      hex: f.bytes.toString("hex"),
      marker: f.bytes.subarray(-16).toString("hex"),
    })),
  });
  const { stdout } = await execOk(["python3", "-c", PY], { input, timeoutMs: 30_000 });
  return JSON.parse(stdout) as string[];
}

// --- frame builders (just enough of each protocol to be taken as valid by a bridge) ---

const mac = (m: string) => Buffer.from(m.split(":").map((b) => Number.parseInt(b, 16)));
const ip4 = (a: string) => Buffer.from(a.split(".").map(Number));

/** A unique 16-byte payload tail, so a frame is recognised wherever it shows up. */
export function marker(name: string): Buffer {
  return Buffer.from(`chv:${name}`.padEnd(16, ".").slice(0, 16));
}

function checksum(b: Buffer): number {
  let sum = 0;
  for (let i = 0; i < b.length; i += 2) sum += (b[i] as number) * 256 + (b[i + 1] ?? 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

export function ether(dst: string, src: string, type: number, payload: Buffer, vlan?: number): Buffer {
  const tag = vlan === undefined ? Buffer.alloc(0) : Buffer.from([0x81, 0x00, vlan >> 8, vlan & 0xff]);
  const t = Buffer.alloc(2);
  t.writeUInt16BE(type);
  return Buffer.concat([mac(dst), mac(src), tag, t, payload]);
}

/** IPv4/UDP with a valid header checksum (UDP checksum 0: none). */
export function udp4(src: string, dst: string, data: Buffer): Buffer {
  const udp = Buffer.alloc(8);
  udp.writeUInt16BE(40000, 0);
  udp.writeUInt16BE(40001, 2);
  udp.writeUInt16BE(8 + data.length, 4);
  const h = Buffer.alloc(20);
  h[0] = 0x45;
  h.writeUInt16BE(20 + 8 + data.length, 2);
  h[8] = 64;
  h[9] = 17;
  ip4(src).copy(h, 12);
  ip4(dst).copy(h, 16);
  h.writeUInt16BE(checksum(h), 10);
  return Buffer.concat([h, udp, data]);
}

/** An ARP request: sender `sha`/`spa` asking for `tpa`, then `tail` (as frame padding). */
export function arp(sha: string, spa: string, tpa: string, tail: Buffer): Buffer {
  const head = Buffer.from([0, 1, 8, 0, 6, 4, 0, 1]);
  return Buffer.concat([head, mac(sha), ip4(spa), Buffer.alloc(6), ip4(tpa), tail]);
}

const ip6 = (a: string) => Buffer.from(ipv6Bytes(a));

/** An IPv6 packet with `next` header `payload` (hop limit 255, as ND needs). */
export function ipv6(src: string, dst: string, next: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(40);
  h[0] = 0x60;
  h.writeUInt16BE(payload.length, 4);
  h[6] = next;
  h[7] = 255;
  ip6(src).copy(h, 8);
  ip6(dst).copy(h, 24);
  return Buffer.concat([h, payload]);
}

/** An ICMPv6 message of `type` whose first 16 bytes after the header are `target` (NA, NS). */
export function icmp6(type: number, target: string, tail: Buffer): Buffer {
  const h = Buffer.from([type, 0, 0, 0, 0x20, 0, 0, 0]);
  return Buffer.concat([h, ip6(target), tail]);
}

/** A hop-by-hop options header (PadN) in front of `next`/`payload`. */
export function hopByHop(next: number, payload: Buffer): Buffer {
  return Buffer.concat([Buffer.from([next, 0, 1, 4, 0, 0, 0, 0]), payload]);
}
