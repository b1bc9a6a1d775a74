// containerd's CRI plugin marks a pod's sandbox and its app containers with annotations; they
// decide whether a task boots a VM or joins the one its sandbox booted.
import { invalid } from "../errors.js";
import { ID_PATTERN } from "../util/ids.js";

export const CRI_CONTAINER_TYPE = "io.kubernetes.cri.container-type";
export const CRI_SANDBOX_ID = "io.kubernetes.cri.sandbox-id";

/** standalone: a plain task with a VM of its own; sandbox: boots its pod's VM; container: joins it. */
export type PodRole = { kind: "standalone" } | { kind: "sandbox" | "container"; sandboxId: string };

export function podRole(annotations: Record<string, unknown>, taskId: string): PodRole {
  const type = annotations[CRI_CONTAINER_TYPE];
  if (type === undefined) return { kind: "standalone" };
  const sandboxId = annotations[CRI_SANDBOX_ID];
  if (type !== "sandbox" && type !== "container") {
    throw invalid(
      `task ${taskId}: annotation ${CRI_CONTAINER_TYPE}="${String(type)}" must be "sandbox" or "container"`,
    );
  }
  if (typeof sandboxId !== "string" || !ID_PATTERN.test(sandboxId)) {
    throw invalid(
      `task ${taskId}: annotation ${CRI_SANDBOX_ID}="${String(sandboxId)}" must name the pod's sandbox`,
    );
  }
  return { kind: type, sandboxId };
}
