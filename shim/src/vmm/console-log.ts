// The guest console, capped. The VMM writes the console to a FIFO that the shim drains into
// console.log; past `maxBytes` the log is rotated to console.log.1, so a guest that prints
// forever costs at most 2 × maxBytes of host storage (the state dir is on tmpfs: host RAM).
// The guest is untrusted; a file the VMM appends to directly would have no bound.
import { constants, createWriteStream, openSync, type WriteStream } from "node:fs";
import { readFile, rename, rm } from "node:fs/promises";
import net from "node:net";
import { execOk } from "../util/exec.js";

export const DEFAULT_CONSOLE_MAX_BYTES = 1024 * 1024;

export interface ConsoleLogPaths {
  /** What the VMM opens for writing (a FIFO). */
  fifo: string;
  /** What people and error messages read. */
  log: string;
}

export class ConsoleLog {
  private out: WriteStream;
  private written = 0;
  private rotating: Promise<void> | undefined;
  private closed = false;
  /** Settles once everything read from the FIFO is in the log and the files are closed. */
  private readonly done: Promise<void>;

  private constructor(
    readonly paths: ConsoleLogPaths,
    private readonly reader: net.Socket,
    private readonly maxBytes: number,
  ) {
    this.out = createWriteStream(paths.log, { flags: "a" });
    this.done = new Promise((resolve) => {
      reader.on("data", (chunk: Buffer) => this.take(chunk));
      reader.on("error", () => {});
      reader.on("close", () => {
        const finish = () => this.out.end(() => resolve());
        if (this.rotating) void this.rotating.then(finish);
        else finish();
      });
    });
  }

  /**
   * Creates the FIFO and opens it before the VMM starts. Opened read-write, so the open
   * does not wait for a writer and a VMM that closes and reopens it is no EOF to us.
   */
  static async create(paths: ConsoleLogPaths, maxBytes = DEFAULT_CONSOLE_MAX_BYTES): Promise<ConsoleLog> {
    await rm(paths.fifo, { force: true });
    await execOk(["mkfifo", "-m", "0600", paths.fifo]);
    // A raw fd (not a FileHandle, which would be closed when collected); the socket owns it.
    const fd = openSync(paths.fifo, constants.O_RDWR | constants.O_NONBLOCK);
    const reader = new net.Socket({ fd, readable: true, writable: false });
    return new ConsoleLog(paths, reader, maxBytes);
  }

  /** Drains the FIFO a running VMM already writes to (it outlived the daemon that made it). */
  static async adopt(paths: ConsoleLogPaths, maxBytes = DEFAULT_CONSOLE_MAX_BYTES): Promise<ConsoleLog> {
    const fd = openSync(paths.fifo, constants.O_RDWR | constants.O_NONBLOCK | constants.O_NOFOLLOW);
    const reader = new net.Socket({ fd, readable: true, writable: false });
    return new ConsoleLog(paths, reader, maxBytes);
  }

  private take(chunk: Buffer): void {
    // Rotate before a chunk that would overflow the file, not after it: the newest output is
    // always in the live file (a rotation after the last chunk left it empty).
    if (this.written > 0 && this.written + chunk.length > this.maxBytes) {
      this.reader.pause();
      this.rotating = this.rotate()
        .then(() => this.write(chunk))
        .finally(() => {
          this.rotating = undefined;
          if (!this.closed) this.reader.resume();
        });
      return;
    }
    this.write(chunk);
  }

  private write(chunk: Buffer): void {
    this.written += chunk.length;
    if (!this.out.write(chunk)) {
      // A slow disk slows the guest's console, nothing else.
      this.reader.pause();
      // Not while rotating: the rotation resumes the reader itself once the new file is open.
      this.out.once("drain", () => {
        if (!this.rotating && !this.closed) this.reader.resume();
      });
    }
  }

  private async rotate(): Promise<void> {
    const old = this.out;
    await new Promise<void>((resolve) => old.end(() => resolve()));
    await rename(this.paths.log, `${this.paths.log}.1`).catch(() => {});
    this.out = createWriteStream(this.paths.log, { flags: "a" });
    this.written = 0;
  }

  /** The end of the console, for error messages: what the kernel and agent said last. */
  async tail(): Promise<string> {
    try {
      const text = await readFile(this.paths.log, "utf8");
      const lines = text
        // biome-ignore lint/suspicious/noControlCharactersInRegex: strips terminal escape sequences
        .replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "")
        .trim()
        .split("\n")
        .slice(-12)
        .join("\n");
      return lines ? `guest console (last lines):\n${lines.slice(-2000)}` : "the guest console is empty";
    } catch {
      return "no guest console log";
    }
  }

  /** Stops reading (call after the VMM exited: what it wrote is drained first) and closes. */
  async close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      // Whatever is already in the pipe is read before the end.
      await new Promise((r) => setImmediate(r));
      this.reader.destroy();
    }
    await this.done;
  }
}
