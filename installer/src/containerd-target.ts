// Which containerd this node runs and where its config lives: plain containerd
// (/etc/containerd/config.toml), k3s or rke2 (a generated config.toml we must not edit, and a
// config.toml.tmpl / config-v3.toml.tmpl template that k3s renders on every start).
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import {
  type ConfigVersion,
  ContainerdConfigError,
  declaredVersion,
  parseToml,
} from "./containerd-config.js";
import { exists, readIfExists } from "./fsutil.js";
import type { HostRoot } from "./paths.js";

export type Flavor = "containerd" | "k3s" | "rke2";

export interface ContainerdTarget {
  flavor: Flavor;
  /** Host path of the file we edit: containerd's config.toml, or k3s/rke2's template. */
  configPath: string;
  /** k3s/rke2: the config.toml they generate (read for its version, never written). */
  generatedPath?: string;
  version: ConfigVersion;
  /** Host path of containerd's gRPC socket. */
  address: string;
  /** systemd units that may run it, first active one wins. */
  services: string[];
  /** Whether the config file existed. */
  existed: boolean;
}

export const DEFAULT_CONFIG = "/etc/containerd/config.toml";
export const DEFAULT_ADDRESS = "/run/containerd/containerd.sock";
export const DROP_IN = "/etc/containerd/conf.d/cloudhv.toml";

const RANCHER: Record<"k3s" | "rke2", { dir: string; services: string[] }> = {
  k3s: { dir: "/var/lib/rancher/k3s/agent/etc/containerd", services: ["k3s", "k3s-agent"] },
  rke2: { dir: "/var/lib/rancher/rke2/agent/etc/containerd", services: ["rke2-server", "rke2-agent"] },
};
const RANCHER_ADDRESS = "/run/k3s/containerd/containerd.sock";

export interface TargetOptions {
  /** Host path of containerd's config, when not the default (plain containerd only). */
  configPath?: string | undefined;
  /** Force the format (needed when there is no config file and no containerd binary to ask). */
  version?: ConfigVersion | undefined;
}

export async function detectTarget(root: HostRoot, opts: TargetOptions = {}): Promise<ContainerdTarget> {
  if (!opts.configPath) {
    for (const flavor of ["k3s", "rke2"] as const) {
      const { dir, services } = RANCHER[flavor];
      const generatedPath = `${dir}/config.toml`;
      const generated = await readIfExists(root.path(generatedPath));
      if (!generated) continue;
      // k3s renders config.toml from a template on every start: we edit the template.
      const doc = parseToml(generated.toString("utf8"), root.path(generatedPath));
      const version = opts.version ?? declaredVersion(doc, generatedPath) ?? 1;
      const configPath = `${dir}/${version === 3 ? "config-v3.toml.tmpl" : "config.toml.tmpl"}`;
      return {
        flavor,
        configPath,
        generatedPath,
        version,
        address: RANCHER_ADDRESS,
        services,
        existed: await exists(root.path(configPath)),
      };
    }
  }
  const configPath = opts.configPath ?? DEFAULT_CONFIG;
  const text = await readIfExists(root.path(configPath));
  let version: ConfigVersion | undefined = opts.version;
  let address = DEFAULT_ADDRESS;
  if (text) {
    const doc = parseToml(text.toString("utf8"), root.path(configPath));
    const declared = declaredVersion(doc, configPath);
    if (opts.version && declared && declared !== opts.version)
      throw new ContainerdConfigError(
        `${configPath} declares version = ${declared} but --config-version ${opts.version} was given`,
      );
    version ??= declared;
    const grpc = doc.grpc as { address?: unknown } | undefined;
    if (typeof grpc?.address === "string" && grpc.address) address = grpc.address;
  }
  // No file, or a file without `version`: containerd's own major version decides.
  if (version === undefined) {
    const major = await containerdMajor(root);
    if (major === undefined)
      throw new ContainerdConfigError(
        `cannot tell the containerd config format: ${configPath} ${text ? "has no version" : "does not exist"} and no containerd binary answered under ${root.root}; pass --config-version 2 (containerd 1.x) or 3 (2.x)`,
      );
    version = major >= 2 ? 3 : text ? 1 : 2;
  }
  return {
    flavor: "containerd",
    configPath,
    version,
    address,
    services: ["containerd"],
    existed: text !== undefined,
  };
}

/** `containerd --version` of the host's binary, run inside the host root. */
async function containerdMajor(root: HostRoot): Promise<number | undefined> {
  for (const bin of ["/usr/bin/containerd", "/usr/local/bin/containerd"]) {
    if (!(await exists(root.path(bin)))) continue;
    const argv = root.isSlash ? [bin, "--version"] : ["chroot", root.root, bin, "--version"];
    try {
      const { stdout } = await promisify(execFile)(argv[0] as string, argv.slice(1), { timeout: 10_000 });
      const m = /\sv?(\d+)\.\d+/.exec(stdout);
      if (m) return Number(m[1]);
    } catch {
      // Try the next one.
    }
  }
  return undefined;
}
