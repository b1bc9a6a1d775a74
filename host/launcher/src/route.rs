//! shim/src/launcher/route.ts: an app container's `start` goes to the daemon that runs its
//! pod's VM, whose address containerd stored in the sandbox's bundle (a sibling directory).
//! Ok(None) where route.ts returns undefined; Err where we would not be sure to agree with it.

use crate::address::{SOCKET_SCHEME, js_trim_ascii, read_capped};
use std::path::Path;

const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// An OCI spec is containerd's file, but its env and annotations come from the pod spec.
const MAX_SPEC_BYTES: u64 = 8 << 20;

/// shim/src/util/ids.ts ID_PATTERN: ^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$
fn plain_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

pub fn sandbox_address(bundle: &Path) -> Result<Option<String>, &'static str> {
    let bytes = match read_capped(&bundle.join("config.json"), MAX_SPEC_BYTES) {
        Err(_) => return Ok(None),
        Ok(Err(())) => return Err("bundle spec too large"),
        Ok(Ok(b)) => b,
    };
    let spec: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| "bundle spec not read here")?;
    let Some(annotations) = spec.get("annotations") else {
        return Ok(None);
    };
    if annotations.get(CRI_CONTAINER_TYPE).and_then(|v| v.as_str()) != Some("container") {
        return Ok(None);
    }
    let sandbox_id = match annotations.get(CRI_SANDBOX_ID).and_then(|v| v.as_str()) {
        Some(id) if plain_id(id) => id,
        _ => return Ok(None),
    };
    let parent = bundle.parent().ok_or("bundle is /")?;
    let bytes = match read_capped(&parent.join(sandbox_id).join("address"), 4096) {
        Err(_) => return Ok(None),
        Ok(Err(())) => return Err("sandbox address file too long"),
        Ok(Ok(b)) => b,
    };
    if !bytes.is_ascii() {
        return Err("sandbox address file is not ASCII");
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| "sandbox address not UTF-8")?;
    let address = js_trim_ascii(text);
    // /^unix:\/\/\/\S+$/ on ASCII text.
    let path = address.strip_prefix(SOCKET_SCHEME).unwrap_or("");
    let ok = path.len() > 1
        && path.starts_with('/')
        && !path
            .bytes()
            .any(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r'));
    Ok(ok.then(|| address.to_string()))
}
