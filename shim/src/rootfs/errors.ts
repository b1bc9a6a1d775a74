// The one error type of rootfs delivery. `kind` says what went wrong for the caller (and maps to
// a ttrpc code at the service boundary); the message names the thing, the value and the rule.

export type RootfsErrorKind =
  /** The request is wrong: an unsupported mount, option or path. */
  | "InvalidArgument"
  /** Something the request names is not there (a layer directory). */
  | "NotFound"
  /** The scratch disk (or another output) exists already. */
  | "AlreadyExists"
  /** A tool or the kernel failed, or a build timed out: may work later. */
  | "Unavailable";

export class RootfsError extends Error {
  override readonly name = "RootfsError";
  constructor(
    readonly kind: RootfsErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
