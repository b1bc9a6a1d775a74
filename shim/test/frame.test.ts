import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { encodeFrame, FrameDecoder, FrameError, HEADER_LENGTH, MessageType } from "../src/ttrpc/frame.js";

describe("ttrpc frame codec", () => {
  it("writes the 10-byte big-endian header the protocol defines", () => {
    const bytes = encodeFrame({
      streamId: 0x01020304,
      type: MessageType.Response,
      flags: 0x05,
      data: Buffer.from("hi"),
    });
    assert.deepEqual([...bytes.subarray(0, HEADER_LENGTH)], [0, 0, 0, 2, 1, 2, 3, 4, 2, 5]);
    assert.equal(bytes.subarray(HEADER_LENGTH).toString(), "hi");
  });

  it("reassembles frames split at every byte and several frames in one chunk", () => {
    const a = encodeFrame({ streamId: 1, type: MessageType.Request, flags: 0, data: Buffer.from("first") });
    const b = encodeFrame({ streamId: 3, type: MessageType.Data, flags: 1, data: Buffer.alloc(0) });
    const c = encodeFrame({
      streamId: 5,
      type: MessageType.Request,
      flags: 0,
      data: Buffer.alloc(70_000, 7),
    });
    const all = Buffer.concat([a, b, c]);
    const decoder = new FrameDecoder();
    const frames = [];
    for (let i = 0; i < all.length; i++) frames.push(...decoder.push(all.subarray(i, i + 1)));
    assert.deepEqual(
      frames.map((f) => [f.streamId, f.type, f.flags, f.data.length]),
      [
        [1, 1, 0, 5],
        [3, 3, 1, 0],
        [5, 1, 0, 70_000],
      ],
    );
    assert.equal(decoder.pending, 0);
    const again = new FrameDecoder().push(all);
    assert.equal(again.length, 3);
    assert.equal(again[0]?.data.toString(), "first");
  });

  it("rejects a frame that announces more than the limit before buffering it", () => {
    const header = Buffer.alloc(HEADER_LENGTH);
    header.writeUInt32BE(5 << 20, 0);
    header.writeUInt8(MessageType.Request, 8);
    assert.throws(() => new FrameDecoder().push(header), FrameError);
    assert.throws(
      () =>
        new FrameDecoder(16).push(encodeFrame({ streamId: 1, type: 1, flags: 0, data: Buffer.alloc(17) })),
      /over the 16-byte limit/,
    );
  });

  it("rejects an unknown message type", () => {
    const bytes = encodeFrame({ streamId: 1, type: 9, flags: 0, data: Buffer.alloc(0) });
    assert.throws(() => new FrameDecoder().push(bytes), /unknown message type 9/);
  });

  it("refuses to encode an oversize frame", () => {
    assert.throws(
      () => encodeFrame({ streamId: 1, type: 1, flags: 0, data: Buffer.alloc(32) }, 16),
      /exceeds the 16-byte limit/,
    );
  });
});
