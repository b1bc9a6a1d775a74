// What the DaemonSet's installer does after installing, until its pod is stopped: converge.
// It polls containerd's CRI Status; as soon as containerd serves the `cloudhv` handler (for
// example after the admin restarted it, with --restart none) the node is labeled and the pod
// turns Ready (the ready file the readiness probe reads); if the handler goes away, the pod
// turns unready and the label comes off. It never installs again, and it stops doing anything
// once an uninstall has begun on the node (the state file says so, or is gone).
import { rm, writeFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import type { Logger } from "pino";
import { handlerLiveAt, readState } from "./install.js";
import type { NodeLabeler } from "./node-label.js";
import { type HostRoot, NODE_LABEL, NODE_LABEL_VALUE } from "./paths.js";

export interface WatchOptions {
  root: HostRoot;
  log: Logger;
  /** Local path of containerd's socket. */
  address: string;
  nodeName?: string | undefined;
  labeler?: NodeLabeler | undefined;
  /** Written while ready, removed while not (the readiness probe reads it). */
  readyFile?: string | undefined;
  /** What install left: is the handler live, is the node labeled. */
  live: boolean;
  labeled: boolean;
  pollMs?: number;
  /** Aborting ends the watch (SIGTERM). */
  signal: AbortSignal;
}

export type WatchEnd = "stopped" | "uninstalling";

export async function setReady(file: string | undefined, ready: boolean): Promise<void> {
  if (!file) return;
  if (ready) await writeFile(file, `${new Date().toISOString()}\n`);
  else await rm(file, { force: true });
}

export async function watchNode(opts: WatchOptions): Promise<WatchEnd> {
  const { log } = opts;
  const labelWanted = Boolean(opts.nodeName && opts.labeler);
  let labeled = opts.labeled;
  let ready = opts.live && (labeled || !labelWanted);
  await setReady(opts.readyFile, ready);
  if (ready)
    log.info(
      { readyFile: opts.readyFile },
      "done; watching containerd until stopped (stopping does not uninstall)",
    );
  else
    log.info(
      { readyFile: opts.readyFile },
      "waiting for containerd to serve the cloudhv handler (polling its CRI Status); not ready until then",
    );
  for (;;) {
    try {
      await sleep(opts.pollMs ?? 5000, undefined, { signal: opts.signal });
    } catch {
      return "stopped";
    }
    const state = await readState(opts.root).catch(() => undefined);
    if (!state || state.uninstalling) {
      await setReady(opts.readyFile, false);
      log.info(
        state ? { uninstallPid: state.uninstalling?.pid, since: state.uninstalling?.since } : {},
        "cloudhv is being uninstalled from this node: this installer does nothing more (no install, no label) until its pod is deleted",
      );
      return "uninstalling";
    }
    const live = await handlerLiveAt(opts.address);
    if (live === true && !ready) {
      if (labelWanted && !labeled) {
        try {
          await opts.labeler?.set(opts.nodeName as string);
          labeled = true;
          log.info({ node: opts.nodeName, label: `${NODE_LABEL}=${NODE_LABEL_VALUE}` }, "node labeled");
        } catch (err) {
          log.warn({ err: (err as Error).message }, "could not label the node; trying again");
          continue;
        }
      }
      ready = true;
      await setReady(opts.readyFile, true);
      log.info("containerd serves the cloudhv handler: ready");
    } else if (live === false && ready) {
      ready = false;
      await setReady(opts.readyFile, false);
      if (labelWanted && labeled) {
        try {
          await opts.labeler?.remove(opts.nodeName as string);
          labeled = false;
        } catch (err) {
          log.warn({ err: (err as Error).message }, "could not remove the node label");
        }
      }
      log.warn(
        "containerd no longer serves the cloudhv handler (restarted without it?): not ready, node label removed; ready again once it does",
      );
    }
  }
}

/** Keeps the process up, doing nothing, until `signal` aborts. */
export function idle(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    // A timer keeps Node alive: signal listeners alone do not.
    const timer = setInterval(() => undefined, 1 << 30);
    signal.addEventListener(
      "abort",
      () => {
        clearInterval(timer);
        resolve();
      },
      { once: true },
    );
  });
}
