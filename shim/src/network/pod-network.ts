// Pod networking on the host: CNI has put a veth (with the pod's IP) in the pod's netns. We add
// a TAP next to it and redirect frames both ways with tc ingress + mirred, so the VM's NIC (on
// the TAP, with the veth's MAC) is the pod's interface. The guest then takes the veth's
// addresses and routes (the agent configures eth0 from what we read here). Towards the veth
// only frames from the pod's own MAC and addresses pass (anti-spoof.ts).
import { existsSync } from "node:fs";
import { ShimError } from "../errors.js";
import { Cleanup } from "../util/cleanup.js";
import { exec, execOk } from "../util/exec.js";
import { antiSpoofFilters, tapSysctls } from "./anti-spoof.js";

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

/** The pod's netns is not as CNI should have left it. */
export class NetworkError extends ShimError {
  override readonly name = "NetworkError";
  constructor(message: string) {
    super("FailedPrecondition", message);
  }
}

/** Runs a tool inside the netns at `netnsPath` (any path, not only /var/run/netns names). */
function inNetns(netnsPath: string, argv: string[], batch?: string[]) {
  return execOk(["nsenter", `--net=${netnsPath}`, "--", ...argv], {
    timeoutMs: 10_000,
    ...(batch ? { input: `${batch.join("\n")}\n` } : {}),
  });
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
  protocol?: string;
}

/** The pod's interface as CNI left it: the one ethernet link with a global address. */
export async function readPodInterface(netnsPath: string): Promise<PodInterface> {
  // Both listings at once (the spawns are the cost here); the routes are filtered below.
  const [addrOut, routeOut, route6Out] = await Promise.all([
    inNetns(netnsPath, ["ip", "-j", "addr", "show"]),
    inNetns(netnsPath, ["ip", "-j", "route", "show"]),
    // Dual-stack pods: IPv6 routes too (an empty list where the kernel or CNI has no IPv6).
    existsSync("/proc/sys/net/ipv6")
      ? inNetns(netnsPath, ["ip", "-6", "-j", "route", "show"])
      : Promise.resolve({ stdout: "[]" }),
  ]);
  const links = JSON.parse(addrOut.stdout) as IpLink[];
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
  const routes = (JSON.parse(routeOut.stdout) as IpRoute[]).filter((r) => r.dev === link.ifname);
  // IPv6: what CNI added (the prefix and link-local routes the guest's kernel derives itself),
  // with the default route named by family so the guest cannot take it for IPv4's.
  const routes6 = (JSON.parse(route6Out.stdout || "[]") as IpRoute[])
    .filter((r) => r.dev === link.ifname && r.protocol !== "kernel" && !r.dst.startsWith("fe80:"))
    .map((r) => (r.dst === "default" ? { ...r, dst: "::/0" } : r));
  return {
    name: link.ifname,
    mac: link.address,
    mtu: link.mtu,
    addresses,
    // Routes the kernel derives from the address itself (proto kernel) come back by themselves.
    routes: [...routes, ...routes6].map((r) => ({
      dest: r.dst,
      ...(r.gateway ? { gateway: r.gateway } : {}),
    })),
  };
}

/**
 * The pod network a previous daemon attached (kept in the pod's record): detach() removes the
 * TAP (its qdisc and filters go with it) and the veth's ingress qdisc, as attach's undo does.
 */
export function adoptPodNetwork(record: { netnsPath: string; tap: string; iface: PodInterface }): PodNetwork {
  let detached = false;
  return {
    ...record,
    async detach() {
      if (detached) return;
      detached = true;
      const { netnsPath, tap, iface } = record;
      await exec(["nsenter", `--net=${netnsPath}`, "--", "ip", "link", "del", tap]);
      await exec(["nsenter", `--net=${netnsPath}`, "--", "tc", "qdisc", "del", "dev", iface.name, "ingress"]);
    },
  };
}

/** tc's ingress redirect of every frame arriving on `from` (the veth) to the egress of `to`. */
function redirect(from: string, to: string): string {
  return `filter add dev ${from} parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev ${to}`;
}

/**
 * Adds the TAP and both redirects with one `ip -batch` and one `tc -batch` (each spawn costs
 * milliseconds, and this is on every pod's start). Interface names come from the kernel and
 * our own constant, never from the pod's spec.
 */
export async function attachPodNetwork(
  netnsPath: string,
  tap = "tap0_chv",
  opts: { tapGroup?: number } = {},
): Promise<PodNetwork> {
  const iface = await readPodInterface(netnsPath);
  const undo = new Cleanup();
  // A batch that fails halfway leaves part of it done: this removes what may exist, quietly.
  const dropTap = () => exec(["nsenter", `--net=${netnsPath}`, "--", "ip", "link", "del", tap]);
  try {
    await inNetns(
      netnsPath,
      ["ip", "-batch", "-"],
      [
        // The VMM runs unprivileged: it may attach to the TAP as a member of its group.
        `tuntap add dev ${tap} mode tap${opts.tapGroup === undefined ? "" : ` group ${opts.tapGroup}`}`,
        // No ARP on the TAP: a frame the filters refuse must get no answer from this netns.
        `link set ${tap} mtu ${iface.mtu} arp off up`,
      ],
    ).catch(async (err: unknown) => {
      await dropTap();
      throw err;
    });
    undo.defer(`delete ${tap}`, () => inNetns(netnsPath, ["ip", "link", "del", tap]));
    // No frame comes through the TAP before the VMM attaches to it.
    await filterTap(netnsPath, tap, iface, undo);
  } catch (err) {
    await undo.run();
    throw err;
  }
  return detachable(netnsPath, tap, iface, undo);
}

function detachable(netnsPath: string, tap: string, iface: PodInterface, undo: Cleanup): PodNetwork {
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

/**
 * The TAP's settings (they go with it; IPv6 may be absent from the kernel) and the redirects
 * with the anti-spoof filters, at once; registers the veth qdisc's removal with `undo`.
 */
async function filterTap(netnsPath: string, tap: string, iface: PodInterface, undo: Cleanup): Promise<void> {
  const [settings, filters] = await Promise.allSettled([
    inNetns(netnsPath, ["sysctl", "-q", "-w", ...tapSysctls(tap, existsSync("/proc/sys/net/ipv6"))]),
    inNetns(
      netnsPath,
      ["tc", "-batch", "-"],
      [
        `qdisc add dev ${iface.name} ingress`,
        `qdisc add dev ${tap} ingress`,
        redirect(iface.name, tap),
        ...antiSpoofFilters(tap, iface),
      ],
    ),
  ]);
  if (filters.status === "rejected") {
    // Line 1 is the veth's qdisc: if that failed, a qdisc already there is not ours to drop.
    const line = Number(/Command failed -:(\d+)/.exec((filters.reason as Error).message)?.[1] ?? 0);
    if (line > 1)
      await exec(["nsenter", `--net=${netnsPath}`, "--", "tc", "qdisc", "del", "dev", iface.name, "ingress"]);
    throw filters.reason;
  }
  // The TAP's own qdisc goes with the TAP; the veth's stays unless removed.
  undo.defer(`remove ingress qdisc of ${iface.name}`, () =>
    inNetns(netnsPath, ["tc", "qdisc", "del", "dev", iface.name, "ingress"]),
  );
  if (settings.status === "rejected") throw settings.reason;
}

/**
 * A pool VM's NIC (pod/pool.ts): its VMM runs in an empty netns of its own. The TAP is made
 * there (owned by the VMM group), the VMM attaches to it by hot-plug (`addNet`, with the veth's
 * MAC), and only then is it moved into the pod's netns; the VMM's open TAP file follows the
 * device. In the pod netns it gets the same settings and filters as attachPodNetwork's, and
 * comes up last, so no frame passes before the filters are in place.
 */
export async function attachWarmNic(
  vm: { pid: number; addNet?: (nic: { tap: string; mac: string; id: string }) => Promise<string> },
  netnsPath: string,
  tap = "tap0_chv",
  opts: { tapGroup?: number } = {},
): Promise<PodNetwork> {
  const addNet = vm.addNet?.bind(vm);
  if (!addNet) throw new ShimError("Unimplemented", "this VMM driver cannot hot-plug a NIC");
  const vmmNetns = `/proc/${vm.pid}/ns/net`;
  const iface = await readPodInterface(netnsPath);
  const undo = new Cleanup();
  let moved = false;
  try {
    // Until it moves, the TAP would die with the VMM's netns; a quiet delete also covers a
    // batch that failed halfway.
    undo.defer(`delete ${tap} in the VMM's netns`, () =>
      moved ? undefined : exec(["nsenter", `--net=${vmmNetns}`, "--", "ip", "link", "del", tap]),
    );
    await inNetns(
      vmmNetns,
      ["ip", "-batch", "-"],
      [
        `tuntap add dev ${tap} mode tap${opts.tapGroup === undefined ? "" : ` group ${opts.tapGroup}`}`,
        `link set ${tap} mtu ${iface.mtu}`,
      ],
    );
    await addNet({ tap, mac: iface.mac, id: "net0" });
    await inNetns(vmmNetns, ["ip", "link", "set", tap, "netns", netnsPath]);
    moved = true;
    undo.defer(`delete ${tap}`, () => inNetns(netnsPath, ["ip", "link", "del", tap]));
    await filterTap(netnsPath, tap, iface, undo);
    await inNetns(netnsPath, ["ip", "link", "set", tap, "mtu", String(iface.mtu), "arp", "off", "up"]);
  } catch (err) {
    await undo.run();
    throw err;
  }
  return detachable(netnsPath, tap, iface, undo);
}
