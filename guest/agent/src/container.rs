//! Containers in the guest: rootfs assembly from the host's disks, crun create/start/exec,
//! stdio, exit tracking, signals, stats and removal.
//!
//! Every process is launched through the reaper (PID 1 reaps everything). A container
//! process outlives the `crun create`/`crun exec --detach` that made it and is re-parented to
//! us, so its exit is collected by the reaper too: one waiter thread per process claims it
//! and wakes every WaitProcess caller.
//!
//! State of container `<id>` lives under `/run/cloudhv/containers/<id>/` (guest tmpfs):
//! `lower` (the image disk, erofs, read-only), `scratch` (the scratch disk, ext4, or a tmpfs)
//! with `upper` and `work`, `rootfs` (the overlay), `bundle/config.json` (the rewritten spec),
//! and per process a pid file and crun's log while crun runs.
//!
//! The parts: `error.rs` (the error type), `mounts.rs` (disks by serial, mounting),
//! `crun.rs` (running crun), `console.rs` (a terminal's pty from crun's console socket),
//! `stats.rs` (cgroup readings); this file is the lifecycle.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::mount::MsFlags;

use crate::crun::{CrunRun, run_crun};
use crate::error::{Error, Result, err, internal};
use crate::log::Steps;
use crate::mounts::{do_mount, unmount, unmount_all, wait_for_disk};
use crate::reaper::Reaper;
use crate::stats::{Stats, cgroup_pids, oom_kills, read_stats};
use crate::stream::StreamBuffer;

pub const CONTAINERS_DIR: &str = "/run/cloudhv/containers";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Finished execs kept per container (for late Wait/ReadStream calls) before pruning.
const MAX_EXECS: usize = 128;
/// Status reported for a process that ended without us seeing a status.
const KILLED: u32 = 128 + 9;

/// Container and exec ids: `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}` (they name files and cgroups).
pub fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && id.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + signal.
    pub status: u32,
    pub at_unix_ns: u64,
    pub oom_killed: bool,
}

struct ExecSpec {
    /// The rewritten OCI Process JSON.
    process: Vec<u8>,
    terminal: bool,
    stdin: bool,
}

/// One process: a container's init or an exec.
pub struct Proc {
    pub(crate) pid: Mutex<i32>,
    exit: Mutex<Option<Exit>>,
    exited: Condvar,
    /// Exist from the start, so a ReadStream before StartProcess waits for output.
    pub(crate) stdout: Arc<StreamBuffer>,
    pub(crate) stderr: Arc<StreamBuffer>,
    /// Our end of the process's stdin pipe (dropped by CloseStdin).
    pub(crate) stdin: Mutex<Option<File>>,
    /// The pty master, for a terminal process.
    pub(crate) pty: Mutex<Option<File>>,
    pty_eof_sent: AtomicBool,
    /// None for a container's init.
    exec: Option<ExecSpec>,
    /// Held while starting; true once started.
    started: Mutex<bool>,
    /// Signals that raced the start, waiting for a handler (see [`Redelivery`]).
    redelivery: Mutex<Redelivery>,
}

/// A PID namespace's init only gets the signals it has a handler for; the kernel drops the
/// rest on sending. A SIGTERM sent just after StartContainer reaches crun's init (or a shell
/// that has not run its `trap` yet) and is lost, where on a fast runc host the handler is
/// already there. Such a signal is kept here and sent again once the process catches it, for
/// [`REDELIVERY_WINDOW`] after it was sent; one thread per process polls for that.
#[derive(Default)]
struct Redelivery {
    /// Bit n-1 for signal n.
    pending: u64,
    polling: bool,
    deadline: Option<Instant>,
}

const REDELIVERY_WINDOW: Duration = Duration::from_secs(10);
const REDELIVERY_POLL: Duration = Duration::from_millis(10);

/// What /proc/<pid>/status and stat say about a process's signals.
struct SignalState {
    /// It is the init of its own PID namespace (its innermost NSpid is 1).
    ns_init: bool,
    caught: u64,
    ignored: u64,
    /// Start time in clock ticks since boot: tells a reused pid apart.
    start_time: u64,
}

fn signal_state(pid: i32) -> Option<SignalState> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let mask = |name: &str| field(name).and_then(|v| u64::from_str_radix(v, 16).ok());
    let ns_init = field("NSpid:")?.split_whitespace().last() == Some("1");
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start at field 3; starttime is 22.
    let start_time = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    Some(SignalState {
        ns_init,
        caught: mask("SigCgt:")?,
        ignored: mask("SigIgn:")?,
        start_time,
    })
}

/// Whether the kernel dropped `sig` sent to a process in `state`: a namespace init with the
/// default action for it (SIGKILL and SIGSTOP always get through from outside).
/// What a failed kill(2) of a process means, `signalled` processes of its container having just
/// been sent the signal (a signal to all): a process gone meanwhile (ESRCH) was one of them,
/// killed by that very signal and reaped since, so the signal was delivered.
fn kill_failed(pid: i32, sig: i32, errno: nix::errno::Errno, signalled: usize) -> Result<()> {
    match errno {
        nix::errno::Errno::ESRCH if signalled > 0 => Ok(()),
        nix::errno::Errno::ESRCH => err(ttrpc::Code::NOT_FOUND, "process already finished"),
        e => err(ttrpc::Code::INTERNAL, format!("kill({pid}, {sig}): {e}")),
    }
}

fn dropped_by_init(state: &SignalState, sig: i32) -> bool {
    let bit = 1u64 << (sig - 1);
    state.ns_init
        && sig != libc::SIGKILL
        && sig != libc::SIGSTOP
        && state.caught & bit == 0
        && state.ignored & bit == 0
}

impl Proc {
    /// With a terminal, everything is on STDOUT: STDERR is at EOF from the start.
    fn new(exec: Option<ExecSpec>, terminal: bool) -> Arc<Proc> {
        Arc::new(Proc {
            pid: Mutex::new(0),
            exit: Mutex::new(None),
            exited: Condvar::new(),
            stdout: StreamBuffer::new(),
            stderr: if terminal {
                StreamBuffer::closed()
            } else {
                StreamBuffer::new()
            },
            stdin: Mutex::new(None),
            pty: Mutex::new(None),
            pty_eof_sent: AtomicBool::new(false),
            exec,
            started: Mutex::new(false),
            redelivery: Mutex::new(Redelivery::default()),
        })
    }

    /// Keeps `sig` to send again once the process catches it (see [`Redelivery`]).
    fn redeliver(self: &Arc<Self>, pid: i32, sig: i32, start_time: u64) {
        let mut r = lock(&self.redelivery);
        r.pending |= 1u64 << (sig - 1);
        r.deadline = Some(Instant::now() + REDELIVERY_WINDOW);
        if r.polling {
            return;
        }
        r.polling = true;
        drop(r);
        let p = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("resend-{pid}"))
            .stack_size(64 * 1024)
            .spawn(move || p.redelivery_loop(pid, start_time));
        if let Err(e) = spawned {
            crate::error!("cannot start the signal re-delivery thread for pid {pid}: {e}");
            let mut r = lock(&self.redelivery);
            r.polling = false;
            r.pending = 0;
        }
    }

    fn redelivery_loop(&self, pid: i32, start_time: u64) {
        loop {
            std::thread::sleep(REDELIVERY_POLL);
            let state = signal_state(pid).filter(|s| s.start_time == start_time);
            let mut r = lock(&self.redelivery);
            let expired = r.deadline.is_none_or(|d| Instant::now() > d);
            let (Some(state), false, false) = (state, self.exit().is_some(), expired) else {
                // Gone, or it never took the signal: as on a runc host, it stays ignored.
                *r = Redelivery::default();
                return;
            };
            let ready = r.pending & state.caught;
            r.pending &= !ready;
            for sig in (1..=64).filter(|s| ready & (1u64 << (s - 1)) != 0) {
                crate::info!("pid {pid}: signal {sig} raced the start; sent again");
                // SAFETY: kill(2) with plain integers; the start time matched just now.
                unsafe { libc::kill(pid, sig) };
            }
            if r.pending == 0 {
                *r = Redelivery::default();
                return;
            }
        }
    }

    fn pid(&self) -> i32 {
        *lock(&self.pid)
    }

    fn exit(&self) -> Option<Exit> {
        *lock(&self.exit)
    }

    /// Blocks until the process has exited; every caller gets the same answer.
    pub fn wait(&self) -> Exit {
        let mut exit = lock(&self.exit);
        loop {
            if let Some(e) = *exit {
                return e;
            }
            exit = self.exited.wait(exit).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn set_exit(&self, e: Exit) {
        let mut exit = lock(&self.exit);
        if exit.is_none() {
            *exit = Some(e);
        }
        self.exited.notify_all();
    }

    fn close_streams(&self) {
        self.stdout.close();
        self.stderr.close();
    }

    /// Exited and all its output delivered: nothing more to ask about it.
    fn finished(&self) -> bool {
        self.exit().is_some() && self.stdout.drained() && self.stderr.drained()
    }
}

pub struct Container {
    dir: PathBuf,
    cgroup: PathBuf,
    init: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
    /// Mount points to undo on removal, in mount order (lower, scratch, rootfs).
    mounts: Vec<PathBuf>,
    /// A CRI sandbox's namespace holder (holder.rs), not a crun container.
    holder: bool,
}

pub struct Containers {
    crun: Option<PathBuf>,
    root: PathBuf,
    map: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids whose CreateContainer is in progress.
    creating: Mutex<HashSet<String>>,
    /// A namespace holder started ahead of its pod (prepare_holder), taken by the first sandbox.
    pending_holder: Mutex<Option<PendingHolder>>,
}

/// A pod's namespace holder started before its pod (holder.rs, `--pause-holder-pending`): it
/// waits for its plan on `plan` and answers on `answer`; `mark` was taken before it started.
struct PendingHolder {
    pid: i32,
    plan: std::process::ChildStdin,
    answer: std::process::ChildStdout,
    mark: u64,
}

/// Why a pending holder could not take its plan.
enum HandOff {
    /// It is gone (or never answered its pipe): a holder started now takes the plan instead.
    Gone(String),
    /// It took the plan and refused it or failed: the create fails with this.
    Failed(Error),
}

/// Removes an id from `creating` when the create ends, however it ends.
struct Reservation<'a> {
    set: &'a Mutex<HashSet<String>>,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.id);
    }
}

impl Containers {
    /// Holds `id` while its create runs: a second create of it is ALREADY_EXISTS until the
    /// reservation drops (the container then is in the map, or gone).
    fn reserve(&self, id: &str) -> Result<Reservation<'_>> {
        let map = lock(&self.map);
        let mut creating = lock(&self.creating);
        if map.contains_key(id) || creating.contains(id) {
            return err(
                ttrpc::Code::ALREADY_EXISTS,
                format!("container {id} already exists"),
            );
        }
        creating.insert(id.to_string());
        Ok(Reservation {
            set: &self.creating,
            id: id.to_string(),
        })
    }

    pub fn new(crun: Option<PathBuf>) -> Self {
        Containers {
            crun,
            root: PathBuf::from(CONTAINERS_DIR),
            map: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
            pending_holder: Mutex::new(None),
        }
    }

    /// Starts a pod's namespace holder ahead of its pod (a pool VM, while it waits): its
    /// sandbox's create then only hands it its plan. A failure is logged; that create starts one.
    pub fn prepare_holder(&self) {
        let started = Instant::now();
        match start_pending_holder() {
            Ok(p) => {
                crate::info!(
                    "namespace holder started ahead of its pod, pid {}, in {} ms",
                    p.pid,
                    started.elapsed().as_millis()
                );
                *lock(&self.pending_holder) = Some(p);
            }
            Err(e) => crate::warn!("could not start a namespace holder ahead of its pod: {e}"),
        }
    }

    /// Runs the pod's holder with `plan`: the one started ahead when there is one, else a new
    /// one. Returns the reaper mark for its pid; sets `init`'s pid.
    fn run_holder(&self, plan: &crate::holder::Plan, init: &Proc) -> Result<u64> {
        let pending = lock(&self.pending_holder).take();
        if let Some(p) = pending {
            match hand_plan(p, plan, init) {
                Ok(mark) => return Ok(mark),
                Err(HandOff::Failed(e)) => return Err(e),
                Err(HandOff::Gone(why)) => {
                    crate::warn!("the namespace holder started ahead is gone ({why}); starting one")
                }
            }
        }
        spawn_holder(plan, init)
    }

    fn crun(&self) -> Result<&Path> {
        match &self.crun {
            Some(p) => Ok(p),
            None => err(
                ttrpc::Code::FAILED_PRECONDITION,
                "crun is not installed in the guest",
            ),
        }
    }

    fn get(&self, id: &str) -> Result<Arc<Container>> {
        match lock(&self.map).get(id) {
            Some(c) => Ok(c.clone()),
            None => err(
                ttrpc::Code::NOT_FOUND,
                format!("container {id:?} not found"),
            ),
        }
    }

    /// The guest pid of container `id`'s init while it runs (its namespaces can be joined).
    fn running_init(&self, id: &str) -> Option<i32> {
        let init = lock(&self.map).get(id)?.init.clone();
        let pid = init.pid();
        (pid > 0 && init.exit().is_none()).then_some(pid)
    }

    fn is_running_init(&self, pid: i32) -> bool {
        lock(&self.map)
            .values()
            .any(|c| c.init.pid() == pid && c.init.exit().is_none())
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<(Arc<Container>, Arc<Proc>)> {
        let c = self.get(id)?;
        if exec_id.is_empty() {
            let init = c.init.clone();
            return Ok((c, init));
        }
        let p = lock(&c.execs).get(exec_id).cloned();
        match p {
            Some(p) => Ok((c, p)),
            None => err(
                ttrpc::Code::NOT_FOUND,
                format!("exec {exec_id:?} of container {id} not found"),
            ),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        id: &str,
        oci_spec: &[u8],
        rootfs_serial: &str,
        scratch_serial: &str,
        terminal: bool,
        want_stdin: bool,
    ) -> Result<u32> {
        if !valid_id(id) {
            return err(
                ttrpc::Code::INVALID_ARGUMENT,
                format!(
                    "container id {id:?} is not valid (want [A-Za-z0-9][A-Za-z0-9_.-]{{0,127}})"
                ),
            );
        }
        let crun = self.crun()?.to_path_buf();
        if rootfs_serial.is_empty() && scratch_serial.is_empty() {
            return self.create_holder(id, oci_spec);
        }
        let _reservation = self.reserve(id)?;
        let dir = self.root.join(id);
        let lower = dir.join("lower");
        let scratch = dir.join("scratch");
        let rootfs = dir.join("rootfs");
        if dir.exists() {
            // Left over from a removal that could not finish: clean it up.
            crate::warn!("container {id}: removing stale state in {}", dir.display());
            unmount_all(&[lower.clone(), scratch.clone(), rootfs.clone()]);
            let _ = fs::remove_dir_all(&dir);
        }
        let mut mounted: Vec<PathBuf> = Vec::new();
        let init = Proc::new(None, terminal);
        let mut steps = Steps::start();
        let result = (|| -> Result<Arc<Container>> {
            let bundle = dir.join("bundle");
            for d in [&lower, &scratch, &rootfs, &bundle] {
                fs::create_dir_all(d)
                    .map_err(|e| internal(format!("mkdir {}: {e}", d.display())))?;
            }
            let image = wait_for_disk(rootfs_serial, "rootfs disk")?;
            steps.mark("rootfs disk");
            do_mount(Some(&image), &lower, "erofs", MsFlags::MS_RDONLY, None)?;
            steps.mark("erofs");
            mounted.push(lower.clone());
            if scratch_serial.is_empty() {
                do_mount(None, &scratch, "tmpfs", MsFlags::empty(), Some("mode=0755"))?;
            } else {
                let disk = wait_for_disk(scratch_serial, "scratch disk")?;
                steps.mark("scratch disk");
                do_mount(Some(&disk), &scratch, "ext4", MsFlags::MS_NOATIME, None)?;
            }
            steps.mark("scratch");
            mounted.push(scratch.clone());
            for d in ["upper", "work"] {
                fs::create_dir_all(scratch.join(d))
                    .map_err(|e| internal(format!("mkdir {d} in the scratch disk: {e}")))?;
            }
            let options = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                scratch.join("upper").display(),
                scratch.join("work").display()
            );
            do_mount(None, &rootfs, "overlay", MsFlags::empty(), Some(&options))?;
            mounted.push(rootfs.clone());
            steps.mark("overlay");

            // Before the rewrite, which drops mounts whose source is not in the guest.
            crate::shared::ensure_for(oci_spec)?;
            let guest = crate::spec::Guest {
                exists: &|p| Path::new(p).exists(),
                container_pid: &|c| self.running_init(c),
                is_container_init: &|pid| self.is_running_init(pid),
            };
            let rewritten =
                crate::spec::rewrite(oci_spec, &rootfs, id, terminal, &guest).map_err(|m| {
                    Error {
                        code: ttrpc::Code::INVALID_ARGUMENT,
                        message: m,
                    }
                })?;
            for (path, value) in &rewritten.net_sysctls {
                fs::write(path, value).map_err(|e| Error {
                    code: ttrpc::Code::INVALID_ARGUMENT,
                    message: format!(
                        "sysctl {} = {:?} for the pod's network (the guest's): {e}",
                        path.trim_start_matches("/proc/sys/").replace('/', "."),
                        value.chars().take(64).collect::<String>()
                    ),
                })?;
            }
            if !rewritten.skipped_mounts.is_empty() {
                crate::warn!(
                    "container {id}: skipped mounts whose source is not in the guest: {}",
                    rewritten.skipped_mounts.join(", ")
                );
            }
            let config = serde_json::to_vec(&rewritten.spec)
                .map_err(|e| internal(format!("encode config.json: {e}")))?;
            fs::write(bundle.join("config.json"), config)
                .map_err(|e| internal(format!("write bundle config.json: {e}")))?;
            let pid_file = dir.join("init.pid");
            let args = vec![
                "create".to_string(),
                "--bundle".into(),
                bundle.display().to_string(),
                "--pid-file".into(),
                pid_file.display().to_string(),
            ];
            let cgroup = Path::new(CGROUP_ROOT).join(rewritten.cgroup_path.trim_start_matches('/'));
            let run = CrunRun {
                crun: &crun,
                dir: &dir,
                name: "init",
                id,
                terminal,
                want_stdin,
                pid_file: &pid_file,
            };
            steps.mark("spec");
            let mark = run.exec(args, &init)?;
            steps.mark("crun create");
            let container = Arc::new(Container {
                dir: dir.clone(),
                cgroup,
                init: init.clone(),
                execs: Mutex::new(HashMap::new()),
                mounts: mounted.clone(),
                holder: false,
            });
            watch_exit(&container, init.clone(), true, mark);
            Ok(container)
        })();
        match result {
            Ok(container) => {
                lock(&self.map).insert(id.to_string(), container);
                crate::info!(
                    "container {id} created, pid {}, in {}",
                    init.pid(),
                    steps.summary()
                );
                Ok(init.pid() as u32)
            }
            Err(e) => {
                init.close_streams();
                let _ = run_crun(&crun, &["delete", "--force", id]);
                unmount_all(&mounted);
                let _ = fs::remove_dir_all(&dir);
                crate::warn!("container {id}: create failed: {}", e.message);
                Err(e)
            }
        }
    }

    /// A CRI sandbox without a rootfs: the pod's namespace holder (holder.rs) instead of crun
    /// running a pause image. It runs from here on; Start only marks it started.
    fn create_holder(&self, id: &str, oci_spec: &[u8]) -> Result<u32> {
        let invalid = |m: String| Error {
            code: ttrpc::Code::INVALID_ARGUMENT,
            message: m,
        };
        let _reservation = self.reserve(id)?;
        let started = Instant::now();
        let dir = self.root.join(id);
        let guest = crate::spec::Guest {
            exists: &|p| Path::new(p).exists(),
            container_pid: &|_| None,
            is_container_init: &|_| false,
        };
        let rewritten = crate::spec::rewrite(oci_spec, &dir, id, false, &guest).map_err(invalid)?;
        let annotated = rewritten
            .spec
            .get("annotations")
            .and_then(|a| a.get(crate::spec::CRI_CONTAINER_TYPE))
            .and_then(serde_json::Value::as_str)
            == Some("sandbox");
        if !annotated {
            return Err(invalid(format!(
                "container {id} has no rootfs disk and is not a CRI sandbox \
                 (annotation {}: sandbox): only a sandbox can run without an image",
                crate::spec::CRI_CONTAINER_TYPE
            )));
        }
        for (path, value) in &rewritten.net_sysctls {
            fs::write(path, value).map_err(|e| {
                invalid(format!(
                    "sysctl {} = {:?} for the pod's network (the guest's): {e}",
                    path.trim_start_matches("/proc/sys/").replace('/', "."),
                    value.chars().take(64).collect::<String>()
                ))
            })?;
        }
        let cgroup = Path::new(CGROUP_ROOT).join(rewritten.cgroup_path.trim_start_matches('/'));
        let plan = crate::holder::plan_for(&rewritten.spec, &cgroup.display().to_string())
            .map_err(|m| invalid(format!("pod sandbox {id}: {m}")))?;
        if dir.exists() {
            crate::warn!("container {id}: removing stale state in {}", dir.display());
            let _ = fs::remove_dir_all(&dir);
        }
        fs::create_dir_all(&dir).map_err(|e| internal(format!("mkdir {}: {e}", dir.display())))?;
        let made = make_cgroup(&cgroup);
        let init = Proc::new(None, false);
        init.close_streams();
        let result = made.and_then(|()| self.run_holder(&plan, &init));
        match result {
            Ok(mark) => {
                let container = Arc::new(Container {
                    dir,
                    cgroup,
                    init: init.clone(),
                    execs: Mutex::new(HashMap::new()),
                    mounts: Vec::new(),
                    holder: true,
                });
                watch_exit(&container, init.clone(), true, mark);
                lock(&self.map).insert(id.to_string(), container);
                crate::info!(
                    "pod sandbox {id} created (namespace holder), pid {}, in {} ms",
                    init.pid(),
                    started.elapsed().as_millis()
                );
                Ok(init.pid() as u32)
            }
            Err(e) => {
                let _ = fs::remove_dir(&cgroup);
                let _ = fs::remove_dir_all(&dir);
                crate::warn!("container {id}: create failed: {}", e.message);
                Err(e)
            }
        }
    }

    pub fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: &[u8],
        terminal: bool,
        stdin: bool,
    ) -> Result<()> {
        if !valid_id(exec_id) {
            return err(
                ttrpc::Code::INVALID_ARGUMENT,
                format!(
                    "exec id {exec_id:?} is not valid (want [A-Za-z0-9][A-Za-z0-9_.-]{{0,127}})"
                ),
            );
        }
        let c = self.get(id)?;
        if c.holder {
            return err(
                ttrpc::Code::FAILED_PRECONDITION,
                format!(
                    "container {id} is a pod's sandbox run by the agent's namespace holder (no image, \
                     nothing to run in it); exec into one of the pod's containers"
                ),
            );
        }
        let process = crate::spec::rewrite_process(process, terminal).map_err(|m| Error {
            code: ttrpc::Code::INVALID_ARGUMENT,
            message: format!("exec {exec_id}: {m}"),
        })?;
        let mut execs = lock(&c.execs);
        if execs.contains_key(exec_id) {
            return err(
                ttrpc::Code::ALREADY_EXISTS,
                format!("exec {exec_id} already exists in container {id}"),
            );
        }
        if execs.len() >= MAX_EXECS {
            // There is no DeleteProcess: forget execs whose exit and output were delivered.
            execs.retain(|_, p| !p.finished());
        }
        execs.insert(
            exec_id.to_string(),
            Proc::new(
                Some(ExecSpec {
                    process,
                    terminal,
                    stdin,
                }),
                terminal,
            ),
        );
        Ok(())
    }

    pub fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let crun = self.crun()?.to_path_buf();
        let (c, p) = self.process(id, exec_id)?;
        let mut started = lock(&p.started);
        // A second start of a started process answers its pid: the host re-sends a Start that
        // a daemon killed mid-call had already delivered, and the new daemon must get the pid
        // (an error would fail a container that runs).
        let Some(spec) = &p.exec else {
            if *started {
                return Ok(p.pid() as u32);
            }
            if p.exit().is_some() {
                return err(
                    ttrpc::Code::FAILED_PRECONDITION,
                    format!("container {id} has exited (killed before it was started)"),
                );
            }
            if !c.holder {
                let started = std::time::Instant::now();
                if let Err(e) = crate::crun::start_by_exec_fifo(id) {
                    crate::warn!("container {id}: start by its exec fifo failed ({e}): crun start");
                    run_crun(&crun, &["start", id])?;
                }
                crate::info!(
                    "container {id} started in {} ms",
                    started.elapsed().as_millis()
                );
            }
            *started = true;
            return Ok(p.pid() as u32);
        };
        if *started {
            return Ok(p.pid() as u32);
        }
        if c.init.exit().is_some() {
            return err(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("container {id} is not running"),
            );
        }
        let proc_file = c.dir.join(format!("exec-{exec_id}.json"));
        let pid_file = c.dir.join(format!("exec-{exec_id}.pid"));
        let result = (|| {
            fs::write(&proc_file, &spec.process)
                .map_err(|e| internal(format!("write exec process spec: {e}")))?;
            let args = vec![
                "exec".to_string(),
                "--detach".into(),
                "--pid-file".into(),
                pid_file.display().to_string(),
                "--process".into(),
                proc_file.display().to_string(),
            ];
            let run = CrunRun {
                crun: &crun,
                dir: &c.dir,
                name: &format!("exec-{exec_id}"),
                id,
                terminal: spec.terminal,
                want_stdin: spec.stdin,
                pid_file: &pid_file,
            };
            run.exec(args, &p)
        })();
        let _ = fs::remove_file(&proc_file);
        let _ = fs::remove_file(&pid_file);
        match result {
            Ok(mark) => {
                *started = true;
                watch_exit(&c, p.clone(), false, mark);
                Ok(p.pid() as u32)
            }
            Err(e) => {
                // Readers waiting on its output get EOF; the host deletes the exec.
                p.close_streams();
                lock(&c.execs).remove(exec_id);
                Err(e)
            }
        }
    }

    pub fn signal(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let (c, p) = self.process(id, exec_id)?;
        if signal == 0 || signal > 64 {
            return err(
                ttrpc::Code::INVALID_ARGUMENT,
                format!("{signal} is not a signal number"),
            );
        }
        let sig = signal as i32;
        if !*lock(&p.started) && p.exec.is_some() {
            return err(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("exec {exec_id} is not started"),
            );
        }
        let pid = p.pid();
        let mut signalled = 0;
        if all {
            for other in cgroup_pids(&c.cgroup) {
                // SAFETY: kill(2) with a pid and a signal number; no memory involved.
                if unsafe { libc::kill(other as i32, sig) } == 0 {
                    signalled += 1;
                }
            }
        }
        if p.exit().is_some() {
            if signalled > 0 {
                return Ok(());
            }
            return err(ttrpc::Code::NOT_FOUND, "process already finished");
        }
        // Read before sending: a process the signal kills leaves nothing to read after.
        let before = signal_state(pid);
        // SAFETY: as above.
        if unsafe { libc::kill(pid, sig) } == 0 {
            if let Some(state) = before
                && dropped_by_init(&state, sig)
            {
                p.redeliver(pid, sig, state.start_time);
            }
            return Ok(());
        }
        kill_failed(pid, sig, nix::errno::Errno::last(), signalled)
    }

    pub fn wait(&self, id: &str, exec_id: &str) -> Result<Exit> {
        let (_c, p) = self.process(id, exec_id)?;
        if p.exec.is_some() && p.pid() == 0 && p.exit().is_none() {
            return err(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("exec {exec_id} is not started"),
            );
        }
        Ok(p.wait())
    }

    pub fn read(
        &self,
        id: &str,
        exec_id: &str,
        stderr: bool,
        max: usize,
    ) -> Result<(Vec<u8>, bool)> {
        let (_c, p) = self.process(id, exec_id)?;
        let buffer = if stderr { &p.stderr } else { &p.stdout };
        Ok(buffer.read(max))
    }

    pub fn write_stdin(&self, id: &str, exec_id: &str, data: &[u8]) -> Result<u32> {
        let (_c, p) = self.process(id, exec_id)?;
        // One lock at a time: start() holds `started` while it sets `pty` and `stdin`.
        let pty = lock(&p.pty).as_ref().map(File::try_clone);
        let target = match pty {
            Some(pty) => Some(pty),
            None => lock(&p.stdin).as_ref().map(File::try_clone),
        };
        let mut file = match target {
            Some(Ok(f)) => f,
            Some(Err(e)) => return err(ttrpc::Code::INTERNAL, format!("stdin: {e}")),
            None if !*lock(&p.started) => {
                return err(
                    ttrpc::Code::FAILED_PRECONDITION,
                    "the process is not started",
                );
            }
            None => {
                return err(
                    ttrpc::Code::FAILED_PRECONDITION,
                    "the process has no stdin (not requested, or closed)",
                );
            }
        };
        if data.is_empty() {
            return Ok(0);
        }
        // Blocks while the pipe (or the terminal's input queue) is full.
        loop {
            match file.write(data) {
                Ok(n) => return Ok(n as u32),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::BrokenPipe
                        || e.raw_os_error() == Some(libc::EIO) =>
                {
                    return err(ttrpc::Code::NOT_FOUND, "stdin: the process is gone");
                }
                Err(e) => return err(ttrpc::Code::INTERNAL, format!("stdin write: {e}")),
            }
        }
    }

    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let (_c, p) = self.process(id, exec_id)?;
        if let Some(pty) = lock(&p.pty).as_ref()
            && !p.pty_eof_sent.swap(true, Ordering::SeqCst)
        {
            // A terminal has no separate stdin to close: send end-of-file (^D), which ends
            // a read at the start of a line like a closed pipe does.
            let _ = pty.try_clone().and_then(|mut f| f.write(&[4]));
        }
        lock(&p.stdin).take();
        Ok(())
    }

    pub fn resize(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let (_c, p) = self.process(id, exec_id)?;
        let pty = lock(&p.pty);
        let Some(pty) = pty.as_ref() else {
            return err(
                ttrpc::Code::FAILED_PRECONDITION,
                "the process has no terminal (not a terminal process, or not started)",
            );
        };
        let size = libc::winsize {
            ws_row: height.min(u16::MAX as u32) as u16,
            ws_col: width.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which lives across the call.
        let rc = unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if rc != 0 {
            return err(
                ttrpc::Code::INTERNAL,
                format!("resize: {}", std::io::Error::last_os_error()),
            );
        }
        Ok(())
    }

    pub fn pids(&self, id: &str) -> Result<Vec<u32>> {
        Ok(cgroup_pids(&self.get(id)?.cgroup))
    }

    pub fn stats(&self, id: &str) -> Result<Stats> {
        let c = self.get(id)?;
        Ok(read_stats(&c.cgroup))
    }

    pub fn remove(&self, id: &str) -> Result<()> {
        // Forget it first: calls racing with the removal get NOT_FOUND.
        let c = match lock(&self.map).remove(id) {
            Some(c) => c,
            None => {
                return err(
                    ttrpc::Code::NOT_FOUND,
                    format!("container {id:?} not found"),
                );
            }
        };
        let mut problems = Vec::new();
        if let Some(crun) = self.crun.as_ref().filter(|_| !c.holder)
            && let Err(e) = run_crun(crun, &["delete", "--force", id])
        {
            crate::warn!("container {id}: {}", e.message);
        }
        // crun kills the container's processes; make sure, and give them a moment to go.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = cgroup_pids(&c.cgroup);
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                problems.push(format!("processes {left:?} survived SIGKILL"));
                break;
            }
            for pid in left {
                // SAFETY: kill(2) with plain integers.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Output readers and never-started execs must not wait forever.
        let mut procs = vec![c.init.clone()];
        procs.extend(lock(&c.execs).values().cloned());
        for p in &procs {
            p.close_streams();
            lock(&p.stdin).take();
            if p.pid() == 0 {
                p.set_exit(Exit {
                    status: KILLED,
                    at_unix_ns: now_ns(),
                    oom_killed: false,
                });
            }
        }
        for m in c.mounts.iter().rev() {
            if let Err(e) = unmount(m) {
                problems.push(format!("unmount {}: {e}", m.display()));
            }
        }
        if problems.is_empty()
            && let Err(e) = fs::remove_dir_all(&c.dir)
        {
            problems.push(format!("remove {}: {e}", c.dir.display()));
        }
        if c.cgroup.exists() && fs::remove_dir(&c.cgroup).is_err() {
            crate::warn!(
                "container {id}: cgroup {} is still there",
                c.cgroup.display()
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            err(
                ttrpc::Code::INTERNAL,
                format!(
                    "container {id} removed incompletely: {}",
                    problems.join("; ")
                ),
            )
        }
    }
}

/// The sandbox's cgroup, with the guest's controllers enabled down to it (as crun does).
fn make_cgroup(cgroup: &Path) -> Result<()> {
    let root = Path::new(CGROUP_ROOT);
    let rel = cgroup
        .strip_prefix(root)
        .map_err(|_| internal("cgroup outside the root"))?;
    let mut dir = root.to_path_buf();
    for part in rel.components() {
        if let Ok(available) = fs::read_to_string(dir.join("cgroup.controllers")) {
            for word in crate::setup::controllers_to_enable(&available) {
                let _ = fs::write(dir.join("cgroup.subtree_control"), word);
            }
        }
        dir.push(part);
        if let Err(e) = fs::create_dir(&dir)
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Err(internal(format!("mkdir {}: {e}", dir.display())));
        }
    }
    Ok(())
}

/// Starts `cloudhv-agent --pause-holder-pending` (holder.rs): its parent reports the holder's
/// pid and exits; the holder then waits for its plan.
fn start_pending_holder() -> std::result::Result<PendingHolder, String> {
    use std::io::Read;
    use std::process::Stdio;
    let reaper = Reaper::get().ok_or("no reaper")?;
    let mut cmd = crate::holder::command(
        Path::new("/proc/self/exe"),
        &[crate::holder::PENDING_FLAG.to_string()],
    );
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mark = reaper.mark();
    let mut child = reaper.spawn(&mut cmd).map_err(|e| format!("spawn: {e}"))?;
    let (Some(plan), Some(mut answer)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("no pipes".into());
    };
    let parent = child.id() as i32;
    let exit = reaper.wait_pid(parent, Some(Duration::from_secs(10)));
    if let Err(e) = &exit {
        // Its line may never come: not read.
        // SAFETY: plain kill(2) of the process we started.
        unsafe { libc::kill(parent, libc::SIGKILL) };
        return Err(e.to_string());
    }
    // Its one line, read a byte at a time: the holder's answer comes later on the same pipe.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 256 && matches!(answer.read(&mut byte), Ok(1)) && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    let pid = line
        .strip_prefix("pid ")
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|p| *p > 0);
    match (exit, pid) {
        (Ok(status), Some(pid)) if status.success() => {
            reaper.watch_since(pid, mark);
            Ok(PendingHolder {
                pid,
                plan,
                answer,
                mark,
            })
        }
        (exit, _) => Err(format!(
            "{:?} ({})",
            line.chars().take(256).collect::<String>(),
            match exit {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            }
        )),
    }
}

/// Gives a pending holder its plan and reads its answer (10 s at most, then it is killed).
fn hand_plan(
    p: PendingHolder,
    plan: &crate::holder::Plan,
    init: &Proc,
) -> std::result::Result<u64, HandOff> {
    use std::io::Read;
    let reaper = Reaper::get().ok_or_else(|| HandOff::Gone("no reaper".into()))?;
    if let Ok(status) = reaper.wait_pid(p.pid, Some(Duration::ZERO)) {
        return Err(HandOff::Gone(format!("it ended: {status}")));
    }
    let bytes = crate::holder::plan_bytes(plan).ok_or_else(|| {
        HandOff::Failed(Error {
            code: ttrpc::Code::INVALID_ARGUMENT,
            message: "the pod's namespace holder failed: an argument has a NUL byte".into(),
        })
    })?;
    let mut pipe = p.plan;
    if let Err(e) = pipe.write_all(&bytes) {
        return Err(HandOff::Gone(format!("its plan pipe: {e}")));
    }
    // EOF: the plan is whole.
    drop(pipe);
    let mut answer = p.answer;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("holder-answer".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut text = String::new();
            let read = (&mut answer).take(4096).read_to_string(&mut text);
            let _ = tx.send(read.map(|_| text));
        })
        .map_err(|e| HandOff::Gone(format!("a thread to read its answer: {e}")))?;
    let text = match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(text)) => text,
        Ok(Err(e)) => {
            return Err(HandOff::Failed(internal(format!(
                "the pod's namespace holder's answer: {e}"
            ))));
        }
        Err(_) => {
            // SAFETY: plain kill(2) of the holder we started.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
            return Err(HandOff::Failed(internal(
                "the pod's namespace holder did not answer in 10 s",
            )));
        }
    };
    if text.lines().any(|l| l == "ok") {
        *lock(&init.pid) = p.pid;
        return Ok(p.mark);
    }
    let why = text
        .lines()
        .find_map(|l| l.strip_prefix("error "))
        .unwrap_or("it ended without an answer");
    Err(HandOff::Failed(Error {
        code: ttrpc::Code::INVALID_ARGUMENT,
        message: format!(
            "the pod's namespace holder failed: {}",
            why.chars().take(512).collect::<String>()
        ),
    }))
}

/// Runs the holder and returns the reaper mark taken before it; sets `init`'s pid.
fn spawn_holder(plan: &crate::holder::Plan, init: &Proc) -> Result<u64> {
    let reaper = Reaper::get().ok_or_else(|| internal("no reaper"))?;
    let mut cmd = crate::holder::command(Path::new("/proc/self/exe"), &plan.to_args());
    let mark = reaper.mark();
    let out = reaper
        .output(&mut cmd, Duration::from_secs(10))
        .map_err(|e| internal(format!("start the pod's namespace holder: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pid = text
        .lines()
        .find_map(|l| l.strip_prefix("pid ")?.trim().parse::<i32>().ok());
    let failed = text.lines().find_map(|l| l.strip_prefix("error "));
    match (pid, failed, text.lines().any(|l| l == "ok")) {
        (Some(pid), None, true) if pid > 0 => {
            *lock(&init.pid) = pid;
            Ok(mark)
        }
        (_, why, _) => {
            let why = why.map(str::to_string).unwrap_or_else(|| {
                format!(
                    "exit {}, {}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr)
                        .chars()
                        .take(512)
                        .collect::<String>()
                )
            });
            Err(Error {
                code: ttrpc::Code::INVALID_ARGUMENT,
                message: format!(
                    "the pod's namespace holder failed: {}",
                    why.chars().take(512).collect::<String>()
                ),
            })
        }
    }
}

/// One thread per process claims its exit from the reaper and wakes every waiter. `mark` was
/// taken before crun started the process (see [`Reaper::watch_since`]).
fn watch_exit(c: &Arc<Container>, p: Arc<Proc>, is_init: bool, mark: u64) {
    let pid = p.pid();
    let cgroup = c.cgroup.clone();
    let oom_before = if is_init { 0 } else { oom_kills(&cgroup) };
    let Some(reaper) = Reaper::get() else {
        crate::error!("no reaper: cannot track pid {pid}");
        return;
    };
    reaper.watch_since(pid, mark);
    let spawned = std::thread::Builder::new()
        .name(format!("wait-{pid}"))
        .stack_size(64 * 1024)
        .spawn(move || {
            let status = match reaper.wait_pid(pid, None) {
                Ok(s) => s.code(),
                Err(e) => {
                    crate::error!("waiting for pid {pid}: {e}");
                    KILLED
                }
            };
            // The cgroup's oom_kill counter: for the init any OOM kill in the container; for
            // an exec, one during its life that also took it down (SIGKILL).
            let oom_killed = oom_kills(&cgroup) > oom_before && (is_init || status == KILLED);
            p.set_exit(Exit {
                status,
                at_unix_ns: now_ns(),
                oom_killed,
            });
        });
    if let Err(e) = spawned {
        crate::error!("cannot start waiter thread for pid {pid}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_ids() {
        assert!(valid_id("t1"));
        assert!(valid_id("a.b_c-9"));
        assert!(valid_id(&"a".repeat(128)));
        assert!(!valid_id(""));
        assert!(!valid_id("-x"));
        assert!(!valid_id(".x"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id("a b"));
        assert!(!valid_id("é"));
        assert!(!valid_id(&"a".repeat(129)));
    }

    #[test]
    fn waiters_all_get_the_exit_and_late_waiters_get_it_at_once() {
        let p = Proc::new(None, false);
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || p.wait())
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        let exit = Exit {
            status: 3,
            at_unix_ns: 1,
            oom_killed: false,
        };
        p.set_exit(exit);
        p.set_exit(Exit { status: 9, ..exit }); // the first exit wins
        for w in waiters {
            assert_eq!(w.join().unwrap(), exit);
        }
        assert_eq!(p.wait(), exit);
    }

    #[test]
    fn a_signal_to_all_that_took_the_process_down_first_is_delivered() {
        use nix::errno::Errno;
        // Seen in CI: SIGKILL to all reached the init through its cgroup, the reaper collected
        // it, and the direct kill(2) that followed found no such process.
        assert!(kill_failed(7, libc::SIGKILL, Errno::ESRCH, 3).is_ok());
        let gone = kill_failed(7, libc::SIGKILL, Errno::ESRCH, 0).unwrap_err();
        assert!(format!("{gone:?}").contains("already finished"), "{gone:?}");
        let refused = kill_failed(7, libc::SIGKILL, Errno::EPERM, 3).unwrap_err();
        assert!(format!("{refused:?}").contains("kill(7, 9)"), "{refused:?}");
    }

    #[test]
    fn reads_a_processs_signal_state_and_knows_what_an_init_drops() {
        let me = signal_state(std::process::id() as i32).expect("own status");
        assert!(me.start_time > 0);
        let init = |caught: u64, ignored: u64| SignalState {
            ns_init: true,
            caught,
            ignored,
            start_time: 1,
        };
        let term = 1u64 << (libc::SIGTERM - 1);
        assert!(dropped_by_init(&init(0, 0), libc::SIGTERM));
        assert!(!dropped_by_init(&init(term, 0), libc::SIGTERM), "a trap");
        assert!(
            !dropped_by_init(&init(0, term), libc::SIGTERM),
            "ignored on purpose"
        );
        assert!(!dropped_by_init(&init(0, 0), libc::SIGKILL));
        assert!(!dropped_by_init(&init(0, 0), libc::SIGSTOP));
        let not_init = SignalState {
            ns_init: false,
            ..init(0, 0)
        };
        assert!(!dropped_by_init(&not_init, libc::SIGTERM));
    }

    #[test]
    fn unknown_containers_are_not_found() {
        let c = Containers::new(None);
        let code = |r: Result<()>| r.unwrap_err().code;
        assert_eq!(code(c.remove("nope")), ttrpc::Code::NOT_FOUND);
        assert_eq!(code(c.close_stdin("nope", "")), ttrpc::Code::NOT_FOUND);
        assert_eq!(c.wait("nope", "").unwrap_err().code, ttrpc::Code::NOT_FOUND);
        assert_eq!(c.pids("nope").unwrap_err().code, ttrpc::Code::NOT_FOUND);
        let e = c
            .create("bad/id", b"{}", "s", "", false, false)
            .unwrap_err();
        assert_eq!(e.code, ttrpc::Code::INVALID_ARGUMENT);
        let e = c.create("ok", b"{}", "s", "", false, false).unwrap_err();
        assert_eq!(
            e.code,
            ttrpc::Code::FAILED_PRECONDITION,
            "no crun: {}",
            e.message
        );
    }
}
