// Where the shim daemon for this build and this containerd listens. The build id is in the
// name, so an upgraded shim starts a new daemon for new tasks while the old one keeps serving
// its own; containerd's address is in it so two containerds never share event streams.
import { createHash } from "node:crypto";
import { statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const SHIM_VERSION = "0.1.0";

/** The daemon's entry script, next to this module in dist/. */
export const DAEMON_ENTRY = fileURLToPath(new URL("../daemon/main.js", import.meta.url));

/** Version plus the daemon entry's mtime: changes with every build, costs one stat. */
export function buildId(): string {
  const mtime = statSync(DAEMON_ENTRY).mtimeMs;
  return createHash("sha256").update(`${SHIM_VERSION}:${mtime}`).digest("hex").slice(0, 12);
}

export function daemonSocketPath(stateDir: string, containerdTtrpcAddress: string): string {
  const which = createHash("sha256")
    .update(`${buildId()}\0${containerdTtrpcAddress}`)
    .digest("hex")
    .slice(0, 16);
  return path.join(stateDir, `shim-${which}.sock`);
}

export const SOCKET_SCHEME = "unix://";

/** The task API socket for one containerd namespace, next to the daemon's control socket. */
export function namespaceSocketPath(controlSocket: string, namespace: string): string {
  const which = createHash("sha256").update(namespace).digest("hex").slice(0, 12);
  return controlSocket.replace(/\.sock$/, `-${which}.sock`);
}
