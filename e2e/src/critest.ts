// Upstream CRI conformance (critest from sigs.k8s.io/cri-tools) against the local harness: the
// images critest pulls are busybox-based OCI archives built here and pushed with crane into a
// registry on 127.0.0.1; containerd's registry mirrors send registry.k8s.io, gcr.io and
// k8s.gcr.io there over plain HTTP. (critest's --registry-prefix cannot be used: v1.37.0 drops
// the tag when it re-prefixes a name, so every image would be pulled as :latest.) One run per
// runtime handler, same containerd.
import { spawn } from "node:child_process";
import { createWriteStream } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { exec, execOk, TIMED_OUT, within } from "@cloudhv/shim";
import { REPO_ROOT } from "./artifacts.js";
import { type Harness, startHarness } from "./harness.js";
import { BUSYBOX_APPLETS, buildBusyboxImage, type ImageConfig } from "./oci-image.js";

export const BUILD_SCRIPT = path.join(REPO_ROOT, "e2e/critest/build-critest.sh");

export interface CritestTools {
  critest: string;
  crane: string;
}

/** The cached critest and crane, or why there are none (build-critest.sh --check). */
export async function critestTools(): Promise<CritestTools | { missing: string }> {
  const r = await exec([BUILD_SCRIPT, "--check"], { timeoutMs: 60_000 });
  const [critest, crane] = r.stdout.trim().split("\n");
  if (r.code !== 0 || !critest || !crane)
    return { missing: r.stderr.trim() || `${BUILD_SCRIPT} --check exited ${r.code}` };
  return { critest, crane };
}

/**
 * Specs that cannot run on this machine with either handler, dropped with -ginkgo.skip.
 * (AppArmor and SELinux specs skip themselves when the host has neither; NRI ones without
 * --nri-socket.)
 */
export const NOT_RUNNABLE_HERE: ReadonlyArray<{ pattern: string; reason: string }> = [
  {
    pattern: "image with digest",
    reason: "pins a digest of an upstream image on gcr.io; an image built here cannot have that digest",
  },
  {
    pattern: "port mapping with host port",
    reason:
      "the harness's CNI network has no portmap plugin, so host ports are not mapped: runc fails it too, after 60 s per handler",
  },
];

// ---- images --------------------------------------------------------------------------------

interface TestImage {
  /** Repository path under the registry prefix (what critest asks for without its registry). */
  repo: string;
  tags: readonly string[];
  config?: ImageConfig;
}

const web = (name: string, port: number): ImageConfig => ({
  // The name first: the multi-container spec waits for "httpd" in the httpd container's log.
  // The PID file is nginx's: the namespace specs read /var/run/nginx.pid (exec keeps the PID).
  entrypoint: [
    "/bin/sh",
    "-c",
    `echo ${name} serving on port ${port}; mkdir -p /var/run; echo $$ >/var/run/nginx.pid; exec httpd -f -v -p ${port} -h /www`,
  ],
});

/** Every image critest v1.37.0 pulls on Linux (pkg/validate/consts*.go), by path in its registry. */
export const TEST_IMAGES: readonly TestImage[] = [
  { repo: "e2e-test-images/busybox", tags: ["1.29-2"] },
  { repo: "e2e-test-images/nginx", tags: ["1.14-2"], config: web("nginx", 80) },
  { repo: "e2e-test-images/httpd", tags: ["2.4.39-4"], config: web("httpd", 80) },
  { repo: "e2e-test-images/nonewprivs", tags: ["1.3"] },
  { repo: "k8s-staging-cri-tools/hostnet-nginx-amd64", tags: ["latest"], config: web("nginx", 12003) },
  {
    repo: "k8s-staging-cri-tools/test-image-user-uid",
    tags: ["latest"],
    config: { cmd: ["/bin/sh"], user: "1002" },
  },
  {
    repo: "k8s-staging-cri-tools/test-image-user-username",
    tags: ["latest"],
    config: { cmd: ["/bin/sh"], user: "www-data" },
  },
  {
    repo: "k8s-staging-cri-tools/test-image-user-uid-group",
    tags: ["latest"],
    config: { cmd: ["/bin/sh"], user: "1003:users" },
  },
  {
    repo: "k8s-staging-cri-tools/test-image-user-username-group",
    tags: ["latest"],
    config: { cmd: ["/bin/sh"], user: "www-data:users" },
  },
  {
    repo: "k8s-staging-cri-tools/test-image-predefined-group",
    tags: ["latest"],
    config: { cmd: ["/bin/sh"], user: "1000" },
  },
  { repo: "k8s-staging-cri-tools/test-image-latest", tags: ["latest"] },
  { repo: "k8s-staging-cri-tools/test-image-tag", tags: ["test", "all"] },
  { repo: "k8s-staging-cri-tools/test-image-1", tags: ["latest"] },
  { repo: "k8s-staging-cri-tools/test-image-2", tags: ["latest"] },
  { repo: "k8s-staging-cri-tools/test-image-3", tags: ["latest"] },
  // One image under three tags (the "same image, different tags" specs).
  { repo: "k8s-staging-cri-tools/test-image-tags", tags: ["1", "2", "3"] },
  { repo: "pause", tags: ["3.9"], config: { entrypoint: ["/bin/sleep", "2147483647"] } },
];

/**
 * One layer on top of the busybox root: every applet of the host's busybox (critest's specs use
 * more than the harness's set), a page for the web servers, and the users and groups the user
 * images name (www-data 33, default-user 1000 in group 50000, as upstream's images have).
 */
async function stageExtras(dir: string): Promise<void> {
  const listed = (await execOk(["/bin/busybox", "--list"])).stdout.split("\n").filter(Boolean);
  const have = new Set<string>(BUSYBOX_APPLETS);
  await mkdir(path.join(dir, "bin"), { recursive: true });
  for (const applet of listed) {
    if (have.has(applet) || applet.includes("/") || applet === "busybox") continue;
    await symlink("busybox", path.join(dir, "bin", applet));
  }
  await mkdir(path.join(dir, "www"), { recursive: true });
  await writeFile(path.join(dir, "www", "index.html"), "<h1>cloudhv critest web server</h1>\n");
  await mkdir(path.join(dir, "etc"), { recursive: true });
  await writeFile(
    path.join(dir, "etc", "passwd"),
    [
      "root:x:0:0:root:/root:/bin/sh",
      "www-data:x:33:33:www-data:/var/www:/bin/false",
      "default-user:x:1000:1000:default-user:/home/default-user:/bin/sh",
      "nobody:x:65534:65534:nobody:/nonexistent:/bin/false",
      "",
    ].join("\n"),
  );
  await writeFile(
    path.join(dir, "etc", "group"),
    [
      "root:x:0:",
      "www-data:x:33:",
      "users:x:100:",
      "default-user:x:1000:",
      "group-defined-in-image:x:50000:default-user",
      "nogroup:x:65534:",
      "",
    ].join("\n"),
  );
}

// ---- registry ------------------------------------------------------------------------------

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (!address || typeof address === "string") throw new Error("could not pick a free TCP port");
  return address.port;
}

/** `crane registry serve` on 127.0.0.1 (blobs in memory), stopped by the returned function. */
async function startRegistry(
  crane: string,
  logPath: string,
): Promise<{ host: string; stop(): Promise<void> }> {
  const port = await freePort();
  const host = `127.0.0.1:${port}`;
  const log = createWriteStream(logPath, { flags: "a" });
  const child = spawn(crane, ["registry", "serve", "--address", host], { stdio: ["ignore", "pipe", "pipe"] });
  child.stdout?.pipe(log);
  child.stderr?.pipe(log);
  const exited = new Promise((resolve) => child.once("exit", resolve));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      if ((await within(exited, 5000)) === TIMED_OUT) child.kill("SIGKILL");
    }
    await exited;
  };
  const deadline = Date.now() + 20_000;
  for (;;) {
    const r = await exec(["curl", "-sf", "-o", "/dev/null", `http://${host}/v2/`], { timeoutMs: 5000 });
    if (r.code === 0) return { host, stop };
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`crane registry on ${host} did not answer /v2/ in 20 s; see ${logPath}`);
    }
    await sleep(100);
  }
}

async function pushImages(crane: string, registry: string, work: string): Promise<void> {
  const extras = path.join(work, "extras");
  await stageExtras(extras);
  for (const image of TEST_IMAGES) {
    const archive = path.join(work, "image.tar");
    const layout = path.join(work, "layout");
    await buildBusyboxImage({
      archivePath: archive,
      name: `${registry}/${image.repo}:${image.tags[0]}`,
      extraLayers: [extras],
      config: image.config ?? { cmd: ["/bin/sh"] },
    });
    await mkdir(layout);
    await execOk(["tar", "-xf", archive, "-C", layout]);
    for (const tag of image.tags)
      await execOk([crane, "push", "--insecure", layout, `${registry}/${image.repo}:${tag}`], {
        timeoutMs: 120_000,
      });
    await rm(layout, { recursive: true, force: true });
    await rm(archive, { force: true });
  }
}

// ---- the environment -----------------------------------------------------------------------

/** The registries critest's image names use; all served by the local one. */
const MIRRORED = ["registry.k8s.io", "gcr.io", "k8s.gcr.io"] as const;

export interface CritestEnv extends AsyncDisposable {
  harness: Harness;
  /** The local registry, host:port. */
  registry: string;
  dir: string;
  stop(): Promise<void>;
}

/** A harness whose containerd pulls from a local registry that holds critest's images. */
export async function startCritestEnv(
  tools: CritestTools,
  opts: { baseDir?: string; runtimeConfig?: Record<string, unknown> } = {},
): Promise<CritestEnv> {
  const dir = await mkdtemp(path.join(opts.baseDir ?? "/run", "chv-critest-"));
  let registry: { host: string; stop(): Promise<void> } | undefined;
  let harness: Harness | undefined;
  try {
    registry = await startRegistry(tools.crane, path.join(dir, "registry.log"));
    const host = registry.host;
    await pushImages(tools.crane, host, dir);
    harness = await startHarness({
      ...(opts.baseDir ? { baseDir: opts.baseDir } : {}),
      ...(opts.runtimeConfig ? { runtimeConfig: opts.runtimeConfig } : {}),
      extraConfig: MIRRORED.flatMap((name) => [
        `[plugins."io.containerd.grpc.v1.cri".registry.mirrors."${name}"]`,
        `  endpoint = ["http://${host}"]`,
      ]),
    });
    const h = harness;
    const r = registry;
    let stopped = false;
    const stop = async () => {
      if (stopped) return;
      stopped = true;
      await h.stop();
      await r.stop();
      await rm(dir, { recursive: true, force: true });
    };
    return { harness: h, registry: r.host, dir, stop, [Symbol.asyncDispose]: stop };
  } catch (err) {
    await harness?.stop();
    await registry?.stop();
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

// ---- a run and its report -----------------------------------------------------------------

export type SpecState = "passed" | "failed" | "skipped";

export interface SpecResult {
  /** Ginkgo's full text: the containers' texts and the spec's, space-separated. */
  name: string;
  state: SpecState;
  seconds: number;
  /** First line of the failure message (bounded), when it failed. */
  failure?: string;
}

export interface CritestRun {
  handler: string;
  specs: SpecResult[];
  seconds: number;
  /** critest's exit code (1 when any spec failed). */
  code: number | null;
  logPath: string;
}

interface GinkgoSpecReport {
  ContainerHierarchyTexts?: string[] | null;
  LeafNodeText?: string;
  LeafNodeType?: string;
  State?: string;
  RunTime?: number;
  Failure?: { Message?: string };
}

/** The It specs of a Ginkgo JSON report (-ginkgo.json-report), in report order. */
export function parseGinkgoReport(json: string): SpecResult[] {
  const suites = JSON.parse(json) as Array<{ SpecReports?: GinkgoSpecReport[] | null }>;
  if (!Array.isArray(suites)) throw new Error("Ginkgo JSON report: expected an array of suite reports");
  const specs: SpecResult[] = [];
  for (const suite of suites) {
    for (const r of suite.SpecReports ?? []) {
      if (r.LeafNodeType !== "It") continue;
      const name = [...(r.ContainerHierarchyTexts ?? []), r.LeafNodeText ?? ""].join(" ").trim();
      const state: SpecState =
        r.State === "passed"
          ? "passed"
          : r.State === "skipped" || r.State === "pending"
            ? "skipped"
            : "failed";
      const spec: SpecResult = { name, state, seconds: (r.RunTime ?? 0) / 1e9 };
      if (state === "failed") {
        // Whitespace folded: Gomega's message is a line, then the error, then a struct dump.
        const text = (r.Failure?.Message ?? "").replace(/\s+/g, " ").trim() || (r.State ?? "failed");
        spec.failure = text.length > 200 ? `${text.slice(0, 200)}…` : text;
      }
      specs.push(spec);
    }
  }
  return specs;
}

export interface RunOptions {
  handler: string;
  /** -ginkgo.focus regexps (a spec runs when it matches any). */
  focus?: readonly string[];
  /** -ginkgo.skip regexps, besides NOT_RUNNABLE_HERE. */
  skip?: readonly string[];
  timeoutMs?: number;
  /** Each line critest prints (progress). */
  onLine?: (line: string) => void;
}

export async function runCritest(
  env: CritestEnv,
  tools: CritestTools,
  opts: RunOptions,
): Promise<CritestRun> {
  const report = path.join(env.dir, `report-${opts.handler}.json`);
  const logPath = path.join(env.dir, `critest-${opts.handler}.log`);
  const endpoint = `unix://${env.harness.containerd.address}`;
  const args = [
    `-runtime-endpoint=${endpoint}`,
    `-image-endpoint=${endpoint}`,
    `-runtime-handler=${opts.handler}`,
    `-ginkgo.json-report=${report}`,
    "-ginkgo.no-color",
    "-ginkgo.timeout=3h",
    ...(opts.focus ?? []).map((f) => `-ginkgo.focus=${f}`),
    ...[...NOT_RUNNABLE_HERE.map((s) => s.pattern), ...(opts.skip ?? [])].map((s) => `-ginkgo.skip=${s}`),
  ];
  const started = Date.now();
  const log = createWriteStream(logPath);
  // Its own directory as cwd: critest looks for a crictl.yaml next to it and in its cwd.
  const child = spawn(tools.critest, args, { cwd: env.dir, stdio: ["ignore", "pipe", "pipe"] });
  let partial = "";
  const onData = (chunk: Buffer) => {
    log.write(chunk);
    if (!opts.onLine) return;
    const lines = (partial + chunk.toString("utf8")).split("\n");
    // A line without an end (e.g. a container's output inside a failure) is kept bounded.
    partial = (lines.pop() ?? "").slice(-65536);
    for (const line of lines) opts.onLine(line);
  };
  child.stdout?.on("data", onData);
  child.stderr?.on("data", onData);
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const timeoutMs = opts.timeoutMs ?? 60 * 60_000;
  if ((await within(exited, timeoutMs)) === TIMED_OUT) {
    child.kill("SIGKILL");
    await exited;
    log.end();
    throw new Error(
      `critest with handler ${opts.handler} ran past ${timeoutMs / 60_000} min; see ${logPath}`,
    );
  }
  const code = await exited;
  await new Promise((resolve) => log.end(resolve));
  let json: string;
  try {
    json = await readFile(report, "utf8");
  } catch {
    throw new Error(`critest with handler ${opts.handler} exited ${code} without a report; see ${logPath}`);
  }
  return {
    handler: opts.handler,
    specs: parseGinkgoReport(json),
    seconds: (Date.now() - started) / 1000,
    code,
    logPath,
  };
}

// ---- comparison ----------------------------------------------------------------------------

export interface Comparison {
  name: string;
  /** State per handler; absent when that run did not have the spec. */
  states: Record<string, SpecState | undefined>;
}

/** One row per spec any run has, in the first run's order. */
export function compareRuns(runs: readonly CritestRun[]): Comparison[] {
  const rows = new Map<string, Comparison>();
  for (const run of runs) {
    for (const spec of run.specs) {
      let row = rows.get(spec.name);
      if (!row) {
        row = { name: spec.name, states: {} };
        rows.set(spec.name, row);
      }
      row.states[run.handler] = spec.state;
    }
  }
  return [...rows.values()];
}

/** A plain-text table: spec, one column per handler, a note column (e.g. a known difference). */
export function formatTable(
  runs: readonly CritestRun[],
  note: (name: string) => string | undefined = () => undefined,
): string {
  const rows = compareRuns(runs);
  const handlers = runs.map((r) => r.handler);
  const lines = [["spec", ...handlers, "note"].join(" | ")];
  for (const row of rows) {
    if (handlers.every((h) => row.states[h] === "skipped" || row.states[h] === undefined)) continue;
    lines.push([row.name, ...handlers.map((h) => row.states[h] ?? "-"), note(row.name) ?? ""].join(" | "));
  }
  for (const run of runs) {
    const count = (s: SpecState) => run.specs.filter((x) => x.state === s).length;
    lines.push(
      `${run.handler}: ${count("passed")} passed, ${count("failed")} failed, ${count("skipped")} skipped in ${Math.round(run.seconds)} s`,
    );
  }
  return lines.join("\n");
}
