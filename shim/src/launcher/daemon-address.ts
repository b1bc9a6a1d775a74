// Where the shim daemon for this build, this runtime config and this containerd listens. The
// build id is in the name, so an upgraded shim starts a new daemon for new tasks while the old
// one keeps serving its own; so is a digest of the runtime config, because the daemon reads it
// once: a changed config.json reaches the next pod the same way an upgrade does. containerd's
// address is in it so two containerds never share event streams.
import { createHash } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const SHIM_VERSION = "0.1.0";

/** The daemon's entry script, next to this module in dist/. */
export const DAEMON_ENTRY = fileURLToPath(new URL("../bin/daemon.js", import.meta.url));
/** The front's entry script: the process that owns containerd's sockets (bin/front.ts). */
export const FRONT_ENTRY = fileURLToPath(new URL("../bin/front.js", import.meta.url));

/** The compiled launcher (host/launcher), installed as containerd-shim-cloudhv-v1 in dist/. */
export const LAUNCHER_ENTRY = fileURLToPath(new URL("../../containerd-shim-cloudhv-v1", import.meta.url));
/**
 * Written by `npm run build` (shim/scripts/finish-dist.mjs): a digest of every compiled module,
 * at `<dist>/src/build-id`. A file, not an mtime, so the compiled launcher reads the very same id.
 */
export const BUILD_ID_FILE = fileURLToPath(new URL("../build-id", import.meta.url));
export const BUILD_ID_PATTERN = /^[0-9a-f]{12}$/;

/**
 * The id of the build whose daemon entry is `entry`: its build-id file (without one, a bare
 * `tsc -b`: version plus the entry's mtime) together with where the build lives. The place
 * matters: a copy of the same build elsewhere (each installed version has its own
 * /opt/cloudhv/versions/<version>/, whose image layers all carry mtime 0) is another daemon, so
 * an upgrade's new pods reach the new build's daemon. host/launcher/src/address.rs computes the
 * same (shim/test/launcher-agreement proves it).
 */
export function buildId(entry: string = DAEMON_ENTRY): string {
  const dist = path.resolve(path.dirname(entry), "../..");
  let id: string | undefined;
  try {
    id = readFileSync(path.join(dist, "src", "build-id"), "utf8");
  } catch {}
  if (!id || !BUILD_ID_PATTERN.test(id)) {
    const mtime = statSync(entry).mtimeMs;
    id = createHash("sha256").update(`${SHIM_VERSION}:${mtime}`).digest("hex").slice(0, 12);
  }
  return createHash("sha256").update(`${id}\0${dist}`).digest("hex").slice(0, 12);
}

/** `configText`: the runtime config file's bytes as read ("" when there is none). */
export function daemonSocketPath(
  stateDir: string,
  containerdTtrpcAddress: string,
  configText: string,
): string {
  return daemonSocketPathFor(buildId(), stateDir, containerdTtrpcAddress, configText);
}

/** daemonSocketPath for a given build id (the compiled launcher computes the same; a test proves it). */
export function daemonSocketPathFor(
  build: string,
  stateDir: string,
  containerdTtrpcAddress: string,
  configText: string,
): string {
  const which = createHash("sha256")
    .update(`${build}\0${containerdTtrpcAddress}\0${configText}`)
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
