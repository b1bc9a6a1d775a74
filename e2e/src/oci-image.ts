// Test images without a registry or Docker: builds an OCI image layout archive (oci-layout,
// index.json, blobs/sha256/…) from directories, one gzip layer per directory, that
// `ctr images import` registers under a given name. Layer tars come from the system `tar` with
// fixed metadata, so the same directory gives the same layer digest every time.
import { createCipheriv, createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { chmod, mkdir, mkdtemp, rename, rm, stat, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGzip } from "node:zlib";
import { execOk } from "@cloudhv/shim";
import type { PrivateContainerd } from "./containerd.js";

export const MEDIA_TYPES = {
  index: "application/vnd.oci.image.index.v1+json",
  manifest: "application/vnd.oci.image.manifest.v1+json",
  config: "application/vnd.oci.image.config.v1+json",
  layerGzip: "application/vnd.oci.image.layer.v1.tar+gzip",
} as const;

/** The image config fields a test needs (OCI image config `config` object). */
export interface ImageConfig {
  entrypoint?: readonly string[];
  cmd?: readonly string[];
  /** `KEY=value`; default: a standard PATH. */
  env?: readonly string[];
  workingDir?: string;
  user?: string;
}

export interface OciImageSpec {
  /** Full reference, e.g. `docker.io/cloudhv-test/busybox:1`. */
  name: string;
  /** One layer per directory, bottom first. OCI whiteouts are plain files named `.wh.<name>`. */
  layers: readonly string[];
  config?: ImageConfig;
  /** OCI architecture; default: this machine's. */
  architecture?: string;
  /** gzip level for layers (default 1: test images favour build speed over size). */
  gzipLevel?: number;
}

export interface LayerInfo {
  /** sha256 of the gzip blob (the manifest's layer digest). */
  digest: string;
  /** sha256 of the uncompressed tar (the config's diff_id). */
  diffId: string;
  size: number;
}

export interface OciImage {
  name: string;
  archivePath: string;
  manifestDigest: string;
  configDigest: string;
  layers: LayerInfo[];
}

export const DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** Fixed metadata so a directory always gives the same tar. */
const DETERMINISTIC_TAR = ["--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner"];

/** Writes an OCI image layout archive for `spec` to `archivePath`. */
export async function buildOciArchive(spec: OciImageSpec, archivePath: string): Promise<OciImage> {
  if (spec.layers.length === 0) throw new Error(`image ${spec.name}: at least one layer directory is needed`);
  const tag = refTag(spec.name);
  await mkdir(path.dirname(archivePath), { recursive: true });
  const staging = await mkdtemp(`${archivePath}.staging-`);
  try {
    const blobs = path.join(staging, "blobs", "sha256");
    await mkdir(blobs, { recursive: true });

    const layers: LayerInfo[] = [];
    for (const [i, dir] of spec.layers.entries()) {
      const info = await stat(dir).catch(() => null);
      if (!info?.isDirectory()) throw new Error(`image ${spec.name}: layer ${i} (${dir}) is not a directory`);
      layers.push(await writeLayerBlob(dir, staging, blobs, spec.gzipLevel ?? 1));
    }

    const c = spec.config ?? {};
    const imageConfig = {
      created: "1970-01-01T00:00:00Z",
      architecture: spec.architecture ?? ociArchitecture(process.arch),
      os: "linux",
      config: {
        Env: [...(c.env ?? [DEFAULT_PATH_ENV])],
        ...(c.entrypoint ? { Entrypoint: [...c.entrypoint] } : {}),
        ...(c.cmd ? { Cmd: [...c.cmd] } : {}),
        ...(c.workingDir ? { WorkingDir: c.workingDir } : {}),
        ...(c.user ? { User: c.user } : {}),
      },
      rootfs: { type: "layers", diff_ids: layers.map((l) => l.diffId) },
      history: layers.map((_, i) => ({
        created: "1970-01-01T00:00:00Z",
        created_by: `cloudhv-test layer ${i}`,
      })),
    };
    const config = await writeJsonBlob(blobs, imageConfig);
    const manifest = await writeJsonBlob(blobs, {
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.manifest,
      config: { mediaType: MEDIA_TYPES.config, digest: config.digest, size: config.size },
      layers: layers.map((l) => ({ mediaType: MEDIA_TYPES.layerGzip, digest: l.digest, size: l.size })),
    });
    const index = {
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.index,
      manifests: [
        {
          mediaType: MEDIA_TYPES.manifest,
          digest: manifest.digest,
          size: manifest.size,
          annotations: { "io.containerd.image.name": spec.name, "org.opencontainers.image.ref.name": tag },
          platform: { architecture: imageConfig.architecture, os: "linux" },
        },
      ],
    };
    await writeFile(path.join(staging, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
    await writeFile(path.join(staging, "index.json"), JSON.stringify(index));

    const partial = `${archivePath}.partial`;
    await execOk(
      ["tar", ...DETERMINISTIC_TAR, "-C", staging, "-cf", partial, "oci-layout", "index.json", "blobs"],
      {
        timeoutMs: 300_000,
      },
    );
    await rename(partial, archivePath);
    return {
      name: spec.name,
      archivePath,
      manifestDigest: manifest.digest,
      configDigest: config.digest,
      layers,
    };
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

/** Imports an archive from buildOciArchive into `containerd` (unpacked for its default snapshotter). */
export async function importOciArchive(
  containerd: PrivateContainerd,
  archivePath: string,
  opts: { namespace?: string } = {},
): Promise<void> {
  await containerd.ctr(["-n", opts.namespace ?? "default", "images", "import", archivePath], {
    timeoutMs: 300_000,
  });
}

/** The snapshot chain id of the top layer (containerd's key for the committed snapshot). */
export function chainId(diffIds: readonly string[]): string {
  const [first, ...rest] = diffIds;
  if (!first) throw new Error("chainId: no layers");
  return rest.reduce(
    (chain, diffId) => `sha256:${createHash("sha256").update(`${chain} ${diffId}`).digest("hex")}`,
    first,
  );
}

/** The tag part of a reference (`…/busybox:1` → `1`); `latest` when there is none. */
export function refTag(name: string): string {
  const last = name.slice(name.lastIndexOf("/") + 1);
  if (last.includes("@")) throw new Error(`image name ${name}: digest references are not supported here`);
  const colon = last.lastIndexOf(":");
  return colon === -1 ? "latest" : last.slice(colon + 1);
}

function ociArchitecture(arch: string): string {
  const map: Record<string, string> = { x64: "amd64", arm64: "arm64", ia32: "386", arm: "arm" };
  return map[arch] ?? arch;
}

async function writeLayerBlob(
  dir: string,
  staging: string,
  blobs: string,
  level: number,
): Promise<LayerInfo> {
  const tarPath = path.join(staging, "layer.tar");
  const gzPath = path.join(staging, "layer.tar.gz");
  await execOk(["tar", ...DETERMINISTIC_TAR, "-C", dir, "-cf", tarPath, "."], { timeoutMs: 300_000 });
  const diffHash = createHash("sha256");
  const blobHash = createHash("sha256");
  let size = 0;
  await pipeline(
    createReadStream(tarPath),
    tap((chunk) => diffHash.update(chunk)),
    createGzip({ level }),
    tap((chunk) => {
      blobHash.update(chunk);
      size += chunk.length;
    }),
    createWriteStream(gzPath),
  );
  await rm(tarPath);
  const digest = `sha256:${blobHash.digest("hex")}`;
  await rename(gzPath, path.join(blobs, digest.slice("sha256:".length)));
  return { digest, diffId: `sha256:${diffHash.digest("hex")}`, size };
}

async function writeJsonBlob(blobs: string, value: unknown): Promise<{ digest: string; size: number }> {
  const bytes = Buffer.from(JSON.stringify(value));
  const hex = createHash("sha256").update(bytes).digest("hex");
  await writeFile(path.join(blobs, hex), bytes);
  return { digest: `sha256:${hex}`, size: bytes.length };
}

function tap(fn: (chunk: Buffer) => void): Transform {
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      fn(chunk);
      callback(null, chunk);
    },
  });
}

// ---- busybox images ------------------------------------------------------------------------

/** The applets every test image has as /bin symlinks. */
export const BUSYBOX_APPLETS = [
  "sh",
  "echo",
  "cat",
  "sleep",
  "ls",
  "true",
  "false",
  "env",
  "id",
  "wc",
  "head",
  "dd",
  "yes",
  "hostname",
  "mount",
  "ps",
  "kill",
  // kubectl cp runs tar in the container.
  "tar",
] as const;

export const BUSYBOX_IMAGE = "docker.io/cloudhv-test/busybox:1";

/**
 * Fills `dir` with a minimal root: /bin/busybox (static) and applet symlinks, /etc/passwd,
 * /etc/group and the usual empty mount points.
 */
export async function stageBusyboxRoot(dir: string, opts: { busybox?: string } = {}): Promise<void> {
  const busybox = opts.busybox ?? "/bin/busybox";
  const listed = new Set((await execOk([busybox, "--list"])).stdout.split("\n").filter(Boolean));
  const missing = BUSYBOX_APPLETS.filter((a) => !listed.has(a));
  if (missing.length > 0) throw new Error(`${busybox} lacks applets ${missing.join(", ")}`);

  for (const d of ["bin", "etc", "proc", "sys", "dev", "root", "tmp", "var", "run"]) {
    await mkdir(path.join(dir, d), { recursive: true });
  }
  await chmod(path.join(dir, "tmp"), 0o1777);
  await chmod(path.join(dir, "root"), 0o700);
  await execOk(["cp", busybox, path.join(dir, "bin", "busybox")]);
  await chmod(path.join(dir, "bin", "busybox"), 0o755);
  for (const applet of BUSYBOX_APPLETS) await symlink("busybox", path.join(dir, "bin", applet));
  await writeFile(
    path.join(dir, "etc", "passwd"),
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
  );
  await writeFile(path.join(dir, "etc", "group"), "root:x:0:\nnogroup:x:65534:\n");
}

export interface BusyboxImageOptions {
  /** Where to write the archive. */
  archivePath: string;
  /** Default BUSYBOX_IMAGE. Written to /etc/cloudhv-image, so every name is a distinct image. */
  name?: string;
  /** Adds /data/big.bin of this many MiB of incompressible (but deterministic) bytes. */
  bigFileMb?: number;
  /** More layer directories on top, bottom first (e.g. one with `.wh.` whiteouts). */
  extraLayers?: readonly string[];
  config?: ImageConfig;
}

/**
 * A busybox image: layer 0 is the busybox root (the same digest for every image, so images
 * share it), layer 1 holds /etc/cloudhv-image (the image name) and the optional big file,
 * then any extra layers.
 */
export async function buildBusyboxImage(opts: BusyboxImageOptions): Promise<OciImage> {
  const name = opts.name ?? BUSYBOX_IMAGE;
  await mkdir(path.dirname(opts.archivePath), { recursive: true });
  const work = await mkdtemp(`${opts.archivePath}.layers-`);
  try {
    const base = path.join(work, "base");
    const identity = path.join(work, "identity");
    await mkdir(base);
    await stageBusyboxRoot(base);
    await mkdir(path.join(identity, "etc"), { recursive: true });
    await writeFile(path.join(identity, "etc", "cloudhv-image"), `${name}\n`);
    if (opts.bigFileMb)
      await writePseudoRandomFile(path.join(identity, "data", "big.bin"), opts.bigFileMb, name);
    return await buildOciArchive(
      {
        name,
        layers: [base, identity, ...(opts.extraLayers ?? [])],
        config: opts.config ?? { cmd: ["/bin/sh"] },
      },
      opts.archivePath,
    );
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** `mib` MiB of AES-CTR keystream seeded by `seed`: incompressible, and the same every run. */
export async function writePseudoRandomFile(file: string, mib: number, seed: string): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const key = createHash("sha256").update(seed).digest().subarray(0, 16);
  const cipher = createCipheriv("aes-128-ctr", key, Buffer.alloc(16));
  const zeros = Buffer.alloc(1 << 20);
  const out = createWriteStream(file);
  await pipeline(async function* () {
    for (let i = 0; i < mib; i++) yield cipher.update(zeros);
  }, out);
}
