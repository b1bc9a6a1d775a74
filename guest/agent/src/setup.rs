//! PID 1 system setup: the kernel only mounted the read-only erofs root; everything else —
//! proc, sys, dev, cgroup2 and every writable place (tmpfs) — is mounted here. Failures are
//! logged and skipped; nothing here may take PID 1 down.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sys::stat::Mode;

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
    /// Create the mount point first (only possible on an already-writable parent).
    mkdir: bool,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

fn mounts() -> [Mount; 8] {
    [
        Mount {
            source: "proc",
            target: "/proc",
            fstype: "proc",
            flags: NOSUID_NODEV_NOEXEC,
            data: None,
            mkdir: false,
        },
        Mount {
            source: "sysfs",
            target: "/sys",
            fstype: "sysfs",
            flags: NOSUID_NODEV_NOEXEC,
            data: None,
            mkdir: false,
        },
        Mount {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: MsFlags::MS_NOSUID,
            data: Some("mode=0755"),
            mkdir: false,
        },
        Mount {
            source: "devpts",
            target: "/dev/pts",
            fstype: "devpts",
            flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
            data: Some("newinstance,ptmxmode=0666,mode=0620"),
            mkdir: true,
        },
        Mount {
            source: "shm",
            target: "/dev/shm",
            fstype: "tmpfs",
            flags: NOSUID_NODEV,
            data: Some("mode=1777"),
            mkdir: true,
        },
        Mount {
            source: "tmpfs",
            target: "/tmp",
            fstype: "tmpfs",
            flags: NOSUID_NODEV,
            data: Some("mode=1777"),
            mkdir: false,
        },
        Mount {
            source: "tmpfs",
            target: "/run",
            fstype: "tmpfs",
            flags: NOSUID_NODEV,
            data: Some("mode=0755"),
            mkdir: false,
        },
        Mount {
            source: "cgroup2",
            target: "/sys/fs/cgroup",
            fstype: "cgroup2",
            flags: NOSUID_NODEV_NOEXEC,
            data: None,
            mkdir: false,
        },
    ]
}

/// Mount targets already present in a /proc/self/mounts text, with their fs type.
pub fn mounted_targets(mounts_text: &str) -> Vec<(String, String)> {
    mounts_text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let _src = it.next()?;
            let target = it.next()?.replace("\\040", " ");
            let fstype = it.next()?;
            Some((target, fstype.to_string()))
        })
        .collect()
}

pub fn mount_all() {
    for m in mounts() {
        // /proc comes first, so from the second entry on we can see what is already there
        // (e.g. /dev when the kernel has CONFIG_DEVTMPFS_MOUNT).
        let present = fs::read_to_string("/proc/self/mounts")
            .map(|t| mounted_targets(&t))
            .unwrap_or_default();
        if present.iter().any(|(t, f)| t == m.target && f == m.fstype) {
            crate::info!("{} already mounted ({})", m.target, m.fstype);
        } else {
            do_mount(&m);
        }
        if m.target == "/dev" {
            crate::log::use_console();
            fix_stdio();
        }
    }
    dev_links();
}

fn do_mount(m: &Mount) {
    if m.mkdir
        && let Err(e) = fs::create_dir_all(m.target)
    {
        crate::error!("mkdir {}: {e}", m.target);
        return;
    }
    if let Err(e) = mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
        crate::error!("mount {} on {} failed: {e}", m.fstype, m.target);
    }
}

/// If the kernel could not open /dev/console for us (no /dev/console in the image), fds 0-2
/// are closed and the next open() would land on them: point them at the console or /dev/null.
fn fix_stdio() {
    for fd in 0..3 {
        if nix::fcntl::fcntl(
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            nix::fcntl::FcntlArg::F_GETFD,
        )
        .is_ok()
        {
            continue;
        }
        let path = if fd == 0 { "/dev/null" } else { "/dev/console" };
        match fs::OpenOptions::new()
            .read(fd == 0)
            .write(fd != 0)
            .open(path)
        {
            Ok(f) => {
                if f.as_raw_fd() != fd {
                    unsafe { libc::dup2(f.as_raw_fd(), fd) };
                } else {
                    std::mem::forget(f);
                }
            }
            Err(e) => crate::warn!("cannot open {path} for fd {fd}: {e}"),
        }
    }
}

fn dev_links() {
    let links = [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ];
    for (link, target) in links {
        if fs::read_link(link)
            .map(|t| t == Path::new(target))
            .unwrap_or(false)
        {
            continue;
        }
        // devtmpfs creates /dev/ptmx as a char device: replace it with the link into our
        // devpts instance (newinstance).
        let _ = fs::remove_file(link);
        if let Err(e) = std::os::unix::fs::symlink(target, link) {
            crate::error!("symlink {link} -> {target}: {e}");
        }
    }
}

/// Controllers we want delegated to containers, in the order written.
pub const WANTED_CONTROLLERS: [&str; 5] = ["cpuset", "cpu", "io", "memory", "pids"];

/// The `+ctrl` words to write to cgroup.subtree_control, given cgroup.controllers.
pub fn controllers_to_enable(available: &str) -> Vec<String> {
    let avail: Vec<&str> = available.split_whitespace().collect();
    WANTED_CONTROLLERS
        .iter()
        .filter(|c| avail.contains(c))
        .map(|c| format!("+{c}"))
        .collect()
}

pub fn enable_cgroup_controllers(root: &Path) {
    let available = match fs::read_to_string(root.join("cgroup.controllers")) {
        Ok(s) => s,
        Err(e) => {
            crate::error!(
                "cgroup2: cannot read {}/cgroup.controllers: {e}",
                root.display()
            );
            return;
        }
    };
    let mut enabled = Vec::new();
    for word in controllers_to_enable(&available) {
        // One write per controller so one refusal does not block the others.
        match fs::write(root.join("cgroup.subtree_control"), &word) {
            Ok(()) => enabled.push(word[1..].to_string()),
            Err(e) => crate::warn!("cgroup2: cannot enable {}: {e}", &word[1..]),
        }
    }
    let missing: Vec<&str> = WANTED_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| !enabled.iter().any(|e| e == c))
        .collect();
    if missing.is_empty() {
        crate::info!("cgroup2 controllers: {}", enabled.join(" "));
    } else {
        crate::info!(
            "cgroup2 controllers: {} (not available: {})",
            enabled.join(" "),
            missing.join(" ")
        );
    }
}

pub fn set_hostname(name: &str) {
    if let Err(e) = nix::unistd::sethostname(name) {
        crate::error!("sethostname {name}: {e}");
    }
}

/// Full PID-1 setup.
pub fn setup_system() {
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    mount_all();
    enable_cgroup_controllers(Path::new("/sys/fs/cgroup"));
    set_hostname("cloudhv");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_mounts() {
        let text = "/dev/root / erofs ro,relatime 0 0\nproc /proc proc rw 0 0\ndevtmpfs /dev devtmpfs rw 0 0\nx /a\\040b tmpfs rw 0 0\n";
        let m = mounted_targets(text);
        assert_eq!(m[1], ("/proc".to_string(), "proc".to_string()));
        assert_eq!(m[2], ("/dev".to_string(), "devtmpfs".to_string()));
        assert_eq!(m[3].0, "/a b");
    }

    #[test]
    fn enables_only_available_controllers() {
        assert_eq!(
            controllers_to_enable("cpuset cpu io memory hugetlb pids rdma misc\n"),
            ["+cpuset", "+cpu", "+io", "+memory", "+pids"]
        );
        assert_eq!(controllers_to_enable("memory pids\n"), ["+memory", "+pids"]);
        assert!(controllers_to_enable("").is_empty());
    }

    #[test]
    fn writes_controllers_into_fake_cgroupfs() {
        let dir = std::env::temp_dir().join(format!("cloudhv-agent-cg-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        enable_cgroup_controllers(&dir);
        // A regular file keeps only the last write; the real file accumulates.
        assert_eq!(
            fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
