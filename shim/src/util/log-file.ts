// The daemon's log file: on disk (log_dir, not the tmpfs state dir), rotated by size the
// logrotate way (shim-<id>.log, .log.1 … .log.N; the oldest goes), so it never holds more than
// (N + 1) × log_max_bytes. Writes are asynchronous; what the disk cannot take in time is dropped
// and counted rather than held in memory without bound.
import path from "node:path";
import { createStream, type Generator, type RotatingFileStream } from "rotating-file-stream";

export interface LogFileOptions {
  /** The live file; rotated ones get .1, .2, … */
  file: string;
  maxBytes: number;
  /** Rotated files kept besides the live one. */
  files: number;
  /** Bytes queued for the disk past which lines are dropped (default 8 MiB). */
  maxQueuedBytes?: number;
  /** Where a failure of the log itself is reported (default: stderr). */
  report?: (line: string) => void;
}

export interface LogFile {
  write(line: string): void;
  /** Lines dropped because the disk fell behind or the file failed. */
  readonly dropped: number;
  /** Writes what is queued and closes the file. */
  close(): Promise<void>;
}

export function openLogFile(opts: LogFileOptions): LogFile {
  const name = path.basename(opts.file);
  const report = opts.report ?? ((line: string) => process.stderr.write(line));
  const maxQueued = opts.maxQueuedBytes ?? 8 << 20;
  // With `rotate`, the generator gets the rotation index (null: the live file's name).
  const names: Generator = (index) => (typeof index === "number" && index > 0 ? `${name}.${index}` : name);
  const stream: RotatingFileStream = createStream(names, {
    path: path.dirname(opts.file),
    size: `${opts.maxBytes}B`,
    rotate: opts.files,
    mode: 0o640,
  });
  let failed = false;
  let dropped = 0;
  let droppedSinceReport = 0;
  stream.on("error", (err: Error) => {
    if (!failed)
      report(`cloudhv shim daemon: log file ${opts.file} failed, its lines are dropped: ${err.message}\n`);
    failed = true;
  });
  return {
    write(line: string) {
      if (failed || stream.writableLength > maxQueued) {
        dropped++;
        droppedSinceReport++;
        return;
      }
      if (droppedSinceReport > 0) {
        const note = `{"level":40,"time":${Date.now()},"pid":${process.pid},"msg":"daemon log fell behind the disk: ${droppedSinceReport} lines dropped"}\n`;
        droppedSinceReport = 0;
        stream.write(note);
      }
      stream.write(line);
    },
    get dropped() {
      return dropped;
    },
    close() {
      return new Promise<void>((resolve) => {
        if (failed || stream.destroyed) return resolve();
        stream.end(() => resolve());
        stream.once("error", () => resolve());
      });
    },
  };
}
