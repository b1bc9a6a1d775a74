// Loads our .proto files (shim/proto) with protobufjs and gives typed encode/decode pairs.
import { fileURLToPath } from "node:url";
import protobuf from "protobufjs";

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

export interface MessageCodec<T> {
  readonly typeName: string;
  encode(value: T): Uint8Array;
  decode(bytes: Uint8Array): T;
}

/**
 * A codec for one message type. Decoding fills defaults and turns 64-bit integers into numbers
 * and enums into their names, so the TypeScript interface `T` describes exactly what comes back.
 */
export function messageCodec<T>(file: string, typeName: string): MessageCodec<T> {
  const type = loadProto(file).lookupType(typeName);
  return {
    typeName,
    encode(value: T): Uint8Array {
      return type.encode(type.fromObject(value as Record<string, unknown>)).finish();
    },
    decode(bytes: Uint8Array): T {
      return type.toObject(type.decode(bytes), {
        longs: Number,
        enums: String,
        bytes: Buffer,
        defaults: true,
        arrays: true,
      }) as T;
    },
  };
}
