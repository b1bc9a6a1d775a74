// Watches an interface of the host (a CNI bridge) for Ethernet frames from given source MACs
// or IP addresses (IPv4 source or ARP sender, IPv6 source), as a neighbour on that bridge would receive
// them. Node has no packet sockets: a few lines of python3 read them until told to stop.
import { spawn } from "node:child_process";

const PY = `
import json, select, socket, sys
iface, macs, ips = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
want_mac = {bytes.fromhex(m.replace(":", "")): m for m in macs}
want_ip = {socket.inet_aton(a): a for a in ips if ":" not in a}
want_ip6 = {socket.inet_pton(socket.AF_INET6, a): a for a in ips if ":" in a}
seen = {k: 0 for k in macs + ips}
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((iface, 0))
print("ready", flush=True)
while True:
    r, _, _ = select.select([s, sys.stdin], [], [])
    if sys.stdin in r:
        break
    f = s.recv(65535)
    src, etype = f[6:12], f[12:14]
    if src in want_mac:
        seen[want_mac[src]] += 1
    if etype == b"\\x08\\x00" and f[26:30] in want_ip:
        seen[want_ip[f[26:30]]] += 1
    if etype == b"\\x08\\x06" and f[28:32] in want_ip:
        seen[want_ip[f[28:32]]] += 1
    if etype == b"\\x86\\xdd" and f[22:38] in want_ip6:
        seen[want_ip6[f[22:38]]] += 1
print(json.dumps(seen), flush=True)
`;

export interface FrameWatch {
  /** Stops watching; how many frames came from each MAC and each IP. */
  stop(): Promise<Record<string, number>>;
}

export async function watchFrames(
  iface: string,
  from: { macs: string[]; ips: string[] },
): Promise<FrameWatch> {
  const child = spawn("python3", ["-c", PY, iface, JSON.stringify(from.macs), JSON.stringify(from.ips)], {
    stdio: ["pipe", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout.on("data", (b: Buffer) => {
    out += b.toString();
  });
  child.stderr.on("data", (b: Buffer) => {
    err += b.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.on("close", resolve));
  const deadline = Date.now() + 10_000;
  while (!out.startsWith("ready")) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`frame watcher on ${iface} did not start: ${err.trim()}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    async stop() {
      child.stdin.end("stop\n");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      const code = await exited;
      clearTimeout(timer);
      if (code !== 0) throw new Error(`frame watcher on ${iface} exited with ${code}: ${err.trim()}`);
      return JSON.parse(out.slice("ready\n".length)) as Record<string, number>;
    },
  };
}
