// The Kubernetes level's containerd 2 pass: the same steps (k8s.test.ts) on a node whose
// containerd is 2.x, built pinned from the Go module proxy (installer/scripts/build-containerd2.sh,
// cached by version). CLOUDHV_K8S_CONTAINERD=1 skips it (a ~6 min run on 2 cores).
const skip =
  process.env.CLOUDHV_K8S_CONTAINERD === "1"
    ? "CLOUDHV_K8S_CONTAINERD=1: the containerd 1.6 pass only"
    : process.env.CLOUDHV_K8S_KIND
      ? "a kind cluster brings its own containerd"
      : undefined;
if (skip) {
  const { it } = await import("node:test");
  it("Kubernetes on containerd 2", (t) => t.skip(skip));
} else {
  process.env.CLOUDHV_K8S_CONTAINERD = "2";
  await import("./k8s.test.js");
}
