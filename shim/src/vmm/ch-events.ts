// Cloud Hypervisor's event monitor (`--event-monitor fd=N`): the VMM writes one JSON object per
// event, pretty-printed over several lines, each followed by a blank line (v49 to v53 alike):
//   {"timestamp": {"secs": 1, "nanos": 2}, "source": "vm", "event": "rebooting", "properties": null}
// `properties` is null or a map of strings. The writer is non-blocking on CH's side: a reader
// that falls behind loses events, it never stalls the VMM. What the stream says is the VMM's
// word, not the guest's, but it is still parsed defensively: sizes are bounded and anything
// that is not an event is skipped.
import { z } from "zod";

export interface ChEvent {
  source: string;
  event: string;
  properties: Record<string, string>;
}

/** An event larger than this is not one CH writes (they are ~150 bytes): it is dropped. */
const MAX_EVENT_BYTES = 16 * 1024;

const eventSchema = z.object({
  source: z.string().max(64),
  event: z.string().max(64),
  properties: z
    .record(z.string().max(256), z.string().max(1024))
    .nullish()
    .transform((p) => p ?? {}),
});

/**
 * Splits CH's event stream into events. Feed it chunks as they arrive; it calls `onEvent`
 * for each event and `onGarbage` (with a short description) for what it had to skip.
 */
export class ChEventReader {
  private pending = "";
  private skipping = false;

  constructor(
    private readonly onEvent: (event: ChEvent) => void,
    private readonly onGarbage: (what: string) => void = () => {},
  ) {}

  push(chunk: string): void {
    this.pending += chunk;
    for (;;) {
      const end = this.pending.indexOf("\n\n");
      if (end < 0) break;
      const record = this.pending.slice(0, end);
      this.pending = this.pending.slice(end + 2);
      if (this.skipping) {
        // The tail of an oversized record: the next one starts after this separator.
        this.skipping = false;
        continue;
      }
      this.parse(record);
    }
    if (this.pending.length > MAX_EVENT_BYTES) {
      if (!this.skipping) this.onGarbage(`an event longer than ${MAX_EVENT_BYTES} bytes`);
      this.skipping = true;
      // Keep the last byte: the blank line that ends the record may straddle two chunks.
      this.pending = this.pending.slice(-1);
    }
  }

  private parse(record: string): void {
    const text = record.trim();
    if (!text) return;
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch {
      this.onGarbage(`not JSON: ${JSON.stringify(text.slice(0, 80))}`);
      return;
    }
    const parsed = eventSchema.safeParse(doc);
    if (!parsed.success) {
      this.onGarbage(`not an event: ${JSON.stringify(text.slice(0, 80))}`);
      return;
    }
    this.onEvent(parsed.data);
  }
}

/**
 * What an event means for the VM, when it is a guest fault: a reset the guest made itself (the
 * driver never asks CH to reboot, and `panic=-1` turns a kernel panic into one), a panic
 * reported by a pvpanic device, or a power-off from inside the guest.
 */
export type GuestFault = "reset" | "panic" | "poweroff";

export function guestFault(e: ChEvent, stopping: boolean): GuestFault | undefined {
  if (e.source === "guest" && e.event === "panic") return "panic";
  if (e.source === "vm" && (e.event === "rebooting" || e.event === "rebooted")) return "reset";
  // vm.shutdown from us also emits this; only one we did not ask for is the guest's doing.
  if (e.source === "vm" && e.event === "shutdown" && !stopping) return "poweroff";
  return undefined;
}
