// `cloudhv doctor`: checks that this node can run cloudhv pods and says, for each problem,
// how to fix it. Every check really tries what it can (KVM runs a probe guest; the runtime
// config is parsed with the daemon's own schema; containerd's merged config is dumped).
import { access, constants, open, readdir, readFile, stat, statfs } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parse as parseToml } from "smol-toml";
import { ConfigError, DEFAULT_CONFIG_PATH, loadConfig, parseConfig, type RuntimeConfig } from "./config.js";
import { exec } from "./util/exec.js";
import { probeAccel } from "./vmm/accel.js";
import { CH_MIN_VERSION } from "./vmm/ch-api.js";
import { decideHypervisor, findExecutable, hypervisorDevices } from "./vmm/select.js";

export type Status = "pass" | "warn" | "fail" | "info";

export interface Check {
  id: string;
  title: string;
  status: Status;
  detail: string;
  fix?: string;
}

export interface DoctorOptions {
  config?: string;
  containerdConfig?: string;
}

const RUNTIME_TYPE = "io.containerd.cloudhv.v1";
const HANDLER = "cloudhv";
const SHIM_BINARY = "containerd-shim-cloudhv-v1";
const EROFS_MAGIC = 0xe0f5e1e2;
const EROFS_MAGIC_OFFSET = 1024;
const CGROUP2_MAGIC = 0x63677270;

/** Host tools the shim spawns, and the Debian package that has each. */
const TOOLS: Array<[tool: string, pkg: string, why: string]> = [
  ["ip", "iproute2", "a pool VM's TAP at its boot; removing what a daemon killed mid-create left"],
  ["tc", "iproute2", "removing the redirect a daemon killed mid-create left"],
  ["nsenter", "util-linux", "starting the VMM in the pod netns"],
  ["mkfs.erofs", "erofs-utils", "container images as erofs disks"],
  ["mkfs.ext4", "e2fsprogs", "per-container scratch disks"],
  ["setpriv", "util-linux", "drops each VMM's uid, capabilities and privileges"],
  ["unshare", "util-linux", "each pod's mount namespace for its volumes"],
  ["taskset", "util-linux", "binding a pod's mount namespace on Linux ≥ 6.18 (per-CPU namespace numbers)"],
];

/** Root's tools live in sbin; a doctor run from a user shell may not have it on PATH. */
function toolPath(): string {
  const dirs = (process.env.PATH ?? "").split(":").filter(Boolean);
  for (const d of ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
    if (!dirs.includes(d)) dirs.push(d);
  return dirs.join(":");
}

async function findTool(name: string): Promise<string | undefined> {
  const saved = process.env.PATH;
  process.env.PATH = toolPath();
  try {
    return await findExecutable(name);
  } finally {
    process.env.PATH = saved;
  }
}

async function firstLine(argv: string[]): Promise<string | undefined> {
  try {
    const r = await exec(argv, { timeoutMs: 3000 });
    if (r.code !== 0) return undefined;
    return (r.stdout || r.stderr).trim().split("\n")[0];
  } catch {
    return undefined;
  }
}

async function readBytes(file: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(file, "r");
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, offset);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

async function checkConfig(opts: DoctorOptions): Promise<{ check: Check; config: RuntimeConfig }> {
  const file = opts.config ?? process.env.CLOUDHV_CONFIG ?? DEFAULT_CONFIG_PATH;
  const title = "runtime config";
  try {
    const config = await loadConfig(opts.config);
    const exists = await stat(file).then(
      () => true,
      () => false,
    );
    return {
      config,
      check: {
        id: "config",
        title,
        status: "pass",
        detail: exists ? `${file} is valid` : `${file} does not exist: all defaults`,
      },
    };
  } catch (err) {
    const message = err instanceof ConfigError ? err.message : String(err);
    return {
      config: parseConfig({}, "(defaults)"),
      check: {
        id: "config",
        title,
        status: "fail",
        detail: `${message} (the checks below use the defaults)`,
        fix: `correct ${file}: the keys and their ranges are in docs/configuration.md`,
      },
    };
  }
}

async function checkKernel(config: RuntimeConfig): Promise<Check> {
  const file = config.kernel_path;
  const base = { id: "kernel", title: "guest kernel" } as const;
  const fix = `install the guest with cloudhv-installer, build it with guest/kernel/build-kernel.sh, or set kernel_path`;
  try {
    await access(file, constants.R_OK);
    const { size } = await stat(file);
    const head = await readBytes(file, 0, 4);
    if (!head.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46])))
      return {
        ...base,
        status: "warn",
        detail: `${file} is not an ELF vmlinux (Cloud Hypervisor boots a PVH vmlinux)`,
        fix,
      };
    return { ...base, status: "pass", detail: `${file} (ELF vmlinux, ${(size / 2 ** 20).toFixed(1)} MiB)` };
  } catch (err) {
    return { ...base, status: "fail", detail: `${file}: ${(err as NodeJS.ErrnoException).code ?? err}`, fix };
  }
}

async function checkRootfs(config: RuntimeConfig): Promise<Check> {
  const file = config.rootfs_path;
  const base = { id: "rootfs", title: "guest rootfs" } as const;
  const fix =
    "install the guest with cloudhv-installer, build it with guest/rootfs (scripts/dev.sh setup), or set rootfs_path";
  try {
    const magic = await readBytes(file, EROFS_MAGIC_OFFSET, 4);
    if (magic.length < 4 || magic.readUInt32LE(0) !== EROFS_MAGIC)
      return {
        ...base,
        status: "fail",
        detail: `${file} is not an erofs image (no magic 0x${EROFS_MAGIC.toString(16)} at offset ${EROFS_MAGIC_OFFSET})`,
        fix,
      };
    const { size } = await stat(file);
    return { ...base, status: "pass", detail: `${file} (erofs, ${(size / 2 ** 20).toFixed(1)} MiB)` };
  } catch (err) {
    return { ...base, status: "fail", detail: `${file}: ${(err as NodeJS.ErrnoException).code ?? err}`, fix };
  }
}

interface ContainerdFacts {
  containerd: string | undefined;
  version: string | undefined;
  /** The config containerd runs with, and where it came from. */
  config: Record<string, unknown> | undefined;
  source: string;
  /** The file itself, when it parses (to explain a handler containerd does not see). */
  file: Record<string, unknown> | undefined;
  error?: string;
}

async function containerdFacts(opts: DoctorOptions): Promise<ContainerdFacts> {
  const containerd = await findTool("containerd");
  const file = opts.containerdConfig ?? "/etc/containerd/config.toml";
  const version = containerd ? await firstLine([containerd, "--version"]) : undefined;
  const attempts: string[] = [];
  let fileConfig: Record<string, unknown> | undefined;
  try {
    fileConfig = parseToml(await readFile(file, "utf8"));
  } catch (err) {
    attempts.push(`${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (containerd) {
    // `config dump` merges imports and drop-ins: the config containerd really runs with.
    const r = await exec(
      [containerd, ...(opts.containerdConfig ? ["--config", opts.containerdConfig] : []), "config", "dump"],
      { timeoutMs: 3000 },
    ).catch((err: Error) => ({ code: -1, stdout: "", stderr: err.message }));
    if (r.code === 0) {
      try {
        return {
          containerd,
          version,
          config: parseToml(r.stdout),
          source: `containerd config dump (${file})`,
          file: fileConfig,
        };
      } catch (err) {
        attempts.push(`config dump is not TOML: ${(err as Error).message}`);
      }
    } else attempts.push(`containerd config dump failed: ${r.stderr.trim().split("\n").at(-1)}`);
  }
  if (fileConfig) return { containerd, version, config: fileConfig, source: file, file: fileConfig };
  return {
    containerd,
    version,
    config: undefined,
    source: file,
    file: undefined,
    error: attempts.join("; "),
  };
}

function dig(doc: unknown, keys: string[]): unknown {
  let cur = doc;
  for (const k of keys) {
    if (typeof cur !== "object" || cur === null) return undefined;
    cur = (cur as Record<string, unknown>)[k];
  }
  return cur;
}

/** Where each containerd config version keeps CRI runtimes. */
const RUNTIME_TABLES: Array<{ version: string; keys: string[] }> = [
  { version: "3", keys: ["plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes"] },
  { version: "2", keys: ["plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes"] },
  { version: "1", keys: ["plugins", "cri", "containerd", "runtimes"] },
];

function findRuntime(
  config: Record<string, unknown>,
): { table: string; entry: Record<string, unknown> } | undefined {
  for (const t of RUNTIME_TABLES) {
    const entry = dig(config, [...t.keys, HANDLER]);
    if (entry && typeof entry === "object")
      return {
        table: `${t.keys.map((k) => (k.includes(".") ? `"${k}"` : k)).join(".")}.${HANDLER}`,
        entry: entry as Record<string, unknown>,
      };
  }
  return undefined;
}

function checkContainerd(facts: ContainerdFacts): Check[] {
  const out: Check[] = [];
  out.push(
    facts.containerd
      ? {
          id: "containerd",
          title: "containerd",
          status: "pass",
          detail: facts.version ?? `${facts.containerd} (version unknown)`,
        }
      : {
          id: "containerd",
          title: "containerd",
          status: "fail",
          detail: "containerd not found on PATH",
          fix: "apt-get install containerd (or your distribution's containerd ≥ 1.6)",
        },
  );
  const configVersion = facts.config ? String(facts.config.version ?? "1") : "?";
  const table = (configVersion === "3" ? RUNTIME_TABLES[0] : RUNTIME_TABLES[1])?.keys ?? [];
  const example = `[${table.map((k) => (k.includes(".") ? `"${k}"` : k)).join(".")}.${HANDLER}] runtime_type = "${RUNTIME_TYPE}"`;
  if (!facts.config) {
    out.push({
      id: "cri-runtime",
      title: `CRI runtime handler "${HANDLER}"`,
      status: "fail",
      detail: `cannot read containerd's config: ${facts.error ?? "unknown error"}`,
      fix: `run cloudhv-installer install, or create ${facts.source} with ${example}`,
    });
    return out;
  }
  const found = findRuntime(facts.config);
  const inFile = !found && facts.file ? findRuntime(facts.file) : undefined;
  if (inFile) {
    out.push({
      id: "cri-runtime",
      title: `CRI runtime handler "${HANDLER}"`,
      status: "fail",
      detail: `the file has ${inFile.table}, but ${facts.version ?? "containerd"} does not see it (it runs with config version ${configVersion})`,
      fix: `register it in the table this containerd reads: ${example}`,
    });
    return out;
  }
  if (!found) {
    out.push({
      id: "cri-runtime",
      title: `CRI runtime handler "${HANDLER}"`,
      status: "fail",
      detail: `not registered in ${facts.source} (config version ${configVersion})`,
      fix: `run cloudhv-installer install, or add ${example} and restart containerd`,
    });
    return out;
  }
  const type = found.entry.runtime_type;
  out.push(
    type === RUNTIME_TYPE
      ? {
          id: "cri-runtime",
          title: `CRI runtime handler "${HANDLER}"`,
          status: "pass",
          detail: `${found.table}: runtime_type = "${RUNTIME_TYPE}" (${facts.source})`,
        }
      : {
          id: "cri-runtime",
          title: `CRI runtime handler "${HANDLER}"`,
          status: "fail",
          detail: `${found.table} has runtime_type = ${JSON.stringify(type)}, not "${RUNTIME_TYPE}"`,
          fix: `set runtime_type = "${RUNTIME_TYPE}" there and restart containerd`,
        },
  );
  return out;
}

async function checkShimBinary(facts: ContainerdFacts): Promise<Check> {
  const runtimePath = facts.config ? findRuntime(facts.config)?.entry.runtime_path : undefined;
  const wanted = typeof runtimePath === "string" && runtimePath ? runtimePath : SHIM_BINARY;
  const found = await findTool(wanted);
  return found
    ? { id: "shim", title: "shim binary", status: "pass", detail: found }
    : {
        id: "shim",
        title: "shim binary",
        status: "warn",
        detail: `${wanted} not found${wanted === SHIM_BINARY ? " on PATH" : ""}: containerd could not start the runtime`,
        fix: `install it with cloudhv-installer (or link /opt/cloudhv/bin/${SHIM_BINARY} into /usr/local/bin)`,
      };
}

async function checkCgroup(): Promise<Check> {
  const base = { id: "cgroup", title: "cgroup mode" } as const;
  try {
    const { type } = await statfs("/sys/fs/cgroup");
    if (type === CGROUP2_MAGIC) return { ...base, status: "info", detail: "v2 (unified hierarchy)" };
    const hybrid = await stat("/sys/fs/cgroup/unified").then(
      () => true,
      () => false,
    );
    return {
      ...base,
      status: "info",
      detail: hybrid ? "v1 (hybrid: v1 controllers, v2 at /sys/fs/cgroup/unified)" : "v1 (legacy)",
    };
  } catch (err) {
    return { ...base, status: "warn", detail: `/sys/fs/cgroup: ${(err as Error).message}` };
  }
}

export async function doctor(opts: DoctorOptions): Promise<Check[]> {
  const { check: configCheck, config } = await checkConfig(opts);
  const [devices, chBinary, qemuBinary, virtiofsd, netHelper, facts, kernel, rootfs, cgroup, tools] =
    await Promise.all([
      hypervisorDevices(),
      findExecutable(config.cloud_hypervisor_binary),
      findExecutable(config.qemu_binary),
      findExecutable(config.virtiofsd_binary),
      findExecutable(config.net_helper_binary),
      containerdFacts(opts),
      checkKernel(config),
      checkRootfs(config),
      checkCgroup(),
      Promise.all(TOOLS.map(async ([tool, pkg, why]) => ({ tool, pkg, why, found: await findTool(tool) }))),
    ]);
  const [kvmProbe, qemuVersion, chVersion, virtiofsdVersion, shim] = await Promise.all([
    qemuBinary && devices.kvm ? probeAccel(qemuBinary) : Promise.resolve(undefined),
    qemuBinary ? firstLine([qemuBinary, "--version"]) : Promise.resolve(undefined),
    chBinary ? firstLine([chBinary, "--version"]) : Promise.resolve(undefined),
    virtiofsd ? firstLine([virtiofsd, "--version"]) : Promise.resolve(undefined),
    checkShimBinary(facts),
  ]);
  const choice = decideHypervisor(config, { devices, cloudHypervisor: chBinary, qemu: qemuBinary, kvmProbe });
  const chNeeded = choice.name === "cloud-hypervisor";
  const checks: Check[] = [configCheck];

  // KVM: really run a guest (QEMU's probe), /dev/kvm can exist and still not work (nested).
  const kvmFix =
    "enable VT-x/AMD-V in the firmware and load kvm_intel/kvm_amd; inside a VM, enable nested virtualisation on its host";
  // KVM is needed by Cloud Hypervisor (unless MSHV) and by QEMU unless the config opted into TCG.
  const kvmNeeded = (chNeeded && !devices.mshv) || (choice.name === "qemu" && choice.accel === "kvm");
  const noHv = kvmNeeded ? "fail" : "warn";
  if (!devices.kvm)
    checks.push({ id: "kvm", title: "KVM", status: noHv, detail: "/dev/kvm is absent", fix: kvmFix });
  else if (!kvmProbe)
    checks.push({
      id: "kvm",
      title: "KVM",
      status: "info",
      detail: `/dev/kvm is present; not probed (the probe runs a guest with ${config.qemu_binary}, which is not installed)`,
    });
  else if (kvmProbe.accel === "kvm")
    checks.push({
      id: "kvm",
      title: "KVM",
      status: "pass",
      detail: `/dev/kvm is usable (${kvmProbe.reason})`,
    });
  else
    checks.push({
      id: "kvm",
      title: "KVM",
      status: noHv,
      detail: kvmProbe.reason.startsWith("/dev/kvm") ? kvmProbe.reason : `not used: ${kvmProbe.reason}`,
      fix: kvmFix,
    });

  checks.push(
    devices.mshv
      ? {
          id: "mshv",
          title: "MSHV",
          status: "pass",
          detail: "/dev/mshv is present (Microsoft Hypervisor root partition)",
        }
      : {
          id: "mshv",
          title: "MSHV",
          status: "info",
          detail: "/dev/mshv is absent (only on a Microsoft Hypervisor root partition)",
        },
  );

  const tcg = choice.name === "qemu" && choice.accel === "tcg";
  const chMissing = chNeeded && (!chBinary || (!devices.kvm && !devices.mshv));
  checks.push({
    id: "hypervisor",
    title: "hypervisor in use",
    status: chMissing || choice.broken ? "fail" : tcg ? "warn" : "pass",
    detail: `${choice.name}: ${choice.reason}`,
    ...(tcg
      ? {
          fix: `pods run slowly and TCG is not a security boundary; make KVM work (see "KVM") and remove "qemu_accel": "tcg"`,
        }
      : choice.broken
        ? {
            fix: `make KVM work (see "KVM"), or set "qemu_accel": "tcg" for software emulation (not a security boundary)`,
          }
        : {}),
  });

  checks.push(
    qemuBinary
      ? {
          id: "qemu",
          title: "QEMU",
          status: "pass",
          detail: `${qemuVersion ?? "version unknown"} (${qemuBinary})`,
        }
      : {
          id: "qemu",
          title: "QEMU",
          status: chNeeded ? "info" : "fail",
          detail: `${config.qemu_binary} not found`,
          fix: "apt-get install qemu-system-x86 (or set qemu_binary)",
        },
  );

  if (chBinary) {
    const major = Number(/v?(\d+)\./.exec(chVersion ?? "")?.[1] ?? Number.NaN);
    const old = Number.isFinite(major) && major < CH_MIN_VERSION;
    checks.push({
      id: "cloud-hypervisor",
      title: "Cloud Hypervisor",
      status: old ? "warn" : "pass",
      detail: `${chVersion ?? "version unknown"} (${chBinary})${old ? `: older than v${CH_MIN_VERSION}` : ""}`,
      ...(old
        ? {
            fix: `install Cloud Hypervisor v${CH_MIN_VERSION} or newer (v53 is what cloudhv is tested against)`,
          }
        : {}),
    });
  } else
    checks.push({
      id: "cloud-hypervisor",
      title: "Cloud Hypervisor",
      status: config.hypervisor === "cloud-hypervisor" ? "fail" : "info",
      detail: `${config.cloud_hypervisor_binary} not found${config.hypervisor === "cloud-hypervisor" ? "" : " (QEMU is used instead)"}`,
      fix: "install the cloud-hypervisor static binary (a release from its GitHub project) at cloud_hypervisor_binary",
    });

  // Only pods with shared volumes need it, so a missing one warns.
  checks.push(
    virtiofsd
      ? {
          id: "virtiofsd",
          title: "virtiofsd",
          status: "pass",
          detail: `${virtiofsdVersion ?? "version unknown"} (${virtiofsd}): shared volumes`,
        }
      : {
          id: "virtiofsd",
          title: "virtiofsd",
          status: "warn",
          detail: `${config.virtiofsd_binary} not found: pods with hostPath, PVC or disk-backed emptyDir volumes fail`,
          fix: "build virtiofsd (host/virtiofsd/build.sh: crates.io, needs libseccomp and libcap-ng) and install it at virtiofsd_binary",
        },
  );
  // Every pod with a network (every CRI pod) needs it.
  checks.push(
    netHelper
      ? {
          id: "net-helper",
          title: "cloudhv-net",
          status: "pass",
          detail: `${netHelper}: pod networks (TAPs, redirects, anti-spoof filters) by netlink`,
        }
      : {
          id: "net-helper",
          title: "cloudhv-net",
          status: "fail",
          detail: `${config.net_helper_binary} not found: pods with a network (every CRI pod) fail to start`,
          fix: "reinstall cloudhv (its bundle ships bin/cloudhv-net), or build it (guest/agent/build.sh) and set net_helper_binary",
        },
  );
  checks.push(kernel, rootfs, ...checkContainerd(facts), shim);
  for (const t of tools)
    checks.push(
      t.found
        ? { id: `tool:${t.tool}`, title: t.tool, status: "pass", detail: `${t.found} (${t.why})` }
        : {
            id: `tool:${t.tool}`,
            title: t.tool,
            status: "fail",
            detail: `not found (needed for ${t.why})`,
            fix: `apt-get install ${t.pkg}`,
          },
    );
  checks.push({
    id: "tool:crun",
    title: "crun",
    status: "info",
    detail: "not needed on the host: containers run under crun inside the guest",
  });
  checks.push(cgroup);
  checks.push(...(await checkPool(config)));
  return checks;
}

/** The warm pool as each running daemon last wrote it (<state_dir>/pool/<daemon>.json). */
export async function checkPool(config: RuntimeConfig): Promise<Check[]> {
  if (config.pool === 0)
    return [
      {
        id: "pool",
        title: "warm pool",
        status: "info",
        detail: "off (config pool: 0): every pod boots its VM",
      },
    ];
  const dir = path.join(config.state_dir, "pool");
  const checks: Check[] = [];
  for (const name of (await readdir(dir).catch(() => [] as string[])).filter((n) => n.endsWith(".json"))) {
    const doc = await readFile(path.join(dir, name), "utf8")
      .then((t) => JSON.parse(t) as Record<string, unknown>)
      .catch(() => undefined);
    if (!doc) continue;
    const n = (k: string) => (typeof doc[k] === "number" ? (doc[k] as number) : 0);
    // A daemon that died without closing its pool left its file: not a pool any more.
    if (
      !Number.isInteger(n("pid")) ||
      n("pid") <= 0 ||
      !(await stat(`/proc/${n("pid")}`).catch(() => undefined))
    )
      continue;
    const mib = Math.round(n("idleRssBytes") / 1024 ** 2);
    checks.push({
      id: `pool:${name.replace(/\.json$/, "")}`.slice(0, 80),
      title: "warm pool",
      status: n("ready") === 0 && n("refillFailures") > 0 ? "warn" : "pass",
      detail:
        `daemon ${n("pid")}: ${n("ready")}/${n("target")} ready, ${n("booting")} booting, ${n("claimed")} claimed, ` +
        `${n("coldBoots")} cold boots, ${n("claimFailures")} failed claims, ${n("refillFailures")} failed refills, ` +
        `idle VMs ${mib} MiB resident`,
      fix: "see the daemon log (pool VM failed to boot) in log_dir",
    });
  }
  if (checks.length === 0)
    checks.push({
      id: "pool",
      title: "warm pool",
      status: "info",
      detail: `${config.pool} VMs per daemon (config pool); no daemon runs now`,
    });
  return checks;
}

const LABEL: Record<Status, string> = { pass: "PASS", warn: "WARN", fail: "FAIL", info: "INFO" };

export function render(checks: Check[]): string {
  const width = Math.max(...checks.map((c) => c.title.length));
  const lines = [`cloudhv doctor on ${os.hostname()}`, ""];
  for (const c of checks) {
    lines.push(`  ${LABEL[c.status]}  ${c.title.padEnd(width)}  ${c.detail}`);
    if (c.fix && c.status !== "pass" && c.status !== "info")
      lines.push(`  ${" ".repeat(4)}  ${" ".repeat(width)}  fix: ${c.fix}`);
  }
  const count = (s: Status) => checks.filter((c) => c.status === s).length;
  lines.push("", `${count("fail")} failed, ${count("warn")} warnings, ${count("pass")} passed`);
  return `${lines.join("\n")}\n`;
}
