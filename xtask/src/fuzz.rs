//! `cargo xtask fuzz`: the shared packet parser's property fuzz
//! (dataplane-common/tests/parser_fuzz.rs) for as long as asked, from a random seed or a
//! given one. `cargo xtask test` runs the same test briefly from a fixed seed.
//!
//! A proptest harness rather than cargo-fuzz: it runs on the stable toolchain the workspace
//! builds with (cargo-fuzz needs nightly and libFuzzer), inside the ordinary test run, and
//! shrinks a failure to a small frame. The generator is structure-aware (headers, options,
//! fragments, ICMP quotes, then byte flips and cuts) to reach the parser's deep paths
//! without coverage feedback.

use anyhow::Result;
use bpfbridge_lab::cmd;

pub fn run(seconds: u64, seed: Option<u64>) -> Result<()> {
    let mut cargo = crate::cargo();
    cargo
        .args(["test", "-p", "dataplane-common", "--test", "parser_fuzz"])
        .args(["--", "--nocapture"])
        .env("BPFBRIDGE_FUZZ_SECONDS", seconds.to_string());
    match seed {
        Some(seed) => cargo.env("BPFBRIDGE_FUZZ_SEED", seed.to_string()),
        None => cargo.env_remove("BPFBRIDGE_FUZZ_SEED"),
    };
    cmd::run(&mut cargo)?;
    println!(
        "its figures: {}; `cargo xtask reliability` puts them in docs/reliability.md",
        crate::reliability::figures_dir()
            .join("parser_fuzz.ebpf.json")
            .display()
    );
    Ok(())
}
