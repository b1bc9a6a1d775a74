// The installer image without a container engine: three layer directories assembled from this
// working tree and packed as an OCI image archive (`ctr images import`-able) by the same
// deterministic writer the tests use for their images.
//   base:      the C libraries node needs, nsenter (util-linux) for the restart, busybox for
//              sh/cat/chroot, /tmp
//   bundle:    /opt/cloudhv-dist, what gets copied onto nodes (node, shim, kernel, rootfs)
//   installer: /opt/cloudhv-installer (its dist/ and exactly its production dependencies);
//              it runs on the bundle's node and uses the bundle's shim package
import { execFile } from "node:child_process";
import { chmod, copyFile, cp, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { buildOciArchive } from "@cloudhv/e2e/dist/src/oci-image.js";
import { assembleBundle, productionDependencies, REPO_ROOT } from "./bundle.js";
import { DEFAULT_ARTIFACTS } from "./paths.js";

const run = promisify(execFile);

export const IMAGE_NAME = "ghcr.io/cloudhv/cloudhv-installer";
const APP_DIR = "/opt/cloudhv-installer";
export const ENTRYPOINT = "/usr/local/bin/cloudhv-installer";

export interface ImageOptions {
  archivePath: string;
  name?: string;
  kernel: string;
  rootfs: string;
  cloudHypervisor?: string | undefined;
  virtiofsd?: string | undefined;
  portForward?: string | undefined;
  netHelper?: string | undefined;
  /** Shipped as BUILD-NOTE in the bundle: another version of the same tree (an upgrade test). */
  buildNote?: string | undefined;
  /** Scratch space (default: next to the archive). */
  workDir?: string;
  /** Write the image's root filesystem here (for the Dockerfile's `COPY --from`) instead of an archive. */
  rootfsDir?: string | undefined;
}

/** Shared libraries an ELF binary loads, from ldd (absolute paths). */
async function sharedLibraries(binary: string): Promise<string[]> {
  const { stdout } = await run("ldd", [binary]);
  return [...stdout.matchAll(/(\/\S+)\s+\(0x/g)].map((m) => m[1] as string);
}

async function copyInto(root: string, file: string, as = file): Promise<void> {
  const dest = path.join(root, as);
  await mkdir(path.dirname(dest), { recursive: true });
  await copyFile(file, dest);
  await chmod(dest, 0o755);
}

async function baseLayer(dir: string, node: string): Promise<void> {
  const nsenter = "/usr/bin/nsenter";
  const libs = new Set([...(await sharedLibraries(node)), ...(await sharedLibraries(nsenter))]);
  for (const lib of libs) await copyInto(dir, lib);
  await copyInto(dir, nsenter);
  await copyInto(dir, "/bin/busybox");
  for (const applet of ["sh", "cat", "chroot", "ls", "sleep"])
    await symlink("busybox", path.join(dir, "bin", applet));
  await mkdir(path.join(dir, "tmp"), { recursive: true });
  await chmod(path.join(dir, "tmp"), 0o1777);
}

async function installerLayer(dir: string, repo: string): Promise<void> {
  const pkgDir = path.join(repo, "installer");
  const app = path.join(dir, APP_DIR.slice(1));
  await mkdir(app, { recursive: true });
  await copyFile(path.join(pkgDir, "package.json"), path.join(app, "package.json"));
  await cp(path.join(pkgDir, "dist/src"), path.join(app, "dist/src"), {
    recursive: true,
    filter: (f) => !f.endsWith(".map") && !f.endsWith(".d.ts"),
  });
  for (const name of productionDependencies(repo, pkgDir)) {
    await cp(path.join(repo, "node_modules", name), path.join(app, "node_modules", name), {
      recursive: true,
      filter: (f) => !/\.(md|map)$/.test(f) && !f.endsWith(".d.ts"),
    });
  }
  // The shim package the installer validates config.json with is the bundle's own.
  await mkdir(path.join(app, "node_modules/@cloudhv"), { recursive: true });
  await symlink(`${DEFAULT_ARTIFACTS}/shim`, path.join(app, "node_modules/@cloudhv/shim"));
  const launcher = path.join(dir, ENTRYPOINT.slice(1));
  await mkdir(path.dirname(launcher), { recursive: true });
  await writeFile(
    launcher,
    `#!/bin/sh\nexec ${DEFAULT_ARTIFACTS}/node/bin/node ${APP_DIR}/dist/src/bin/installer.js "$@"\n`,
  );
  await chmod(launcher, 0o755);
}

export async function buildImage(
  opts: ImageOptions,
): Promise<{ name: string; version: string; archivePath: string }> {
  const repo = REPO_ROOT;
  const version = (
    JSON.parse(await readFile(path.join(repo, "installer/package.json"), "utf8")) as { version: string }
  ).version;
  const name = opts.name ?? `${IMAGE_NAME}:${version}`;
  await mkdir(path.dirname(opts.archivePath), { recursive: true });
  const work = await mkdtemp(opts.workDir ?? `${opts.archivePath}.work-`);
  try {
    const [base, bundle, installer] = ["base", "bundle", "installer"].map((l) => path.join(work, l)) as [
      string,
      string,
      string,
    ];
    const manifest = await assembleBundle({
      out: path.join(bundle, DEFAULT_ARTIFACTS.slice(1)),
      kernel: opts.kernel,
      rootfs: opts.rootfs,
      cloudHypervisor: opts.cloudHypervisor,
      // Every image serves shared volumes: virtiofsd as host/virtiofsd/build.sh built it.
      virtiofsd: opts.virtiofsd ?? path.join(repo, "build/host/virtiofsd"),
      // And port-forward: cloudhv-portfwd as guest/agent/build.sh built it.
      portForward: opts.portForward ?? path.join(repo, "build/host/cloudhv-portfwd"),
      // And pod networks: cloudhv-net, built with it.
      netHelper: opts.netHelper ?? path.join(repo, "build/host/cloudhv-net"),
      buildNote: opts.buildNote,
    });
    await mkdir(base);
    await baseLayer(base, path.join(bundle, DEFAULT_ARTIFACTS.slice(1), "node/bin/node"));
    await installerLayer(installer, repo);
    if (opts.rootfsDir) {
      await rm(opts.rootfsDir, { recursive: true, force: true });
      for (const layer of [base, bundle, installer])
        await cp(layer, opts.rootfsDir, { recursive: true, verbatimSymlinks: true });
      return { name, version: manifest.version, archivePath: opts.rootfsDir };
    }
    await buildOciArchive(
      {
        name,
        layers: [base, bundle, installer],
        config: { entrypoint: [ENTRYPOINT], cmd: ["--help"] },
      },
      opts.archivePath,
    );
    return { name, version: manifest.version, archivePath: opts.archivePath };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
