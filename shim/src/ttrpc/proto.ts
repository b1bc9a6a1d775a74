// Loads our .proto files (shim/proto) with protobufjs and gives typed encode/decode pairs. The
// types come from generated/proto-types.ts, which is generated from the same .proto files.
import { fileURLToPath } from "node:url";
import protobuf from "protobufjs";
import { PROTO_FILE_OF, type ProtoMessages } from "../generated/proto-types.js";

/** shim/proto, found from this module's location in both src/ (tests via tsc) and dist/. */
export const PROTO_DIR = fileURLToPath(new URL("../../../proto/", import.meta.url));

const roots = new Map<string, protobuf.Root>();

export function loadProto(file: string): protobuf.Root {
  let root = roots.get(file);
  if (!root) {
    root = new protobuf.Root();
    root.resolvePath = (_origin, target) => (target.startsWith("/") ? target : PROTO_DIR + target);
    root.loadSync(file);
    root.resolveAll();
    roots.set(file, root);
  }
  return root;
}

export type ProtoName = keyof ProtoMessages;
/** A message as decode returns it. */
export type ProtoMessage<N extends ProtoName> = ProtoMessages[N];

/** What encode accepts: any subset of the fields (protobuf fills the rest with defaults). */
export type ProtoInput<T> = T extends Uint8Array
  ? Uint8Array
  : T extends Array<infer E>
    ? Array<ProtoInput<E>>
    : T extends object
      ? { [K in keyof T]?: ProtoInput<T[K]> | null }
      : T;

export interface MessageCodec<T> {
  readonly typeName: string;
  /** Takes a decoded message as it is, or any subset of its fields. */
  encode(value: T | ProtoInput<T>): Uint8Array;
  decode(bytes: Uint8Array): T;
}

/**
 * The codec for message `typeName`. Decoding fills defaults and turns 64-bit integers into
 * numbers and enums into their names: exactly the generated shape, which is why the one cast
 * below is sound (a unit test regenerates the shapes and compares).
 */
export function messageCodec<N extends ProtoName>(typeName: N): MessageCodec<ProtoMessage<N>> {
  const type = loadProto(PROTO_FILE_OF[typeName]).lookupType(typeName);
  return {
    typeName,
    encode(value) {
      return type.encode(type.fromObject(value as Record<string, unknown>)).finish();
    },
    decode(bytes) {
      return type.toObject(type.decode(bytes), {
        longs: Number,
        enums: String,
        bytes: Buffer,
        defaults: true,
        arrays: true,
      }) as ProtoMessage<N>;
    },
  };
}
