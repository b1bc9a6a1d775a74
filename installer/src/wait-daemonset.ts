// The helm uninstall hooks' Kubernetes side:
//   delete-daemonset  first: the installer DaemonSet goes (and its pods with it), so no
//                     installer runs, installs or labels on any node during the uninstall
//   wait-daemonset    last: the cleanup DaemonSet's pods turn ready once `uninstall` is done on
//                     their node, so "all ready" means every node is clean and helm may delete
//                     the rest
import type { KubeConfig } from "@kubernetes/client-node";
import type { Logger } from "pino";
import { CodedError, EXIT } from "./exit-codes.js";
import { deleteDaemonSet, inClusterConfig, listPods, readDaemonSet } from "./kube.js";

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
    if (Date.now() > deadline) {
      // Which nodes: from the DaemonSet's pods (best effort: the message stands without them).
      const labels = ds.spec?.selector?.matchLabels ?? {};
      const selector = Object.entries(labels)
        .map(([k, v]) => `${k}=${v}`)
        .join(",");
      const pending = selector
        ? await listPods(kc, namespace, selector)
            .then((pods) => pods.filter((p) => !p.ready).map((p) => `${p.node ?? "?"} (pod ${p.name})`))
            .catch(() => [] as string[])
        : [];
      throw new CodedError(
        `daemonset ${namespace}/${name}: only ${ready} of ${want} nodes cleaned up in ${timeoutMs / 1000} s${pending.length ? `; not done: ${pending.join(", ")} (kubectl -n ${namespace} logs <pod> says why)` : ""}`,
        EXIT.TIMEOUT,
      );
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

/** Deletes a DaemonSet and waits until no pod matching `selector` is left. */
export async function deleteDaemonSetAndWait(
  namespace: string,
  name: string,
  selector: string,
  timeoutMs: number,
  log: Logger,
  kc: KubeConfig = inClusterConfig(),
  pollMs = 1000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const deleted = await deleteDaemonSet(kc, namespace, name);
  log.info(
    { daemonset: `${namespace}/${name}`, deleted },
    deleted ? "daemonset deleted" : "daemonset already gone",
  );
  let last = -1;
  for (;;) {
    const pods = await listPods(kc, namespace, selector);
    if (pods.length === 0) return;
    if (pods.length !== last) log.info({ pods: pods.map((p) => p.name) }, "waiting for its pods to stop");
    last = pods.length;
    if (Date.now() > deadline)
      throw new CodedError(
        `daemonset ${namespace}/${name} was deleted but its pods ${pods.map((p) => `${p.name} (node ${p.node ?? "?"})`).join(", ")} still run after ${timeoutMs / 1000} s`,
        EXIT.TIMEOUT,
      );
    await new Promise((r) => setTimeout(r, pollMs));
  }
}
