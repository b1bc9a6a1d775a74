// Debian's stock kernel (linux-image-amd64) booted the way ours is, for boot-time comparison.
// Its virtio and erofs drivers are modules, so it gets a small initramfs: busybox loads exactly
// the modules needed, mounts our erofs guest image and switch_roots into the same agent /init.
import { existsSync } from "node:fs";
import { chmod, copyFile, mkdir, mkdtemp, readdir, rename, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { execOk } from "@cloudhv/shim";

export interface StockKernel {
  version: string;
  kernelPath: string;
  initrdPath: string;
}

/** Modules the guest needs before it can reach its rootfs and the agent channel. */
const MODULES = ["virtio_pci", "virtio_blk", "virtio_console", "erofs", "virtio-rng"];

const INIT = `#!/bin/busybox sh
# Loads the drivers the stock kernel keeps as modules, then hands over to the agent.
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
for m in $($B cat /modules.order); do $B insmod /modules/$m 2>/dev/null; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 1000 ]; do $B usleep 10000; i=$((i+1)); done
$B mkdir -p /newroot
$B mount -t erofs -o ro /dev/vda /newroot || { echo "stock initramfs: cannot mount /dev/vda"; exec $B sh; }
$B umount /proc /sys
$B mount --move /dev /newroot/dev
exec $B switch_root /newroot /init
`;

export async function prepareStockKernel(cacheRoot: string): Promise<StockKernel> {
  const depends = await execOk(["apt-cache", "depends", "linux-image-amd64"]);
  const pkg = /Depends: (linux-image-\S+-amd64)/.exec(depends.stdout)?.[1];
  if (!pkg)
    throw new Error("apt-cache does not know linux-image-amd64's kernel package (run apt-get update)");
  const version = pkg.replace(/^linux-image-/, "");
  const dir = path.join(cacheRoot, "stock-kernel", version);
  const result = {
    version,
    kernelPath: path.join(dir, "vmlinuz"),
    initrdPath: path.join(dir, "initrd.cpio"),
  };
  if (existsSync(result.kernelPath) && existsSync(result.initrdPath)) return result;

  await mkdir(path.dirname(dir), { recursive: true });
  const work = await mkdtemp(`${dir}.tmp-`);
  try {
    await execOk(["apt-get", "download", pkg], { cwd: work, timeoutMs: 300_000 });
    const deb = (await readdir(work)).find((f) => f.endsWith(".deb"));
    if (!deb) throw new Error(`apt-get download ${pkg} left no .deb`);
    const root = path.join(work, "pkg");
    await execOk(["dpkg-deb", "-x", path.join(work, deb), root]);
    await execOk(["depmod", "-b", root, version]);
    const modules: string[] = [];
    for (const name of MODULES) {
      const deps = await execOk(["modprobe", "-d", root, "-S", version, "--show-depends", name]);
      for (const line of deps.stdout.split("\n")) {
        const file = /^insmod (\S+)/.exec(line)?.[1];
        if (file && !modules.includes(file)) modules.push(file);
      }
    }
    const initramfs = path.join(work, "initramfs");
    for (const d of ["bin", "dev", "proc", "sys", "modules", "newroot"])
      await mkdir(path.join(initramfs, d), { recursive: true });
    await copyFile("/bin/busybox", path.join(initramfs, "bin/busybox"));
    for (const file of modules) await copyFile(file, path.join(initramfs, "modules", path.basename(file)));
    await writeFile(
      path.join(initramfs, "modules.order"),
      `${modules.map((m) => path.basename(m)).join("\n")}\n`,
    );
    await writeFile(path.join(initramfs, "init"), INIT);
    await chmod(path.join(initramfs, "init"), 0o755);
    const list = await execOk(["find", ".", "-print0"], { cwd: initramfs });
    const cpio = await execOk(
      ["cpio", "--quiet", "-o", "-0", "-H", "newc", "-F", path.join(work, "initrd.cpio")],
      {
        cwd: initramfs,
        input: list.stdout,
      },
    );
    void cpio;
    const out = path.join(work, "out");
    await mkdir(out);
    await copyFile(path.join(root, "boot", `vmlinuz-${version}`), path.join(out, "vmlinuz"));
    await rename(path.join(work, "initrd.cpio"), path.join(out, "initrd.cpio"));
    await rm(dir, { recursive: true, force: true });
    await rename(out, dir);
    return result;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
