// containerd hands the shim a container's rootfs as mounts (containerd.types.Mount). This turns
// them into a RootfsSource: the read-only layers (overlay order) and the writable layer, or a
// RootfsError that names the mount and the option it cannot handle.
import path from "node:path";
import { RootfsError } from "./errors.js";

/** containerd.types.Mount as it arrives in CreateTaskRequest.rootfs. */
export interface ContainerdMount {
  type: string;
  source: string;
  target?: string;
  options: readonly string[];
}

export interface RootfsSource {
  /** Read-only layer directories, topmost first (overlayfs `lowerdir` order). May be empty. */
  lowerDirs: readonly string[];
  /** The container's writable layer (the snapshotter's active snapshot), if any. */
  upperDir?: string;
  /** overlayfs work directory that goes with upperDir. */
  workDir?: string;
  /** True for a view (no writable layer, or mounted `ro`). */
  readOnly: boolean;
}

/** overlay options that do not change what the merged tree contains. */
const OVERLAY_HARMLESS = new Set([
  "ro",
  "rw",
  "index=off",
  "index=on",
  "userxattr",
  "volatile",
  "metacopy=off",
  "redirect_dir=off",
  "redirect_dir=nofollow",
  "redirect_dir=follow",
  "redirect_dir=on",
  "nfs_export=off",
  "xino=off",
  "xino=auto",
  "xino=on",
]);

/** bind options that do not change what the tree contains. */
const BIND_HARMLESS = new Set([
  "bind",
  "rbind",
  "ro",
  "rw",
  "private",
  "rprivate",
  "slave",
  "rslave",
  "nosuid",
  "nodev",
  "noexec",
  "relatime",
  "noatime",
]);

/** Parses the rootfs mounts of one container (containerd gives exactly one for overlayfs). */
export function parseRootfsMounts(mounts: readonly ContainerdMount[]): RootfsSource {
  if (mounts.length === 0) {
    throw new RootfsError("InvalidArgument", "rootfs: no mounts given; one overlay or bind mount is needed");
  }
  if (mounts.length > 1) {
    const types = mounts.map((m) => m.type).join(", ");
    throw new RootfsError(
      "InvalidArgument",
      `rootfs: ${mounts.length} mounts given (${types}); exactly one overlay or bind mount is supported`,
    );
  }
  const mount = mounts[0] as ContainerdMount;
  switch (mount.type) {
    case "overlay":
      return parseOverlay(mount);
    case "bind":
    case "rbind":
      return parseBind(mount);
    default:
      throw new RootfsError(
        "InvalidArgument",
        `${describe(mount)}: mount type "${mount.type}" is not supported (supported: overlay, bind)`,
      );
  }
}

function parseOverlay(mount: ContainerdMount): RootfsSource {
  let lowerDirs: string[] | undefined;
  let upperDir: string | undefined;
  let workDir: string | undefined;
  let readOnly = false;
  for (const option of mount.options) {
    const eq = option.indexOf("=");
    const name = eq === -1 ? option : option.slice(0, eq);
    const value = eq === -1 ? "" : option.slice(eq + 1);
    const once = <T>(previous: T | undefined): void => {
      if (previous !== undefined) {
        throw new RootfsError("InvalidArgument", `${describe(mount)}: option "${name}" is given twice`);
      }
    };
    switch (name) {
      case "lowerdir":
        once(lowerDirs);
        lowerDirs = splitLowerdir(value).map((dir) => absolute(mount, option, dir));
        if (lowerDirs.length === 0 || lowerDirs.some((dir) => dir === "")) {
          throw new RootfsError(
            "InvalidArgument",
            `${describe(mount)}: option "${option}" has an empty directory`,
          );
        }
        break;
      case "upperdir":
        once(upperDir);
        upperDir = absolute(mount, option, value);
        break;
      case "workdir":
        once(workDir);
        workDir = absolute(mount, option, value);
        break;
      default:
        if (!OVERLAY_HARMLESS.has(option)) {
          throw new RootfsError(
            "InvalidArgument",
            `${describe(mount)}: option "${option}" is not supported ` +
              `(supported: lowerdir, upperdir, workdir, ${[...OVERLAY_HARMLESS].join(", ")})`,
          );
        }
        if (option === "ro") readOnly = true;
    }
  }
  if (!lowerDirs) {
    throw new RootfsError("InvalidArgument", `${describe(mount)}: option "lowerdir" is missing`);
  }
  if ((upperDir === undefined) !== (workDir === undefined)) {
    const missing = upperDir === undefined ? "upperdir" : "workdir";
    const present = upperDir === undefined ? "workdir" : "upperdir";
    throw new RootfsError(
      "InvalidArgument",
      `${describe(mount)}: option "${present}" needs "${missing}", which is missing`,
    );
  }
  return {
    lowerDirs,
    ...(upperDir !== undefined ? { upperDir } : {}),
    ...(workDir !== undefined ? { workDir } : {}),
    readOnly: readOnly || upperDir === undefined,
  };
}

function parseBind(mount: ContainerdMount): RootfsSource {
  for (const option of mount.options) {
    if (!BIND_HARMLESS.has(option)) {
      throw new RootfsError(
        "InvalidArgument",
        `${describe(mount)}: option "${option}" is not supported (supported: ${[...BIND_HARMLESS].join(", ")})`,
      );
    }
  }
  const dir = absolute(mount, "source", mount.source);
  // A read-only bind is a view of one committed snapshot; a writable one is an active snapshot
  // with no parent, so the whole tree is the container's writable layer.
  return mount.options.includes("ro")
    ? { lowerDirs: [dir], readOnly: true }
    : { lowerDirs: [], upperDir: dir, readOnly: false };
}

/** Splits an overlay `lowerdir` value at unescaped colons (`\:` is a literal colon). */
export function splitLowerdir(value: string): string[] {
  const dirs: string[] = [];
  let current = "";
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (c === "\\" && i + 1 < value.length) {
      current += value[++i];
    } else if (c === ":") {
      dirs.push(current);
      current = "";
    } else {
      current += c;
    }
  }
  dirs.push(current);
  return dirs;
}

function absolute(mount: ContainerdMount, option: string, dir: string): string {
  if (dir === "") return dir;
  if (!path.isAbsolute(dir)) {
    throw new RootfsError(
      "InvalidArgument",
      `${describe(mount)}: "${option}" has a relative path "${dir}"; absolute paths only`,
    );
  }
  return path.resolve(dir);
}

function describe(mount: ContainerdMount): string {
  return `rootfs mount (type "${mount.type}", source "${mount.source}")`;
}
