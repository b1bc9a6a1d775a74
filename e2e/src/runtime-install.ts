// Installs the cloudhv runtime from this working tree for a private containerd: the shim
// binary (the compiled launcher in front of the Node.js shim, as on a node) on a PATH
// directory of its own, and a runtime config pointing at build/guest/.
import { access, chmod, mkdir, rm, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { QEMU_ACCEL } from "./accel.js";
import { guestArtifacts, REPO_ROOT } from "./artifacts.js";

export interface RuntimeInstall {
  dir: string;
  configPath: string;
  stateDir: string;
  /** The shim daemons' logs (`shim-*.log`, rotated). */
  logDir: string;
  cacheDir: string;
  /** Environment to start containerd with, so it finds our shim and the shim our config. */
  env: NodeJS.ProcessEnv;
}

export const SHIM_ENTRY = path.join(REPO_ROOT, "shim/dist/src/bin/shim.js");
/** The compiled launcher (host/launcher), put there by `npm run build`. */
export const LAUNCHER_ENTRY = path.join(REPO_ROOT, "shim/dist/containerd-shim-cloudhv-v1");

export async function installRuntime(
  dir: string,
  overrides: Record<string, unknown> = {},
): Promise<RuntimeInstall> {
  const { kernelPath, rootfsPath } = guestArtifacts();
  const binDir = path.join(dir, "bin");
  await mkdir(binDir, { recursive: true });
  await chmod(SHIM_ENTRY, 0o755);
  await access(LAUNCHER_ENTRY).catch(() => {
    throw new Error(`${LAUNCHER_ENTRY} is missing: run scripts/dev.sh setup (builds the shim launcher)`);
  });
  const shimLink = path.join(binDir, "containerd-shim-cloudhv-v1");
  await rm(shimLink, { force: true });
  // containerd runs the launcher; it runs shim.js (next to it) for anything but the fast path.
  await symlink(LAUNCHER_ENTRY, shimLink);
  const stateDir = path.join(dir, "run");
  const logDir = path.join(dir, "log");
  const cacheDir = path.join(dir, "cache");
  const configPath = path.join(dir, "config.json");
  await writeFile(
    configPath,
    JSON.stringify(
      {
        hypervisor: "qemu",
        qemu_accel: QEMU_ACCEL,
        kernel_path: kernelPath,
        rootfs_path: rootfsPath,
        // Built by host/virtiofsd/build.sh (scripts/dev.sh setup).
        virtiofsd_binary: path.join(REPO_ROOT, "build/host/virtiofsd"),
        // Built with the agent by guest/agent/build.sh.
        port_forward_binary: path.join(REPO_ROOT, "build/host/cloudhv-portfwd"),
        net_helper_binary: path.join(REPO_ROOT, "build/host/cloudhv-net"),
        state_dir: stateDir,
        log_dir: logDir,
        cache_dir: cacheDir,
        scratch_dir: path.join(dir, "scratch"),
        scratch_size: "1Gi",
        // No warm pool unless a test asks (pool.test, CLOUDHV_E2E_POOL): on 2 TCG cores a pool
        // VM booting beside every test's own VMs would slow them all and skew their counts.
        pool: 0,
        // Logs kept for reading afterwards (harness.ts) are worth their detail.
        ...(process.env.CLOUDHV_E2E_KEEP_LOGS ? { log_level: "debug" } : {}),
        ...overrides,
      },
      null,
      2,
    ),
  );
  return {
    dir,
    configPath,
    stateDir,
    logDir,
    cacheDir,
    env: {
      ...process.env,
      PATH: `${binDir}:${process.env.PATH ?? "/usr/bin:/bin"}`,
      CLOUDHV_CONFIG: configPath,
    },
  };
}
