// A pod's netns held open by the daemon, for work that may outlive its name: once a pod's delete
// has replied, containerd unmounts and removes the netns file, and a path through the daemon's
// own fd still reaches the netns (and keeps it, with the TAP in it, until that work is done).
import { open } from "node:fs/promises";

export interface HeldNetns {
  /** /proc/<daemon pid>/fd/<fd>: nsenter --net= takes it like the netns file. */
  readonly path: string;
  release(): Promise<void>;
}

/** Undefined when the netns file is gone already (the netns took its devices with it). */
export async function holdNetns(netnsPath: string): Promise<HeldNetns | undefined> {
  try {
    const fh = await open(netnsPath, "r");
    return { path: `/proc/${process.pid}/fd/${fh.fd}`, release: () => fh.close() };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}
