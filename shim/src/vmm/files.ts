// Resolves a binary the way spawn does, so that a missing one is reported by name up front.
import { access, constants, stat } from "node:fs/promises";
import path from "node:path";

/** Resolves a binary the way spawn would (a path, or a name looked up on PATH); undefined if absent. */
export async function findExecutable(nameOrPath: string): Promise<string | undefined> {
  const candidates = nameOrPath.includes("/")
    ? [nameOrPath]
    : (process.env.PATH ?? "")
        .split(":")
        .filter(Boolean)
        .map((dir) => path.join(dir, nameOrPath));
  for (const file of candidates) {
    try {
      await access(file, constants.X_OK);
      if ((await stat(file)).isFile()) return file;
    } catch {
      // next
    }
  }
  return undefined;
}
