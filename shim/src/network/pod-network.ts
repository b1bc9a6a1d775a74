// Pod networking on the host: CNI has put a veth (with the pod's IP) in the pod's netns. We add
// a TAP next to it and redirect every frame both ways with tc ingress + mirred, so the VM's
// NIC (on the TAP, with the veth's MAC) is the pod's interface. The guest then takes the
// veth's addresses and routes (the agent configures eth0 from what we read here).
import { Cleanup } from "../util/cleanup.js";
import { execOk } from "../util/exec.js";

export interface PodAddress {
  family: "inet" | "inet6";
  address: string;
  prefixLen: number;
}

export interface PodRoute {
  /** "default" or a CIDR. */
  dest: string;
  gateway?: string;
}

export interface PodInterface {
  /** The CNI interface in the netns (usually eth0). */
  name: string;
  mac: string;
  mtu: number;
  addresses: PodAddress[];
  routes: PodRoute[];
}

export interface PodNetwork {
  netnsPath: string;
  tap: string;
  iface: PodInterface;
  /** Removes the TAP and the redirects; the veth and netns belong to CNI and stay. */
  detach(): Promise<void>;
}

export class NetworkError extends Error {
  override readonly name = "NetworkError";
  readonly kind = "FailedPrecondition";
}

/** Runs a tool inside the netns at `netnsPath` (any path, not only /var/run/netns names). */
function inNetns(netnsPath: string, argv: string[]) {
  return execOk(["nsenter", `--net=${netnsPath}`, "--", ...argv], { timeoutMs: 10_000 });
}

interface IpLink {
  ifname: string;
  link_type?: string;
  address?: string;
  mtu: number;
  addr_info?: Array<{ family: string; local: string; prefixlen: number; scope?: string }>;
}

interface IpRoute {
  dst: string;
  gateway?: string;
  dev?: string;
}

/** The pod's interface as CNI left it: the one ethernet link with a global address. */
export async function readPodInterface(netnsPath: string): Promise<PodInterface> {
  const links = JSON.parse((await inNetns(netnsPath, ["ip", "-j", "addr", "show"])).stdout) as IpLink[];
  const link = links.find(
    (l) =>
      l.link_type === "ether" &&
      !l.ifname.startsWith("tap") &&
      (l.addr_info ?? []).some((a) => a.scope === "global"),
  );
  if (!link?.address)
    throw new NetworkError(`pod netns ${netnsPath} has no ethernet interface with an address (did CNI run?)`);
  const addresses = (link.addr_info ?? [])
    .filter((a) => a.scope === "global" && (a.family === "inet" || a.family === "inet6"))
    .map((a) => ({ family: a.family as "inet" | "inet6", address: a.local, prefixLen: a.prefixlen }));
  const routes = JSON.parse(
    (await inNetns(netnsPath, ["ip", "-j", "route", "show", "dev", link.ifname])).stdout,
  ) as IpRoute[];
  return {
    name: link.ifname,
    mac: link.address,
    mtu: link.mtu,
    addresses,
    // Routes the kernel derives from the address itself (proto kernel) come back by themselves.
    routes: routes.map((r) => ({ dest: r.dst, ...(r.gateway ? { gateway: r.gateway } : {}) })),
  };
}

export async function attachPodNetwork(netnsPath: string, tap = "tap0_chv"): Promise<PodNetwork> {
  const iface = await readPodInterface(netnsPath);
  const undo = new Cleanup();
  try {
    await inNetns(netnsPath, ["ip", "tuntap", "add", "dev", tap, "mode", "tap"]);
    undo.defer(`delete ${tap}`, () => inNetns(netnsPath, ["ip", "link", "del", tap]));
    await inNetns(netnsPath, ["ip", "link", "set", tap, "mtu", String(iface.mtu), "up"]);
    for (const [from, to] of [
      [iface.name, tap],
      [tap, iface.name],
    ] as const) {
      await inNetns(netnsPath, ["tc", "qdisc", "add", "dev", from, "ingress"]);
      undo.defer(`remove ingress qdisc of ${from}`, () =>
        inNetns(netnsPath, ["tc", "qdisc", "del", "dev", from, "ingress"]),
      );
      await inNetns(netnsPath, [
        "tc",
        "filter",
        "add",
        "dev",
        from,
        "parent",
        "ffff:",
        "protocol",
        "all",
        "u32",
        "match",
        "u8",
        "0",
        "0",
        "action",
        "mirred",
        "egress",
        "redirect",
        "dev",
        to,
      ]);
    }
  } catch (err) {
    await undo.run();
    throw err;
  }
  let detached = false;
  return {
    netnsPath,
    tap,
    iface,
    async detach() {
      if (detached) return;
      detached = true;
      await undo.run();
    },
  };
}
