#!/usr/bin/env node
// cloudhv-build-image: the installer image as an OCI archive, without Docker (see ../image.ts).
import path from "node:path";
import { Command } from "commander";
import { REPO_ROOT } from "../bundle.js";
import { buildImage, IMAGE_NAME } from "../image.js";

const program = new Command()
  .name("cloudhv-build-image")
  .description(
    "Builds the installer image (installer, Node.js, shim, guest kernel and rootfs) as an OCI archive for `ctr images import`.",
  )
  .option("--out <file>", "the archive to write", path.join(REPO_ROOT, "build/image/cloudhv-installer.tar"))
  .option("--name <ref>", `image reference (default: ${IMAGE_NAME}:<installer version>)`)
  .option("--kernel <file>", "guest kernel", path.join(REPO_ROOT, "build/guest/vmlinux"))
  .option("--rootfs <file>", "guest rootfs image", path.join(REPO_ROOT, "build/guest/rootfs.erofs"))
  .option("--cloud-hypervisor <file>", "a cloud-hypervisor binary to ship in the bundle")
  .option(
    "--virtiofsd <file>",
    "the virtiofsd to ship (serves pods' shared volumes)",
    path.join(REPO_ROOT, "build/host/virtiofsd"),
  )
  .option(
    "--build-note <text>",
    "ship this text as BUILD-NOTE: a new version of the same tree (upgrade tests)",
  )
  .option("--rootfs-dir <dir>", "write the image's root filesystem to this directory instead (Dockerfile)")
  .action(
    async (flags: {
      out: string;
      name?: string;
      kernel: string;
      rootfs: string;
      cloudHypervisor?: string;
      virtiofsd?: string;
      rootfsDir?: string;
      buildNote?: string;
    }) => {
      const started = Date.now();
      try {
        const image = await buildImage({
          archivePath: flags.out,
          kernel: flags.kernel,
          rootfs: flags.rootfs,
          cloudHypervisor: flags.cloudHypervisor,
          virtiofsd: flags.virtiofsd,
          rootfsDir: flags.rootfsDir,
          buildNote: flags.buildNote,
          ...(flags.name ? { name: flags.name } : {}),
        });
        const took = `${((Date.now() - started) / 1000).toFixed(1)} s`;
        process.stdout.write(
          flags.rootfsDir
            ? `${image.name} root filesystem (bundle ${image.version}) → ${flags.rootfsDir} in ${took}\n`
            : `${image.name} (bundle ${image.version}) → ${image.archivePath} in ${took}\n` +
                `import: ctr -n k8s.io images import ${image.archivePath}\n`,
        );
      } catch (err) {
        process.stderr.write(`cloudhv-build-image: ${(err as Error).message}\n`);
        process.exit(1);
      }
    },
  );

await program.parseAsync();
