// The two Kubernetes API calls the installer makes (merge-patch a node's labels, read a
// DaemonSet's status), over node:https with the pod's service account. @kubernetes/client-node
// 2.x needs Node ≥ 22 (its undici uses zlib zstd) and is 65 MB; this is the part we use.
import { readFileSync } from "node:fs";
import https from "node:https";

const SA = "/var/run/secrets/kubernetes.io/serviceaccount";

export interface KubeEndpoint {
  /** https://host:port */
  server: string;
  token: string;
  ca: Buffer;
}

export class KubeError extends Error {
  override readonly name = "KubeError";
  constructor(
    message: string,
    readonly status?: number,
  ) {
    super(message);
  }
}

/** In-cluster: KUBERNETES_SERVICE_HOST/PORT plus the mounted service account token and CA. */
export function inClusterEndpoint(env = process.env, saDir = SA): KubeEndpoint {
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT ?? "443";
  if (!host) throw new KubeError("not running in a cluster: KUBERNETES_SERVICE_HOST is not set");
  try {
    return {
      server: `https://${host.includes(":") ? `[${host}]` : host}:${port}`,
      token: readFileSync(`${saDir}/token`, "utf8").trim(),
      ca: readFileSync(`${saDir}/ca.crt`),
    };
  } catch (err) {
    throw new KubeError(`cannot read the service account in ${saDir}: ${(err as Error).message}`);
  }
}

export async function kubeRequest(
  ep: KubeEndpoint,
  method: "GET" | "PATCH",
  apiPath: string,
  body?: unknown,
  contentType = "application/merge-patch+json",
): Promise<unknown> {
  const url = new URL(apiPath, ep.server);
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = https.request(
      url,
      {
        method,
        ca: ep.ca,
        headers: {
          authorization: `Bearer ${ep.token}`,
          accept: "application/json",
          ...(payload ? { "content-type": contentType, "content-length": payload.length } : {}),
        },
        timeout: 15_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          const code = res.statusCode ?? 0;
          if (code < 200 || code >= 300) {
            let message = text.slice(0, 300);
            try {
              message = (JSON.parse(text) as { message?: string }).message ?? message;
            } catch {
              // Not a Status object; keep the text.
            }
            reject(new KubeError(`${method} ${apiPath}: HTTP ${code}: ${message}`, code));
            return;
          }
          try {
            resolve(text ? JSON.parse(text) : {});
          } catch {
            reject(new KubeError(`${method} ${apiPath}: the answer is not JSON`));
          }
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error("no answer in 15 s")));
    req.on("error", (err) => reject(new KubeError(`${method} ${apiPath}: ${err.message}`)));
    req.end(payload);
  });
}
