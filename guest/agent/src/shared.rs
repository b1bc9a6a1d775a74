//! The pod's shared volumes: one virtio-fs file system (tag [`SHARED_TAG`]) served by the
//! host's virtiofsd from a per-pod directory into which the host bind-mounts each volume.
//! It is mounted once, at [`SHARED_ROOT`], the first time a container's spec names a mount
//! source below it; crun then bind-mounts each volume's subdirectory into the container
//! (read-only where the spec says `ro`), so a volume added later is a new directory, not a new
//! device.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use serde_json::Value;

use crate::error::{Result, err, internal};

pub const SHARED_ROOT: &str = "/run/cloudhv/shared";
/// The virtio-fs tag the host gives the device (shim/src/volumes/virtiofs.ts).
pub const SHARED_TAG: &str = "cloudhv";
/// How long a hot-plugged virtio-fs device may take to appear (slow TCG guests).
const DEVICE_WAIT: Duration = Duration::from_secs(20);
/// How long a volume's directory may take to show up once the file system is mounted.
const SOURCE_WAIT: Duration = Duration::from_secs(5);

/// Whether the file system is mounted; held while mounting so that creates running at once
/// mount it once.
static MOUNTED: Mutex<bool> = Mutex::new(false);

/// The spec's bind-mount sources below [`SHARED_ROOT`].
pub fn shared_sources(spec: &Value) -> Vec<String> {
    let prefix = format!("{SHARED_ROOT}/");
    spec.get("mounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("source").and_then(Value::as_str))
        .filter(|s| s.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Mounts the pod's virtio-fs when `spec` uses it (waiting for a hot-plugged device), then
/// waits until every shared source the spec names is visible.
pub fn ensure_for(spec: &[u8]) -> Result<()> {
    let Ok(value) = serde_json::from_slice::<Value>(spec) else {
        return Ok(()); // spec::rewrite reports a bad spec, with its own message
    };
    let sources = shared_sources(&value);
    if sources.is_empty() {
        return Ok(());
    }
    mount_once()?;
    let deadline = Instant::now() + SOURCE_WAIT;
    for source in &sources {
        while !Path::new(source).exists() {
            if Instant::now() > deadline {
                return err(
                    ttrpc::Code::NOT_FOUND,
                    format!(
                        "shared volume {source} is not in the pod's virtio-fs ({SHARED_TAG}) after {} s",
                        SOURCE_WAIT.as_secs()
                    ),
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

fn mount_once() -> Result<()> {
    let mut mounted = MOUNTED.lock().unwrap_or_else(|p| p.into_inner());
    if *mounted {
        return Ok(());
    }
    std::fs::create_dir_all(SHARED_ROOT)
        .map_err(|e| internal(format!("mkdir {SHARED_ROOT}: {e}")))?;
    let deadline = Instant::now() + DEVICE_WAIT;
    loop {
        // nodev: device nodes in a host volume stay inert in the guest.
        match mount(
            Some(SHARED_TAG),
            SHARED_ROOT,
            Some("virtiofs"),
            MsFlags::MS_NODEV,
            None::<&str>,
        ) {
            Ok(()) => break,
            // No device with this tag yet (6.1 says EINVAL): the host is still hot-plugging it.
            Err(Errno::EINVAL) | Err(Errno::ENOENT) | Err(Errno::ENODEV)
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return err(
                    ttrpc::Code::UNAVAILABLE,
                    format!("mount virtio-fs {SHARED_TAG:?} on {SHARED_ROOT}: {e}"),
                );
            }
        }
    }
    crate::info!("mounted virtio-fs {SHARED_TAG:?} on {SHARED_ROOT}");
    *mounted = true;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_sources_below_the_shared_root() {
        let spec = serde_json::json!({
            "mounts": [
                {"destination": "/data", "type": "bind", "source": "/run/cloudhv/shared/c1-0"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/run/cloudhv/volumes/x"},
                {"destination": "/evil", "type": "bind", "source": "/run/cloudhv/shared-not"},
                {"destination": "/proc", "type": "proc"},
            ]
        });
        assert_eq!(shared_sources(&spec), vec!["/run/cloudhv/shared/c1-0"]);
        assert!(shared_sources(&serde_json::json!({})).is_empty());
    }

    #[test]
    fn a_spec_without_shared_volumes_mounts_nothing() {
        ensure_for(br#"{"mounts":[{"destination":"/x","source":"/tmp"}]}"#).unwrap();
        ensure_for(b"not json").unwrap();
        assert!(!*MOUNTED.lock().unwrap());
    }
}
