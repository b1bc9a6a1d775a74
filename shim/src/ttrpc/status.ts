// gRPC status codes as ttrpc carries them, and the error type every ttrpc failure becomes.

export const Code = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;
export type Code = (typeof Code)[keyof typeof Code];

const names = new Map<number, string>(Object.entries(Code).map(([name, code]) => [code, name]));

export function codeName(code: number): string {
  return names.get(code) ?? `CODE_${code}`;
}

/** A call that ended with a non-OK status, locally (timeout, closed connection) or from the peer. */
export class TtrpcError extends Error {
  override readonly name = "TtrpcError";
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(`${codeName(code)}: ${message}`);
  }
}

/** Error kinds used across the host side (errors carry `kind`), and the status each maps to. */
export const KIND_CODES = {
  InvalidArgument: Code.INVALID_ARGUMENT,
  NotFound: Code.NOT_FOUND,
  AlreadyExists: Code.ALREADY_EXISTS,
  FailedPrecondition: Code.FAILED_PRECONDITION,
  Unavailable: Code.UNAVAILABLE,
  Unimplemented: Code.UNIMPLEMENTED,
  ResourceExhausted: Code.RESOURCE_EXHAUSTED,
  Internal: Code.INTERNAL,
} as const;
export type ErrorKind = keyof typeof KIND_CODES;
