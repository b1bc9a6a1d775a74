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
    /// `net.*` sysctls for the guest's own network namespace, which is the pod's (see
    /// [`take_net_sysctls`]), as /proc/sys paths and values.
    pub net_sysctls: Vec<(String, String)>,
}

/// Longest sysctl key and value taken from a spec (the kernel's own limits are smaller).
const MAX_SYSCTL_KEY: usize = 256;
const MAX_SYSCTL_VALUE: usize = 4096;

/// A container that stays in the guest's network namespace (the pod's network is the VM's)
/// cannot have crun set `net.*` sysctls: crun asks for a new network namespace. containerd
/// puts some there for every pod (`net.ipv4.ip_unprivileged_port_start` with
/// enable_unprivileged_ports, containerd 2's default), and a pod may ask for others; on a runc
/// host they apply to the pod's namespace, so here they apply to the guest's. Returns them as
/// /proc/sys paths, removed from the spec; a key that is not a plain sysctl name is refused.
fn take_net_sysctls(linux: &mut Map<String, Value>) -> Result<Vec<(String, String)>, String> {
    let Some(sysctls) = linux.get_mut("sysctl").and_then(Value::as_object_mut) else {
        return Ok(Vec::new());
    };
    let keys: Vec<String> = sysctls
        .keys()
        .filter(|k| k.starts_with("net.") || k.starts_with("net/"))
        .cloned()
        .collect();
    let mut out = Vec::new();
    for key in keys {
        let value = sysctls.remove(&key).unwrap_or(Value::Null);
        let shown: String = key.chars().take(64).collect();
        let Some(value) = value.as_str() else {
            return Err(format!("sysctl {shown}: the value is not a string"));
        };
        let path = key.replace('.', "/");
        let plain = key.len() <= MAX_SYSCTL_KEY
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
            && path.split('/').all(|c| !c.is_empty() && c != "..");
        if !plain {
            return Err(format!(
                "sysctl {shown:?} is not a sysctl name (letters, digits, _ - . /)"
            ));
        }
        if value.len() > MAX_SYSCTL_VALUE {
            return Err(format!(
                "sysctl {shown}: the value is longer than {MAX_SYSCTL_VALUE} bytes"
            ));
        }
        out.push((format!("/proc/sys/{path}"), value.to_string()));
    }
    Ok(out)
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

/// containerd's CRI marks an app container with these; the sandbox (pause) container is the
/// pod's namespace holder, in the guest as on a runc host.
pub(crate) const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// Namespaces a CRI app container joins from another container of its pod (containerd names
/// them `/proc/<pid>/ns/<name>`); the file name under /proc/<pid>/ns for each OCI type.
const JOINABLE: &[(&str, &str)] = &[("ipc", "ipc"), ("uts", "uts"), ("pid", "pid")];

/// What the rewrite needs to know about the guest.
pub struct Guest<'a> {
    /// Whether a bind-mount source exists in the guest.
    pub exists: &'a dyn Fn(&str) -> bool,
    /// The guest pid of a running container's init, by container id.
    pub container_pid: &'a dyn Fn(&str) -> Option<i32>,
    /// Whether a guest pid is the init of one of this guest's running containers.
    pub is_container_init: &'a dyn Fn(i32) -> bool,
}

/// The guest process whose namespace of type `kind` an app container joins, or None (a new one).
/// The spec's own path is only trusted as far as naming one of this guest's container inits
/// (`pid: TARGET` names another app container); otherwise the pod's sandbox is used.
fn join_target(path: &str, kind: &str, sandbox: Option<i32>, guest: &Guest) -> Option<i32> {
    let named = path
        .strip_prefix("/proc/")
        .and_then(|rest| rest.split_once("/ns/"))
        .and_then(|(pid, name)| {
            let pid: i32 = pid.parse().ok()?;
            let ok = JOINABLE.iter().any(|(t, n)| *t == kind && *n == name);
            (ok && pid > 0 && (guest.is_container_init)(pid)).then_some(pid)
        });
    named.or(sandbox)
}

pub fn rewrite(
    spec: &[u8],
    rootfs: &Path,
    container_id: &str,
    terminal: bool,
    guest: &Guest,
) -> Result<Rewritten, String> {
    let exists = guest.exists;
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
    // readOnlyRootFilesystem: crun mounts the overlay read-only once the mounts are in place.
    let readonly = obj
        .get("root")
        .and_then(|r| r.get("readonly"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut root = Map::new();
    root.insert("path".into(), Value::String(rootfs.display().to_string()));
    root.insert("readonly".into(), Value::Bool(readonly));
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
    // An app container of a CRI pod shares its sandbox's IPC and UTS namespaces (the pod's
    // hostname and sysctls) and, with shareProcessNamespace, its PID namespace.
    let annotation = |key: &str| {
        obj.get("annotations")
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
    };
    let app_container = annotation(CRI_CONTAINER_TYPE) == Some("container");
    let sandbox_pid = annotation(CRI_SANDBOX_ID)
        .filter(|_| app_container)
        .and_then(|id| (guest.container_pid)(id));
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
            let Some(ns) = ns.as_object_mut() else {
                continue;
            };
            let kind = ns.get("type").and_then(Value::as_str).unwrap_or("");
            let name = JOINABLE.iter().find(|(t, _)| *t == kind).map(|(_, n)| *n);
            let target = match (ns.get("path").and_then(Value::as_str), name) {
                (Some(path), Some(_)) if app_container => {
                    join_target(path, kind, sandbox_pid, guest)
                }
                _ => None,
            };
            match (target, name) {
                (Some(pid), Some(name)) => {
                    ns.insert(
                        "path".into(),
                        Value::String(format!("/proc/{pid}/ns/{name}")),
                    );
                }
                // Any other path names a host object; inside the guest the container gets a
                // new namespace.
                _ => {
                    ns.remove("path");
                }
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
    let own_netns = linux
        .get("namespaces")
        .and_then(Value::as_array)
        .is_some_and(|l| {
            l.iter()
                .any(|n| n.get("type").and_then(Value::as_str) == Some("network"))
        });
    let net_sysctls = if own_netns {
        Vec::new()
    } else {
        take_net_sysctls(linux)?
    };
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
        net_sysctls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(exists: &dyn Fn(&str) -> bool) -> Guest<'_> {
        Guest {
            exists,
            container_pid: &|_| None,
            is_container_init: &|_| false,
        }
    }

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
            let out = rewrite(
                spec.as_bytes(),
                Path::new("/r"),
                "c",
                false,
                &guest(&|_| false),
            )
            .unwrap();
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
            &guest(&|p| p == "/present"),
        )
        .unwrap();
        assert_eq!(r.spec["root"]["path"], "/run/c/rootfs");
        assert_eq!(
            r.spec["root"]["readonly"], true,
            "readOnlyRootFilesystem is kept"
        );
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
        let r = rewrite(
            spec.as_bytes(),
            Path::new("/r"),
            "abc",
            false,
            &guest(&|_| false),
        )
        .unwrap();
        assert_eq!(r.cgroup_path, "/cloudhv/abc");
        let r = rewrite(
            br#"{"process": {}}"#,
            Path::new("/r"),
            "abc",
            true,
            &guest(&|_| false),
        )
        .unwrap();
        assert_eq!(r.spec["linux"]["cgroupsPath"], "/cloudhv/abc");
        assert_eq!(r.spec["process"]["terminal"], true);
        let spec = r#"{"process": {}, "linux": {"cgroupsPath": "/a/../../etc"}}"#;
        let r = rewrite(
            spec.as_bytes(),
            Path::new("/r"),
            "abc",
            false,
            &guest(&|_| false),
        )
        .unwrap();
        assert_eq!(r.cgroup_path, "/cloudhv/abc");
    }

    #[test]
    fn rejects_what_is_not_a_spec() {
        let bad =
            |s: &[u8]| rewrite(s, Path::new("/r"), "a", false, &guest(&|_| false)).unwrap_err();
        assert!(bad(b"nope").contains("not valid JSON"));
        assert!(bad(b"[]").contains("not a JSON object"));
        assert!(bad(b"{}").contains("no process"));
    }

    #[test]
    fn gives_a_named_host_network_container_its_own_uts_namespace() {
        let spec = br#"{"process": {"args": ["x"]}, "hostname": "p1", "linux": {"namespaces": [{"type": "pid"}]}}"#;
        let r = rewrite(spec, Path::new("/r"), "a", false, &guest(&|_| false)).unwrap();
        let types: Vec<&str> = r.spec["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["pid", "uts"]);
    }

    fn namespaces(spec: &Value) -> Vec<(String, Option<String>)> {
        spec["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["type"].as_str().unwrap().to_string(),
                    n.get("path").and_then(Value::as_str).map(String::from),
                )
            })
            .collect()
    }

    /// An app container as containerd 1.6's CRI writes it: the sandbox's host pid in each path.
    fn app_container(pid_ns: &str) -> String {
        format!(
            r#"{{"process": {{"args": ["x"]}},
              "annotations": {{"io.kubernetes.cri.container-type": "container",
                               "io.kubernetes.cri.sandbox-id": "sb1"}},
              "linux": {{"namespaces": [
                {{"type": "network", "path": "/proc/4242/ns/net"}},
                {{"type": "ipc", "path": "/proc/4242/ns/ipc"}},
                {{"type": "uts", "path": "/proc/4242/ns/uts"}},
                {{"type": "mount"}}{pid_ns}]}}}}"#
        )
    }

    #[test]
    fn an_app_container_joins_its_sandboxs_ipc_uts_and_pid_namespaces_in_the_guest() {
        let g = Guest {
            exists: &|_| false,
            container_pid: &|id| (id == "sb1").then_some(7),
            is_container_init: &|pid| pid == 7 || pid == 9,
        };
        let ns = |pid_ns: &str| {
            let spec = app_container(pid_ns);
            namespaces(
                &rewrite(spec.as_bytes(), Path::new("/r"), "c1", false, &g)
                    .unwrap()
                    .spec,
            )
        };
        let named = |t: &str, p: Option<&str>| (t.to_string(), p.map(String::from));
        // Default (pid: CONTAINER): a PID namespace of its own; the host pid 4242 is not trusted.
        assert_eq!(
            ns(r#", {"type": "pid"}"#),
            [
                named("ipc", Some("/proc/7/ns/ipc")),
                named("uts", Some("/proc/7/ns/uts")),
                named("mount", None),
                named("pid", None)
            ]
        );
        // shareProcessNamespace (pid: POD): the sandbox's.
        assert_eq!(
            ns(r#", {"type": "pid", "path": "/proc/4242/ns/pid"}"#)[3],
            named("pid", Some("/proc/7/ns/pid"))
        );
        // pid: TARGET names another container of this guest: that one is joined.
        assert_eq!(
            ns(r#", {"type": "pid", "path": "/proc/9/ns/pid"}"#)[3],
            named("pid", Some("/proc/9/ns/pid"))
        );
        // A path naming a namespace of another type, or the agent itself, is not followed.
        assert_eq!(
            ns(r#", {"type": "pid", "path": "/proc/9/ns/net"}"#)[3],
            named("pid", Some("/proc/7/ns/pid"))
        );
        assert_eq!(
            ns(r#", {"type": "pid", "path": "/proc/1/ns/pid"}"#)[3],
            named("pid", Some("/proc/7/ns/pid"))
        );
        // Sandbox not running in this guest: new namespaces, as before.
        let none = Guest {
            exists: &|_| false,
            container_pid: &|_| None,
            is_container_init: &|_| false,
        };
        let spec = app_container(r#", {"type": "pid", "path": "/proc/4242/ns/pid"}"#);
        let r = rewrite(spec.as_bytes(), Path::new("/r"), "c1", false, &none).unwrap();
        assert!(namespaces(&r.spec).iter().all(|(_, p)| p.is_none()));
        // A sandbox (or a plain task) never joins anything, even a path naming a container.
        let spec = app_container(r#", {"type": "pid", "path": "/proc/9/ns/pid"}"#);
        let sandbox = spec.replace(r#"type": "container""#, r#"type": "sandbox""#);
        let r = rewrite(sandbox.as_bytes(), Path::new("/r"), "sb1", false, &g).unwrap();
        assert!(namespaces(&r.spec).iter().all(|(_, p)| p.is_none()));
    }

    #[test]
    fn keeps_the_root_writable_unless_the_spec_says_readonly() {
        let r = rewrite(
            br#"{"process": {}}"#,
            Path::new("/r"),
            "a",
            false,
            &guest(&|_| false),
        )
        .unwrap();
        assert_eq!(r.spec["root"]["readonly"], false);
        let spec = br#"{"process": {}, "root": {"path": "rootfs", "readonly": false}}"#;
        let r = rewrite(spec, Path::new("/r"), "a", false, &guest(&|_| false)).unwrap();
        assert_eq!(r.spec["root"]["readonly"], false);
    }

    #[test]
    fn takes_net_sysctls_for_the_guests_network_namespace_and_leaves_the_rest_to_crun() {
        let spec = |ns: &str, sysctl: &str| {
            format!(r#"{{"process": {{}}, "linux": {{"namespaces": [{ns}], "sysctl": {sysctl}}}}}"#)
        };
        let pod = spec(
            r#"{"type": "ipc"}, {"type": "network", "path": "/var/run/netns/cni-1"}"#,
            r#"{"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shm_rmid_forced": "1", "net/ipv4/ping_group_range": "0 0"}"#,
        );
        let r = rewrite(
            pod.as_bytes(),
            Path::new("/r"),
            "a",
            false,
            &guest(&|_| false),
        )
        .unwrap();
        let mut taken = r.net_sysctls.clone();
        taken.sort();
        assert_eq!(
            taken,
            [
                (
                    "/proc/sys/net/ipv4/ip_unprivileged_port_start".to_string(),
                    "0".to_string()
                ),
                (
                    "/proc/sys/net/ipv4/ping_group_range".to_string(),
                    "0 0".to_string()
                ),
            ]
        );
        assert_eq!(
            r.spec["linux"]["sysctl"],
            serde_json::json!({"kernel.shm_rmid_forced": "1"}),
            "crun sets the IPC namespace's"
        );
        // A container with a network namespace of its own (a plain task): crun sets them.
        let own = spec(
            r#"{"type": "network"}"#,
            r#"{"net.ipv4.ip_unprivileged_port_start": "0"}"#,
        );
        let r = rewrite(
            own.as_bytes(),
            Path::new("/r"),
            "a",
            false,
            &guest(&|_| false),
        )
        .unwrap();
        assert!(r.net_sysctls.is_empty());
        assert_eq!(
            r.spec["linux"]["sysctl"]["net.ipv4.ip_unprivileged_port_start"],
            "0"
        );
        // Only plain names: nothing that walks out of /proc/sys/net.
        for bad in [
            r#"{"net.ipv4/../../../etc/x": "1"}"#,
            r#"{"net..x": "1"}"#,
            r#"{"net.a b": "1"}"#,
            r#"{"net.x": 1}"#,
        ] {
            let e = rewrite(
                spec("", bad).as_bytes(),
                Path::new("/r"),
                "a",
                false,
                &guest(&|_| false),
            )
            .unwrap_err();
            assert!(e.contains("sysctl"), "{bad}: {e}");
        }
        let long = format!(r#"{{"net.x": "{}"}}"#, "1".repeat(5000));
        assert!(
            rewrite(
                spec("", &long).as_bytes(),
                Path::new("/r"),
                "a",
                false,
                &guest(&|_| false)
            )
            .unwrap_err()
            .contains("longer than")
        );
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
