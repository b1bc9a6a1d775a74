// Copies a guest process's stdio between containerd's FIFOs and the agent. Memory stays
// bounded: one chunk per stream is in flight, and the next ReadStream is only asked for after
// the previous chunk was taken by the FIFO's reader.
import { constants, openSync } from "node:fs";
import net from "node:net";
import type { AgentClient, ProcessRef, StdStream } from "../agent/client.js";
import { invalid } from "../task/errors.js";
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

/** Opens a FIFO (or file) without blocking a libuv thread; reads and writes go through epoll. */
function openPipe(path: string, mode: "read" | "write"): net.Socket {
  if (mode === "read") {
    const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
    return new net.Socket({ fd, readable: true, writable: false });
  }
  const fd = openSync(path, constants.O_WRONLY | constants.O_NONBLOCK | constants.O_APPEND);
  return new net.Socket({ fd, readable: false, writable: true });
}

export class StdioForwarder {
  /** Settles when stdout and stderr reached EOF and their FIFOs were closed. */
  readonly outputDone: Promise<void>;
  private readonly sockets: net.Socket[] = [];
  private stopped = false;

  constructor(
    private readonly agent: AgentClient,
    private readonly ref: ProcessRef,
    readonly paths: StdioPaths,
    private readonly log: Logger,
  ) {
    const outputs: Promise<void>[] = [];
    const stdout = paths.stdout ? this.track(openPipe(fifoPath(paths.stdout, "stdout"), "write")) : undefined;
    const stderr =
      paths.stderr && !paths.terminal
        ? this.track(openPipe(fifoPath(paths.stderr, "stderr"), "write"))
        : undefined;
    if (stdout) outputs.push(this.pump("STDOUT", stdout));
    if (stderr) outputs.push(this.pump("STDERR", stderr));
    this.outputDone = Promise.all(outputs).then(() => undefined);
    if (paths.stdin) this.feedStdin(this.track(openPipe(fifoPath(paths.stdin, "stdin"), "read")));
  }

  /** Whether the process gets a stdin from the host. */
  static wantsStdin(paths: StdioPaths): boolean {
    return paths.stdin !== "";
  }

  /** Stops forwarding and closes every FIFO (after a VM died, or on delete). */
  close(): void {
    this.stopped = true;
    for (const socket of this.sockets) socket.destroy();
  }

  private track(socket: net.Socket): net.Socket {
    socket.on("error", (err) => this.log.debug({ err: err.message }, "stdio pipe error"));
    this.sockets.push(socket);
    return socket;
  }

  private async pump(stream: StdStream, out: net.Socket): Promise<void> {
    try {
      while (!this.stopped) {
        const { data, eof } = await this.agent.readStream(this.ref, stream);
        if (data.length > 0 && !out.destroyed && !out.write(data)) {
          await new Promise<void>((resolve) => {
            out.once("drain", resolve);
            out.once("close", resolve);
          });
        }
        if (eof) break;
      }
    } catch (err) {
      if (!this.stopped)
        this.log.warn({ stream, err: (err as Error).message }, "stdio copy from guest ended");
    } finally {
      await new Promise<void>((resolve) => (out.destroyed ? resolve() : out.end(resolve)));
    }
  }

  private feedStdin(input: net.Socket): void {
    const ref = this.ref;
    void (async () => {
      try {
        for await (const chunk of input as AsyncIterable<Buffer>) {
          let offset = 0;
          while (offset < chunk.length) {
            const written = await this.agent.writeStdin(ref, chunk.subarray(offset));
            if (written === 0) throw new Error("the agent accepted no stdin bytes");
            offset += written;
          }
        }
        if (!this.stopped) await this.agent.closeStdin(ref);
      } catch (err) {
        if (!this.stopped) this.log.warn({ err: (err as Error).message }, "stdin copy to guest ended");
      }
    })();
  }
}
