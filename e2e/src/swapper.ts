// An attacker for volume tests: a process of its own that keeps swapping entries of a volume
// directory between harmless contents and symlinks to a host secret outside it, so that the
// swaps race the daemon's walk. `entry` is a file or an absolute link to the secret, `rel` a
// file or a relative link to it, `sub` a directory or a link to the secret's directory; the
// volume is all harmless or all hostile, `pauseMs` each, in turn. The
// swapped-out forms wait in `stage` (same filesystem, outside the volume): every rename is atomic.
import { type ChildProcess, spawn } from "node:child_process";

const SCRIPT = `
const fs = require("node:fs"); const p = require("node:path");
const [dir, secret, stage, pause] = process.argv.slice(1);
const j = (n) => p.join(dir, n);
const s = (n) => p.join(stage, n);
const target = { entry: secret, rel: p.relative(dir, secret) };
fs.mkdirSync(j("sub"), { recursive: true });
fs.writeFileSync(j("sub/inner"), "public");
for (const n of ["entry", "rel"]) { fs.writeFileSync(j(n), "public"); fs.symlinkSync(target[n], s(n + ".link")); }
fs.symlinkSync(p.dirname(secret), s("sub.link"));
let swaps = 0; let stop = false;
process.on("SIGTERM", () => { stop = true; });
let hostile = false;
// All entries switch together and each state is held for the pause: a walk sees either the
// harmless volume or the one whose entries all lead to the secret, and can settle on either.
const toggle = () => {
  for (const n of ["entry", "rel"]) {
    if (!hostile) { fs.renameSync(s(n + ".link"), j(n)); }
    else { fs.writeFileSync(s(n + ".file"), "public"); fs.renameSync(s(n + ".file"), j(n)); fs.symlinkSync(target[n], s(n + ".link")); }
  }
  if (!hostile) { fs.renameSync(j("sub"), s("sub.dir")); fs.renameSync(s("sub.link"), j("sub")); }
  else { fs.renameSync(j("sub"), s("sub.link")); fs.renameSync(s("sub.dir"), j("sub")); }
  hostile = !hostile;
  if (!hostile) swaps++;
};
const loop = () => {
  if (stop) { process.stdout.write(String(swaps)); process.exit(0); }
  toggle();
  setTimeout(loop, Number(pause));
};
loop();
`;

export interface Swapper {
  /** Stops the loop; resolves to the number of swap rounds made. */
  stop(): Promise<number>;
}

/** Starts swapping in `dir` (which must exist); each state held `pauseMs`. */
export function startSwapper(dir: string, secretPath: string, stage: string, pauseMs: number): Swapper {
  const child: ChildProcess = spawn(
    process.execPath,
    ["-e", SCRIPT, dir, secretPath, stage, String(pauseMs)],
    {
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  let out = "";
  child.stdout?.on("data", (d) => {
    out += d;
  });
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  return {
    async stop() {
      if (child.exitCode === null) child.kill("SIGTERM");
      await exited;
      return Number(out) || 0;
    },
  };
}
