//! Rewrites the OCI runtime spec the host sends (containerd's config.json) into one crun can
//! run inside the guest: the root becomes the overlay we assembled, and everything that names
//! host objects (hooks, namespace paths, host bind mounts, LSM labels) is dropped.

use serde_json::{Map, Value};
use std::path::Path;

/// Mount types that make sense inside the guest without a host source.
const GUEST_MOUNT_TYPES: &[&str] = &[
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "shm",
];

/// The newest runtime-spec version the guest's crun (Debian bookworm's 1.8.1) accepts: it
/// refuses "1.2.0" and later with "unknown version specified", and containerd 2.x writes
/// "1.2.1". Newer specs only add fields; crun ignores what it does not know.
const CRUN_MAX_OCI_VERSION: (u64, u64) = (1, 1);

/// `ociVersion` as crun will take it: a 1.x newer than crun knows becomes "1.1.0".
fn crun_oci_version(version: Option<&str>) -> Option<String> {
    let version = version?;
    let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else {
        return None;
    };
    (major == CRUN_MAX_OCI_VERSION.0 && minor > CRUN_MAX_OCI_VERSION.1)
        .then(|| format!("{}.{}.0", CRUN_MAX_OCI_VERSION.0, CRUN_MAX_OCI_VERSION.1))
}

#[derive(Debug)]
pub struct Rewritten {
    pub spec: Value,
    /// Mount destinations skipped because their host source is not in the guest.
    pub skipped_mounts: Vec<String>,
    pub cgroup_path: String,
}

/// Drops what names host objects from an OCI Process and makes `terminal` agree with what
/// the host asked for (crun decides between a pty and plain stdio from it).
fn clean_process(process: &mut Map<String, Value>, terminal: bool) {
    process.remove("apparmorProfile");
    process.remove("selinuxLabel");
    process.insert("terminal".into(), Value::Bool(terminal));
}

/// Rewrites an exec's OCI Process JSON (see [`clean_process`]).
pub fn rewrite_process(process: &[u8], terminal: bool) -> Result<Vec<u8>, String> {
    let mut value: Value = serde_json::from_slice(process)
        .map_err(|e| format!("process spec is not valid JSON: {e}"))?;
    let obj = value
        .as_object_mut()
        .ok_or("process spec is not a JSON object")?;
    if obj
        .get("args")
        .and_then(Value::as_array)
        .is_none_or(|a| a.is_empty())
    {
        return Err("process spec has no args".into());
    }
    clean_process(obj, terminal);
    serde_json::to_vec(&value).map_err(|e| format!("process spec: {e}"))
}

/// The tmpfs that stands in for containerd's host-side /dev/shm bind mount.
fn shm_mount() -> Value {
    serde_json::json!({
        "destination": "/dev/shm",
        "type": "tmpfs",
        "source": "shm",
        "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
    })
}

/// `exists` says whether a bind-mount source exists in the guest.
pub fn rewrite(
    spec: &[u8],
    rootfs: &Path,
    container_id: &str,
    terminal: bool,
    exists: &dyn Fn(&str) -> bool,
) -> Result<Rewritten, String> {
    let mut spec: Value =
        serde_json::from_slice(spec).map_err(|e| format!("OCI spec is not valid JSON: {e}"))?;
    let obj = spec
        .as_object_mut()
        .ok_or("OCI spec is not a JSON object")?;
    if !obj.get("process").is_some_and(Value::is_object) {
        return Err("OCI spec has no process".into());
    }
    if let Some(version) = crun_oci_version(obj.get("ociVersion").and_then(Value::as_str)) {
        obj.insert("ociVersion".into(), Value::String(version));
    }
    let mut root = Map::new();
    root.insert("path".into(), Value::String(rootfs.display().to_string()));
    root.insert("readonly".into(), Value::Bool(false));
    obj.insert("root".into(), Value::Object(root));
    obj.remove("hooks");
    if let Some(process) = obj.get_mut("process").and_then(Value::as_object_mut) {
        clean_process(process, terminal);
    }
    let mut skipped = Vec::new();
    if let Some(mounts) = obj.get_mut("mounts").and_then(Value::as_array_mut) {
        for m in mounts.iter_mut() {
            // CRI bind-mounts a host tmpfs at /dev/shm; a guest tmpfs does the same job.
            let bind_shm = m.get("destination").and_then(Value::as_str) == Some("/dev/shm")
                && m.get("type").and_then(Value::as_str) != Some("tmpfs")
                && m.get("source")
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.starts_with('/') && !exists(s));
            if bind_shm {
                *m = shm_mount();
            }
        }
        mounts.retain(|m| {
            let kind = m.get("type").and_then(Value::as_str).unwrap_or("");
            let dest = m.get("destination").and_then(Value::as_str).unwrap_or("?");
            let options: Vec<&str> = m
                .get("options")
                .and_then(Value::as_array)
                .map(|o| o.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let bind = kind == "bind" || options.iter().any(|o| *o == "bind" || *o == "rbind");
            if !bind && GUEST_MOUNT_TYPES.contains(&kind) {
                return true;
            }
            let source = m.get("source").and_then(Value::as_str).unwrap_or("");
            if bind && !source.is_empty() && exists(source) {
                return true;
            }
            skipped.push(dest.to_string());
            false
        });
    }
    let has_hostname = obj
        .get("hostname")
        .and_then(Value::as_str)
        .is_some_and(|h| !h.is_empty());
    let linux = obj
        .entry("linux")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or("OCI spec linux is not an object")?;
    linux.remove("mountLabel");
    if let Some(namespaces) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
        // A network namespace with a path is the pod's (made by CNI on the host): in the guest
        // the pod's network is the VM's own, so the container stays in the guest's namespace.
        namespaces.retain(|ns| {
            !(ns.get("type").and_then(Value::as_str) == Some("network") && ns.get("path").is_some())
        });
        for ns in namespaces.iter_mut() {
            // Any other path names a host namespace; inside the guest the container gets a new one.
            if let Some(ns) = ns.as_object_mut() {
                ns.remove("path");
            }
        }
    }
    // A host-network pod shares the node's UTS namespace and still names a hostname; crun
    // refuses that. In a pod VM the "node" is the VM: give the container its own UTS
    // namespace so the hostname applies to it alone.
    if has_hostname {
        let namespaces = linux
            .entry("namespaces")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(list) = namespaces.as_array_mut()
            && !list
                .iter()
                .any(|n| n.get("type").and_then(Value::as_str) == Some("uts"))
        {
            list.push(serde_json::json!({"type": "uts"}));
        }
    }
    let cgroup_path = match linux.get("cgroupsPath").and_then(Value::as_str) {
        // systemd-style "slice:prefix:name" paths need systemd; the guest has none.
        // ".." could name a cgroup outside the container's subtree.
        Some(p) if !p.is_empty() && !p.contains(':') && !p.split('/').any(|c| c == "..") => {
            p.to_string()
        }
        _ => format!("/cloudhv/{container_id}"),
    };
    linux.insert("cgroupsPath".into(), Value::String(cgroup_path.clone()));
    Ok(Rewritten {
        spec,
        skipped_mounts: skipped,
        cgroup_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{
      "ociVersion": "1.0.2",
      "process": {"args": ["sh"], "cwd": "/", "apparmorProfile": "x", "selinuxLabel": "y", "terminal": true},
      "root": {"path": "rootfs", "readonly": true},
      "hooks": {"prestart": [{"path": "/usr/bin/host-hook"}]},
      "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
        {"destination": "/dev/shm", "type": "bind", "source": "/run/containerd/sandboxes/x/shm", "options": ["rbind", "rw"]},
        {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/host/hosts", "options": ["rbind", "ro"]},
        {"destination": "/data", "type": "none", "source": "/present", "options": ["rbind"]},
        {"destination": "/weird", "type": "9p", "source": "share"},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"}
      ],
      "linux": {
        "cgroupsPath": "/default/t1",
        "namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/x"}, {"type": "mount"}],
        "mountLabel": "l",
        "resources": {"memory": {"limit": 1048576}}
      }
    }"#;

    #[test]
    fn lowers_a_spec_version_crun_does_not_know() {
        let rewrite_version = |v: &str| {
            let spec = SPEC.replace(
                r#""ociVersion": "1.0.2""#,
                &format!(r#""ociVersion": "{v}""#),
            );
            let out = rewrite(spec.as_bytes(), Path::new("/r"), "c", false, &|_| false).unwrap();
            out.spec["ociVersion"].as_str().unwrap().to_string()
        };
        assert_eq!(rewrite_version("1.2.1"), "1.1.0", "containerd 2.x");
        assert_eq!(rewrite_version("1.3.0"), "1.1.0");
        assert_eq!(rewrite_version("1.1.0"), "1.1.0");
        assert_eq!(rewrite_version("1.0.2"), "1.0.2", "containerd 1.6");
        assert_eq!(rewrite_version("1.0.2-dev"), "1.0.2-dev");
        assert_eq!(
            rewrite_version("2.0.0"),
            "2.0.0",
            "a major crun cannot run is left for it to refuse"
        );
    }

    fn dests(spec: &Value) -> Vec<&str> {
        spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn points_root_at_the_overlay_and_drops_host_objects() {
        let r = rewrite(
            SPEC.as_bytes(),
            Path::new("/run/c/rootfs"),
            "t1",
            false,
            &|p| p == "/present",
        )
        .unwrap();
        assert_eq!(r.spec["root"]["path"], "/run/c/rootfs");
        assert_eq!(r.spec["root"]["readonly"], false);
        assert!(r.spec.get("hooks").is_none());
        assert!(r.spec["process"].get("apparmorProfile").is_none());
        assert!(r.spec["process"].get("selinuxLabel").is_none());
        assert_eq!(
            r.spec["process"]["terminal"], false,
            "terminal follows the request"
        );
        assert_eq!(r.spec["process"]["args"][0], "sh");
        assert_eq!(
            dests(&r.spec),
            ["/proc", "/dev", "/dev/shm", "/data", "/sys/fs/cgroup"]
        );
        assert_eq!(
            r.spec["mounts"][2]["type"], "tmpfs",
            "host /dev/shm becomes a tmpfs"
        );
        assert_eq!(r.skipped_mounts, ["/etc/hosts", "/weird"]);
        let ns = r.spec["linux"]["namespaces"].as_array().unwrap();
        let types: Vec<&str> = ns.iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            ["pid", "mount"],
            "the pod's network namespace is the guest's own"
        );
        assert!(
            ns.iter().all(|n| n.get("path").is_none()),
            "host namespace paths dropped"
        );
        assert!(r.spec["linux"].get("mountLabel").is_none());
        assert_eq!(r.spec["linux"]["resources"]["memory"]["limit"], 1048576);
        assert_eq!(r.cgroup_path, "/default/t1");
    }

    #[test]
    fn gives_a_cgroup_path_when_missing_systemd_style_or_escaping() {
        let spec =
            r#"{"process": {"args": ["x"]}, "linux": {"cgroupsPath": "system.slice:cri:abc"}}"#;
        let r = rewrite(spec.as_bytes(), Path::new("/r"), "abc", false, &|_| false).unwrap();
        assert_eq!(r.cgroup_path, "/cloudhv/abc");
        let r = rewrite(br#"{"process": {}}"#, Path::new("/r"), "abc", true, &|_| {
            false
        })
        .unwrap();
        assert_eq!(r.spec["linux"]["cgroupsPath"], "/cloudhv/abc");
        assert_eq!(r.spec["process"]["terminal"], true);
        let spec = r#"{"process": {}, "linux": {"cgroupsPath": "/a/../../etc"}}"#;
        let r = rewrite(spec.as_bytes(), Path::new("/r"), "abc", false, &|_| false).unwrap();
        assert_eq!(r.cgroup_path, "/cloudhv/abc");
    }

    #[test]
    fn rejects_what_is_not_a_spec() {
        let bad = |s: &[u8]| rewrite(s, Path::new("/r"), "a", false, &|_| false).unwrap_err();
        assert!(bad(b"nope").contains("not valid JSON"));
        assert!(bad(b"[]").contains("not a JSON object"));
        assert!(bad(b"{}").contains("no process"));
    }

    #[test]
    fn gives_a_named_host_network_container_its_own_uts_namespace() {
        let spec = br#"{"process": {"args": ["x"]}, "hostname": "p1", "linux": {"namespaces": [{"type": "pid"}]}}"#;
        let r = rewrite(spec, Path::new("/r"), "a", false, &|_| false).unwrap();
        let types: Vec<&str> = r.spec["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["pid", "uts"]);
    }

    #[test]
    fn rewrites_exec_processes() {
        let p = rewrite_process(
            br#"{"args": ["sh", "-c", "exit 5"], "cwd": "/", "apparmorProfile": "p"}"#,
            true,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["terminal"], true);
        assert_eq!(v["args"][2], "exit 5");
        assert!(v.get("apparmorProfile").is_none());
        assert!(
            rewrite_process(b"[1]", false)
                .unwrap_err()
                .contains("not a JSON object")
        );
        assert!(
            rewrite_process(br#"{"args": []}"#, false)
                .unwrap_err()
                .contains("no args")
        );
        assert!(
            rewrite_process(b"{", false)
                .unwrap_err()
                .contains("not valid JSON")
        );
    }
}
