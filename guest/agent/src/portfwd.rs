//! Port-forward connections (CRI PortForward). The host asks for a port; the agent dials it on
//! the guest's loopback, where the containers' network is, and keeps the connection under an
//! id. Bytes from the guest go through a bounded StreamBuffer that the host drains with
//! PortForwardRead; bytes from the host are written straight to the socket. Only the host
//! opens connections, and at most MAX_CONNS are open at once.

use std::collections::HashMap;
use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::{Result, err, internal};
use crate::stream::StreamBuffer;

/// Open connections per VM; kubectl opens one per local connection.
pub const MAX_CONNS: usize = 64;
/// Largest PortForwardWrite payload.
pub const MAX_WRITE: usize = 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct Conn {
    socket: Arc<TcpStream>,
    from_guest: Arc<StreamBuffer>,
}

#[derive(Default)]
pub struct PortForwards {
    conns: Mutex<HashMap<u64, Conn>>,
    next: AtomicU64,
}

impl PortForwards {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Conn>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Dials 127.0.0.1:port, then [::1]:port (a server may listen on one family only).
    pub fn open(&self, port: u32) -> Result<u64> {
        if port == 0 || port > 65535 {
            return err(
                ttrpc::Code::INVALID_ARGUMENT,
                format!("port-forward: port {port} is not 1 to 65535"),
            );
        }
        if self.lock().len() >= MAX_CONNS {
            return err(
                ttrpc::Code::RESOURCE_EXHAUSTED,
                format!("port-forward: {MAX_CONNS} connections are already open in this pod"),
            );
        }
        let port = port as u16;
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        let socket = TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT)
            .or_else(|e4| TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|e6| (e4, e6)))
            .or_else(|(e4, e6)| {
                err(
                    ttrpc::Code::UNAVAILABLE,
                    format!(
                        "port-forward: nothing accepts connections on port {port} in the pod \
                         (127.0.0.1: {e4}; ::1: {e6})"
                    ),
                )
            })?;
        let _ = socket.set_nodelay(true);
        let reader = socket
            .try_clone()
            .map_err(|e| internal(format!("port-forward: {e}")))?;
        let from_guest = StreamBuffer::new();
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut conns = self.lock();
        if conns.len() >= MAX_CONNS {
            // Raced another open: this one loses.
            return err(
                ttrpc::Code::RESOURCE_EXHAUSTED,
                format!("port-forward: {MAX_CONNS} connections are already open in this pod"),
            );
        }
        from_guest.pump(File::from(OwnedFd::from(reader)), &format!("pf-{id}"));
        conns.insert(
            id,
            Conn {
                socket: Arc::new(socket),
                from_guest,
            },
        );
        Ok(id)
    }

    fn get(&self, id: u64) -> Result<(Arc<TcpStream>, Arc<StreamBuffer>)> {
        match self.lock().get(&id) {
            Some(c) => Ok((c.socket.clone(), c.from_guest.clone())),
            None => err(
                ttrpc::Code::NOT_FOUND,
                format!("port-forward: no connection {id} (closed already?)"),
            ),
        }
    }

    /// Blocks until the guest sent data or closed; the lock is not held while waiting.
    pub fn read(&self, id: u64, max: usize) -> Result<(Vec<u8>, bool)> {
        let (_, buffer) = self.get(id)?;
        Ok(buffer.read(max))
    }

    pub fn write(&self, id: u64, data: &[u8]) -> Result<()> {
        if data.len() > MAX_WRITE {
            return err(
                ttrpc::Code::INVALID_ARGUMENT,
                format!(
                    "port-forward: a write of {} bytes is over {MAX_WRITE}",
                    data.len()
                ),
            );
        }
        let (socket, _) = self.get(id)?;
        use std::io::Write;
        (&*socket).write_all(data).or_else(|e| {
            err(
                ttrpc::Code::UNAVAILABLE,
                format!("port-forward: connection {id}: {e}"),
            )
        })
    }

    pub fn close(&self, id: u64, write_only: bool) -> Result<()> {
        if write_only {
            let (socket, _) = self.get(id)?;
            let _ = socket.shutdown(Shutdown::Write);
            return Ok(());
        }
        let Some(conn) = self.lock().remove(&id) else {
            return Ok(()); // closing twice is not an error
        };
        // Wakes the pump thread (its read returns 0) and any blocked PortForwardRead.
        let _ = conn.socket.shutdown(Shutdown::Both);
        conn.from_guest.close();
        Ok(())
    }

    pub fn open_count(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn relays_both_ways_with_half_close() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap(); // until the host's half-close
            s.write_all(b"echo:").unwrap();
            s.write_all(&got).unwrap();
        });
        let pf = PortForwards::new();
        let id = pf.open(port as u32).unwrap();
        pf.write(id, b"hello").unwrap();
        pf.close(id, true).unwrap();
        let mut got = Vec::new();
        loop {
            let (data, eof) = pf.read(id, 3).unwrap();
            got.extend(data);
            if eof {
                break;
            }
        }
        server.join().unwrap();
        assert_eq!(got, b"echo:hello");
        pf.close(id, false).unwrap();
        assert_eq!(pf.open_count(), 0);
        assert_eq!(pf.read(id, 10).unwrap_err().code, ttrpc::Code::NOT_FOUND);
        pf.close(id, false).unwrap();
    }

    #[test]
    fn refuses_bad_ports_closed_ports_and_too_many_connections() {
        let pf = PortForwards::new();
        assert_eq!(pf.open(0).unwrap_err().code, ttrpc::Code::INVALID_ARGUMENT);
        assert_eq!(
            pf.open(70000).unwrap_err().code,
            ttrpc::Code::INVALID_ARGUMENT
        );
        // A port nobody listens on: bind then drop to get a free one.
        let free = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = pf.open(free as u32).unwrap_err();
        assert_eq!(e.code, ttrpc::Code::UNAVAILABLE);
        assert!(e.message.contains(&format!("port {free}")), "{}", e.message);

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port() as u32;
        let ids: Vec<u64> = (0..MAX_CONNS).map(|_| pf.open(port).unwrap()).collect();
        let e = pf.open(port).unwrap_err();
        assert_eq!(e.code, ttrpc::Code::RESOURCE_EXHAUSTED);
        pf.close(ids[0], false).unwrap();
        let again = pf.open(port).unwrap();
        assert!(!ids.contains(&again));
        assert!(
            pf.write(again, &vec![0u8; MAX_WRITE + 1])
                .unwrap_err()
                .message
                .contains("over")
        );
    }

    #[test]
    fn close_wakes_a_blocked_read() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port() as u32;
        let pf = Arc::new(PortForwards::new());
        let id = pf.open(port).unwrap();
        let _held = listener.accept().unwrap(); // the server keeps it open, sends nothing
        let p = pf.clone();
        let reader = std::thread::spawn(move || p.read(id, 10).unwrap());
        std::thread::sleep(Duration::from_millis(50));
        assert!(!reader.is_finished());
        pf.close(id, false).unwrap();
        assert_eq!(reader.join().unwrap(), (Vec::new(), true));
    }
}
