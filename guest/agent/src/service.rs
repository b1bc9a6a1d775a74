//! The Agent ttrpc service.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::container::Containers;
use crate::protocol::agent::{self, health_response, read_stream_request};
use crate::protocol::agent_ttrpc;

pub const PROTOCOL_VERSION: u32 = 1;
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

pub struct AgentService {
    crun: Option<PathBuf>,
    runtime_version: OnceLock<String>,
    containers: Containers,
    port_forwards: crate::portfwd::PortForwards,
}

impl AgentService {
    pub fn new(crun: Option<PathBuf>) -> Self {
        AgentService {
            containers: Containers::new(crun.clone()),
            port_forwards: crate::portfwd::PortForwards::new(),
            crun,
            runtime_version: OnceLock::new(),
        }
    }

    /// Starts a pod's namespace holder ahead of its pod (Containers::prepare_holder).
    pub fn prepare_holder(&self) {
        self.containers.prepare_holder();
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

    fn create_container(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: agent::CreateContainerRequest,
    ) -> ttrpc::Result<agent::CreateContainerResponse> {
        let pid = self.containers.create(
            &req.container_id,
            &req.oci_spec,
            &req.rootfs_serial,
            &req.scratch_serial,
            req.terminal,
            req.stdin,
        )?;
        let mut resp = agent::CreateContainerResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn exec_process(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: agent::ExecProcessRequest,
    ) -> ttrpc::Result<agent::Empty> {
        self.containers.exec(
            &req.container_id,
            &req.exec_id,
            &req.process_spec,
            req.terminal,
            req.stdin,
        )?;
        Ok(agent::Empty::new())
    }

    fn start_process(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: agent::ProcessRef,
    ) -> ttrpc::Result<agent::StartProcessResponse> {
        let mut resp = agent::StartProcessResponse::new();
        resp.pid = self.containers.start(&req.container_id, &req.exec_id)?;
        Ok(resp)
    }

    fn signal_process(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: agent::SignalProcessRequest,
    ) -> ttrpc::Result<agent::Empty> {
        self.containers
            .signal(&req.container_id, &req.exec_id, req.signal, req.all)?;
        Ok(agent::Empty::new())
    }

    fn wait_process(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: agent::ProcessRef,
    ) -> ttrpc::Result<agent::WaitProcessResponse> {
        let exit = self.containers.wait(&req.container_id, &req.exec_id)?;
        let mut resp = agent::WaitProcessResponse::new();
        resp.exit_status = exit.status;
        resp.exited_at_unix_ns = exit.at_unix_ns;
        resp.oom_killed = exit.oom_killed;
        Ok(resp)
    }

    fn read_stream(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        let stderr = match req.stream.enum_value() {
            Ok(read_stream_request::Stream::STDOUT) => false,
            Ok(read_stream_request::Stream::STDERR) => true,
            _ => {
                return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                    ttrpc::Code::INVALID_ARGUMENT,
                    "ReadStream: stream must be STDOUT or STDERR",
                )));
            }
        };
        let (data, eof) = self.containers.read(
            &req.container_id,
            &req.exec_id,
            stderr,
            req.max_bytes as usize,
        )?;
        let mut resp = agent::ReadStreamResponse::new();
        resp.data = data;
        resp.eof = eof;
        Ok(resp)
    }

    fn write_stdin(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: agent::WriteStdinRequest,
    ) -> ttrpc::Result<agent::WriteStdinResponse> {
        let mut resp = agent::WriteStdinResponse::new();
        resp.written = self
            .containers
            .write_stdin(&req.container_id, &req.exec_id, &req.data)?;
        Ok(resp)
    }

    fn close_stdin(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: agent::ProcessRef,
    ) -> ttrpc::Result<agent::Empty> {
        self.containers
            .close_stdin(&req.container_id, &req.exec_id)?;
        Ok(agent::Empty::new())
    }

    fn resize_pty(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: agent::ResizePtyRequest,
    ) -> ttrpc::Result<agent::Empty> {
        self.containers
            .resize(&req.container_id, &req.exec_id, req.width, req.height)?;
        Ok(agent::Empty::new())
    }

    fn list_pids(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: agent::ContainerRef,
    ) -> ttrpc::Result<agent::ListPidsResponse> {
        let mut resp = agent::ListPidsResponse::new();
        resp.pids = self.containers.pids(&req.container_id)?;
        Ok(resp)
    }

    fn container_stats(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: agent::ContainerRef,
    ) -> ttrpc::Result<agent::ContainerStatsResponse> {
        let stats = self.containers.stats(&req.container_id)?;
        let mut resp = agent::ContainerStatsResponse::new();
        resp.cpu_usage_ns = stats.cpu_usage_ns;
        resp.memory_usage_bytes = stats.memory_usage_bytes;
        resp.memory_limit_bytes = stats.memory_limit_bytes;
        resp.pids_current = stats.pids_current;
        Ok(resp)
    }

    fn remove_container(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: agent::ContainerRef,
    ) -> ttrpc::Result<agent::Empty> {
        self.containers.remove(&req.container_id)?;
        crate::info!("container {} removed", req.container_id);
        Ok(agent::Empty::new())
    }

    fn put_files(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: agent::PutFilesRequest,
    ) -> ttrpc::Result<agent::Empty> {
        let files: Vec<crate::volumes::File> = req
            .files
            .into_iter()
            .map(|f| crate::volumes::File {
                path: f.path,
                data: f.data,
                mode: f.mode,
                symlink: f.symlink,
                is_dir: f.is_dir,
            })
            .collect();
        crate::volumes::put(
            std::path::Path::new(crate::volumes::VOLUMES_ROOT),
            &req.dir,
            &files,
        )?;
        Ok(agent::Empty::new())
    }

    fn online_resources(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        _req: agent::Empty,
    ) -> ttrpc::Result<agent::OnlineResourcesResponse> {
        let (mem, cpus) = crate::resources::online_and_read();
        let mut resp = agent::OnlineResourcesResponse::new();
        resp.mem_total_kib = mem;
        resp.online_cpus = cpus;
        Ok(resp)
    }

    fn configure_network(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: agent::ConfigureNetworkRequest,
    ) -> ttrpc::Result<agent::Empty> {
        let interfaces: Vec<crate::network::Interface> = req
            .interfaces
            .iter()
            .map(|i| crate::network::Interface {
                mac: i.mac.clone(),
                placeholder_mac: i.placeholder_mac.clone(),
                mtu: i.mtu,
                addresses: i
                    .addresses
                    .iter()
                    .map(|a| (a.address.clone(), a.prefix_len))
                    .collect(),
            })
            .collect();
        let routes: Vec<crate::network::Route> = req
            .routes
            .iter()
            .map(|r| crate::network::Route {
                dest: r.dest.clone(),
                gateway: r.gateway.clone(),
                mac: r.mac.clone(),
            })
            .collect();
        crate::network::configure(&interfaces, &routes)?;
        Ok(agent::Empty::new())
    }

    fn port_forward_open(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: agent::PortForwardOpenRequest,
    ) -> ttrpc::Result<agent::PortForwardOpenResponse> {
        let mut resp = agent::PortForwardOpenResponse::new();
        resp.conn_id = self.port_forwards.open(req.port)?;
        Ok(resp)
    }

    fn port_forward_read(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: agent::PortForwardReadRequest,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        let (data, eof) = self
            .port_forwards
            .read(req.conn_id, req.max_bytes as usize)?;
        let mut resp = agent::ReadStreamResponse::new();
        resp.data = data;
        resp.eof = eof;
        Ok(resp)
    }

    fn port_forward_write(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: agent::PortForwardWriteRequest,
    ) -> ttrpc::Result<agent::Empty> {
        self.port_forwards.write(req.conn_id, &req.data)?;
        Ok(agent::Empty::new())
    }

    fn port_forward_close(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: agent::PortForwardCloseRequest,
    ) -> ttrpc::Result<agent::Empty> {
        self.port_forwards.close(req.conn_id, req.write_only)?;
        Ok(agent::Empty::new())
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
