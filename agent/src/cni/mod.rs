//! `bpfbridge-cni`, a CNI 1.1 plugin (containernetworking/cni SPEC.md): a thin client of
//! the agent's API, which makes the veth, the address and the published ports
//! (`/cni/attachments`). The binary reads the environment and stdin and prints what
//! [`run`] returns; everything else is here, so that it can be tested.
//!
//! Versions 0.4.0, 1.0.0 and 1.1.0 are accepted, results are written in the shape of the
//! requested one. A `DEL` while the agent is down succeeds: the attachment is written to the
//! plugin's state directory and removed by the next call that reaches the agent (and by the
//! agent itself on start when the runtime has deleted the namespace by then).

mod config;
mod error;
mod plugin;
mod result;

pub use config::{
    Command, Invocation, NetConf, PortMapping, RuntimeConfig, ValidAttachment,
    version_of as config_version,
};
pub use error::{CniError, ErrorCode};
pub use plugin::run;
pub use result::{CniResult, Dns, Interface, IpConfig, Route};

/// The versions of the spec the plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// The version of the spec this plugin implements, for errors about input that has none.
pub const CURRENT_VERSION: &str = "1.1.0";

/// Where the plugin finds the agent's socket unless the configuration says `agentSocket`.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/bpfbridge/bpfbridge.sock";

/// Where the plugin keeps the deletions the agent has not seen yet, unless the
/// configuration says `stateDir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cni/bpfbridge";

/// Whether `version` (`MAJOR.MINOR.PATCH`) is at least `minimum`.
pub fn version_at_least(version: &str, minimum: &str) -> bool {
    fn parts(v: &str) -> Vec<u64> {
        v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
    }
    parts(version) >= parts(minimum)
}
