// The OCI runtime spec of a bundle (config.json): the parts the host reads before the guest
// gets the whole document.
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
