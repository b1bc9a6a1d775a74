// The daemon's one cloudhv-net process (guest/agent/src/bin/cloudhv-net): pod networks by
// netlink from a thread in the pod's netns, so a pod's attach and detach start no process. One
// JSON request per line on its stdin, one answer per line on its stdout, matched by id; requests
// run at once. A helper that dies fails what it had in flight and is started again on the next
// request. Its answers are parsed like any tool's output: checked, never trusted for shape.
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { z } from "zod";
import { ShimError, truncateUntrusted } from "../errors.js";
import { log } from "../util/log.js";

/** A request the helper could not do: which step failed, and which tc operation (1-based). */
export class NetHelperError extends ShimError {
  override readonly name = "NetHelperError";
  constructor(
    readonly step: string,
    readonly index: number | undefined,
    message: string,
  ) {
    super("FailedPrecondition", message);
  }
}

const Answer = z.looseObject({
  id: z.number(),
  ok: z.boolean(),
  step: z.string().optional(),
  index: z.number().int().nullish(),
  error: z.string().optional(),
});

/** How long a request may take: netlink answers in microseconds, a stuck helper never. */
const REQUEST_MS = 10_000;

interface Pending {
  resolve(answer: Record<string, unknown>): void;
  reject(err: Error): void;
}

export class NetHelper {
  private child: ChildProcessWithoutNullStreams | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private stderr = "";

  constructor(
    readonly binary: string,
    private readonly requestMs = REQUEST_MS,
  ) {}

  /**
   * Runs `op` in the helper; resolves with its answer's fields, rejects with NetHelperError
   * (the step that failed) or, when the helper is missing, dies or does not answer in 10 s,
   * with an error that says so.
   */
  request(op: string, args: Record<string, unknown>): Promise<Record<string, unknown>> {
    const child = this.child ?? this.start();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ShimError("Unavailable", `cloudhv-net did not answer ${op} within ${this.requestMs} ms`));
      }, this.requestMs);
      this.pending.set(id, {
        resolve: (a) => {
          clearTimeout(timer);
          resolve(a);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      child.stdin.write(`${JSON.stringify({ id, op, ...args })}\n`);
    });
  }

  /** Ends the helper (the daemon's exit; tests). Requests in flight fail. */
  close(): void {
    this.child?.stdin.end();
    this.child?.kill("SIGKILL");
  }

  private start(): ChildProcessWithoutNullStreams {
    const child = spawn(this.binary, [], { stdio: ["pipe", "pipe", "pipe"] });
    this.child = child;
    this.stderr = "";
    // Idle, it keeps nothing alive: a request's own timer does while one is in flight.
    child.unref();
    for (const s of [child.stdin, child.stdout, child.stderr]) (s as unknown as { unref?(): void }).unref?.();
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (d: string) => {
      if (this.stderr.length < 4096) this.stderr += d;
    });
    child.stdin.on("error", () => {}); // an exit says more; reported below
    const gone = (why: string) => {
      if (this.child !== child) return;
      this.child = undefined;
      const detail = this.stderr.trim() ? `: ${truncateUntrusted(this.stderr.trim(), 1024)}` : "";
      const err = new ShimError("Unavailable", `cloudhv-net (${this.binary}) ${why}${detail}`);
      if (this.pending.size > 0) log.warn({ err: err.message }, "the pod network helper is gone");
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
    child.once("error", (err) => gone(`could not run: ${err.message}`));
    child.once("exit", (code, signal) => gone(`exited (${signal ?? code})`));
    createInterface({ input: child.stdout }).on("line", (line) => {
      let answer: z.infer<typeof Answer>;
      try {
        answer = Answer.parse(JSON.parse(line));
      } catch {
        log.warn({ line: truncateUntrusted(line, 256) }, "cloudhv-net: an answer that is not one");
        return;
      }
      const waiting = this.pending.get(answer.id);
      if (!waiting) return;
      this.pending.delete(answer.id);
      if (answer.ok) waiting.resolve(answer);
      else
        waiting.reject(
          new NetHelperError(
            answer.step ?? "unknown",
            answer.index ?? undefined,
            truncateUntrusted(answer.error ?? "failed", 2000),
          ),
        );
    });
    return child;
  }
}

const helpers = new Map<string, NetHelper>();

/** The daemon's helper for `binary` (one per path: the config names it once). */
export function netHelper(binary: string): NetHelper {
  let h = helpers.get(binary);
  if (!h) {
    h = new NetHelper(binary);
    helpers.set(binary, h);
  }
  return h;
}
