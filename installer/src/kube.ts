// The Kubernetes API calls the installer makes, with @kubernetes/client-node as the pod's
// service account: merge-patch its node's labels, post an Event on the node, and for helm
// uninstall's hooks read or delete a DaemonSet and list its pods. 1.4 is the line that runs on
// Node 20 (2.x needs Node ≥ 22: its undici uses zlib zstd).
import { accessSync, constants, readFileSync } from "node:fs";
import {
  ApiException,
  AppsV1Api,
  type ConfigurationOptions,
  CoreV1Api,
  KubeConfig,
  Observable,
  type ObservableMiddleware,
  PatchStrategy,
  setHeaderOptions,
  type V1DaemonSet,
} from "@kubernetes/client-node";
import { EXIT, type ExitCode } from "./exit-codes.js";

const SA = "/var/run/secrets/kubernetes.io/serviceaccount";
const TIMEOUT_MS = 15_000;

export class KubeError extends Error {
  override readonly name = "KubeError";
  readonly exitCode: ExitCode = EXIT.KUBE;
  constructor(
    message: string,
    readonly status?: number,
  ) {
    super(message);
  }
}

/**
 * In-cluster: KUBERNETES_SERVICE_HOST/PORT plus the mounted service account token and CA
 * (KubeConfig.loadFromCluster: it reads the token file again after a minute, so a rotated
 * token is picked up). `pathPrefix` goes in front of the service account's path (tests).
 */
export function inClusterConfig(pathPrefix = ""): KubeConfig {
  const env = process.env;
  if (!env.KUBERNETES_SERVICE_HOST)
    throw new KubeError("not running in a cluster: KUBERNETES_SERVICE_HOST is not set");
  if (!env.KUBERNETES_SERVICE_PORT)
    throw new KubeError("not running in a cluster: KUBERNETES_SERVICE_PORT is not set");
  const dir = `${pathPrefix}${SA}`;
  try {
    for (const file of ["token", "ca.crt"]) accessSync(`${dir}/${file}`, constants.R_OK);
  } catch (err) {
    throw new KubeError(`cannot read the service account in ${dir}: ${(err as Error).message}`);
  }
  const kc = new KubeConfig();
  kc.loadFromCluster(pathPrefix);
  return kc;
}

/** Gives up on a request after TIMEOUT_MS. */
const timeoutMiddleware: ObservableMiddleware = {
  pre: (request) => {
    request.setSignal(AbortSignal.timeout(TIMEOUT_MS));
    return new Observable(Promise.resolve(request));
  },
  post: (response) => new Observable(Promise.resolve(response)),
};

function options(contentType?: string): ConfigurationOptions<ObservableMiddleware> {
  const base: ConfigurationOptions<ObservableMiddleware> = {
    middleware: [timeoutMiddleware],
    middlewareMergeStrategy: "append",
  };
  return contentType ? setHeaderOptions("Content-Type", contentType, base) : base;
}

/** An API error as `what: HTTP code: the Status message`, or what failed on the way. */
function kubeError(what: string, err: unknown): KubeError {
  if (err instanceof ApiException) {
    const body = typeof err.body === "string" ? err.body : "";
    let message = body.slice(0, 300);
    try {
      message = (JSON.parse(body) as { message?: string }).message ?? message;
    } catch {
      // Not a Status object; keep the text.
    }
    return new KubeError(`${what}: HTTP ${err.code}: ${message || "no message"}`, err.code);
  }
  const e = err as Error;
  if (e?.name === "AbortError" || e?.name === "TimeoutError")
    return new KubeError(`${what}: no answer in ${TIMEOUT_MS / 1000} s`);
  return new KubeError(`${what}: ${e?.message ?? String(err)}`);
}

/** Sets (string) or removes (null) labels on a node with a JSON merge patch. */
export async function patchNodeLabels(
  kc: KubeConfig,
  node: string,
  labels: Record<string, string | null>,
): Promise<void> {
  try {
    await kc
      .makeApiClient(CoreV1Api)
      .patchNode({ name: node, body: { metadata: { labels } } }, options(PatchStrategy.MergePatch));
  } catch (err) {
    throw kubeError(`PATCH /api/v1/nodes/${encodeURIComponent(node)}`, err);
  }
}

/**
 * A DaemonSet with its status. GET on the object itself, not its /status subresource: the
 * chart's Role grants `get` on daemonsets only.
 */
export async function readDaemonSet(kc: KubeConfig, namespace: string, name: string): Promise<V1DaemonSet> {
  try {
    return await kc.makeApiClient(AppsV1Api).readNamespacedDaemonSet({ name, namespace }, options());
  } catch (err) {
    throw kubeError(
      `GET /apis/apps/v1/namespaces/${encodeURIComponent(namespace)}/daemonsets/${encodeURIComponent(name)}`,
      err,
    );
  }
}

/** Deletes a DaemonSet (its pods go in the background); false when it was not there. */
export async function deleteDaemonSet(kc: KubeConfig, namespace: string, name: string): Promise<boolean> {
  try {
    await kc
      .makeApiClient(AppsV1Api)
      .deleteNamespacedDaemonSet({ name, namespace, propagationPolicy: "Background" }, options());
    return true;
  } catch (err) {
    if (err instanceof ApiException && err.code === 404) return false;
    throw kubeError(
      `DELETE /apis/apps/v1/namespaces/${encodeURIComponent(namespace)}/daemonsets/${encodeURIComponent(name)}`,
      err,
    );
  }
}

export interface PodSummary {
  name: string;
  node: string | undefined;
  ready: boolean;
}

/** Pods matching a label selector in a namespace. */
export async function listPods(
  kc: KubeConfig,
  namespace: string,
  labelSelector: string,
): Promise<PodSummary[]> {
  try {
    const list = await kc.makeApiClient(CoreV1Api).listNamespacedPod({ namespace, labelSelector }, options());
    return list.items.map((p) => ({
      name: p.metadata?.name ?? "?",
      node: p.spec?.nodeName,
      ready: p.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True") ?? false,
    }));
  } catch (err) {
    throw kubeError(
      `GET /api/v1/namespaces/${encodeURIComponent(namespace)}/pods?labelSelector=${encodeURIComponent(labelSelector)}`,
      err,
    );
  }
}

/** Kubernetes Events about a node (`kubectl describe node` shows them). */
export interface NodeEvents {
  warn(node: string, reason: string, message: string): Promise<void>;
}

/** The namespace this pod runs in: $POD_NAMESPACE, else the service account's, else "default". */
export function podNamespace(pathPrefix = ""): string {
  if (process.env.POD_NAMESPACE) return process.env.POD_NAMESPACE;
  try {
    return readFileSync(`${pathPrefix}${SA}/namespace`, "utf8").trim() || "default";
  } catch {
    return "default";
  }
}

/**
 * Events in `namespace` whose involvedObject is the node. Like kubelet's, the object's uid is
 * the node's name, which `kubectl describe node` also looks for.
 */
export function kubeNodeEvents(namespace: string, kc?: KubeConfig): NodeEvents {
  return {
    async warn(node, reason, message) {
      const now = new Date();
      try {
        await (kc ?? inClusterConfig()).makeApiClient(CoreV1Api).createNamespacedEvent(
          {
            namespace,
            body: {
              metadata: { generateName: "cloudhv-installer.", namespace },
              involvedObject: { apiVersion: "v1", kind: "Node", name: node, uid: node },
              reason,
              message: message.slice(0, 1024),
              type: "Warning",
              source: { component: "cloudhv-installer", host: node },
              reportingComponent: "cloudhv-installer",
              reportingInstance: node,
              firstTimestamp: now,
              lastTimestamp: now,
              count: 1,
            },
          },
          options(),
        );
      } catch (err) {
        throw kubeError(`POST /api/v1/namespaces/${encodeURIComponent(namespace)}/events`, err);
      }
    },
  };
}
