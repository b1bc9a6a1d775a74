// Where the guest build (scripts/dev.sh setup) leaves its outputs in a working tree.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

export const REPO_ROOT = fileURLToPath(new URL("../../../", import.meta.url));

export interface GuestArtifacts {
  kernelPath: string;
  rootfsPath: string;
}

/** Explicit paths win, then CLOUDHV_KERNEL / CLOUDHV_ROOTFS, then build/guest/ in this tree. */
export function guestArtifacts(explicit: Partial<GuestArtifacts> = {}): GuestArtifacts {
  const artifacts = {
    kernelPath: explicit.kernelPath ?? process.env.CLOUDHV_KERNEL ?? `${REPO_ROOT}build/guest/vmlinux`,
    rootfsPath: explicit.rootfsPath ?? process.env.CLOUDHV_ROOTFS ?? `${REPO_ROOT}build/guest/rootfs.erofs`,
  };
  for (const [what, file] of Object.entries(artifacts)) {
    if (!existsSync(file)) {
      throw new Error(
        `guest ${what.replace("Path", "")} not found at ${file}: run scripts/dev.sh setup first`,
      );
    }
  }
  return artifacts;
}
