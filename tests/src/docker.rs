//! A real dockerd (Debian's docker.io 20.10) in the test's node namespace, from the lab
//! crate, set up the way bpfbridge's README says to run it with the plugin, and a busybox
//! image with what the tests' containers run.

use std::{
    ops::Deref,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::Netns;
use anyhow::{Context as _, Result};
pub use bpfbridge_lab::docker::{DOCKER, DOCKERD, available};

/// The image every test container runs.
pub const IMAGE: &str = "bpfbt-busybox:latest";
/// Where dockerd looks for plugin sockets by name.
pub const PLUGIN_DIR: &str = "/run/docker/plugins";

/// The lab's [`bpfbridge_lab::Dockerd`], started for the plugin tests.
pub struct Dockerd(bpfbridge_lab::Dockerd);

impl Dockerd {
    /// Starts dockerd in `node` the way bpfbridge's README says: no iptables, no masquerade,
    /// no default bridge, so that every container network comes from a plugin.
    pub fn start(node: &Netns) -> Result<Self> {
        let options = bpfbridge_lab::DockerdOptions::new(IMAGE)
            .flags(["--iptables=false", "--ip-masq=false", "--bridge=none"])
            .applets([
                "sh", "httpd", "nc", "wget", "ip", "sleep", "cat", "echo", "timeout", "ping",
                "nslookup",
            ])
            .file("www/index.html", "hello from busybox\n")
            .stop_grace(Duration::from_secs(20));
        Ok(Dockerd(bpfbridge_lab::Dockerd::start(
            &node.path(),
            options,
        )?))
    }

    /// The bpfbridge container that stands for a Docker container's sandbox.
    pub fn bpfbridge_name(&self, name: &str) -> Result<String> {
        let sandbox = self.sandbox(name)?;
        let id = sandbox
            .file_name()
            .and_then(|n| n.to_str())
            .context("sandbox key")?;
        Ok(format!("docker-{id}"))
    }
}

impl Deref for Dockerd {
    type Target = bpfbridge_lab::Dockerd;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// A plugin name no other test uses, and its socket where dockerd looks for it.
pub fn plugin(role: &str) -> (String, PathBuf) {
    let name = crate::unique(role);
    let socket = Path::new(PLUGIN_DIR).join(format!("{name}.sock"));
    (name, socket)
}
