// Runs after tsc in `npm run build`: writes shim/dist/src/build-id (the daemon identity's build
// part, a digest of every compiled module, read by launcher/daemon-address.ts and the compiled
// launcher alike) and puts the compiled launcher (build/host/containerd-shim-cloudhv-v1, built
// by scripts/dev.sh setup) into shim/dist/, where it finds src/bin/shim.js.
import { createHash } from "node:crypto";
import { copyFileSync, existsSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const shim = fileURLToPath(new URL("..", import.meta.url));
const dist = path.join(shim, "dist");
const src = path.join(dist, "src");

const files = readdirSync(src, { recursive: true, withFileTypes: true })
  .filter((e) => e.isFile() && e.name.endsWith(".js"))
  .map((e) => path.relative(src, path.join(e.parentPath, e.name)))
  .sort();
const hash = createHash("sha256");
for (const rel of files)
  hash
    .update(`${rel}\0`)
    .update(readFileSync(path.join(src, rel)))
    .update("\0");
const id = hash.digest("hex").slice(0, 12);
const idFile = path.join(src, "build-id");
// Rewritten only when it changes: an unchanged build keeps its daemon.
if (!existsSync(idFile) || readFileSync(idFile, "utf8") !== id) writeFileSync(idFile, id);

const launcher = path.join(shim, "..", "build/host/containerd-shim-cloudhv-v1");
const target = path.join(dist, "containerd-shim-cloudhv-v1");
if (existsSync(launcher)) {
  const same = existsSync(target) && readFileSync(target).equals(readFileSync(launcher));
  if (!same) {
    // A rename, not a write: the old binary may be running (ETXTBSY).
    copyFileSync(launcher, `${target}.tmp`);
    renameSync(`${target}.tmp`, target);
  }
}
