// The front: the small long-lived process that owns every socket containerd and the shim binary
// talk to, and keeps the shim daemon behind them (its child, on backend sockets). containerd
// reads the close of a shim connection as the shim's death; with the front in between, a
// daemon crash is a pause, not the end of every pod. The front never handles guest data: it
// serves Admin (forwarded), relays whole ttrpc frames, and restarts the daemon.
import { chmod, mkdir, rm, rmdir } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { namespaceSocketPath, SOCKET_SCHEME } from "../launcher/daemon-address.js";
import { TtrpcClient } from "../ttrpc/client.js";
import { messageCodec } from "../ttrpc/proto.js";
import { TtrpcServer } from "../ttrpc/server.js";
import { Code, TtrpcError } from "../ttrpc/status.js";
import { RelayListener, type RelayLog, type RelayOptions } from "./relay.js";
import { StdioHolds } from "./stdio-holds.js";
import { DaemonSupervisor, type SupervisorLog, type SupervisorOptions } from "./supervisor.js";

const ADMIN = "cloudhv.shim.v1.Admin";

export interface FrontOptions {
  /** `<state_dir>/shim-H.sock`: the control socket the shim binary calls. */
  controlSocket: string;
  /** `<state_dir>/backend/shim-H.sock`: where the daemon listens. */
  backendControl: string;
  /** How to run the daemon (it is told `backendControl` in its arguments). */
  daemon: Pick<SupervisorOptions, "command" | "args" | "outputFd" | "env"> &
    Partial<Pick<SupervisorOptions, "minBackoffMs" | "maxBackoffMs" | "stableAfterMs">>;
  log: RelayLog & SupervisorLog;
  relay?: Omit<RelayOptions, "log">;
  /** How long Listen waits for a (re)starting daemon. */
  listenDeadlineMs?: number;
  /** How long ForceDelete waits for a (re)starting daemon. */
  deleteDeadlineMs?: number;
  /** Failed daemon starts in a row after which a front no containerd connection needs exits. */
  giveUpAfter?: number;
}

export class Front {
  private readonly server = new TtrpcServer();
  private readonly supervisor: DaemonSupervisor;
  /** Front namespace socket → its relay; the namespaces the daemon must listen for. */
  private readonly relays = new Map<string, RelayListener>();
  private readonly namespaces = new Set<string>();
  /** Namespaces a Listen is being sent for (ensureListening). */
  private readonly listening = new Set<string>();
  private readonly opening = new Map<string, Promise<void>>();
  /** Write ends of live processes' output FIFOs, for while the daemon is away. */
  private readonly stdio = new StdioHolds();
  private adminInFlight = 0;
  private lastFailure: string | undefined;
  private readonly abort = new AbortController();
  private finished: Promise<string> | undefined;
  private resolveDone: (why: string) => void = () => {};
  /** Resolves with the reason once the front has closed everything. */
  readonly done: Promise<string>;

  constructor(private readonly opts: FrontOptions) {
    this.done = new Promise((resolve) => {
      this.resolveDone = resolve;
    });
    this.supervisor = new DaemonSupervisor({
      ...opts.daemon,
      log: opts.log,
      onSpawn: (_pid, respawn) => {
        if (respawn) this.relisten();
      },
      // A daemon that cannot start (a bad config) while no containerd connection depends on
      // the front: give up, so `start` reports it instead of a front retrying forever.
      onFailure: (cause, failures) => {
        this.lastFailure = cause;
        if (this.relays.size > 0 || failures < (opts.giveUpAfter ?? 5)) return false;
        void this.shutdown(`the shim daemon ${cause} ${failures} times in a row`);
        return true;
      },
      onCleanExit: () => {
        if (this.adminInFlight > 0) return true;
        void this.shutdown("the shim daemon exited with status 0");
        return false;
      },
    });
    const holdRequest = messageCodec("cloudhv.shim.v1.HoldStdioRequest");
    const releaseRequest = messageCodec("cloudhv.shim.v1.ReleaseStdioRequest");
    const holdResponse = messageCodec("cloudhv.shim.v1.HoldStdioResponse");
    const listenRequest = messageCodec("cloudhv.shim.v1.ListenRequest");
    const listenResponse = messageCodec("cloudhv.shim.v1.ListenResponse");
    this.server.register(ADMIN, {
      Listen: (payload) =>
        this.admin(async () => {
          const { namespace } = listenRequest.decode(payload);
          if (!namespace) throw new TtrpcError(Code.INVALID_ARGUMENT, "Listen: empty namespace");
          const reply = listenResponse.decode(
            await this.callDaemon("Listen", payload, opts.listenDeadlineMs ?? 20_000),
          );
          const backendPath = namespaceSocketPath(opts.backendControl, namespace);
          if (reply.address !== `${SOCKET_SCHEME}${backendPath}`) {
            throw new TtrpcError(
              Code.INTERNAL,
              `the shim daemon listens for namespace "${namespace}" on "${reply.address.slice(0, 200)}", ` +
                `not on ${backendPath}; is it a daemon of another build?`,
            );
          }
          this.namespaces.add(namespace);
          const frontPath = namespaceSocketPath(opts.controlSocket, namespace);
          await this.relayFor(namespace, frontPath, backendPath);
          return listenResponse.encode({ address: `${SOCKET_SCHEME}${frontPath}` });
        }),
      ForceDelete: (payload) =>
        this.admin(() => this.callDaemon("ForceDelete", payload, opts.deleteDeadlineMs ?? 50_000)),
      HoldStdio: async (payload) => {
        const { key, paths } = holdRequest.decode(payload);
        try {
          this.stdio.hold(key, paths);
        } catch (err) {
          throw new TtrpcError(Code.RESOURCE_EXHAUSTED, (err as Error).message);
        }
        return holdResponse.encode({});
      },
      ReleaseStdio: async (payload) => {
        this.stdio.release(releaseRequest.decode(payload).key);
        return holdResponse.encode({});
      },
    });
  }

  get daemonPid(): number | undefined {
    return this.supervisor.pid;
  }

  async start(): Promise<void> {
    const backendDir = path.dirname(this.opts.backendControl);
    await mkdir(backendDir, { recursive: true, mode: 0o700 });
    await chmod(backendDir, 0o700);
    await this.server.listen(this.opts.controlSocket);
    this.supervisor.start();
  }

  /** SIGTERM to the front: passed to the daemon; the front ends after it. */
  async stop(why: string): Promise<string> {
    this.opts.log.info({ why }, "front: stopping the shim daemon");
    await this.supervisor.stop("SIGTERM");
    return this.shutdown(why);
  }

  /** Closes every listener and relay and removes the sockets; idempotent. */
  shutdown(why: string): Promise<string> {
    this.finished ??= (async () => {
      this.abort.abort();
      await this.supervisor.stop("SIGTERM");
      // Admin calls waiting for a daemon now fail with the reason: let them answer first.
      for (let i = 0; i < 100 && this.adminInFlight > 0; i++) await sleep(10);
      await this.server.close();
      for (const relay of this.relays.values()) await relay.close();
      this.relays.clear();
      this.stdio.releaseAll();
      // Other daemons' sockets may share backend/: remove it only when empty.
      await rmdir(path.dirname(this.opts.backendControl)).catch(() => {});
      await rm(`${this.opts.controlSocket}.lock`, { force: true });
      this.opts.log.info({ why }, "front: exiting");
      this.resolveDone(why);
      return why;
    })();
    return this.finished;
  }

  private async admin<T>(work: () => Promise<T>): Promise<T> {
    this.adminInFlight++;
    try {
      return await work();
    } finally {
      this.adminInFlight--;
    }
  }

  private relayFor(namespace: string, frontPath: string, backendPath: string): Promise<void> {
    if (this.relays.has(frontPath)) return Promise.resolve();
    let open = this.opening.get(frontPath);
    if (!open) {
      const relay = new RelayListener(frontPath, backendPath, {
        log: this.opts.log,
        ...this.opts.relay,
        onBackendMissing: () => this.ensureListening(namespace),
      });
      open = relay.listen().then(
        () => {
          this.relays.set(frontPath, relay);
          this.opening.delete(frontPath);
        },
        (err: unknown) => {
          this.opening.delete(frontPath);
          throw err;
        },
      );
      this.opening.set(frontPath, open);
    }
    return open;
  }

  /** A new daemon knows no namespace: ask it to listen for each one the relays lead to. */
  private relisten(): void {
    for (const namespace of this.namespaces) this.ensureListening(namespace);
  }

  /**
   * Asks the daemon to listen for `namespace` (one call at a time per namespace). Also called
   * whenever a relay finds the backend socket closed: the Listen after a restart may have
   * reached the old daemon (one a killed front left) just before it died.
   */
  private ensureListening(namespace: string): void {
    if (this.listening.has(namespace) || this.abort.signal.aborted) return;
    this.listening.add(namespace);
    const request = messageCodec("cloudhv.shim.v1.ListenRequest");
    void this.callDaemon("Listen", request.encode({ namespace }), 30_000)
      .catch((err: unknown) => {
        if (this.abort.signal.aborted) return;
        this.opts.log.error(
          { namespace, err: (err as Error).message },
          "front: the shim daemon did not open its namespace socket",
        );
      })
      .finally(() => this.listening.delete(namespace));
  }

  /**
   * One Admin call to the daemon, waiting (until `deadlineMs`) for a daemon that is starting
   * or being restarted. The daemon's own errors come back as they are.
   */
  private async callDaemon(method: string, payload: Uint8Array, deadlineMs: number): Promise<Buffer> {
    const deadline = Date.now() + deadlineMs;
    let delay = 20;
    let last = "no attempt";
    for (;;) {
      const left = deadline - Date.now();
      if (this.abort.signal.aborted) {
        const cause = this.lastFailure ? ` (the shim daemon ${this.lastFailure})` : "";
        throw new TtrpcError(
          Code.UNAVAILABLE,
          `${method}: the shim front is exiting${cause}; see ${this.opts.controlSocket.replace(/\.sock$/, ".log")}`,
        );
      }
      if (left <= 0) {
        throw new TtrpcError(
          Code.UNAVAILABLE,
          `the shim daemon did not answer ${method} within ${deadlineMs} ms (last: ${this.lastFailure ?? last}); ` +
            `see ${this.opts.controlSocket.replace(/\.sock$/, ".log")}`,
        );
      }
      let client: TtrpcClient | undefined;
      try {
        client = await TtrpcClient.connect(this.opts.backendControl, { timeoutMs: Math.min(left, 1000) });
        return await client.call(ADMIN, method, payload, { timeoutMs: left, signal: this.abort.signal });
      } catch (err) {
        // The daemon's answer (NotFound, InvalidArgument…) or our deadline: final.
        if (err instanceof TtrpcError && (err.remote || err.code === Code.DEADLINE_EXCEEDED)) throw err;
        last = (err as Error).message;
      } finally {
        client?.close();
      }
      await sleep(Math.min(delay, Math.max(left, 1)), undefined, { signal: this.abort.signal }).catch(
        () => {},
      );
      delay = Math.min(delay * 2, 500);
    }
  }
}
