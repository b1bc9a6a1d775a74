//! Small volumes copied in by the host (resolv.conf, hosts, configmaps, secrets, tokens) and
//! pod-shared directories (emptyDir). Everything lives under VOLUMES_ROOT; files are written in
//! place so a bind mount of a single file sees every update.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::container::Error;

pub const VOLUMES_ROOT: &str = "/run/cloudhv/volumes";

pub struct File {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
    pub symlink: String,
    pub is_dir: bool,
}

fn invalid<T>(message: String) -> Result<T, Error> {
    Err(Error {
        code: ttrpc::Code::INVALID_ARGUMENT,
        message,
    })
}

fn io<T>(what: String, e: std::io::Error) -> Result<T, Error> {
    Err(Error {
        code: ttrpc::Code::INTERNAL,
        message: format!("{what}: {e}"),
    })
}

/// `dir` must be under `root` and relative paths must stay inside `dir` (no `..`, not absolute).
pub fn checked(root: &Path, dir: &str, rel: &str) -> Result<PathBuf, Error> {
    let dir = Path::new(dir);
    if !dir.starts_with(root) || dir.components().any(|c| matches!(c, Component::ParentDir)) {
        return invalid(format!(
            "volume dir {} is not under {}",
            dir.display(),
            root.display()
        ));
    }
    if rel.is_empty() {
        return Ok(dir.to_path_buf());
    }
    let rel = Path::new(rel);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return invalid(format!(
            "volume file path {:?} must be relative and stay inside its volume",
            rel
        ));
    }
    Ok(dir.join(rel))
}

pub fn put(root: &Path, dir: &str, files: &[File]) -> Result<(), Error> {
    let base = checked(root, dir, "")?;
    for f in files {
        let target = if f.path.is_empty() {
            base.clone()
        } else {
            checked(root, dir, &f.path)?
        };
        if let Some(parent) = target.parent()
            && let Err(e) = fs::create_dir_all(parent)
        {
            return io(format!("mkdir {}", parent.display()), e);
        }
        if f.is_dir {
            if let Err(e) = fs::create_dir_all(&target) {
                return io(format!("mkdir {}", target.display()), e);
            }
            let _ = fs::set_permissions(&target, fs::Permissions::from_mode(f.mode & 0o7777));
        } else if !f.symlink.is_empty() {
            // Replace the link atomically: configmap updates swap `..data` this way.
            let tmp = target.with_extension("cloudhv-new-link");
            let _ = fs::remove_file(&tmp);
            if let Err(e) = std::os::unix::fs::symlink(&f.symlink, &tmp) {
                return io(format!("symlink {}", target.display()), e);
            }
            if let Err(e) = fs::rename(&tmp, &target) {
                return io(format!("rename link {}", target.display()), e);
            }
        } else {
            // In place (same inode): a bind mount of this very file sees the new content.
            let written = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(f.mode & 0o7777)
                .open(&target)
                .and_then(|mut out| out.write_all(&f.data));
            if let Err(e) = written {
                return io(format!("write {}", target.display()), e);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_writes_inside_the_volume_root() {
        let root = Path::new("/run/cloudhv/volumes");
        assert!(checked(root, "/run/cloudhv/volumes/c1/0", "a/b").is_ok());
        assert!(checked(root, "/etc", "passwd").is_err());
        assert!(checked(root, "/run/cloudhv/volumes/../../etc", "x").is_err());
        assert!(checked(root, "/run/cloudhv/volumes/c1/0", "../x").is_err());
        assert!(checked(root, "/run/cloudhv/volumes/c1/0", "/etc/x").is_err());
    }

    #[test]
    fn writes_files_in_place_dirs_and_links() {
        let root = std::env::temp_dir().join(format!("cloudhv-vol-{}", std::process::id()));
        let dir = root.join("c1/0");
        let f = |path: &str, data: &str| File {
            path: path.into(),
            data: data.as_bytes().to_vec(),
            mode: 0o644,
            symlink: String::new(),
            is_dir: false,
        };
        put(&root, dir.to_str().unwrap(), &[f("a.txt", "one")]).unwrap();
        let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(dir.join("a.txt")).unwrap());
        put(&root, dir.to_str().unwrap(), &[f("a.txt", "two")]).unwrap();
        assert_eq!(fs::read_to_string(dir.join("a.txt")).unwrap(), "two");
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(dir.join("a.txt")).unwrap()),
            inode
        );
        let link = File {
            path: "b".into(),
            data: vec![],
            mode: 0,
            symlink: "a.txt".into(),
            is_dir: false,
        };
        put(&root, dir.to_str().unwrap(), &[link]).unwrap();
        assert_eq!(fs::read_to_string(dir.join("b")).unwrap(), "two");
        fs::remove_dir_all(&root).unwrap();
    }
}
