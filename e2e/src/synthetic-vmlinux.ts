// A kernel-shaped ELF for the vmlinux packer's tests (e2e/test/vmlinux-pack, guest-build): load
// segments at 2 MiB file offsets as the x86-64 linker script leaves them, random contents, the
// notes (with a PVH entry) inside the first PT_LOAD, section headers at the end.
import { randomBytes } from "node:crypto";

const PT_LOAD = 1;
const PT_NOTE = 4;
/** The PVH entry (XEN_ELFNOTE_PHYS32_ENTRY) the synthetic kernel's note holds. */
export const PVH_ENTRY = 0x1000123;

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
export function syntheticKernel(): Buffer {
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
