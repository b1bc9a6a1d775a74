// The installer's exit statuses, in one place: the CLI maps every failure to one of these, and
// installer/README.md and docs/operations.md list them (a test keeps the three in step).
// 13 is never ours: Node.js uses it for an unsettled top-level await.
// (No imports: every module may use it. Errors are told apart by their exitCode or name.)

export const EXIT = {
  /** Done: installed / uninstalled / status all well. */
  OK: 0,
  /** An unexpected error (a bug, or a failure none of the codes below names). */
  FAILED: 1,
  /** The command line is wrong (unknown flag or command, bad value). */
  USAGE: 2,
  /** The host root does not exist, or the installer's own state file on the node is unreadable. */
  HOST: 3,
  /** Tools the shim runs on the node are missing (each is named with its package). */
  MISSING_TOOLS: 4,
  /** containerd's config cannot be changed safely (invalid, unknown format, a `cloudhv` runtime of someone else's). */
  CONTAINERD_CONFIG: 5,
  /** The runtime config or the artifact bundle is invalid. */
  INVALID_INPUT: 6,
  /** The restart itself failed (containerd still runs its previous config); the message says what it runs now. */
  RESTART_FAILED: 7,
  /** containerd was restarted but did not come back as expected (install rolls its config change back). */
  CONTAINERD_UNHEALTHY: 8,
  /** A Kubernetes API call failed (node label, DaemonSet, pods). */
  KUBE: 9,
  /** An uninstall is running on this node: install does nothing. */
  UNINSTALL_IN_PROGRESS: 10,
  /** `status`: cloudhv is not (fully) installed or containerd does not serve the handler. */
  NOT_READY: 11,
  /** `wait-daemonset` / `delete-daemonset`: the time given ran out. */
  TIMEOUT: 12,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

/** One line per code, for --help and the docs' tables. */
export const EXIT_MEANINGS: Record<ExitCode, string> = {
  0: "done (install, uninstall), or all well (status)",
  1: "unexpected error (a bug, or a failure no other code names)",
  2: "wrong command line",
  3: "host root missing, or the installer's state file on the node unreadable",
  4: "tools the shim needs are missing on the node (each named with its package)",
  5: "containerd's config cannot be changed safely (invalid, unknown format, someone else's `cloudhv` runtime)",
  6: "invalid runtime config or artifact bundle",
  7: "the containerd restart itself failed: containerd still runs its previous config (install took its changes back)",
  8: "containerd was restarted but did not come back as expected (install rolled its config change back)",
  9: "a Kubernetes API call failed",
  10: "an uninstall is running on this node; install did nothing",
  11: "status: not installed, or containerd does not serve the cloudhv handler",
  12: "wait-daemonset / delete-daemonset: timed out",
};

/** An error that knows its exit status. */
export class CodedError extends Error {
  constructor(
    message: string,
    readonly exitCode: ExitCode,
  ) {
    super(message);
  }
}

/** The exit status for an error thrown anywhere in the installer. */
export function exitCodeFor(err: unknown): ExitCode {
  if (err instanceof CodedError) return err.exitCode;
  const coded = (err as { exitCode?: unknown } | undefined)?.exitCode;
  if (typeof coded === "number" && coded in EXIT_MEANINGS) return coded as ExitCode;
  const byName: Record<string, ExitCode> = {
    ContainerdConfigError: EXIT.CONTAINERD_CONFIG,
    ArtifactError: EXIT.INVALID_INPUT,
    // The shim's config validator (parseConfig).
    ConfigError: EXIT.INVALID_INPUT,
    KubeError: EXIT.KUBE,
  };
  return byName[(err as Error | undefined)?.name ?? ""] ?? EXIT.FAILED;
}
