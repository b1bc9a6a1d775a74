//! containerd-shim-cloudhv-v1, compiled: containerd runs this binary for every task's `start`
//! (and `delete`). When the node's shim front already serves (the common case) it does the job
//! itself in about a millisecond; for anything else — no front yet, a flag or an input it does
//! not read exactly as the Node.js shim does, an error before a request went out — it execs the
//! Node.js shim (`<dist>/src/bin/shim.js`, next to this binary) with the same arguments, so
//! there is one behaviour and the Node.js shim is its reference. docs/design.md, "Launcher".

mod address;
mod flags;
mod route;
mod sha256;
mod ttrpc;

use address::SOCKET_SCHEME;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const ADMIN: &str = "cloudhv.shim.v1.Admin";
/// The installed runtime config when $CLOUDHV_CONFIG does not name one (shim.ts).
const DEFAULT_CONFIG: &str = "/opt/cloudhv/config.json";

/// Why the Node.js shim takes over (kept for $CLOUDHV_LAUNCHER_TRACE).
type Fallback = &'static str;

enum Done {
    /// What to print on stdout.
    Output(Vec<u8>),
    /// The request went out and failed: print this as the Node.js shim would and exit 1.
    Error(String),
}

fn env(name: &str) -> Result<Option<String>, Fallback> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err("an environment variable is not UTF-8"),
    }
}

fn can_connect(socket: &str) -> bool {
    UnixStream::connect(socket).is_ok()
}

/// shim.ts's controlSocketFor(): the front this build, config and containerd use.
fn control_socket(dist: &Path, inv: &flags::Invocation) -> Result<String, Fallback> {
    let build = address::build_id(dist).ok_or("no valid build id next to the shim")?;
    let config_path = env("CLOUDHV_CONFIG")?.unwrap_or_else(|| DEFAULT_CONFIG.to_string());
    let config = address::runtime_config(&config_path).ok_or("runtime config not read here")?;
    let ttrpc = address::containerd_ttrpc(env("TTRPC_ADDRESS")?.as_deref(), &inv.address)
        .ok_or("containerd's ttrpc address unknown")?;
    address::daemon_socket(&build, &config.state_dir, &ttrpc, &config.text)
        .ok_or("state_dir is not a plain absolute path")
}

fn start(dist: &Path, bundle: &Path, inv: &flags::Invocation) -> Result<Done, Fallback> {
    if inv.namespace.is_empty() {
        return Err("start without -namespace");
    }
    let routed = match route::sandbox_address(bundle)? {
        Some(a) if can_connect(&a[SOCKET_SCHEME.len()..]) => Some(a),
        _ => None,
    };
    let address = match routed {
        Some(a) => a,
        None => {
            let control = control_socket(dist, inv)?;
            let ns_socket =
                address::namespace_socket(&control, &inv.namespace).ok_or("odd socket name")?;
            if can_connect(&ns_socket) {
                format!("{SOCKET_SCHEME}{ns_socket}")
            } else {
                listen(&control, &inv.namespace)?
            }
        }
    };
    // containerd reconnects through this file after it restarts.
    std::fs::write(bundle.join("address"), &address)
        .map_err(|_| "cannot write the address file")?;
    Ok(Done::Output(address.into_bytes()))
}

/// Admin.Listen on the front's control socket. Listen only opens or finds a listener, so any
/// failure can be left to the Node.js shim, which asks again (and starts a front if none runs).
fn listen(control: &str, namespace: &str) -> Result<String, Fallback> {
    let mut request = Vec::new();
    ttrpc::put_bytes(&mut request, 1, namespace.as_bytes());
    // shim.ts gives a starting or restarting daemon this long.
    let reply = ttrpc::call(control, ADMIN, "Listen", &request, Duration::from_secs(25))
        .map_err(|_| "Admin.Listen did not answer")?;
    let mut address = String::new();
    for (field, value) in ttrpc::fields(&reply).ok_or("undecodable ListenResponse")? {
        if let (1, ttrpc::Value::Bytes(b)) = (field, value) {
            address = String::from_utf8(b.to_vec()).map_err(|_| "ListenResponse is not UTF-8")?;
        }
    }
    Ok(address)
}

/// shim.ts's deleteTask() while the front that started the task (or this build's) answers.
fn delete(dist: &Path, bundle: &Path, inv: &flags::Invocation) -> Result<Done, Fallback> {
    let started = match address::read_capped(&bundle.join("address"), 4096) {
        Err(_) => None, // shim.ts: no readable address file
        Ok(Err(())) => return Err("address file too long"),
        Ok(Ok(bytes)) => {
            let text = String::from_utf8(bytes).map_err(|_| "address file is not UTF-8")?;
            if !text.is_ascii() {
                return Err("address file is not ASCII");
            }
            address::control_socket_of(&address::js_trim_ascii(&text).replacen(
                SOCKET_SCHEME,
                "",
                1,
            ))
        }
    };
    let socket = match started {
        Some(s) => s,
        None => control_socket(dist, inv)?,
    };
    // Nobody answers: the Node.js shim decides whether a front is started to clean up.
    if !can_connect(&socket) {
        return Err("no front answers for this task");
    }
    let mut request = Vec::new();
    ttrpc::put_bytes(&mut request, 1, inv.namespace.as_bytes());
    ttrpc::put_bytes(&mut request, 2, inv.id.as_bytes());
    match ttrpc::call(
        &socket,
        ADMIN,
        "ForceDelete",
        &request,
        Duration::from_secs(60),
    ) {
        Ok(reply) => Ok(Done::Output(reply)),
        // A daemon that does not know the task: nothing of it is left to stop.
        Err(ttrpc::CallError::Status(ttrpc::NOT_FOUND, _)) => Ok(Done::Output(nothing_left())),
        Err(ttrpc::CallError::Status(code, message)) => Ok(Done::Error(format!(
            "{}: {message}",
            ttrpc::code_name(code)
        ))),
        Err(ttrpc::CallError::Failed(message)) => Ok(Done::Error(message)),
        Err(ttrpc::CallError::NotSent) => Err("the front refused the connection"),
    }
}

/// The DeleteResponse shim.ts writes when no daemon knows the task (pid 0, exit 137, now), in
/// the bytes protobufjs gives it.
fn nothing_left() -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut stamp = Vec::new();
    ttrpc::put_uint(&mut stamp, 1, now);
    ttrpc::put_uint(&mut stamp, 2, 0);
    let mut out = Vec::new();
    ttrpc::put_uint(&mut out, 1, 0);
    ttrpc::put_uint(&mut out, 2, 137);
    ttrpc::put_bytes(&mut out, 3, &stamp);
    out
}

fn run(dist: &Path, args: &[std::ffi::OsString]) -> Result<Done, Fallback> {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.clone().into_string())
        .collect::<Result<_, _>>()
        .map_err(|_| "an argument is not UTF-8")?;
    let inv = flags::parse(&args).ok_or("flags the launcher does not take")?;
    if inv.version || inv.info {
        return Err("-v / -info");
    }
    let bundle = std::env::current_dir().map_err(|_| "no working directory")?;
    match inv.action.as_deref() {
        Some("start") => start(dist, &bundle, &inv),
        Some("delete") => delete(dist, &bundle, &inv),
        _ => Err("not start or delete"),
    }
}

/// Runs the Node.js shim in this process: the bundled node when there is one (an installed
/// version: `<version>/node/bin/node` beside `<version>/shim/dist`), else `node` on $PATH, as
/// shim.js's `#!/usr/bin/env node` would.
fn exec_node(dist: &Path, args: &[std::ffi::OsString], why: Fallback) -> ! {
    let shim = dist.join("src/bin/shim.js");
    let node = dist.join("../../node/bin/node");
    if std::env::var_os("CLOUDHV_LAUNCHER_TRACE").is_some() {
        eprintln!("containerd-shim-cloudhv-v1: launcher: running the Node.js shim ({why})");
    }
    let node = if node.is_file() {
        node
    } else {
        PathBuf::from("node")
    };
    let err = std::process::Command::new(&node)
        .arg(&shim)
        .args(args)
        .exec();
    eprintln!(
        "containerd-shim-cloudhv-v1: cannot run the Node.js shim {}: {err}",
        shim.display()
    );
    std::process::exit(1);
}

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    // This binary lives in the shim's dist/ directory; every other path is found from there.
    let dist: PathBuf = match std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        Some(d) => d,
        None => {
            eprintln!("containerd-shim-cloudhv-v1: cannot find its own path (/proc/self/exe)");
            std::process::exit(1);
        }
    };
    match run(&dist, &args) {
        Ok(Done::Output(bytes)) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&bytes).and_then(|()| out.flush());
        }
        Ok(Done::Error(message)) => {
            eprintln!("containerd-shim-cloudhv-v1: {message}");
            std::process::exit(1);
        }
        Err(why) => exec_node(&dist, &args, why),
    }
}
