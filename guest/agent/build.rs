// Generates the agent protocol (messages + ttrpc service) from shim/proto/agent.proto with
// ttrpc-codegen's pure-Rust parser: no protoc needed.
use std::{env, fs, path::PathBuf};

fn main() {
    let proto_dir = PathBuf::from("../../shim/proto");
    let proto = proto_dir.join("agent.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let gen_dir = out.join("gen");
    fs::create_dir_all(&gen_dir).expect("create gen dir");

    ttrpc_codegen::Codegen::new()
        .out_dir(&gen_dir)
        .input(&proto)
        .include(&proto_dir)
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize::default())
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("ttrpc codegen of agent.proto failed");

    // The generated files start with inner attributes (`#![...]`), which `include!` inside a
    // module rejects (so are `//!` doc lines): strip them (the crate allows the lints they silence where included).
    for name in ["agent.rs", "agent_ttrpc.rs"] {
        let text = fs::read_to_string(gen_dir.join(name)).expect("read generated file");
        let cleaned: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("#!["))
            .map(|l| match l.strip_prefix("//!") {
                Some(rest) => format!("//{rest}\n"),
                None => format!("{l}\n"),
            })
            .collect();
        fs::write(out.join(name), cleaned).expect("write generated file");
    }
}
