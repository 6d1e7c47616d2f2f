//! A real dockerd (Debian's docker.io 20.10) in a node namespace, with its data, its
//! sockets and its containers all private to the lab, and a busybox image imported from a
//! tarball (no registry). Stopping it (also on drop) removes the containers, stops dockerd
//! (and the containerd it started) and unmounts and deletes what it left.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    cmd,
    mounts::unmount_below,
    netns::spawn_in_netns,
    process::{check_stop, stop_child_within},
};

/// Debian's docker.io client, named in full: /usr/local/bin/docker may be another version.
pub const DOCKER: &str = "/usr/bin/docker";
pub const DOCKERD: &str = "/usr/sbin/dockerd";

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

/// How a [`Dockerd`] is started.
#[derive(Clone, Debug)]
pub struct DockerdOptions {
    /// Where dockerd keeps everything; `None`: a temporary directory of its own.
    pub dir: Option<PathBuf>,
    /// dockerd flags beyond its directories and socket (`--iptables=false`, `--bip`, ...).
    pub flags: Vec<String>,
    /// Gives dockerd an empty configuration file, never the host's /etc/docker/daemon.json.
    pub empty_config: bool,
    /// The image name the busybox root file system is imported as.
    pub image: String,
    /// The busybox applets the image links in /bin.
    pub applets: Vec<String>,
    /// Files the image holds besides busybox: `(path in the image, contents)`.
    pub files: Vec<(PathBuf, String)>,
    /// How long dockerd gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
}

impl DockerdOptions {
    pub fn new(image: &str) -> Self {
        DockerdOptions {
            dir: None,
            flags: Vec::new(),
            empty_config: false,
            image: image.into(),
            applets: vec!["sh".into(), "sleep".into()],
            files: Vec::new(),
            stop_grace: Duration::from_secs(30),
        }
    }

    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    pub fn flags<S: AsRef<str>>(mut self, flags: impl IntoIterator<Item = S>) -> Self {
        self.flags
            .extend(flags.into_iter().map(|f| f.as_ref().to_string()));
        self
    }

    pub fn empty_config(mut self, empty: bool) -> Self {
        self.empty_config = empty;
        self
    }

    pub fn applets<S: AsRef<str>>(mut self, applets: impl IntoIterator<Item = S>) -> Self {
        self.applets = applets
            .into_iter()
            .map(|a| a.as_ref().to_string())
            .collect();
        self
    }

    pub fn file(mut self, path: &str, contents: &str) -> Self {
        self.files.push((path.into(), contents.into()));
        self
    }

    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }
}

/// Where dockerd's state lives: a temporary directory, or one the caller named (removed too).
enum StateDir {
    Temporary(tempfile::TempDir),
    Given(PathBuf),
}

impl StateDir {
    fn path(&self) -> &Path {
        match self {
            StateDir::Temporary(dir) => dir.path(),
            StateDir::Given(dir) => dir,
        }
    }
}

pub struct Dockerd {
    daemon: Option<Child>,
    dir: Option<StateDir>,
    options: DockerdOptions,
    /// `-H` for the client: `unix://DIR/docker.sock`.
    pub host: String,
}

impl Dockerd {
    /// Starts dockerd in the network namespace at `netns`, waits until it answers and
    /// imports the image.
    pub fn start(netns: &Path, options: DockerdOptions) -> Result<Self> {
        let dir = match &options.dir {
            Some(dir) => {
                fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                StateDir::Given(dir.clone())
            }
            None => {
                StateDir::Temporary(tempfile::Builder::new().prefix("bpfbt-docker-").tempdir()?)
            }
        };
        let path = dir.path().to_path_buf();
        let host = format!("unix://{}", path.join("docker.sock").display());
        let log = fs::File::create(path.join("dockerd.log"))?;
        let mut command = Command::new(DOCKERD);
        if options.empty_config {
            fs::write(path.join("daemon.json"), "{}")?;
            command.arg("--config-file").arg(path.join("daemon.json"));
        }
        command
            .arg("--data-root")
            .arg(path.join("data"))
            .arg("--exec-root")
            .arg(path.join("exec"))
            .arg("--pidfile")
            .arg(path.join("docker.pid"))
            .args(["-H", &host])
            .args(&options.flags)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut dockerd = Dockerd {
            daemon: None,
            dir: Some(dir),
            options,
            host,
        };
        // Only the network namespace: dockerd must see the host's cgroups.
        dockerd.daemon = Some(spawn_in_netns(&mut command, netns).context("spawning dockerd")?);
        let deadline = Instant::now() + Duration::from_secs(60);
        while dockerd
            .docker_within(&["version"], Duration::from_secs(5))
            .is_err()
        {
            check_stop()?;
            if let Some(status) = dockerd.daemon.as_mut().and_then(|d| d.try_wait().ok()?) {
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

    /// dockerd's directory.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), StateDir::path)
    }

    /// A root file system of busybox applets, imported as the image.
    fn import_busybox(&self) -> Result<()> {
        let rootfs = self.dir().join("rootfs");
        fs::create_dir_all(rootfs.join("bin"))?;
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("busybox is missing (apt-get install busybox-static)")?;
        fs::copy(busybox, rootfs.join("bin/busybox"))
            .with_context(|| format!("copying {busybox}"))?;
        for applet in &self.options.applets {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
        }
        for (path, contents) in &self.options.files {
            let path = rootfs.join(path);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(path, contents)?;
        }
        let tarball = self.dir().join("busybox.tar");
        cmd::output(
            Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .arg("-cf")
                .arg(&tarball)
                .arg("."),
        )?;
        self.docker_within(
            &["import", &tarball.to_string_lossy(), &self.options.image],
            Duration::from_secs(60),
        )
        .map(drop)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir().join("dockerd.log")).unwrap_or_default()
    }

    fn client(&self) -> Command {
        let mut client = Command::new(DOCKER);
        client.args(["-H", &self.host]).stdin(Stdio::null());
        client
    }

    /// Runs the docker client against this dockerd, whatever the outcome.
    pub fn docker(&self, args: &[&str]) -> Result<Output> {
        self.client().args(args).output().context("running docker")
    }

    /// Runs the docker client, killed after `timeout`; its stdout, or an error with stderr.
    pub fn docker_within(&self, args: &[&str], timeout: Duration) -> Result<String> {
        cmd::output_timeout(self.client().args(args), timeout)
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

    /// A container's network namespace (its sandbox key).
    pub fn sandbox(&self, name: &str) -> Result<PathBuf> {
        Ok(self
            .inspect(name, "{{.NetworkSettings.SandboxKey}}")?
            .into())
    }

    /// A running container's address on the default bridge and the path of its network
    /// namespace (through its process, which needs no sandbox key).
    pub fn address_and_netns(&self, name: &str) -> Result<(Ipv4Addr, PathBuf)> {
        let out = self.docker_within(
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

    /// `docker run -d --name NAME -p PORT... IMAGE COMMAND...`.
    pub fn run(
        &self,
        name: &str,
        ports: &[String],
        command: &[&str],
        timeout: Duration,
    ) -> Result<()> {
        let mut args = vec!["run", "-d", "--name", name];
        for p in ports {
            args.extend(["-p", p.as_str()]);
        }
        args.push(&self.options.image);
        args.extend(command);
        self.docker_within(&args, timeout).map(drop)
    }

    /// `docker rm -f NAME`.
    pub fn rm(&self, name: &str, timeout: Duration) -> Result<()> {
        self.docker_within(&["rm", "-f", name], timeout).map(drop)
    }

    /// Removes every container, stops dockerd, unmounts what it left mounted and removes
    /// its directory. Running it again does nothing.
    pub fn stop(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        if let Some(daemon) = self.daemon.take() {
            match self.docker_within(&["ps", "-aq"], Duration::from_secs(30)) {
                Ok(ids) => {
                    let ids: Vec<&str> = ids.split_whitespace().collect();
                    if !ids.is_empty() {
                        let mut args = vec!["rm", "-f"];
                        args.extend(ids);
                        if let Err(e) = self.docker_within(&args, Duration::from_secs(120)) {
                            errors.push(format!("{e:#}"));
                        }
                    }
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
            // dockerd stops the containerd it started on SIGTERM.
            stop_child_within(daemon, self.options.stop_grace);
        }
        if let Some(dir) = self.dir.take() {
            // Overlay and namespace mounts a container (or a crash) left behind.
            unmount_below(dir.path());
            let removed = match dir {
                StateDir::Temporary(dir) => dir.close(),
                StateDir::Given(dir) => fs::remove_dir_all(&dir),
            };
            if let Err(e) = removed {
                errors.push(format!("removing dockerd's directory: {e}"));
            }
        }
        ensure!(errors.is_empty(), "stopping dockerd: {}", errors.join("; "));
        Ok(())
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("{e:#}");
        }
    }
}
