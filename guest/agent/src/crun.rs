//! Running crun: short commands (`start`, `delete`) and the `create`/`exec --detach` runs
//! whose process gets our pipes or a pty.

use std::fs::{self, File};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::console::wait_with_console;
use crate::container::{Proc, lock};
use crate::error::{Result, err, internal};
use crate::reaper::{ExitStatus, Reaper};

const CRUN_ROOT: &str = "/run/crun";
pub(crate) const CRUN_TIMEOUT: Duration = Duration::from_secs(60);

fn crun_command(crun: &Path, log: Option<&Path>) -> Command {
    let mut cmd = Command::new(crun);
    cmd.arg("--root").arg(CRUN_ROOT);
    if let Some(log) = log {
        cmd.arg("--log")
            .arg(format!("file:{}", log.display()))
            .arg("--log-format=text");
    }
    cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    cmd
}

/// Runs a short crun command to completion; its stderr becomes the error message.
pub(crate) fn run_crun(crun: &Path, args: &[&str]) -> Result<()> {
    let mut cmd = crun_command(crun, None);
    cmd.args(args);
    match crate::reaper::spawn_and_wait(&mut cmd, CRUN_TIMEOUT) {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => err(
            ttrpc::Code::INTERNAL,
            format!(
                "crun {}: {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ),
        Err(e) => err(
            ttrpc::Code::INTERNAL,
            format!("crun {}: {e}", args.join(" ")),
        ),
    }
}

/// Starts a created container as `crun start` does, without running crun (an exec costs the
/// guest ~55 ms under TCG): the container's init waits on `exec.fifo` in crun's state dir and
/// runs the process once one byte arrives; the fifo's removal is what makes crun report the
/// container running. `crun start` also runs poststart hooks, which the guest's specs never have
/// (spec.rs drops hooks). Non-blocking, so an init that is gone fails at once (ENXIO); on any
/// error the caller runs `crun start`, whose answer is the authority.
pub(crate) fn start_by_exec_fifo(id: &str) -> std::io::Result<()> {
    release_exec_fifo(&Path::new(CRUN_ROOT).join(id).join("exec.fifo"))
}

fn release_exec_fifo(fifo: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut end = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(fifo)?;
    fs::remove_file(fifo)?;
    end.write_all(&[0])
}

/// A `crun create` or `crun exec --detach` whose process gets our pipes, or a pty whose
/// master crun hands us over a console socket.
pub(crate) struct CrunRun<'a> {
    pub(crate) crun: &'a Path,
    pub(crate) dir: &'a Path,
    /// "init" or "exec-<id>": names the log file and the stream threads.
    pub(crate) name: &'a str,
    pub(crate) id: &'a str,
    pub(crate) terminal: bool,
    pub(crate) want_stdin: bool,
    pub(crate) pid_file: &'a Path,
}

impl CrunRun<'_> {
    /// Runs crun, attaches the process's stdio to `p` and sets its pid. Returns the reaper
    /// mark taken before crun started (for [`watch_exit`]).
    pub(crate) fn exec(&self, mut args: Vec<String>, p: &Proc) -> Result<u64> {
        let reaper = Reaper::get().ok_or_else(|| internal("no reaper"))?;
        let log = self.dir.join(format!("{}.crun.log", self.name));
        let _ = fs::remove_file(self.pid_file);
        let _ = fs::remove_file(&log);
        let console = crate::console::socket_path();
        let listener = if self.terminal {
            let l = crate::console::listen(&console)?;
            args.push("--console-socket".into());
            args.push(console.display().to_string());
            Some(l)
        } else {
            None
        };
        args.push(self.id.to_string());
        let mut cmd = crun_command(self.crun, Some(&log));
        cmd.args(&args);
        if self.terminal {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        } else {
            cmd.stdin(if self.want_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        }
        let mark = reaper.mark();
        let spawned = reaper.spawn(&mut cmd);
        let result = spawned
            .map_err(|e| internal(format!("spawn {}: {e}", self.crun.display())))
            .and_then(|mut child| {
                let crun_pid = child.id() as i32;
                // Our copies of the pipe ends the process writes to must be gone (std closes
                // them after spawn), or the streams would never reach EOF.
                let stdin = child.stdin.take().map(|s| File::from(OwnedFd::from(s)));
                let stdout = child.stdout.take().map(|s| File::from(OwnedFd::from(s)));
                let stderr = child.stderr.take().map(|s| File::from(OwnedFd::from(s)));
                let (status, pty) = match &listener {
                    Some(l) => wait_with_console(reaper, crun_pid, l),
                    None => (wait_crun(reaper, crun_pid), None),
                };
                let crun_log = || {
                    let text = fs::read_to_string(&log).unwrap_or_default();
                    let text = text.trim();
                    if text.is_empty() {
                        "(no log)".to_string()
                    } else {
                        text.to_string()
                    }
                };
                match status {
                    Ok(s) if s.success() => {}
                    Ok(s) => {
                        return err(
                            ttrpc::Code::INTERNAL,
                            format!("crun {} {}: {s}: {}", args[0], self.id, crun_log()),
                        );
                    }
                    Err(e) => {
                        return err(
                            ttrpc::Code::INTERNAL,
                            format!("crun {} {}: {e}", args[0], self.id),
                        );
                    }
                }
                let pid: i32 = fs::read_to_string(self.pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .filter(|p| *p > 0)
                    .ok_or_else(|| {
                        internal(format!(
                            "crun {} wrote no pid file: {}",
                            args[0],
                            crun_log()
                        ))
                    })?;
                if self.terminal {
                    let Some(master) = pty else {
                        return err(
                            ttrpc::Code::INTERNAL,
                            format!("crun {} sent no terminal: {}", args[0], crun_log()),
                        );
                    };
                    let reader = master
                        .try_clone()
                        .map_err(|e| internal(format!("dup pty master: {e}")))?;
                    p.stdout.pump(reader, &format!("{}-pty", self.name));
                    p.stderr.close();
                    *lock(&p.pty) = Some(master);
                } else {
                    match stdout {
                        Some(f) => p.stdout.pump(f, &format!("{}-out", self.name)),
                        None => p.stdout.close(),
                    }
                    match stderr {
                        Some(f) => p.stderr.pump(f, &format!("{}-err", self.name)),
                        None => p.stderr.close(),
                    }
                    *lock(&p.stdin) = stdin;
                }
                *lock(&p.pid) = pid;
                Ok(mark)
            });
        if listener.is_some() {
            let _ = fs::remove_file(&console);
        }
        if result.is_ok() {
            let _ = fs::remove_file(&log);
        }
        result
    }
}

/// Waits for crun to finish, killing it after [`CRUN_TIMEOUT`].
pub(crate) fn wait_crun(
    reaper: &Reaper,
    pid: i32,
) -> std::result::Result<ExitStatus, crate::reaper::WaitError> {
    match reaper.wait_pid(pid, Some(CRUN_TIMEOUT)) {
        Err(crate::reaper::WaitError::TimedOut(_)) => {
            // SAFETY: kill(2) with plain integers; the pid is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            reaper.wait_pid(pid, None)?;
            Err(crate::reaper::WaitError::TimedOut(pid))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    fn fifo_in(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cloudhv-fifo-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("exec.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        fifo
    }

    #[test]
    fn the_waiting_init_gets_one_byte_and_the_fifo_is_gone() {
        let fifo = fifo_in("start");
        // The container's init: the fifo's read end, open before start (crun create opens it).
        let mut init = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        release_exec_fifo(&fifo).unwrap();
        let mut got = Vec::new();
        init.read_to_end(&mut got).unwrap();
        assert_eq!(got, vec![0u8]);
        assert!(
            !fifo.exists(),
            "crun reports the container running once the fifo is gone"
        );
        let _ = fs::remove_dir_all(fifo.parent().unwrap());
    }

    #[test]
    fn an_init_that_is_gone_fails_at_once_and_leaves_the_fifo() {
        let fifo = fifo_in("gone");
        let e = release_exec_fifo(&fifo).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENXIO));
        assert!(
            fifo.exists(),
            "crun start, run next, must find what crun left"
        );
        let _ = fs::remove_dir_all(fifo.parent().unwrap());
        let e = release_exec_fifo(&fifo).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }
}
