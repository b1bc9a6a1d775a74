// The agent of a VM a previous daemon served. Its channel has no sessions: on virtio-serial the
// guest learns that the old host left only when it next runs, and drops what is queued in the
// port then, so a new daemon that connects and asks at once can lose its first request with
// the old connection's leftovers (seen under load: several of 10 healthy pods given up after
// 30 s without an answer, and stopped). So each try is short and on a fresh connection, after
// a pause that lets the guest see the previous one go; the whole stays within the budget.
import type { AgentClient } from "../agent/client.js";
import { truncateUntrusted } from "../errors.js";
import type { Logger } from "../util/log.js";
import { TIMED_OUT, within } from "../util/time.js";
import type { VmHandle } from "../vmm/types.js";

/** One try: far above a Health round trip on a loaded TCG node (well under a second). */
export const ADOPT_AGENT_TRY_MS = 5_000;
/** Between tries: the guest notices the hang-up (its bridge polls every 50 ms). */
export const ADOPT_AGENT_PAUSE_MS = 500;

/** The agent, or undefined once `budgetMs` is spent or the VM has exited (the last error is logged). */
export async function connectAdoptedAgent(
  vm: Pick<VmHandle, "connectAgent" | "exited">,
  budgetMs: number,
  log: Logger,
): Promise<AgentClient | undefined> {
  const until = Date.now() + budgetMs;
  for (let attempt = 1; ; attempt++) {
    const left = until - Date.now();
    try {
      return await vm.connectAgent({ timeoutMs: Math.max(1, Math.min(ADOPT_AGENT_TRY_MS, left)) });
    } catch (err) {
      const message = (err as Error).message;
      const exited = (await within(vm.exited, 0)) !== TIMED_OUT;
      if (exited || until - Date.now() <= ADOPT_AGENT_PAUSE_MS) {
        log.warn({ err: message, attempts: attempt }, "adopted VM: its agent does not answer; stopping it");
        return undefined;
      }
      log.info(
        { attempt, err: truncateUntrusted(message, 300) },
        "adopted VM: no answer from its agent yet; trying a fresh connection",
      );
      await within(vm.exited, ADOPT_AGENT_PAUSE_MS);
    }
  }
}
