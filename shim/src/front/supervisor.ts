// The front keeps the shim daemon running as its child: a daemon that dies by a signal or with
// a non-zero status is started again (back-off 100 ms doubling to 5 s, back to 100 ms once a
// daemon stayed up for a minute); a status 0 exit (idle, SIGTERM) is the daemon's own choice
// and goes to the front, which decides.
import { type ChildProcess, spawn } from "node:child_process";
import { LOCK_HELD_STATUS } from "../launcher/lock.js";

export interface SupervisorLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface SupervisorOptions {
  command: string;
  args: readonly string[];
  /** The daemon's stdout and stderr (the log file); never the front's own. */
  outputFd: number | "ignore";
  env?: NodeJS.ProcessEnv;
  log: SupervisorLog;
  /** Each start of a daemon (the first and every respawn). */
  onSpawn?: (pid: number, respawn: boolean) => void;
  /** The daemon exited with status 0 on its own: return true to start it again. */
  onCleanExit: () => boolean;
  /** The daemon died (`failures` in a row without a stable run): return true to give up. */
  onFailure?: (cause: string, failures: number) => boolean;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** A daemon up this long resets the back-off. */
  stableAfterMs?: number;
}

export class DaemonSupervisor {
  private child: ChildProcess | undefined;
  private startedAt = 0;
  private backoff: number;
  private respawnTimer: NodeJS.Timeout | undefined;
  private stopping = false;
  private respawns = 0;
  private failures = 0;
  private lockHeld = false;
  private exited: Promise<void> = Promise.resolve();

  constructor(private readonly opts: SupervisorOptions) {
    this.backoff = opts.minBackoffMs ?? 100;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** How many times a daemon was started again after dying. */
  get respawnCount(): number {
    return this.respawns;
  }

  start(): void {
    this.spawnDaemon(false);
  }

  /**
   * Sends `signal` to the daemon and resolves once it has exited (SIGKILL after `graceMs`);
   * no respawn after this.
   */
  async stop(signal: NodeJS.Signals = "SIGTERM", graceMs = 60_000): Promise<void> {
    this.stopping = true;
    clearTimeout(this.respawnTimer);
    const child = this.child;
    if (!child) return;
    child.kill(signal);
    const kill = setTimeout(() => {
      this.opts.log.warn(
        { pid: child.pid, graceMs },
        "front: the shim daemon did not exit in time; killing it",
      );
      child.kill("SIGKILL");
    }, graceMs);
    try {
      await this.exited;
    } finally {
      clearTimeout(kill);
    }
  }

  private spawnDaemon(respawn: boolean): void {
    if (this.stopping) return;
    const out = this.opts.outputFd;
    const child = spawn(this.opts.command, [...this.opts.args], {
      stdio: ["ignore", out, out],
      env: this.opts.env ?? process.env,
      cwd: "/",
    });
    this.child = child;
    this.startedAt = Date.now();
    let settle: () => void = () => {};
    this.exited = new Promise<void>((resolve) => {
      settle = resolve;
    });
    let done = false;
    const onEnd = (code: number | null, signal: NodeJS.Signals | null, err?: Error) => {
      if (done) return;
      done = true;
      if (this.child === child) this.child = undefined;
      settle();
      this.ended(code, signal, err);
    };
    child.once("error", (err) => onEnd(null, null, err));
    child.once("exit", (code, signal) => onEnd(code, signal));
    if (child.pid !== undefined) {
      this.opts.log.info({ daemonPid: child.pid, respawn }, "front: shim daemon started");
      this.opts.onSpawn?.(child.pid, respawn);
    }
  }

  private ended(code: number | null, signal: NodeJS.Signals | null, err?: Error): void {
    if (this.stopping) return;
    const upMs = Date.now() - this.startedAt;
    if (code === 0) {
      if (this.opts.onCleanExit()) {
        this.opts.log.info(
          { upMs },
          "front: the shim daemon exited (status 0) with a request waiting; starting it again",
        );
        this.spawnDaemon(true);
      }
      return;
    }
    // Another daemon (left by a killed front) serves the backend sockets: not a failure; wait
    // for it to go, quietly.
    if (code === LOCK_HELD_STATUS) {
      if (!this.lockHeld)
        this.opts.log.warn(
          { retryMs: this.opts.maxBackoffMs ?? 5000 },
          "front: another shim daemon holds the lock; relaying to it and starting ours once it is gone",
        );
      this.lockHeld = true;
      this.respawnTimer = setTimeout(() => this.spawnDaemon(true), this.opts.maxBackoffMs ?? 5000);
      return;
    }
    this.lockHeld = false;
    if (upMs >= (this.opts.stableAfterMs ?? 60_000)) {
      this.backoff = this.opts.minBackoffMs ?? 100;
      this.failures = 0;
    }
    this.failures++;
    const cause = err
      ? `could not be started: ${err.message}`
      : signal
        ? `was killed by ${signal}`
        : `exited with status ${code}`;
    if (this.opts.onFailure?.(cause, this.failures)) {
      this.opts.log.error(
        { cause, code, signal, upMs, failures: this.failures },
        `front: the shim daemon ${cause}; giving up`,
      );
      return;
    }
    const delay = this.backoff;
    this.backoff = Math.min(this.backoff * 2, this.opts.maxBackoffMs ?? 5000);
    this.respawns++;
    this.opts.log.error(
      { cause, code, signal, upMs, delayMs: delay, respawns: this.respawns },
      `front: the shim daemon ${cause}; starting it again in ${delay} ms`,
    );
    this.respawnTimer = setTimeout(() => this.spawnDaemon(true), delay);
  }
}
