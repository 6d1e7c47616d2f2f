//! A real dockerd (Debian's docker.io 20.10) in the test's node namespace, with its data,
//! its sockets and its containers all private to the test, and a busybox image imported
//! from a tarball (no registry). Dropping it removes the containers, stops dockerd and
//! unmounts and deletes what it left.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::Netns;
use anyhow::{Context as _, Result, bail, ensure};

/// Debian's docker.io client; /usr/local/bin may hold a newer one.
pub const DOCKER: &str = "/usr/bin/docker";
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// The image every test container runs.
pub const IMAGE: &str = "bpfbt-busybox:latest";
/// Where dockerd looks for plugin sockets by name.
pub const PLUGIN_DIR: &str = "/run/docker/plugins";

/// Whether docker.io is installed; tests that need it say so and pass when it is not.
pub fn available() -> bool {
    Path::new(DOCKER).exists() && Path::new(DOCKERD).exists()
}

pub struct Dockerd {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub host: String,
}

impl Dockerd {
    /// Starts dockerd in `node` the way bpfbridge's README says: no iptables, no masquerade,
    /// no default bridge, so that every container network comes from a plugin.
    pub fn start(node: &Netns) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("bpfbt-docker-").tempdir()?;
        let log = fs::File::create(dir.path().join("dockerd.log"))?;
        let host = format!("unix://{}", dir.path().join("docker.sock").display());
        let mut command = Command::new(DOCKERD);
        command
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("docker.pid"))
            .args(["-H", &host])
            .args(["--iptables=false", "--ip-masq=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // dockerd must see the host's cgroups.
        let child =
            crate::spawn_in_netns(&mut command, &node.path()).context("spawning dockerd")?;
        let mut dockerd = Dockerd {
            child: Some(child),
            dir,
            host,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !dockerd.docker(&["version"])?.status.success() {
            if let Some(status) = dockerd
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("dockerd exited with {status}: {}", dockerd.log());
            }
            if Instant::now() > deadline {
                bail!("dockerd not ready after 60 s: {}", dockerd.log());
            }
            thread::sleep(Duration::from_millis(200));
        }
        dockerd.import_busybox()?;
        Ok(dockerd)
    }

    /// A root file system of busybox applets, imported as [`IMAGE`].
    fn import_busybox(&self) -> Result<()> {
        let rootfs = self.dir.path().join("rootfs");
        fs::create_dir_all(rootfs.join("bin"))?;
        fs::create_dir_all(rootfs.join("www"))?;
        fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .context("copying /bin/busybox (busybox-static)")?;
        for applet in [
            "sh", "httpd", "nc", "wget", "ip", "sleep", "cat", "echo", "timeout", "ping",
            "nslookup",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
        }
        fs::write(rootfs.join("www/index.html"), "hello from busybox\n")?;
        let tarball = self.dir.path().join("busybox.tar");
        crate::run(
            "tar",
            &[
                "-C",
                &rootfs.display().to_string(),
                "-cf",
                &tarball.display().to_string(),
                ".",
            ],
        )?;
        self.ok(&["import", &tarball.display().to_string(), IMAGE])?;
        Ok(())
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Runs the docker client against this dockerd, whatever the outcome.
    pub fn docker(&self, args: &[&str]) -> Result<Output> {
        Command::new(DOCKER)
            .args(["-H", &self.host])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running docker")
    }

    /// Runs the docker client and returns its trimmed stdout; a failure carries stderr.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.docker(args)?;
        ensure!(
            out.status.success(),
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// Runs the docker client expecting a failure; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.docker(args)?;
        ensure!(
            !out.status.success(),
            "docker {} succeeded: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout).trim()
        );
        Ok(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }

    /// `docker inspect -f FORMAT NAME`.
    pub fn inspect(&self, name: &str, format: &str) -> Result<String> {
        self.ok(&["inspect", "-f", format, name])
    }

    /// A container's network namespace (its sandbox key), for the test's own servers.
    pub fn sandbox(&self, name: &str) -> Result<PathBuf> {
        Ok(self
            .inspect(name, "{{.NetworkSettings.SandboxKey}}")?
            .into())
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

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(out) = self.docker(&["ps", "-aq"]) {
            let ids = String::from_utf8_lossy(&out.stdout).to_string();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.docker(&args);
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
        // Overlay and namespace mounts dockerd left under its directories, deepest first.
        let prefix = self.dir.path().display().to_string();
        let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            let _ = nix::mount::umount2(mount.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A plugin name no other test uses, and its socket where dockerd looks for it.
pub fn plugin(role: &str) -> (String, PathBuf) {
    let name = crate::unique(role);
    let socket = Path::new(PLUGIN_DIR).join(format!("{name}.sock"));
    (name, socket)
}
