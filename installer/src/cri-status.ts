// The one CRI call the installer needs — RuntimeService/Status with verbose info — over
// containerd's unix socket with @grpc/grpc-js, messages from the shim package's cri.proto via
// protobufjs. It tells whether containerd came back healthy and which runtime handlers its CRI
// plugin loaded.
import { CRI_PROTO } from "@cloudhv/shim";
import * as grpc from "@grpc/grpc-js";
import protobuf from "protobufjs";

export interface CriStatus {
  /** RuntimeReady / NetworkReady → status. */
  conditions: Record<string, { status: boolean; reason: string; message: string }>;
  /** Handler names: from runtime_handlers (containerd ≥ 2.0), else from the verbose config. */
  handlers: string[];
  /** info["config"] parsed, when containerd sent it. */
  config?: Record<string, unknown>;
}

export class CriError extends Error {
  override readonly name = "CriError";
}

const METHOD = "/runtime.v1.RuntimeService/Status";

interface StatusResponse {
  status?: { conditions: Array<{ type: string; status: boolean; reason: string; message: string }> };
  info: Record<string, string>;
  runtimeHandlers: Array<{ name: string }>;
}

let types: { request: protobuf.Type; response: protobuf.Type } | undefined;

/** Loaded on first use, so that a missing proto fails the health check, not the whole CLI. */
function statusTypes(): { request: protobuf.Type; response: protobuf.Type } {
  if (!types) {
    const root = protobuf.loadSync(CRI_PROTO);
    types = {
      request: root.lookupType("runtime.v1.StatusRequest"),
      response: root.lookupType("runtime.v1.StatusResponse"),
    };
  }
  return types;
}

/** A StatusResponse's bytes as what the installer looks at. */
export function decodeStatusResponse(buf: Uint8Array): CriStatus {
  const { response } = statusTypes();
  let res: StatusResponse;
  try {
    res = response.toObject(response.decode(buf), {
      defaults: true,
      arrays: true,
      objects: true,
    }) as StatusResponse;
  } catch (err) {
    throw new CriError(`malformed StatusResponse: ${(err as Error).message}`);
  }
  const out: CriStatus = { conditions: {}, handlers: [] };
  for (const c of res.status?.conditions ?? [])
    out.conditions[c.type] = { status: c.status, reason: c.reason, message: c.message };
  for (const { name } of res.runtimeHandlers)
    if (name && !out.handlers.includes(name)) out.handlers.push(name);
  if (res.info.config) {
    try {
      out.config = JSON.parse(res.info.config) as Record<string, unknown>;
    } catch {
      // Leave config out; the conditions are what matter most.
    }
    const runtimes = (out.config?.containerd as { runtimes?: Record<string, unknown> } | undefined)?.runtimes;
    for (const name of Object.keys(runtimes ?? {})) if (!out.handlers.includes(name)) out.handlers.push(name);
  }
  return out;
}

/** CRI Status (verbose) from the containerd socket at `socketPath`. */
export async function criStatus(socketPath: string, timeoutMs = 5000): Promise<CriStatus> {
  let codec: ReturnType<typeof statusTypes>;
  try {
    codec = statusTypes();
  } catch (err) {
    throw new CriError(`CRI ${METHOD}: cannot load ${CRI_PROTO}: ${(err as Error).message}`);
  }
  const target = socketPath.startsWith("/") ? `unix://${socketPath}` : `unix:${socketPath}`;
  const client = new grpc.Client(target, grpc.credentials.createInsecure());
  try {
    return await new Promise<CriStatus>((resolve, reject) => {
      client.makeUnaryRequest(
        METHOD,
        (req: { verbose: boolean }) =>
          Buffer.from(codec.request.encode(codec.request.fromObject(req)).finish()),
        (bytes: Buffer) => decodeStatusResponse(bytes),
        { verbose: true },
        new grpc.Metadata(),
        { deadline: Date.now() + timeoutMs },
        (err, value) => {
          if (!err) resolve(value as CriStatus);
          else if (err.code === grpc.status.DEADLINE_EXCEEDED)
            reject(new CriError(`CRI ${METHOD} on ${socketPath}: no answer in ${timeoutMs} ms`));
          else {
            // grpc-js ends a connection failure with an empty "Resolution note:".
            const details = err.details.replace(/\s*Resolution note:\s*$/, "");
            const code = `grpc-status ${err.code} (${grpc.status[err.code] ?? "?"})`;
            reject(new CriError(`CRI ${METHOD} on ${socketPath}: ${code} ${details}`.trim()));
          }
        },
      );
    });
  } finally {
    client.close();
  }
}
