//! A CRI pod's namespace holder, in place of a pause container: no image, no disks, no crun.
//!
//! The agent runs its own binary as `cloudhv-agent --pause-holder <cgroup> <hostname>
//! [key=value...]` in new IPC, UTS and PID namespaces (unshared before the exec, so the agent's
//! memory is gone and only stdio is inherited). That process forks once: the child is PID 1 of
//! the new PID namespace (it reaps the pod's orphans, as pause does), the parent reports the
//! child's pid on stdout and exits. The child sets the pod's hostname and IPC sysctls, joins the
//! sandbox's cgroup, moves to an empty read-only root in a mount namespace of its own, drops
//! every capability, sets no_new_privs, makes itself non-dumpable (no ptrace or /proc peeking
//! without CAP_SYS_PTRACE) and waits: SIGTERM and SIGINT end it with 0 (pause's code).
//!
//! Protocol on stdout, one line each: `pid <n>` (parent) and `ok` or `error <why>` (child).
//!
//! A pool VM starts its holder ahead of its pod (`--pause-holder-pending`, [`main_pending`]):
//! the same process in the same new namespaces, whose child waits for its plan on stdin (the
//! arguments above, NUL-separated, up to EOF) before it does the rest. A claimed pod's sandbox
//! create then skips the exec, the fork and the namespaces' creation.

use std::io::Write;

/// The flag that selects this mode in `cloudhv-agent`'s arguments.
pub const FLAG: &str = "--pause-holder";
/// The flag of a holder started ahead of its pod, which reads its plan from stdin.
pub const PENDING_FLAG: &str = "--pause-holder-pending";
/// The most a pending holder reads as its plan (a plan is at most a few KiB).
const MAX_PLAN_BYTES: u64 = 64 * 1024;

/// IPC sysctls a pod may set (they belong to its IPC namespace, which the holder makes).
pub fn ipc_sysctl(key: &str) -> bool {
    let plain = !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        && !key.split('.').any(str::is_empty);
    plain
        && (key.starts_with("kernel.shm")
            || key.starts_with("kernel.msg")
            || key == "kernel.sem"
            || key.starts_with("fs.mqueue."))
}

/// What the holder is told: its cgroup (a path under /sys/fs/cgroup), hostname, sysctls.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub cgroup: String,
    pub hostname: String,
    pub sysctls: Vec<(String, String)>,
}

impl Plan {
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec![FLAG.to_string(), self.cgroup.clone(), self.hostname.clone()];
        a.extend(self.sysctls.iter().map(|(k, v)| format!("{k}={v}")));
        a
    }

    pub fn from_args(args: &[String]) -> Result<Plan, String> {
        let [flag, cgroup, hostname, rest @ ..] = args else {
            return Err("usage: --pause-holder <cgroup> <hostname> [key=value...]".into());
        };
        if flag != FLAG {
            return Err(format!("not {FLAG}"));
        }
        let mut sysctls = Vec::new();
        for kv in rest {
            let (k, v) = kv
                .split_once('=')
                .ok_or(format!("{kv:?} is not key=value"))?;
            if !ipc_sysctl(k) {
                return Err(format!("sysctl {k:?} is not an IPC sysctl"));
            }
            sysctls.push((k.to_string(), v.to_string()));
        }
        Ok(Plan {
            cgroup: cgroup.clone(),
            hostname: hostname.clone(),
            sysctls,
        })
    }
}

/// The plan as a pending holder reads it: its arguments, NUL-separated. None when one has a NUL.
pub fn plan_bytes(plan: &Plan) -> Option<Vec<u8>> {
    let args = plan.to_args();
    if args.iter().any(|a| a.contains('\0')) {
        return None;
    }
    Some(args.join("\0").into_bytes())
}

/// A pending holder's plan from what it read: [`plan_bytes`]'s form.
pub fn plan_from_bytes(bytes: &[u8]) -> Result<Plan, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the plan is not UTF-8".to_string())?;
    let args: Vec<String> = text.split('\0').map(str::to_string).collect();
    Plan::from_args(&args)
}

fn errno(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// The holder as the agent starts it: `binary` (the agent itself) named /pause, with the plan's
/// arguments and no environment, in new IPC, UTS and PID namespaces of its own.
pub fn command(binary: &std::path::Path, args: &[String]) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(binary);
    // Named as the pause process it replaces, in `ps` of a pod that shares its PID namespace.
    cmd.arg0("/pause").args(args).env_clear();
    // SAFETY: unshare(2) only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let flags = libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWPID;
            if libc::unshare(flags) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// `cloudhv-agent --pause-holder ...`: never returns.
pub fn main(args: &[String]) -> ! {
    // Nothing but stdio crosses the exec, whatever the spawner left open.
    // SAFETY: plain syscall on fd numbers.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    let plan = match Plan::from_args(args) {
        Ok(p) => p,
        Err(e) => report_and_exit(&format!("error {e}"), 2),
    };
    // SAFETY: single-threaded after exec; the child only makes syscalls and exits.
    match unsafe { libc::fork() } {
        -1 => report_and_exit(&format!("error {}", errno("fork")), 1),
        0 => child(&plan),
        pid => report_and_exit(&format!("pid {pid}"), 0),
    }
}

/// `cloudhv-agent --pause-holder-pending`: as [`main`], but the child reads its plan from stdin
/// first. Never returns.
pub fn main_pending() -> ! {
    // SAFETY: plain syscall on fd numbers.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    // SAFETY: single-threaded after exec; the child only makes syscalls and exits.
    match unsafe { libc::fork() } {
        -1 => report_and_exit(&format!("error {}", errno("fork")), 1),
        0 => {
            use std::io::Read;
            let mut bytes = Vec::new();
            if let Err(e) = std::io::stdin()
                .take(MAX_PLAN_BYTES + 1)
                .read_to_end(&mut bytes)
            {
                report_and_exit(&format!("error reading the plan: {e}"), 1);
            }
            if bytes.len() as u64 > MAX_PLAN_BYTES {
                report_and_exit(&format!("error the plan is over {MAX_PLAN_BYTES} bytes"), 2);
            }
            match plan_from_bytes(&bytes) {
                Ok(plan) => child(&plan),
                Err(e) => report_and_exit(&format!("error {e}"), 2),
            }
        }
        pid => report_and_exit(&format!("pid {pid}"), 0),
    }
}

fn report_and_exit(line: &str, code: i32) -> ! {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    // SAFETY: ends the process without running anything else.
    unsafe { libc::_exit(code) }
}

extern "C" fn on_stop(_: libc::c_int) {
    // SAFETY: async-signal-safe.
    unsafe { libc::_exit(0) }
}

extern "C" fn on_child(_: libc::c_int) {}

fn child(plan: &Plan) -> ! {
    // Opened before the root is emptied; stdio goes there once reported, so the agent's read
    // of stdout ends (EOF) with "ok".
    // SAFETY: plain open(2).
    let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
    if null < 0 {
        report_and_exit(&format!("error {}", errno("open /dev/null")), 1);
    }
    if let Err(e) = setup(plan) {
        report_and_exit(&format!("error {e}"), 1);
    }
    let _ = writeln!(std::io::stdout(), "ok");
    let _ = std::io::stdout().flush();
    // SAFETY: fd juggling on our own stdio.
    unsafe {
        for fd in 0..3 {
            libc::dup2(null, fd);
        }
        if null > 2 {
            libc::close(null);
        }
    }
    loop {
        let mut status = 0;
        // SAFETY: reaps any child of ours (orphans of the pod's PID namespace).
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            // SAFETY: sleeps until a signal.
            unsafe { libc::pause() };
        }
    }
}

fn setup(plan: &Plan) -> Result<(), String> {
    // SAFETY: sigaction with handlers that only call _exit or nothing; without a handler the
    // kernel drops SIGTERM/SIGINT for a namespace's init.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_stop as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        for sig in [libc::SIGTERM, libc::SIGINT] {
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(errno("sigaction"));
            }
        }
        sa.sa_sigaction = on_child as *const () as usize;
        sa.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
        if libc::sigaction(libc::SIGCHLD, &sa, std::ptr::null_mut()) != 0 {
            return Err(errno("sigaction"));
        }
    }
    if !plan.hostname.is_empty() {
        nix::unistd::sethostname(&plan.hostname)
            .map_err(|e| format!("hostname {:?}: {e}", plan.hostname))?;
    }
    for (k, v) in &plan.sysctls {
        // Written from inside the new IPC namespace: they are the pod's, not the guest's.
        std::fs::write(format!("/proc/sys/{}", k.replace('.', "/")), v)
            .map_err(|e| format!("sysctl {k} = {v:?}: {e}"))?;
    }
    let cgroup = format!("{}/cgroup.procs", plan.cgroup);
    std::fs::write(&cgroup, "0").map_err(|e| format!("join {cgroup}: {e}"))?;
    empty_root()?;
    drop_privileges()
}

fn empty_root() -> Result<(), String> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    // SAFETY: plain syscall.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(errno("unshare the mount namespace"));
    }
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make / private: {e}"))?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("holder"),
        "/run",
        Some("tmpfs"),
        flags,
        Some("size=4k,nr_inodes=4,mode=0555"),
    )
    .map_err(|e| format!("mount the empty root: {e}"))?;
    std::env::set_current_dir("/run").map_err(|e| format!("chdir: {e}"))?;
    // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only the new.
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detach the old root: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

fn drop_privileges() -> Result<(), String> {
    // SAFETY: prctl/capset with plain values and a local buffer.
    unsafe {
        for cap in 0..=63 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
            {
                return Err(errno("drop the bounding set"));
            }
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        let header = Header {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        let data = [0u32; 6];
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0 {
            return Err(errno("capset"));
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(errno("no_new_privs"));
        }
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(errno("dumpable"));
        }
    }
    Ok(())
}

/// The holder's command line for a sandbox spec (already rewritten: `net.*` sysctls taken out).
pub fn plan_for(spec: &serde_json::Value, cgroup: &str) -> Result<Plan, String> {
    let hostname = spec
        .get("hostname")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("");
    if hostname.len() > 64 || hostname.contains('\0') {
        return Err(format!(
            "hostname {:?} is longer than 64 bytes or has a NUL",
            hostname.chars().take(80).collect::<String>()
        ));
    }
    let mut sysctls = Vec::new();
    if let Some(map) = spec
        .get("linux")
        .and_then(|l| l.get("sysctl"))
        .and_then(serde_json::Value::as_object)
    {
        for (k, v) in map {
            let k = k.replace('/', ".");
            let v = v.as_str().unwrap_or("");
            if !ipc_sysctl(&k) {
                return Err(format!(
                    "sysctl {:?}: a pod's sandbox can set IPC sysctls (kernel.shm*, kernel.msg*, \
                     kernel.sem, fs.mqueue.*) and net.*; drop it from the pod's securityContext",
                    k.chars().take(128).collect::<String>()
                ));
            }
            if v.len() > 4096 || v.contains('\0') {
                return Err(format!(
                    "sysctl {k}: value is longer than 4096 bytes or has a NUL"
                ));
            }
            sysctls.push((k, v.to_string()));
        }
    }
    Ok(Plan {
        cgroup: cgroup.to_string(),
        hostname: hostname.to_string(),
        sysctls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ipc_sysctls_pass() {
        for ok in [
            "kernel.shmmax",
            "kernel.msgmax",
            "kernel.sem",
            "fs.mqueue.msg_max",
        ] {
            assert!(ipc_sysctl(ok), "{ok}");
        }
        for bad in [
            "kernel.hostname",
            "kernel.shm/../../x",
            "fs.mqueue",
            "kernel.sem.",
            "net.ipv4.ip_forward",
            "kernel..shmmax",
            "",
        ] {
            assert!(!ipc_sysctl(bad), "{bad}");
        }
    }

    #[test]
    fn a_pending_holders_plan_round_trips_through_its_bytes_and_refuses_a_nul() {
        let plan = Plan {
            cgroup: "/sys/fs/cgroup/kubepods/pod1/sb".into(),
            hostname: "web 0".into(),
            sysctls: vec![("kernel.shmmax".into(), "65536 x".into())],
        };
        let bytes = plan_bytes(&plan).unwrap();
        assert_eq!(plan_from_bytes(&bytes).unwrap(), plan);
        let empty = Plan {
            cgroup: "/c".into(),
            hostname: String::new(),
            sysctls: vec![],
        };
        assert_eq!(
            plan_from_bytes(&plan_bytes(&empty).unwrap()).unwrap(),
            empty
        );
        // A NUL would split an argument in two: refused before it is sent.
        let nul = Plan {
            cgroup: "/c\0/x".into(),
            ..empty
        };
        assert!(plan_bytes(&nul).is_none());
        // What reaches the holder is checked as the exec's arguments are.
        assert!(plan_from_bytes(b"--pause-holder\0/c\0h\0net.ipv4.ip_forward=1").is_err());
        assert!(plan_from_bytes(b"--pause-holder-pending\0/c\0h").is_err());
        assert!(plan_from_bytes(&[0xff, 0xfe]).is_err());
        assert!(plan_from_bytes(b"").is_err());
    }

    #[test]
    fn plan_round_trips_through_args_and_refuses_other_sysctls() {
        let spec = serde_json::json!({
            "hostname": "web-0",
            "linux": {"sysctl": {"kernel.shmmax": "65536", "fs/mqueue/msg_max": "20"}}
        });
        let plan = plan_for(&spec, "/sys/fs/cgroup/pod/sb").unwrap();
        assert_eq!(plan.hostname, "web-0");
        assert_eq!(plan.sysctls.len(), 2);
        let args = plan.to_args();
        assert_eq!(Plan::from_args(&args).unwrap(), plan);
        let bad = serde_json::json!({"linux": {"sysctl": {"kernel.domainname": "x"}}});
        let e = plan_for(&bad, "/c").unwrap_err();
        assert!(e.contains("kernel.domainname"), "{e}");
        let long = serde_json::json!({"hostname": "h".repeat(65)});
        assert!(plan_for(&long, "/c").is_err());
        let mut forged = args.clone();
        forged.push("kernel.core_pattern=|/x".into());
        assert!(Plan::from_args(&forged).is_err());
    }
}
