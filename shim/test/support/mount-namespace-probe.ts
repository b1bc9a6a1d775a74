// Run by mount-namespace.test.ts inside a mount namespace of its own, made on a chosen CPU (as
// a daemon's is by a harness or a service manager). Reports, for each CPU, whether a plain
// `unshare --mount=<file>` made there can be bound, then binds five namespaces through
// bindNewMountNamespace starting on a CPU that cannot. Prints one JSON line.
import { mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import pino from "pino";
import { exec, execOk } from "../../src/util/exec.js";
import { allowedCpus, bindNewMountNamespace } from "../../src/volumes/mount-namespace.js";

const root = process.argv[2];
// `node --test shim/dist/test` runs every file under test/ too: without its argument (the
// directory to work in, given by mount-namespace.test.ts) this file does nothing.
if (root) await probe(root);

async function probe(root: string): Promise<void> {
  await execOk(["mount", "-t", "tmpfs", "probe", root]);
  let n = 0;
  async function emptyFile(): Promise<string> {
    const dir = path.join(root, `ns${n++}`);
    await mkdir(dir);
    await execOk(["mount", "--bind", dir, dir]);
    await execOk(["mount", "--make-private", dir]);
    const file = path.join(dir, "mnt");
    await writeFile(file, "");
    return file;
  }
  async function isNsfsMount(file: string): Promise<boolean> {
    const info = await readFile("/proc/self/mountinfo", "utf8");
    return info.split("\n").some((l) => l.split(" ")[4] === file && / - nsfs /.test(l));
  }

  const cpus = await allowedCpus();
  const plain: Record<number, boolean> = {};
  for (const cpu of cpus) {
    const file = await emptyFile();
    const r = await exec(["taskset", "--cpu-list", String(cpu), "unshare", `--mount=${file}`, "true"]);
    plain[cpu] = r.code === 0 && (await isNsfsMount(file));
  }
  const refused = cpus.find((cpu) => !plain[cpu]);
  let bound = 0;
  let error: string | undefined;
  if (refused !== undefined) {
    for (let i = 0; i < 5; i++) {
      const file = await emptyFile();
      try {
        await bindNewMountNamespace(file, pino({ level: "silent" }), refused);
        if (await isNsfsMount(file)) bound++;
      } catch (err) {
        error = (err as Error).message;
      }
    }
  }
  console.log(JSON.stringify({ plain, refused, bound, error }));
}
