// A TEST DOUBLE of a hostile guest, not the guest agent. `e2e/hostile/qemu` (used as the
// runtime's `qemu_binary` by the hostile-guest test and bench figure) starts it beside a real
// QEMU: QEMU's agent port is moved to `agent.guest.sock` and this process serves `agent.sock`
// in its place, so the daemon talks to it exactly as to a guest. It forwards every frame both
// ways until a `hostile` file appears in its directory (the VMM's own dir); then it answers
// the way a guest that is taken over could, read again on every request:
//   empty         every request answered at once with an empty reply (a ReadStream "with
//                 nothing", again and again); WaitProcess still forwarded, so the process runs
//   errors <n>    every request answered with an error message of n bytes (8 MiB: over the
//                 ttrpc frame limit)
//   silent        requests are swallowed: nothing is ever answered again
// It counts the requests it received in `hostile-count` (once a second), and exits when its
// parent (the QEMU it was started beside) is gone. Self-contained on purpose: it runs as the
// VMM's uid and needs nothing but Node.
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";

const [listenPath = "agent.sock", upstreamPath = "agent.guest.sock", qemuPidArg] = process.argv.slice(2);
const HEADER = 10;
const REQUEST = 1;
const RESPONSE = 2;
/** Whatever the daemon sends, one frame is never bigger than this (its own limit is 4 MiB). */
const MAX_INBOUND = 4 << 20;

let received = 0;

type Mode = { kind: "pass" } | { kind: "empty" } | { kind: "errors"; bytes: number } | { kind: "silent" };

function mode(): Mode {
  let text: string;
  try {
    text = readFileSync("hostile", "utf8").trim();
  } catch {
    return { kind: "pass" };
  }
  const [kind, arg] = text.split(/\s+/);
  if (kind === "empty" || kind === "silent") return { kind };
  if (kind === "errors") return { kind, bytes: Math.min(Math.max(Number(arg) || 0, 1), 64 << 20) };
  return { kind: "pass" };
}

function varint(n: number): Buffer {
  const out: number[] = [];
  let v = n;
  while (v >= 0x80) {
    out.push((v & 0x7f) | 0x80);
    v = Math.floor(v / 128);
  }
  out.push(v);
  return Buffer.from(out);
}

function field(tag: number, body: Buffer): Buffer {
  return Buffer.concat([varint((tag << 3) | 2), varint(body.length), body]);
}

/** The method name of a ttrpc Request (field 2), or "" when it cannot be read. */
function methodOf(data: Buffer): string {
  let i = 0;
  const readVarint = () => {
    let v = 0;
    let mul = 1;
    for (;;) {
      const b = data[i++];
      if (b === undefined) throw new Error("truncated");
      v += (b & 0x7f) * mul;
      if (b < 0x80) return v;
      mul *= 128;
    }
  };
  try {
    while (i < data.length) {
      const key = readVarint();
      const wire = key & 7;
      if (wire === 0) readVarint();
      else if (wire === 2) {
        const len = readVarint();
        if (key >>> 3 === 2) return data.subarray(i, i + len).toString();
        i += len;
      } else return "";
    }
  } catch {
    return "";
  }
  return "";
}

function frame(streamId: number, type: number, data: Buffer): Buffer {
  const header = Buffer.alloc(HEADER);
  header.writeUInt32BE(data.length, 0);
  header.writeUInt32BE(streamId, 4);
  header.writeUInt8(type, 8);
  return Buffer.concat([header, data]);
}

/** A ttrpc Response: status {code 2 (UNKNOWN), message} when given, else success and no payload. */
function response(streamId: number, errorBytes?: number): Buffer {
  if (errorBytes === undefined) return frame(streamId, RESPONSE, Buffer.alloc(0));
  const status = Buffer.concat([Buffer.from([0x08, 0x02]), field(2, Buffer.alloc(errorBytes, "E"))]);
  return frame(streamId, RESPONSE, field(1, status));
}

/** Calls `onFrame` with each whole frame (header included) as it arrives on `socket`. */
function frames(socket: net.Socket, maxData: number, onFrame: (whole: Buffer) => void): void {
  let pending: Buffer = Buffer.alloc(0);
  socket.on("data", (chunk: Buffer) => {
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    while (pending.length >= HEADER) {
      const length = pending.readUInt32BE(0);
      if (length > maxData) return socket.destroy();
      if (pending.length < HEADER + length) return;
      const whole = pending.subarray(0, HEADER + length);
      pending = pending.subarray(HEADER + length);
      onFrame(whole);
    }
  });
}

function serve(down: net.Socket): void {
  const up = net.createConnection({ path: upstreamPath });
  up.on("error", () => down.destroy());
  down.on("error", () => up.destroy());
  up.on("close", () => down.destroy());
  down.on("close", () => up.destroy());
  // Whole frames only, so that a frame of ours never lands inside one of the guest's.
  frames(up, 64 << 20, (whole) => down.write(whole));
  frames(down, MAX_INBOUND, (whole) => {
    const streamId = whole.readUInt32BE(4);
    const type = whole.readUInt8(8);
    if (type === REQUEST) received++;
    const m = type === REQUEST ? mode() : ({ kind: "pass" } as Mode);
    const wait = methodOf(whole.subarray(HEADER)) === "WaitProcess";
    if (m.kind === "pass" || (wait && m.kind !== "silent")) up.write(whole);
    else if (m.kind === "empty") down.write(response(streamId));
    else if (m.kind === "errors") down.write(response(streamId, m.bytes));
    // silent: nothing, ever.
  });
}

// The QEMU beside it (the wrapper's pid, which exec'd QEMU). Watching only for a new ppid
// missed a QEMU that was gone before this process first looked: it then lived on under pid 1.
const qemuPid = Number(qemuPidArg ?? process.ppid);
const qemuGone = () => {
  if (process.ppid !== qemuPid) return true; // reparented: its parent, QEMU, ended
  try {
    process.kill(qemuPid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "ESRCH";
  }
};
if (qemuGone()) process.exit(0);
setInterval(() => {
  // The QEMU beside it is gone, and so is the "guest".
  if (qemuGone()) process.exit(0);
  try {
    writeFileSync("hostile-count", `${received}\n`);
  } catch {
    // its dir is being removed with the VM
  }
}, 500);
rmSync(listenPath, { force: true });
// Listen once QEMU's own port is there: until then the daemon's connect is refused and it
// retries, as it does while a real QEMU starts.
while (!existsSync(upstreamPath)) await sleep(20);
net.createServer(serve).listen(listenPath);
