// The host side's one error taxonomy. Every failure a caller can act on is a ShimError whose
// `kind` says what went wrong; `statusOf` maps kinds to ttrpc/gRPC codes in this one place,
// and containerd turns the codes back into its errdefs (NotFound, AlreadyExists, …).
import { Code, codeName, TtrpcError } from "./ttrpc/status.js";
import { ExecError } from "./util/exec.js";

export const KIND_CODES = {
  /** The request (or a pod spec, a config value) is wrong. */
  InvalidArgument: Code.INVALID_ARGUMENT,
  NotFound: Code.NOT_FOUND,
  AlreadyExists: Code.ALREADY_EXISTS,
  /** The request is fine but the state does not allow it (delete while running). */
  FailedPrecondition: Code.FAILED_PRECONDITION,
  /** A budget is spent (containers per VM, hot-plug ports). */
  ResourceExhausted: Code.RESOURCE_EXHAUSTED,
  Unimplemented: Code.UNIMPLEMENTED,
  /** The VMM or the guest is gone, or a host tool failed: may work later. */
  Unavailable: Code.UNAVAILABLE,
  /** A deadline passed (the guest did not boot in time, did not release a disk). */
  DeadlineExceeded: Code.DEADLINE_EXCEEDED,
  /** The guest answered with something the host refuses to use. */
  DataLoss: Code.DATA_LOSS,
  /** A bug of ours, or a guest failure outside the codes we accept from it. */
  Internal: Code.INTERNAL,
} as const;
export type ErrorKind = keyof typeof KIND_CODES;

export class ShimError extends Error {
  override readonly name: string = "ShimError";
  /** The VM whose guest caused it (its text is the guest's, cut): its log lines are rate-limited. */
  guest?: string;
  constructor(
    readonly kind: ErrorKind,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

export const notFound = (what: string) => new ShimError("NotFound", `${what} not found`);
export const invalid = (message: string) => new ShimError("InvalidArgument", message);
export const precondition = (message: string) => new ShimError("FailedPrecondition", message);
export const unavailable = (message: string, cause?: unknown) =>
  new ShimError("Unavailable", message, cause === undefined ? undefined : { cause });
export const deadline = (message: string) => new ShimError("DeadlineExceeded", message);
export const exhausted = (message: string) => new ShimError("ResourceExhausted", message);
export const unimplemented = (message: string) => new ShimError("Unimplemented", message);

/** Text from the guest is cut to this many bytes before it is logged or put in an error. */
export const MAX_GUEST_TEXT_BYTES = 512;

/** Cuts untrusted text to `max` bytes (on a character boundary) and marks the cut. */
export function truncateUntrusted(text: string, max = MAX_GUEST_TEXT_BYTES): string {
  if (Buffer.byteLength(text) <= max) return text;
  const cut = Buffer.from(text)
    .subarray(0, max)
    .toString("utf8")
    .replace(/\uFFFD+$/, "");
  return `${cut}… (${Buffer.byteLength(text)} bytes, cut)`;
}

/**
 * The codes a guest agent may choose for its errors, and what they become here. Anything else
 * (UNAUTHENTICATED, PERMISSION_DENIED, codes that would make containerd retry or give up in
 * ways the guest should not steer) becomes Internal.
 */
const GUEST_CODES = new Map<number, ErrorKind>([
  [Code.INVALID_ARGUMENT, "InvalidArgument"],
  [Code.NOT_FOUND, "NotFound"],
  [Code.ALREADY_EXISTS, "AlreadyExists"],
  [Code.FAILED_PRECONDITION, "FailedPrecondition"],
  [Code.RESOURCE_EXHAUSTED, "ResourceExhausted"],
  [Code.UNIMPLEMENTED, "Unimplemented"],
]);

/**
 * A failed call to the guest agent, as a ShimError: guest codes through the allow-list. The
 * guest's text is cut, in the message and in the cause (pino logs a cause's message and stack
 * too), and the error names its `guest` (VM id) so that its log lines are rate-limited.
 */
export function fromAgentCall(method: string, err: unknown, guest?: string): ShimError {
  if (err instanceof ShimError) return err;
  const tagged = (e: ShimError) => {
    if (guest !== undefined) e.guest = guest;
    return e;
  };
  if (err instanceof TtrpcError && err.remote) {
    const kind = GUEST_CODES.get(err.code) ?? "Internal";
    const detail = truncateUntrusted(err.detail);
    const code = kind === "Internal" ? ` (${codeName(err.code)})` : "";
    return tagged(
      new ShimError(kind, `guest agent ${method}${code}: ${detail}`, {
        cause: new TtrpcError(err.code, detail, true),
      }),
    );
  }
  if (err instanceof TtrpcError && err.code === Code.DEADLINE_EXCEEDED)
    return tagged(new ShimError("DeadlineExceeded", `guest agent ${method}: ${err.detail}`, { cause: err }));
  // Our client could not read the guest's answer: the guest sent garbage.
  if (err instanceof TtrpcError && err.code === Code.DATA_LOSS) {
    const detail = truncateUntrusted(err.detail);
    return tagged(
      new ShimError("DataLoss", `guest agent ${method}: ${detail}`, {
        cause: new TtrpcError(err.code, detail, err.remote),
      }),
    );
  }
  // A closed or failed connection: the VM (or its agent) is gone.
  const message = err instanceof TtrpcError ? err.detail : err instanceof Error ? err.message : String(err);
  return tagged(
    new ShimError("Unavailable", `guest agent unreachable during ${method}: ${truncateUntrusted(message)}`, {
      cause: err,
    }),
  );
}

/** The ttrpc status for any error a handler threw: the one mapping to containerd's codes. */
export function statusOf(err: unknown): { code: number; message: string } {
  if (err instanceof ShimError) return { code: KIND_CODES[err.kind], message: err.message };
  // A host tool failed (util/ stays below this module, so ExecError is not a ShimError).
  if (err instanceof ExecError) return { code: Code.UNAVAILABLE, message: err.message };
  // Our own transport failures (a peer gone, a timeout) keep their code.
  if (err instanceof TtrpcError && !err.remote) return { code: err.code, message: err.detail };
  if (err instanceof TtrpcError) return { code: Code.INTERNAL, message: truncateUntrusted(err.detail) };
  return { code: Code.UNKNOWN, message: err instanceof Error ? err.message : String(err) };
}
