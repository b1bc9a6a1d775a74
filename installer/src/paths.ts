// The names and host paths the installer owns (docs/operations.md, Install), and the mapping from a
// host path (/opt/cloudhv) to where it is seen from here (<host root>/opt/cloudhv).
import path from "node:path";

export const RUNTIME_TYPE = "io.containerd.cloudhv.v1";
export const SHIM_NAME = "containerd-shim-cloudhv-v1";
export const HANDLER = "cloudhv";
export const NODE_LABEL = "cloudhv.io/runtime";
export const NODE_LABEL_VALUE = "ready";

/** Host install dir: bin/, vmlinux, rootfs.erofs, config.json, versions/<version>/. */
export const INSTALL_DIR = "/opt/cloudhv";
export const VERSIONS_DIR = `${INSTALL_DIR}/versions`;
export const BIN_DIR = `${INSTALL_DIR}/bin`;
/** What containerd runs (CRI `runtime_path`): a launcher script for the current version. */
export const LAUNCHER = `${BIN_DIR}/${SHIM_NAME}`;
/** The operator's command (`cloudhv doctor`): a launcher for the current version's shim CLI. */
export const CLI_LAUNCHER = `${BIN_DIR}/cloudhv`;
/** A link to the launcher on containerd's default PATH (for `ctr run --runtime …`). */
export const PATH_LINK = `/usr/local/bin/${SHIM_NAME}`;
export const RUNTIME_CONFIG = `${INSTALL_DIR}/config.json`;
export const KERNEL = `${INSTALL_DIR}/vmlinux`;
export const ROOTFS = `${INSTALL_DIR}/rootfs.erofs`;
export const CLOUD_HYPERVISOR = `${BIN_DIR}/cloud-hypervisor`;
/** Serves pods' shared volumes (the runtime config's virtiofsd_binary default). */
export const VIRTIOFSD = `${BIN_DIR}/virtiofsd`;
/** Carries CRI port-forward into pods (the runtime config's port_forward_binary default). */
export const PORT_FORWARD = `${BIN_DIR}/cloudhv-portfwd`;
/** Sets up pods' TAPs and filters by netlink (the runtime config's net_helper_binary default). */
export const NET_HELPER = `${BIN_DIR}/cloudhv-net`;
export const CURRENT_LINK = `${INSTALL_DIR}/current`;
export const PREVIOUS_LINK = `${INSTALL_DIR}/previous`;
/** What the installer did (versions, containerd config hashes): uninstall and status read it. */
export const STATE_FILE = `${INSTALL_DIR}/installer-state.json`;
/** Byte-for-byte copies of the containerd config files as they were before the first install. */
export const BACKUP_DIR = `${INSTALL_DIR}/backup`;

/** Where the installer image keeps what it copies onto nodes. */
export const DEFAULT_ARTIFACTS = "/opt/cloudhv-dist";
export const DEFAULT_HOST_ROOT = "/host";

/** Maps host paths to paths under the host root this process sees (`/host` in the DaemonSet). */
export class HostRoot {
  readonly root: string;
  constructor(root: string) {
    this.root = path.resolve(root);
  }

  /** `/opt/cloudhv` → `<root>/opt/cloudhv`. */
  path(hostPath: string): string {
    if (!path.isAbsolute(hostPath)) throw new Error(`host path ${hostPath} must be absolute`);
    return path.join(this.root, hostPath);
  }

  /** True when this process sees the host's filesystem as its own (tools can be run directly). */
  get isSlash(): boolean {
    return this.root === "/";
  }
}
