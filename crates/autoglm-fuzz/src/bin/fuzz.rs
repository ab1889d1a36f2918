//! The AFL++ harness: `fuzz <target>` reads inputs from AFL++ (`make fuzz TARGET=… SECS=…`).

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = autoglm_fuzz::target(&name) else {
        let names: Vec<&str> = autoglm_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("usage: fuzz <target>, one of {}", names.join(", "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| target(data));
}
