// Helpers for the benchmark (bench.ts): summary statistics, /proc memory readings, the shim
// daemon's phase-timing log lines, sizes on disk. Pure or read-only, so they stay testable.
import { stat as fsStat, readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { exec } from "@cloudhv/shim";

/** A figure over N samples: median and range, samples kept for whoever wants more. */
export interface Stat {
  median: number;
  min: number;
  max: number;
  n: number;
  samples: number[];
}

const round1 = (x: number) => Math.round(x * 10) / 10;

export function stat(samples: readonly number[]): Stat | null {
  if (samples.length === 0) return null;
  const s = [...samples].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  const median = s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
  return {
    median: round1(median),
    min: round1(s[0] as number),
    max: round1(s[s.length - 1] as number),
    n: s.length,
    samples: samples.map(round1),
  };
}

/** "812 (790–840)" or "—" for a figure that has no samples. */
export function fmt(s: Stat | null | undefined, unit = "", digits = 0): string {
  if (!s) return "—";
  const f = (x: number) => x.toFixed(digits);
  return s.n === 1 ? `${f(s.median)}${unit}` : `${f(s.median)}${unit} (${f(s.min)}–${f(s.max)})`;
}

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Resident and proportional set size of a process, KiB (PSS splits shared pages fairly). */
export async function memoryOf(pid: number): Promise<{ rssKiB: number; pssKiB: number } | null> {
  try {
    const rollup = await readFile(`/proc/${pid}/smaps_rollup`, "utf8");
    const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(rollup)?.[1] ?? 0);
    return { rssKiB: field("Rss"), pssKiB: field("Pss") };
  } catch {
    return null;
  }
}

/** MemTotal − MemAvailable from a guest's /proc/meminfo: what the guest really uses. */
export function guestMemoryUsedKiB(meminfo: string): { totalKiB: number; usedKiB: number } | null {
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(meminfo)?.[1]);
  const total = field("MemTotal");
  const available = field("MemAvailable");
  if (!Number.isFinite(total) || !Number.isFinite(available)) return null;
  return { totalKiB: total, usedKiB: total - available };
}

/** One phase-timing line of the shim daemon's log (`task created` / `task deleted`). */
export interface PhaseEntry {
  msg: "task created" | "task deleted";
  ns: string;
  task: string;
  cacheHit?: boolean;
  phases: Record<string, number>;
  teardownMs?: number;
  time: number;
}

/** Every phase-timing line in the daemon logs (`shim-*.log`, rotated ones too) in `logDir`. */
export async function readPhaseEntries(logDir: string): Promise<PhaseEntry[]> {
  const entries: PhaseEntry[] = [];
  const names = await readdir(logDir).catch(() => [] as string[]);
  for (const name of names.filter((n) => /^shim-.*\.log(\.\d+)?$/.test(n))) {
    const text = await readFile(path.join(logDir, name), "utf8");
    for (const line of text.split("\n")) {
      if (!line.includes('"task created"') && !line.includes('"task deleted"')) continue;
      try {
        const doc = JSON.parse(line) as Partial<PhaseEntry> & { msg?: string };
        if ((doc.msg === "task created" || doc.msg === "task deleted") && doc.task && doc.phases)
          entries.push(doc as PhaseEntry);
      } catch {
        // A line cut short by a crash: not a timing.
      }
    }
  }
  return entries;
}

/** Waits until the daemon has logged `want` for every task id (its log is written async). */
export async function waitForPhaseEntries(
  logDir: string,
  want: Array<{ task: string; msg: PhaseEntry["msg"] }>,
  timeoutMs = 5000,
): Promise<PhaseEntry[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const entries = await readPhaseEntries(logDir);
    const complete = want.every((w) => entries.some((e) => e.task === w.task && e.msg === w.msg));
    if (complete || Date.now() > deadline) return entries;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Bytes on disk under `p` (apparent size, like `du -sb`), or null if it is missing. */
export async function bytesOf(p: string): Promise<number | null> {
  const info = await fsStat(p).catch(() => null);
  if (!info) return null;
  if (!info.isDirectory()) return info.size;
  const du = await exec(["du", "-sb", p]);
  return du.code === 0 ? Number(du.stdout.split(/\s/)[0]) : null;
}

/**
 * A package's runtime dependency closure as directories: `node_modules/<dep>` found next to
 * the package or in any ancestor's node_modules, the way Node resolves them.
 */
export async function dependencyDirs(pkgDir: string, roots: readonly string[]): Promise<string[]> {
  const seen = new Set<string>();
  const visit = async (dir: string) => {
    const manifest = JSON.parse(await readFile(path.join(dir, "package.json"), "utf8")) as {
      dependencies?: Record<string, string>;
      optionalDependencies?: Record<string, string>;
    };
    const deps = Object.keys({ ...manifest.dependencies, ...manifest.optionalDependencies });
    for (const dep of deps) {
      const candidates = [path.join(dir, "node_modules", dep), ...roots.map((r) => path.join(r, dep))];
      for (const candidate of candidates) {
        const found = await fsStat(path.join(candidate, "package.json")).catch(() => null);
        if (!found) continue;
        if (!seen.has(candidate)) {
          seen.add(candidate);
          await visit(candidate);
        }
        break;
      }
    }
  };
  await visit(pkgDir);
  return [...seen].sort();
}

/** Where a VMM's resident memory is (KiB). */
export interface VmmMemoryBreakdown {
  guestRamRssKiB: number;
  /** TCG's translated code (anonymous rwx regions); zero under KVM. */
  tcgCodeBufferRssKiB: number;
  /** Files mapped: the VMM binary, its libraries, the guest kernel image (page cache, shared). */
  fileBackedRssKiB: number;
  /** The VMM's own heap and buffers. */
  otherAnonRssKiB: number;
}

/**
 * Splits a VMM's RSS by mapping (/proc/<pid>/smaps): guest RAM is the anonymous (or memfd:
 * QEMU shares it with virtiofsd) mapping of exactly the VM's memory size; TCG's translated-code buffer is anonymous rwx (per-vCPU regions).
 * Guest RAM pages stay resident once the guest touched them (no balloon or free page
 * reporting), whatever the guest uses now.
 */
export async function vmmMemoryBreakdown(pid: number, guestMiB: number): Promise<VmmMemoryBreakdown | null> {
  let smaps: string;
  try {
    smaps = await readFile(`/proc/${pid}/smaps`, "utf8");
  } catch {
    return null;
  }
  const out = { guestRamRssKiB: 0, tcgCodeBufferRssKiB: 0, fileBackedRssKiB: 0, otherAnonRssKiB: 0 };
  let perms = "";
  let anon = false; // not a file: plain anonymous memory, [heap], [stack]
  let sizeKiB = 0;
  for (const line of smaps.split("\n")) {
    const header = /^[0-9a-f]+-[0-9a-f]+ (\S+) \S+ \S+ (\d+)\s*(.*)$/.exec(line);
    if (header) {
      perms = header[1] as string;
      const name = (header[3] ?? "").trim();
      anon = !name.startsWith("/") || name.startsWith("/memfd:");
      continue;
    }
    const size = /^Size:\s+(\d+) kB/.exec(line);
    if (size) {
      sizeKiB = Number(size[1]);
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (!rss) continue;
    const kib = Number(rss[1]);
    if (anon && sizeKiB === guestMiB * 1024) out.guestRamRssKiB += kib;
    else if (anon && perms.startsWith("rwx")) out.tcgCodeBufferRssKiB += kib;
    else if (!anon) out.fileBackedRssKiB += kib;
    else out.otherAnonRssKiB += kib;
  }
  return out;
}

/** How many lines of the daemon logs (`shim-*.log`, rotated ones too) in `logDir` carry log message `msg`. */
export async function countLogMessages(logDir: string, msg: string): Promise<number> {
  const needle = `"msg":${JSON.stringify(msg)}`;
  let n = 0;
  for (const name of (await readdir(logDir).catch(() => [] as string[])).filter((x) =>
    /^shim-.*\.log(\.\d+)?$/.test(x),
  )) {
    const text = await readFile(path.join(logDir, name), "utf8");
    for (const line of text.split("\n")) if (line.includes(needle)) n++;
  }
  return n;
}
