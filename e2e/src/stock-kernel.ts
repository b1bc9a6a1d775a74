// Debian's stock kernel (linux-image-amd64) booted the way ours is, for boot-time comparison.
// Its virtio and erofs drivers are modules, so it gets a small initramfs: busybox loads exactly
// the modules needed (and what modules.dep / softdeps pull in), mounts our erofs guest image
// and switch_roots into the same agent /init, which then runs as PID 1 as with our kernel.
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { execOk } from "@cloudhv/shim";

export interface StockKernel {
  /** The versioned package linux-image-amd64 depends on, e.g. linux-image-6.1.0-56-amd64. */
  packageName: string;
  /** Its Debian version, e.g. 6.1.192-2. */
  packageVersion: string;
  /** The kernel release (uname -r), e.g. 6.1.0-56-amd64. */
  release: string;
  kernelPath: string;
  /** newc cpio, uncompressed: busybox, the modules, /init. */
  initrdPath: string;
  /** Module files in the initramfs, in load order. */
  modules: string[];
}

/** What the guest needs before it reaches its rootfs and the agent channel (and QEMU's RNG). */
const MODULES = ["virtio_pci", "virtio_blk", "virtio_console", "virtio_rng", "erofs"];

/** busybox applets /init uses, linked into /bin. */
const APPLETS = ["sh", "cat", "echo", "insmod", "mount", "umount", "mkdir", "usleep", "switch_root"];

const INIT = `#!/bin/sh
# cloudhv stock-kernel initramfs: load the drivers Debian's kernel keeps as modules, mount the
# guest rootfs, hand over to its /init (the cloudhv agent) as PID 1.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do
  insmod "/lib/modules/$m" || echo "stock initramfs: insmod $m failed"
done < /modules.order
i=0
while [ ! -b /dev/vda ]; do
  i=$((i + 1))
  if [ $i -gt 3000 ]; then echo "stock initramfs: no /dev/vda after 30 s"; exec sh; fi
  usleep 10000
done
mount -t erofs -o ro /dev/vda /newroot || { echo "stock initramfs: cannot mount /dev/vda"; exec sh; }
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /init
`;

/** Bump when the way the initramfs is built changes (the script and module list are hashed anyway). */
const BUILDER_VERSION = "1";

export function defaultStockKernelCache(): string {
  return path.join(process.env.CLOUDHV_BUILD_CACHE ?? "/var/cache/cloudhv-build", "stock-kernel");
}

/**
 * Debian's current stock kernel plus an initramfs for it, under cacheDir/<release>/; reused
 * while the package version, the busybox binary, and this builder (script, modules) are the same.
 */
export async function prepareStockKernel(cacheDir = defaultStockKernelCache()): Promise<StockKernel> {
  const { packageName, packageVersion } = await resolvePackage();
  const release = packageName.replace(/^linux-image-/, "");
  const busybox = await findBusybox();
  const key = createHash("sha256")
    .update(
      JSON.stringify({
        BUILDER_VERSION,
        packageVersion,
        INIT,
        MODULES,
        APPLETS,
        busybox: busybox.hash,
      }),
    )
    .digest("hex");
  const dir = path.join(cacheDir, release);
  const stamp = path.join(dir, "cache-key");
  const manifest = path.join(dir, "modules.txt");
  const result = (modules: string[]): StockKernel => ({
    packageName,
    packageVersion,
    release,
    kernelPath: path.join(dir, "vmlinuz"),
    initrdPath: path.join(dir, "initrd.cpio"),
    modules,
  });
  if ((await readFile(stamp, "utf8").catch(() => "")).trim() === key && existsSync(manifest)) {
    return result((await readFile(manifest, "utf8")).split("\n").filter(Boolean));
  }

  await mkdir(cacheDir, { recursive: true });
  const work = await mkdtemp(path.join(cacheDir, `.${release}.tmp-`));
  try {
    const deb = await downloadPackage(`${packageName}=${packageVersion}`, work);
    const root = path.join(work, "pkg");
    await execOk(["dpkg-deb", "-x", deb, root], { timeoutMs: 300_000 });
    await rm(deb);
    // The package ships no modules.dep (its postinst runs depmod): make one for modprobe.
    await execOk(["depmod", "-b", root, release], { timeoutMs: 300_000 });
    const modules = await resolveModules(root, release);

    const entries: CpioEntry[] = [
      ...["bin", "dev", "lib", "lib/modules", "newroot", "proc", "sys"].map(cpioDir),
      { name: "dev/console", mode: 0o020600, rdev: [5, 1] },
      { name: "bin/busybox", mode: 0o100755, data: await readFile(busybox.path) },
      ...APPLETS.map((a) => ({ name: `bin/${a}`, mode: 0o120777, data: Buffer.from("busybox") })),
      { name: "init", mode: 0o100755, data: Buffer.from(INIT) },
      {
        name: "modules.order",
        mode: 0o100644,
        data: Buffer.from(`${modules.map((m) => m.name).join("\n")}\n`),
      },
    ];
    for (const m of modules) {
      entries.push({ name: `lib/modules/${m.name}`, mode: 0o100644, data: await moduleBytes(m.file) });
    }

    const out = path.join(work, "out");
    await mkdir(out);
    await rename(path.join(root, "boot", `vmlinuz-${release}`), path.join(out, "vmlinuz"));
    await rename(path.join(root, "boot", `config-${release}`), path.join(out, "config"));
    await writeFile(path.join(out, "initrd.cpio"), newcArchive(entries));
    await writeFile(path.join(out, "modules.txt"), `${modules.map((m) => m.name).join("\n")}\n`);
    await writeFile(path.join(out, "cache-key"), `${key}\n`);
    await rm(dir, { recursive: true, force: true });
    await rename(out, dir);
    return result(modules.map((m) => m.name));
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

function cpioDir(name: string): CpioEntry {
  return { name, mode: 0o040755 };
}

/** The versioned kernel package linux-image-amd64 depends on now; apt-get update only if apt knows none. */
async function resolvePackage(): Promise<{ packageName: string; packageVersion: string }> {
  const lookup = async () => {
    const depends = await execOk(["apt-cache", "depends", "linux-image-amd64"]).catch(() => undefined);
    const packageName = /Depends: (linux-image-\d\S*-amd64)\s*$/m.exec(depends?.stdout ?? "")?.[1];
    if (!packageName) return undefined;
    const policy = await execOk(["apt-cache", "policy", packageName]);
    const packageVersion = /Candidate: (\S+)/.exec(policy.stdout)?.[1];
    if (!packageVersion || packageVersion === "(none)") return undefined;
    return { packageName, packageVersion };
  };
  const found = await lookup();
  if (found) return found;
  await execOk(["apt-get", "update", "-q"], { timeoutMs: 300_000 });
  const again = await lookup();
  if (!again) throw new Error("apt knows no linux-image-amd64 kernel package, even after apt-get update");
  return again;
}

/** apt-get download into dir (retrying once after apt-get update: the lists may be stale). */
async function downloadPackage(spec: string, dir: string): Promise<string> {
  const download = () => execOk(["apt-get", "download", "-q", spec], { cwd: dir, timeoutMs: 600_000 });
  await download().catch(async () => {
    await execOk(["apt-get", "update", "-q"], { timeoutMs: 300_000 });
    await download();
  });
  const deb = (await readdir(dir)).find((f) => f.endsWith(".deb"));
  if (!deb) throw new Error(`apt-get download ${spec} left no .deb in ${dir}`);
  return path.join(dir, deb);
}

/** The static busybox from busybox-static, installing that package if it is absent. */
async function findBusybox(): Promise<{ path: string; hash: string }> {
  const installed = await execOk(["dpkg-query", "-s", "busybox-static"]).catch(() => undefined);
  if (!installed?.stdout.includes("Status: install ok installed")) {
    await execOk(["apt-get", "install", "-y", "-q", "--no-install-recommends", "busybox-static"], {
      env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
      timeoutMs: 600_000,
    });
  }
  const file = "/bin/busybox";
  const bytes = await readFile(file);
  // A dynamic busybox would need its libc in the initramfs: insist on a static one.
  if (bytes.includes(Buffer.from("/lib64/ld-linux"))) throw new Error(`${file} is not statically linked`);
  return { path: file, hash: createHash("sha256").update(bytes).digest("hex") };
}

interface ModuleFile {
  /** Name in the initramfs (always uncompressed .ko). */
  name: string;
  file: string;
}

/** MODULES and everything modules.dep and the softdeps say they need, dependencies first. */
async function resolveModules(root: string, release: string): Promise<ModuleFile[]> {
  const modules: ModuleFile[] = [];
  for (const wanted of MODULES) {
    const { stdout } = await execOk(["modprobe", "-d", root, "-S", release, "--show-depends", wanted]);
    for (const line of stdout.split("\n")) {
      // "builtin <name>" lines need nothing; "insmod <file> [opts]" lines name a module file.
      const file = /^insmod (\S+)/.exec(line)?.[1];
      if (!file) continue;
      const name = path.basename(file).replace(/\.ko(\.(xz|zst|gz))?$/, ".ko");
      if (!modules.some((m) => m.name === name)) modules.push({ name, file });
    }
  }
  return modules;
}

/** The module as an uncompressed .ko (busybox insmod cannot read compressed ones). */
async function moduleBytes(file: string): Promise<Buffer> {
  const tool = file.endsWith(".xz")
    ? "xz"
    : file.endsWith(".zst")
      ? "zstd"
      : file.endsWith(".gz")
        ? "gzip"
        : undefined;
  if (!tool) return readFile(file);
  const tmp = `${file}.raw`;
  await execOk(["sh", "-c", `${tool} -dc "$1" > "$2"`, "sh", file, tmp]);
  return readFile(tmp);
}

interface CpioEntry {
  name: string;
  mode: number;
  data?: Buffer;
  rdev?: [number, number];
}

/** A newc ("070701") cpio archive: root-owned, mtime 0, so the same inputs give the same bytes. */
function newcArchive(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  const pad = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);
  const push = (e: CpioEntry, ino: number) => {
    const data = e.data ?? Buffer.alloc(0);
    const name = Buffer.from(`${e.name}\0`);
    const fields = [ino, e.mode, 0, 0, e.mode & 0o040000 ? 2 : 1, 0, data.length, 0, 0];
    fields.push(e.rdev?.[0] ?? 0, e.rdev?.[1] ?? 0, name.length, 0);
    const header = Buffer.from(`070701${fields.map((f) => f.toString(16).padStart(8, "0")).join("")}`);
    parts.push(header, name, pad(header.length + name.length), data, pad(data.length));
  };
  entries.forEach((e, i) => {
    push(e, i + 1);
  });
  push({ name: "TRAILER!!!", mode: 0 }, 0);
  return Buffer.concat(parts);
}
