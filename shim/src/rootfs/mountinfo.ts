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
