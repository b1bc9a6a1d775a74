//! Runs the real agent binary as a pod's namespace holder (`--pause-holder`), spawned as the
//! agent spawns it (new IPC, UTS and PID namespaces), and checks what it became: PID 1 of its
//! PID namespace, in namespaces of its own, an empty root, no capabilities, no_new_privs,
//! non-dumpable, in its cgroup; SIGKILL-proof from inside is the VM test's (cri.test.ts); here
//! SIGTERM ends it with 0. Needs root (unshare); skipped otherwise.

use std::process::Stdio;

const BIN: &str = env!("CARGO_BIN_EXE_cloudhv-agent");

fn spawn(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    // The agent's own spawn (spawn_holder): named /pause, new IPC, UTS and PID namespaces.
    cloudhv_agent::holder::command(std::path::Path::new(BIN), &args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run the holder")
}

fn ns(pid: &str, name: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{name}"))
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn holder_holds_namespaces_with_nothing_else_and_ends_on_sigterm() {
    // SAFETY: plain syscalls.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    // Orphans come to us, so the holder's exit status can be read.
    // SAFETY: prctl with plain values.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let dir = std::env::temp_dir().join(format!("cloudhv-holder-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cgroup = dir.display().to_string();
    let out = spawn(&[
        "--pause-holder",
        &cgroup,
        "holder-test",
        "kernel.shmmni=1234",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text} {:?}", out.stderr);
    assert!(text.lines().any(|l| l == "ok"), "{text}");
    let pid = text
        .lines()
        .find_map(|l| l.strip_prefix("pid "))
        .expect("a pid line")
        .to_string();
    // A failed assertion below still ends the holder and removes the test dir.
    let mut guard = Guard {
        pid: pid.parse().unwrap(),
        dir: dir.clone(),
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    assert!(
        field("NSpid:").ends_with("\t1") || field("NSpid:").ends_with(" 1"),
        "{status}"
    );
    for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(cap), "0000000000000000", "{cap}");
    }
    assert_eq!(field("NoNewPrivs:"), "1");
    for name in ["ipc", "uts", "pid", "mnt"] {
        assert_ne!(
            ns(&pid, name),
            ns("self", name),
            "{name} namespace is its own"
        );
    }
    assert_eq!(ns(&pid, "net"), ns("self", "net"), "the guest's network");
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .collect();
    assert!(root.is_empty(), "an empty root");
    // Non-dumpable: /proc/<pid> files belong to root, not to the process's (here also root)
    // uid; the VM test shows a container cannot read them.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.starts_with(b"/pause\0--pause-holder\0"));
    // It joined its cgroup by writing "0" (a plain file here: no cgroupfs in a test dir).
    assert_eq!(
        std::fs::read_to_string(dir.join("cgroup.procs")).unwrap(),
        "0"
    );
    let pid: i32 = pid.parse().unwrap();
    // SAFETY: kill/waitpid on our own (re-parented) child.
    let code = unsafe {
        libc::kill(pid, libc::SIGTERM);
        let mut st = 0;
        assert_eq!(libc::waitpid(pid, &mut st, 0), pid);
        guard.pid = 0;
        assert!(libc::WIFEXITED(st), "ended by a signal: {st:#x}");
        libc::WEXITSTATUS(st)
    };
    assert_eq!(code, 0, "pause's exit code for SIGTERM");
}

struct Guard {
    pid: i32,
    dir: std::path::PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: kill/waitpid of our own child; harmless once it is gone.
        unsafe {
            if self.pid > 0 && libc::kill(self.pid, libc::SIGKILL) == 0 {
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn holder_refuses_a_sysctl_that_is_not_the_pods_ipc() {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let out = spawn(&[
        "--pause-holder",
        "/nonexistent",
        "h",
        "kernel.core_pattern=|/x",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("error sysctl \"kernel.core_pattern\""),
        "{text}"
    );
    assert!(!text.contains("pid "), "nothing was started: {text}");
}
