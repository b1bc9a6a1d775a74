// The helm uninstall hook's wait: the cleanup DaemonSet's pods turn ready once `uninstall` is
// done on their node, so "all ready" means every node is clean and helm may delete the rest.
import type { KubeConfig } from "@kubernetes/client-node";
import type { Logger } from "pino";
import { inClusterConfig, readDaemonSet } from "./kube.js";

export async function waitForDaemonSet(
  namespace: string,
  name: string,
  timeoutMs: number,
  log: Logger,
  /** Default: the pod's service account. */
  kc: KubeConfig = inClusterConfig(),
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  for (;;) {
    const ds = await readDaemonSet(kc, namespace, name);
    const want = ds.status?.desiredNumberScheduled ?? 0;
    const ready = ds.status?.numberReady ?? 0;
    const seen = `${ready}/${want}`;
    if (seen !== last)
      log.info({ daemonset: `${namespace}/${name}`, ready, want }, "waiting for the cleanup on every node");
    last = seen;
    if ((ds.status?.observedGeneration ?? 0) >= (ds.metadata?.generation ?? 1) && ready >= want) return;
    if (Date.now() > deadline)
      throw new Error(
        `daemonset ${namespace}/${name}: only ${ready} of ${want} nodes cleaned up in ${timeoutMs / 1000} s`,
      );
    await new Promise((r) => setTimeout(r, 2000));
  }
}
