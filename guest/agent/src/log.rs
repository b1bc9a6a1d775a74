//! Console logging: one line per event, `cloudhv-agent: [uptime] message`, written straight
//! to /dev/console as PID 1 (so it shows even with the kernel's `quiet`), to stderr otherwise.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;

static SINK: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// Sends later lines to /dev/console (call once /dev is mounted). Falls back to stderr.
pub fn use_console() {
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/console")
    {
        Ok(f) => *SINK.lock().unwrap_or_else(|e| e.into_inner()) = Some(f.into()),
        Err(e) => write_line(&format!(
            "warning: cannot open /dev/console ({e}); logging to stderr"
        )),
    }
}

/// Seconds since boot (CLOCK_BOOTTIME), for the line prefix and timing.
pub fn uptime_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => (ts.tv_sec() as u64) * 1_000_000_000 + ts.tv_nsec() as u64,
        Err(_) => 0,
    }
}

pub fn write_line(msg: &str) {
    let ns = uptime_ns();
    let line = format!(
        "cloudhv-agent: [{:5}.{:06}] {}\n",
        ns / 1_000_000_000,
        (ns % 1_000_000_000) / 1000,
        msg
    );
    let guard = SINK.lock().unwrap_or_else(|e| e.into_inner());
    let fd = guard
        .as_ref()
        .map(|f| f.as_raw_fd())
        .unwrap_or(libc::STDERR_FILENO);
    let mut bytes = line.as_bytes();
    // Plain write(2) loop: never panic on a broken console.
    while !bytes.is_empty() {
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        bytes = &bytes[n as usize..];
    }
    drop(guard);
}

#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write_line(&format!($($arg)*)) };
}

#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::write_line(&format!("warning: {}", format!($($arg)*))) };
}

#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write_line(&format!("error: {}", format!($($arg)*))) };
}

/// Where a slow operation's time went, for its log line: `mark` closes the step that just ended.
pub struct Steps {
    started: std::time::Instant,
    last: std::time::Instant,
    parts: Vec<(&'static str, u128)>,
}

impl Steps {
    pub fn start() -> Self {
        let now = std::time::Instant::now();
        Steps {
            started: now,
            last: now,
            parts: Vec::new(),
        }
    }

    pub fn mark(&mut self, step: &'static str) {
        let now = std::time::Instant::now();
        self.parts.push((step, (now - self.last).as_millis()));
        self.last = now;
    }

    /// "212 ms (rootfs disk 20, erofs 8, …)".
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|(step, ms)| format!("{step} {ms}"))
            .collect();
        format!(
            "{} ms ({})",
            self.started.elapsed().as_millis(),
            parts.join(", ")
        )
    }
}
