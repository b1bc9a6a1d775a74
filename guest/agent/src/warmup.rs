//! A pool VM's practice container, run once before the agent serves. Under TCG a VM's first
//! container costs about twice a later one: crun's code and the kernel's namespace, cgroup and
//! overlay paths are translated for the first time. A pool VM (kernel argument [`ARG`]) pays
//! that while it waits for a pod instead of in its pod's first start.
//!
//! The container is built from nothing a pod gave: the guest's own read-only root under a
//! tmpfs overlay, `crun --version` as its process. Everything it made is gone before the agent
//! serves; a failure is logged and the VM serves anyway (only slower to start a pod).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::mount::MsFlags;

use crate::crun::run_crun;
use crate::mounts::{do_mount, unmount_all};

/// The kernel argument (passed to init: no dot, no `=`) that asks for a warm-up.
pub const ARG: &str = "cloudhv_warmup";
/// Its container id; gone before the first host call is served, so no pod's can meet it.
const ID: &str = "cloudhv-warmup";
const DIR: &str = "/run/cloudhv/warmup";

/// Runs the practice container; how long it took.
pub fn run(crun: &Path) -> Result<std::time::Duration, String> {
    let started = Instant::now();
    let dir = PathBuf::from(DIR);
    let scratch = dir.join("scratch");
    let rootfs = dir.join("rootfs");
    let bundle = dir.join("bundle");
    let mut mounted: Vec<PathBuf> = Vec::new();
    let result = (|| -> Result<(), String> {
        for d in [&scratch, &rootfs, &bundle] {
            fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        do_mount(
            None,
            &scratch,
            "tmpfs",
            MsFlags::empty(),
            Some("mode=0755,size=1m"),
        )
        .map_err(|e| e.message)?;
        mounted.push(scratch.clone());
        for d in ["upper", "work"] {
            fs::create_dir_all(scratch.join(d)).map_err(|e| format!("mkdir {d}: {e}"))?;
        }
        let options = format!(
            "lowerdir=/,upperdir={},workdir={}",
            scratch.join("upper").display(),
            scratch.join("work").display()
        );
        do_mount(None, &rootfs, "overlay", MsFlags::empty(), Some(&options))
            .map_err(|e| e.message)?;
        mounted.push(rootfs.clone());
        let spec = spec(&rootfs, crun);
        fs::write(bundle.join("config.json"), spec.to_string())
            .map_err(|e| format!("write config.json: {e}"))?;
        let bundle_arg = bundle.display().to_string();
        let ran = run_crun(crun, &["run", "--bundle", &bundle_arg, ID]).map_err(|e| e.message);
        let _ = run_crun(crun, &["delete", "--force", ID]);
        ran
    })();
    unmount_all(&mounted);
    let _ = fs::remove_dir_all(&dir);
    result.map(|()| started.elapsed())
}

/// What a pod's container asks for, in small: its own PID, mount, IPC and UTS namespaces, a
/// cgroup with limits, the usual mounts, a read-only root.
fn spec(rootfs: &Path, crun: &Path) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": [crun.display().to_string(), "--version"],
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            },
            "noNewPrivileges": true
        },
        "root": { "path": rootfs.display().to_string(), "readonly": true },
        "hostname": "warmup",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc",
              "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs",
              "options": ["nosuid", "noexec", "nodev", "ro"] },
            { "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
              "options": ["nosuid", "noexec", "nodev", "relatime", "ro"] }
        ],
        "linux": {
            "namespaces": [
                { "type": "pid" }, { "type": "mount" }, { "type": "ipc" }, { "type": "uts" }
            ],
            "cgroupsPath": "/cloudhv/warmup",
            "resources": {
                "memory": { "limit": 64 * 1024 * 1024 },
                "cpu": { "shares": 1024 },
                "pids": { "limit": 64 }
            },
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_practice_container_runs_crun_version_read_only_in_its_own_namespaces() {
        let s = spec(Path::new("/r"), Path::new("/usr/bin/crun"));
        assert_eq!(
            s["process"]["args"],
            serde_json::json!(["/usr/bin/crun", "--version"])
        );
        assert_eq!(s["root"]["readonly"], true);
        let kinds: Vec<&str> = s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["pid", "mount", "ipc", "uts"]);
        assert!(
            !ARG.contains('.') && !ARG.contains('='),
            "the kernel passes it to init"
        );
    }
}
