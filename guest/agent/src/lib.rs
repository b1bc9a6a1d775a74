//! cloudhv-agent: PID 1 of a cloudhv pod microVM. Mounts the basic filesystems, reaps
//! children, and serves the agent ttrpc API (shim/proto/agent.proto) on vsock port 1024
//! and/or the virtio-serial port `io.cloudhv.agent`.

#[macro_use]
pub mod log;
pub mod console;
pub mod container;
pub mod crun;
pub mod error;
pub mod holder;
pub mod mounts;
pub mod network;
pub mod portfwd;
pub mod reaper;
pub mod resources;
pub mod serial;
pub mod service;
pub mod setup;
pub mod shared;
pub mod spec;
pub mod stats;
pub mod stream;
pub mod volumes;
pub mod vsock;
pub mod warmup;

pub mod protocol {
    //! Generated from shim/proto/agent.proto by build.rs.
    #![allow(
        clippy::all,
        unused,
        non_camel_case_types,
        non_snake_case,
        non_upper_case_globals
    )]
    pub mod agent {
        include!(concat!(env!("OUT_DIR"), "/agent.rs"));
    }
    pub mod agent_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
    }
}

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Where the ttrpc server listens for the virtio-serial bridge inside the guest.
pub const INTERNAL_SOCKET: &str = "/run/cloudhv-agent.sock";
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub const USAGE: &str = "\
usage: cloudhv-agent [options]
  As PID 1 (the guest's /init) it needs no options: it mounts /proc, /sys, /dev, cgroup2
  and tmpfs, then serves ttrpc on vsock port 1024 and on the virtio-serial port
  io.cloudhv.agent (bridged through /run/cloudhv-agent.sock).

  --test-mode           run on a normal host: no mounts, no hostname, no vsock/serial;
                        serve only on --listen (also: CLOUDHV_AGENT_TEST_MODE=1)
  --listen ADDR         also serve on ADDR: unix:///path, unix://@abstract, vsock://CID:PORT
                        (repeatable; also CLOUDHV_AGENT_LISTEN=ADDR)
  --port-name NAME      virtio-serial port name (default io.cloudhv.agent)
  --vsock-port N        vsock port (default 1024)
  --crun PATH           crun binary for containers and Version (default: crun on PATH)
  cloudhv_warmup        (kernel argument) run one practice container before serving: a pool
                        VM pays the first container's extra cost while it waits
  --version             print the version and exit
  --help                this text
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub test_mode: bool,
    pub listen: Vec<String>,
    pub port_name: String,
    pub vsock_port: u32,
    pub crun: Option<PathBuf>,
    pub print_version: bool,
    pub print_help: bool,
    /// Run the practice container before serving (a pool VM: warmup.rs).
    pub warm_up: bool,
    /// Arguments we did not understand (the kernel passes unknown boot parameters to init).
    pub ignored: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            test_mode: false,
            listen: Vec::new(),
            port_name: serial::DEFAULT_PORT_NAME.to_string(),
            vsock_port: vsock::DEFAULT_PORT,
            crun: None,
            print_version: false,
            print_help: false,
            warm_up: false,
            ignored: Vec::new(),
        }
    }
}

/// Parses arguments and environment. Errors are for bad values of known options; unknown
/// arguments are collected in `ignored` (fatal only outside PID 1).
pub fn parse_args(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, String> {
    let mut c = Config::default();
    if env("CLOUDHV_AGENT_TEST_MODE").is_some_and(|v| v == "1" || v == "true") {
        c.test_mode = true;
    }
    if let Some(l) = env("CLOUDHV_AGENT_LISTEN").filter(|v| !v.is_empty()) {
        c.listen.push(l);
    }
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or(format!("{name} needs a value"))
        };
        match key {
            "--test-mode" => c.test_mode = true,
            "--listen" => c.listen.push(value("--listen")?),
            "--port-name" => c.port_name = value("--port-name")?,
            "--vsock-port" => {
                let v = value("--vsock-port")?;
                c.vsock_port = v
                    .parse()
                    .map_err(|_| format!("--vsock-port: bad port {v:?}"))?;
            }
            "--crun" => c.crun = Some(PathBuf::from(value("--crun")?)),
            "--version" | "-V" => c.print_version = true,
            "--help" | "-h" => c.print_help = true,
            warmup::ARG => c.warm_up = true,
            _ => c.ignored.push(a.clone()),
        }
    }
    for l in &c.listen {
        if !(l.starts_with("unix://") || l.starts_with("vsock://")) {
            return Err(format!(
                "--listen {l:?}: expected unix://PATH or vsock://CID:PORT"
            ));
        }
    }
    Ok(c)
}

type BuildServer = dyn Fn(&str) -> ttrpc::Result<ttrpc::Server> + Send + Sync;

fn server_builder(service: Arc<service::AgentService>) -> Arc<BuildServer> {
    Arc::new(move |addr: &str| {
        if let Some(path) = addr.strip_prefix("unix://").filter(|p| !p.starts_with('@')) {
            let _ = std::fs::remove_file(path);
        }
        let methods = protocol::agent_ttrpc::create_agent(service.clone());
        let mut server = ttrpc::Server::new()
            .bind(addr)?
            .register_service(methods)
            // WaitProcess, ReadStream and WriteStdin block until something happens, several
            // per process at once. ttrpc's sync pool is elastic: these numbers count *idle*
            // workers; whenever fewer than `min` are idle it tops up to `default` (busy ones
            // are not limited), and idle ones beyond `max` exit. A generous idle reserve
            // means a burst of blocking calls never waits for thread creation.
            .set_thread_count_min(16)
            .set_thread_count_default(64)
            .set_thread_count_max(256);
        server.start()?;
        Ok(server)
    })
}

/// The agent's main; never returns as PID 1.
pub fn run(args: Vec<String>) -> i32 {
    if args.first().map(String::as_str) == Some(holder::FLAG) {
        holder::main(&args);
    }
    if args.first().map(String::as_str) == Some(holder::PENDING_FLAG) {
        holder::main_pending();
    }
    let pid1 = nix::unistd::getpid().as_raw() == 1;
    let cfg = match parse_args(&args, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) if !pid1 => {
            eprintln!("cloudhv-agent: {e}\n{USAGE}");
            return 2;
        }
        Err(e) => {
            error!("bad arguments ({e}); using defaults");
            Config::default()
        }
    };
    if cfg.print_help && !pid1 {
        print!("{USAGE}");
        return 0;
    }
    if cfg.print_version && !pid1 {
        println!(
            "cloudhv-agent {} (protocol {})",
            service::AGENT_VERSION,
            service::PROTOCOL_VERSION
        );
        return 0;
    }
    if !pid1 && !cfg.test_mode {
        eprintln!(
            "cloudhv-agent: not PID 1: refusing to mount over this system's /proc, /dev...; use --test-mode\n{USAGE}"
        );
        return 2;
    }
    if !pid1 && !cfg.ignored.is_empty() {
        eprintln!(
            "cloudhv-agent: unknown arguments {:?}\n{USAGE}",
            cfg.ignored
        );
        return 2;
    }
    if cfg.test_mode && cfg.listen.is_empty() {
        eprintln!("cloudhv-agent: --test-mode needs --listen ADDR");
        return 2;
    }

    // Signal masks are inherited by threads: block before any thread exists.
    let term = {
        let mut s = nix::sys::signal::SigSet::empty();
        s.add(nix::sys::signal::Signal::SIGTERM);
        s.add(nix::sys::signal::Signal::SIGINT);
        s
    };
    if cfg.test_mode {
        let _ = term.thread_block();
    }
    let reaper = reaper::Reaper::start();

    if !cfg.test_mode {
        setup::setup_system();
    }
    info!(
        "cloudhv-agent {} starting ({}, kernel {})",
        service::AGENT_VERSION,
        if cfg.test_mode { "test mode" } else { "pid 1" },
        service::kernel_release()
    );
    if !cfg.ignored.is_empty() {
        info!("ignoring arguments {:?}", cfg.ignored);
    }

    let path_var = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_string());
    let crun = match &cfg.crun {
        Some(p) => Some(p.clone()).filter(|p| p.exists()),
        None => service::find_in_path("crun", &path_var),
    };
    if crun.is_none() {
        warn!("crun not found: containers cannot run; Version will report no runtime");
    }
    if let Some(crun) = crun.as_deref().filter(|_| cfg.warm_up && !cfg.test_mode) {
        match warmup::run(crun) {
            Ok(took) => info!(
                "warm-up: the practice container ran in {} ms",
                took.as_millis()
            ),
            Err(e) => warn!("warm-up failed (serving anyway): {e}"),
        }
    }
    let service = Arc::new(service::AgentService::new(crun));
    if cfg.warm_up && !cfg.test_mode {
        // A pool VM: its pod's sandbox will only hand this holder its plan.
        service.prepare_holder();
    }
    let build = server_builder(service.clone());

    let mut servers = Vec::new();
    for addr in &cfg.listen {
        match build(addr) {
            Ok(s) => {
                info!("serving on {addr}");
                servers.push(s);
            }
            Err(e) if cfg.test_mode => {
                eprintln!("cloudhv-agent: listen on {addr}: {e}");
                return 1;
            }
            Err(e) => error!("listen on {addr}: {e}"),
        }
    }

    if !cfg.test_mode {
        start_guest_transports(&cfg, build.clone(), &mut servers);
    }
    let _ = reaper;

    if cfg.test_mode {
        match term.wait() {
            Ok(sig) => info!("{sig}: exiting"),
            Err(e) => error!("sigwait: {e}; exiting"),
        }
        for addr in &cfg.listen {
            if let Some(path) = addr.strip_prefix("unix://").filter(|p| !p.starts_with('@')) {
                let _ = std::fs::remove_file(path);
            }
        }
        // Skip server shutdown (it waits for connections); the process ends here.
        std::mem::forget(servers);
        return 0;
    }
    // PID 1 must never exit.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn start_guest_transports(cfg: &Config, build: Arc<BuildServer>, servers: &mut Vec<ttrpc::Server>) {
    // virtio-serial: ttrpc on an internal unix socket, bridged to the port.
    let internal = format!("unix://{INTERNAL_SOCKET}");
    match build(&internal) {
        Ok(s) => {
            servers.push(s);
            let name = cfg.port_name.clone();
            spawn_named("serial-bridge", move || {
                serial::run_bridge(&name, Path::new(INTERNAL_SOCKET))
            });
        }
        Err(e) => error!("listen on {internal}: {e}; virtio-serial transport disabled"),
    }
    // vsock: a plain ttrpc server once a vsock device shows up. The server lives as long as
    // the thread that started it, which then parks forever.
    let port = cfg.vsock_port;
    let b = build.clone();
    spawn_named("vsock", move || {
        let _server = vsock::wait_and_serve(port, &*b);
        loop {
            std::thread::park();
        }
    });
    let name = cfg.port_name.clone();
    spawn_named("transport-watch", move || {
        std::thread::sleep(Duration::from_secs(10));
        let mut interval = 10;
        while !serial::PORT_FOUND.load(Ordering::SeqCst)
            && !vsock::VSOCK_SERVING.load(Ordering::SeqCst)
        {
            error!(
                "NO AGENT TRANSPORT after {interval} s: no virtio-serial port named {name} and no vsock device; the host cannot reach this guest; still looking"
            );
            std::thread::sleep(Duration::from_secs(30));
            interval += 30;
        }
    });
}

fn spawn_named<F: FnOnce() + Send + 'static>(name: &str, f: F) {
    if let Err(e) = std::thread::Builder::new()
        .name(name.into())
        .stack_size(256 * 1024)
        .spawn(f)
    {
        error!("cannot start thread {name}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_flags_and_env() {
        let c = parse_args(
            &args(&[
                "--test-mode",
                "--listen",
                "unix:///tmp/a.sock",
                "--vsock-port=2000",
                "--crun",
                "/x/crun",
            ]),
            &|_| None,
        )
        .unwrap();
        assert!(c.test_mode);
        assert_eq!(c.listen, ["unix:///tmp/a.sock"]);
        assert_eq!(c.vsock_port, 2000);
        assert_eq!(c.crun, Some(PathBuf::from("/x/crun")));
        let c = parse_args(&[], &|k| match k {
            "CLOUDHV_AGENT_TEST_MODE" => Some("1".into()),
            "CLOUDHV_AGENT_LISTEN" => Some("unix://@agent".into()),
            _ => None,
        })
        .unwrap();
        assert!(c.test_mode);
        assert_eq!(c.listen, ["unix://@agent"]);
    }

    #[test]
    fn keeps_unknown_kernel_args_and_rejects_bad_values() {
        let c = parse_args(&args(&["splash", "nokaslr"]), &|_| None).unwrap();
        assert_eq!(c.ignored, ["splash", "nokaslr"]);
        assert!(!c.warm_up);
        let c = parse_args(&args(&["splash", "cloudhv_warmup"]), &|_| None).unwrap();
        assert_eq!(c.ignored, ["splash"]);
        assert!(c.warm_up, "a pool VM's kernel argument");
        assert_eq!(c.port_name, "io.cloudhv.agent");
        assert_eq!(c.vsock_port, 1024);
        assert!(parse_args(&args(&["--vsock-port", "x"]), &|_| None).is_err());
        assert!(parse_args(&args(&["--listen"]), &|_| None).is_err());
        assert!(parse_args(&args(&["--listen", "tcp://1.2.3.4:5"]), &|_| None).is_err());
    }
}
