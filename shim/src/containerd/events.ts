// Encoding of events the shim forwards to containerd's ttrpc Events service.
import { messageCodec } from "../ttrpc/proto.js";

export const EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events";

export interface AnyMessage {
  typeUrl: string;
  value: Uint8Array;
}

export interface Envelope {
  timestamp?: { seconds: number; nanos: number };
  namespace: string;
  topic: string;
  event: AnyMessage;
}

const forwardCodec = messageCodec<{ envelope: Envelope }>(
  "containerd/events.proto",
  "containerd.services.events.ttrpc.v1.ForwardRequest",
);

export function eventsForwardRequest(envelope: Envelope, now = Date.now()): Uint8Array {
  const timestamp = envelope.timestamp ?? { seconds: Math.floor(now / 1000), nanos: (now % 1000) * 1e6 };
  return forwardCodec.encode({ envelope: { ...envelope, timestamp } });
}
