// The daemon's line to its front (bin/front.ts), when it runs behind one: it asks the front to
// hold each live process's output FIFOs (see front/stdio-holds.ts) and to let go once that
// process's output is done. Best effort: a failure is logged, never fails a task.
import path from "node:path";
import { TtrpcClient } from "../ttrpc/client.js";
import { messageCodec } from "../ttrpc/proto.js";
import type { Logger } from "../util/log.js";

const ADMIN = "cloudhv.shim.v1.Admin";

export interface StdioKeeper {
  hold(key: string, paths: readonly string[]): void;
  release(key: string): void;
}

/** The front's control socket for a daemon on `<state_dir>/backend/shim-H.sock`, else undefined. */
export function frontControlOf(daemonSocket: string): string | undefined {
  const dir = path.dirname(daemonSocket);
  if (path.basename(dir) !== "backend") return undefined;
  return path.join(path.dirname(dir), path.basename(daemonSocket));
}

export class FrontLink implements StdioKeeper {
  private client: Promise<TtrpcClient> | undefined;
  /** Calls in order, one at a time: a release never overtakes its hold. */
  private chain: Promise<void> = Promise.resolve();
  private readonly holdRequest = messageCodec("cloudhv.shim.v1.HoldStdioRequest");
  private readonly releaseRequest = messageCodec("cloudhv.shim.v1.ReleaseStdioRequest");

  constructor(
    private readonly socket: string,
    private readonly log: Logger,
  ) {}

  hold(key: string, paths: readonly string[]): void {
    this.call("HoldStdio", this.holdRequest.encode({ key, paths: paths.filter(Boolean) }), key);
  }

  release(key: string): void {
    this.call("ReleaseStdio", this.releaseRequest.encode({ key }), key);
  }

  /** Settles once every call made so far has been answered (or failed). */
  settled(): Promise<void> {
    return this.chain;
  }

  private call(method: string, payload: Uint8Array, key: string): void {
    this.chain = this.chain.then(async () => {
      try {
        this.client ??= TtrpcClient.connect(this.socket, { timeoutMs: 2000 });
        const client = await this.client;
        await client.call(ADMIN, method, payload, { timeoutMs: 5000 });
      } catch (err) {
        this.client?.then((c) => c.close()).catch(() => {});
        this.client = undefined;
        this.log.warn({ key, err: (err as Error).message }, `front: ${method} failed`);
      }
    });
  }

  close(): void {
    void this.client?.then((c) => c.close()).catch(() => {});
  }
}
