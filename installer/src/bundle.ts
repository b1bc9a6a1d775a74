// Assembles the artifact bundle from a built working tree: the Node.js runtime, the shim (its
// dist/, protos and exactly its production dependencies), the guest kernel and rootfs, and a
// manifest with every file's sha256. The version carries a hash of the contents, so the same
// build gives the same version (install twice = install once) and any change gives a new one.
import { readFileSync } from "node:fs";
import { chmod, copyFile, cp, mkdir, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { MANIFEST, type Manifest, writeManifest } from "./artifacts.js";
import { sha256, sha256File } from "./fsutil.js";

export const REPO_ROOT = fileURLToPath(new URL("../../../", import.meta.url));

export interface BundleOptions {
  /** Output directory (created; must not exist or be empty). */
  out: string;
  kernel: string;
  rootfs: string;
  /** The node binary to ship (default: the one running this). */
  node?: string;
  /** A cloud-hypervisor binary to ship as bin/cloud-hypervisor. */
  cloudHypervisor?: string | undefined;
  /** A virtiofsd binary to ship as bin/virtiofsd (pods' shared volumes). */
  virtiofsd?: string | undefined;
  /** cloudhv-portfwd to ship as bin/cloudhv-portfwd (CRI port-forward). */
  portForward?: string | undefined;
  /** cloudhv-net to ship as bin/cloudhv-net (pod networks). */
  netHelper?: string | undefined;
  /** Text shipped as BUILD-NOTE: a rebuild of the same tree then has a version of its own. */
  buildNote?: string | undefined;
  repoRoot?: string;
}

/** Package names `pkg` needs at run time, found through node_modules (npm workspaces hoist them). */
export function productionDependencies(repoRoot: string, pkgDir: string): string[] {
  const seen = new Set<string>();
  const visit = (dir: string) => {
    const pkg = JSON.parse(readFileSync(path.join(dir, "package.json"), "utf8")) as {
      dependencies?: Record<string, string>;
      optionalDependencies?: Record<string, string>;
    };
    for (const name of Object.keys({ ...pkg.dependencies, ...pkg.optionalDependencies })) {
      if (seen.has(name) || name.startsWith("@cloudhv/")) continue;
      const found = [path.join(dir, "node_modules", name), path.join(repoRoot, "node_modules", name)].find(
        (d) => {
          try {
            readFileSync(path.join(d, "package.json"));
            return true;
          } catch {
            return false;
          }
        },
      );
      if (!found) {
        if (pkg.optionalDependencies?.[name]) continue;
        throw new Error(`dependency ${name} of ${dir} is not installed: run npm ci`);
      }
      seen.add(name);
      visit(found);
    }
  };
  visit(pkgDir);
  return [...seen].sort();
}

async function copyTree(src: string, dest: string, keep: (rel: string) => boolean, rel = ""): Promise<void> {
  for (const entry of await readdir(path.join(src, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${entry.name}` : entry.name;
    if (entry.isDirectory()) await copyTree(src, dest, keep, r);
    else if (entry.isFile() && keep(r)) {
      await mkdir(path.dirname(path.join(dest, r)), { recursive: true });
      await copyFile(path.join(src, r), path.join(dest, r));
    }
  }
}

export async function assembleBundle(opts: BundleOptions): Promise<Manifest> {
  const repo = opts.repoRoot ?? REPO_ROOT;
  const shimDir = path.join(repo, "shim");
  const out = opts.out;
  await rm(out, { recursive: true, force: true });
  await mkdir(out, { recursive: true });
  await mkdir(path.join(out, "node/bin"), { recursive: true });
  await copyFile(opts.node ?? process.execPath, path.join(out, "node/bin/node"));
  await chmod(path.join(out, "node/bin/node"), 0o755);
  const shimOut = path.join(out, "shim");
  await mkdir(shimOut, { recursive: true });
  // "type": "module" is what makes node load dist/ as ESM.
  await copyFile(path.join(shimDir, "package.json"), path.join(shimOut, "package.json"));
  await copyTree(path.join(shimDir, "proto"), path.join(shimOut, "proto"), (r) => r.endsWith(".proto"));
  await copyTree(path.join(shimDir, "dist/src"), path.join(shimOut, "dist/src"), (r) => r.endsWith(".js"));
  await stat(path.join(shimOut, "dist/src/bin/shim.js")).catch(() => {
    throw new Error(`${shimDir}/dist has no src/bin/shim.js: run npm run build`);
  });
  // The build id (daemon-address.ts) and the compiled launcher, where the build made them.
  for (const [rel, mode] of [
    ["dist/src/build-id", 0o644],
    ["dist/containerd-shim-cloudhv-v1", 0o755],
  ] as const) {
    const from = path.join(shimDir, rel);
    if (!(await stat(from).catch(() => undefined))) continue;
    await copyFile(from, path.join(shimOut, rel));
    await chmod(path.join(shimOut, rel), mode);
  }
  for (const name of productionDependencies(repo, shimDir)) {
    const src = [path.join(shimDir, "node_modules", name), path.join(repo, "node_modules", name)];
    const from = (
      await Promise.all(
        src.map((d) =>
          stat(d).then(
            () => d,
            () => undefined,
          ),
        ),
      )
    ).find(Boolean) as string;
    await cp(from, path.join(shimOut, "node_modules", name), {
      recursive: true,
      filter: (f) => !/\.(md|map|ts)$/.test(f) || f.endsWith(".js"),
    });
  }
  await copyFile(opts.kernel, path.join(out, "vmlinux"));
  await copyFile(opts.rootfs, path.join(out, "rootfs.erofs"));
  for (const [from, name] of [
    [opts.cloudHypervisor, "bin/cloud-hypervisor"],
    [opts.virtiofsd, "bin/virtiofsd"],
    [opts.portForward, "bin/cloudhv-portfwd"],
    [opts.netHelper, "bin/cloudhv-net"],
  ] as const) {
    if (!from) continue;
    await mkdir(path.join(out, "bin"), { recursive: true });
    await copyFile(from, path.join(out, name)).catch((err: Error) => {
      throw new Error(`cannot ship ${name} from ${from}: ${err.message}`);
    });
    await chmod(path.join(out, name), 0o755);
  }
  if (opts.buildNote !== undefined) {
    if (!/^[\x20-\x7e]{1,200}$/.test(opts.buildNote))
      throw new Error(
        `build note ${JSON.stringify(opts.buildNote.slice(0, 40))}: 1-200 printable ASCII characters`,
      );
    await writeFile(path.join(out, "BUILD-NOTE"), `${opts.buildNote}\n`);
  }
  // Version = shim version + hash of the contents (the manifest without its version).
  const provisional = await writeManifest(out, "0");
  const shimVersion = (
    JSON.parse(await readFile(path.join(shimDir, "package.json"), "utf8")) as { version: string }
  ).version;
  const contentHash = sha256(JSON.stringify(provisional.files)).slice(0, 12);
  return writeManifest(out, `${shimVersion}+${contentHash}`);
}

/** sha256 of a bundle's manifest (what an image build records). */
export async function manifestDigest(dir: string): Promise<string> {
  return sha256File(path.join(dir, MANIFEST));
}
