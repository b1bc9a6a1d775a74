// Copies a guest process's stdio between containerd's FIFOs and the agent. Memory stays
// bounded: one chunk per stream is in flight, and the next ReadStream is only asked for after
// the previous chunk was taken by the FIFO's reader.
//
// Each output FIFO also gets a read end of our own, never read, held until the process is
// deleted: while containerd restarts, its read end is gone, and without ours the next write
// would fail with EPIPE and the output would be lost. With ours, output waits in the pipe
// (then in the guest, by backpressure) until containerd opens the FIFO again.
import { closeSync, constants, fstatSync, openSync } from "node:fs";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import type { AgentClient, ProcessRef, StdStream } from "../agent/client.js";
import { invalid } from "../errors.js";
import { logFromGuest } from "../util/guest-log.js";
import type { Logger } from "../util/log.js";

export interface StdioPaths {
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
}

/** containerd passes FIFO paths; ctr may also pass file:// URIs (--log-uri). */
function fifoPath(uri: string, which: string): string {
  if (uri.startsWith("file://")) return uri.slice("file://".length);
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(uri))
    throw invalid(`${which} "${uri}": only FIFO paths and file:// are supported`);
  return uri;
}

/** Opens a FIFO's read side without blocking a libuv thread; reads then go through epoll. */
function openReader(path: string): net.Socket {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  return new net.Socket({ fd, readable: true, writable: false });
}

/**
 * Opens a FIFO's write side. containerd's client may open its read side only after the call
 * that named it returns (ctr does so for exec), and a non-blocking open fails with ENXIO until
 * then: retry until the reader is there or the forwarder is closed.
 */
async function openWriter(path: string, isStopped: () => boolean): Promise<net.Socket> {
  let delay = 5;
  for (;;) {
    try {
      const fd = openSync(path, constants.O_WRONLY | constants.O_NONBLOCK | constants.O_APPEND);
      return new net.Socket({ fd, readable: false, writable: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENXIO" || isStopped()) throw err;
    }
    await sleep(delay);
    delay = Math.min(delay * 2, 200);
  }
}

/** Opens a read end that keeps a FIFO's writer from EPIPE; undefined for a regular file. */
function holdFifo(path: string): number | undefined {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  if (fstatSync(fd).isFIFO()) return fd;
  closeSync(fd);
  return undefined;
}

export class StdioForwarder {
  /** Settles when stdout and stderr reached EOF and their FIFOs were closed. */
  readonly outputDone: Promise<void>;
  private readonly sockets: net.Socket[] = [];
  /** Our own read ends of the output FIFOs (see the header). */
  private readonly held: number[] = [];
  private stopped = false;
  /** Settles when the stdin copy ended (its FIFO's EOF reached the guest, or it failed). */
  private stdinDone: Promise<void> = Promise.resolve();
  /** The copy closed the guest's stdin itself (at the FIFO's EOF). */
  private stdinClosed = false;

  constructor(
    private readonly agent: AgentClient,
    private readonly ref: ProcessRef,
    readonly paths: StdioPaths,
    private readonly log: Logger,
  ) {
    const outputs: Promise<void>[] = [];
    // Validate every path before anything is opened: a bad URI fails the call that named it.
    const stdout = paths.stdout ? fifoPath(paths.stdout, "stdout") : undefined;
    const stderr = paths.stderr && !paths.terminal ? fifoPath(paths.stderr, "stderr") : undefined;
    const stdin = paths.stdin ? fifoPath(paths.stdin, "stdin") : undefined;
    if (stdout) outputs.push(this.pump("STDOUT", stdout));
    if (stderr) outputs.push(this.pump("STDERR", stderr));
    this.outputDone = Promise.all(outputs).then(() => undefined);
    if (stdin) this.feedStdin(this.track(openReader(stdin)));
  }

  /** A copy ended on the guest's side: within the guest's line budget. */
  private logGuest(fields: Record<string, unknown>, msg: string): void {
    if (this.agent.guest) logFromGuest(this.log, this.agent.guest, "warn", fields, msg);
    else this.log.warn(fields, msg);
  }

  /** Whether the process gets a stdin from the host. */
  static wantsStdin(paths: StdioPaths): boolean {
    return paths.stdin !== "";
  }

  /**
   * containerd's CloseIO: it closes its end of the stdin FIFO, then asks for this at once. What
   * it wrote may still sit in the FIFO or be on its way to the guest, so the guest's stdin is
   * closed only after the copy reached the FIFO's EOF (bounded by `waitMs`: a writer that
   * keeps the FIFO open does not hold the call). Closing at once lost the tail of the input:
   * `kubectl exec -i` came back empty now and then.
   */
  async closeStdin(waitMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const drained = await Promise.race([
      this.stdinDone.then(() => true),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), waitMs);
      }),
    ]);
    clearTimeout(timer);
    // The copy closes the guest's stdin itself at the FIFO's EOF.
    if (!drained || !this.stdinClosed) await this.agent.closeStdin(this.ref);
  }

  /** Stops forwarding and closes every FIFO (after a VM died, or on delete). */
  close(): void {
    this.stopped = true;
    for (const socket of this.sockets) socket.destroy();
    for (const fd of this.held.splice(0)) closeSync(fd);
  }

  private track(socket: net.Socket): net.Socket {
    socket.on("error", (err) => this.log.debug({ err: err.message }, "stdio pipe error"));
    this.sockets.push(socket);
    return socket;
  }

  private async pump(stream: StdStream, path: string): Promise<void> {
    let out: net.Socket | undefined;
    try {
      const held = holdFifo(path);
      if (held !== undefined) this.held.push(held);
      out = this.track(await openWriter(path, () => this.stopped));
      let idle = 0;
      while (!this.stopped) {
        const { data, eof } = await this.agent.readStream(this.ref, stream);
        // ReadStream waits for data; a guest that answers at once with nothing, again and
        // again, would make this loop spin for every pod on the node: back off, up to 100 ms.
        if (data.length === 0 && !eof) {
          idle = Math.min(idle + 1, 7);
          await sleep(Math.min(2 ** idle, 100));
          continue;
        }
        idle = 0;
        const sink = out;
        if (data.length > 0 && !sink.destroyed && !sink.write(data)) {
          await new Promise<void>((resolve) => {
            sink.once("drain", resolve);
            sink.once("close", resolve);
          });
        }
        if (eof) break;
      }
    } catch (err) {
      if (!this.stopped)
        this.logGuest({ stream, err: (err as Error).message }, "stdio copy from guest ended");
    } finally {
      const opened = out;
      if (opened) await new Promise<void>((resolve) => (opened.destroyed ? resolve() : opened.end(resolve)));
    }
  }

  private feedStdin(input: net.Socket): void {
    const ref = this.ref;
    this.stdinDone = (async () => {
      try {
        for await (const chunk of input as AsyncIterable<Buffer>) {
          let offset = 0;
          while (offset < chunk.length) {
            const written = await this.agent.writeStdin(ref, chunk.subarray(offset));
            if (written === 0) throw new Error("the agent accepted no stdin bytes");
            offset += written;
          }
        }
        if (!this.stopped) {
          await this.agent.closeStdin(ref);
          this.stdinClosed = true;
        }
      } catch (err) {
        if (!this.stopped) this.logGuest({ err: (err as Error).message }, "stdin copy to guest ended");
      }
    })();
  }
}
