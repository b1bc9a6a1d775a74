#!/usr/bin/env node
// The shim daemon: one per node (per build and containerd), serving containerd's task API
// for every cloudhv task. Started by the front (bin/front.ts) as its child, on backend sockets
// the front relays containerd's connections to; never by hand.
import { rmSync } from "node:fs";
import { mkdir, rmdir } from "node:fs/promises";
import path from "node:path";
import { loadConfig } from "../config.js";
import { EventPublisher } from "../containerd/publisher.js";
import { invalid, statusOf } from "../errors.js";
import { namespaceSocketPath, SHIM_VERSION, SOCKET_SCHEME } from "../launcher/daemon-address.js";
import { FrontLink, frontControlOf } from "../launcher/front-link.js";
import { LOCK_HELD_STATUS, takeLock } from "../launcher/lock.js";
import { parseMetricsAddress } from "../metrics/address.js";
import { recordCleanExit, recordStart } from "../metrics/history.js";
import { reapOrphanPoolVms } from "../pod/pool.js";
import { erofsRootfs } from "../pod/rootfs.js";
import { ProvisionalStore, undoProvisionalCreates } from "../state/provisional.js";
import { RecordStore } from "../state/records.js";
import { sweepStaleDiskLinks, sweepStaleVmDirs } from "../state/sweep.js";
import { TaskService, toTimestamp } from "../task/service.js";
import { bindTaskService } from "../task/ttrpc-binding.js";
import { messageCodec } from "../ttrpc/proto.js";
import { TtrpcServer } from "../ttrpc/server.js";
import { serverLogFor } from "../util/guest-log.js";
import { configureLogging } from "../util/log.js";
import { openLogFile } from "../util/log-file.js";
import { chooseHypervisor, diskLinksDir, driverForChoice } from "../vmm/select.js";
import { PodShare } from "../volumes/virtiofs.js";

function arg(name: string): string {
  const i = process.argv.indexOf(`--${name}`);
  const value = i >= 0 ? process.argv[i + 1] : undefined;
  if (!value) throw new Error(`cloudhv shim daemon: missing --${name}`);
  return value;
}

async function main(): Promise<void> {
  const socketPath = arg("socket");
  const containerdTtrpc = arg("containerd-ttrpc");
  const config = await loadConfig();
  // backend/: only the front (root) connects here.
  await mkdir(path.dirname(socketPath), { recursive: true, mode: 0o700 });
  const lockPath = `${socketPath}.lock`;
  if (!takeLock(lockPath)) {
    process.stderr.write(`cloudhv shim daemon: another daemon holds ${lockPath}\n`);
    process.exit(LOCK_HELD_STATUS);
  }
  // Named like the control socket (one daemon per socket); the launcher's stdio file next to
  // the socket gets only what the daemon cannot log (a crash before this point).
  await mkdir(config.log_dir, { recursive: true, mode: 0o750 }).catch((err: Error) => {
    throw new Error(`cannot create log_dir ${config.log_dir} (runtime config): ${err.message}`);
  });
  const logDestination = openLogFile({
    file: path.join(config.log_dir, path.basename(socketPath).replace(/\.sock$/, ".log")),
    maxBytes: config.log_max_bytes,
    files: config.log_files,
  });
  const log = configureLogging({ level: config.log_level, destination: logDestination });
  const idleMs = Number(process.env.CLOUDHV_DAEMON_IDLE_MS ?? 300_000);
  const events = new EventPublisher(containerdTtrpc, log);
  // Chosen once per daemon: `auto` probes KVM by running a guest, too slow for every pod.
  const choice = await chooseHypervisor(config);
  log.info({ hypervisor: choice.name, reason: choice.reason }, "hypervisor chosen");
  const rootfs = erofsRootfs(config);
  const frontControl = frontControlOf(socketPath);
  const front = frontControl ? new FrontLink(frontControl, log) : undefined;
  // Records are this daemon identity's (the socket's name): a daemon restarted after a crash
  // takes over the pods its predecessor left running.
  const records = new RecordStore(
    path.join(config.state_dir, "records"),
    path.basename(socketPath, ".sock"),
    log,
  );
  // Creates in flight, noted for a daemon that starts after this one was killed mid-create.
  const creatingDir = path.join(config.state_dir, "creating");
  const provisional = new ProvisionalStore(creatingDir, path.basename(socketPath, ".sock"), log);
  // Restarts of this daemon identity since its last clean start, for the restart counters: next
  // to its lock in backend/, which the front removes once it is empty.
  const historyFile = socketPath.replace(/\.sock$/, ".starts.json");
  const history = recordStart(historyFile);
  let vmsRunning = () => 0;
  // prom-client costs ~15 MiB and ~50 ms: loaded only when metrics are on.
  const metricsAddress = parseMetricsAddress(config.metrics_address);
  const metrics = metricsAddress
    ? new (await import("../metrics/metrics.js")).DaemonMetrics({ vmsRunning: () => vmsRunning(), history })
    : undefined;
  const tasks = new TaskService({
    ...(metrics ? { metrics } : {}),
    config,
    driver: driverForChoice(config, choice),
    events,
    prepareRootfs: rootfs.prepare,
    adoptRootfs: rootfs.adopt,
    records,
    provisional,
    ...(front ? { stdioKeeper: front } : {}),
    log,
    logDestination,
    version: SHIM_VERSION,
    // `cloudhv doctor` reads the pool's state from here (one file per daemon identity).
    pool: {
      log,
      statusFile: path.join(config.state_dir, "pool", `${path.basename(socketPath, ".sock")}.json`),
    },
  });
  vmsRunning = () => tasks.list().filter((c) => c.member.ownsPod).length;
  if (metrics && tasks.pool) {
    // Scraped state of the warm pool; its refills counted from the pool's own tally.
    let refillsCounted = 0;
    metrics.registerPool(() => {
      const stats = tasks.poolStats();
      if (stats && stats.refilled > refillsCounted) {
        metrics.poolRefilled(stats.refilled - refillsCounted);
        refillsCounted = stats.refilled;
      }
      return { ready: stats?.ready ?? 0, booting: stats?.booting ?? 0, target: stats?.target ?? 0 };
    });
  }
  const metricsServer =
    metricsAddress && metrics
      ? new (await import("../metrics/server.js")).MetricsServer(metricsAddress, metrics, log)
      : undefined;
  const server = new TtrpcServer({ statusOf, log: serverLogFor(log) });
  let idleTimer: NodeJS.Timeout | undefined;
  let exiting = false;
  const exit = async (why: string) => {
    // The front passes SIGTERM on; a second signal must not run the teardown twice.
    if (exiting) return;
    exiting = true;
    log.info({ why }, "shim daemon exiting");
    await server.close();
    // Pool VMs belong to no pod: they go with the daemon.
    await tasks.pool?.close();
    // Its status file went with the pool; the shared dir goes when no other daemon has one there.
    if (tasks.pool) await rmdir(path.join(config.state_dir, "pool")).catch(() => {});
    for (const container of tasks.list()) await tasks.forceDelete(container.namespace, container.id);
    // Deleted pods still leaving their netns (pod/lingering.ts): their TAPs and records go first.
    await tasks.lingering();
    await events.flush(2000);
    events.close();
    await metricsServer?.close();
    recordCleanExit(historyFile);
    rmSync(lockPath, { force: true });
    await logDestination.close();
    process.exit(0);
  };
  // With no task left for a while, the daemon goes away; the next `start` brings it back.
  const armIdle = () => {
    clearTimeout(idleTimer);
    if (tasks.size === 0) idleTimer = setTimeout(() => tasks.size === 0 && void exit("idle"), idleMs);
  };
  bindTaskService(server, tasks, armIdle);
  const deleteCodec = messageCodec("cloudhv.shim.v1.ForceDeleteRequest");
  const deleteResponse = messageCodec("containerd.task.v2.DeleteResponse");
  const listenRequest = messageCodec("cloudhv.shim.v1.ListenRequest");
  const listenResponse = messageCodec("cloudhv.shim.v1.ListenResponse");
  const opening = new Map<string, Promise<void>>();
  server.register("cloudhv.shim.v1.Admin", {
    // Opens the backend socket for a namespace and returns its address; the front relays
    // its own socket for that namespace to it.
    Listen: async (payload) => {
      const { namespace } = listenRequest.decode(payload);
      if (!namespace) throw invalid("Listen: empty namespace");
      const nsSocket = namespaceSocketPath(socketPath, namespace);
      if (!server.isListening(nsSocket)) {
        let open = opening.get(nsSocket);
        if (!open) {
          open = server.listen(nsSocket, { namespace });
          opening.set(nsSocket, open);
        }
        await open;
      }
      return listenResponse.encode({ address: `${SOCKET_SCHEME}${nsSocket}` });
    },
    ForceDelete: async (payload) => {
      const req = deleteCodec.decode(payload);
      const exit = await tasks.forceDelete(req.namespace, req.id);
      armIdle();
      return deleteResponse.encode(exit ?? { pid: 0, exitStatus: 137, exitedAt: toTimestamp(new Date()) });
    },
  });
  const restored = await tasks.restore();
  if (restored > 0) log.info({ tasks: restored }, "took over the tasks of a previous daemon");
  // Creates a killed daemon left in flight (no record; a provisional one): undone before the
  // create containerd sends again arrives, so it finds no scratch file or TAP in its way.
  await undoProvisionalCreates(creatingDir, {
    stateDir: config.state_dir,
    scratchDir: config.scratch_dir,
    recordedVms: await records.allVmIds(),
    recordedScratch: await records.allScratchPaths(),
    undoJoin: (note) => tasks.undoJoin(note),
    stopShare: async (share) => (await PodShare.adopt(share, log)).stop(),
    log,
  });
  // Pool VMs a crashed daemon left are no pod's (no record): stopped before the sweep.
  await reapOrphanPoolVms(path.join(config.state_dir, "vm"), log);
  await sweepStaleVmDirs(path.join(config.state_dir, "vm"), await records.allVmIds(), log);
  await sweepStaleDiskLinks(diskLinksDir(config), path.join(config.state_dir, "vm"), log);
  await server.listen(socketPath);
  log.info({ socket: socketPath, containerd: containerdTtrpc }, "shim daemon serving");
  metricsServer?.listen();
  armIdle();
  if (tasks.pool) {
    await mkdir(path.join(config.state_dir, "pool"), { recursive: true, mode: 0o755 });
    tasks.pool.start();
  }
  process.on("SIGTERM", () => void exit("SIGTERM"));
  process.on("SIGINT", () => void exit("SIGINT"));
  // A bug in one request must not end every pod on the node: log and keep serving.
  process.on("uncaughtException", (err) => log.error({ err }, "uncaught exception"));
  process.on("unhandledRejection", (err) => log.error({ err }, "unhandled rejection"));
}

main().catch((err: unknown) => {
  process.stderr.write(`cloudhv shim daemon: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
