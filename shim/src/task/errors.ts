// The task service's error type. Its kind maps to a ttrpc status code at the one boundary
// (ttrpc/server.ts statusOf), which containerd turns back into errdefs (NotFound, …).
import type { ErrorKind } from "../ttrpc/status.js";

export class ShimError extends Error {
  override readonly name = "ShimError";
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
