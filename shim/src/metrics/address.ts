// The runtime config's metrics_address: where the daemon serves /metrics. Kept apart from
// metrics.ts so the config's validation does not load prom-client.
import net from "node:net";
import path from "node:path";

export type MetricsAddress = { kind: "tcp"; host: string; port: number } | { kind: "unix"; path: string };

export const METRICS_ADDRESS_HELP =
  'metrics_address must be "" (off), IP:PORT (e.g. "127.0.0.1:9464", "[::1]:9464"; ' +
  '"0.0.0.0:9464" exposes it to the network) or "unix:/absolute/path.sock"';

/** undefined for "" and for anything malformed (the config validation tells them apart). */
export function parseMetricsAddress(text: string): MetricsAddress | undefined {
  if (text.startsWith("unix:")) {
    const p = text.slice("unix:".length);
    return path.isAbsolute(p) && path.normalize(p) === p && !p.includes("\0") && Buffer.byteLength(p) < 104
      ? { kind: "unix", path: p }
      : undefined;
  }
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+)):([0-9]{1,5})$/.exec(text);
  if (!m) return undefined;
  const host = (m[1] ?? m[2]) as string;
  const port = Number(m[3]);
  if (port < 1 || port > 65_535) return undefined;
  if (m[1] ? !net.isIPv6(host) : !net.isIPv4(host)) return undefined;
  return { kind: "tcp", host, port };
}
