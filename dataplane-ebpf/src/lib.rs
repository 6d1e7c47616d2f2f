//! Empty library target: it lets the agent declare a build-dependency on this crate, so that
//! cargo rebuilds the agent (and with it the embedded eBPF object) when the programs change.
#![no_std]
