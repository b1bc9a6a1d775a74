//! The host's disks in the guest: finding a virtio-blk disk by its serial, mounting and
//! unmounting (a container's image, scratch disk and overlay).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::error::{Result, err, internal};

/// How long a disk may take to show up in /sys/block (hot-plug, slow TCG guests).
const DISK_WAIT: Duration = Duration::from_secs(10);

/// Finds the block device whose virtio serial is `serial`, looking in a directory laid out
/// like /sys/block/<dev>/serial. Never guesses by name.
pub fn find_disk(sys_block: &Path, serial: &str) -> Option<PathBuf> {
    if serial.is_empty() {
        return None;
    }
    let mut names: Vec<_> = fs::read_dir(sys_block)
        .ok()?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let found = fs::read_to_string(Path::new(sys_block).join(&name).join("serial"))
            .map(|s| s.trim_end_matches(['\0', '\n', ' ']) == serial)
            .unwrap_or(false);
        found.then(|| Path::new("/dev").join(name))
    })
}

pub(crate) fn wait_for_disk(serial: &str, what: &str) -> Result<PathBuf> {
    if !serial
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        || serial.is_empty()
        || serial.len() > 20
    {
        return err(
            ttrpc::Code::INVALID_ARGUMENT,
            format!("{what} serial {serial:?} is not a virtio-blk serial (1-20 of [A-Za-z0-9_-])"),
        );
    }
    let deadline = Instant::now() + DISK_WAIT;
    loop {
        if let Some(dev) = find_disk(Path::new("/sys/block"), serial) {
            // The sysfs entry can precede the device node by a moment.
            if dev.exists() {
                return Ok(dev);
            }
        }
        if Instant::now() > deadline {
            return err(
                ttrpc::Code::NOT_FOUND,
                format!(
                    "{what}: no disk with serial {serial:?} appeared in /sys/block within {} s",
                    DISK_WAIT.as_secs()
                ),
            );
        }
        // A hot-plugged disk shows up within tens of ms: each poll is one readdir of /sys/block.
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub(crate) fn do_mount(
    source: Option<&Path>,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    let source = source
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(fstype));
    mount(Some(&source), target, Some(fstype), flags, data).map_err(|e| {
        internal(format!(
            "mount {fstype} {} on {}: {e}",
            source.display(),
            target.display()
        ))
    })
}

/// Unmounts one mount point, retrying briefly while busy, detaching as a last resort.
pub(crate) fn unmount(target: &Path) -> nix::Result<()> {
    for _ in 0..25 {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()), // not mounted
            Err(nix::errno::Errno::EBUSY) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e),
        }
    }
    umount2(target, MntFlags::MNT_DETACH)
}

/// Unmounts in reverse order (innermost last mounted first); errors are logged.
pub(crate) fn unmount_all(mounts: &[PathBuf]) {
    for m in mounts.iter().rev() {
        if let Err(e) = unmount(m) {
            crate::warn!("unmount {}: {e}", m.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_disks_by_serial_only() {
        let dir = std::env::temp_dir().join(format!("cloudhv-sysblock-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for (name, serial) in [
            ("vda", "cloudhv-rootfs"),
            ("vdb", "s123\0\0"),
            ("vdc", "i456\n"),
            ("vdd", "i4567"),
        ] {
            fs::create_dir_all(dir.join(name)).unwrap();
            fs::write(dir.join(name).join("serial"), serial).unwrap();
        }
        fs::create_dir_all(dir.join("loop0")).unwrap(); // no serial file
        assert_eq!(find_disk(&dir, "i456"), Some(PathBuf::from("/dev/vdc")));
        assert_eq!(find_disk(&dir, "i4567"), Some(PathBuf::from("/dev/vdd")));
        assert_eq!(find_disk(&dir, "s123"), Some(PathBuf::from("/dev/vdb")));
        assert_eq!(find_disk(&dir, "s12"), None, "no prefix matches");
        assert_eq!(find_disk(&dir, ""), None);
        assert_eq!(find_disk(&dir.join("missing"), "s123"), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_bad_serials_before_waiting() {
        let e = wait_for_disk("../vda", "rootfs disk").unwrap_err();
        assert_eq!(e.code, ttrpc::Code::INVALID_ARGUMENT);
        assert!(wait_for_disk("", "x").is_err());
        assert!(wait_for_disk(&"a".repeat(21), "x").is_err());
    }
}
