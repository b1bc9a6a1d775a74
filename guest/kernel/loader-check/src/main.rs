//! `cloudhv-vmlinux-loader-check VMLINUX [REFERENCE]`: loads VMLINUX the way Cloud Hypervisor
//! does (rust-vmm linux-loader's ELF loader, no load offset, so the PVH entry is honoured) into a
//! guest memory of its own, then checks, from a reading of the program headers of its own, that
//! every PT_LOAD's bytes landed at its p_paddr, the rest up to p_memsz is zero, and a PVH entry
//! was found. With REFERENCE (the unpacked kernel), also loads that and requires the same guest
//! memory, PVH entry and kernel end. Exit 1 naming the first difference.

use linux_loader::loader::{KernelLoader, elf::Elf, elf::PvhBootCapability};
use std::fs::File;
use std::process::exit;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory for the check: our kernel loads at 16 MiB and ends below 48 MiB.
const MEM_BYTES: usize = 128 << 20;
const PT_LOAD: u32 = 1;

struct Load {
    index: usize,
    offset: usize,
    paddr: u64,
    filesz: usize,
    memsz: usize,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| format!("file too short at {at:#x}"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap_or_default()))
        .ok_or_else(|| format!("file too short at {at:#x}"))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().unwrap_or_default()))
        .ok_or_else(|| format!("file too short at {at:#x}"))
}

fn loads(file: &[u8]) -> Result<Vec<Load>, String> {
    let phoff = u64_at(file, 32)? as usize;
    let phnum = u16_at(file, 56)? as usize;
    let mut out = Vec::new();
    for index in 0..phnum {
        let at = phoff + index * 56;
        if u32_at(file, at)? != PT_LOAD {
            continue;
        }
        out.push(Load {
            index,
            offset: u64_at(file, at + 8)? as usize,
            paddr: u64_at(file, at + 24)?,
            filesz: u64_at(file, at + 32)? as usize,
            memsz: u64_at(file, at + 40)? as usize,
        });
    }
    Ok(out)
}

struct Loaded {
    mem: GuestMemoryMmap<()>,
    pvh: u64,
    end: u64,
    segments: usize,
}

fn check(path: &str) -> Result<Loaded, String> {
    let file = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_BYTES)])
        .map_err(|e| format!("guest memory: {e}"))?;
    let mut image = File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let result = Elf::load(&mem, None, &mut image, None)
        .map_err(|e| format!("linux-loader refuses {path}: {e}"))?;
    let pvh = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => addr.0,
        other => {
            return Err(format!(
                "linux-loader found no PVH entry in {path}: {other:?}"
            ));
        }
    };
    let segments = loads(&file)?;
    if segments.is_empty() {
        return Err(format!("{path} has no PT_LOAD"));
    }
    for seg in &segments {
        let want = file
            .get(seg.offset..seg.offset + seg.filesz)
            .ok_or_else(|| format!("PT_LOAD {} reaches past the end of {path}", seg.index))?;
        let mut got = vec![0u8; seg.memsz];
        mem.read_slice(&mut got, GuestAddress(seg.paddr))
            .map_err(|e| {
                format!(
                    "PT_LOAD {}: guest memory at {:#x}: {e}",
                    seg.index, seg.paddr
                )
            })?;
        if let Some(at) = (0..seg.filesz).find(|&i| got[i] != want[i]) {
            return Err(format!(
                "PT_LOAD {}: guest byte at {:#x} differs from file offset {:#x}",
                seg.index,
                seg.paddr + at as u64,
                seg.offset + at
            ));
        }
        if let Some(at) = (seg.filesz..seg.memsz).find(|&i| got[i] != 0) {
            return Err(format!(
                "PT_LOAD {}: guest byte at {:#x} (past p_filesz) is not zero",
                seg.index,
                seg.paddr + at as u64
            ));
        }
    }
    Ok(Loaded {
        mem,
        pvh,
        end: result.kernel_end,
        segments: segments.len(),
    })
}

/// The first guest address where the two loads differ, if any.
fn first_difference(a: &GuestMemoryMmap<()>, b: &GuestMemoryMmap<()>) -> Option<u64> {
    const CHUNK: usize = 1 << 20;
    let (mut x, mut y) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    for start in (0..MEM_BYTES).step_by(CHUNK) {
        a.read_slice(&mut x, GuestAddress(start as u64)).ok()?;
        b.read_slice(&mut y, GuestAddress(start as u64)).ok()?;
        if let Some(i) = (0..CHUNK).find(|&i| x[i] != y[i]) {
            return Some((start + i) as u64);
        }
    }
    None
}

fn run(args: &[String]) -> Result<String, String> {
    let path = &args[0];
    let got = check(path)?;
    let mut line = format!(
        "linux-loader loaded {path}: {} PT_LOAD segments match, PVH entry {:#x}, kernel end {:#x}",
        got.segments, got.pvh, got.end
    );
    if let Some(reference) = args.get(1) {
        let want = check(reference)?;
        if (got.pvh, got.end) != (want.pvh, want.end) {
            return Err(format!(
                "{path}: PVH entry {:#x}, kernel end {:#x}; {reference}: {:#x}, {:#x}",
                got.pvh, got.end, want.pvh, want.end
            ));
        }
        if let Some(at) = first_difference(&got.mem, &want.mem) {
            return Err(format!(
                "guest memory differs at {at:#x} between {path} and {reference}"
            ));
        }
        line.push_str(&format!("; guest memory identical to {reference}'s"));
    }
    Ok(line)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !(2..=3).contains(&args.len()) {
        eprintln!("usage: cloudhv-vmlinux-loader-check VMLINUX [REFERENCE]");
        exit(2);
    }
    match run(&args[1..]) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("loader-check: {e}");
            exit(1);
        }
    }
}
