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
