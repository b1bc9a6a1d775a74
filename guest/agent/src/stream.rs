//! Bounded byte buffers between a process's output (pipe or pty) and the host's ReadStream
//! calls. A reader thread fills the buffer and stops reading when it is full, so a chatty
//! process is back-pressured through its pipe instead of growing guest memory.
//!
//! A buffer exists before its source does: the host starts reading an exec's output right
//! after ExecProcess, before StartProcess gives the process a pipe. Reads block until the
//! source is attached and produces data, or the buffer is closed.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// How much output is held per stream before the reader thread stops reading the pipe.
pub const STREAM_BUFFER_CAP: usize = 256 * 1024;
/// Largest chunk returned by one ReadStream.
pub const MAX_READ: usize = 1024 * 1024;
/// What a ReadStream with max_bytes = 0 gets.
pub const DEFAULT_READ: usize = 64 * 1024;
/// One read(2) from the source.
const CHUNK: usize = 64 * 1024;

#[derive(Default)]
struct Inner {
    chunks: VecDeque<Vec<u8>>,
    len: usize,
    /// No more data will be added.
    eof: bool,
    /// A reader was told eof (everything was delivered).
    drained: bool,
}

#[derive(Default)]
pub struct StreamBuffer {
    inner: Mutex<Inner>,
    cond: Condvar,
}

impl StreamBuffer {
    /// An open, empty buffer.
    pub fn new() -> Arc<Self> {
        Arc::new(StreamBuffer::default())
    }

    /// A buffer already at EOF (stderr of a terminal process).
    pub fn closed() -> Arc<Self> {
        let b = Self::new();
        b.close();
        b
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a thread copying `source` into this buffer until EOF (or an error such as EIO:
    /// a pty whose last slave fd is gone), then closes the buffer.
    pub fn pump(self: &Arc<Self>, source: File, name: &str) {
        let b = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("stream-{name}"))
            .stack_size(128 * 1024)
            .spawn(move || b.fill_from(source));
        if let Err(e) = spawned {
            crate::error!("cannot start stream thread {name}: {e}");
            self.close();
        }
    }

    fn fill_from(&self, mut source: File) {
        loop {
            {
                let mut inner = self.lock();
                while inner.len >= STREAM_BUFFER_CAP && !inner.eof {
                    inner = self.cond.wait(inner).unwrap_or_else(|e| e.into_inner());
                }
                if inner.eof {
                    // Closed from outside (container removed): stop reading.
                    return;
                }
            }
            let mut chunk = vec![0u8; CHUNK];
            match source.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    chunk.truncate(n);
                    let mut inner = self.lock();
                    inner.len += n;
                    inner.chunks.push_back(chunk);
                    self.cond.notify_all();
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.close();
    }

    /// No more data: readers get what is buffered, then EOF.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.eof = true;
        self.cond.notify_all();
    }

    /// Blocks until there is data or EOF; returns up to `max` bytes (0: a default) and whether
    /// the stream is finished (nothing left and EOF seen).
    pub fn read(&self, max: usize) -> (Vec<u8>, bool) {
        let max = if max == 0 {
            DEFAULT_READ
        } else {
            max.min(MAX_READ)
        };
        let mut inner = self.lock();
        while inner.len == 0 && !inner.eof {
            inner = self.cond.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
        let mut data = Vec::with_capacity(max.min(inner.len));
        while data.len() < max {
            let Some(front) = inner.chunks.front_mut() else {
                break;
            };
            let want = max - data.len();
            if front.len() <= want {
                data.extend_from_slice(front);
                inner.chunks.pop_front();
            } else {
                data.extend_from_slice(&front[..want]);
                front.drain(..want);
            }
        }
        inner.len -= data.len();
        let eof = inner.eof && inner.len == 0;
        if eof {
            inner.drained = true;
        }
        self.cond.notify_all();
        (data, eof)
    }

    /// Everything was delivered, EOF included.
    pub fn drained(&self) -> bool {
        self.lock().drained
    }

    /// Bytes waiting for a reader.
    pub fn buffered(&self) -> usize {
        self.lock().len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    #[test]
    fn pumps_until_eof_and_bounds_memory() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let buffer = StreamBuffer::new();
        buffer.pump(File::from(r), "test");
        let writer = std::thread::spawn(move || {
            let mut w = File::from(w);
            let block: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            for _ in 0..20 {
                w.write_all(&block).unwrap();
            }
        });
        let mut total = 0;
        let mut max_seen = 0;
        let mut got = Vec::new();
        loop {
            max_seen = max_seen.max(buffer.buffered());
            let (data, eof) = buffer.read(MAX_READ);
            assert!(data.len() <= STREAM_BUFFER_CAP + CHUNK);
            total += data.len();
            if got.len() < 300_000 {
                got.extend_from_slice(&data);
            }
            if eof {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        writer.join().unwrap();
        assert_eq!(total, 2_000_000);
        assert!(
            max_seen <= STREAM_BUFFER_CAP + CHUNK,
            "buffer stayed bounded: {max_seen}"
        );
        assert!(
            got.iter()
                .take(200_000)
                .enumerate()
                .all(|(i, b)| *b == ((i % 100_000) % 251) as u8)
        );
        assert!(buffer.drained());
        assert_eq!(buffer.read(10), (Vec::new(), true), "EOF again after EOF");
    }

    #[test]
    fn small_reads_split_chunks_in_order() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let buffer = StreamBuffer::new();
        File::from(w).write_all(b"hello world").unwrap(); // write end dropped: EOF follows
        buffer.pump(File::from(r), "split");
        let mut got = Vec::new();
        loop {
            let (data, eof) = buffer.read(3);
            assert!(data.len() <= 3);
            got.extend(data);
            if eof {
                break;
            }
        }
        assert_eq!(got, b"hello world");
    }

    #[test]
    fn reads_block_until_a_source_is_attached_or_closed() {
        let buffer = StreamBuffer::new();
        let b = buffer.clone();
        let reader = std::thread::spawn(move || b.read(100));
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !reader.is_finished(),
            "an open buffer with no source blocks"
        );
        buffer.close();
        assert_eq!(reader.join().unwrap(), (Vec::new(), true));
    }

    #[test]
    fn closed_buffer_reads_eof_at_once() {
        let (data, eof) = StreamBuffer::closed().read(10);
        assert!(data.is_empty());
        assert!(eof);
    }
}
