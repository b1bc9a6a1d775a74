// A CRI client (what kubelet and crictl speak to containerd's CRI plugin): gRPC over the
// containerd socket with @grpc/grpc-js, messages from our own cri.proto (shipped by the shim
// package, shared with the installer) via protobufjs.
import { CRI_PROTO } from "@cloudhv/shim";
import * as grpc from "@grpc/grpc-js";
import protobuf from "protobufjs";

const root = protobuf.loadSync(CRI_PROTO);
const SERVICE = "runtime.v1.RuntimeService";

export type Obj = Record<string, unknown>;

export interface PodSandboxConfig {
  metadata: { name: string; uid: string; namespace: string; attempt?: number };
  hostname?: string;
  logDirectory?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  linux?: {
    cgroupParent?: string;
    /** kubelet's sum of the pod's containers (containerd puts it in io.kubernetes.cri.sandbox-* annotations). */
    resources?: LinuxContainerResources;
    securityContext?: { namespaceOptions?: NamespaceOptions };
    /** Namespaced sysctls, applied to the pod's sandbox (its IPC namespace is the pod's). */
    sysctls?: Record<string, string>;
  };
}

/** CRI NamespaceMode per namespace: POD (the default for network and ipc), CONTAINER, NODE. */
export interface NamespaceOptions {
  network?: string;
  pid?: string;
  ipc?: string;
}

export interface ContainerConfig {
  metadata: { name: string; attempt?: number };
  image: { image: string };
  command?: string[];
  args?: string[];
  workingDir?: string;
  envs?: Array<{ key: string; value: string }>;
  mounts?: Array<{ containerPath: string; hostPath: string; readonly?: boolean }>;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  logPath?: string;
  tty?: boolean;
  /** kubelet sets oomScoreAdj from the pod's QoS and the container's memory request. */
  linux?: {
    resources?: LinuxContainerResources;
    securityContext?: {
      capabilities?: { addCapabilities?: string[] };
      readonlyRootfs?: boolean;
      namespaceOptions?: NamespaceOptions;
    };
  };
}

export interface LinuxContainerResources {
  cpuPeriod?: number;
  cpuQuota?: number;
  cpuShares?: number;
  memoryLimitInBytes?: number;
  oomScoreAdj?: number;
}

export interface ContainerStatus {
  id: string;
  state: "CONTAINER_CREATED" | "CONTAINER_RUNNING" | "CONTAINER_EXITED" | "CONTAINER_UNKNOWN";
  exitCode: number;
  reason: string;
  message: string;
  logPath: string;
}

export interface PodSandboxStatus {
  id: string;
  state: "SANDBOX_READY" | "SANDBOX_NOTREADY";
  runtimeHandler: string;
  /** Absent for a pod on the host network. */
  network: { ip: string } | null;
}

export class CriClient {
  private readonly client: grpc.Client;

  constructor(readonly socketPath: string) {
    this.client = new grpc.Client(`unix://${socketPath}`, grpc.credentials.createInsecure());
  }

  private call<Res = Obj>(method: string, request: Obj, timeoutMs = 180_000): Promise<Res> {
    const def = root.lookupService(SERVICE).methods[method];
    if (!def) throw new Error(`CRI method ${method} is not in cri.proto`);
    const reqType = root.lookupType(def.requestType);
    const resType = root.lookupType(def.responseType);
    return new Promise((resolve, reject) => {
      this.client.makeUnaryRequest(
        `/${SERVICE}/${method}`,
        (value: Obj) => Buffer.from(reqType.encode(reqType.fromObject(value)).finish()),
        (bytes: Buffer) =>
          resType.toObject(resType.decode(bytes), {
            longs: Number,
            enums: String,
            bytes: Buffer,
            defaults: true,
          }) as Res,
        request,
        new grpc.Metadata(),
        { deadline: Date.now() + timeoutMs },
        (err, value) =>
          err ? reject(new Error(`CRI ${method}: ${err.details || err.message}`)) : resolve(value as Res),
      );
    });
  }

  version(): Promise<{ runtimeName: string; runtimeVersion: string; runtimeApiVersion: string }> {
    return this.call("Version", { version: "v1" });
  }

  async runPodSandbox(config: PodSandboxConfig, runtimeHandler: string): Promise<string> {
    const res = await this.call<{ podSandboxId: string }>("RunPodSandbox", { config, runtimeHandler });
    return res.podSandboxId;
  }

  async stopPodSandbox(podSandboxId: string): Promise<void> {
    await this.call("StopPodSandbox", { podSandboxId });
  }

  async removePodSandbox(podSandboxId: string): Promise<void> {
    await this.call("RemovePodSandbox", { podSandboxId });
  }

  async podSandboxStatus(podSandboxId: string): Promise<PodSandboxStatus> {
    return (await this.call<{ status: PodSandboxStatus }>("PodSandboxStatus", { podSandboxId })).status;
  }

  async listPodSandbox(): Promise<Array<{ id: string; state: string; runtimeHandler: string }>> {
    return (
      await this.call<{ items: Array<{ id: string; state: string; runtimeHandler: string }> }>(
        "ListPodSandbox",
        {},
      )
    ).items;
  }

  async createContainer(
    podSandboxId: string,
    config: ContainerConfig,
    sandboxConfig: PodSandboxConfig,
  ): Promise<string> {
    const res = await this.call<{ containerId: string }>("CreateContainer", {
      podSandboxId,
      config,
      sandboxConfig,
    });
    return res.containerId;
  }

  async startContainer(containerId: string): Promise<void> {
    await this.call("StartContainer", { containerId });
  }

  async stopContainer(containerId: string, timeoutSeconds = 10): Promise<void> {
    await this.call("StopContainer", { containerId, timeout: timeoutSeconds });
  }

  async removeContainer(containerId: string): Promise<void> {
    await this.call("RemoveContainer", { containerId });
  }

  async containerStatus(containerId: string): Promise<ContainerStatus> {
    return (await this.call<{ status: ContainerStatus }>("ContainerStatus", { containerId })).status;
  }

  async execSync(
    containerId: string,
    cmd: string[],
    timeoutSeconds = 60,
  ): Promise<{ stdout: string; stderr: string; exitCode: number }> {
    const res = await this.call<{ stdout: Buffer; stderr: Buffer; exitCode: number }>(
      "ExecSync",
      { containerId, cmd, timeout: timeoutSeconds },
      (timeoutSeconds + 30) * 1000,
    );
    return { stdout: res.stdout.toString(), stderr: res.stderr.toString(), exitCode: res.exitCode };
  }

  /** The streaming server's URL for a port-forward into the pod (kubelet's PortForward). */
  async portForward(podSandboxId: string, ports: number[]): Promise<string> {
    const res = await this.call<{ url: string }>("PortForward", { podSandboxId, port: ports });
    return res.url;
  }

  /** The container's writable layer usage as containerd's snapshotter last measured it (kubelet's ephemeral storage). */
  async writableLayerBytes(containerId: string): Promise<number | undefined> {
    const res = await this.call<{
      stats: { writableLayer: { usedBytes: { value: number } | null } | null } | null;
    }>("ContainerStats", { containerId });
    return res.stats?.writableLayer?.usedBytes?.value;
  }

  close(): void {
    this.client.close();
  }
}
