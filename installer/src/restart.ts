// Restarting the node's containerd and knowing it came back: the restart runs in the host's
// namespaces (nsenter into PID 1, which needs hostPID) through systemd, and "came back" means
// the CRI plugin answers Status with RuntimeReady and lists the handlers we expect.
import { execFile } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { CriError, type CriStatus, criStatus } from "./cri-status.js";
import { HANDLER, RUNTIME_TYPE } from "./paths.js";

export interface Restarter {
  /** For logs: what restarting means here ("systemctl restart containerd"). */
  readonly describe: string;
  restart(): Promise<void>;
}

export class RestartError extends Error {
  override readonly name = "RestartError";
}

const run = promisify(execFile);
const HOST = ["nsenter", "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--"];

/** systemd on the host: the first of `services` that is active (k3s vs k3s-agent) is restarted. */
export async function systemdRestarter(services: readonly string[]): Promise<Restarter> {
  let unit = services[0] as string;
  for (const candidate of services) {
    const active = await run(HOST[0] as string, [
      ...HOST.slice(1),
      "systemctl",
      "is-active",
      "--quiet",
      candidate,
    ]).then(
      () => true,
      () => false,
    );
    if (active) {
      unit = candidate;
      break;
    }
  }
  return {
    describe: `systemctl restart ${unit} (in the host's namespaces)`,
    async restart() {
      try {
        await run(HOST[0] as string, [...HOST.slice(1), "systemctl", "restart", unit], { timeout: 120_000 });
      } catch (err) {
        const e = err as { stderr?: string; message: string };
        throw new RestartError(`systemctl restart ${unit} failed: ${(e.stderr || e.message).trim()}`);
      }
    },
  };
}

export interface HealthExpectation {
  /** Local path of containerd's socket. */
  address: string;
  /** true: our handler must be live; false: it must be gone; undefined: either. */
  handler?: boolean;
  timeoutMs?: number;
}

/** What a CRI status says is wrong, or undefined when it matches. */
export function healthProblem(status: CriStatus, handler: boolean | undefined): string | undefined {
  const ready = status.conditions.RuntimeReady;
  if (!ready?.status)
    return `CRI runtime not ready${ready ? `: ${ready.reason} ${ready.message}`.trimEnd() : ""}`;
  const live = status.handlers.includes(HANDLER);
  if (handler === true) {
    if (!live)
      return `CRI plugin has no "${HANDLER}" runtime handler (handlers: ${status.handlers.join(", ") || "none"})`;
    const rt = (
      status.config?.containerd as { runtimes?: Record<string, { runtimeType?: string }> } | undefined
    )?.runtimes?.[HANDLER];
    if (rt?.runtimeType !== undefined && rt.runtimeType !== RUNTIME_TYPE)
      return `handler "${HANDLER}" has runtime type ${rt.runtimeType}, not ${RUNTIME_TYPE}`;
  }
  if (handler === false && live) return `CRI plugin still has a "${HANDLER}" runtime handler`;
  return undefined;
}

/** Polls CRI Status until it matches; throws with the last thing seen. */
export async function waitHealthy(expect: HealthExpectation): Promise<CriStatus> {
  const deadline = Date.now() + (expect.timeoutMs ?? 60_000);
  let last = "no answer yet";
  for (;;) {
    try {
      const status = await criStatus(expect.address, 5000);
      const problem = healthProblem(status, expect.handler);
      if (!problem) return status;
      last = problem;
    } catch (err) {
      const message = (err as Error).message;
      last = /grpc-status 12/.test(message)
        ? "containerd answers but its CRI plugin did not load (see containerd's log)"
        : err instanceof CriError
          ? message
          : String(err);
    }
    if (Date.now() > deadline)
      throw new RestartError(`containerd at ${expect.address} is not healthy: ${last}`);
    await sleep(250);
  }
}
