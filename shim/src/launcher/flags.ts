// containerd runs shims with Go-style flags ("-namespace ns -id x start"); this parses exactly
// that contract (single or double dash, "-k v" or "-k=v") and nothing more.

export interface ShimInvocation {
  namespace: string;
  /** containerd's gRPC socket. */
  address: string;
  publishBinary: string;
  id: string;
  bundle: string;
  debug: boolean;
  /** "start", "delete", or undefined for a command-like flag (-v / -info). */
  action: string | undefined;
  version: boolean;
  info: boolean;
}

const VALUE_FLAGS = new Map<string, keyof ShimInvocation>([
  ["namespace", "namespace"],
  ["address", "address"],
  ["publish-binary", "publishBinary"],
  ["id", "id"],
  ["bundle", "bundle"],
  ["socket", "bundle"], // unused by us; accepted so newer containerds don't break the parse
]);
const BOOL_FLAGS = new Map<string, keyof ShimInvocation>([
  ["debug", "debug"],
  ["v", "version"],
  ["info", "info"],
]);

export class FlagError extends Error {
  override readonly name = "FlagError";
}

export function parseShimFlags(argv: readonly string[]): ShimInvocation {
  const inv: ShimInvocation = {
    namespace: "",
    address: "",
    publishBinary: "",
    id: "",
    bundle: "",
    debug: false,
    action: undefined,
    version: false,
    info: false,
  };
  const values = inv as unknown as Record<string, string | boolean | undefined>;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (!arg.startsWith("-")) {
      if (inv.action) throw new FlagError(`unexpected argument "${arg}" after action "${inv.action}"`);
      inv.action = arg;
      continue;
    }
    const body = arg.replace(/^--?/, "");
    const eq = body.indexOf("=");
    const name = eq >= 0 ? body.slice(0, eq) : body;
    const inline = eq >= 0 ? body.slice(eq + 1) : undefined;
    const boolKey = BOOL_FLAGS.get(name);
    if (boolKey) {
      values[boolKey] = inline === undefined ? true : inline === "true" || inline === "1";
      continue;
    }
    const valueKey = VALUE_FLAGS.get(name);
    if (!valueKey) throw new FlagError(`unknown flag "${arg}"`);
    const value = inline ?? argv[++i];
    if (value === undefined) throw new FlagError(`flag "${arg}" needs a value`);
    if (name !== "socket") values[valueKey] = value;
  }
  return inv;
}
