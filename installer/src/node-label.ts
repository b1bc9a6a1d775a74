// The node label that tells the scheduler (through the RuntimeClass's nodeSelector) that this
// node can run cloudhv pods. Set only after containerd serves the handler; removed first on
// uninstall so no new pod lands here while the runtime goes away.
import { inClusterEndpoint, type KubeEndpoint, kubeRequest } from "./kube.js";
import { NODE_LABEL, NODE_LABEL_VALUE } from "./paths.js";

export interface NodeLabeler {
  set(node: string): Promise<void>;
  remove(node: string): Promise<void>;
}

/** A JSON merge patch of the node's labels (null deletes the key). */
export function labelPatch(value: string | null): unknown {
  return { metadata: { labels: { [NODE_LABEL]: value } } };
}

export function kubeLabeler(endpoint?: KubeEndpoint): NodeLabeler {
  const patch = async (node: string, value: string | null) => {
    const ep = endpoint ?? inClusterEndpoint();
    try {
      await kubeRequest(ep, "PATCH", `/api/v1/nodes/${encodeURIComponent(node)}`, labelPatch(value));
    } catch (err) {
      throw new Error(
        `cannot ${value === null ? "remove" : "set"} label ${NODE_LABEL} on node ${node}: ${(err as Error).message}`,
      );
    }
  };
  return {
    set: (node) => patch(node, NODE_LABEL_VALUE),
    remove: (node) => patch(node, null),
  };
}
