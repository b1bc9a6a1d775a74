// A directory cloudhv created carries this marker, so that uninstall removes it with its
// content only when it is still the directory cloudhv made: not one an admin made (or mounted
// a disk on) at the same path since. The installer writes it into the directories it creates;
// the shim writes it into its state dir when it creates it (a tmpfs /run loses it at reboot).
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";

export const CREATED_MARKER = ".cloudhv-created";

/** `mkdir -p dir`; when this call created `dir` itself, marks it as cloudhv's. */
export async function mkdirMarked(dir: string, mode: number): Promise<void> {
  const first = await mkdir(dir, { recursive: true, mode });
  if (first === undefined) return;
  await writeFile(
    path.join(dir, CREATED_MARKER),
    "created by cloudhv: uninstall removes this directory with its content\n",
    { flag: "w", mode: 0o644 },
  );
}
