// The critest specs that runc passes and cloudhv is known not to (issue 16), each with why.
// e2e/test/critest.test.ts fails on any other difference, and says so when one of these starts
// passing, so this list only shrinks. Patterns match Ginkgo's full spec text.

export interface KnownDifference {
  pattern: RegExp;
  /** Short cause, as in docs/critest-results.md. */
  cause: string;
  reason: string;
  /** A VM cannot honour it at all: it stays a (fast, named) failure by design. */
  byDesign?: boolean;
}

export const KNOWN_DIFFERENCES: readonly KnownDifference[] = [
  {
    pattern: /Container Mount Propagation .*mount with 'rshared'/,
    cause: "propagation",
    reason:
      "a mount made in the container does not come back to the host through the virtio-fs share: a VM cannot give container-to-host propagation",
    byDesign: true,
  },
  {
    pattern:
      /Security Context NamespaceOption runtime should support (HostPID|HostIpc is true|HostNetwork is true)|runtime should support portforward in host network/,
    cause: "host namespaces",
    reason:
      "a VM cannot share the node's network, PID or IPC namespace: RunPodSandbox must refuse it at once, naming the setting",
    byDesign: true,
  },
];

export function knownDifference(spec: string): KnownDifference | undefined {
  return KNOWN_DIFFERENCES.find((k) => k.pattern.test(spec));
}

/**
 * Specs that once differed and were fixed (docs/cri-conformance.md): outside [Conformance] but
 * kept in the e2e test's default scope, so that a regression fails it. Each must pass on
 * cloudhv wherever runc passes it.
 */
export const FIXED_DIFFERENCES: readonly RegExp[] = [
  /Idempotence StopContainer should not return an error if already stopped/,
  /Container Mount Readonly runtime should support readonly mounts should support non-recursive readonly mounts/,
  /Container Mount Propagation .*mount with 'r(private|slave)'/,
  /Security Context bucket runtime should support (that ReadOnlyRootfs is true|Privileged is true|adding capability)/,
  /PodSandbox runtime should support sysctls should support (safe|unsafe) sysctls/,
];
