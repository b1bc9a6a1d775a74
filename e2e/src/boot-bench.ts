#!/usr/bin/env node
// Boot time of our guest kernel vs Debian's stock kernel: QEMU start → first agent Health
// reply, same QEMU flags, same rootfs and agent; one warm-up boot each, then the measured
// runs interleaved (ours, stock, ours, stock, …) so load drift hits both equally.
import { mkdtemp, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { type AccelProbe, exec, execOk, QemuDriver } from "@cloudhv/shim";
import { Command, InvalidArgumentError } from "commander";
import { guestArtifacts, REPO_ROOT } from "./artifacts.js";
import { type BootOptions, bootAndProbe } from "./boot.js";
import { prepareStockKernel } from "./stock-kernel.js";

type KernelName = "cloudhv" | "debian-stock";

interface KernelResult {
  kernel: KernelName;
  /** The guest's uname -r, as its agent reports it. */
  version: string;
  /** Debian package version (stock kernel only). */
  packageVersion?: string;
  /** vmlinux for ours; vmlinuz + initrd for the stock kernel. */
  sizeBytes: number;
  files: Record<string, number>;
  runs: number[];
  medianMs: number;
  minMs: number;
  maxMs: number;
}

interface Candidate {
  kernel: KernelName;
  boot: BootOptions;
  files: Record<string, string>;
  packageVersion?: string;
}

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1)
    throw new InvalidArgumentError(`expected a positive integer, got "${value}"`);
  return n;
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

async function gitCommit(): Promise<string> {
  const head = await exec(["git", "-C", REPO_ROOT, "rev-parse", "HEAD"]);
  if (head.code !== 0) return "unknown";
  const dirty = await exec(["git", "-C", REPO_ROOT, "status", "--porcelain", "--untracked-files=no"]);
  return `${head.stdout.trim()}${dirty.stdout.trim() ? "-dirty" : ""}`;
}

const program = new Command()
  .name("boot-bench")
  .description(
    "Boot time of the cloudhv guest kernel vs Debian's stock kernel (QEMU start → agent Health reply).",
  )
  .option("--runs <n>", "measured boots per kernel (after one warm-up boot each)", positiveInt, 5)
  .option("--json", "print one JSON document on stdout (the table goes to stderr)")
  .action(async (opts: { runs: number; json?: boolean }) => {
    const ours = guestArtifacts();
    const stock = await prepareStockKernel();
    const candidates: Candidate[] = [
      { kernel: "cloudhv", boot: { kernelPath: ours.kernelPath }, files: { vmlinux: ours.kernelPath } },
      {
        kernel: "debian-stock",
        boot: { kernelPath: stock.kernelPath, initrdPath: stock.initrdPath },
        files: { vmlinuz: stock.kernelPath, initrd: stock.initrdPath },
        packageVersion: `${stock.packageName} ${stock.packageVersion}`,
      },
    ];
    const stateRoot = await mkdtemp(path.join(os.tmpdir(), "cloudhv-boot-bench-"));
    const runs = new Map<KernelName, number[]>(candidates.map((c) => [c.kernel, []]));
    const versions = new Map<KernelName, string>();
    let accel: AccelProbe | undefined;
    try {
      for (let round = 0; round <= opts.runs; round++) {
        for (const c of candidates) {
          const report = await bootAndProbe({ ...c.boot, stateRoot, timeoutMs: 180_000 });
          accel = report.accel;
          versions.set(c.kernel, report.version.kernelRelease);
          const ms = Math.round(report.bootMs);
          if (round > 0) runs.get(c.kernel)?.push(ms);
          console.error(
            `${round === 0 ? "warm-up" : `run ${round}/${opts.runs}`}: ${c.kernel} ${report.version.kernelRelease} ${ms} ms`,
          );
        }
      }
    } finally {
      await rm(stateRoot, { recursive: true, force: true });
    }

    const results: KernelResult[] = [];
    for (const c of candidates) {
      const r = runs.get(c.kernel) ?? [];
      const files: Record<string, number> = {};
      for (const [what, file] of Object.entries(c.files)) files[what] = (await stat(file)).size;
      results.push({
        kernel: c.kernel,
        version: versions.get(c.kernel) ?? "",
        ...(c.packageVersion ? { packageVersion: c.packageVersion } : {}),
        sizeBytes: Object.values(files).reduce((a, b) => a + b, 0),
        files,
        runs: r,
        medianMs: median(r),
        minMs: Math.min(...r),
        maxMs: Math.max(...r),
      });
    }
    const qemu = new QemuDriver().binary;
    const qemuVersion = (await execOk([qemu, "--version"])).stdout.split("\n")[0]?.trim() ?? "";
    const machine = { cores: os.cpus().length, accel, qemuVersion };
    const commit = await gitCommit();

    // With --json, stdout carries only the JSON document (the table goes to stderr).
    const say = opts.json ? console.error : console.log;
    say(`${machine.cores} cores, accel ${accel?.accel} (${accel?.reason}), ${qemuVersion}, commit ${commit}`);
    say(`QEMU start → agent Health reply, ${opts.runs} runs each after one warm-up, interleaved`);
    const row = (cells: string[]) =>
      [cells[0]?.padEnd(13), cells[1]?.padEnd(20), ...cells.slice(2, 6).map((c) => c.padStart(9)), cells[6]]
        .join(" ")
        .trimEnd();
    say(row(["kernel", "version", "size MiB", "median", "min", "max", "runs (ms)"]));
    for (const r of results) {
      say(
        row([
          r.kernel,
          r.version,
          (r.sizeBytes / 2 ** 20).toFixed(1),
          `${r.medianMs}`,
          `${r.minMs}`,
          `${r.maxMs}`,
          r.runs.join(" "),
        ]),
      );
    }
    if (opts.json)
      console.log(JSON.stringify({ machine, commit, runsPerKernel: opts.runs, results }, null, 2));
  });

program.parseAsync().catch((err: unknown) => {
  console.error(`boot-bench: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
