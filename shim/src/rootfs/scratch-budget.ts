// The node's budget for scratch disks (the config's scratch_budget): the sum of the sizes of
// every scratch disk on the node may not pass it, so containers writing to their root
// filesystems cannot fill the host's disk together. Every daemon that shares the state dir
// (an old and a new one during an upgrade, one per containerd) counts against it.
//
// The ledger is a directory of empty files, one per disk, whose name says who holds it and
// how many bytes: `<pid>.<process start time>.<n>.<bytes>`. A create adds its entry first and
// then sums all entries; over the budget, it takes its entry back and is refused. Two creates
// racing may both be refused when one would have fit, but never both pass. Entries of a daemon
// that is gone (pid dead, or reused by another process) are dropped.
import { mkdir, readdir, readFile, unlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { exhausted } from "../errors.js";

export interface BudgetHold {
  release(): Promise<void>;
}

const ENTRY = /^(\d{1,10})\.(\d{1,20})\.(\d{1,10})\.(\d{1,16})$/;
/** Not every file in the directory is read: a ledger this big is not ours to trust. */
const MAX_ENTRIES = 100_000;

/** The process's start time in clock ticks since boot (/proc/PID/stat field 22), or undefined. */
async function startTime(pid: number, proc: string): Promise<string | undefined> {
  try {
    const stat = await readFile(path.join(proc, String(pid), "stat"), "utf8");
    // The command name (field 2) may hold spaces and parentheses: count from the last ")".
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return fields[19];
  } catch {
    return undefined;
  }
}

export function formatBytes(bytes: number): string {
  const gib = bytes / 1024 ** 3;
  if (gib >= 1) return `${Number(gib.toFixed(2))} GiB`;
  return `${Number((bytes / 1024 ** 2).toFixed(2))} MiB`;
}

export class ScratchBudget {
  private seq = 0;
  private self: string | undefined;

  constructor(
    /** Where the ledger lives (under the state dir: it goes with a reboot, as the VMs do). */
    readonly dir: string,
    /** Bytes; 0 means no budget. */
    readonly budget: number,
    private readonly proc = "/proc",
  ) {}

  /**
   * Holds `bytes` of the budget for one disk, or refuses with an error that names the budget,
   * its config key and what holds it. `what` names the disk's container for that message.
   */
  async reserve(bytes: number, what: string): Promise<BudgetHold> {
    if (this.budget <= 0) return { release: async () => {} };
    if (bytes > this.budget) throw this.refusal(bytes, what, 0, 0);
    const release = await this.enter(bytes);
    try {
      const { total, disks } = await this.held();
      if (total > this.budget) throw this.refusal(bytes, what, total - bytes, disks - 1);
    } catch (err) {
      await release();
      throw err;
    }
    return { release };
  }

  /**
   * Counts a disk that exists already (one a new daemon takes over from a dead one, whose
   * entries went with it), never refusing: the space is taken whatever the budget says.
   */
  async adopt(bytes: number): Promise<BudgetHold> {
    if (this.budget <= 0) return { release: async () => {} };
    return { release: await this.enter(bytes) };
  }

  /** Adds this process's entry for one disk; returns its idempotent removal. */
  private async enter(bytes: number): Promise<() => Promise<void>> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    this.self ??= `${process.pid}.${(await startTime(process.pid, this.proc)) ?? "0"}`;
    const entry = path.join(this.dir, `${this.self}.${this.seq++}.${bytes}`);
    await writeFile(entry, "", { flag: "wx", mode: 0o600 });
    let released = false;
    return async () => {
      if (released) return;
      released = true;
      await unlink(entry).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== "ENOENT") throw err;
      });
    };
  }

  /** What the live entries hold: bytes and number of disks (this process's entries included). */
  async held(): Promise<{ total: number; disks: number }> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return { total: 0, disks: 0 };
      throw err;
    }
    const alive = new Map<string, boolean>();
    let total = 0;
    let disks = 0;
    for (const name of names.slice(0, MAX_ENTRIES)) {
      const m = ENTRY.exec(name);
      if (!m) continue;
      const owner = `${m[1]}.${m[2]}`;
      let live = alive.get(owner);
      if (live === undefined) {
        live = (await startTime(Number(m[1]), this.proc)) === m[2];
        alive.set(owner, live);
      }
      if (!live) {
        // Its daemon is gone, and its VMs with it (they die with their daemon).
        await unlink(path.join(this.dir, name)).catch(() => undefined);
        continue;
      }
      total += Number(m[4]);
      disks++;
    }
    return { total, disks };
  }

  private refusal(bytes: number, what: string, others: number, disks: number) {
    return exhausted(
      `scratch disk of ${formatBytes(bytes)} (${bytes} bytes) for ${what} does not fit in the node's scratch budget: ` +
        `scratch_budget is ${formatBytes(this.budget)} (${this.budget} bytes) and ${formatBytes(others)} is held by ${disks} other scratch disk(s); ` +
        `raise scratch_budget or lower scratch_size in the runtime config, or run fewer containers on this node`,
    );
  }
}
