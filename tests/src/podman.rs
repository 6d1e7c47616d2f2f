//! Debian's podman 4.3 with its CNI backend (`network_backend = "cni"`), run by a test with
//! its own containers.conf, storage (vfs) and CNI directories, and an image loaded from a
//! tarball the test builds (no registry).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, Result, ensure};
use bpfbridge_lab::mounts::{remove_cgroup_parent, unmount_below};

use crate::cri::{SANDBOX_IMAGE, write_sandbox_image};

pub const PODMAN: &str = "/usr/bin/podman";

/// Whether podman is installed.
pub fn available() -> bool {
    Path::new(PODMAN).exists()
}

/// podman with everything under a directory of its own, run in a node namespace.
pub struct Podman {
    pub dir: tempfile::TempDir,
    netns: PathBuf,
    /// The cgroup the containers' cgroups go under.
    cgroup_parent: String,
}

impl Podman {
    /// Sets podman up to run in the namespace at `netns` with `conflist` (its `name` is the
    /// network's) in its CNI config dir and `plugin` in its plugin dir; loads the image.
    pub fn new(netns: &Path, plugin: &Path, conflist: &serde_json::Value) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("bpfbt-podman-").tempdir()?;
        let root = dir.path();
        let (bin, conf) = (root.join("cni-bin"), root.join("cni-conf"));
        fs::create_dir_all(&bin)?;
        fs::create_dir_all(&conf)?;
        fs::create_dir_all(root.join("tmp"))?;
        std::os::unix::fs::symlink(plugin, bin.join("bpfbridge-cni"))?;
        let name = conflist["name"].as_str().context("the conflist's name")?;
        fs::write(
            conf.join(format!("{name}.conflist")),
            serde_json::to_vec_pretty(conflist)?,
        )?;
        fs::write(
            root.join("containers.conf"),
            format!(
                r#"[containers]
# podman raises the container's open-file and process limits to defaults above what this
# (possibly nested) machine allows root: keep it small.
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin}"]
network_config_dir = "{conf}"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{root}/events.log"
runtime = "runc"
tmp_dir = "{root}/tmp"
static_dir = "{root}/storage/libpod"
volume_path = "{root}/storage/volumes"
"#,
                bin = bin.display(),
                conf = conf.display(),
                root = root.display()
            ),
        )?;
        fs::write(
            root.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{root}/storage\"\nrunroot = \"{root}/run\"\n",
                root = root.display()
            ),
        )?;
        fs::write(root.join("registries.conf"), "")?;
        let podman = Podman {
            netns: netns.to_path_buf(),
            cgroup_parent: format!("/{}", crate::unique("podman")),
            dir,
        };
        let image = write_sandbox_image(podman.dir.path())?;
        podman.run_ok(&["load", "-i", &image.display().to_string()])?;
        Ok(podman)
    }

    /// `podman ARGS` in the node namespace with the test's configuration.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        let root = self.dir.path();
        let mut command = Command::new(PODMAN);
        // Only the network namespace (`ip netns exec` would remount /sys, cgroups with it).
        crate::enter_netns(&mut command, &self.netns)?;
        command
            .args(args)
            .env("CONTAINERS_CONF", root.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", root.join("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", root.join("registries.conf"));
        Ok(command.output()?)
    }

    /// `podman ARGS`, which must succeed; its stdout.
    pub fn run_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        ensure!(
            out.status.success(),
            "podman {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// `podman run -d --network NETWORK -p PUBLISH --name NAME` of the test image.
    pub fn run_container(&self, name: &str, network: &str, publish: &str) -> Result<String> {
        let cgroup_parent = self.cgroup_parent.clone();
        let id = self.run_ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "-p",
            publish,
            "--cgroup-parent",
            &cgroup_parent,
            SANDBOX_IMAGE,
        ])?;
        Ok(id.trim().to_string())
    }

    /// Removes every container and the storage, its mounts and cgroups.
    pub fn clean_up(&mut self) {
        let _ = self.run(&["rm", "-a", "-f", "-t", "0"]);
        let _ = self.run(&["system", "reset", "-f"]);
        unmount_below(self.dir.path());
        remove_cgroup_parent(&self.cgroup_parent);
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.clean_up();
    }
}
