// The bench's fault figures (issue 15), measured on the local harness through CRI:
// - hostileGuest: a normal pod's exec latency on a quiet node vs beside a misbehaving guest
//   (a double: e2e/src/hostile-guest.ts), per kind of misbehaviour, and the ratio;
// - takeover: kill -9 of the shim daemon under N running pods → each pod's first successful
//   exec (the front restarts the daemon, which adopts every pod before it serves);
// - containerdRestart: bytes of a container's output lost across a containerd restart.
import { mkdir, readFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { errorText, type Stat, stat } from "./bench-util.js";
import type { PodSandboxConfig } from "./cri/client.js";
import { HANDLER, type Harness, startHarness } from "./harness.js";
import {
  execLatencies,
  HOSTILE_MODES,
  HOSTILE_QEMU,
  killVmm,
  makeHostile,
  median,
  pressExecs,
  type RunningPod,
  runPod,
} from "./hostile-guest.js";
import { shimProcesses } from "./leaks.js";

type Figure = { ok: boolean; error?: string } & Record<string, unknown>;

const TICKING = ["sh", "-c", "while true; do echo tick; usleep 100000; done"];

async function endPod(h: Harness, pod: { podId: string; id: string }): Promise<void> {
  await h.cri.stopContainer(pod.id, 2).catch(() => {});
  await h.cri.removeContainer(pod.id).catch(() => {});
  await h.cri.stopPodSandbox(pod.podId).catch(() => {});
  await h.cri.removePodSandbox(pod.podId).catch(() => {});
}

/** On a harness of its own (its QEMU is the hostile double, pass-through until switched). */
export async function hostileGuest(image: string, runs: number): Promise<Figure> {
  const h = await startHarness({ images: [image], runtimeConfig: { qemu_binary: HOSTILE_QEMU } });
  try {
    const normal = await runPod(h.cri, h.runtime.stateDir, "normal", image, ["sleep", "3600"]);
    await execLatencies(h.cri, normal.id, 1); // warm-up
    const execs = 5 * runs;
    const quiet = await execLatencies(h.cri, normal.id, execs);
    const result: Figure = {
      ok: true,
      what: "ExecSync `echo` through CRI into a normal pod, one after another: alone (quietMs), then per mode just before the other pod misbehaves (its quietMs) and while it does (ms; ratio = ms / quietMs, medians); the guest is a double; its tenant execs into it once a second (not for silent)",
      execs,
      quietMs: stat(quiet),
    };
    for (const mode of HOSTILE_MODES) {
      const name = mode.split(" ")[0] as string;
      let hostile: RunningPod | undefined;
      try {
        hostile = await runPod(h.cri, h.runtime.stateDir, `hostile-${name}`, image, TICKING);
        // The node's load drifts (other VMs): the baseline for each mode is taken just before
        // it, with the pod already there and still behaving.
        const before = await execLatencies(h.cri, normal.id, execs);
        await makeHostile(hostile, mode);
        const stop = mode === "silent" ? async () => 0 : pressExecs(h.cri, hostile.id);
        const beside = await execLatencies(h.cri, normal.id, execs);
        const tenantExecs = await stop();
        const ratio = median(beside) / median(before);
        result[name] = {
          ok: true,
          mode,
          quietMs: stat(before),
          ms: stat(beside),
          ratio: Math.round(ratio * 100) / 100,
          tenantExecs,
        };
      } catch (err) {
        result[name] = { ok: false, mode, error: errorText(err) };
      } finally {
        if (hostile) {
          await killVmm(hostile);
          await endPod(h, hostile);
        }
      }
    }
    const failedModes = HOSTILE_MODES.map((m) => m.split(" ")[0] as string).filter(
      (n) => !(result[n] as Figure).ok,
    );
    if (failedModes.length) {
      result.ok = false;
      result.error = failedModes.map((n) => `${n}: ${(result[n] as Figure).error}`).join("; ");
    }
    await endPod(h, normal);
    return result;
  } finally {
    await h.stop();
  }
}

async function daemonPid(h: Harness): Promise<number | undefined> {
  return (await shimProcesses(h.containerd.ttrpcAddress)).daemons[0];
}

/** For each N in `levels`: N pods running, kill -9 the daemon, time to each pod's first good exec. */
export async function takeover(h: Harness, image: string, levels: number[]): Promise<Figure> {
  const result: Figure = {
    ok: true,
    what: "kill -9 of the shim daemon under N running pods → first successful ExecSync through CRI on each pod (requests sent at the kill, waiting in the front)",
    levels: [] as unknown[],
  };
  for (const n of levels) {
    const pods: RunningPod[] = [];
    try {
      for (let i = 0; i < n; i++)
        pods.push(await runPod(h.cri, h.runtime.stateDir, `takeover-${n}-${i}`, image, ["sleep", "3600"]));
      const daemon = await daemonPid(h);
      if (!daemon) throw new Error("no shim daemon runs");
      process.kill(daemon, "SIGKILL");
      const killedAt = performance.now();
      const firstOk = await Promise.all(
        pods.map(async (pod) => {
          for (;;) {
            const res = await h.cri.execSync(pod.id, ["echo", "ok"], 60).catch(() => undefined);
            if (res?.exitCode === 0 && res.stdout.trim() === "ok") return performance.now() - killedAt;
            if (performance.now() - killedAt > 120_000)
              throw new Error(`pod ${pod.podId}: no exec within 120 s`);
            await sleep(50);
          }
        }),
      );
      const successor = await daemonPid(h);
      (result.levels as unknown[]).push({
        pods: n,
        firstExecMs: stat(firstOk),
        newDaemon: successor !== undefined && successor !== daemon,
      });
    } catch (err) {
      result.ok = false;
      result.error = `${n} pods: ${errorText(err)}`;
      (result.levels as unknown[]).push({ pods: n, error: errorText(err) });
    } finally {
      for (const pod of pods) await endPod(h, pod);
    }
  }
  return result;
}

/** A container prints a numbered line every 20 ms; containerd restarts; lines missing afterwards. */
export async function containerdRestart(h: Harness, image: string, runs: number): Promise<Figure> {
  const lostBytes: number[] = [];
  const lostLines: number[] = [];
  const duplicated: number[] = [];
  let error: string | undefined;
  for (let run = 0; run < runs && !error; run++) {
    const logDirectory = path.join(h.dir, "pods", `restart-${run}`);
    await mkdir(logDirectory, { recursive: true });
    const config: PodSandboxConfig = {
      metadata: { name: `restart-${run}`, uid: `uid-restart-${run}`, namespace: "default", attempt: 0 },
      hostname: "restart",
      logDirectory,
    };
    let pod: { podId: string; id: string } | undefined;
    try {
      const podId = await h.cri.runPodSandbox(config, HANDLER);
      const id = await h.cri.createContainer(
        podId,
        {
          metadata: { name: "counter" },
          image: { image },
          command: ["sh", "-c", "i=0; while true; do echo line-$i; i=$((i+1)); usleep 20000; done"],
          logPath: "counter.log",
        },
        config,
      );
      pod = { podId, id };
      await h.cri.startContainer(id);
      const numbers = async () =>
        [
          ...(await readFile(path.join(logDirectory, "counter.log"), "utf8").catch(() => "")).matchAll(
            /^\S+ stdout F line-(\d+)$/gm,
          ),
        ].map((m) => Number(m[1]));
      const reach = async (min: number) => {
        const deadline = Date.now() + 90_000;
        for (;;) {
          const seen = await numbers();
          if (seen.length && Math.max(...seen) >= min) return seen;
          if (Date.now() > deadline) throw new Error(`the log did not reach line ${min}`);
          await sleep(200);
        }
      };
      const before = Math.max(...(await reach(10)));
      await h.containerd.restart();
      const seen = await reach(before + 150);
      const last = Math.max(...seen);
      const counts = new Map<number, number>();
      for (const n of seen) counts.set(n, (counts.get(n) ?? 0) + 1);
      let lost = 0;
      let bytes = 0;
      for (let i = 0; i <= last; i++)
        if (!counts.has(i)) {
          lost++;
          bytes += `line-${i}\n`.length;
        }
      lostLines.push(lost);
      lostBytes.push(bytes);
      duplicated.push([...counts.values()].filter((c) => c > 1).length);
    } catch (err) {
      error = errorText(err);
    } finally {
      if (pod) await endPod(h, pod);
    }
  }
  return {
    ok: !error,
    ...(error ? { error } : {}),
    what: "a container prints `line-N` every 20 ms to its CRI log; containerd is stopped and started again; lines missing from the log afterwards (goal 0)",
    lostBytes: stat(lostBytes) as Stat | null,
    lostLines: stat(lostLines),
    duplicatedLines: stat(duplicated),
  };
}
