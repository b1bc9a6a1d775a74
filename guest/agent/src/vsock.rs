//! The vsock transport (Cloud Hypervisor's hybrid vsock: the host connects to a unix socket
//! and sends `CONNECT <port>\n`; the guest sees an ordinary AF_VSOCK connection).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const DEFAULT_PORT: u32 = 1024;

pub static VSOCK_SERVING: AtomicBool = AtomicBool::new(false);

/// `IOCTL_VM_SOCKETS_GET_LOCAL_CID` from <linux/vm_sockets.h>.
const IOCTL_VM_SOCKETS_GET_LOCAL_CID: libc::c_ulong = 0x7b9;

/// The guest's own CID when a guest vsock transport (virtio-vsock) is registered. The ioctl
/// answers VMADDR_CID_ANY without a transport, 1 for loopback only; guests have CID >= 3.
pub fn local_cid() -> Option<u32> {
    let f = std::fs::File::open("/dev/vsock").ok()?;
    let mut cid: u32 = u32::MAX;
    let r = unsafe { libc::ioctl(f.as_raw_fd(), IOCTL_VM_SOCKETS_GET_LOCAL_CID as _, &mut cid) };
    (r == 0 && cid >= 3 && cid != u32::MAX).then_some(cid)
}

/// Waits for a vsock device (every 100 ms for 10 s, then every 5 s), then serves on it.
/// Returns the started server, which must be kept alive.
pub fn wait_and_serve(
    port: u32,
    build: &dyn Fn(&str) -> ttrpc::Result<ttrpc::Server>,
) -> ttrpc::Server {
    let start = Instant::now();
    loop {
        if let Some(cid) = local_cid() {
            let addr = format!("vsock://-1:{port}");
            match build(&addr) {
                Ok(server) => {
                    VSOCK_SERVING.store(true, Ordering::SeqCst);
                    crate::info!("serving on vsock port {port} (guest cid {cid})");
                    return server;
                }
                Err(e) => crate::error!("vsock listen on port {port}: {e}; retrying"),
            }
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        std::thread::sleep(if start.elapsed() < Duration::from_secs(10) {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        });
    }
}
