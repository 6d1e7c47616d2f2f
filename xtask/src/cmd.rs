//! Running external commands: the lab crate's runner, which the demo and the bench share.

pub use bpfbridge_lab::cmd::*;
