// Pod networking on the host: CNI has put a veth (with the pod's IP) in the pod's netns. We add
// a TAP next to it and redirect frames both ways with tc ingress + mirred, so the VM's NIC (on
// the TAP, with the veth's MAC) is the pod's interface. The guest then takes the veth's
// addresses and routes (the agent configures eth0 from what we read here). Towards the veth
// only frames from the pod's own MAC and addresses pass (anti-spoof.ts). All of it is netlink
// from the daemon's one helper process (net-helper.ts): no process is started per pod.
import { existsSync } from "node:fs";
import { z } from "zod";
import { ShimError } from "../errors.js";
import { log } from "../util/log.js";
import { antiSpoofFilters, redirectAll, tapSysctls, tcLine, type U32Filter } from "./anti-spoof.js";
import { type NetHelper, NetHelperError } from "./net-helper.js";

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
  /**
   * Removes the TAP and the redirects; the veth and netns belong to CNI and stay. `via`: another
   * path to the same netns (a held fd, pod/netns-hold.ts), for a detach that may outlive the
   * netns's name.
   */
  detach(via?: string): Promise<void>;
}

/** The pod's netns is not as CNI should have left it. */
export class NetworkError extends ShimError {
  override readonly name = "NetworkError";
  constructor(message: string) {
    super("FailedPrecondition", message);
  }
}

const IpLink = z.looseObject({
  ifname: z.string(),
  link_type: z.union([z.string(), z.number()]).optional(),
  address: z.string().optional(),
  mtu: z.number(),
  addr_info: z
    .array(
      z.looseObject({ family: z.string(), local: z.string(), prefixlen: z.number(), scope: z.unknown() }),
    )
    .optional(),
});

const IpRoute = z.looseObject({
  dst: z.string(),
  gateway: z.string().optional(),
  dev: z.string().optional(),
  protocol: z.unknown().optional(),
});

/** What the helper's `read` answers: the netns's links and main-table routes, as `ip -j` shows them. */
const Listing = z.object({
  links: z.array(IpLink),
  routes: z.array(IpRoute),
  routes6: z.array(IpRoute),
});

/** The pod's interface as CNI left it: the one ethernet link with a global address. */
export async function readPodInterface(net: NetHelper, netnsPath: string): Promise<PodInterface> {
  // Dual-stack pods: IPv6 routes too (an empty list where the kernel or CNI has no IPv6).
  const read = Listing.safeParse(
    await net.request("read", { netns: netnsPath, ipv6: existsSync("/proc/sys/net/ipv6") }),
  );
  if (!read.success) throw new NetworkError(`reading pod netns ${netnsPath}: ${z.prettifyError(read.error)}`);
  const { links, routes: routes4, routes6: routes6All } = read.data;
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
  const routes = routes4.filter((r) => r.dev === link.ifname);
  // IPv6: what CNI added (the prefix and link-local routes the guest's kernel derives itself),
  // with the default route named by family so the guest cannot take it for IPv4's.
  const routes6 = routes6All
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
 * TAP (its qdisc and filters go with it) and the veth's ingress qdisc, as an attached one's does.
 */
export function adoptPodNetwork(
  net: NetHelper,
  record: { netnsPath: string; tap: string; iface: PodInterface },
): PodNetwork {
  const attached = detachable(net, record.netnsPath, record.tap, record.iface);
  // Its VM is gone or going: what cannot be removed is said, and the rest of the pod still goes.
  return {
    ...attached,
    detach: (via) =>
      attached.detach(via).catch((err: Error) => {
        log.warn({ netns: record.netnsPath, err: err.message }, "an adopted pod's TAP could not be removed");
      }),
  };
}

/**
 * Adds the TAP, both redirects and the TAP's settings (filterTap), after a read of the
 * interface: two requests to the helper, no process started. Interface names come from the
 * kernel and our own constant, never from the pod's spec.
 */
export async function attachPodNetwork(
  net: NetHelper,
  netnsPath: string,
  tap = "tap0_chv",
  opts: { tapGroup?: number } = {},
): Promise<PodNetwork> {
  const iface = await readPodInterface(net, netnsPath);
  await filterTap(net, netnsPath, netnsPath, tap, iface, { create: true, group: opts.tapGroup });
  return detachable(net, netnsPath, tap, iface);
}

/**
 * The attached network: its detach removes the TAP and the veth's qdisc. A device already gone
 * is not a failure: CNI's DEL may remove the veth first (the detach runs after the pod's delete
 * replied), and its qdisc went with it.
 */
function detachable(net: NetHelper, netnsPath: string, tap: string, iface: PodInterface): PodNetwork {
  let detached = false;
  return {
    netnsPath,
    tap,
    iface,
    async detach(via?: string) {
      if (detached) return;
      detached = true;
      // A netns already gone took the TAP with it.
      if (!via && !existsSync(netnsPath)) return;
      await net.request("detach", { netns: via ?? netnsPath, tap, veth: iface.name });
    },
  };
}

/** What the helper's steps are called in errors. */
const STEP_NAMES: Record<string, string> = {
  "tap add": "creating the TAP",
  "link netns": "moving the TAP into the pod's netns",
  sysctl: "the TAP's sysctl settings",
  "link up": "the TAP's MTU and up",
};

/**
 * The TAP's setup in the pod netns, one helper request: the TAP made (`create`) or moved in from
 * `from` (the VMM's netns), the ingress qdiscs, both redirects and the anti-spoof filters, its
 * sysctls, then MTU, `arp off` and up, last: no frame passes before the filters are in place.
 * On failure what was done is removed here, and what was there before (someone else's qdisc on
 * the veth: tc operation 1 failed) is kept.
 */
async function filterTap(
  net: NetHelper,
  from: string,
  netnsPath: string,
  tap: string,
  iface: PodInterface,
  create?: { create: true; group: number | undefined },
): Promise<void> {
  const tc: Array<{ qdisc: string } | { filter: U32Filter }> = [
    { qdisc: iface.name },
    { qdisc: tap },
    { filter: redirectAll(iface.name, tap) },
    ...antiSpoofFilters(tap, iface).map((filter) => ({ filter })),
  ];
  try {
    await net.request("setup", {
      from,
      netns: netnsPath,
      tap,
      mtu: iface.mtu,
      ...create,
      tc,
      sysctls: tapSysctls(tap, existsSync("/proc/sys/net/ipv6")),
    });
    return;
  } catch (err) {
    const step = err instanceof NetHelperError ? err.step : undefined;
    // tc operation 1 is the veth's qdisc: if that failed, a qdisc already there is not ours to drop.
    const vethQdiscOurs =
      (step === "tc" && (err as NetHelperError).index !== 1) || step === "sysctl" || step === "link up";
    const quietly = (op: string, args: Record<string, unknown>) => net.request(op, args).catch(() => {});
    // The TAP is where the helper left it (not moved when the move failed).
    await Promise.all([
      from !== netnsPath && (step === "link netns" || !step)
        ? quietly("link-del", { netns: from, dev: tap })
        : undefined,
      quietly("link-del", { netns: netnsPath, dev: tap }),
      vethQdiscOurs ? quietly("qdisc-del", { netns: netnsPath, dev: iface.name }) : undefined,
    ]);
    if (!(err instanceof NetHelperError)) throw err;
    const op = err.index === undefined ? undefined : tc[err.index - 1];
    const what =
      err.step === "tc" && op
        ? `tc operation ${err.index} (${"qdisc" in op ? `qdisc add dev ${op.qdisc} ingress` : tcLine(op.filter)})`
        : (STEP_NAMES[err.step] ?? err.step);
    throw new NetworkError(`setting up ${tap} in pod netns ${netnsPath}: ${what} failed: ${err.message}`);
  }
}

/**
 * A pool VM's NIC (pod/pool.ts): its VMM runs in an empty netns of its own. The TAP is made
 * there (owned by the VMM group) while the pod's interface is read, the VMM attaches to it by
 * hot-plug (`addNet`, with the veth's MAC), and only then is it moved into the pod's netns; the
 * VMM's open TAP file follows the device. In the pod netns it gets the same filters and settings
 * as attachPodNetwork's and comes up last, so no frame passes before the filters are in place.
 * Three helper requests (read, TAP, move + filters), the first two at once.
 */
export async function attachWarmNic(
  net: NetHelper,
  vm: { pid: number; addNet?: (nic: { tap: string; mac: string; id: string }) => Promise<string> },
  netnsPath: string,
  tap = "tap0_chv",
  opts: { tapGroup?: number } = {},
): Promise<PodNetwork> {
  const addNet = vm.addNet?.bind(vm);
  if (!addNet) throw new ShimError("Unimplemented", "this VMM driver cannot hot-plug a NIC");
  const vmmNetns = `/proc/${vm.pid}/ns/net`;
  // Until it moves, the TAP would die with the VMM's netns; a quiet delete also covers a
  // failed or half-done add.
  const dropUnmoved = () => net.request("link-del", { netns: vmmNetns, dev: tap }).catch(() => {});
  const [read, made] = await Promise.allSettled([
    readPodInterface(net, netnsPath),
    net.request("tap-add", { netns: vmmNetns, tap, group: opts.tapGroup }),
  ]);
  if (read.status === "rejected" || made.status === "rejected") {
    await dropUnmoved();
    throw read.status === "rejected" ? read.reason : (made as PromiseRejectedResult).reason;
  }
  const iface = read.value;
  try {
    await addNet({ tap, mac: iface.mac, id: "net0" });
    await filterTap(net, vmmNetns, netnsPath, tap, iface);
  } catch (err) {
    await dropUnmoved();
    throw err;
  }
  return detachable(net, netnsPath, tap, iface);
}

/**
 * A pool VM's NIC from its boot (pod/pool.ts POOL_BOOT_NIC): its TAP waits in the VMM's own
 * empty netns, where nothing reaches it. Once the pod's interface is read, the TAP is moved into
 * the pod's netns, gets the same filters and settings as attachPodNetwork's, and comes up last
 * (one more request). The guest then gives its NIC the pod's MAC (the agent, told the
 * placeholder): whatever MAC it sets, only the pod's passes the filters. On a failure the TAP is
 * removed, or dies with the VMM's netns when the caller stops the VM.
 */
export async function attachBootNic(
  net: NetHelper,
  vmmPid: number,
  netnsPath: string,
  tap = "tap0_chv",
): Promise<PodNetwork> {
  const iface = await readPodInterface(net, netnsPath);
  await filterTap(net, `/proc/${vmmPid}/ns/net`, netnsPath, tap, iface);
  return detachable(net, netnsPath, tap, iface);
}
