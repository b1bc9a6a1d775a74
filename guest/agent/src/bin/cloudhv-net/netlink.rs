//! rtnetlink over a NETLINK_ROUTE socket: messages built from the kernel's documented structs
//! (linux/netlink.h, rtnetlink.h, if_link.h, pkt_sched.h, pkt_cls.h, tc_act/tc_mirred.h). A
//! socket belongs to the netns of the thread that opened it.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_GETADDR: u16 = 22;
pub const RTM_GETROUTE: u16 = 26;
pub const RTM_NEWQDISC: u16 = 36;
pub const RTM_DELQDISC: u16 = 37;
pub const RTM_NEWTFILTER: u16 = 44;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// In an error reply: only the request's header is echoed, and TLVs follow.
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NETLINK_CAP_ACK: libc::c_int = 10;

/// A request the kernel refused: its errno and, where it gave one, its own explanation.
#[derive(Debug)]
pub struct NlError {
    pub errno: i32,
    pub detail: Option<String>,
}

impl fmt::Display for NlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.errno))?;
        match &self.detail {
            Some(d) => write!(f, ": {d}"),
            None => Ok(()),
        }
    }
}

impl From<io::Error> for NlError {
    fn from(e: io::Error) -> Self {
        NlError {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
            detail: None,
        }
    }
}

/// One request: header, fixed body, attributes (nested ones closed by `end`).
pub struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

fn pad4(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

impl Msg {
    pub fn new(kind: u16, flags: u16, body: &[u8]) -> Msg {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(body);
        pad4(&mut buf);
        Msg {
            buf,
            nests: Vec::new(),
        }
    }

    pub fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Msg {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        pad4(&mut self.buf);
        self
    }

    pub fn attr_u32(&mut self, kind: u16, v: u32) -> &mut Msg {
        self.attr(kind, &v.to_ne_bytes())
    }

    /// A NUL-terminated string attribute.
    pub fn attr_str(&mut self, kind: u16, s: &str) -> &mut Msg {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.attr(kind, &data)
    }

    pub fn nest(&mut self, kind: u16) -> &mut Msg {
        self.nests.push(self.buf.len());
        self.attr(kind, &[])
    }

    pub fn end(&mut self) -> &mut Msg {
        let start = self.nests.pop().expect("end without nest");
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    #[cfg(test)]
    pub fn bytes(&self) -> &[u8] {
        &self.buf[16..]
    }

    fn finish(&mut self, seq: u32) -> &[u8] {
        assert!(self.nests.is_empty(), "unclosed nest");
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.buf
    }
}

/// The attributes in `data` as (type without the nested/byte-order flags, payload).
pub fn attrs(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            break;
        }
        out.push((kind, &data[4..len]));
        let next = (len + 3) & !3;
        data = &data[next.min(data.len())..];
    }
    out
}

pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    /// A socket in the calling thread's current netns.
    pub fn open() -> io::Result<Socket> {
        // SAFETY: plain syscalls; the fd is owned at once.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a new fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        for opt in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
            let on: libc::c_int = 1;
            // SAFETY: a valid int option on our socket. Best effort: older kernels lack them.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    SOL_NETLINK,
                    opt,
                    &on as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        Ok(Socket { fd, seq: 0 })
    }

    fn send(&mut self, msg: &mut Msg) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = msg.finish(seq);
        // SAFETY: sends our own buffer to the kernel (pid 0).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr() as *const libc::c_void,
                bytes.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(seq)
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: receives into our own buffer.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            if n > buf.len() {
                return Err(io::Error::other("netlink reply larger than the buffer"));
            }
            return Ok(n);
        }
    }

    /// Sends `msg` with NLM_F_ACK and waits for the kernel's answer.
    pub fn request(&mut self, mut msg: Msg) -> Result<(), NlError> {
        let flags = u16::from_ne_bytes([msg.buf[6], msg.buf[7]]) | NLM_F_ACK;
        msg.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        let seq = self.send(&mut msg)?;
        self.replies(seq, |_, _| {})
    }

    /// Sends a dump request; every reply message's payload (after the header) goes to `each`.
    pub fn dump(&mut self, mut msg: Msg, mut each: impl FnMut(u16, &[u8])) -> Result<(), NlError> {
        let flags = u16::from_ne_bytes([msg.buf[6], msg.buf[7]]) | NLM_F_DUMP;
        msg.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        let seq = self.send(&mut msg)?;
        self.replies(seq, &mut each)
    }

    /// Reads replies to `seq` until its ack, error or dump end.
    fn replies(&mut self, seq: u32, mut each: impl FnMut(u16, &[u8])) -> Result<(), NlError> {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self.recv(&mut buf)?;
            let mut data = &buf[..n];
            while data.len() >= 16 {
                let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
                let kind = u16::from_ne_bytes([data[4], data[5]]);
                let flags = u16::from_ne_bytes([data[6], data[7]]);
                let got = u32::from_ne_bytes(data[8..12].try_into().unwrap());
                if len < 16 || len > data.len() {
                    return Err(io::Error::other("malformed netlink reply").into());
                }
                let payload = &data[16..len];
                data = &data[((len + 3) & !3).min(data.len())..];
                if got != seq {
                    continue;
                }
                match kind {
                    NLMSG_ERROR => return error_reply(flags, payload),
                    NLMSG_DONE => return Ok(()),
                    _ => {
                        each(kind, payload);
                        if flags & NLM_F_MULTI == 0 {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

/// An NLMSG_ERROR payload: errno 0 is the ack; otherwise the error with the kernel's message.
fn error_reply(flags: u16, payload: &[u8]) -> Result<(), NlError> {
    if payload.len() < 4 {
        return Err(io::Error::other("short netlink error").into());
    }
    let errno = -i32::from_ne_bytes(payload[0..4].try_into().unwrap());
    if errno == 0 {
        return Ok(());
    }
    let mut detail = None;
    if flags & NLM_F_ACK_TLVS != 0 && payload.len() >= 20 {
        // The request's header follows (its payload too unless capped), then the TLVs.
        let echoed = if flags & NLM_F_CAPPED != 0 {
            16
        } else {
            u32::from_ne_bytes(payload[4..8].try_into().unwrap()) as usize
        };
        let start = (4 + echoed).min(payload.len());
        for (kind, data) in attrs(&payload[start..]) {
            if kind == NLMSGERR_ATTR_MSG {
                let text = data.split(|b| *b == 0).next().unwrap_or_default();
                detail = Some(String::from_utf8_lossy(text).into_owned());
            }
        }
    }
    Err(NlError { errno, detail })
}

/// struct ifinfomsg: family, type, index, flags, change.
pub fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// struct tcmsg: family (unspec), ifindex, handle, parent, info.
pub fn tcmsg(ifindex: i32, handle: u32, parent: u32, info: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    b[8..12].copy_from_slice(&handle.to_ne_bytes());
    b[12..16].copy_from_slice(&parent.to_ne_bytes());
    b[16..20].copy_from_slice(&info.to_ne_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_carry_their_length_and_padding() {
        let mut m = Msg::new(RTM_NEWTFILTER, 0, &tcmsg(3, 0, 0xffff_0000, 0x0008));
        m.attr_str(1, "u32");
        m.nest(2).attr_u32(1, 0x0001_0001).end();
        let b = m.bytes();
        assert_eq!(b.len(), 20 + 8 + 12);
        let top = attrs(&b[20..]);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0], (1, &b"u32\0"[..]));
        assert_eq!(top[1].0, 2);
        assert_eq!(
            attrs(top[1].1),
            vec![(1u16, &0x0001_0001u32.to_ne_bytes()[..])]
        );
    }

    #[test]
    fn an_error_reply_gives_errno_and_the_kernels_message() {
        let mut p = (-17i32).to_ne_bytes().to_vec();
        p.extend_from_slice(&[0u8; 16]); // the capped echo of the request's header
        p.extend_from_slice(&(4u16 + 7).to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(b"in use\0\0");
        let e = error_reply(NLM_F_CAPPED | NLM_F_ACK_TLVS, &p).unwrap_err();
        assert_eq!(e.errno, libc::EEXIST);
        assert_eq!(e.detail.as_deref(), Some("in use"));
        assert!(error_reply(0, &0i32.to_ne_bytes()).is_ok());
    }
}
