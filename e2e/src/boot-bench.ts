#!/usr/bin/env node
// Boot time of our guest kernel vs Debian's stock kernel: QEMU start → first agent Health
// reply, same QEMU flags, same rootfs and agent, runs interleaved so load drift hits both.
import { statSync } from "node:fs";
import os from "node:os";
import { execOk, probeAccel } from "@cloudhv/shim";
import { Command, InvalidArgumentError } from "commander";
import { guestArtifacts } from "./artifacts.js";
import { bootAndProbe } from "./boot.js";
import { prepareStockKernel } from "./stock-kernel.js";

interface KernelResult {
  kernel: "cloudhv" | "debian-stock";
  version: string;
  sizeBytes: number;
  runs: number[];
  medianMs: number;
  minMs: number;
  maxMs: number;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
};

const program = new Command()
  .name("boot-bench")
  .description("Boot time of the cloudhv guest kernel vs Debian's stock kernel (QEMU start → agent Health).")
  .option(
    "--runs <n>",
    "measured boots per kernel (after one warm-up each)",
    (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1)
        throw new InvalidArgumentError(`expected a positive integer, got "${v}"`);
      return n;
    },
    5,
  )
  .option("--json", "print one JSON document instead of a table")
  .action(async (opts: { runs: number; json?: boolean }) => {
    const ours = guestArtifacts();
    const stock = await prepareStockKernel(process.env.CLOUDHV_BUILD_CACHE ?? "/var/cache/cloudhv-build");
    const kernels = [
      {
        kernel: "cloudhv" as const,
        boot: { kernelPath: ours.kernelPath },
        size: statSync(ours.kernelPath).size,
      },
      {
        kernel: "debian-stock" as const,
        boot: { kernelPath: stock.kernelPath, initrdPath: stock.initrdPath },
        size: statSync(stock.kernelPath).size + statSync(stock.initrdPath).size,
      },
    ];
    const runs = new Map<string, number[]>(kernels.map((k) => [k.kernel, []]));
    const versions = new Map<string, string>();
    for (let i = 0; i <= opts.runs; i++) {
      for (const k of kernels) {
        const report = await bootAndProbe({ ...k.boot, timeoutMs: 180_000 });
        versions.set(k.kernel, report.version.kernelRelease);
        if (i > 0) runs.get(k.kernel)?.push(Math.round(report.bootMs));
      }
    }
    const results: KernelResult[] = kernels.map((k) => {
      const r = runs.get(k.kernel) ?? [];
      return {
        kernel: k.kernel,
        version: versions.get(k.kernel) ?? "",
        sizeBytes: k.size,
        runs: r,
        medianMs: median(r),
        minMs: Math.min(...r),
        maxMs: Math.max(...r),
      };
    });
    const accel = await probeAccel("qemu-system-x86_64");
    const qemuVersion = (await execOk(["qemu-system-x86_64", "--version"])).stdout.split("\n")[0] ?? "";
    const commit = (
      await execOk(["git", "rev-parse", "--short", "HEAD"]).catch(() => ({ stdout: "unknown" }))
    ).stdout.trim();
    const doc = { machine: { cores: os.cpus().length, accel, qemuVersion }, commit, results };
    if (opts.json) {
      console.log(JSON.stringify(doc, null, 2));
      return;
    }
    console.log(
      `accel ${accel.accel} (${accel.reason}); ${qemuVersion}; ${os.cpus().length} cores; commit ${commit}`,
    );
    console.log("kernel        version            size      median    min      max    runs (ms)");
    for (const r of results) {
      console.log(
        `${r.kernel.padEnd(13)} ${r.version.padEnd(18)} ${`${(r.sizeBytes / 2 ** 20).toFixed(1)} MiB`.padEnd(9)} ` +
          `${`${r.medianMs}`.padStart(6)} ${`${r.minMs}`.padStart(8)} ${`${r.maxMs}`.padStart(8)}    ${r.runs.join(", ")}`,
      );
    }
  });

program.parseAsync().catch((err: unknown) => {
  console.error(`boot-bench: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
