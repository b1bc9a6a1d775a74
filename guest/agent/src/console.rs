//! Terminals: crun hands the pty master of a terminal process over a console socket
//! (`--console-socket`) as an SCM_RIGHTS message.

use std::fs::{self, File};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::crun::{CRUN_TIMEOUT, wait_crun};
use crate::error::{Result, internal};
use crate::reaper::{ExitStatus, Reaper};

/// Console sockets live apart from the state dirs: a unix socket path has at most 107 bytes
/// and container and exec ids may be 128 characters each.
const CONSOLE_DIR: &str = "/run/cloudhv/console";

static CONSOLE_SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh console socket path (a counter names it: ids are too long for a socket path).
pub(crate) fn socket_path() -> PathBuf {
    Path::new(CONSOLE_DIR).join(format!(
        "{}.sock",
        CONSOLE_SEQ.fetch_add(1, Ordering::SeqCst)
    ))
}

/// Binds the console socket crun connects to, non-blocking (see [`wait_with_console`]).
pub(crate) fn listen(console: &Path) -> Result<UnixListener> {
    fs::create_dir_all(CONSOLE_DIR).map_err(|e| internal(format!("mkdir {CONSOLE_DIR}: {e}")))?;
    let _ = fs::remove_file(console);
    let l = UnixListener::bind(console)
        .map_err(|e| internal(format!("console socket {}: {e}", console.display())))?;
    l.set_nonblocking(true)
        .map_err(|e| internal(format!("console socket: {e}")))?;
    Ok(l)
}

/// Accepts crun's console-socket connection and receives the pty master, while watching for
/// crun to exit (it sends the fd before it exits, so after its exit one more accept is tried).
pub(crate) fn wait_with_console(
    reaper: &Reaper,
    crun_pid: i32,
    listener: &UnixListener,
) -> (
    std::result::Result<ExitStatus, crate::reaper::WaitError>,
    Option<File>,
) {
    let deadline = Instant::now() + CRUN_TIMEOUT;
    let mut pty = None;
    let mut status = None;
    while pty.is_none() {
        match listener.accept() {
            Ok((conn, _)) => {
                pty = receive_fd(&conn);
                if pty.is_none() {
                    crate::warn!("console socket: a connection without a pty fd");
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                crate::error!("console socket accept: {e}");
                break;
            }
        }
        if status.is_some() {
            break; // crun is gone and nothing is queued: it sent nothing
        }
        if Instant::now() > deadline {
            break;
        }
        match reaper.wait_pid(crun_pid, Some(Duration::from_millis(5))) {
            Ok(st) => status = Some(st),
            Err(crate::reaper::WaitError::TimedOut(_)) => {}
            Err(e) => return (Err(e), pty),
        }
    }
    let status = match status {
        Some(s) => Ok(s),
        None => wait_crun(reaper, crun_pid),
    };
    (status, pty)
}

/// Receives one fd sent with SCM_RIGHTS (crun's console socket protocol).
fn receive_fd(conn: &std::os::unix::net::UnixStream) -> Option<File> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    let mut first = None;
    for cmsg in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: the kernel just gave us these descriptors; nothing else owns them.
                let file = unsafe { File::from_raw_fd(fd) };
                if first.is_none() {
                    first = Some(file);
                }
            }
        }
    }
    first
}
