//! A `bpfbridge agent` in a node namespace, with a pin directory under bpffs, a cgroup, a
//! state directory and a socket all its own; stopped and cleaned up on drop (on panic too).

use std::{
    fs,
    os::{
        fd::AsRawFd as _,
        unix::{ffi::OsStrExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    cmd,
    mounts::{BPFFS, cgroup2_mount},
    netns::{NETNS_RUN_DIR, Netns, spawn_in_netns, unique},
    process::{Stopped, check_stop, stop_child_within},
    topology::UPLINK,
};

/// How an [`Agent`] is started; every field but the binary has a default.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The `bpfbridge` binary.
    pub bin: PathBuf,
    /// Names the agent's pin directory (under bpffs) and cgroup (under cgroup2).
    pub name: String,
    /// `--uplink`s; none: every interface of the node (the agent's default).
    pub uplinks: Vec<String>,
    /// More `bpfbridge agent` flags (`--dataplane`, `--bip`, ...), kept for restarts.
    pub args: Vec<String>,
    /// Environment variables of the agent process (`RUST_LOG`, say).
    pub env: Vec<(String, String)>,
    /// The prefix of the agent's temporary directory (socket, state, log).
    pub dir_prefix: String,
    /// Whether the agent pins its containers' namespaces in a directory of its own (removed
    /// with it), or in /run/netns where `ip netns` sees them.
    pub private_netns_dir: bool,
    /// How long the agent gets to answer `bpfbridge info`.
    pub ready_timeout: Duration,
    /// How often it is asked meanwhile (the bench times restarts by it).
    pub ready_poll: Duration,
    /// How long a stopped agent gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// Runs the agent (and the CLI calls) in process groups of their own, so that Ctrl-C
    /// reaches only the caller, which then stops things in order.
    pub own_process_group: bool,
}

impl AgentOptions {
    pub fn new(bin: &Path) -> Self {
        AgentOptions {
            bin: bin.to_path_buf(),
            name: unique("agent"),
            uplinks: vec![UPLINK.into()],
            args: Vec::new(),
            env: Vec::new(),
            dir_prefix: "bpfbt-agent-".into(),
            private_netns_dir: true,
            ready_timeout: Duration::from_secs(20),
            ready_poll: Duration::from_millis(100),
            stop_grace: Duration::from_secs(5),
            own_process_group: false,
        }
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    pub fn uplink(mut self, uplink: &str) -> Self {
        self.uplinks = vec![uplink.into()];
        self
    }

    pub fn uplinks<S: AsRef<str>>(mut self, uplinks: impl IntoIterator<Item = S>) -> Self {
        self.uplinks = uplinks
            .into_iter()
            .map(|u| u.as_ref().to_string())
            .collect();
        self
    }

    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn dir_prefix(mut self, prefix: &str) -> Self {
        self.dir_prefix = prefix.into();
        self
    }

    pub fn private_netns_dir(mut self, private: bool) -> Self {
        self.private_netns_dir = private;
        self
    }

    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    pub fn ready_poll(mut self, interval: Duration) -> Self {
        self.ready_poll = interval;
        self
    }

    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    pub fn own_process_group(mut self, own: bool) -> Self {
        self.own_process_group = own;
        self
    }
}

/// A running (or stopped, restartable) agent and everything it owns.
pub struct Agent {
    child: Option<Child>,
    options: AgentOptions,
    /// Socket, state, log and (private) namespace directory.
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub netns_dir: PathBuf,
    pub cgroup: PathBuf,
    node_path: PathBuf,
    /// Whether the pin directory and cgroup are still to be removed.
    owns_leftovers: bool,
}

impl Agent {
    /// Starts an agent in `node` and waits until its API answers.
    pub fn start(node: &Netns, options: AgentOptions) -> Result<Self> {
        let mut agent = Agent::new(node, options)?;
        agent.spawn()?;
        Ok(agent)
    }

    /// Prepares an agent in `node` (its directory and cgroup) without starting it: see
    /// [`Agent::command`] and [`Agent::spawn`].
    pub fn new(node: &Netns, options: AgentOptions) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&options.dir_prefix)
            .tempdir()
            .context("creating the agent's directory")?;
        let cgroup = cgroup2_mount()?.join(&options.name);
        let pin_dir = Path::new(BPFFS).join(&options.name);
        ensure!(
            !pin_dir.exists(),
            "{} already exists (left over from an earlier run?); remove it with `rm -rf {}`",
            pin_dir.display(),
            pin_dir.display()
        );
        fs::create_dir(&cgroup).with_context(|| format!("creating cgroup {}", cgroup.display()))?;
        let netns_dir = match options.private_netns_dir {
            true => dir.path().join("netns"),
            false => PathBuf::from(NETNS_RUN_DIR),
        };
        Ok(Agent {
            child: None,
            socket: dir.path().join("bpfbridge.sock"),
            pin_dir,
            netns_dir,
            cgroup,
            node_path: node.path(),
            dir,
            options,
            owns_leftovers: true,
        })
    }

    /// The command line [`Agent::spawn`] runs, without its log and namespace.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.options.bin);
        command.arg("--socket").arg(&self.socket).arg("agent");
        for uplink in &self.options.uplinks {
            command.args(["--uplink", uplink]);
        }
        command
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--pin-dir")
            .arg(&self.pin_dir);
        if self.options.private_netns_dir {
            command.arg("--netns-dir").arg(&self.netns_dir);
        }
        command
            // Never the root cgroup: the socket programs go to the agent's own.
            .arg("--cgroup")
            .arg(&self.cgroup)
            .args(&self.options.args)
            .envs(self.options.env.iter().map(|(k, v)| (k, v)));
        if self.options.own_process_group {
            command.process_group(0);
        }
        command
    }

    /// Starts the agent process (again) and waits until its API answers.
    pub fn spawn(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = self.command();
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // The agent joins its cgroup before it runs, so that every process it starts (its
        // DNS keeper, which outlives it by design) is there too, for `clean_up` to kill.
        let procs_path = self.cgroup.join("cgroup.procs");
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(&procs_path)
            .with_context(|| format!("opening {}", procs_path.display()))?;
        // SAFETY: write(2) is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // "0" moves the writing process.
                if nix::libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) == 1 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        // The agent must see the host's bpffs and cgroup2.
        let child = spawn_in_netns(&mut command, &self.node_path).context("spawning the agent")?;
        self.child = Some(child);
        let timeout = self.options.ready_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            check_stop()?;
            if self.socket.exists() && cmd::succeeds_timeout(&mut self.info(), READY_CHECK) {
                return Ok(());
            }
            if let Some(status) = self.exited()? {
                bail!("agent exited with {status}: {}", self.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "agent not ready after {} s: {}",
                    timeout.as_secs(),
                    self.log()
                );
            }
            thread::sleep(self.options.ready_poll);
        }
    }

    fn info(&self) -> Command {
        let mut info = self.cli_command();
        info.arg("info");
        info
    }

    /// Replaces the `bpfbridge` binary, for the next [`Agent::spawn`] (an upgrade).
    pub fn set_bin(&mut self, bin: &Path) {
        self.options.bin = bin.to_path_buf();
    }

    /// Replaces the extra `bpfbridge agent` flags, for the next [`Agent::spawn`].
    pub fn set_args<S: AsRef<str>>(&mut self, args: impl IntoIterator<Item = S>) {
        self.options.args = args.into_iter().map(|a| a.as_ref().to_string()).collect();
    }

    /// The extra `bpfbridge agent` flags it runs with.
    pub fn args(&self) -> &[String] {
        &self.options.args
    }

    /// Whether the agent exited (by itself); forgets it if so.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child.try_wait().context("checking on the agent")?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    /// Kills the agent with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the agent with SIGTERM (the dataplane stays in place) and SIGKILL after the
    /// grace period; `None` when it was not running.
    pub fn shut_down(&mut self) -> Option<Stopped> {
        let child = self.child.take()?;
        Some(stop_child_within(child, self.options.stop_grace))
    }

    /// Like [`Agent::shut_down`]: the exit status when the agent ended by itself within the
    /// grace period; `None` when it was killed or was not running.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        match self.shut_down()? {
            Stopped::AlreadyExited(status) | Stopped::Exited(status) => Some(status),
            Stopped::Killed => None,
        }
    }

    /// Stops the agent and removes its pins (which detaches its programs), the namespaces
    /// of its private namespace directory and its cgroup; reports what could not be
    /// removed. Running it again does nothing more.
    pub fn clean_up(&mut self) -> Result<()> {
        self.shut_down();
        if !std::mem::take(&mut self.owns_leftovers) {
            return Ok(());
        }
        let mut errors = Vec::new();
        // What the agent started and left running: its DNS keeper, which would keep the
        // containers' namespaces alive through their sockets.
        if let Err(e) = kill_all(&self.dns_keepers()) {
            errors.push(format!("{e:#}"));
        }
        if let Err(e) = kill_cgroup(&self.cgroup) {
            errors.push(format!("{e:#}"));
        }
        if self.pin_dir.exists()
            && let Err(e) = fs::remove_dir_all(&self.pin_dir)
        {
            errors.push(format!("removing {}: {e}", self.pin_dir.display()));
        }
        if self.options.private_netns_dir
            && let Ok(entries) = fs::read_dir(&self.netns_dir)
        {
            for entry in entries.flatten() {
                let _ = nix::mount::umount2(&entry.path(), nix::mount::MntFlags::MNT_DETACH);
                let _ = fs::remove_file(entry.path());
            }
        }
        if self.cgroup.exists()
            && let Err(e) = fs::remove_dir(&self.cgroup)
        {
            errors.push(format!("removing cgroup {}: {e}", self.cgroup.display()));
        }
        ensure!(errors.is_empty(), "{}", errors.join("; "));
        Ok(())
    }

    /// The DNS keepers this agent started and that still run: `bpfbridge dns-keeper`
    /// processes listening in its state directory (detached from the agent, they are
    /// found by their command line).
    pub fn dns_keepers(&self) -> Vec<i32> {
        let state_dir = self.state_dir();
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
                let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
                let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                let keeper = args.iter().any(|a| *a == b"dns-keeper");
                let ours = args
                    .iter()
                    .any(|a| Path::new(std::ffi::OsStr::from_bytes(a)).starts_with(&state_dir));
                (keeper && ours).then_some(pid)
            })
            .collect()
    }

    /// The agent's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The end of the agent's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        match fs::read_to_string(self.log_path()) {
            Ok(log) if !log.trim().is_empty() => {
                let all: Vec<&str> = log.lines().collect();
                let start = all.len().saturating_sub(lines);
                format!("the agent's log ends:\n{}", all[start..].join("\n"))
            }
            Ok(_) => "the agent's log is empty".into(),
            Err(err) => format!("the agent's log could not be read: {err}"),
        }
    }

    /// `bpfbridge --socket SOCKET`, to add arguments to.
    pub fn cli_command(&self) -> Command {
        let mut cli = Command::new(&self.options.bin);
        cli.arg("--socket").arg(&self.socket);
        if self.options.own_process_group {
            cli.process_group(0);
        }
        cli
    }

    /// Runs `bpfbridge --socket SOCKET ARGS` and returns its output whatever the status.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        Ok(self.cli_command().args(args).output()?)
    }

    /// Runs the CLI, killed after `timeout`; its stdout, or an error with its stderr.
    pub fn cli_within(&self, args: &[&str], timeout: Duration) -> Result<String> {
        cmd::output_timeout(self.cli_command().args(args), timeout)
    }

    /// Runs the CLI and parses its JSON output; a failure carries stderr.
    pub fn cli_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let out = self.cli(args)?;
        ensure!(
            out.status.success(),
            "bpfbridge {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Creates a container and returns `(inspect JSON, its network namespace path)`.
    pub fn create_container(&self, args: &[&str]) -> Result<(serde_json::Value, PathBuf)> {
        let mut full = vec!["container", "create"];
        full.extend_from_slice(args);
        let json = self.cli_json(&full)?;
        let netns = json["NetworkSettings"]["SandboxKey"]
            .as_str()
            .context("SandboxKey")?
            .into();
        Ok((json, netns))
    }

    /// The counter named `name` of `bpfbridge stats`, summed over CPUs.
    pub fn counter(&self, name: &str) -> Result<u64> {
        let out = self.cli(&["stats"])?;
        ensure!(
            out.status.success(),
            "stats: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout)?;
        text.lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next()? == name).then(|| f.next()?.parse().ok())?
            })
            .with_context(|| format!("no counter {name} in\n{text}"))
    }
}

/// Kills `pids` and waits until they are gone.
fn kill_all(pids: &[i32]) -> Result<()> {
    for &pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for &pid in pids {
        // Detached, they are reaped by init: gone once /proc no longer shows them running.
        while fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        }) {
            ensure!(Instant::now() < deadline, "process {pid} survived SIGKILL");
            thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// Kills every process in `cgroup` and waits until it is empty.
fn kill_cgroup(cgroup: &Path) -> Result<()> {
    let procs = || -> Result<Vec<i32>> {
        let path = cgroup.join("cgroup.procs");
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = procs()?;
        if left.is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "processes {left:?} in {} survived SIGKILL",
            cgroup.display()
        );
        // cgroup.kill (Linux 5.14) also catches processes forking meanwhile.
        if fs::write(cgroup.join("cgroup.kill"), "1").is_err() {
            for pid in left {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// How long one readiness check (`bpfbridge info`) may take.
const READY_CHECK: Duration = Duration::from_secs(5);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.clean_up();
    }
}
