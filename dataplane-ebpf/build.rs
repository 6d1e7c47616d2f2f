//! Cargo cannot see that linking this crate runs `bpf-linker`; rebuild when it changes.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
