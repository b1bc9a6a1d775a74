// guest/kernel/pack-vmlinux.mjs (no root, no VM): the packed kernel loads the same bytes at the
// same addresses, keeps its PVH note findable through PT_NOTE and its 2 MiB p_align (linux-loader
// refuses less), loses the file padding and the section headers; the budget and the check that
// compares input and output both fail with a message that names what is wrong. Checked here with
// a parser of the test's own on a synthetic kernel-shaped ELF, and on the shipped vmlinux.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { exec } from "@cloudhv/shim";
import { REPO_ROOT } from "../src/artifacts.js";

const PACKER = path.join(REPO_ROOT, "guest/kernel/pack-vmlinux.mjs");
const SHIPPED = path.join(REPO_ROOT, "build/guest/vmlinux");
const BUDGET = 16 * 1048576;
const PT_LOAD = 1;
const PT_NOTE = 4;
const PVH_ENTRY = 0x1000123;

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

function note(name: string, type: number, desc: Buffer): Buffer {
  const n = Buffer.alloc(Math.ceil((name.length + 1) / 4) * 4);
  n.write(name, "latin1");
  const head = Buffer.alloc(12);
  head.writeUInt32LE(name.length + 1, 0);
  head.writeUInt32LE(desc.length, 4);
  head.writeUInt32LE(type, 8);
  return Buffer.concat([head, n, desc, Buffer.alloc((4 - (desc.length % 4)) % 4)]);
}

/**
 * A kernel-shaped ELF: segments at 2 MiB file offsets like the x86-64 linker script's, a
 * per-CPU-like one at virtual address 0, one with .bss (memsz > filesz), the notes inside the
 * first PT_LOAD and section headers at the end.
 */
function syntheticKernel(): Buffer {
  const pvh = Buffer.alloc(8);
  pvh.writeUInt32LE(PVH_ENTRY, 0);
  const notes = Buffer.concat([note("GNU", 3, randomBytes(20)), note("Xen", 18, pvh)]);
  const segs = [
    {
      type: PT_LOAD,
      flags: 5,
      offset: 0x200000,
      vaddr: 0xffffffff81000000n,
      paddr: 0x1000000n,
      filesz: 0x2345,
    },
    { type: PT_LOAD, flags: 6, offset: 0x400000, vaddr: 0n, paddr: 0x1400000n, filesz: 0x1800 },
    {
      type: PT_LOAD,
      flags: 7,
      offset: 0x601000,
      vaddr: 0xffffffff81601000n,
      paddr: 0x1601000n,
      filesz: 0x800,
    },
  ];
  const shoff = 0x601800;
  const buf = Buffer.alloc(shoff + 2 * 64);
  buf.writeUInt32BE(0x7f454c46, 0);
  buf.set([2, 1, 1], 4);
  buf.writeUInt16LE(2, 16); // ET_EXEC
  buf.writeUInt16LE(62, 18); // EM_X86_64
  buf.writeUInt32LE(1, 20);
  buf.writeBigUInt64LE(0x1000000n, 24);
  buf.writeBigUInt64LE(64n, 32);
  buf.writeBigUInt64LE(BigInt(shoff), 40);
  buf.writeUInt16LE(64, 52);
  buf.writeUInt16LE(56, 54);
  buf.writeUInt16LE(segs.length + 1, 56);
  buf.writeUInt16LE(64, 58);
  buf.writeUInt16LE(2, 60);
  buf.writeUInt16LE(1, 62);
  const noteAt = 0x2000;
  const all = [
    ...segs.map((s, i) => ({ ...s, memsz: i === 2 ? 0x5000 : s.filesz, align: 0x200000 })),
    {
      type: PT_NOTE,
      flags: 4,
      offset: 0x200000 + noteAt,
      vaddr: 0xffffffff81000000n + BigInt(noteAt),
      paddr: 0x1000000n + BigInt(noteAt),
      filesz: notes.length,
      memsz: notes.length,
      align: 4,
    },
  ];
  all.forEach((p, i) => {
    const at = 64 + i * 56;
    buf.writeUInt32LE(p.type, at);
    buf.writeUInt32LE(p.flags, at + 4);
    buf.writeBigUInt64LE(BigInt(p.offset), at + 8);
    buf.writeBigUInt64LE(p.vaddr, at + 16);
    buf.writeBigUInt64LE(p.paddr, at + 24);
    buf.writeBigUInt64LE(BigInt(p.filesz), at + 32);
    buf.writeBigUInt64LE(BigInt(p.memsz), at + 40);
    buf.writeBigUInt64LE(BigInt(p.align), at + 48);
  });
  for (const s of segs) randomBytes(s.filesz).copy(buf, s.offset);
  notes.copy(buf, 0x200000 + noteAt);
  randomBytes(128).copy(buf, shoff);
  return buf;
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
    assert.ok(size <= BUDGET, `${SHIPPED} is ${size} bytes, budget ${BUDGET}`);
    const shipped = await readFile(SHIPPED);
    assert.equal(shipped.readUInt16LE(60), 0, "section headers dropped");
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
