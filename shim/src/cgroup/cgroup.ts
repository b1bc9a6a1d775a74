// The pod's cgroup on this host: one directory per mounted hierarchy (cgroup v2: the unified
// one; v1: each controller's, name=systemd too; hybrid: both), created if missing as runc
// does, and removed at teardown only if we created it. The VMM joins it through join.ts.
import { mkdir, readFile, rmdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { ShimError } from "../errors.js";
import type { Logger } from "../util/log.js";

export interface CgroupHierarchy {
  /** Where it is mounted, e.g. /sys/fs/cgroup (v2) or /sys/fs/cgroup/memory (v1). */
  mount: string;
  version: 1 | 2;
  /** v1: the controllers bound to it (cpu, cpuacct, name=systemd ...); v2: empty. */
  controllers: string[];
}

/** The cgroup hierarchies in a /proc/self/mountinfo text, each once (first mount wins). */
export function parseCgroupMounts(mountinfo: string): CgroupHierarchy[] {
  const seen = new Set<string>();
  const found: CgroupHierarchy[] = [];
  for (const line of mountinfo.split("\n")) {
    const [left, right] = line.split(" - ");
    if (!left || !right) continue;
    const fields = left.split(" ");
    const [fstype, , superOptions = ""] = right.split(" ");
    if (fstype !== "cgroup" && fstype !== "cgroup2") continue;
    const device = fields[2] ?? "";
    const mount = (fields[4] ?? "").replace(/\\040/g, " ");
    if (!mount || seen.has(device)) continue;
    seen.add(device);
    const controllers =
      fstype === "cgroup2"
        ? []
        : superOptions
            .split(",")
            .filter(
              (o) =>
                !/^(rw|ro|relatime|noatime|nosuid|nodev|noexec|clone_children|xattr|nsdelegate|release_agent=.*)$/.test(
                  o,
                ),
            );
    found.push({ mount, version: fstype === "cgroup2" ? 2 : 1, controllers });
  }
  return found;
}

let hostHierarchies: Promise<CgroupHierarchy[]> | undefined;

/** This host's hierarchies (read once per daemon). */
export function hostCgroupHierarchies(): Promise<CgroupHierarchy[]> {
  hostHierarchies ??= readFile("/proc/self/mountinfo", "utf8").then(parseCgroupMounts);
  return hostHierarchies;
}

export class PodCgroup {
  private constructor(
    /** Absolute path under each hierarchy (resolve.ts). */
    readonly path: string,
    /** The pod's directory in each hierarchy. */
    readonly dirs: readonly string[],
    /** Directories this pod created, parents before children. */
    private readonly created: readonly string[],
    private readonly log: Logger,
  ) {}

  /** What a later daemon needs to remove this cgroup (kept in the pod's record). */
  record(): { path: string; dirs: string[]; created: string[] } {
    return { path: this.path, dirs: [...this.dirs], created: [...this.created] };
  }

  /** The cgroup a previous daemon opened for a pod it served. */
  static adopt(record: { path: string; dirs: string[]; created: string[] }, log: Logger): PodCgroup {
    return new PodCgroup(record.path, record.dirs, record.created, log);
  }

  /** The cgroup.procs files a process writes its pid to, to join the pod's cgroup everywhere. */
  get procs(): string[] {
    return this.dirs.map((dir) => path.join(dir, "cgroup.procs"));
  }

  /** The pod's cgroup in every hierarchy, made if missing (parents too). */
  static async open(
    cgroupPath: string,
    hierarchies: readonly CgroupHierarchy[],
    log: Logger,
  ): Promise<PodCgroup> {
    if (hierarchies.length === 0) {
      throw new ShimError(
        "FailedPrecondition",
        `no cgroup filesystem is mounted: cannot place the pod in ${cgroupPath}`,
      );
    }
    const created: string[] = [];
    const dirs: string[] = [];
    const opened = new PodCgroup(cgroupPath, dirs, created, log);
    try {
      // The hierarchies (cgroup v1 has one per controller) are independent: all at once. In
      // each, parents are made (and listed) before their children.
      const leaves = await Promise.allSettled(
        hierarchies.map(async (h) => {
          let dir = h.mount;
          for (const segment of cgroupPath.split("/").filter(Boolean)) {
            const parent = dir;
            dir = path.join(dir, segment);
            if (!(await makeDir(dir))) continue;
            created.push(dir);
            await inheritFromParent(h, parent, dir);
          }
          return dir;
        }),
      );
      for (const leaf of leaves) if (leaf.status === "fulfilled") dirs.push(leaf.value);
      const failed = leaves.find((leaf) => leaf.status === "rejected");
      if (failed) throw failed.reason;
      return opened;
    } catch (err) {
      await opened.remove();
      throw new ShimError(
        "FailedPrecondition",
        `cannot create the pod's cgroup ${cgroupPath}: ${(err as Error).message}`,
        { cause: err },
      );
    }
  }

  /**
   * Removes what open() created, children first. The VMM has exited by then; a cgroup can stay
   * busy a moment after its last process is reaped, so a busy leaf is retried. A parent another
   * pod still uses (not empty) stays: it is that pod's to remove.
   */
  async remove(): Promise<void> {
    // One hierarchy's dirs children first; the hierarchies at once. Dirs of a hierarchy whose
    // open failed (no leaf) go in one sequence, children first as listed.
    const byHierarchy = new Map<string, string[]>();
    for (const dir of [...this.created].reverse()) {
      const leaf = this.dirs.find((d) => d === dir || d.startsWith(`${dir}/`)) ?? "";
      byHierarchy.set(leaf, [...(byHierarchy.get(leaf) ?? []), dir]);
    }
    await Promise.all([...byHierarchy.values()].map((dirs) => this.removeDirs(dirs)));
  }

  private async removeDirs(dirs: readonly string[]): Promise<void> {
    for (const dir of dirs) {
      const leaf = this.dirs.includes(dir);
      for (let attempt = 0; ; attempt++) {
        try {
          await rmdir(dir);
          break;
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          if (code === "ENOENT") break;
          if (leaf && code === "EBUSY" && attempt < 40) {
            await new Promise((r) => setTimeout(r, 50));
            continue;
          }
          if (!leaf && (code === "EBUSY" || code === "ENOTEMPTY")) break;
          this.log.warn({ cgroup: dir, err: (err as Error).message }, "could not remove the pod's cgroup");
          break;
        }
      }
    }
  }
}

/** mkdir that says whether it made the directory (false: it was there). */
async function makeDir(dir: string): Promise<boolean> {
  try {
    await mkdir(dir);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw err;
  }
}

/**
 * What the kernel does not do for a new cgroup: v1 cpuset starts with no CPUs and memory
 * nodes (no process could join), so it gets its parent's, as runc does; v2 enables the
 * parent's controllers for its children, so the pod's limits can apply below it.
 */
async function inheritFromParent(h: CgroupHierarchy, parent: string, dir: string): Promise<void> {
  if (h.version === 1 && h.controllers.includes("cpuset")) {
    for (const file of ["cpuset.cpus", "cpuset.mems"]) {
      const mine = await readFile(path.join(dir, file), "utf8").catch(() => undefined);
      if (mine === undefined || mine.trim() !== "") continue;
      await writeFile(path.join(dir, file), await readFile(path.join(parent, file), "utf8"));
    }
  }
  if (h.version === 2) {
    const available = await readFile(path.join(parent, "cgroup.controllers"), "utf8").catch(() => "");
    const enable = available
      .split(/\s+/)
      .filter(Boolean)
      .map((c) => `+${c}`)
      .join(" ");
    // Best effort: a parent with processes of its own cannot delegate (EBUSY); the pod's
    // cgroup still accounts the VMM's memory and CPU through what is enabled.
    if (enable) await writeFile(path.join(parent, "cgroup.subtree_control"), enable).catch(() => {});
  }
}
