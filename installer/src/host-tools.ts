// The host tools the shim runs (the same list as `cloudhv doctor`'s, plus QEMU where it may be
// needed), looked up on the node — under the host root, symlinks resolved inside it — before
// anything is installed. A node without them would take the runtime and then fail every pod.
import { lstat, readlink, stat } from "node:fs/promises";
import path from "node:path";
import type { RuntimeConfig } from "@cloudhv/shim";
import { EXIT, type ExitCode } from "./exit-codes.js";
import type { HostRoot } from "./paths.js";

export interface HostTool {
  tool: string;
  /** Debian / Ubuntu package. */
  deb: string;
  /** RHEL / Fedora package. */
  rpm: string;
  why: string;
}

export const HOST_TOOLS: readonly HostTool[] = [
  { tool: "mkfs.erofs", deb: "erofs-utils", rpm: "erofs-utils", why: "container images as erofs disks" },
  { tool: "mkfs.ext4", deb: "e2fsprogs", rpm: "e2fsprogs", why: "per-container scratch disks" },
  { tool: "ip", deb: "iproute2", rpm: "iproute", why: "TAP devices in the pod netns" },
  { tool: "tc", deb: "iproute2", rpm: "iproute-tc", why: "veth ⇄ TAP redirects" },
  { tool: "nsenter", deb: "util-linux", rpm: "util-linux", why: "starting the VMM in the pod netns" },
  { tool: "setpriv", deb: "util-linux", rpm: "util-linux", why: "VMMs die with the shim daemon" },
  {
    tool: "unshare",
    deb: "util-linux",
    rpm: "util-linux",
    why: "each pod's mount namespace for its volumes",
  },
  {
    tool: "taskset",
    deb: "util-linux",
    rpm: "util-linux",
    why: "binding a pod's mount namespace on Linux ≥ 6.18",
  },
];

const QEMU: Omit<HostTool, "tool"> = { deb: "qemu-system-x86", rpm: "qemu-kvm", why: "runs the VMs" };

/** Where the shim's PATH finds tools (root's directories, as `cloudhv doctor` looks). */
export const TOOL_DIRS = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

export class MissingToolsError extends Error {
  override readonly name = "MissingToolsError";
  readonly exitCode: ExitCode = EXIT.MISSING_TOOLS;
  constructor(
    message: string,
    readonly missing: HostTool[],
  ) {
    super(message);
  }
}

/**
 * A host path resolved the way the node itself would, but inside the host root: an absolute
 * link target (/usr/bin/ip → /bin/ip) is taken from the root, not from this container.
 */
export async function resolveInRoot(root: HostRoot, hostPath: string): Promise<string | undefined> {
  let parts = hostPath.split("/").filter(Boolean);
  let done: string[] = [];
  for (let hops = 0; parts.length > 0; ) {
    const part = parts.shift() as string;
    if (part === ".") continue;
    if (part === "..") {
      done.pop();
      continue;
    }
    const candidate = `/${[...done, part].join("/")}`;
    const st = await lstat(root.path(candidate)).catch(() => undefined);
    if (!st) return undefined;
    if (!st.isSymbolicLink()) {
      done.push(part);
      continue;
    }
    if (++hops > 40) return undefined;
    const target = await readlink(root.path(candidate));
    if (target.startsWith("/")) done = [];
    parts = [...target.split("/").filter(Boolean), ...parts];
  }
  return `/${done.join("/")}`;
}

/** The host path of an executable `name` (or path), or undefined. */
export async function findHostTool(root: HostRoot, name: string): Promise<string | undefined> {
  const candidates = name.includes("/") ? [name] : TOOL_DIRS.map((d) => path.posix.join(d, name));
  for (const c of candidates) {
    if (!c.startsWith("/")) continue;
    const real = await resolveInRoot(root, c);
    if (!real) continue;
    const st = await stat(root.path(real)).catch(() => undefined);
    if (st?.isFile() && (st.mode & 0o111) !== 0) return c;
  }
  return undefined;
}

/**
 * The tools this node needs. QEMU is needed unless the config picks Cloud Hypervisor, or picks
 * `auto` on a node where Cloud Hypervisor will be used (its binary installed and /dev/kvm or
 * /dev/mshv present): the shim falls back to QEMU everywhere else.
 */
export async function requiredTools(
  root: HostRoot,
  config: RuntimeConfig,
  bundleHasCloudHypervisor: boolean,
): Promise<HostTool[]> {
  const tools = [...HOST_TOOLS];
  let needQemu = config.hypervisor === "qemu";
  if (config.hypervisor === "auto") {
    const chInstalled =
      (bundleHasCloudHypervisor && config.cloud_hypervisor_binary === "/opt/cloudhv/bin/cloud-hypervisor") ||
      (await findHostTool(root, config.cloud_hypervisor_binary)) !== undefined;
    const device =
      (await lstat(root.path("/dev/kvm")).catch(() => undefined)) ??
      (await lstat(root.path("/dev/mshv")).catch(() => undefined));
    needQemu = !(chInstalled && device);
  }
  if (needQemu) tools.unshift({ tool: config.qemu_binary, ...QEMU });
  return tools;
}

/** Throws MissingToolsError naming every missing tool and its package. */
export async function checkHostTools(root: HostRoot, tools: readonly HostTool[]): Promise<void> {
  const missing: HostTool[] = [];
  for (const t of tools) if (!(await findHostTool(root, t.tool))) missing.push(t);
  if (missing.length === 0) return;
  const debs = [...new Set(missing.map((t) => t.deb))];
  const rpms = [...new Set(missing.map((t) => t.rpm))];
  throw new MissingToolsError(
    `the node lacks ${missing.length === 1 ? "a tool" : "tools"} cloudhv pods need: ${missing
      .map(
        (t) =>
          `${t.tool} (${t.why}; package ${t.deb === t.rpm ? t.deb : `${t.deb} on Debian/Ubuntu, ${t.rpm} on RHEL/Fedora`})`,
      )
      .join(
        ", ",
      )}. Looked in ${TOOL_DIRS.join(", ")} of the host${root.isSlash ? "" : ` (under ${root.root})`}. Install them on the node (apt-get install ${debs.join(" ")} / dnf install ${rpms.join(" ")}) and the installer's next run goes ahead; nothing was installed`,
    missing,
  );
}
