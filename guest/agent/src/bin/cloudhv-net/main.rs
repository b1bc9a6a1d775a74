//! cloudhv-net: the shim daemon's one long-lived helper for pod networks (runs on the node, not
//! in the guest; it lives in this crate to share its toolchain and crate versions).
//!
//! A pod's TAP, its tc redirects and anti-spoof filters, its sysctls, the read of the CNI
//! interface and the detach are netlink requests (and /dev/net/tun, /proc/sys writes) made from
//! a thread that has entered the pod's netns: no process is started per pod or per step. The
//! daemon starts one helper and writes one JSON request per line on its stdin:
//! `{"id": N, "op": "read" | "tap-add" | "setup" | "link-del" | "qdisc-del" | "detach", …}`;
//! each gets one line on stdout, in any order: `{"id": N, "ok": true, …}` or
//! `{"id": N, "ok": false, "step": …, "index": …, "error": …}`. Every value is checked here
//! too (names, numbers, sysctl keys); the policy (which filters, which settings) is the
//! daemon's. It dies with the daemon (PR_SET_PDEATHSIG) and exits at the end of its stdin.

mod netlink;
mod ops;

use serde_json::{Map, Value, json};
use std::io::{BufRead, Read, Write};
use std::sync::{Arc, Mutex};

/// A request line longer than this is refused (a pod's is a few KiB).
const MAX_LINE: usize = 1 << 20;

fn answer(id: Value, outcome: ops::Outcome) -> Value {
    match outcome {
        Ok(Value::Object(mut m)) => {
            m.insert("id".into(), id);
            m.insert("ok".into(), json!(true));
            Value::Object(m)
        }
        Ok(_) => json!({"id": id, "ok": true}),
        Err(f) => {
            json!({"id": id, "ok": false, "step": f.step, "index": f.index, "error": f.message})
        }
    }
}

fn handle(req: &Map<String, Value>) -> ops::Outcome {
    match req.get("op").and_then(Value::as_str) {
        Some("read") => ops::read(req),
        Some("tap-add") => ops::tap_add(req),
        Some("setup") => ops::setup(req),
        Some("link-del") => ops::link_del(req),
        Some("qdisc-del") => ops::qdisc_del(req),
        Some("detach") => ops::detach(req),
        other => Err(ops::Failure {
            step: "request",
            index: None,
            message: format!("unknown op {other:?}"),
        }),
    }
}

fn main() {
    if std::env::args()
        .nth(1)
        .is_some_and(|a| a == "--help" || a == "-h")
    {
        println!("usage: cloudhv-net (started by the shim daemon; JSON requests on stdin)");
        return;
    }
    // SAFETY: prctl with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let mut input = std::io::stdin().lock();
    let mut line = Vec::new();
    let mut running: Vec<std::thread::JoinHandle<()>> = Vec::new();
    loop {
        line.clear();
        match input
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            // The daemon is done: the requests in flight still get their answers.
            Ok(0) | Err(_) => {
                running.into_iter().for_each(|t| drop(t.join()));
                return;
            }
            Ok(_) => {}
        }
        if line.len() > MAX_LINE {
            eprintln!("cloudhv-net: a request over {MAX_LINE} bytes; exiting");
            std::process::exit(1);
        }
        let req = match serde_json::from_slice::<Value>(&line) {
            Ok(Value::Object(m)) => m,
            _ => {
                eprintln!("cloudhv-net: a request that is not a JSON object; exiting");
                std::process::exit(1);
            }
        };
        let out = Arc::clone(&out);
        // A thread per request: each enters its own netns (setns moves only the calling
        // thread), and a slow one does not hold up another pod's.
        running.retain(|t| !t.is_finished());
        running.push(std::thread::spawn(move || {
            let id = req.get("id").cloned().unwrap_or(Value::Null);
            let reply = answer(id, handle(&req));
            let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(out, "{reply}");
            let _ = out.flush();
        }));
    }
}
