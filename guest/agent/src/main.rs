fn main() {
    let code = cloudhv_agent::run(std::env::args().skip(1).collect());
    std::process::exit(code);
}
