//! Runs the real agent binary in test mode on a unix socket and calls it with the ttrpc
//! client. `CLOUDHV_AGENT_SOCKET=/path` additionally points `external_agent_health` at an
//! agent elsewhere, e.g. QEMU's virtio-serial chardev socket of a booted guest.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cloudhv_agent::protocol::agent::{HealthRequest, VersionRequest, health_response};
use cloudhv_agent::protocol::agent_ttrpc::AgentClient;

const BIN: &str = env!("CARGO_BIN_EXE_cloudhv-agent");

struct Agent {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

impl Agent {
    fn start(tag: &str, extra: &[&str]) -> Agent {
        let dir =
            std::env::temp_dir().join(format!("cloudhv-agent-it-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("agent.sock");
        let child = Command::new(BIN)
            .args([
                "--test-mode",
                "--listen",
                &format!("unix://{}", sock.display()),
            ])
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("start agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "agent did not create {}",
                sock.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Agent { child, dir, sock }
    }

    fn client(&self) -> AgentClient {
        client_for(&self.sock)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client_for(sock: &Path) -> AgentClient {
    client_at(&format!("unix://{}", sock.display()))
}

fn client_at(addr: &str) -> AgentClient {
    let c = ttrpc::Client::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e:?}"));
    AgentClient::new(c)
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(20).as_nanos() as i64)
}

#[test]
fn health_and_version_over_unix_socket() {
    let agent = Agent::start("hv", &[]);
    let client = agent.client();
    let h = client.health(ctx(), &HealthRequest::new()).expect("Health");
    assert_eq!(h.status.enum_value(), Ok(health_response::Status::SERVING));
    assert!(h.uptime_ns > 0);

    let v = client
        .version(ctx(), &VersionRequest::new())
        .expect("Version");
    assert_eq!(v.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(v.protocol_version, 1);
    let uname = Command::new("uname").arg("-r").output().unwrap();
    assert_eq!(
        v.kernel_release,
        String::from_utf8_lossy(&uname.stdout).trim()
    );
    if Path::new("/usr/bin/crun").exists() {
        assert!(
            v.runtime_version.starts_with("crun version "),
            "runtime_version {:?}",
            v.runtime_version
        );
    }
    // Served repeatedly, and from a second connection.
    for _ in 0..20 {
        client.health(ctx(), &HealthRequest::new()).unwrap();
    }
    let h2 = agent.client().health(ctx(), &HealthRequest::new()).unwrap();
    assert!(h2.uptime_ns >= h.uptime_ns);
}

#[test]
fn version_without_crun_reports_empty_runtime() {
    let agent = Agent::start("nocrun", &["--crun", "/nonexistent/crun"]);
    let v = agent
        .client()
        .version(ctx(), &VersionRequest::new())
        .expect("Version");
    assert_eq!(v.runtime_version, "");
}

#[test]
fn container_rpcs_answer_with_status_codes() {
    use cloudhv_agent::protocol::agent::{
        ContainerRef, CreateContainerRequest, ProcessRef, ReadStreamRequest, SignalProcessRequest,
        read_stream_request,
    };
    let agent = Agent::start("status", &[]);
    let client = agent.client();
    let code = |e: ttrpc::Error| match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
        e => panic!("unexpected error {e:?}"),
    };
    let mut unknown = ContainerRef::new();
    unknown.container_id = "nope".into();
    let (c, m) = code(client.list_pids(ctx(), &unknown).unwrap_err());
    assert_eq!(c, ttrpc::Code::NOT_FOUND);
    assert!(m.contains("nope"), "{m}");
    let (c, _) = code(client.remove_container(ctx(), &unknown).unwrap_err());
    assert_eq!(c, ttrpc::Code::NOT_FOUND);
    let mut p = ProcessRef::new();
    p.container_id = "nope".into();
    assert_eq!(
        code(client.wait_process(ctx(), &p).unwrap_err()).0,
        ttrpc::Code::NOT_FOUND
    );
    let mut sig = SignalProcessRequest::new();
    sig.container_id = "nope".into();
    sig.signal = 9;
    assert_eq!(
        code(client.signal_process(ctx(), &sig).unwrap_err()).0,
        ttrpc::Code::NOT_FOUND
    );
    let mut read = ReadStreamRequest::new();
    read.container_id = "nope".into();
    read.stream = read_stream_request::Stream::STREAM_UNSPECIFIED.into();
    assert_eq!(
        code(client.read_stream(ctx(), &read).unwrap_err()).0,
        ttrpc::Code::INVALID_ARGUMENT
    );
    let mut create = CreateContainerRequest::new();
    create.container_id = "../etc".into();
    let (c, m) = code(client.create_container(ctx(), &create).unwrap_err());
    assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT);
    assert!(m.contains("container id"), "{m}");
    // The agent is still serving.
    agent.client().health(ctx(), &HealthRequest::new()).unwrap();
}

#[test]
fn sigterm_exits_cleanly_and_removes_socket() {
    let mut agent = Agent::start("term", &[]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = agent.child.wait().unwrap();
    assert!(st.success(), "{st:?}");
    assert!(!agent.sock.exists());
}

#[test]
fn refuses_to_run_outside_pid1_without_test_mode() {
    let out = Command::new(BIN).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--test-mode"));
    let out = Command::new(BIN).args(["--test-mode"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN).args(["--version"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("cloudhv-agent "));
}

/// Calls Health on an agent outside this test (set CLOUDHV_AGENT_SOCKET to a socket path or a
/// ttrpc address), e.g. a QEMU guest's virtio-serial socket; waits up to CLOUDHV_AGENT_TIMEOUT_S (default 60) for the reply.
#[test]
fn external_agent_health() {
    let Ok(sock) = std::env::var("CLOUDHV_AGENT_SOCKET") else {
        return;
    };
    let timeout: u64 = std::env::var("CLOUDHV_AGENT_TIMEOUT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let t0 = Instant::now();
    // A path, or any ttrpc address (unix://..., vsock://CID:PORT).
    let client = if sock.contains("://") {
        client_at(&sock)
    } else {
        client_for(Path::new(&sock))
    };
    let c = ttrpc::context::with_timeout(Duration::from_secs(timeout).as_nanos() as i64);
    let h = client.health(c, &HealthRequest::new()).expect("Health");
    let v = client
        .version(ctx(), &VersionRequest::new())
        .expect("Version");
    println!(
        "external agent: {:?}, guest uptime {} ms, reply after {} ms; agent {} protocol {} kernel {} runtime {:?}",
        h.status,
        h.uptime_ns / 1_000_000,
        t0.elapsed().as_millis(),
        v.agent_version,
        v.protocol_version,
        v.kernel_release,
        v.runtime_version
    );
    assert_eq!(h.status.enum_value(), Ok(health_response::Status::SERVING));
}
