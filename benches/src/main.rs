//! Placeholder for the end-to-end benchmark harness (client ⇄ server over loopback), which
//! is still to be written. The micro-benchmarks live in `benches/micro/`.

#[allow(clippy::print_stdout)] // a binary's usage line
fn main() {
    println!(
        "cyberbackup-bench: end-to-end harness not written yet; \
         run the micro-benchmarks with `cargo bench -p cyberbackup-bench` (see docs/benchmarks.md)"
    );
}
