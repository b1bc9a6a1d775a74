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

/**
 * A call that ended with a non-OK status: `remote` when the peer answered with it, else a local
 * failure (timeout, closed connection, undecodable frame). `detail` is the message without the
 * code name.
 */
export class TtrpcError extends Error {
  override readonly name = "TtrpcError";
  constructor(
    readonly code: number,
    readonly detail: string,
    readonly remote = false,
  ) {
    super(`${codeName(code)}: ${detail}`);
  }
}
