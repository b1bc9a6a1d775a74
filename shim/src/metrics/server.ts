// Serves GET /metrics on metrics_address (docs/operations.md, "Metrics"). Bounded: a few
// connections, short timeouts, no request body read; an address in use (another daemon
// identity during an upgrade holds it) is retried quietly until it is free.
import { rmSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import type { Logger } from "../util/log.js";
import type { MetricsAddress } from "./address.js";

const RETRY_MS = 30_000;

export interface MetricsSource {
  exposition(): Promise<{ contentType: string; body: string }>;
}

export class MetricsServer {
  private readonly server: http.Server;
  private retry: NodeJS.Timeout | undefined;
  private closed = false;
  private listening = false;

  constructor(
    private readonly address: MetricsAddress,
    source: MetricsSource,
    private readonly log: Logger,
  ) {
    this.server = http.createServer((req, res) => {
      if (req.method !== "GET" || (req.url ?? "").split("?")[0] !== "/metrics") {
        res.writeHead(404, { "content-type": "text/plain" }).end("only GET /metrics here\n");
        return;
      }
      source.exposition().then(
        ({ contentType, body }) => res.writeHead(200, { "content-type": contentType }).end(body),
        (err: Error) => {
          this.log.warn({ err: err.message }, "metrics: collecting failed");
          res.writeHead(500, { "content-type": "text/plain" }).end("collecting the metrics failed\n");
        },
      );
    });
    this.server.maxConnections = 16;
    this.server.headersTimeout = 5_000;
    this.server.requestTimeout = 10_000;
    this.server.keepAliveTimeout = 5_000;
    this.server.maxHeadersCount = 50;
    this.server.on("error", (err: NodeJS.ErrnoException) => this.later(err.message));
  }

  private later(why: string): void {
    if (this.closed) return;
    this.log.warn(
      { err: why, address: this.where },
      `metrics: cannot listen; trying again in ${RETRY_MS / 1000} s`,
    );
    this.retry = setTimeout(() => this.listen(), RETRY_MS);
    this.retry.unref();
  }

  private get where(): string {
    return this.address.kind === "unix"
      ? `unix:${this.address.path}`
      : `${this.address.host}:${this.address.port}`;
  }

  listen(): void {
    if (this.closed) return;
    const onListening = () => {
      this.listening = true;
      this.log.info({ address: this.where }, "metrics: serving /metrics");
    };
    if (this.address.kind === "unix") {
      const socketPath = this.address.path;
      // A live socket is another daemon's (an upgrade): wait for it; a dead one is replaced.
      const probe = net.createConnection({ path: socketPath });
      probe.once("connect", () => {
        probe.destroy();
        this.later(`${socketPath} is served by another process`);
      });
      probe.once("error", () => {
        if (this.closed) return;
        rmSync(socketPath, { force: true });
        this.server.listen(socketPath, onListening);
      });
    } else this.server.listen(this.address.port, this.address.host, onListening);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retry);
    if (!this.listening) return;
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    if (this.address.kind === "unix") rmSync(this.address.path, { force: true });
  }
}
