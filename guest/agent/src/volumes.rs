//! Small volumes copied in by the host (resolv.conf, hosts, configmaps, secrets, tokens) and
//! pod-shared directories (emptyDir). Everything lives under VOLUMES_ROOT.
//!
//! The paths come from the host, and the directories they land in are bind-mounted into
//! containers, some of them writable: a container may have planted symlinks, FIFOs or device
//! nodes there. So every path is checked before anything is touched, walked one component at
//! a time from an open directory without ever following a symlink (`openat` with
//! `O_NOFOLLOW`), and only regular files are written to.
//!
//! Regular files are written in place (same inode), so a bind mount of a single file sees
//! every update. Symlinks are replaced atomically: the new link is made under a unique
//! temporary name next to the old one and renamed over it. Within one request directories
//! and files are written before any symlink, so kubelet's "atomic writer" layout
//! (configMap, secret, projected and service-account token volumes),
//!
//! ```text
//! ..2026_12_02_10_00_00.123456789/token    the data, in a timestamped directory
//! ..data -> ..2026_12_02_10_00_00.123456789
//! token -> ..data/token
//! ```
//!
//! switches from the old contents to the new ones at the one rename of `..data`, as it does
//! on the host. A request with a top-level `..data` link carries such a volume's whole tree:
//! the top-level entries it does not name (the previous timestamped directory, the link of a
//! removed key, a temporary name left by a crash) are removed after the switch, as kubelet
//! removes them.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File as StdFile;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat, renameat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, ftruncate, symlinkat, unlinkat};

use crate::error::Error;

pub const VOLUMES_ROOT: &str = "/run/cloudhv/volumes";
/// kubelet's atomic writer points this link at the current timestamped data directory.
const DATA_LINK: &str = "..data";
/// Directories deeper than this below a volume are not removed (nor walked into).
const MAX_REMOVE_DEPTH: usize = 64;

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

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

fn errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn failed(what: &str, path: &Path, e: Errno) -> Error {
    let why = match e {
        // What O_NOFOLLOW / O_DIRECTORY answer when a symlink or a file is in the way.
        Errno::ELOOP | Errno::ENOTDIR => {
            format!("{e} (a symlink or a non-directory is in the way)")
        }
        e => e.to_string(),
    };
    Error {
        code: ttrpc::Code::INTERNAL,
        message: format!("{what} {}: {why}", path.display()),
    }
}

/// `dir` must be strictly under `root` and relative paths must stay inside `dir` (only plain
/// names: no `..` component, not absolute). Names that merely start with dots (`..data`) are
/// plain names.
pub fn checked(root: &Path, dir: &str, rel: &str) -> Result<PathBuf, Error> {
    let dir = Path::new(dir);
    let inside = dir
        .strip_prefix(root)
        .is_ok_and(|r| r.components().next().is_some() && only_names(r));
    if !inside || !dir.is_absolute() {
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
    if !only_names(rel) {
        return invalid(format!(
            "volume file path {rel:?} must be relative and stay inside its volume"
        ));
    }
    Ok(dir.join(rel))
}

fn only_names(p: &Path) -> bool {
    p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// A symlink at `link` (relative to the volume) pointing at `target` must resolve inside the
/// volume: `target` is relative and its `..` components never climb above the volume. Judged
/// on the names alone; whatever the names are in the guest, nothing here follows a link.
pub fn link_stays_inside(link: &Path, target: &str) -> bool {
    let target = Path::new(target);
    if target.as_os_str().is_empty() {
        return false;
    }
    // Depth of the directory the link is in, below the volume.
    let mut depth = link.components().count().saturating_sub(1);
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

enum Kind<'a> {
    Dir,
    File(&'a [u8]),
    Link(&'a str),
}

/// One entry of a request, checked. `parts` is the path below the directory holding the
/// volume: the volume's own name first.
struct Entry<'a> {
    parts: Vec<&'a OsStr>,
    kind: Kind<'a>,
    mode: u32,
}

impl Entry<'_> {
    /// Directories, then files, then links: a link switches only to complete contents.
    fn rank(&self) -> u8 {
        match self.kind {
            Kind::Dir => 0,
            Kind::File(_) => 1,
            // kubelet's own links (`..data`) before the ones that go through them.
            Kind::Link(_)
                if self.parts.len() == 2 && self.parts[1].as_bytes().starts_with(b"..") =>
            {
                2
            }
            Kind::Link(_) => 3,
        }
    }

    fn is_data_link(&self) -> bool {
        matches!(self.kind, Kind::Link(_)) && self.parts.len() == 2 && self.parts[1] == DATA_LINK
    }
}

fn entry<'a>(volume: &'a OsStr, f: &'a File) -> Result<Entry<'a>, Error> {
    let rel = Path::new(&f.path);
    if !f.path.is_empty() && !only_names(rel) {
        return invalid(format!(
            "volume file path {:?} must be relative and stay inside its volume",
            f.path
        ));
    }
    let kind = match (f.is_dir, f.symlink.is_empty()) {
        (true, true) => Kind::Dir,
        (false, true) => Kind::File(&f.data),
        (true, false) => {
            return invalid(format!(
                "volume entry {:?} is both a directory and a symlink",
                f.path
            ));
        }
        (false, false) if f.path.is_empty() => {
            return invalid("a volume itself cannot be a symlink".to_string());
        }
        (false, false) => {
            if !link_stays_inside(rel, &f.symlink) {
                return invalid(format!(
                    "volume symlink {:?} -> {:?} must be relative and stay inside its volume",
                    f.path, f.symlink
                ));
            }
            Kind::Link(&f.symlink)
        }
    };
    let mut parts = vec![volume];
    parts.extend(rel.components().map(Component::as_os_str));
    Ok(Entry {
        parts,
        kind,
        mode: f.mode & 0o7777,
    })
}

/// Writes `files` into the volume directory `dir` (under `root`). Every entry is checked
/// before anything is written: one bad entry and nothing changes.
pub fn put(root: &Path, dir: &str, files: &[File]) -> Result<(), Error> {
    let base = checked(root, dir, "")?;
    let below: Vec<&OsStr> = base
        .strip_prefix(root)
        .map(|r| r.components().map(Component::as_os_str).collect())
        .unwrap_or_default();
    let Some((&volume, holder)) = below.split_last() else {
        return invalid(format!(
            "volume dir {} is not under {}",
            base.display(),
            root.display()
        ));
    };
    let mut entries = files
        .iter()
        .map(|f| entry(volume, f))
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(Entry::rank); // stable: the host's order within each rank

    std::fs::create_dir_all(root).map_err(|e| failed("mkdir", root, errno(e)))?;
    let root_fd: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(root)
        .map_err(|e| failed("open", root, errno(e)))?
        .into();
    let holder_path = base.parent().unwrap_or(root);
    let holder = walk(root_fd.as_fd(), holder).map_err(|e| failed("mkdir", holder_path, e))?;

    for e in &entries {
        let Some((name, dirs)) = e.parts.split_last() else {
            continue; // never: the volume's name comes first
        };
        let path = holder_path.join(e.parts.iter().collect::<PathBuf>());
        let parent_path = path.parent().unwrap_or(holder_path);
        let parent = walk(holder.as_fd(), dirs).map_err(|err| failed("mkdir", parent_path, err))?;
        match e.kind {
            Kind::Dir => {
                let d = open_dir(parent.as_fd(), name, true)
                    .map_err(|err| failed("mkdir", &path, err))?;
                fchmod(&d, Mode::from_bits_truncate(e.mode))
                    .map_err(|err| failed("chmod", &path, err))?;
            }
            Kind::File(data) => write_file(parent.as_fd(), name, data, e.mode)
                .map_err(|err| failed("write", &path, err))?,
            Kind::Link(target) => replace_link(parent.as_fd(), name, target)
                .map_err(|err| failed("symlink", &path, err))?,
        }
    }

    if entries.iter().any(Entry::is_data_link) {
        let keep: HashSet<&OsStr> = entries
            .iter()
            .filter_map(|e| e.parts.get(1).copied())
            .collect();
        let d = open_dir(holder.as_fd(), volume, false).map_err(|e| failed("open", &base, e))?;
        for name in names(d.as_fd()).map_err(|e| failed("list", &base, e))? {
            if !keep.contains(name.as_os_str()) {
                remove_tree(d.as_fd(), &name, 0)
                    .map_err(|e| failed("remove", &base.join(&name), e))?;
            }
        }
    }
    Ok(())
}

/// Opens the directory `name` in `parent`, never through a symlink; `create` makes it (0755)
/// when missing.
fn open_dir(parent: BorrowedFd, name: &OsStr, create: bool) -> nix::Result<OwnedFd> {
    match openat(parent, name, DIR_FLAGS, Mode::empty()) {
        Err(Errno::ENOENT) if create => {
            match mkdirat(parent, name, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
            openat(parent, name, DIR_FLAGS, Mode::empty())
        }
        other => other,
    }
}

/// Opens (making them as needed) the directories `parts` below `from`.
fn walk(from: BorrowedFd, parts: &[&OsStr]) -> nix::Result<OwnedFd> {
    let mut fd = from.try_clone_to_owned().map_err(errno)?;
    for part in parts {
        fd = open_dir(fd.as_fd(), part, true)?;
    }
    Ok(fd)
}

/// Writes a regular file in place (same inode when it exists). A symlink there is replaced
/// by the file; anything else that is not a regular file is refused, unopened.
fn write_file(parent: BorrowedFd, name: &OsStr, data: &[u8], mode: u32) -> nix::Result<()> {
    match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFREG => {}
            SFlag::S_IFLNK => unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)?,
            SFlag::S_IFDIR => return Err(Errno::EISDIR),
            _ => return Err(Errno::EINVAL),
        },
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(e),
    }
    // O_NONBLOCK: should a FIFO appear here after the check, opening it must not hang.
    let flags = OFlag::O_WRONLY
        | OFlag::O_CREAT
        | OFlag::O_NOFOLLOW
        | OFlag::O_NOCTTY
        | OFlag::O_NONBLOCK
        | OFlag::O_CLOEXEC;
    let fd = openat(parent, name, flags, Mode::from_bits_truncate(mode))?;
    if SFlag::from_bits_truncate(fstat(&fd)?.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
        return Err(Errno::EINVAL);
    }
    ftruncate(&fd, 0)?;
    fchmod(&fd, Mode::from_bits_truncate(mode))?;
    StdFile::from(fd).write_all(data).map_err(errno)
}

/// Points the link `name` at `target` with one rename: the link is made under a fresh
/// temporary name in the same directory first (`.<name>.cloudhv-tmp-<n>`).
fn replace_link(parent: BorrowedFd, name: &OsStr, target: &str) -> nix::Result<()> {
    if readlinkat(parent, name).is_ok_and(|t| t.as_os_str() == OsStr::new(target)) {
        return Ok(());
    }
    let mut attempts = 0;
    let tmp = loop {
        let tmp = tmp_name(name);
        match symlinkat(target, parent, tmp.as_os_str()) {
            Ok(()) => break tmp,
            Err(Errno::EEXIST) if attempts < 100 => attempts += 1,
            Err(e) => return Err(e),
        }
    };
    renameat(parent, tmp.as_os_str(), parent, name).inspect_err(|_| {
        let _ = unlinkat(parent, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
    })
}

fn tmp_name(name: &OsStr) -> OsString {
    // Room for the suffix within NAME_MAX (255).
    let name = &name.as_bytes()[..name.len().min(200)];
    let mut tmp = OsString::from(".");
    tmp.push(OsStr::from_bytes(name));
    tmp.push(format!(
        ".cloudhv-tmp-{}",
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    tmp
}

/// The names in a directory, without `.` and `..`.
fn names(dir: BorrowedFd) -> nix::Result<Vec<OsString>> {
    let mut d = Dir::from_fd(openat(dir, ".", DIR_FLAGS, Mode::empty())?)?;
    let mut out = Vec::new();
    for entry in d.iter() {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            out.push(OsString::from_vec(name));
        }
    }
    Ok(out)
}

/// Removes `name` from `parent`, a directory with everything in it; links are removed, not
/// followed.
fn remove_tree(parent: BorrowedFd, name: &OsStr, depth: usize) -> nix::Result<()> {
    match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
        Err(Errno::EISDIR) => {}
        other => return other,
    }
    if depth >= MAX_REMOVE_DEPTH {
        return Err(Errno::ELOOP);
    }
    let d = open_dir(parent, name, false)?;
    for child in names(d.as_fd())? {
        remove_tree(d.as_fd(), &child, depth + 1)?;
    }
    unlinkat(parent, name, UnlinkatFlags::RemoveDir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    fn scratch(tag: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("cloudhv-vol-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        root
    }

    fn file(path: &str, data: &str) -> File {
        File {
            path: path.into(),
            data: data.as_bytes().to_vec(),
            mode: 0o644,
            symlink: String::new(),
            is_dir: false,
        }
    }

    fn dir_entry(path: &str, mode: u32) -> File {
        File {
            path: path.into(),
            data: vec![],
            mode,
            symlink: String::new(),
            is_dir: true,
        }
    }

    fn link(path: &str, target: &str) -> File {
        File {
            path: path.into(),
            data: vec![],
            mode: 0,
            symlink: target.into(),
            is_dir: false,
        }
    }

    /// What the host sends for a kubelet atomic-writer volume whose data dir is `ts`, in the
    /// host's order (directories first, then by path length; see shim/src/volumes/volumes.ts).
    fn kubelet_volume(ts: &str, token: &str) -> Vec<File> {
        let mut files = vec![
            dir_entry("", 0o1777),
            dir_entry(ts, 0o755),
            link("token", "..data/token"),
            link("ca.crt", "..data/ca.crt"),
            link("..data", ts),
            link("namespace", "..data/namespace"),
            file(&format!("{ts}/token"), token),
            file(&format!("{ts}/ca.crt"), "CA"),
            file(&format!("{ts}/namespace"), "default"),
        ];
        files.sort_by(|a, b| {
            b.is_dir
                .cmp(&a.is_dir)
                .then(a.path.len().cmp(&b.path.len()))
        });
        files
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn keeps_writes_inside_the_volume_root() {
        let root = Path::new("/run/cloudhv/volumes");
        assert!(checked(root, "/run/cloudhv/volumes/c1/0", "a/b").is_ok());
        assert!(checked(root, "/run/cloudhv/volumes/c1/0", "..data/token").is_ok());
        assert!(
            checked(
                root,
                "/run/cloudhv/volumes/c1/0",
                "..2026_12_02_10_00_00.1/x"
            )
            .is_ok()
        );
        assert!(checked(root, "/etc", "passwd").is_err());
        assert!(
            checked(root, "/run/cloudhv/volumes", "x").is_err(),
            "the root itself"
        );
        assert!(checked(root, "/run/cloudhv/volumesX/a", "x").is_err());
        assert!(checked(root, "/run/cloudhv/volumes/../../etc", "x").is_err());
        assert!(checked(root, "/run/cloudhv/volumes/c1/../../x", "x").is_err());
        assert!(checked(root, "run/cloudhv/volumes/c1", "x").is_err());
        assert!(checked(root, "/run/cloudhv/volumes/c1/0", "../x").is_err());
        assert!(checked(root, "/run/cloudhv/volumes/c1/0", "a/../../x").is_err());
        assert!(checked(root, "/run/cloudhv/volumes/c1/0", "/etc/x").is_err());
        assert!(checked(root, "/run/cloudhv/volumes/c1/0", "./x").is_err());
    }

    #[test]
    fn symlinks_must_resolve_inside_the_volume() {
        let ok = |l: &str, t: &str| link_stays_inside(Path::new(l), t);
        assert!(ok("token", "..data/token"));
        assert!(ok("..data", "..2026_12_02_10_00_00.123456789"));
        assert!(ok("a/b", "../c"));
        assert!(ok("a/b/c", "../../d"));
        assert!(ok("a", "./b"));
        assert!(ok("a", "b/../c"));
        assert!(!ok("a", "../x"));
        assert!(!ok("a/b", "../../x"));
        assert!(!ok("a", "b/../../x"), "climbs out half way");
        assert!(!ok("a", "/etc/shadow"));
        assert!(!ok("a", ""));
    }

    #[test]
    fn rejects_escaping_entries_and_writes_nothing() {
        let root = scratch("reject");
        let dir = root.join("c1/0");
        let d = dir.to_str().unwrap();
        let bad: Vec<Vec<File>> = vec![
            vec![file("../x", "x")],
            vec![file("/etc/x", "x")],
            vec![file("a/../../x", "x")],
            vec![link("l", "/etc/shadow")],
            vec![link("l", "../../../etc/shadow")],
            vec![link("a/l", "../../x")],
            vec![link("", "x")],
            vec![File {
                is_dir: true,
                ..link("l", "x")
            }],
        ];
        for files in bad {
            let what = files[0].path.clone();
            // A good entry first: a bad one anywhere means nothing is written.
            let mut files = files;
            files.insert(0, file("ok", "ok"));
            let e = put(&root, d, &files).unwrap_err();
            assert_eq!(
                e.code,
                ttrpc::Code::INVALID_ARGUMENT,
                "{what}: {}",
                e.message
            );
            assert!(!root.exists(), "{what}: nothing may be written");
        }
        assert!(put(&root, "/etc", &[file("x", "x")]).is_err());
        assert!(put(&root, root.to_str().unwrap(), &[file("x", "x")]).is_err());
        assert!(!root.exists());
    }

    #[test]
    fn writes_files_in_place_dirs_and_links() {
        let root = scratch("basic");
        let dir = root.join("c1/0");
        let d = dir.to_str().unwrap();
        put(&root, d, &[file("a.txt", "one")]).unwrap();
        let inode = fs::metadata(dir.join("a.txt")).unwrap().ino();
        put(&root, d, &[file("a.txt", "two")]).unwrap();
        assert_eq!(fs::read_to_string(dir.join("a.txt")).unwrap(), "two");
        assert_eq!(fs::metadata(dir.join("a.txt")).unwrap().ino(), inode);
        put(&root, d, &[link("b", "a.txt")]).unwrap();
        assert_eq!(fs::read_to_string(dir.join("b")).unwrap(), "two");
        put(
            &root,
            d,
            &[dir_entry("sub/deeper", 0o700), file("sub/deeper/f", "f")],
        )
        .unwrap();
        assert_eq!(
            fs::metadata(dir.join("sub/deeper")).unwrap().mode() & 0o777,
            0o700
        );
        assert_eq!(fs::read_to_string(dir.join("sub/deeper/f")).unwrap(), "f");
        // A single-file volume: the dir itself is the file.
        let single = root.join("c1/1");
        put(
            &root,
            single.to_str().unwrap(),
            &[file("", "nameserver 10.0.0.10\n")],
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(&single).unwrap(),
            "nameserver 10.0.0.10\n"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn kubelet_atomic_writer_volume_is_put_then_updated() {
        let root = scratch("kubelet");
        let dir = root.join("containers/main/2");
        let d = dir.to_str().unwrap();
        let old = "..2026_12_02_10_00_00.123456789";
        let new = "..2026_12_02_10_10_00.987654321";

        put(&root, d, &kubelet_volume(old, "token-one")).unwrap();
        assert_eq!(fs::read_to_string(dir.join("token")).unwrap(), "token-one");
        assert_eq!(
            fs::read_to_string(dir.join("namespace")).unwrap(),
            "default"
        );
        assert_eq!(fs::read_link(dir.join("..data")).unwrap(), Path::new(old));
        assert_eq!(
            fs::read_link(dir.join("token")).unwrap(),
            Path::new("..data/token")
        );
        assert_eq!(
            listing(&dir),
            [old, "..data", "ca.crt", "namespace", "token"]
        );

        // kubelet rotated the token: a new timestamped dir, `..data` swapped, the old dir gone.
        let token_inode = fs::symlink_metadata(dir.join("token")).unwrap().ino();
        put(&root, d, &kubelet_volume(new, "token-two")).unwrap();
        assert_eq!(fs::read_to_string(dir.join("token")).unwrap(), "token-two");
        assert_eq!(fs::read_to_string(dir.join("ca.crt")).unwrap(), "CA");
        assert_eq!(fs::read_link(dir.join("..data")).unwrap(), Path::new(new));
        assert_eq!(
            listing(&dir),
            [new, "..data", "ca.crt", "namespace", "token"],
            "the old data dir is removed and no temporary entry is left"
        );
        assert_eq!(
            fs::symlink_metadata(dir.join("token")).unwrap().ino(),
            token_inode,
            "an unchanged link is left alone"
        );
        assert_eq!(listing(&dir.join(new)), ["ca.crt", "namespace", "token"]);

        // The same update again (the host re-sends when anything changed) changes nothing.
        put(&root, d, &kubelet_volume(new, "token-two")).unwrap();
        assert_eq!(
            listing(&dir),
            [new, "..data", "ca.crt", "namespace", "token"]
        );

        // A key removed from the configmap: its link goes too.
        let mut fewer = kubelet_volume(old, "token-three");
        fewer.retain(|f| !f.path.ends_with("namespace"));
        put(&root, d, &fewer).unwrap();
        assert_eq!(listing(&dir), [old, "..data", "ca.crt", "token"]);
        assert_eq!(
            fs::read_to_string(dir.join("token")).unwrap(),
            "token-three"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn data_link_switches_only_to_complete_contents() {
        // Whatever order the host sends, files are written before `..data` moves.
        let root = scratch("order");
        let dir = root.join("c/0");
        let d = dir.to_str().unwrap();
        put(&root, d, &kubelet_volume("..1", "one")).unwrap();
        let mut update = kubelet_volume("..2", "two");
        update.reverse();
        put(&root, d, &update).unwrap();
        assert_eq!(fs::read_to_string(dir.join("token")).unwrap(), "two");
        assert_eq!(
            listing(&dir),
            ["..2", "..data", "ca.crt", "namespace", "token"]
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn never_writes_through_links_planted_in_the_volume() {
        let root = scratch("planted");
        let outside = scratch("planted-outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), "keep").unwrap();
        let dir = root.join("c/0");
        let d = dir.to_str().unwrap();
        put(&root, d, &[dir_entry("", 0o777)]).unwrap();
        // A container with the volume mounted writable plants links.
        std::os::unix::fs::symlink(outside.join("secret"), dir.join("f")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("sub")).unwrap();

        put(&root, d, &[file("f", "replaced")]).unwrap();
        assert!(
            fs::symlink_metadata(dir.join("f")).unwrap().is_file(),
            "the link is replaced"
        );
        assert_eq!(fs::read_to_string(dir.join("f")).unwrap(), "replaced");
        let e = put(&root, d, &[file("sub/secret", "x")]).unwrap_err();
        assert_eq!(e.code, ttrpc::Code::INTERNAL, "{}", e.message);
        let e = put(&root, d, &[dir_entry("sub", 0o777)]).unwrap_err();
        assert_eq!(e.code, ttrpc::Code::INTERNAL, "{}", e.message);
        assert_eq!(fs::read_to_string(outside.join("secret")).unwrap(), "keep");

        // A FIFO where a file goes is refused without opening it (which would block).
        nix::unistd::mkfifo(&dir.join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        assert!(put(&root, d, &[file("fifo", "x")]).is_err());

        // Pruning an atomic-writer volume removes a planted link, not what it points at.
        std::os::unix::fs::symlink(&outside, dir.join("..old")).unwrap();
        put(&root, d, &kubelet_volume("..1", "t")).unwrap();
        assert!(!dir.join("..old").exists() && !dir.join("sub").exists());
        assert_eq!(fs::read_to_string(outside.join("secret")).unwrap(), "keep");
        fs::remove_dir_all(&root).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }
}
