//! cloudhv-portfwd: the host half of CRI port-forward for one pod (runs on the node, not in
//! the guest; it lives in this crate to share its toolchain and crate versions).
//!
//! containerd's CRI answers PortForward by dialling 127.0.0.1:PORT inside the pod's network
//! namespace on the host, where nothing listens: the server runs in the VM. This process enters
//! that netns, listens on 127.0.0.1:LISTEN_PORT (a listener created in a netns stays in it), and
//! steers every TCP connection to 127.0.0.1 there to that listener with a BPF sk_lookup program
//! (steer.rs; it says `ready sk_lookup`). Where the kernel cannot, it says `ready` and the shim
//! daemon adds an iptables nat OUTPUT rule that redirects them instead. For each connection it
//! reads the port that was asked for (its own local port, or SO_ORIGINAL_DST behind the nat
//! rule), connects to the daemon's unix socket (a path, reachable from any netns), sends the
//! port as two big-endian bytes and relays bytes both ways. The daemon carries them to the
//! guest agent. It dies with the daemon (PR_SET_PDEATHSIG).

mod steer;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Connections relayed at once; more are closed at once (the agent's own limit is 64).
const MAX_ACTIVE: usize = 64;

const USAGE: &str =
    "usage: cloudhv-portfwd --netns PATH --listen-port PORT --relay UNIX_SOCKET [--no-sk-lookup]";

fn die(msg: &str) -> ! {
    eprintln!("cloudhv-portfwd: {msg}");
    std::process::exit(1)
}

fn main() {
    let mut netns = None;
    let mut port: Option<u16> = None;
    let mut relay = None;
    let mut sk_lookup = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| die(USAGE));
        match a.as_str() {
            "--netns" => netns = Some(val()),
            "--listen-port" => {
                port = Some(
                    val()
                        .parse()
                        .unwrap_or_else(|_| die("--listen-port: not a port")),
                )
            }
            "--relay" => relay = Some(val()),
            "--no-sk-lookup" => sk_lookup = false,
            _ => die(USAGE),
        }
    }
    let (Some(netns), Some(port), Some(relay)) = (netns, port, relay) else {
        die(USAGE)
    };

    // SAFETY: plain prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    if nix::unistd::getppid().as_raw() == 1 {
        die("the daemon is gone already");
    }

    let ns = std::fs::File::open(&netns).unwrap_or_else(|e| die(&format!("{netns}: {e}")));
    // SAFETY: setns on an fd we own; the process has one thread so far.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        die(&format!(
            "setns {netns}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let listener = TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| die(&format!("listen on 127.0.0.1:{port} in {netns}: {e}")));
    // Kept for as long as this process lives; the kernel removes it with the process.
    let steering = sk_lookup.then(|| steer::steer(&ns, &listener));
    drop(ns);
    // The daemon waits for this line: steered here already, or for its nat rule.
    match &steering {
        Some(Ok(_)) => println!("ready sk_lookup"),
        Some(Err(e)) => {
            eprintln!("cloudhv-portfwd: no sk_lookup ({e}): the daemon's nat rule redirects");
            println!("ready");
        }
        None => println!("ready"),
    }
    let _ = std::io::stdout().flush();

    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        if active.load(Ordering::Relaxed) >= MAX_ACTIVE {
            continue; // dropped: closed
        }
        active.fetch_add(1, Ordering::Relaxed);
        let active = active.clone();
        let relay = relay.clone();
        let spawned = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                if let Err(e) = serve(conn, &relay, port) {
                    eprintln!("cloudhv-portfwd: connection: {e}");
                }
                active.fetch_sub(1, Ordering::Relaxed);
            });
        if spawned.is_err() {
            eprintln!("cloudhv-portfwd: cannot start a relay thread");
        }
    }
}

/// The destination port the client asked for before the nat rule redirected it here.
fn original_port(conn: &TcpStream) -> std::io::Result<u16> {
    // SAFETY: getsockopt writes at most `len` bytes into `addr`, a plain C struct.
    unsafe {
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        const SO_ORIGINAL_DST: libc::c_int = 80;
        if libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            &mut addr as *mut _ as *mut libc::c_void,
            &mut len,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(u16::from_be(addr.sin_port))
    }
}

fn serve(tcp: TcpStream, relay: &str, listen_port: u16) -> std::io::Result<()> {
    // Steered by sk_lookup, the connection kept the port asked for; behind the nat rule, it
    // arrived on the listener's own.
    let port = match tcp.local_addr()?.port() {
        p if p != listen_port => p,
        _ => original_port(&tcp)?,
    };
    let _ = tcp.set_nodelay(true);
    let mut unix = UnixStream::connect(relay)?;
    unix.write_all(&port.to_be_bytes())?;
    let (mut tcp_r, mut unix_w) = (tcp.try_clone()?, unix.try_clone()?);
    let up = std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || {
            let _ = copy(&mut tcp_r, &mut unix_w);
            let _ = unix_w.shutdown(Shutdown::Write);
        })?;
    let mut tcp_w = tcp;
    let _ = copy(&mut unix, &mut tcp_w);
    let _ = tcp_w.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}

fn copy(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<u64> {
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}
