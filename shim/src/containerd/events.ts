// Encoding of events the shim forwards to containerd's ttrpc Events service.
import { messageCodec, type ProtoInput, type ProtoMessage } from "../ttrpc/proto.js";

export const EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events";

export type AnyMessage = ProtoMessage<"cloudhv.wellknown.Any">;
export type Envelope = ProtoInput<ProtoMessage<"containerd.services.events.ttrpc.v1.Envelope">>;

const forwardCodec = messageCodec("containerd.services.events.ttrpc.v1.ForwardRequest");

export function eventsForwardRequest(envelope: Envelope, now = Date.now()): Uint8Array {
  const timestamp = envelope.timestamp ?? { seconds: Math.floor(now / 1000), nanos: (now % 1000) * 1e6 };
  return forwardCodec.encode({ envelope: { ...envelope, timestamp } });
}
