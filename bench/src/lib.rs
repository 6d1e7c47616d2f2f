//! The harness of `cargo xtask bench`: the head-to-head benchmark of the eBPF dataplane
//! against the iptables dataplane (Docker 20.10's rules), plain routing (`direct`) and, when
//! asked, real Docker, in a lab of network namespaces of its own.
//!
//! [`run`] builds the lab (module `lab`, on the shared `bpfbridge-lab` crate), runs the
//! scenarios (module `scenarios`) with the load generator `bpfbridge-loadgen` (this crate's
//! binary), writes the typed [`results`] to results.json and the report ([`report`]:
//! report.md and the plots) next to it. xtask only builds the binaries, parses the flags and
//! calls [`run`].

mod harness;
mod lab;
pub mod report;
pub mod results;
mod scenarios;

pub use harness::{Bins, Options, run};
pub use lab::PREFIX;
pub use results::{Results, Sample, Scenario};
