// The one error type of rootfs delivery. `kind` says what went wrong for the caller (a subset of
// the host's error kinds, so errors.ts statusOf maps it); the message names the thing, the value
// and the rule.
import { ShimError } from "../errors.js";

export type RootfsErrorKind =
  /** The request is wrong: an unsupported mount, option or path. */
  | "InvalidArgument"
  /** Something the request names is not there (a layer directory). */
  | "NotFound"
  /** The scratch disk (or another output) exists already. */
  | "AlreadyExists"
  /** A tool or the kernel failed, or a build timed out: may work later. */
  | "Unavailable";

export class RootfsError extends ShimError {
  override readonly name = "RootfsError";
  declare readonly kind: RootfsErrorKind;
  constructor(kind: RootfsErrorKind, message: string, options?: { cause?: unknown }) {
    super(kind, message, options);
  }
}
