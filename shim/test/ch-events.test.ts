// Cloud Hypervisor's event stream (--event-monitor): split and checked on the host, whatever
// the chunking, with bounded memory; which events mean a guest fault.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type ChEvent, ChEventReader, guestFault } from "../src/vmm/ch-events.js";

/** One event as CH (v49-v53) writes it: serde_json's pretty form, then a blank line. */
function chEvent(source: string, event: string, properties: Record<string, string> | null = null): string {
  const doc = { timestamp: { secs: 1, nanos: 250 }, source, event, properties };
  return `${JSON.stringify(doc, null, 2)}\n\n`;
}

function read(chunks: string[]): { events: ChEvent[]; garbage: string[] } {
  const events: ChEvent[] = [];
  const garbage: string[] = [];
  const reader = new ChEventReader(
    (e) => events.push(e),
    (g) => garbage.push(g),
  );
  for (const c of chunks) reader.push(c);
  return { events, garbage };
}

describe("Cloud Hypervisor event monitor stream", () => {
  it("splits pretty-printed events however the bytes arrive; a null properties is an empty map", () => {
    const stream =
      chEvent("vmm", "starting") +
      chEvent("virtio-device", "activated", { id: "_disk0" }) +
      chEvent("vm", "rebooting");
    const whole = read([stream]);
    assert.deepEqual(whole.events, [
      { source: "vmm", event: "starting", properties: {} },
      { source: "virtio-device", event: "activated", properties: { id: "_disk0" } },
      { source: "vm", event: "rebooting", properties: {} },
    ]);
    assert.deepEqual(whole.garbage, []);
    // One byte at a time: the same events.
    assert.deepEqual(read([...stream]).events, whole.events);
  });

  it("skips what is not an event, and drops an oversized one without holding it, then resyncs", () => {
    const huge = `{"source": "vm", "event": "${"x".repeat(40_000)}"`;
    const { events, garbage } = read([
      "not json\n\n",
      '{"source": 1, "event": "x"}\n\n',
      huge.slice(0, 20_000),
      huge.slice(20_000),
      "}\n\n",
      chEvent("guest", "panic", { event: "panicked" }),
    ]);
    assert.deepEqual(events, [{ source: "guest", event: "panic", properties: { event: "panicked" } }]);
    assert.equal(garbage.length, 3);
    assert.match(garbage[2] ?? "", /longer than 16384 bytes/);
  });

  it("a reset, a pvpanic panic and a power-off we did not ask for are guest faults; the rest are not", () => {
    const e = (source: string, event: string): ChEvent => ({ source, event, properties: {} });
    assert.equal(guestFault(e("vm", "rebooting"), false), "reset");
    assert.equal(guestFault(e("vm", "rebooted"), true), "reset");
    assert.equal(guestFault(e("guest", "panic"), false), "panic");
    assert.equal(guestFault(e("vm", "shutdown"), false), "poweroff");
    assert.equal(guestFault(e("vm", "shutdown"), true), undefined, "our own vm.shutdown");
    for (const [source, event] of [
      ["vm", "booted"],
      ["vm", "paused"],
      ["vmm", "shutdown"],
      ["virtio-device", "reset"],
    ] as const)
      assert.equal(guestFault(e(source, event), false), undefined, `${source} ${event}`);
  });
});
