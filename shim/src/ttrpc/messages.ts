// The ttrpc envelope (Request/Response) as typed codecs.
import { messageCodec } from "./proto.js";

export interface KeyValue {
  key: string;
  value: string;
}

export interface TtrpcRequest {
  service: string;
  method: string;
  payload: Uint8Array;
  timeoutNano: number;
  metadata: KeyValue[];
}

export interface RpcStatus {
  code: number;
  message: string;
}

export interface TtrpcResponse {
  status?: RpcStatus | null;
  payload: Uint8Array;
}

export const requestCodec = messageCodec<TtrpcRequest>("ttrpc.proto", "ttrpc.Request");
export const responseCodec = messageCodec<TtrpcResponse>("ttrpc.proto", "ttrpc.Response");
