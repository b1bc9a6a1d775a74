//! The virtio-serial transport. A serial port has no accept(): the ttrpc server listens on an
//! internal unix socket and this bridge copies bytes between the port and one client
//! connection of that socket. Host disconnect (virtio_console: read() returns 0 and poll()
//! reports POLLHUP while the host side is closed) ends the session: the unix connection is
//! closed, bytes in flight are dropped, and a fresh connection is made when the host returns.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const DEFAULT_PORT_NAME: &str = "io.cloudhv.agent";
pub const SYSFS_VIRTIO_PORTS: &str = "/sys/class/virtio-ports";

/// Set once the port has been found (for the "no transport at all" warning).
pub static PORT_FOUND: AtomicBool = AtomicBool::new(false);

/// The device name (e.g. `vport0p1`) of the virtio-serial port called `name`, looking in a
/// sysfs class directory laid out like /sys/class/virtio-ports/<dev>/name.
pub fn find_port(class_dir: &Path, name: &str) -> Option<String> {
    let mut devs: Vec<String> = fs::read_dir(class_dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    devs.sort();
    devs.into_iter().find(|dev| {
        fs::read_to_string(class_dir.join(dev).join("name"))
            .map(|n| n.trim_end_matches(['\n', '\0']) == name)
            .unwrap_or(false)
    })
}

/// Looks for the port until found: every 50 ms for the first 10 s, then every second.
pub fn discover(class_dir: &Path, dev_dir: &Path, name: &str) -> PathBuf {
    let start = Instant::now();
    let mut warned = false;
    loop {
        if let Some(dev) = find_port(class_dir, name) {
            let path = dev_dir.join(&dev);
            if path.exists() {
                return path;
            }
        }
        let waited = start.elapsed();
        if waited >= Duration::from_secs(10) && !warned {
            crate::warn!("no virtio-serial port named {name} after 10 s; still looking");
            warned = true;
        }
        std::thread::sleep(if waited < Duration::from_secs(10) {
            Duration::from_millis(50)
        } else {
            Duration::from_secs(1)
        });
    }
}

fn poll1(fd: RawFd, events: i16, timeout_ms: i32) -> io::Result<i16> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    loop {
        let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if r >= 0 {
            return Ok(p.revents);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn write_fd(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

#[derive(Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The host closed its side of the port.
    HostDisconnected,
    /// The ttrpc server closed the unix connection.
    ServerClosed,
}

const BUF: usize = 64 * 1024;

/// Copies bytes between the (non-blocking) port and a unix connection until one side ends.
/// Errors other than EOF/hang-up (e.g. the port was unplugged) are returned.
pub fn bridge_session(port: RawFd, conn: &UnixStream) -> io::Result<SessionEnd> {
    conn.set_nonblocking(true)?;
    let sock = conn.as_raw_fd();
    let mut to_sock: Vec<u8> = Vec::with_capacity(BUF);
    let mut to_port: Vec<u8> = Vec::with_capacity(BUF);
    let mut buf = vec![0u8; BUF];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: port,
                events: if to_sock.is_empty() { libc::POLLIN } else { 0 }
                    | if to_port.is_empty() { 0 } else { libc::POLLOUT },
                revents: 0,
            },
            libc::pollfd {
                fd: sock,
                events: if to_port.is_empty() { libc::POLLIN } else { 0 }
                    | if to_sock.is_empty() { 0 } else { libc::POLLOUT },
                revents: 0,
            },
        ];
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let (prev, srev) = (fds[0].revents, fds[1].revents);
        // Host gone: whatever it sent or is owed belongs to a dead connection.
        if prev & libc::POLLHUP != 0 {
            return Ok(SessionEnd::HostDisconnected);
        }
        if prev & libc::POLLERR != 0 {
            return Err(io::Error::other("virtio-serial port error"));
        }
        if prev & libc::POLLIN != 0 && to_sock.is_empty() {
            match read_fd(port, &mut buf) {
                Ok(0) => return Ok(SessionEnd::HostDisconnected),
                Ok(n) => to_sock.extend_from_slice(&buf[..n]),
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if srev & libc::POLLIN != 0 && to_port.is_empty() {
            match read_fd(sock, &mut buf) {
                Ok(0) => return Ok(SessionEnd::ServerClosed),
                Ok(n) => to_port.extend_from_slice(&buf[..n]),
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        } else if srev & (libc::POLLHUP | libc::POLLERR) != 0 && srev & libc::POLLIN == 0 {
            return Ok(SessionEnd::ServerClosed);
        }
        if !to_sock.is_empty() {
            match write_fd(sock, &to_sock) {
                Ok(n) => {
                    to_sock.drain(..n);
                }
                Err(e) if would_block(&e) => {}
                Err(_) => return Ok(SessionEnd::ServerClosed),
            }
        }
        if !to_port.is_empty() {
            match write_fd(port, &to_port) {
                Ok(n) => {
                    to_port.drain(..n);
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Whether the host has the port open: virtio_console reports POLLHUP while it has not.
/// Sleeps `nap` when it has not, so callers can loop without spinning.
fn wait_host(port: RawFd, nap: Duration) -> io::Result<bool> {
    let rev = poll1(port, libc::POLLIN, 0)?;
    if rev & libc::POLLERR != 0 || rev & libc::POLLNVAL != 0 {
        return Err(io::Error::other("virtio-serial port error"));
    }
    if rev & libc::POLLHUP != 0 {
        // A host that connected, wrote and left while we slept leaves its bytes queued in the
        // port: they belong to a dead connection and must not reach the next host's session.
        drain(port);
        std::thread::sleep(nap);
        return Ok(false);
    }
    Ok(true)
}

/// Discards what is queued in the port (reads until EOF/EAGAIN). Returns the byte count.
fn drain(port: RawFd) -> usize {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    while let Ok(n) = read_fd(port, &mut buf) {
        if n == 0 {
            break;
        }
        total += n;
    }
    total
}

fn open_port(path: &Path) -> io::Result<OwnedFd> {
    let c =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs forever: finds the port, bridges every host connection to a fresh connection of the
/// ttrpc server's unix socket, and starts over if the port goes away.
pub fn run_bridge(name: &str, unix_path: &Path) -> ! {
    loop {
        let path = discover(Path::new(SYSFS_VIRTIO_PORTS), Path::new("/dev"), name);
        let port = match open_port(&path) {
            Ok(fd) => fd,
            Err(e) => {
                crate::error!("open {}: {e}; retrying", path.display());
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        PORT_FOUND.store(true, Ordering::SeqCst);
        crate::info!("virtio-serial port {name} is {}", path.display());
        if let Err(e) = serve_port(port.as_raw_fd(), unix_path) {
            crate::error!("virtio-serial port {}: {e}; reopening", path.display());
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn serve_port(port: RawFd, unix_path: &Path) -> io::Result<()> {
    let mut sessions = 0u64;
    loop {
        if !wait_host(port, Duration::from_millis(50))? {
            continue;
        }
        let conn = match UnixStream::connect(unix_path) {
            Ok(c) => c,
            Err(e) => {
                crate::error!("connect {}: {e}", unix_path.display());
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        sessions += 1;
        crate::info!("host connected on virtio-serial (session {sessions})");
        match bridge_session(port, &conn)? {
            SessionEnd::HostDisconnected => {
                // Drop anything the old host left unread in the port's queue.
                let dropped = drain(port);
                crate::info!(
                    "host disconnected from virtio-serial (session {sessions}, {dropped} unread bytes dropped)"
                );
            }
            SessionEnd::ServerClosed => {
                crate::warn!("agent server closed the bridged connection; reconnecting")
            }
        }
        drop(conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cloudhv-agent-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn finds_port_by_name_in_fake_sysfs() {
        let d = tmpdir("sysfs");
        for (dev, name) in [
            ("vport0p0", ""),
            ("vport1p1", "org.qemu.guest_agent.0\n"),
            ("vport1p2", "io.cloudhv.agent\n"),
        ] {
            fs::create_dir_all(d.join(dev)).unwrap();
            fs::write(d.join(dev).join("name"), name).unwrap();
        }
        fs::create_dir_all(d.join("vport2p1")).unwrap(); // no name file
        assert_eq!(
            find_port(&d, "io.cloudhv.agent").as_deref(),
            Some("vport1p2")
        );
        assert_eq!(find_port(&d, "io.cloudhv"), None);
        assert_eq!(find_port(&d.join("missing"), "io.cloudhv.agent"), None);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn discover_waits_for_late_port() {
        let d = tmpdir("late");
        let (class, dev) = (d.join("class"), d.join("dev"));
        fs::create_dir_all(&class).unwrap();
        fs::create_dir_all(&dev).unwrap();
        let (c2, d2) = (class.clone(), dev.clone());
        let t = std::thread::spawn(move || discover(&c2, &d2, "io.cloudhv.agent"));
        std::thread::sleep(Duration::from_millis(200));
        fs::create_dir_all(class.join("vport0p1")).unwrap();
        fs::write(class.join("vport0p1/name"), "io.cloudhv.agent\n").unwrap();
        fs::write(dev.join("vport0p1"), "").unwrap();
        assert_eq!(t.join().unwrap(), dev.join("vport0p1"));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bridge_copies_both_ways_and_ends_on_host_close() {
        let d = tmpdir("bridge");
        let sock = d.join("s.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        // Echo server standing in for ttrpc.
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            loop {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => c.write_all(&buf[..n]).unwrap(),
                }
            }
        });
        // A socketpair stands in for the port: `host` is the host's end.
        let (port, mut host) = UnixStream::pair().unwrap();
        port.set_nonblocking(true).unwrap();
        let conn = UnixStream::connect(&sock).unwrap();
        let pfd = port.as_raw_fd();
        let bridge = std::thread::spawn(move || bridge_session(pfd, &conn));
        let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        host.write_all(&big).unwrap();
        let mut back = vec![0u8; big.len()];
        host.read_exact(&mut back).unwrap();
        assert!(back == big);
        drop(host);
        assert_eq!(
            bridge.join().unwrap().unwrap(),
            SessionEnd::HostDisconnected
        );
        server.join().unwrap(); // the bridged connection was closed
        drop(port);
        fs::remove_dir_all(&d).unwrap();
    }
}
