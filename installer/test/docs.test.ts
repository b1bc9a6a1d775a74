// The operator docs say what the code does: the exit status tables in installer/README.md and
// docs/operations.md are exactly src/exit-codes.ts; the image the install steps build and
// import is the chart's default; the restart modes and the `cloudhv` command's path are the
// real ones.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { describe, it } from "node:test";
import { parse as parseYaml } from "yaml";
import { REPO_ROOT } from "../src/bundle.js";
import { EXIT, EXIT_MEANINGS } from "../src/exit-codes.js";
import { IMAGE_NAME } from "../src/image.js";
import { CLI_LAUNCHER } from "../src/paths.js";
import { RESTART_MODES } from "../src/restart.js";

const read = (rel: string) => readFile(path.join(REPO_ROOT, rel), "utf8");

/** `| code | \`NAME\` | meaning |` rows of a markdown file. */
function exitRows(text: string): Array<[number, string, string]> {
  return [...text.matchAll(/^\| (\d+) +\| `([A-Z_]+)` +\| (.+?) +\|$/gm)].map((m) => [
    Number(m[1]),
    m[2] as string,
    m[3] as string,
  ]);
}

describe("operator docs match the code", () => {
  const expected = Object.entries(EXIT).map(
    ([name, code]) => [code, name, EXIT_MEANINGS[code]] as [number, string, string],
  );

  for (const file of ["installer/README.md", "docs/operations.md"])
    it(`${file} lists every exit status with its meaning`, async () => {
      assert.deepEqual(exitRows(await read(file)), expected);
    });

  it("the install steps build, import and install the chart's default image", async () => {
    const chart = parseYaml(await read("charts/cloudhv/Chart.yaml")) as { appVersion: string };
    const values = parseYaml(await read("charts/cloudhv/values.yaml")) as {
      image: { repository: string; tag: string };
    };
    const pkg = JSON.parse(await read("installer/package.json")) as { version: string };
    // What build-image.sh names the image, and what the chart pulls by default.
    assert.equal(values.image.repository, IMAGE_NAME);
    assert.equal(values.image.tag, "");
    assert.equal(chart.appVersion, pkg.version);
    const image = `${IMAGE_NAME}:${chart.appVersion}`;
    const ops = await read("docs/operations.md");
    const install = ops.slice(ops.indexOf("## Install"), ops.indexOf("## Upgrade"));
    const script = install.slice(
      install.indexOf("```sh"),
      install.indexOf("```", install.indexOf("```sh") + 5),
    );
    assert.match(script, /^installer\/scripts\/build-image\.sh/m);
    assert.match(script, /^ctr -n k8s\.io images import build\/image\/cloudhv-installer\.tar$/m);
    assert.match(
      script,
      /^helm install cloudhv charts\/cloudhv --namespace kube-system$/m,
      "with the defaults",
    );
    assert.doesNotMatch(script, /--set image/);
    assert.ok(install.includes(image));
    assert.ok(install.includes(`docker build -f installer/Dockerfile -t\n${image} .`));
  });

  it("names the real restart modes and the installed `cloudhv` command", async () => {
    const ops = await read("docs/operations.md");
    for (const mode of RESTART_MODES) assert.match(ops, new RegExp(`^\\| \`${mode}\` +\\|`, "m"));
    assert.ok(ops.includes(`${CLI_LAUNCHER} doctor`));
    assert.equal(CLI_LAUNCHER, "/opt/cloudhv/bin/cloudhv");
  });
});
