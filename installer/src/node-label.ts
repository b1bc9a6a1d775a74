// The node label that tells the scheduler (through the RuntimeClass's nodeSelector) that this
// node can run cloudhv pods. Set only after containerd serves the handler; removed first on
// uninstall so no new pod lands here while the runtime goes away.
import type { KubeConfig } from "@kubernetes/client-node";
import { inClusterConfig, KubeError, patchNodeLabels } from "./kube.js";
import { NODE_LABEL, NODE_LABEL_VALUE } from "./paths.js";

export interface NodeLabeler {
  set(node: string): Promise<void>;
  remove(node: string): Promise<void>;
}

/** Labels the node through the API server: `kc`, or else the pod's service account. */
export function kubeLabeler(kc?: KubeConfig): NodeLabeler {
  const patch = async (node: string, value: string | null) => {
    try {
      // A JSON merge patch of the node's labels: null deletes the key.
      await patchNodeLabels(kc ?? inClusterConfig(), node, { [NODE_LABEL]: value });
    } catch (err) {
      throw new KubeError(
        `cannot ${value === null ? "remove" : "set"} label ${NODE_LABEL} on node ${node}: ${(err as Error).message}`,
        (err as KubeError).status,
      );
    }
  };
  return {
    set: (node) => patch(node, NODE_LABEL_VALUE),
    remove: (node) => patch(node, null),
  };
}
