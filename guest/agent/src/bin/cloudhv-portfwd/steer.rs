//! Steers every TCP connection to 127.0.0.1 in this netns to our listener with a BPF sk_lookup
//! program attached to the netns (Linux ≥ 5.9): no iptables and no nat table needed, and no rule
//! to remove, since the attachment (a BPF link) goes with this process. A steered connection
//! keeps its destination: the port asked for is the accepted socket's own local port.
//!
//! The program, in BPF instructions (linux/bpf.h): for a TCP lookup of 127.0.0.1, take the
//! listener from a one-slot sockmap and select it (`bpf_sk_assign`); every lookup passes on.

use std::fs::File;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_SOCKMAP: u32 = 15;
const BPF_PROG_TYPE_SK_LOOKUP: u32 = 30;
const BPF_SK_LOOKUP: u32 = 36;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_SK_RELEASE: i32 = 86;
const HELPER_SK_ASSIGN: i32 = 124;
/// struct bpf_sk_lookup: protocol, local_ip4 (network order).
const CTX_PROTOCOL: i16 = 12;
const CTX_LOCAL_IP4: i16 = 40;
const SK_PASS: i32 = 1;

/// What keeps the steering in place; dropping it (or exiting) removes it.
pub struct Steering {
    _map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
}

/// One instruction: opcode, dst and src registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (src << 4) | dst;
    b[2..4].copy_from_slice(&off.to_ne_bytes());
    b[4..8].copy_from_slice(&imm.to_ne_bytes());
    b
}

fn program(map_fd: RawFd) -> Vec<u8> {
    const PASS: i16 = 19;
    let loopback = i32::from_ne_bytes([127, 0, 0, 1]);
    let at = |i: i16| PASS - i - 1; // a jump's offset from instruction i to PASS
    [
        insn(0xbf, 6, 1, 0, 0),                      // 0: r6 = ctx
        insn(0x61, 2, 6, CTX_PROTOCOL, 0),           // 1: r2 = protocol
        insn(0x55, 2, 0, at(2), libc::IPPROTO_TCP),  // 2: not TCP: pass
        insn(0x61, 2, 6, CTX_LOCAL_IP4, 0),          // 3: r2 = local_ip4
        insn(0x55, 2, 0, at(4), loopback),           // 4: not 127.0.0.1: pass
        insn(0x62, 10, 0, -4, 0),                    // 5: key = 0 on the stack
        insn(0xbf, 2, 10, 0, 0),                     // 6: r2 = fp
        insn(0x07, 2, 0, 0, -4),                     // 7: r2 = &key
        insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map_fd), // 8: r1 = the sockmap
        insn(0, 0, 0, 0, 0),                         // 9: (its upper half)
        insn(0x85, 0, 0, 0, HELPER_MAP_LOOKUP_ELEM), // 10: r0 = listener
        insn(0x15, 0, 0, at(11), 0),                 // 11: none: pass
        insn(0xbf, 7, 0, 0, 0),                      // 12: r7 = listener
        insn(0xbf, 1, 6, 0, 0),                      // 13: r1 = ctx
        insn(0xbf, 2, 7, 0, 0),                      // 14: r2 = listener
        insn(0xb7, 3, 0, 0, 0),                      // 15: r3 = flags 0
        insn(0x85, 0, 0, 0, HELPER_SK_ASSIGN),       // 16: select it
        insn(0xbf, 1, 7, 0, 0),                      // 17: r1 = listener
        insn(0x85, 0, 0, 0, HELPER_SK_RELEASE),      // 18: drop our reference
        insn(0xb7, 0, 0, 0, SK_PASS),                // 19 (PASS): r0 = SK_PASS
        insn(0x95, 0, 0, 0, 0),                      // 20: exit
    ]
    .concat()
}

/// bpf(2) with `attr` (a zeroed union bpf_attr with the command's fields set); a new fd.
fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<libc::c_long> {
    // SAFETY: attr is a buffer of the size passed; the kernel reads only the command's fields.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

fn put32(attr: &mut [u8; 128], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(attr: &mut [u8; 128], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: a new fd from bpf(2), owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// Steers this netns's TCP connections to 127.0.0.1 to `listener` (in the netns `netns`).
pub fn steer(netns: &File, listener: &TcpListener) -> io::Result<Steering> {
    let step = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));

    let mut attr = [0u8; 128];
    put32(&mut attr, 0, BPF_MAP_TYPE_SOCKMAP);
    put32(&mut attr, 4, 4); // key: u32
    put32(&mut attr, 8, 8); // value: the socket's fd
    put32(&mut attr, 12, 1);
    let map = owned(bpf(BPF_MAP_CREATE, &mut attr).map_err(|e| step("sockmap", e))?);

    let key = 0u32;
    let value = listener.as_raw_fd() as u64;
    let mut attr = [0u8; 128];
    put32(&mut attr, 0, map.as_raw_fd() as u32);
    put64(&mut attr, 8, &key as *const u32 as u64);
    put64(&mut attr, 16, &value as *const u64 as u64);
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map_err(|e| step("sockmap insert", e))?;

    let insns = program(map.as_raw_fd());
    let license = b"Dual MIT/GPL\0";
    let mut log = vec![0u8; 16 * 1024];
    let mut attr = [0u8; 128];
    put32(&mut attr, 0, BPF_PROG_TYPE_SK_LOOKUP);
    put32(&mut attr, 4, (insns.len() / 8) as u32);
    put64(&mut attr, 8, insns.as_ptr() as u64);
    put64(&mut attr, 16, license.as_ptr() as u64);
    put32(&mut attr, 24, 1); // log_level: the verifier says why, if it refuses
    put32(&mut attr, 28, log.len() as u32);
    put64(&mut attr, 32, log.as_mut_ptr() as u64);
    put32(&mut attr, 68, BPF_SK_LOOKUP); // expected_attach_type
    let prog = owned(bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let text = String::from_utf8_lossy(log.split(|b| *b == 0).next().unwrap_or_default());
        let tail: String = text.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
        step(
            "loading the sk_lookup program",
            io::Error::new(e.kind(), format!("{e} ({tail})")),
        )
    })?);

    let mut attr = [0u8; 128];
    put32(&mut attr, 0, prog.as_raw_fd() as u32);
    put32(&mut attr, 4, netns.as_raw_fd() as u32);
    put32(&mut attr, 8, BPF_SK_LOOKUP);
    let link =
        owned(bpf(BPF_LINK_CREATE, &mut attr).map_err(|e| step("attaching it to the netns", e))?);
    Ok(Steering {
        _map: map,
        _prog: prog,
        _link: link,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_lands_on_the_pass_instruction() {
        let p = program(7);
        let insns: Vec<&[u8]> = p.chunks(8).collect();
        assert_eq!(insns.len(), 21);
        for (i, ins) in insns.iter().enumerate() {
            if ins[0] == 0x55 || ins[0] == 0x15 {
                let off = i16::from_ne_bytes([ins[2], ins[3]]) as usize;
                let target = insns[i + 1 + off];
                assert_eq!((target[0], target[4]), (0xb7, SK_PASS as u8), "jump at {i}");
            }
        }
        assert_eq!(insns[8][1], (BPF_PSEUDO_MAP_FD << 4) | 1);
        assert_eq!(i32::from_ne_bytes(insns[8][4..8].try_into().unwrap()), 7);
    }
}
