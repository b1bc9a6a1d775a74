//! Where the shim daemon's front listens: the same names shim/src/launcher/daemon-address.ts
//! and shim/src/bin/shim.ts compute. Every input this module is not sure to read exactly as
//! Node.js does (a path to normalize, bytes that are not UTF-8, JSON that serde_json refuses)
//! is `None`: the caller then runs the Node.js shim, the reference.

use crate::sha256::hex_prefix;
use std::path::Path;

pub const SOCKET_SCHEME: &str = "unix://";
const DEFAULT_STATE_DIR: &str = "/run/cloudhv";
/// The runtime config is an operator's file; beyond this the Node.js shim reads it.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The daemon identity's build part, as daemon-address.ts's buildId(): the id the npm build
/// writes to `<shim>/dist/src/build-id` (12 lowercase hex digits) together with where this
/// build lives, so a copy of the same build elsewhere (another installed version) is another
/// daemon. A dist path that is not UTF-8 is `None` (Node.js would read it otherwise).
pub fn build_id(dist: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dist.join("src/build-id")).ok()?;
    if !valid_build_id(&text) {
        return None;
    }
    let place = dist.to_str()?;
    Some(hex_prefix(format!("{text}\0{place}").as_bytes(), 12))
}

pub fn valid_build_id(text: &str) -> bool {
    text.len() == 12
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Reads at most `cap` bytes of `file`: Err(()) when it is longer (the caller falls back).
pub fn read_capped(file: &Path, cap: u64) -> std::io::Result<Result<Vec<u8>, ()>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(file)?
        .take(cap + 1)
        .read_to_end(&mut bytes)?;
    Ok(if bytes.len() as u64 > cap {
        Err(())
    } else {
        Ok(bytes)
    })
}

pub struct RuntimeConfig {
    pub text: String,
    pub state_dir: String,
}

/// shim.ts's runtimeConfig(): the file's text and its state_dir. `path`: $CLOUDHV_CONFIG or
/// the installed default.
pub fn runtime_config(path: &str) -> Option<RuntimeConfig> {
    if path.is_empty() || path.contains('\0') {
        return None;
    }
    let bytes = match read_capped(Path::new(path), MAX_CONFIG_BYTES) {
        // shim.ts: any read error means no text and the default state dir.
        Err(_) => {
            return Some(RuntimeConfig {
                text: String::new(),
                state_dir: DEFAULT_STATE_DIR.into(),
            });
        }
        Ok(Err(())) => return None,
        Ok(Ok(b)) => b,
    };
    // Node replaces bad UTF-8 before hashing; we do not guess how.
    let text = String::from_utf8(bytes).ok()?;
    let doc: serde_json::Value = serde_json::from_str(&text).ok()?;
    let state_dir = match doc.get("state_dir") {
        Some(serde_json::Value::String(s)) => s.clone(),
        _ => DEFAULT_STATE_DIR.to_string(),
    };
    Some(RuntimeConfig { text, state_dir })
}

/// `path.join(dir, name)` for a `dir` that path.join would leave as it is (absolute, no `.`,
/// `..`, empty segment or trailing slash); None for any other.
pub fn join(dir: &str, name: &str) -> Option<String> {
    if dir == "/" {
        return Some(format!("/{name}"));
    }
    let rest = dir.strip_prefix('/')?;
    let plain = !dir.contains('\0')
        && rest
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..");
    plain.then(|| format!("{dir}/{name}"))
}

/// containerd's ttrpc address, as shim.ts's containerdTtrpcAddress(): $TTRPC_ADDRESS, else
/// `-address` + ".ttrpc", without a leading unix://.
pub fn containerd_ttrpc(env: Option<&str>, address_flag: &str) -> Option<String> {
    let address = match env {
        Some(e) => e.to_string(),
        None if !address_flag.is_empty() => format!("{address_flag}.ttrpc"),
        None => return None,
    };
    if address.is_empty() {
        return None;
    }
    Some(
        address
            .strip_prefix(SOCKET_SCHEME)
            .unwrap_or(&address)
            .to_string(),
    )
}

/// daemonSocketPath(): `<state_dir>/shim-<16 hex>.sock`.
pub fn daemon_socket(
    build_id: &str,
    state_dir: &str,
    ttrpc: &str,
    config_text: &str,
) -> Option<String> {
    let which = hex_prefix(format!("{build_id}\0{ttrpc}\0{config_text}").as_bytes(), 16);
    join(state_dir, &format!("shim-{which}.sock"))
}

/// namespaceSocketPath(): the control socket's name with `-<12 hex of the namespace>`.
pub fn namespace_socket(control: &str, namespace: &str) -> Option<String> {
    let stem = control.strip_suffix(".sock")?;
    Some(format!(
        "{stem}-{}.sock",
        hex_prefix(namespace.as_bytes(), 12)
    ))
}

/// controlSocketOf(): the inverse of namespace_socket, None when `ns_socket` is not one.
pub fn control_socket_of(ns_socket: &str) -> Option<String> {
    let stem = ns_socket.strip_suffix(".sock")?;
    let (head, tail) = stem.split_at_checked(stem.len().checked_sub(13)?)?;
    let hex = tail.strip_prefix('-')?;
    hex.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        .then(|| format!("{head}.sock"))
}

/// JavaScript's String.prototype.trim() for ASCII text (it also trims \v, which Rust's
/// trim_ascii does not).
pub fn js_trim_ascii(s: &str) -> &str {
    s.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_only_what_path_join_leaves_alone() {
        assert_eq!(join("/run/cloudhv", "a").as_deref(), Some("/run/cloudhv/a"));
        assert_eq!(join("/", "a").as_deref(), Some("/a"));
        for odd in [
            "",
            "run",
            "/run/",
            "/run//x",
            "/run/./x",
            "/run/../x",
            "/run/..",
        ] {
            assert_eq!(join(odd, "a"), None, "{odd:?}");
        }
    }

    #[test]
    fn namespace_sockets_round_trip() {
        let ns = namespace_socket("/run/cloudhv/shim-0123456789abcdef.sock", "k8s.io").unwrap();
        assert_eq!(
            control_socket_of(&ns).as_deref(),
            Some("/run/cloudhv/shim-0123456789abcdef.sock")
        );
        assert_eq!(
            control_socket_of("/run/cloudhv/shim-0123456789abcdef.sock"),
            None
        );
        assert_eq!(control_socket_of("-0123456789AB.sock"), None);
    }

    #[test]
    fn ttrpc_address_as_shim_ts() {
        assert_eq!(
            containerd_ttrpc(None, "/run/c.sock").as_deref(),
            Some("/run/c.sock.ttrpc")
        );
        assert_eq!(
            containerd_ttrpc(Some("unix:///x"), "/y").as_deref(),
            Some("/x")
        );
        assert_eq!(containerd_ttrpc(Some(""), "/y"), None);
        assert_eq!(containerd_ttrpc(None, ""), None);
    }
}
