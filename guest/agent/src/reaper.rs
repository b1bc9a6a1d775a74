//! Child reaping for PID 1.
//!
//! One thread owns `waitpid(-1, WNOHANG)`: it wakes on SIGCHLD (blocked in every other thread,
//! collected with `sigtimedwait`) and also sweeps every few seconds in case a signal was
//! consumed elsewhere. Every exit is recorded in a map keyed by pid, guarded by a mutex with a
//! condvar. Code that launches processes uses [`Reaper::spawn`] / [`Reaper::wait_pid`] (or
//! [`Reaper::output`]): the child is spawned while the map's lock is held and registered as
//! *watched* before the lock is released, so the reaper can never collect it first and lose
//! its status. Exits of unwatched pids (orphans re-parented to us, e.g. container processes
//! once crun has exited) are kept in a bounded FIFO so a later `wait_pid` can still claim them.
//!
//! Rule for the rest of the agent: never call `std::process::Child::wait`/`output` and never
//! `waitpid` a specific pid yourself — the reaper may already have collected it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// How a reaped process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// Shell-style status: the exit code, or 128 + signal number.
    pub fn code(self) -> u32 {
        match self {
            ExitStatus::Exited(c) => c as u32 & 0xff,
            ExitStatus::Signaled(s) => 128 + s as u32,
        }
    }
    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Exited(c) => write!(f, "exit status {c}"),
            ExitStatus::Signaled(s) => write!(f, "killed by signal {s}"),
        }
    }
}

#[derive(Debug)]
pub enum WaitError {
    /// The pid is neither watched nor among the recorded exits.
    NotWatched(i32),
    TimedOut(i32),
}

impl std::fmt::Display for WaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitError::NotWatched(p) => write!(f, "pid {p} is not a watched child"),
            WaitError::TimedOut(p) => write!(f, "timed out waiting for pid {p}"),
        }
    }
}

impl std::error::Error for WaitError {}

/// Unclaimed exits kept for a late `wait_pid`; the oldest are dropped beyond this.
pub const UNCLAIMED_CAP: usize = 1024;

/// The pure bookkeeping, separate from signals and syscalls so it can be unit-tested.
#[derive(Debug, Default)]
pub struct ExitTable {
    watched: HashSet<i32>,
    /// Status and the sequence number of the record (see [`ExitTable::mark`]).
    exited: HashMap<i32, (ExitStatus, u64)>,
    unclaimed: VecDeque<i32>,
    seq: u64,
}

impl ExitTable {
    pub fn watch(&mut self, pid: i32) {
        self.watched.insert(pid);
    }

    /// Records a reaped pid. Returns whether somebody was watching it.
    pub fn record(&mut self, pid: i32, status: ExitStatus) -> bool {
        let watched = self.watched.contains(&pid);
        self.seq += 1;
        if self.exited.insert(pid, (status, self.seq)).is_none() && !watched {
            self.unclaimed.push_back(pid);
            while self.unclaimed.len() > UNCLAIMED_CAP {
                if let Some(old) = self.unclaimed.pop_front()
                    && !self.watched.contains(&old)
                {
                    self.exited.remove(&old);
                }
            }
        }
        watched
    }

    /// Takes the status of `pid` if it has exited. `Err` if nobody watches it and no exit is
    /// recorded (waiting would never end).
    pub fn take(&mut self, pid: i32) -> Result<Option<ExitStatus>, WaitError> {
        if let Some((st, _)) = self.exited.remove(&pid) {
            self.watched.remove(&pid);
            self.unclaimed.retain(|p| *p != pid);
            return Ok(Some(st));
        }
        if self.watched.contains(&pid) {
            Ok(None)
        } else {
            Err(WaitError::NotWatched(pid))
        }
    }

    /// A point in the sequence of recorded exits: take it before starting something whose pid
    /// is learned later (crun's pid file), then [`ExitTable::watch_since`] that pid.
    pub fn mark(&self) -> u64 {
        self.seq
    }

    /// Watches a pid learned after `mark`. An exit recorded for the same pid number at or
    /// before `mark` belonged to an earlier process (pid reuse) and is discarded; one recorded
    /// after it is this process's (it may already have exited) and is kept.
    pub fn watch_since(&mut self, pid: i32, mark: u64) {
        if self.exited.get(&pid).is_some_and(|(_, seq)| *seq <= mark) {
            self.exited.remove(&pid);
            self.unclaimed.retain(|p| *p != pid);
        }
        self.watched.insert(pid);
    }

    pub fn unwatch(&mut self, pid: i32) {
        self.watched.remove(&pid);
    }

    pub fn pending_exits(&self) -> usize {
        self.exited.len()
    }
}

pub struct Reaper {
    table: Mutex<ExitTable>,
    cond: Condvar,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

/// Sweep interval when no SIGCHLD arrives (a safety net, not the main path).
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

impl Reaper {
    /// Blocks SIGCHLD in the calling thread and starts the reaper thread. Call it from main
    /// before any other thread exists, so every later thread inherits the blocked mask.
    /// Idempotent.
    pub fn start() -> &'static Reaper {
        Self::start_with(SWEEP_INTERVAL)
    }

    pub fn start_with(sweep: Duration) -> &'static Reaper {
        let mut fresh = false;
        let r = REAPER.get_or_init(|| {
            fresh = true;
            Reaper {
                table: Mutex::new(ExitTable::default()),
                cond: Condvar::new(),
            }
        });
        if fresh {
            let mut set = SigSet::empty();
            set.add(Signal::SIGCHLD);
            if let Err(e) = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None) {
                crate::error!("reaper: cannot block SIGCHLD: {e}");
            }
            if nix::unistd::getpid().as_raw() != 1 {
                // Test mode: adopt orphans of our children like PID 1 would.
                if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
                    crate::warn!("reaper: PR_SET_CHILD_SUBREAPER failed: {e}");
                }
            }
            if let Err(e) = std::thread::Builder::new()
                .name("reaper".into())
                .stack_size(64 * 1024)
                .spawn(move || r.run(sweep))
            {
                crate::error!("reaper: cannot start thread: {e}");
            }
        }
        r
    }

    /// The started reaper, if any.
    pub fn get() -> Option<&'static Reaper> {
        REAPER.get()
    }

    fn lock(&self) -> MutexGuard<'_, ExitTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self, sweep: Duration) {
        let mut set = SigSet::empty();
        set.add(Signal::SIGCHLD);
        let ts = libc::timespec {
            tv_sec: sweep.as_secs() as _,
            tv_nsec: sweep.subsec_nanos() as _,
        };
        loop {
            self.reap_all();
            // Returns on SIGCHLD or after `sweep`; either way we sweep again.
            unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
        }
    }

    /// Collects every exited child, records it and wakes waiters.
    pub fn reap_all(&self) {
        let mut table = self.lock();
        let mut any = false;
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    table.record(pid.as_raw(), ExitStatus::Exited(code));
                    any = true;
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    table.record(pid.as_raw(), ExitStatus::Signaled(sig as i32));
                    any = true;
                }
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue, // stopped/continued: not an exit
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break, // ECHILD: no children left
            }
        }
        drop(table);
        if any {
            self.cond.notify_all();
        }
    }

    /// Registers a pid we learned about some other way (e.g. a container's init from crun's
    /// pid file) so its exit is kept for `wait_pid`.
    pub fn watch(&self, pid: i32) {
        self.lock().watch(pid);
    }

    /// See [`ExitTable::mark`].
    pub fn mark(&self) -> u64 {
        self.lock().mark()
    }

    /// See [`ExitTable::watch_since`].
    pub fn watch_since(&self, pid: i32, mark: u64) {
        self.lock().watch_since(pid, mark);
    }

    /// Spawns `cmd` with the reaper locked and registers the child before unlocking. Do not
    /// call `wait`/`try_wait` on the returned `Child`; use [`Reaper::wait_pid`].
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<Child> {
        let mut table = self.lock();
        let child = cmd.spawn()?;
        table.watch(child.id() as i32);
        Ok(child)
    }

    /// Waits for a watched pid to exit (or claims a recorded exit), optionally with a timeout.
    pub fn wait_pid(&self, pid: i32, timeout: Option<Duration>) -> Result<ExitStatus, WaitError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut table = self.lock();
        loop {
            if let Some(st) = table.take(pid)? {
                return Ok(st);
            }
            table = match deadline {
                None => self.cond.wait(table).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(WaitError::TimedOut(pid));
                    }
                    self.cond
                        .wait_timeout(table, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Runs `cmd` to completion with stdin from /dev/null and captured stdout/stderr. On
    /// timeout the process is SIGKILLed (and still collected).
    pub fn output(&self, cmd: &mut Command, timeout: Duration) -> std::io::Result<Output> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.spawn(cmd)?;
        let pid = child.id() as i32;
        let mut err_pipe = child.stderr.take();
        let err_reader = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut buf = Vec::new();
                if let Some(p) = err_pipe.as_mut() {
                    let _ = p.read_to_end(&mut buf);
                }
                buf
            });
        let mut out_pipe = child.stdout.take();
        let out_reader = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut buf = Vec::new();
                if let Some(p) = out_pipe.as_mut() {
                    let _ = p.read_to_end(&mut buf);
                }
                buf
            });
        let status = match self.wait_pid(pid, Some(timeout)) {
            Ok(st) => st,
            Err(WaitError::TimedOut(_)) => {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                self.wait_pid(pid, None).map_err(std::io::Error::other)?
            }
            Err(e) => return Err(std::io::Error::other(e)),
        };
        let stdout = out_reader
            .ok()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let stderr = err_reader
            .ok()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }
}

#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// `spawn_and_wait`: runs a command to completion through the global reaper (starting it if
/// needed) and returns its status and output.
pub fn spawn_and_wait(cmd: &mut Command, timeout: Duration) -> std::io::Result<Output> {
    Reaper::get()
        .unwrap_or_else(Reaper::start)
        .output(cmd, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_exit_is_kept_until_taken() {
        let mut t = ExitTable::default();
        t.watch(10);
        assert!(matches!(t.take(10), Ok(None)));
        assert!(t.record(10, ExitStatus::Exited(3)));
        assert_eq!(t.take(10).unwrap(), Some(ExitStatus::Exited(3)));
        // Taken once: gone, and no longer watched.
        assert!(matches!(t.take(10), Err(WaitError::NotWatched(10))));
        assert_eq!(t.pending_exits(), 0);
    }

    #[test]
    fn unwatched_exit_can_be_claimed_later() {
        let mut t = ExitTable::default();
        assert!(!t.record(42, ExitStatus::Signaled(9)));
        assert_eq!(t.take(42).unwrap(), Some(ExitStatus::Signaled(9)));
        assert!(t.take(42).is_err());
    }

    #[test]
    fn unclaimed_exits_are_bounded_but_watched_ones_stay() {
        let mut t = ExitTable::default();
        t.watch(1);
        t.record(1, ExitStatus::Exited(0));
        for pid in 100..(100 + UNCLAIMED_CAP as i32 + 50) {
            t.record(pid, ExitStatus::Exited(1));
        }
        assert_eq!(t.pending_exits(), UNCLAIMED_CAP + 1);
        assert!(t.take(100).is_err(), "oldest unclaimed exit dropped");
        assert_eq!(t.take(1).unwrap(), Some(ExitStatus::Exited(0)));
    }

    #[test]
    fn pid_reuse_overwrites_status() {
        let mut t = ExitTable::default();
        t.record(7, ExitStatus::Exited(1));
        t.watch(7);
        t.record(7, ExitStatus::Exited(2));
        assert_eq!(t.take(7).unwrap(), Some(ExitStatus::Exited(2)));
    }

    #[test]
    fn watch_since_drops_exits_of_an_earlier_process_with_the_same_pid() {
        let mut t = ExitTable::default();
        t.record(50, ExitStatus::Exited(1)); // an old process that had pid 50
        let mark = t.mark();
        t.record(60, ExitStatus::Exited(0));
        t.watch_since(50, mark); // a new process got pid 50 again
        assert!(matches!(t.take(50), Ok(None)), "stale exit discarded");
        t.record(50, ExitStatus::Signaled(15));
        assert_eq!(t.take(50).unwrap(), Some(ExitStatus::Signaled(15)));
        // An exit recorded after the mark is the new process's: kept.
        let mark = t.mark();
        t.record(70, ExitStatus::Exited(5));
        t.watch_since(70, mark);
        assert_eq!(t.take(70).unwrap(), Some(ExitStatus::Exited(5)));
        assert_eq!(t.take(60).unwrap(), Some(ExitStatus::Exited(0)));
    }

    #[test]
    fn exit_codes_are_shell_style() {
        assert_eq!(ExitStatus::Exited(3).code(), 3);
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
        assert_eq!(ExitStatus::Signaled(15).code(), 143);
        assert_eq!(ExitStatus::Exited(255).code(), 255);
        assert_eq!(ExitStatus::Exited(256 + 7).code(), 7);
        assert!(ExitStatus::Exited(0).success());
    }

    #[test]
    fn spawn_and_wait_gets_status_and_output_and_reaps_orphans() {
        let r = Reaper::start_with(Duration::from_millis(100));
        // The reaper must not steal these statuses even though it reaps everything.
        for i in 0..20 {
            let out = r
                .output(
                    Command::new("/bin/sh").args([
                        "-c",
                        &format!("echo hi{i}; echo err >&2; (sleep 0.01 &) ; exit {}", i % 4),
                    ]),
                    Duration::from_secs(10),
                )
                .unwrap();
            assert_eq!(out.status, ExitStatus::Exited(i % 4));
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                format!("hi{i}")
            );
            assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "err");
        }
        let out = r
            .output(
                Command::new("/bin/sh").args(["-c", "kill -9 $$"]),
                Duration::from_secs(10),
            )
            .unwrap();
        assert_eq!(out.status, ExitStatus::Signaled(9));
        let out = r
            .output(
                Command::new("/bin/sleep").arg("30"),
                Duration::from_millis(200),
            )
            .unwrap();
        assert_eq!(
            out.status,
            ExitStatus::Signaled(9),
            "timed-out child is killed and collected"
        );
        // The `sleep 0.01 &` orphans were adopted (subreaper) and are collected by the sweep.
        std::thread::sleep(Duration::from_millis(500));
        r.reap_all();
        let t = r.lock();
        assert!(t.watched.is_empty());
        assert_eq!(
            t.pending_exits(),
            20,
            "20 orphaned `sleep`s reaped as unclaimed exits"
        );
    }
}
