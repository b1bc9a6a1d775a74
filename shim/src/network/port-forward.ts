// CRI port-forward into the pod's VM. containerd answers PortForward (kubectl port-forward,
// critest) by dialling 127.0.0.1:PORT inside the pod's netns on the host; the server runs in
// the VM. Per pod: cloudhv-portfwd (guest/agent/src/bin/cloudhv-portfwd/) listens on
// 127.0.0.1:LISTEN_PORT in that netns and steers every TCP connection to 127.0.0.1 there to it
// (a BPF sk_lookup program it attaches; where the kernel cannot, an iptables nat OUTPUT rule
// this daemon adds redirects them), and it hands each connection, prefixed with the port asked
// for, to this daemon over a unix socket. The daemon carries the bytes to the guest agent
// (PortForward* calls on the agent channel), which dials the port on the guest's loopback.
// Only the host opens connections; every count and chunk is bounded.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdir, rm, rmdir } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import type { AgentClient } from "../agent/client.js";
import { truncateUntrusted } from "../errors.js";
import { exec } from "../util/exec.js";
import type { Logger } from "../util/log.js";
import { childProcess, type HostProcess } from "../util/proc.js";
import { TIMED_OUT, within } from "../util/time.js";

/**
 * The helper's listener in the pod netns; every redirected connection arrives there. Below
 * 1024: the VMM, which runs in that netns as an unprivileged uid, cannot take it first.
 */
export const LISTEN_PORT = 1023;
/** Connections relayed at once per pod (the agent allows 64). */
export const MAX_CONNECTIONS = 64;
const READY_MS = 10_000;
const HEADER_MS = 5_000;
const OPEN_MS = 15_000;

/** The nat rule, as iptables arguments after the action (-A, -C or -D). */
function redirectRule(): string[] {
  return ["OUTPUT", "-d", "127.0.0.1/32", "-p", "tcp", "-j", "REDIRECT", "--to-ports", String(LISTEN_PORT)];
}

function iptables(netnsPath: string, action: "-A" | "-C" | "-D") {
  return exec([
    "nsenter",
    `--net=${netnsPath}`,
    "--",
    "iptables",
    "-w",
    "5",
    "-t",
    "nat",
    action,
    ...redirectRule(),
  ]);
}

export interface PortForwardOptions {
  /** cloudhv-portfwd (runtime config port_forward_binary). */
  binary: string;
  /** The pod's host-side directory; the relay socket goes there. */
  dir: string;
  netnsPath: string;
  agent: AgentClient;
  log: Logger;
}

export class PodPortForward {
  private readonly sockets = new Set<net.Socket>();
  private stopping: Promise<void> | undefined;

  private constructor(
    private readonly opts: PortForwardOptions,
    private readonly server: net.Server,
    private readonly socketPath: string,
    private readonly helper: HostProcess,
    /** Whether the nat rule redirects (else the helper's sk_lookup steers, gone with it). */
    private readonly natRule: boolean,
  ) {}

  /**
   * Starts the relay, the helper and the redirect. Run again after a daemon restart (the helper
   * died with the old daemon; the rule, still there, is not added twice).
   */
  static async start(opts: PortForwardOptions): Promise<PodPortForward> {
    const socketPath = path.join(opts.dir, "portfwd.sock");
    await mkdir(opts.dir, { recursive: true, mode: 0o700 });
    await rm(socketPath, { force: true });
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true });
    server.listen(socketPath);
    await once(server, "listening");
    let helper: HostProcess | undefined;
    try {
      const child = spawn(
        opts.binary,
        ["--netns", opts.netnsPath, "--listen-port", String(LISTEN_PORT), "--relay", socketPath],
        { stdio: ["ignore", "pipe", "pipe"] },
      );
      child.once("error", () => {}); // reported through the ready wait below
      let stderr = "";
      child.stderr?.setEncoding("utf8");
      child.stderr?.on("data", (d: string) => {
        if (stderr.length < 4096) stderr += d;
        else opts.log.warn({ stderr: truncateUntrusted(d, 512) }, "cloudhv-portfwd");
      });
      const ready = new Promise<"steered" | "nat" | false>((resolve) => {
        child.stdout?.setEncoding("utf8");
        child.stdout?.once("data", (d: string) =>
          resolve(d.startsWith("ready sk_lookup") ? "steered" : d.startsWith("ready") ? "nat" : false),
        );
        child.once("exit", () => resolve(false));
        child.once("error", () => resolve(false));
      });
      const ok = await within(ready, READY_MS);
      if (child.pid !== undefined) helper = childProcess(child);
      if (ok !== "steered" && ok !== "nat") {
        throw new Error(
          `cloudhv-portfwd (${opts.binary}) did not start listening in ${opts.netnsPath}` +
            (ok === TIMED_OUT ? ` within ${READY_MS} ms` : "") +
            (stderr ? `: ${stderr.trim()}` : ""),
        );
      }
      if (ok === "nat")
        opts.log.info({ stderr: truncateUntrusted(stderr.trim(), 512) }, "port-forward by a nat rule");
      if (ok === "nat" && (await iptables(opts.netnsPath, "-C")).code !== 0) {
        const added = await iptables(opts.netnsPath, "-A");
        if (added.code !== 0)
          throw new Error(
            `iptables nat REDIRECT in ${opts.netnsPath} failed: ${added.stderr.trim()} ` +
              "(port-forward needs iptables and the nat table on the node)",
          );
      }
      const forward = new PodPortForward(opts, server, socketPath, helper as HostProcess, ok === "nat");
      server.on("connection", (sock) => forward.serve(sock));
      // A helper that dies while the pod runs takes port-forward with it: say so.
      void forward.helper.exited.then(({ code, signal }) => {
        if (!forward.stopping)
          opts.log.warn(
            { code, signal, stderr: truncateUntrusted(stderr, 1024) },
            "cloudhv-portfwd exited: port-forward into this pod stops",
          );
      });
      return forward;
    } catch (err) {
      helper?.kill("SIGKILL");
      await helper?.exited;
      server.close();
      await rm(socketPath, { force: true });
      throw err;
    }
  }

  /** Open relayed connections (tests check that none is left). */
  get connections(): number {
    return this.sockets.size;
  }

  private serve(sock: net.Socket): void {
    if (this.stopping || this.sockets.size >= MAX_CONNECTIONS) {
      sock.destroy();
      return;
    }
    this.sockets.add(sock);
    sock.once("close", () => this.sockets.delete(sock));
    sock.on("error", () => {}); // ends the relay below through its close
    this.relay(sock).catch((err: unknown) => {
      this.opts.log.info({ err: (err as Error).message }, "port-forward connection ended");
      sock.destroy();
    });
  }

  private async relay(sock: net.Socket): Promise<void> {
    const { agent } = this.opts;
    const port = await readPort(sock);
    const connId = await agent.portForwardOpen(port, { timeoutMs: OPEN_MS });
    let closed = false;
    const closeGuest = () => {
      if (closed) return;
      closed = true;
      agent.portForwardClose(connId, false, { timeoutMs: 10_000 }).catch(() => {});
    };
    sock.once("close", closeGuest);
    // Either side failing ends both at once: the other side's wait (a guest read, a paused
    // client) ends with it, and no rejection is left unhandled.
    const failed = (err: unknown) => {
      closeGuest();
      sock.destroy();
      return err instanceof Error ? err : new Error(String(err));
    };
    try {
      // Guest to client: each chunk is bounded by the agent client; back-pressured by drain.
      const down = (async () => {
        for (;;) {
          const { data, eof } = await agent.portForwardRead(connId);
          if (data.length > 0 && !sock.destroyed && !sock.write(data)) {
            await Promise.race([once(sock, "drain"), once(sock, "close")]);
          }
          if (eof || sock.destroyed) {
            sock.end();
            return undefined;
          }
        }
      })().catch(failed);
      // Client to guest: the socket is paused between writes, so the client waits for the guest.
      const up = (async () => {
        for await (const chunk of sock) await agent.portForwardWrite(connId, chunk as Buffer);
        if (!closed) await agent.portForwardClose(connId, true, { timeoutMs: 10_000 });
        return undefined;
      })().catch(failed);
      const error = (await down) ?? (await up);
      if (error) throw error;
    } finally {
      closeGuest();
      sock.destroy();
    }
  }

  get netnsPath(): string {
    return this.opts.netnsPath;
  }

  /** Removes the redirect, the helper, every relayed connection and the socket. Never throws. */
  async stop(): Promise<void> {
    await Promise.all([this.close(), this.unredirect()]);
  }

  /**
   * Ends the helper, every relayed connection and the socket, leaving the nat rule (which dies
   * with the netns; `unredirect` removes it). Never throws.
   */
  close(): Promise<void> {
    this.stopping ??= (async () => {
      this.helper.kill("SIGKILL");
      await this.helper.exited;
      for (const sock of this.sockets) sock.destroy();
      this.server.close();
      await rm(this.socketPath, { force: true });
      // The pod's directory goes if nothing else (virtiofsd) is in it.
      await rmdir(this.opts.dir).catch(() => {});
    })();
    return this.stopping;
  }

  /**
   * Removes the nat rule, where there is one (sk_lookup's steering went with the helper); `via`:
   * another path to the pod's netns (a held fd). Never throws.
   */
  async unredirect(via?: string): Promise<void> {
    if (!this.natRule) return;
    const { log, netnsPath } = this.opts;
    const r = await iptables(via ?? netnsPath, "-D").catch(() => undefined);
    // Gone with the netns is fine; anything else is worth a line.
    if (r && r.code !== 0 && !/No such file|does a matching rule exist/.test(r.stderr))
      log.warn(
        { netnsPath, stderr: truncateUntrusted(r.stderr, 512) },
        "port-forward: removing the nat rule failed",
      );
  }
}

/** The two big-endian bytes cloudhv-portfwd sends first: the port the client asked for. */
async function readPort(sock: net.Socket): Promise<number> {
  const got = await within(
    (async () => {
      for (;;) {
        const header = sock.read(2) as Buffer | null;
        if (header) return header.readUInt16BE(0);
        if (sock.readableEnded || sock.destroyed)
          throw new Error("port-forward: the helper closed before the port");
        await Promise.race([once(sock, "readable"), once(sock, "close")]);
      }
    })(),
    HEADER_MS,
  );
  if (got === TIMED_OUT) throw new Error("port-forward: no port from the helper");
  if (got === 0) throw new Error("port-forward: port 0 asked for");
  return got;
}
