//! The Agent ttrpc service.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::protocol::agent::{self, health_response};
use crate::protocol::agent_ttrpc;

pub const PROTOCOL_VERSION: u32 = 1;
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

pub struct AgentService {
    crun: Option<PathBuf>,
    runtime_version: OnceLock<String>,
}

impl AgentService {
    pub fn new(crun: Option<PathBuf>) -> Self {
        AgentService {
            crun,
            runtime_version: OnceLock::new(),
        }
    }

    /// `crun --version`'s first line (run once, through the reaper), empty if crun is absent.
    fn runtime_version(&self) -> &str {
        self.runtime_version.get_or_init(|| {
            let Some(crun) = &self.crun else {
                return String::new();
            };
            match crate::reaper::spawn_and_wait(
                Command::new(crun).arg("--version").env_clear(),
                Duration::from_secs(10),
            ) {
                Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string(),
                Ok(out) => {
                    crate::error!(
                        "{} --version: {}: {}",
                        crun.display(),
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                    String::new()
                }
                Err(e) => {
                    crate::error!("{} --version: {e}", crun.display());
                    String::new()
                }
            }
        })
    }
}

pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Finds an executable in `path_var` (a PATH-style list).
pub fn find_in_path(name: &str, path_var: &str) -> Option<PathBuf> {
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

impl agent_ttrpc::Agent for AgentService {
    fn health(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        _req: agent::HealthRequest,
    ) -> ttrpc::Result<agent::HealthResponse> {
        let mut resp = agent::HealthResponse::new();
        resp.status = health_response::Status::SERVING.into();
        resp.uptime_ns = crate::log::uptime_ns();
        Ok(resp)
    }

    fn version(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        _req: agent::VersionRequest,
    ) -> ttrpc::Result<agent::VersionResponse> {
        let mut resp = agent::VersionResponse::new();
        resp.agent_version = AGENT_VERSION.to_string();
        resp.protocol_version = PROTOCOL_VERSION;
        resp.kernel_release = kernel_release();
        resp.runtime_version = self.runtime_version().to_string();
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_executables_in_path() {
        assert_eq!(
            find_in_path("sh", "/nonexistent::/bin"),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(find_in_path("no-such-binary-xyz", "/bin:/usr/bin"), None);
    }

    #[test]
    fn kernel_release_is_not_empty() {
        assert!(!kernel_release().is_empty());
    }
}
