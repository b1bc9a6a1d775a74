// What is mounted where, from /proc/self/mountinfo: for cleanup (never remove a directory
// with something mounted below it) and for tests that check nothing was left mounted.
import { readFile } from "node:fs/promises";

/** Mount points at or below `dir`, deepest first. */
export async function mountPointsUnder(dir: string): Promise<string[]> {
  const root = dir.endsWith("/") && dir !== "/" ? dir.slice(0, -1) : dir;
  const mountinfo = await readFile("/proc/self/mountinfo", "utf8");
  return mountinfo
    .split("\n")
    .filter(Boolean)
    .map((line) => unescapeMountinfo(line.split(" ")[4] ?? ""))
    .filter((mountPoint) => mountPoint === root || mountPoint.startsWith(`${root}/`))
    .sort((a, b) => b.length - a.length);
}

/** mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes. */
function unescapeMountinfo(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
}

/**
 * Read-write mount points strictly below `dir`, shallowest first, at most `max`: what a
 * read-only bind of `dir` must leave writable (non-recursive read-only, as runc does it).
 */
export async function writableMountsBelow(dir: string, max: number): Promise<string[]> {
  const prefix = dir.endsWith("/") ? dir : `${dir}/`;
  const mountinfo = await readFile("/proc/self/mountinfo", "utf8");
  const found = new Set<string>();
  for (const line of mountinfo.split("\n")) {
    const fields = line.split(" ");
    const mountPoint = unescapeMountinfo(fields[4] ?? "");
    if (mountPoint.length <= prefix.length || !mountPoint.startsWith(prefix)) continue;
    if ((fields[5] ?? "").split(",").includes("rw")) found.add(mountPoint);
    else found.delete(mountPoint); // a later mount on the same point wins
  }
  return [...found].sort((a, b) => a.split("/").length - b.split("/").length).slice(0, max);
}
