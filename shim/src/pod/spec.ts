// The OCI runtime spec of a bundle (config.json): the parts the host reads before the guest
// gets the whole document.
import { statSync } from "node:fs";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { invalid } from "../errors.js";

export interface OciSpec {
  annotations?: Record<string, unknown>;
  /** containerd's CRI writes kubelet's score for the container (-998 for every sandbox). */
  process?: { oomScoreAdj?: number };
  linux?: {
    namespaces?: Array<{ type?: string; path?: string }>;
    /** The pod's cgroup (cgroup/path.ts). */
    cgroupsPath?: string;
    resources?: OciResources;
  };
  mounts?: Array<{ destination: string; type?: string; source?: string; options?: string[] }>;
}

/** The part of linux.resources that bounds a VM's size (a standalone task's limits). */
export interface OciResources {
  cpu?: { quota?: number; period?: number; shares?: number };
  memory?: { limit?: number };
}

export interface OciSpecFile {
  /** The file as containerd wrote it; the guest gets these bytes when nothing is rewritten. */
  bytes: Buffer;
  doc: OciSpec;
}

export async function readOciSpec(bundle: string): Promise<OciSpecFile> {
  const specPath = path.join(bundle, "config.json");
  const bytes = await readFile(specPath).catch((err: Error) => {
    throw invalid(`cannot read the OCI spec ${specPath}: ${err.message}`);
  });
  try {
    return { bytes, doc: JSON.parse(bytes.toString("utf8")) as OciSpec };
  } catch (err) {
    throw invalid(`OCI spec ${specPath} is not valid JSON: ${(err as Error).message}`);
  }
}

/** The pod's network namespace, made by CNI; absent for a task without a pod network. */
export function podNetnsPath(spec: OciSpec): string | undefined {
  return spec.linux?.namespaces?.find((n) => n.type === "network" && n.path)?.path;
}

/** The Kubernetes setting behind each namespace a CRI sandbox can take from the host. */
const HOST_SETTINGS = [
  { type: "network", setting: "hostNetwork", what: "the pod's network is the VM's own NIC" },
  { type: "pid", setting: "hostPID", what: "the pod's processes live in the VM's kernel" },
  { type: "ipc", setting: "hostIPC", what: "the pod's IPC objects live in the VM's kernel" },
] as const;

/**
 * The host namespaces a CRI sandbox asks for: containerd leaves a namespace out of the sandbox
 * spec for hostNetwork/hostPID/hostIPC (a pod network is a path to CNI's netns; pid and ipc
 * are new ones). A path that names the host's own namespace counts too (`isHost` compares it).
 */
export function hostNamespacesAsked(
  spec: OciSpec,
  isHost: (type: string, path: string) => boolean,
): Array<(typeof HOST_SETTINGS)[number]> {
  const namespaces = spec.linux?.namespaces ?? [];
  return HOST_SETTINGS.filter(({ type }) => {
    const ns = namespaces.find((n) => n.type === type);
    return !ns || (typeof ns.path === "string" && ns.path !== "" && isHost(type, ns.path));
  });
}

/** Refuses a CRI sandbox that asks for host namespaces: a VM cannot share them. */
export function refuseHostNamespaces(
  sandboxId: string,
  spec: OciSpec,
  isHost: (type: string, path: string) => boolean,
): void {
  const asked = hostNamespacesAsked(spec, isHost);
  if (asked.length === 0) return;
  const names = asked.map((a) => a.setting).join(", ");
  throw invalid(
    `pod sandbox ${sandboxId}: cloudhv runs each pod in its own VM; ${names} cannot be honoured ` +
      `(${asked.map((a) => a.what).join("; ")}). Remove ${asked.map((a) => `${a.setting}: true`).join(", ")} ` +
      "from the pod spec, or run this pod with a RuntimeClass that shares the node's namespaces (runc)",
  );
}

/** Whether `path` is the namespace of that type the host's PID 1 is in (same device and inode). */
export function isHostNamespace(type: string, path: string): boolean {
  const file = { network: "net", pid: "pid", ipc: "ipc" }[type];
  if (!file) return false;
  try {
    const ours = statSync(path);
    const host = statSync(`/proc/1/ns/${file}`);
    return ours.dev === host.dev && ours.ino === host.ino;
  } catch {
    // A path that cannot be read is not the host's; CNI's netns errors are reported later.
    return false;
  }
}
