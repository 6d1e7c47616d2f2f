//! Real Docker for `cargo xtask bench --with-docker`: a dockerd 20.10 (Debian's docker.io)
//! running inside a node namespace of the bench's own, as in
//! shared/reference/docker-20.10/README.md, with a tiny busybox image imported from a
//! tarball (no registry).
//!
//! dockerd runs with `--userland-proxy=false`: with the proxy it starts one docker-proxy
//! process per published port, and thousands of them do not fit the machine. Its storage
//! driver is `vfs`, which mounts nothing that teardown could trip over.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use crate::cmd;

/// Debian's docker.io client, named in full: /usr/local/bin/docker may be another version.
const DOCKER: &str = "/usr/bin/docker";
const DOCKERD: &str = "/usr/sbin/dockerd";
const IMAGE: &str = "bpfb-bench-busybox:latest";
/// What the containers run: nothing; the bench's server joins their network namespace.
const IDLE: [&str; 2] = ["/bin/sleep", "86400"];

/// Whether docker.io is installed.
pub fn available() -> bool {
    Path::new(DOCKER).exists() && Path::new(DOCKERD).exists()
}

/// `dockerd --version`, when docker.io is installed.
pub fn version() -> Option<String> {
    available()
        .then(|| cmd::output(Command::new(DOCKERD).arg("--version")).ok())
        .flatten()
        .map(|v| v.trim().to_string())
}

/// A dockerd in a network namespace, with its state in a directory of its own; everything
/// it made goes with [`Dockerd::stop`] (also on drop).
pub struct Dockerd {
    dir: PathBuf,
    daemon: Option<Child>,
}

impl Dockerd {
    /// Starts dockerd in the namespace at `netns` with the default bridge at `bip`, waits
    /// until it answers, and imports the image.
    pub fn start(netns: &Path, dir: &Path, bip: &str) -> Result<Self> {
        fs::create_dir_all(dir)?;
        // An empty configuration: never the host's /etc/docker/daemon.json.
        fs::write(dir.join("daemon.json"), "{}")?;
        let log = fs::File::create(dir.join("dockerd.log"))?;
        // nsenter, not `ip netns exec`, which remounts /sys: dockerd then finds no cgroups.
        let daemon = cmd::spawn(
            Command::new("nsenter")
                .arg(format!("--net={}", netns.display()))
                .arg(DOCKERD)
                .arg("--config-file")
                .arg(dir.join("daemon.json"))
                .arg("--data-root")
                .arg(dir.join("data"))
                .arg("--exec-root")
                .arg(dir.join("exec"))
                .arg("--pidfile")
                .arg(dir.join("dockerd.pid"))
                .arg("-H")
                .arg(format!("unix://{}", dir.join("docker.sock").display()))
                .args(["--bip", bip, "--userland-proxy=false", "--storage-driver"])
                .arg("vfs")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )?;
        let mut dockerd = Dockerd {
            dir: dir.to_path_buf(),
            daemon: Some(daemon),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while dockerd
            .docker(&["version"], Duration::from_secs(5))
            .is_err()
        {
            if let Some(status) = dockerd.daemon.as_mut().and_then(|d| d.try_wait().ok()?) {
                anyhow::bail!("dockerd exited with {status}: {}", dockerd.log());
            }
            ensure!(
                Instant::now() < deadline,
                "dockerd not ready: {}",
                dockerd.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
        dockerd.import_image()?;
        Ok(dockerd)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// `docker -H SOCKET ARGS`; its stdout.
    pub fn docker(&self, args: &[&str], timeout: Duration) -> Result<String> {
        cmd::output_timeout(
            Command::new(DOCKER)
                .arg("-H")
                .arg(format!("unix://{}", self.dir.join("docker.sock").display()))
                .args(args),
            timeout,
        )
    }

    /// A root file system of busybox with `sleep`, imported as [`IMAGE`].
    fn import_image(&self) -> Result<()> {
        let rootfs = self.dir.join("rootfs");
        fs::create_dir_all(rootfs.join("bin"))?;
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("busybox is missing (apt-get install busybox-static)")?;
        fs::copy(busybox, rootfs.join("bin/busybox"))?;
        for applet in ["sh", "sleep"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
        }
        let tarball = self.dir.join("busybox.tar");
        cmd::output(
            Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .arg("-cf")
                .arg(&tarball)
                .arg("."),
        )?;
        self.docker(
            &["import", &tarball.to_string_lossy(), IMAGE],
            Duration::from_secs(60),
        )
        .map(drop)
    }

    /// `docker run -d --name NAME -p ... IMAGE sleep`: a container publishing `ports`
    /// (`-p` values).
    pub fn run(&self, name: &str, ports: &[String], timeout: Duration) -> Result<()> {
        let mut args = vec!["run", "-d", "--name", name];
        for p in ports {
            args.extend(["-p", p.as_str()]);
        }
        args.push(IMAGE);
        args.extend(IDLE);
        self.docker(&args, timeout).map(drop)
    }

    /// A running container's address and the path of its network namespace.
    pub fn inspect(&self, name: &str) -> Result<(Ipv4Addr, PathBuf)> {
        let out = self.docker(
            &[
                "inspect",
                "-f",
                "{{.State.Pid}} {{.NetworkSettings.IPAddress}}",
                name,
            ],
            Duration::from_secs(30),
        )?;
        let (pid, ip) = out
            .trim()
            .split_once(' ')
            .with_context(|| format!("docker inspect {name}: {out:?}"))?;
        Ok((ip.parse()?, PathBuf::from(format!("/proc/{pid}/ns/net"))))
    }

    /// `docker rm -f NAME`.
    pub fn rm(&self, name: &str, timeout: Duration) -> Result<()> {
        self.docker(&["rm", "-f", name], timeout).map(drop)
    }

    /// Removes every container, stops dockerd (and the containerd it started) and removes
    /// its directory.
    pub fn stop(&mut self) -> Result<()> {
        let Some(daemon) = self.daemon.take() else {
            return Ok(());
        };
        let mut errors = Vec::new();
        match self.docker(&["ps", "-aq"], Duration::from_secs(30)) {
            Ok(ids) => {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids);
                    if let Err(e) = self.docker(&args, Duration::from_secs(120)) {
                        errors.push(format!("{e:#}"));
                    }
                }
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
        // dockerd stops the containerd it started on SIGTERM.
        crate::lab::stop_child_within(daemon, Duration::from_secs(30));
        // vfs mounts nothing, but a crash may leave a container's namespace mounted.
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for target in mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|t| Path::new(t).starts_with(&self.dir))
        {
            let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            errors.push(format!("removing {}: {e}", self.dir.display()));
        }
        ensure!(errors.is_empty(), "stopping dockerd: {}", errors.join("; "));
        Ok(())
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("bench: {e:#}");
        }
    }
}
