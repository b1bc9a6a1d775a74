// Publishes task events to containerd's ttrpc Events service. Publishing never blocks or fails
// the task operation that caused it: events queue (bounded) and a single sender delivers them
// in order, reconnecting after containerd restarts.
import { setTimeout as sleep } from "node:timers/promises";
import { TtrpcClient } from "../ttrpc/client.js";
import { messageCodec, type ProtoMessage } from "../ttrpc/proto.js";
import type { Logger } from "../util/log.js";
import { EVENTS_SERVICE, eventsForwardRequest } from "./events.js";

export type Timestamp = ProtoMessage<"cloudhv.wellknown.Timestamp">;
export type Mount = ProtoMessage<"containerd.task.v2.Mount">;

type EventName =
  | "TaskCreate"
  | "TaskStart"
  | "TaskExit"
  | "TaskDelete"
  | "TaskOOM"
  | "TaskExecAdded"
  | "TaskExecStarted"
  | "TaskPaused"
  | "TaskResumed";

/** Event name → its fields (containerd.events.*, generated from task-events.proto). */
export type TaskEvents = { [K in EventName]: ProtoMessage<`containerd.events.${K}`> };

const TOPICS: Record<keyof TaskEvents, string> = {
  TaskCreate: "/tasks/create",
  TaskStart: "/tasks/start",
  TaskExit: "/tasks/exit",
  TaskDelete: "/tasks/delete",
  TaskOOM: "/tasks/oom",
  TaskExecAdded: "/tasks/exec-added",
  TaskExecStarted: "/tasks/exec-started",
  TaskPaused: "/tasks/paused",
  TaskResumed: "/tasks/resumed",
};

const MAX_QUEUE = 4096;

interface Queued {
  namespace: string;
  topic: string;
  typeUrl: string;
  value: Uint8Array;
}

export class EventPublisher {
  private readonly queue: Queued[] = [];
  private client: TtrpcClient | undefined;
  private sending = false;
  private closed = false;

  constructor(
    private readonly ttrpcAddress: string,
    private readonly log: Logger,
  ) {}

  publish<K extends keyof TaskEvents>(namespace: string, name: K, event: TaskEvents[K]): void {
    if (this.closed) return;
    const typeName = `containerd.events.${name}` as const;
    const value = messageCodec(typeName).encode(event);
    if (this.queue.length >= MAX_QUEUE) {
      const dropped = this.queue.shift();
      this.log.warn({ topic: dropped?.topic }, "event queue full; dropped the oldest event");
    }
    this.queue.push({ namespace, topic: TOPICS[name], typeUrl: typeName, value });
    void this.drain();
  }

  /** Resolves when every queued event was delivered (or the publisher closed). */
  async flush(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while ((this.queue.length > 0 || this.sending) && !this.closed && Date.now() < deadline) await sleep(10);
  }

  close(): void {
    this.closed = true;
    this.client?.close();
  }

  private async drain(): Promise<void> {
    if (this.sending) return;
    this.sending = true;
    let backoff = 50;
    try {
      while (this.queue.length > 0 && !this.closed) {
        const next = this.queue[0] as Queued;
        try {
          if (!this.client || this.client.closed)
            this.client = await TtrpcClient.connect(this.ttrpcAddress, { timeoutMs: 2000 });
          const request = eventsForwardRequest({
            namespace: next.namespace,
            topic: next.topic,
            event: { typeUrl: next.typeUrl, value: next.value },
          });
          await this.client.call(EVENTS_SERVICE, "Forward", request, { timeoutMs: 5000 });
          this.queue.shift();
          backoff = 50;
        } catch (err) {
          this.log.warn(
            { topic: next.topic, err: (err as Error).message },
            "publishing event failed; retrying",
          );
          this.client?.close();
          this.client = undefined;
          await sleep(backoff);
          backoff = Math.min(backoff * 2, 2000);
        }
      }
    } finally {
      this.sending = false;
    }
  }
}
