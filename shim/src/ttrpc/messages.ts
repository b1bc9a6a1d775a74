// The ttrpc envelope (Request/Response) as typed codecs.
import { messageCodec, type ProtoMessage } from "./proto.js";

export type KeyValue = ProtoMessage<"ttrpc.KeyValue">;
export type TtrpcRequest = ProtoMessage<"ttrpc.Request">;
export type RpcStatus = ProtoMessage<"ttrpc.Status">;
export type TtrpcResponse = ProtoMessage<"ttrpc.Response">;

export const requestCodec = messageCodec("ttrpc.Request");
export const responseCodec = messageCodec("ttrpc.Response");
