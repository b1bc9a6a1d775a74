// A private containerd for tests and the local harness: its own root, state and sockets under
// one directory, started from Debian's containerd binary and stopped without a trace.
import { type ChildProcess, spawn } from "node:child_process";
import { createWriteStream } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { execOk, TIMED_OUT, within } from "@cloudhv/shim";

export interface ContainerdOptions {
  /** Parent of the instance directory; must be short (unix socket paths < 108 bytes). */
  baseDir?: string;
  /** Extra TOML appended to the generated config (version 2 format). */
  extraConfig?: string;
  binary?: string;
  /** Environment for containerd and so for the shims it starts (PATH, CLOUDHV_CONFIG). */
  env?: NodeJS.ProcessEnv;
  /**
   * Start from this config file as it is (read again on every restart) instead of a generated
   * one; `extraConfig` is then ignored. Its root, state and sockets must point somewhere
   * private, and `address` must name its `[grpc] address`.
   */
  configFile?: string;
  /** The gRPC socket `configFile` sets; required with it. */
  address?: string;
}

export class PrivateContainerd implements AsyncDisposable {
  private constructor(
    readonly dir: string,
    readonly address: string,
    readonly configPath: string,
    readonly logPath: string,
    private child: ChildProcess,
    private readonly launch: () => ChildProcess,
  ) {}

  /** Stops containerd and starts it again on the same state, as a node's restart would. */
  async restart(): Promise<void> {
    await this.terminate();
    this.child = this.launch();
    await this.waitReady();
  }

  /** containerd's ttrpc socket, where shims publish events. */
  get ttrpcAddress(): string {
    return `${this.address}.ttrpc`;
  }

  static async start(opts: ContainerdOptions = {}): Promise<PrivateContainerd> {
    const base = opts.baseDir ?? "/run";
    await mkdir(base, { recursive: true });
    if (opts.configFile && !opts.address) throw new Error("PrivateContainerd: configFile needs address");
    const dir = await mkdtemp(path.join(base, "ctrd-"));
    const address = opts.configFile && opts.address ? opts.address : path.join(dir, "c.sock");
    const configPath = opts.configFile ?? path.join(dir, "config.toml");
    const logPath = path.join(dir, "containerd.log");
    if (!opts.configFile)
      await writeFile(
        configPath,
        [
          "version = 2",
          `root = "${dir}/root"`,
          `state = "${dir}/state"`,
          `[grpc]`,
          `  address = "${address}"`,
          `[ttrpc]`,
          `  address = "${address}.ttrpc"`,
          opts.extraConfig ?? "",
        ].join("\n"),
      );
    const launch = () => {
      const out = createWriteStream(logPath, { flags: "a" });
      const child = spawn(opts.binary ?? "containerd", ["--config", configPath, "--log-level", "debug"], {
        stdio: ["ignore", "pipe", "pipe"],
        env: opts.env ?? process.env,
      });
      child.stdout?.pipe(out);
      child.stderr?.pipe(out);
      return child;
    };
    const instance = new PrivateContainerd(dir, address, configPath, logPath, launch(), launch);
    try {
      await instance.waitReady();
    } catch (err) {
      await instance.stop();
      throw err;
    }
    return instance;
  }

  /** Runs `ctr` against this containerd. */
  ctr(args: readonly string[], opts: { timeoutMs?: number; input?: string } = {}) {
    return execOk(["ctr", "--address", this.address, ...args], opts);
  }

  async stop(): Promise<void> {
    await this.terminate();
    // containerd leaves its snapshot mounts; unmount anything under our dir before removing it.
    for (const mountPoint of await mountsUnder(this.dir)) await execOk(["umount", "-l", mountPoint]);
    await rm(this.dir, { recursive: true, force: true });
  }

  private async terminate(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((resolve) => this.child.once("exit", resolve));
    this.child.kill("SIGTERM");
    if ((await within(exited, 10_000)) === TIMED_OUT) {
      this.child.kill("SIGKILL");
      await exited;
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }

  private async waitReady(): Promise<void> {
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (this.child.exitCode !== null)
        throw new Error(`containerd exited with ${this.child.exitCode}; see ${this.logPath}`);
      try {
        await stat(this.address);
        await this.ctr(["version"], { timeoutMs: 5000 });
        return;
      } catch {
        if (Date.now() > deadline)
          throw new Error(`containerd did not become ready in 20 s; see ${this.logPath}`);
        await sleep(50);
      }
    }
  }
}

/** Mount points at or below `dir`, deepest first (mountinfo field 5). */
export async function mountsUnder(dir: string): Promise<string[]> {
  const mountinfo = await readFile("/proc/self/mountinfo", "utf8");
  return mountinfo
    .split("\n")
    .map((line) => line.split(" ")[4] ?? "")
    .filter((mountPoint) => mountPoint === dir || mountPoint.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
}
