//! Builds the eBPF programs (crate `dataplane-ebpf`) for the BPF target with aya-build and
//! leaves the object in OUT_DIR, where `dataplane::ebpf` embeds it.
//!
//! The BPF build needs a rustc with rust-src whose LLVM matches bpf-linker's: Debian's
//! rustc, linked as the rustup toolchain `debian-bpf` by `cargo xtask setup`. It is a
//! stable compiler, so `RUSTC_BOOTSTRAP=1` unlocks `-Z build-std=core` for that build only.

use anyhow::{Context as _, anyhow};
use cargo_metadata::MetadataCommand;

const EBPF_PACKAGE: &str = "dataplane-ebpf";
const BPF_TOOLCHAIN: &str = "debian-bpf";

fn main() -> anyhow::Result<()> {
    let metadata = MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let package = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("package {EBPF_PACKAGE} is not in the workspace"))?;
    let root_dir = package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", package.manifest_path))?;

    // SAFETY: build scripts are single-threaded; aya-build reads this variable and passes it
    // on to the nested cargo it spawns.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(BPF_TOOLCHAIN),
    )
    .context("building the eBPF programs (did `cargo xtask setup` run?)")
}
