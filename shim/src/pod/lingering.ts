// Host work a pod's delete does not wait for: once its VMM is killed, what is left only waits on
// the kernel: the VMM's exit (freeing the guest's memory), then what outlives it (virtiofsd,
// disks, cgroup, rootfs) and what is left in the pod's netns (the TAP, the veth's qdisc, the
// port-forward's nat rule; RCU grace periods, 15-35 ms for a TAP here). Kept by key (the netns
// path, else the VM's id) so that a pod created into the same netns waits for it, and awaited as a whole by the
// daemon's exit.

export class Lingering {
  private readonly work = new Map<string, Promise<void>>();

  /** Adds `work` under `key`; it is waited for with whatever is there already. Never rejects. */
  add(key: string, work: Promise<unknown>): Promise<void> {
    const all: Promise<void> = Promise.allSettled([this.work.get(key), work]).then(() => {
      if (this.work.get(key) === all) this.work.delete(key);
    });
    this.work.set(key, all);
    return all;
  }

  /** Resolves once the work under `key` is done (at once when there is none). */
  async settled(key: string): Promise<void> {
    while (this.work.has(key)) await this.work.get(key);
  }

  /** Resolves once every piece of work is done. */
  async all(): Promise<void> {
    while (this.work.size > 0) await Promise.all(this.work.values());
  }
}
