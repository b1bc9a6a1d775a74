// Pod networking on the host: CNI has put a veth (with the pod's IP) in the pod's netns. We add
// a TAP next to it and redirect frames both ways with tc ingress + mirred, so the VM's NIC (on
// the TAP, with the veth's MAC) is the pod's interface. The guest then takes the veth's
// addresses and routes (the agent configures eth0 from what we read here). Towards the veth
// only frames from the pod's own MAC and addresses pass (anti-spoof.ts).
import { existsSync } from "node:fs";
import { ShimError, truncateUntrusted } from "../errors.js";
import { ExecError, exec, execOk } from "../util/exec.js";
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

/** Runs a tool inside the netns at `netnsPath` (any path, not only /var/run/netns names). */
function inNetns(netnsPath: string, argv: string[], batch?: string[]) {
  return execOk(["nsenter", `--net=${netnsPath}`, "--", ...argv], {
    timeoutMs: 10_000,
    ...(batch ? { input: `${batch.join("\n")}\n` } : {}),
  });
}

/**
 * Runs one of this module's fixed scripts (below) in the netns at `netnsPath`: several steps,
 * one spawn from the daemon (a spawn costs milliseconds here; the script's own execs are cheap).
 * The script text is a constant: every value (names from the kernel, numbers) is an argument.
 */
function netnsScript(netnsPath: string, script: string, args: string[], input?: string[]) {
  return exec(["nsenter", `--net=${netnsPath}`, "--", "sh", "-c", script, "cloudhv-net", ...args], {
    timeoutMs: 10_000,
    ...(input ? { input: `${input.join("\n")}\n` } : {}),
  });
}

/** Separates the listings of READ_SCRIPT's output. */
const READ_SEPARATOR = "\n=cloudhv=\n";
/** $1: "6" to list IPv6 routes too. */
const READ_SCRIPT = `set -e
ip -j addr show
echo =cloudhv=
ip -j route show
echo =cloudhv=
if [ "$1" = 6 ]; then ip -6 -j route show; else echo '[]'; fi`;

/**
 * The TAP's filters and settings in the pod netns, then up: no frame passes before the filters
 * are in place. $1 tap, $2 mtu, $3 "create" to add the TAP here first (with $4: its group, or
 * empty), then the TAP's sysctl settings; stdin: the tc batch. The exit status says which step
 * failed (STEP_EXIT): the caller's undo depends on it.
 */
const FILTER_SCRIPT = `tap=$1 mtu=$2 create=$3 group=$4
shift 4
if [ "$create" = create ]; then
  if [ -n "$group" ]; then ip tuntap add dev "$tap" mode tap group "$group" || exit 20
  else ip tuntap add dev "$tap" mode tap || exit 20; fi
fi
tc -batch - || exit 21
sysctl -q -w "$@" || exit 22
ip link set dev "$tap" mtu "$mtu" arp off up || exit 23`;

/** A pool VM's TAP moves from the VMM's netns ($2, this one) into the pod's ($3); then FILTER_SCRIPT there ($1). */
const MOVE_SCRIPT = `filter=$1 tap=$2 pod=$3
shift 3
ip link set dev "$tap" netns "$pod" || exit 24
exec nsenter --net="$pod" -- sh -c "$filter" cloudhv-net "$tap" "$@"`;

/**
 * Removes the TAP ($1; its qdisc and filters go with it) and the veth's ($2) ingress qdisc. A
 * device already gone is not a failure: CNI's DEL may remove the veth first (the detach runs
 * after the pod's delete replied), and its qdisc went with it.
 */
const DETACH_SCRIPT = `status=0
ip link del dev "$1" 2>/dev/null || ! ip link show dev "$1" >/dev/null 2>&1 || status=1
tc qdisc del dev "$2" ingress 2>/dev/null || ! ip link show dev "$2" >/dev/null 2>&1 || status=1
exit $status`;

const STEP_EXIT: Record<number, string> = {
  20: "ip tuntap add",
  21: "tc -batch -",
  22: "sysctl",
  23: "ip link set up",
  24: "ip link set netns",
};

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
  // All three listings in one spawn (the spawns are the cost here); routes are filtered below.
  // Dual-stack pods: IPv6 routes too (an empty list where the kernel or CNI has no IPv6).
  const read = await netnsScript(netnsPath, READ_SCRIPT, [existsSync("/proc/sys/net/ipv6") ? "6" : "4"]);
  if (read.code !== 0) throw new ExecError(read);
  const [addrOut = "[]", routeOut = "[]", route6Out = "[]"] = read.stdout.split(READ_SEPARATOR);
  const links = JSON.parse(addrOut) as IpLink[];
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
  const routes = (JSON.parse(routeOut) as IpRoute[]).filter((r) => r.dev === link.ifname);
  // IPv6: what CNI added (the prefix and link-local routes the guest's kernel derives itself),
  // with the default route named by family so the guest cannot take it for IPv4's.
  const routes6 = (JSON.parse(route6Out.trim() || "[]") as IpRoute[])
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
export function adoptPodNetwork(record: { netnsPath: string; tap: string; iface: PodInterface }): PodNetwork {
  let detached = false;
  return {
    ...record,
    async detach(via?: string) {
      if (detached) return;
      detached = true;
      const { netnsPath, tap, iface } = record;
      // A netns already gone took the TAP with it.
      if (!via && !existsSync(netnsPath)) return;
      await netnsScript(via ?? netnsPath, DETACH_SCRIPT, [tap, iface.name]);
    },
  };
}

/** tc's ingress redirect of every frame arriving on `from` (the veth) to the egress of `to`. */
function redirect(from: string, to: string): string {
  return `filter add dev ${from} parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev ${to}`;
}

/**
 * Adds the TAP, both redirects and the TAP's settings with one spawn (FILTER_SCRIPT), after one
 * that reads the interface: each spawn costs milliseconds, and this is on every pod's start.
 * Interface names come from the kernel and our own constant, never from the pod's spec.
 */
export async function attachPodNetwork(
  netnsPath: string,
  tap = "tap0_chv",
  opts: { tapGroup?: number } = {},
): Promise<PodNetwork> {
  const iface = await readPodInterface(netnsPath);
  await filterTap(netnsPath, netnsPath, tap, iface, ["create", opts.tapGroup?.toString() ?? ""]);
  return detachable(netnsPath, tap, iface);
}

/** The attached network: its detach removes the TAP and the veth's qdisc (one spawn). */
function detachable(netnsPath: string, tap: string, iface: PodInterface): PodNetwork {
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
      const done = await netnsScript(via ?? netnsPath, DETACH_SCRIPT, [tap, iface.name]);
      if (done.code !== 0) throw new ExecError(done);
    },
  };
}

/**
 * Runs FILTER_SCRIPT for `tap` in the pod netns (from `from`: the pod netns itself, or the VMM's,
 * whence MOVE_SCRIPT moves the TAP first). On failure what the script did is removed here, and
 * what was there before (someone else's qdisc on the veth: tc's line 1 failed) is kept.
 */
async function filterTap(
  from: string,
  netnsPath: string,
  tap: string,
  iface: PodInterface,
  create: [string, string] = ["", ""],
): Promise<void> {
  const args = [tap, String(iface.mtu), ...create, ...tapSysctls(tap, existsSync("/proc/sys/net/ipv6"))];
  const batch = [
    `qdisc add dev ${iface.name} ingress`,
    `qdisc add dev ${tap} ingress`,
    redirect(iface.name, tap),
    ...antiSpoofFilters(tap, iface),
  ];
  const result =
    from === netnsPath
      ? await netnsScript(netnsPath, FILTER_SCRIPT, args, batch)
      : await netnsScript(from, MOVE_SCRIPT, [FILTER_SCRIPT, tap, netnsPath, ...args.slice(1)], batch);
  if (result.code === 0) return;
  const step = STEP_EXIT[result.code ?? -1];
  // tc's line 1 is the veth's qdisc: if that failed, a qdisc already there is not ours to drop.
  const tcLine = Number(/Command failed -:(\d+)/.exec(result.stderr)?.[1] ?? 0);
  const vethQdiscOurs =
    (step === "tc -batch -" && tcLine > 1) || step === "sysctl" || step === "ip link set up";
  // Quietly: the TAP is where the script left it (not moved when the move failed).
  await Promise.all([
    step === "ip link set netns" || !step
      ? exec(["nsenter", `--net=${from}`, "--", "ip", "link", "del", tap])
      : undefined,
    exec(["nsenter", `--net=${netnsPath}`, "--", "ip", "link", "del", tap]),
    vethQdiscOurs
      ? exec(["nsenter", `--net=${netnsPath}`, "--", "tc", "qdisc", "del", "dev", iface.name, "ingress"])
      : undefined,
  ]);
  const detail = truncateUntrusted(result.stderr.trim().split("\n").slice(-5).join("\n"), 2000);
  throw new NetworkError(
    `setting up ${tap} in pod netns ${netnsPath}: ${step ?? `nsenter/sh (exit ${result.code ?? result.signal})`} failed${detail ? `: ${detail}` : ""}`,
  );
}

/**
 * A pool VM's NIC (pod/pool.ts): its VMM runs in an empty netns of its own. The TAP is made
 * there (owned by the VMM group) while the pod's interface is read, the VMM attaches to it by
 * hot-plug (`addNet`, with the veth's MAC), and only then is it moved into the pod's netns; the
 * VMM's open TAP file follows the device. In the pod netns it gets the same filters and settings
 * as attachPodNetwork's and comes up last, so no frame passes before the filters are in place.
 * Three spawns in all (read, TAP, move + filters), the first two at once.
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
  // Until it moves, the TAP would die with the VMM's netns; a quiet delete also covers a
  // failed or half-done add.
  const dropUnmoved = () => exec(["nsenter", `--net=${vmmNetns}`, "--", "ip", "link", "del", tap]);
  const group = opts.tapGroup === undefined ? [] : ["group", String(opts.tapGroup)];
  const [read, made] = await Promise.allSettled([
    readPodInterface(netnsPath),
    inNetns(vmmNetns, ["ip", "tuntap", "add", "dev", tap, "mode", "tap", ...group]),
  ]);
  if (read.status === "rejected" || made.status === "rejected") {
    await dropUnmoved();
    throw read.status === "rejected" ? read.reason : (made as PromiseRejectedResult).reason;
  }
  const iface = read.value;
  try {
    await addNet({ tap, mac: iface.mac, id: "net0" });
    await filterTap(vmmNetns, netnsPath, tap, iface);
  } catch (err) {
    await dropUnmoved();
    throw err;
  }
  return detachable(netnsPath, tap, iface);
}

/**
 * A pool VM's NIC from its boot (pod/pool.ts POOL_BOOT_NIC): its TAP waits in the VMM's own
 * empty netns, where nothing reaches it. Once the pod's interface is read, the TAP is moved into
 * the pod's netns with one more spawn (MOVE_SCRIPT), gets the same filters and settings as
 * attachPodNetwork's, and comes up last. The guest then gives its NIC the pod's MAC (the agent,
 * told the placeholder): whatever MAC it sets, only the pod's passes the filters. On a failure
 * the TAP is removed, or dies with the VMM's netns when the caller stops the VM.
 */
export async function attachBootNic(
  vmmPid: number,
  netnsPath: string,
  tap = "tap0_chv",
): Promise<PodNetwork> {
  const iface = await readPodInterface(netnsPath);
  await filterTap(`/proc/${vmmPid}/ns/net`, netnsPath, tap, iface);
  return detachable(netnsPath, tap, iface);
}
