// Typed client for the guest agent's ttrpc service (shim/proto/agent.proto).

import type { CallOptions, TtrpcClient } from "../ttrpc/client.js";
import { messageCodec } from "../ttrpc/proto.js";

const SERVICE = "cloudhv.agent.v1.Agent";

export interface HealthResponse {
  status: "STATUS_UNSPECIFIED" | "SERVING";
  uptimeNs: number;
}

export interface VersionResponse {
  agentVersion: string;
  protocolVersion: number;
  kernelRelease: string;
  runtimeVersion: string;
}

type Empty = Record<string, never>;

const codecs = {
  HealthRequest: messageCodec<Empty>("agent.proto", "cloudhv.agent.v1.HealthRequest"),
  HealthResponse: messageCodec<HealthResponse>("agent.proto", "cloudhv.agent.v1.HealthResponse"),
  VersionRequest: messageCodec<Empty>("agent.proto", "cloudhv.agent.v1.VersionRequest"),
  VersionResponse: messageCodec<VersionResponse>("agent.proto", "cloudhv.agent.v1.VersionResponse"),
};

/** The protocol version this host side speaks; the agent reports its own in Version. */
export const AGENT_PROTOCOL_VERSION = 1;

export class AgentClient {
  constructor(readonly ttrpc: TtrpcClient) {}

  async health(opts?: CallOptions): Promise<HealthResponse> {
    const reply = await this.ttrpc.call(SERVICE, "Health", codecs.HealthRequest.encode({}), opts);
    return codecs.HealthResponse.decode(reply);
  }

  async version(opts?: CallOptions): Promise<VersionResponse> {
    const reply = await this.ttrpc.call(SERVICE, "Version", codecs.VersionRequest.encode({}), opts);
    const version = codecs.VersionResponse.decode(reply);
    // The guest is untrusted: bound what we keep from it.
    for (const key of ["agentVersion", "kernelRelease", "runtimeVersion"] as const) {
      if (version[key].length > 256) version[key] = `${version[key].slice(0, 256)}…`;
    }
    return version;
  }

  close(): void {
    this.ttrpc.close();
  }
}
