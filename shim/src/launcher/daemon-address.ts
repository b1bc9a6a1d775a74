// Where the shim daemon for this build, this runtime config and this containerd listens. The
// build id is in the name, so an upgraded shim starts a new daemon for new tasks while the old
// one keeps serving its own; so is a digest of the runtime config, because the daemon reads it
// once: a changed config.json reaches the next pod the same way an upgrade does. containerd's
// address is in it so two containerds never share event streams.
import { createHash } from "node:crypto";
import { statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const SHIM_VERSION = "0.1.0";

/** The daemon's entry script, next to this module in dist/. */
export const DAEMON_ENTRY = fileURLToPath(new URL("../bin/daemon.js", import.meta.url));
/** The front's entry script: the process that owns containerd's sockets (bin/front.ts). */
export const FRONT_ENTRY = fileURLToPath(new URL("../bin/front.js", import.meta.url));

/**
 * Version, the daemon entry's path and its mtime: changes with every build, costs one stat. The
 * path matters on a node: the installer image's layers carry mtime 0 (reproducible), so every
 * installed build had the same id and new pods went on to the old build's daemon after an
 * upgrade; each installed build lives in its own /opt/cloudhv/versions/<version>/.
 */
export function buildId(entry: string = DAEMON_ENTRY): string {
  const mtime = statSync(entry).mtimeMs;
  return createHash("sha256").update(`${SHIM_VERSION}:${entry}:${mtime}`).digest("hex").slice(0, 12);
}

/** `configText`: the runtime config file's bytes as read ("" when there is none). */
export function daemonSocketPath(
  stateDir: string,
  containerdTtrpcAddress: string,
  configText: string,
): string {
  const which = createHash("sha256")
    .update(`${buildId()}\0${containerdTtrpcAddress}\0${configText}`)
    .digest("hex")
    .slice(0, 16);
  return path.join(stateDir, `shim-${which}.sock`);
}

/**
 * Where the daemon itself listens behind the front: the same name in `<state_dir>/backend/`
 * (mode 0700). containerd and the shim binary only ever see the front's sockets.
 */
export function backendSocketPath(frontSocket: string): string {
  return path.join(path.dirname(frontSocket), "backend", path.basename(frontSocket));
}

/** The daemon's control socket for a namespace socket (the inverse of namespaceSocketPath). */
export function controlSocketOf(namespaceSocket: string): string | undefined {
  const control = namespaceSocket.replace(/-[0-9a-f]{12}\.sock$/, ".sock");
  return control === namespaceSocket ? undefined : control;
}

export const SOCKET_SCHEME = "unix://";

/** The task API socket for one containerd namespace, next to the daemon's control socket. */
export function namespaceSocketPath(controlSocket: string, namespace: string): string {
  const which = createHash("sha256").update(namespace).digest("hex").slice(0, 12);
  return controlSocket.replace(/\.sock$/, `-${which}.sock`);
}
