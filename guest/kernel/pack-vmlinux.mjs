#!/usr/bin/env node
// Packs the guest vmlinux: rewrites the ELF with its loadable segments back to back in the file
// (each at the next offset congruent to its address modulo 4 KiB) instead of at the 2 MiB file
// alignment the x86-64 linker script leaves, which is ~5 MiB of zeros in our kernel. What the
// VMMs load does not change: both QEMU (load_elf, PVH) and Cloud Hypervisor (linux-loader) copy
// each PT_LOAD's p_filesz bytes from p_offset to p_paddr and find the PVH entry by reading the
// PT_NOTE segments from their p_offset; neither reads section headers, which are dropped.
// p_align stays as it was (2 MiB): linux-loader rejects a PT_LOAD whose p_align is not a multiple
// of 2 MiB, whatever its offset.
//
//   pack-vmlinux.mjs IN OUT [--max-bytes N]   pack IN into OUT, verify, enforce the size budget
//   pack-vmlinux.mjs --verify IN OUT          only check that OUT loads exactly as IN does
//
// After packing, OUT is parsed again from disk and compared with IN, segment by segment (the
// same bytes at the same addresses, same sizes and flags, same notes, same entry points), and
// checked against both loaders' rules; any difference fails with exit 1 and OUT is not written.
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, writeSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const PT_LOAD = 1;
const PT_NOTE = 4;
const PAGE = 0x1000;
/** linux-loader: a PT_LOAD's p_align must be a multiple of this (Error::Align otherwise). */
const LINUX_LOADER_ALIGN = 0x200000n;
const EHDR_SIZE = 64;
const PHDR_SIZE = 56;
const XEN_ELFNOTE_PHYS32_ENTRY = 18;

class PackError extends Error {}
const fail = (msg) => {
  throw new PackError(msg);
};
const hex = (n) => `0x${n.toString(16)}`;

/** Parses what a loader looks at: the ELF header and the program headers. */
export function parseElf(buf, name) {
  if (buf.length < EHDR_SIZE || buf.readUInt32BE(0) !== 0x7f454c46) fail(`${name}: not an ELF file`);
  if (buf[4] !== 2) fail(`${name}: not a 64-bit ELF (EI_CLASS ${buf[4]})`);
  if (buf[5] !== 1) fail(`${name}: not little-endian (EI_DATA ${buf[5]})`);
  const phoff = buf.readBigUInt64LE(32);
  const phentsize = buf.readUInt16LE(54);
  const phnum = buf.readUInt16LE(56);
  if (phentsize !== PHDR_SIZE) fail(`${name}: e_phentsize is ${phentsize}, expected ${PHDR_SIZE}`);
  if (phoff < BigInt(EHDR_SIZE) || phoff + BigInt(phnum * PHDR_SIZE) > BigInt(buf.length))
    fail(`${name}: program header table (offset ${hex(phoff)}, ${phnum} entries) is outside the file`);
  const phdrs = [];
  for (let i = 0; i < phnum; i++) {
    const at = Number(phoff) + i * PHDR_SIZE;
    const ph = {
      index: i,
      type: buf.readUInt32LE(at),
      flags: buf.readUInt32LE(at + 4),
      offset: buf.readBigUInt64LE(at + 8),
      vaddr: buf.readBigUInt64LE(at + 16),
      paddr: buf.readBigUInt64LE(at + 24),
      filesz: buf.readBigUInt64LE(at + 32),
      memsz: buf.readBigUInt64LE(at + 40),
      align: buf.readBigUInt64LE(at + 48),
    };
    if (ph.offset + ph.filesz > BigInt(buf.length))
      fail(
        `${name}: program header ${i} (type ${ph.type}) reaches past the end of the file (offset ${hex(ph.offset)} + ${hex(ph.filesz)} > ${hex(buf.length)})`,
      );
    if (ph.type === PT_LOAD && ph.filesz > ph.memsz)
      fail(`${name}: PT_LOAD ${i} has p_filesz ${hex(ph.filesz)} > p_memsz ${hex(ph.memsz)}`);
    phdrs.push(ph);
  }
  return { entry: buf.readBigUInt64LE(24), phoff: Number(phoff), phdrs };
}

const bytesOf = (buf, ph) => buf.subarray(Number(ph.offset), Number(ph.offset + ph.filesz));

/** The PVH entry (XEN_ELFNOTE_PHYS32_ENTRY) read from the PT_NOTE segments, as both loaders do. */
export function pvhEntry(buf, elf) {
  for (const ph of elf.phdrs) {
    if (ph.type !== PT_NOTE) continue;
    const notes = bytesOf(buf, ph);
    let at = 0;
    while (at + 12 <= notes.length) {
      const namesz = notes.readUInt32LE(at);
      const descsz = notes.readUInt32LE(at + 4);
      const type = notes.readUInt32LE(at + 8);
      const name = notes.subarray(at + 12, at + 12 + namesz);
      const desc = at + 12 + Math.ceil(namesz / 4) * 4;
      if (type === XEN_ELFNOTE_PHYS32_ENTRY && name.toString("latin1") === "Xen\0" && descsz >= 4) {
        if (desc + 4 > notes.length) return undefined;
        return notes.readUInt32LE(desc);
      }
      at = desc + Math.ceil(descsz / 4) * 4;
    }
  }
  return undefined;
}

/** Every way OUT would load differently from IN, or break a loader's rule (empty: none). */
export function compareLoads(inBuf, outBuf) {
  const a = parseElf(inBuf, "input");
  const b = parseElf(outBuf, "output");
  const problems = [];
  if (a.entry !== b.entry) problems.push(`e_entry ${hex(a.entry)} became ${hex(b.entry)}`);
  if (a.phdrs.length !== b.phdrs.length)
    problems.push(`${a.phdrs.length} program headers became ${b.phdrs.length}`);
  for (let i = 0; i < Math.min(a.phdrs.length, b.phdrs.length); i++) {
    const x = a.phdrs[i];
    const y = b.phdrs[i];
    for (const field of ["type", "flags", "vaddr", "paddr", "filesz", "memsz", "align"])
      if (x[field] !== y[field])
        problems.push(`program header ${i}: p_${field} ${hex(x[field])} became ${hex(y[field])}`);
    if (x.type === y.type && x.filesz === y.filesz && !bytesOf(inBuf, x).equals(bytesOf(outBuf, y)))
      problems.push(
        `program header ${i} (${y.type === PT_NOTE ? "PT_NOTE" : `type ${y.type}`}): the ${hex(y.filesz)} bytes at offset ${hex(y.offset)} differ from the input's at ${hex(x.offset)}`,
      );
    if (y.type === PT_LOAD && y.align % LINUX_LOADER_ALIGN !== 0n)
      problems.push(
        `PT_LOAD ${i}: p_align ${hex(y.align)} is not a multiple of 2 MiB (linux-loader refuses it)`,
      );
  }
  const entryIn = pvhEntry(inBuf, a);
  const entryOut = pvhEntry(outBuf, b);
  if (entryIn === undefined)
    problems.push("the input has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) in a PT_NOTE");
  else if (entryOut !== entryIn)
    problems.push(
      `PVH entry ${hex(entryIn)} ${entryOut === undefined ? "is not found in the output's PT_NOTE segments" : `became ${hex(entryOut)}`}`,
    );
  return problems;
}

/** IN with its PT_LOAD segments packed (file offset ≡ p_vaddr mod 4 KiB) and section headers dropped. */
export function pack(inBuf) {
  const elf = parseElf(inBuf, "input");
  const headerEnd = elf.phoff + elf.phdrs.length * PHDR_SIZE;
  const loads = elf.phdrs.filter((p) => p.type === PT_LOAD).sort((p, q) => Number(p.offset - q.offset));
  const newOffset = new Map();
  let cursor = BigInt(headerEnd);
  for (const ph of loads) {
    const want = ph.vaddr % BigInt(PAGE);
    const base = cursor - (cursor % BigInt(PAGE));
    const at = base + want >= cursor ? base + want : base + BigInt(PAGE) + want;
    newOffset.set(ph.index, at);
    cursor = at + ph.filesz;
  }
  // Other segments with content (the PT_NOTE) move with the PT_LOAD that holds their bytes;
  // one outside every PT_LOAD is appended.
  const extra = [];
  for (const ph of elf.phdrs) {
    if (ph.type === PT_LOAD) continue;
    if (ph.filesz === 0n) {
      newOffset.set(ph.index, 0n);
      continue;
    }
    const holder = loads.find((l) => ph.offset >= l.offset && ph.offset + ph.filesz <= l.offset + l.filesz);
    if (holder) newOffset.set(ph.index, (newOffset.get(holder.index) ?? 0n) + (ph.offset - holder.offset));
    else {
      const at = cursor + ((8n - (cursor % 8n)) % 8n);
      newOffset.set(ph.index, at);
      extra.push(ph);
      cursor = at + ph.filesz;
    }
  }
  const out = Buffer.alloc(Number(cursor));
  inBuf.copy(out, 0, 0, headerEnd);
  // No section headers: e_shoff, e_shnum, e_shstrndx = 0 (loaders read program headers only).
  out.writeBigUInt64LE(0n, 40);
  out.writeUInt16LE(0, 60);
  out.writeUInt16LE(0, 62);
  for (const ph of elf.phdrs) {
    const at = newOffset.get(ph.index) ?? 0n;
    out.writeBigUInt64LE(at, elf.phoff + ph.index * PHDR_SIZE + 8);
    if (ph.type === PT_LOAD || extra.includes(ph)) bytesOf(inBuf, ph).copy(out, Number(at));
  }
  return out;
}

/** Writes OUT through a temp file that is parsed back from disk and verified before the rename. */
function writeVerified(file, data, inBuf) {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.pack.${process.pid}`);
  try {
    const fd = openSync(tmp, "w", 0o755);
    try {
      writeSync(fd, data);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    const problems = compareLoads(inBuf, readFileSync(tmp));
    if (problems.length)
      fail(`the packed file would not load as the input does:\n  ${problems.join("\n  ")}`);
    renameSync(tmp, file);
  } finally {
    rmSync(tmp, { force: true });
  }
}

const mib = (n) => (n / 1048576).toFixed(2);

function main(argv) {
  const usage = "usage: pack-vmlinux.mjs IN OUT [--max-bytes N] | pack-vmlinux.mjs --verify IN OUT";
  const args = [...argv];
  let maxBytes;
  let verifyOnly = false;
  const files = [];
  while (args.length) {
    const arg = args.shift();
    if (arg === "--verify") verifyOnly = true;
    else if (arg === "--max-bytes") {
      const v = args.shift() ?? "";
      if (!/^[1-9][0-9]*$/.test(v)) fail(`--max-bytes needs a positive number of bytes, got '${v}'`);
      maxBytes = Number(v);
    } else if (arg?.startsWith("-")) fail(`unknown option '${arg}'\n${usage}`);
    else files.push(arg);
  }
  if (files.length !== 2) fail(usage);
  const [inFile, outFile] = files;
  const inBuf = readFileSync(inFile);
  if (verifyOnly) {
    const problems = compareLoads(inBuf, readFileSync(outFile));
    if (problems.length) fail(`${outFile} does not load as ${inFile} does:\n  ${problems.join("\n  ")}`);
    console.log(`pack-vmlinux: ${outFile} loads the same bytes at the same addresses as ${inFile}`);
    return;
  }
  const packed = pack(inBuf);
  if (maxBytes !== undefined && packed.length > maxBytes)
    fail(
      `packed ${inFile} is ${packed.length} bytes (${mib(packed.length)} MiB), over the budget of ${maxBytes} bytes (${mib(maxBytes)} MiB) by ${packed.length - maxBytes}: drop options from guest/kernel/cloudhv.config (its loadable segments alone are that big)`,
    );
  writeVerified(outFile, packed, inBuf);
  console.log(
    `pack-vmlinux: ${inBuf.length} -> ${packed.length} bytes (${mib(inBuf.length)} -> ${mib(packed.length)} MiB), same load verified`,
  );
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    main(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof PackError) && err?.code === undefined) throw err;
    console.error(`pack-vmlinux: ${err.message}`);
    process.exit(1);
  }
}
