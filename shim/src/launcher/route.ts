// Routing by pod: containerd 1.6 runs `shim start` for every container, and each may land on a
// different daemon than its sandbox did (an upgrade or a config change since the pod started
// changes the daemon's address). An app container must reach the daemon that runs its pod's
// VM, so `start` reads the sandbox id from the bundle's spec and reuses the address containerd
// stored in the sandbox's bundle (a sibling directory of this one).
import { readFileSync } from "node:fs";
import path from "node:path";
import { CRI_CONTAINER_TYPE, CRI_SANDBOX_ID } from "../pod/cri.js";
import { ID_PATTERN } from "../util/ids.js";

/** The sandbox's shim address for an app container's bundle, if it has one. */
export function sandboxAddress(bundleDir: string): string | undefined {
  let annotations: Record<string, unknown>;
  try {
    const spec = JSON.parse(readFileSync(path.join(bundleDir, "config.json"), "utf8")) as {
      annotations?: Record<string, unknown>;
    };
    annotations = spec.annotations ?? {};
  } catch {
    return undefined;
  }
  if (annotations[CRI_CONTAINER_TYPE] !== "container") return undefined;
  const sandboxId = annotations[CRI_SANDBOX_ID];
  // The id names a directory: only a plain id, never a path.
  if (typeof sandboxId !== "string" || !ID_PATTERN.test(sandboxId)) return undefined;
  try {
    const address = readFileSync(path.join(path.dirname(bundleDir), sandboxId, "address"), "utf8").trim();
    return /^unix:\/\/\/\S+$/.test(address) ? address : undefined;
  } catch {
    return undefined;
  }
}
