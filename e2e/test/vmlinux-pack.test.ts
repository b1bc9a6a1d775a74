// guest/kernel/pack-vmlinux.mjs (no root, no VM): the packed kernel loads the same bytes at the
// same addresses, keeps its PVH note findable through PT_NOTE and its 2 MiB p_align (linux-loader
// refuses less), loses the file padding and the section headers; the budget and the check that
// compares input and output both fail with a message that names what is wrong. Checked here with
// a parser of the test's own on a synthetic kernel-shaped ELF, and on the shipped vmlinux.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { exec } from "@cloudhv/shim";
import { REPO_ROOT } from "../src/artifacts.js";
import { PVH_ENTRY, syntheticKernel } from "../src/synthetic-vmlinux.js";

const PACKER = path.join(REPO_ROOT, "guest/kernel/pack-vmlinux.mjs");
const SHIPPED = path.join(REPO_ROOT, "build/guest/vmlinux");
const BUDGET = 16 * 1048576;
const PT_LOAD = 1;
const PT_NOTE = 4;

interface Phdr {
  type: number;
  flags: number;
  offset: number;
  vaddr: bigint;
  paddr: bigint;
  filesz: number;
  memsz: number;
  align: number;
}

function phdrs(buf: Buffer): Phdr[] {
  const phoff = Number(buf.readBigUInt64LE(32));
  return Array.from({ length: buf.readUInt16LE(56) }, (_, i) => {
    const at = phoff + i * 56;
    return {
      type: buf.readUInt32LE(at),
      flags: buf.readUInt32LE(at + 4),
      offset: Number(buf.readBigUInt64LE(at + 8)),
      vaddr: buf.readBigUInt64LE(at + 16),
      paddr: buf.readBigUInt64LE(at + 24),
      filesz: Number(buf.readBigUInt64LE(at + 32)),
      memsz: Number(buf.readBigUInt64LE(at + 40)),
      align: Number(buf.readBigUInt64LE(at + 48)),
    };
  });
}

const content = (buf: Buffer, p: Phdr) => buf.subarray(p.offset, p.offset + p.filesz);

/** The PVH entry as a loader finds it: the Xen type-18 note in a PT_NOTE segment, by p_offset. */
function pvhEntry(buf: Buffer): number | undefined {
  for (const p of phdrs(buf).filter((x) => x.type === PT_NOTE)) {
    const notes = content(buf, p);
    for (let at = 0; at + 12 <= notes.length; ) {
      const namesz = notes.readUInt32LE(at);
      const descsz = notes.readUInt32LE(at + 4);
      const desc = at + 12 + Math.ceil(namesz / 4) * 4;
      if (notes.readUInt32LE(at + 8) === 18 && notes.toString("latin1", at + 12, at + 15) === "Xen")
        return notes.readUInt32LE(desc);
      at = desc + Math.ceil(descsz / 4) * 4;
    }
  }
  return undefined;
}

const run = (args: string[]) => exec(["node", PACKER, ...args], { timeoutMs: 60_000 });

describe("vmlinux packer", () => {
  let dir = "";
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "cloudhv-vmlinux-pack-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("packs a kernel-shaped ELF: every segment's bytes at the same addresses, the PVH note found through PT_NOTE, p_align kept, no padding or section headers", async () => {
    const input = syntheticKernel();
    await writeFile(path.join(dir, "in"), input);
    const result = await run([path.join(dir, "in"), path.join(dir, "out"), "--max-bytes", String(BUDGET)]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /same load verified/);
    const out = await readFile(path.join(dir, "out"));
    assert.ok(out.length < 0x10000, `packed size ${out.length}, input ${input.length}`);
    assert.equal(out.readBigUInt64LE(24), input.readBigUInt64LE(24), "e_entry");
    assert.equal(out.readUInt16LE(60), 0, "e_shnum");
    assert.equal(out.readBigUInt64LE(40), 0n, "e_shoff");
    const before = phdrs(input);
    const packed = phdrs(out);
    assert.equal(packed.length, before.length);
    packed.forEach((p, i) => {
      const q = before[i] as Phdr;
      assert.deepEqual({ ...p, offset: 0 }, { ...q, offset: 0 }, `program header ${i}`);
      assert.ok(content(out, p).equals(content(input, q)), `program header ${i}: bytes differ`);
      if (p.type === PT_LOAD) {
        assert.equal(BigInt(p.offset) % 4096n, p.vaddr % 4096n, `PT_LOAD ${i}: offset not page-congruent`);
        assert.equal(p.align % 0x200000, 0, `PT_LOAD ${i}: p_align ${p.align} (linux-loader needs 2 MiB)`);
      }
    });
    assert.equal(pvhEntry(out), PVH_ENTRY);
    const verify = await run(["--verify", path.join(dir, "in"), path.join(dir, "out")]);
    assert.equal(verify.code, 0, verify.stderr);
  });

  it("refuses to write a kernel over the budget, saying by how much", async () => {
    await writeFile(path.join(dir, "in-budget"), syntheticKernel());
    const target = path.join(dir, "over-budget");
    const result = await run([path.join(dir, "in-budget"), target, "--max-bytes", "4096"]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /is \d+ bytes \([\d.]+ MiB\), over the budget of 4096 bytes .* by \d+/);
    assert.equal(existsSync(target), false, "nothing written");
  });

  it("--verify names a PT_NOTE that points at other bytes and a segment whose bytes changed", async () => {
    const inFile = path.join(dir, "in-verify");
    const outFile = path.join(dir, "out-verify");
    await writeFile(inFile, syntheticKernel());
    assert.equal((await run([inFile, outFile])).code, 0);
    const good = await readFile(outFile);

    const movedNote = Buffer.from(good);
    const noteHeader = 64 + 3 * 56;
    movedNote.writeBigUInt64LE(movedNote.readBigUInt64LE(noteHeader + 8) + 4n, noteHeader + 8);
    await writeFile(outFile, movedNote);
    let result = await run(["--verify", inFile, outFile]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /program header 3 \(PT_NOTE\): the 0x\w+ bytes at offset 0x\w+ differ/);
    assert.match(result.stderr, /PVH entry 0x1000123 is not found in the output's PT_NOTE segments/);

    const changed = Buffer.from(good);
    const second = phdrs(good)[1] as Phdr;
    changed[second.offset + 17] = (changed[second.offset + 17] as number) ^ 0xff;
    await writeFile(outFile, changed);
    result = await run(["--verify", inFile, outFile]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /program header 1 \(type 1\): the 0x1800 bytes at offset 0x\w+ differ/);
  });

  it("refuses a kernel without a PVH entry note", async () => {
    const input = syntheticKernel();
    const noteHeader = 64 + 3 * 56;
    input.writeUInt32LE(6, noteHeader); // PT_NOTE -> PT_PHDR: no notes left for a loader
    await writeFile(path.join(dir, "in-nopvh"), input);
    const result = await run([path.join(dir, "in-nopvh"), path.join(dir, "out-nopvh")]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /the input has no PVH entry note/);
    assert.equal(existsSync(path.join(dir, "out-nopvh")), false);
  });

  it("the shipped build/guest/vmlinux is packed, within 16 MiB, with its PVH note and 2 MiB p_align", async (t) => {
    if (!existsSync(SHIPPED)) return t.skip(`${SHIPPED} not built (scripts/dev.sh setup)`);
    const { size } = await stat(SHIPPED);
    const stale = "(built before the packer? run scripts/dev.sh setup)";
    assert.ok(size <= BUDGET, `${SHIPPED} is ${size} bytes, budget ${BUDGET} ${stale}`);
    const shipped = await readFile(SHIPPED);
    assert.equal(shipped.readUInt16LE(60), 0, `section headers not dropped ${stale}`);
    assert.notEqual(pvhEntry(shipped), undefined, "PVH note");
    for (const p of phdrs(shipped).filter((x) => x.type === PT_LOAD)) {
      assert.equal(p.align % 0x200000, 0, "p_align");
      assert.ok(p.offset + p.filesz <= size);
    }
    // Packing it again changes nothing: it has no padding left to drop.
    const again = path.join(dir, "vmlinux-again");
    const result = await run([SHIPPED, again, "--max-bytes", String(BUDGET)]);
    assert.equal(result.code, 0, result.stderr);
    assert.ok((await readFile(again)).equals(shipped));
  });
});
