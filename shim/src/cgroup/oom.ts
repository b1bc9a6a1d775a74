// The VMM's oom_score_adj follows the pod's QoS class the way kubelet scores containers
// (pkg/kubelet/qos/policy.go): the VM holds every container of the pod, so the OOM killer must
// rank it as kubelet would rank them, not as containerd (-999) that spawned us.
import { readFile, writeFile } from "node:fs/promises";
import type { Logger } from "../util/log.js";
import type { PodQos } from "./path.js";

export const GUARANTEED_OOM_SCORE_ADJ = -997;
export const BESTEFFORT_OOM_SCORE_ADJ = 1000;
/** kubelet keeps Burstable between Guaranteed-plus-1000 and one below BestEffort. */
export const BURSTABLE_MIN_OOM_SCORE_ADJ = 1000 + GUARANTEED_OOM_SCORE_ADJ;
export const BURSTABLE_MAX_OOM_SCORE_ADJ = BESTEFFORT_OOM_SCORE_ADJ - 1;

/**
 * The VMM's score: fixed for Guaranteed and BestEffort; for Burstable, kubelet's score of the
 * pod's most protected container (the lowest `process.oomScoreAdj` kubelet gave a container
 * that joined; it is computed from that container's memory request), kept inside the Burstable
 * range, and the least protected Burstable score until a container has joined. Unknown QoS (a
 * cgroup kubelet did not name): the sandbox spec's own value, if any.
 */
export function oomScoreAdjFor(
  qos: PodQos | undefined,
  containerScores: readonly number[],
  specScore?: number,
): number | undefined {
  switch (qos) {
    case "Guaranteed":
      return GUARANTEED_OOM_SCORE_ADJ;
    case "BestEffort":
      return BESTEFFORT_OOM_SCORE_ADJ;
    case "Burstable": {
      const lowest = containerScores.length ? Math.min(...containerScores) : BURSTABLE_MAX_OOM_SCORE_ADJ;
      return Math.min(BURSTABLE_MAX_OOM_SCORE_ADJ, Math.max(BURSTABLE_MIN_OOM_SCORE_ADJ, lowest));
    }
    default:
      return specScore;
  }
}

/** Writes a process's oom_score_adj (faked in unit tests). */
export type OomScoreSetter = (pid: number, score: number, log: Logger) => Promise<void>;

/**
 * Sets it through /proc. A host may refuse a lower score (no CAP_SYS_RESOURCE, some sandboxed
 * VMs refuse negative ones): the VMM then keeps the higher one it has, which only makes it
 * more likely to be killed first, never less; the refusal is logged.
 */
export const procOomScoreSetter: OomScoreSetter = async (pid, score, log) => {
  const file = `/proc/${pid}/oom_score_adj`;
  try {
    await writeFile(file, `${score}\n`);
  } catch (err) {
    const current = await readFile(file, "utf8").catch(() => "?");
    log.warn(
      { pid, wanted: score, current: current.trim(), err: (err as Error).message },
      "the host refused the VMM's oom_score_adj; it keeps its current one",
    );
  }
};
