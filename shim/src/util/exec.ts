// The one way the host side runs a tool: argv only (no value is ever parsed by a shell: the few
// fixed `sh -c` scripts that save spawns take every value as an argument), logged, with a
// timeout, returning stdout/stderr/exit code. Callers decide what a non-zero exit means.
import { spawn } from "node:child_process";
import { log } from "./log.js";

export interface ExecResult {
  argv: readonly string[];
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  timeoutMs?: number;
  input?: string | Buffer;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

/** A host tool that failed (errors.ts maps it to Unavailable: a retry may succeed). */
export class ExecError extends Error {
  override readonly name = "ExecError";
  constructor(readonly result: ExecResult) {
    const how = result.signal ? `was killed by ${result.signal}` : `exited with ${result.code}`;
    const detail = result.stderr.trim().split("\n").slice(-5).join("\n");
    super(`${result.argv.join(" ")} ${how}${detail ? `: ${detail}` : ""}`);
  }
}

export function exec(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const [file, ...args] = argv;
  if (!file) throw new Error("exec: empty argv");
  log.debug({ argv }, "exec");
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      stdio: ["pipe", "pipe", "pipe"],
      env: opts.env ?? process.env,
      cwd: opts.cwd,
      timeout: opts.timeoutMs ?? 60_000,
      killSignal: "SIGKILL",
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    child.on("error", reject);
    child.on("close", (code, signal) =>
      resolve({
        argv,
        code,
        signal,
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
      }),
    );
    child.stdin.end(opts.input);
  });
}

/** exec, and throw ExecError unless the tool exited 0. */
export async function execOk(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const result = await exec(argv, opts);
  if (result.code !== 0) throw new ExecError(result);
  return result;
}
