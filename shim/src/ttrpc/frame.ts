// ttrpc framing: a 10-byte header (data length u32 BE, stream id u32 BE, message type u8,
// flags u8) followed by `length` bytes of data. Frames larger than the limit are a protocol
// violation: the decoder reports it and the connection owner closes the connection.

export const HEADER_LENGTH = 10;
/** ttrpc's default and containerd's limit for one message. */
export const DEFAULT_MAX_FRAME_DATA = 4 << 20;

export const MessageType = {
  Request: 0x01,
  Response: 0x02,
  Data: 0x03,
} as const;
export type MessageType = (typeof MessageType)[keyof typeof MessageType];

export const Flags = {
  RemoteClosed: 0x01,
  RemoteOpen: 0x02,
  NoData: 0x04,
} as const;

export interface Frame {
  streamId: number;
  type: number;
  flags: number;
  data: Buffer;
}

export class FrameError extends Error {
  override readonly name = "FrameError";
}

export function encodeFrame(frame: Frame, maxData = DEFAULT_MAX_FRAME_DATA): Buffer {
  if (frame.data.length > maxData) {
    throw new FrameError(`ttrpc frame of ${frame.data.length} bytes exceeds the ${maxData}-byte limit`);
  }
  const out = Buffer.allocUnsafe(HEADER_LENGTH + frame.data.length);
  out.writeUInt32BE(frame.data.length, 0);
  out.writeUInt32BE(frame.streamId >>> 0, 4);
  out.writeUInt8(frame.type, 8);
  out.writeUInt8(frame.flags, 9);
  frame.data.copy(out, HEADER_LENGTH);
  return out;
}

/**
 * Incremental decoder: feed it chunks as they arrive, get whole frames back. Holds at most one
 * partial frame, so memory is bounded by the frame limit.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;

  constructor(private readonly maxData = DEFAULT_MAX_FRAME_DATA) {}

  /** Returns the complete frames in `chunk` (plus what was buffered); throws FrameError on a bad header. */
  push(chunk: Buffer): Frame[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const frames: Frame[] = [];
    while (this.buffered >= HEADER_LENGTH) {
      const head = this.peek(HEADER_LENGTH);
      const length = head.readUInt32BE(0);
      if (length > this.maxData) {
        throw new FrameError(`ttrpc frame announces ${length} bytes, over the ${this.maxData}-byte limit`);
      }
      const type = head.readUInt8(8);
      if (type !== MessageType.Request && type !== MessageType.Response && type !== MessageType.Data) {
        throw new FrameError(`ttrpc frame has unknown message type ${type}`);
      }
      if (this.buffered < HEADER_LENGTH + length) break;
      const whole = this.take(HEADER_LENGTH + length);
      frames.push({
        streamId: whole.readUInt32BE(4),
        type,
        flags: whole.readUInt8(9),
        data: whole.subarray(HEADER_LENGTH),
      });
    }
    return frames;
  }

  /** Bytes of an unfinished frame still held. */
  get pending(): number {
    return this.buffered;
  }

  private peek(n: number): Buffer {
    const first = this.chunks[0];
    if (first && first.length >= n) return first;
    const joined = Buffer.concat(this.chunks);
    this.chunks = [joined];
    return joined;
  }

  private take(n: number): Buffer {
    const joined = this.peek(n);
    const frame = joined.subarray(0, n);
    const rest = joined.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.buffered -= n;
    return frame;
  }
}
