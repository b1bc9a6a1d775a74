// @cloudhv/shim's public surface for installer/ and e2e/.
import { join } from "node:path";
import { TtrpcClient } from "./ttrpc/client.js";
import { PROTO_DIR } from "./ttrpc/proto.js";

export {
  AGENT_PROTOCOL_VERSION,
  AgentClient,
  type HealthResponse,
  type VersionResponse,
} from "./agent/client.js";
export {
  ConfigError,
  configSchema,
  DEFAULT_CONFIG_PATH,
  parseConfig,
  type RuntimeConfig,
} from "./config.js";
export { type AnyMessage, type Envelope, EVENTS_SERVICE, eventsForwardRequest } from "./containerd/events.js";
export { type ErrorKind, ShimError, statusOf } from "./errors.js";
export { NetHelper } from "./network/net-helper.js";
export { attachPodNetwork, type PodNetwork } from "./network/pod-network.js";
export {
  type CacheEntry,
  type ContainerdMount,
  createScratchDisk,
  DEFAULT_CACHE_DIR,
  DEFAULT_SCRATCH_BYTES,
  ErofsCache,
  type ErofsCacheOptions,
  type ErofsCacheStats,
  type ErofsCompression,
  type ErofsImage,
  type EvictResult,
  mountPointsUnder,
  parseRootfsMounts,
  RootfsError,
  type RootfsErrorKind,
  type RootfsSource,
  type ScratchDisk,
  type ScratchOptions,
} from "./rootfs/index.js";
export { TtrpcClient } from "./ttrpc/client.js";
export { type CallContext, type MethodHandler, TtrpcServer } from "./ttrpc/server.js";
export { Code, TtrpcError } from "./ttrpc/status.js";
export { CREATED_MARKER, mkdirMarked } from "./util/created-dir.js";
export { ExecError, type ExecResult, exec, execOk } from "./util/exec.js";
export { type Logger, log } from "./util/log.js";
export { TIMED_OUT, within } from "./util/time.js";
export { type Accel, type AccelProbe, probeAccel } from "./vmm/accel.js";
export { CloudHypervisorDriver, type CloudHypervisorDriverOptions } from "./vmm/cloud-hypervisor.js";
export { DEFAULT_VMM_UIDS, type VmmUidRange } from "./vmm/confine.js";
export {
  BASE_KERNEL_ARGS,
  QEMU_SANDBOX,
  QemuDriver,
  type QemuDriverOptions,
  type QemuVm,
} from "./vmm/qemu.js";
export {
  type CloudHypervisorAvailability,
  chooseHypervisor,
  cloudHypervisorAvailability,
  type HypervisorChoice,
} from "./vmm/select.js";
export type { HypervisorDriver, VmConfig, VmExit, VmHandle } from "./vmm/types.js";

/** Our CRI (runtime.v1) proto, shipped with this package: e2e's CRI client, the installer's health check. */
export const CRI_PROTO = join(PROTO_DIR, "cri.proto");

/** Connects a ttrpc client to a unix socket. */
export const connectTtrpc = (path: string, opts?: { timeoutMs?: number }) => TtrpcClient.connect(path, opts);
// The installer's uninstall stops the pool VMs a killed daemon left (pod/pool.ts).
export { reapOrphanPoolVms } from "./pod/pool.js";
