//! `cargo xtask run` with no arguments: the development demo.
//!
//! Builds a throwaway sandbox out of two network namespaces joined by a veth pair:
//!
//! ```text
//!   netns bpfb-demo-world-PID              netns bpfb-demo-node-PID
//!   wl0 198.51.100.2/24  <---- veth ---->  up0 198.51.100.1/24 (the agent's uplink, XDP)
//!   (client: busybox wget)                 bpfbridge agent -> bridge -> container "web"
//!                                                                    (busybox httpd :80)
//! ```
//!
//! then runs the agent in the node namespace, creates a container publishing 8080:80, serves a
//! page from it and fetches it from the world namespace through the published port. Everything
//! is torn down on exit, on error and on panic by [`Demo`]'s `Drop`. Nothing here touches the
//! root network namespace.

use std::ffi::c_int;
use std::fs::{self, File};
use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::cmd;

const NODE_IF: &str = "up0";
const WORLD_IF: &str = "wl0";
const NODE_ADDR: &str = "198.51.100.1";
const WORLD_ADDR: &str = "198.51.100.2";
const PREFIX_LEN: u8 = 24;
const CONTAINER: &str = "web";
const HOST_PORT: u16 = 8080;
const CONTAINER_PORT: u16 = 80;
const PAGE: &str =
    "<!doctype html>\n<title>bpfbridge</title>\n<h1>hello from bpfbridge container web</h1>\n";

/// How long the agent gets to start answering on its socket.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long any one command the demo runs (ip, ethtool, the bpfbridge CLI, wget) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
const FETCH_ATTEMPTS: u32 = 10;
const FETCH_PAUSE: Duration = Duration::from_millis(300);
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(200);
/// Stop by itself after this many seconds (for unattended smoke runs).
const SECONDS_ENV: &str = "BPFBRIDGE_DEMO_SECONDS";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to [`STOP`] so that the demo can clean up instead of dying.
fn catch_stop_signals() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { signal::sigaction(sig, &action) }
            .with_context(|| format!("installing a handler for {sig}"))?;
    }
    Ok(())
}

fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

fn check_stop() -> Result<()> {
    if stop_requested() {
        bail!("interrupted");
    }
    Ok(())
}

/// Runs the demo with the bpfbridge binary at `bpfbridge`.
pub fn run(bpfbridge: &Path) -> Result<()> {
    if !bpfbridge.is_file() {
        bail!(
            "{} does not exist; the build should have made it",
            bpfbridge.display()
        );
    }
    let seconds = stop_after_seconds()?;
    catch_stop_signals()?;

    let mut demo = Demo::new(bpfbridge)?;
    demo.create_network()?;
    check_stop()?;
    demo.start_agent()?;
    check_stop()?;
    let container = demo.create_container()?;
    check_stop()?;
    demo.start_httpd()?;
    let page = demo.fetch_page()?;
    demo.report(&container, &page)?;
    demo.wait_for_stop(seconds)?;
    demo.finish()
}

fn stop_after_seconds() -> Result<Option<u64>> {
    match std::env::var(SECONDS_ENV) {
        Ok(text) => {
            let seconds = text.trim().parse().with_context(|| {
                format!("{SECONDS_ENV}={text:?} is not a whole number of seconds")
            })?;
            Ok(Some(seconds))
        }
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(err) => Err(err).context(SECONDS_ENV),
    }
}

/// The demo's sandbox. Remembers everything it made so that [`Demo::cleanup`] (also run on drop)
/// can undo it.
struct Demo {
    bpfbridge: PathBuf,
    world: String,
    node: String,
    world_created: bool,
    node_created: bool,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    socket: PathBuf,
    pin_dir: PathBuf,
    pin_dir_ours: bool,
    /// A cgroup of the demo's own for the agent's socket programs (never the root one).
    cgroup: PathBuf,
    cgroup_ours: bool,
    agent: Option<Child>,
    httpd: Option<Child>,
    container_created: bool,
    sandbox_key: Option<PathBuf>,
}

impl Demo {
    fn new(bpfbridge: &Path) -> Result<Self> {
        let pid = std::process::id();
        let world = format!("bpfb-demo-world-{pid}");
        let node = format!("bpfb-demo-node-{pid}");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/bpfb-demo-{pid}"));
        let cgroup = crate::setup::cgroup2_mount()?.join(format!("bpfb-demo-{pid}"));
        for netns in [&world, &node] {
            if netns_path(netns).exists() {
                bail!(
                    "network namespace {netns} already exists (left over from an earlier run?); \
                     remove it with `ip netns del {netns}`"
                );
            }
        }
        if pin_dir.exists() {
            bail!(
                "{} already exists (left over from an earlier run?); remove it with `rm -rf {}`",
                pin_dir.display(),
                pin_dir.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("bpfbridge-demo-")
            .tempdir()
            .context("creating a temporary directory")?;
        let dir_path = dir.path().to_path_buf();
        Ok(Demo {
            bpfbridge: bpfbridge.to_path_buf(),
            world,
            node,
            world_created: false,
            node_created: false,
            socket: dir_path.join("bpfbridge.sock"),
            dir: Some(dir),
            dir_path,
            pin_dir,
            pin_dir_ours: false,
            cgroup,
            cgroup_ours: false,
            agent: None,
            httpd: None,
            container_created: false,
            sandbox_key: None,
        })
    }

    fn create_network(&mut self) -> Result<()> {
        println!(
            "demo: creating network namespaces {} and {}",
            self.world, self.node
        );
        run_quiet(Command::new("ip").args(["netns", "add", &self.world]))?;
        self.world_created = true;
        run_quiet(Command::new("ip").args(["netns", "add", &self.node]))?;
        self.node_created = true;

        let (world, node) = (self.world.as_str(), self.node.as_str());
        ip(
            node,
            &[
                "link", "add", NODE_IF, "type", "veth", "peer", "name", WORLD_IF,
            ],
        )?;
        ip(node, &["link", "set", WORLD_IF, "netns", world])?;
        ip(
            node,
            &[
                "addr",
                "add",
                &format!("{NODE_ADDR}/{PREFIX_LEN}"),
                "dev",
                NODE_IF,
            ],
        )?;
        ip(
            world,
            &[
                "addr",
                "add",
                &format!("{WORLD_ADDR}/{PREFIX_LEN}"),
                "dev",
                WORLD_IF,
            ],
        )?;
        for (netns, dev) in [
            (node, "lo"),
            (node, NODE_IF),
            (world, "lo"),
            (world, WORLD_IF),
        ] {
            ip(netns, &["link", "set", dev, "up"])?;
        }
        ip(world, &["route", "add", "default", "via", NODE_ADDR])?;
        // veth leaves TCP checksums partial (CHECKSUM_PARTIAL) when TX offload is on; the XDP
        // program updates checksums incrementally and needs full ones, as a real NIC delivers.
        run_quiet(Command::new("ip").args([
            "netns", "exec", world, "ethtool", "-K", WORLD_IF, "tx", "off",
        ]))?;
        Ok(())
    }

    fn start_agent(&mut self) -> Result<()> {
        let state_dir = self.dir_path.join("state");
        fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let log_path = self.agent_log();
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut agent = Command::new("nsenter");
        // Only the network namespace: the agent must see the host's bpffs and cgroup2 mounts,
        // which `ip netns exec` would replace.
        agent
            .arg(format!("--net={}", netns_path(&self.node).display()))
            .arg(&self.bpfbridge)
            .args(["agent", "--uplink", NODE_IF, "--state-dir"])
            .arg(&state_dir)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--socket")
            .arg(&self.socket)
            .args(["--dataplane", "ebpf"])
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .context("duplicating the agent log's handle")?,
            )
            .stderr(log)
            // Its own process group: Ctrl-C reaches only xtask, which then stops things in order.
            .process_group(0);
        fs::create_dir(&self.cgroup)
            .with_context(|| format!("creating cgroup {}", self.cgroup.display()))?;
        self.cgroup_ours = true;
        println!("demo: starting the agent: {}", cmd::display(&agent));
        self.pin_dir_ours = true;
        self.agent = Some(cmd::spawn(&mut agent)?);

        let deadline = Instant::now() + AGENT_START_TIMEOUT;
        loop {
            check_stop()?;
            if let Some(status) = self.agent_exited()? {
                bail!(
                    "the agent exited while starting ({status}); {}",
                    self.log_tail()
                );
            }
            if self.socket.exists() {
                let mut info = self.cli();
                info.arg("info").process_group(0);
                if cmd::succeeds_timeout(&mut info, Duration::from_secs(5)) {
                    println!("demo: the agent answers on {}", self.socket.display());
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "the agent did not answer `bpfbridge info` within {} s; {}",
                    AGENT_START_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            thread::sleep(POLL);
        }
    }

    fn create_container(&mut self) -> Result<Value> {
        let publish = format!("{HOST_PORT}:{CONTAINER_PORT}");
        let out = self
            .bpfbridge(&["container", "create", "--name", CONTAINER, "-p", &publish])
            .with_context(|| self.log_tail())?;
        self.container_created = true;
        let container: Value = serde_json::from_str(out.trim())
            .with_context(|| format!("`bpfbridge container create` did not print JSON:\n{out}"))?;
        let key = find_string(&container, "SandboxKey").with_context(|| {
            format!("no SandboxKey in the output of `bpfbridge container create`:\n{out}")
        })?;
        self.sandbox_key = Some(PathBuf::from(key));
        println!("demo: created container {CONTAINER} (network namespace {key})");
        Ok(container)
    }

    fn start_httpd(&mut self) -> Result<()> {
        let key = self.sandbox_key.clone().context("no container yet")?;
        let www = self.dir_path.join("www");
        fs::create_dir_all(&www).with_context(|| format!("creating {}", www.display()))?;
        fs::write(www.join("index.html"), PAGE).context("writing index.html")?;
        let log_path = self.dir_path.join("httpd.log");
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut httpd = Command::new("nsenter");
        httpd
            .arg(format!("--net={}", key.display()))
            .args([
                "busybox",
                "httpd",
                "-f",
                "-p",
                &CONTAINER_PORT.to_string(),
                "-h",
            ])
            .arg(&www)
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .context("duplicating the httpd log's handle")?,
            )
            .stderr(log)
            .process_group(0);
        println!(
            "demo: starting a web server in the container: {}",
            cmd::display(&httpd)
        );
        self.httpd = Some(cmd::spawn(&mut httpd)?);
        Ok(())
    }

    /// Fetches the page through the published port from the world namespace, retrying while the
    /// web server starts.
    fn fetch_page(&mut self) -> Result<String> {
        let url = format!("http://{NODE_ADDR}:{HOST_PORT}/");
        println!("demo: fetching {url} from {}", self.world);
        let mut last_error = None;
        for attempt in 1..=FETCH_ATTEMPTS {
            check_stop()?;
            // No `wget -T`: Debian 12's busybox-static wget crashes (SIGSEGV) with it, so the
            // timeout is ours.
            let mut wget = Command::new("ip");
            wget.args(["netns", "exec", &self.world])
                .args(["busybox", "wget", "-q", "-O", "-", &url])
                .process_group(0);
            match cmd::output_timeout(&mut wget, FETCH_TIMEOUT) {
                Ok(page) => return Ok(page),
                Err(err) => last_error = Some(err),
            }
            if let Some(httpd) = self.httpd.as_mut() {
                if let Some(status) = httpd.try_wait().context("checking on httpd")? {
                    self.httpd = None;
                    let log =
                        fs::read_to_string(self.dir_path.join("httpd.log")).unwrap_or_default();
                    bail!("the container's web server exited ({status}):\n{log}");
                }
            }
            if attempt < FETCH_ATTEMPTS {
                thread::sleep(FETCH_PAUSE);
            }
        }
        let last_error = last_error.map(|e| format!("{e:#}")).unwrap_or_default();
        bail!(
            "could not fetch {url} from {} after {FETCH_ATTEMPTS} attempts; the last error: \
             {last_error}\n{}",
            self.world,
            self.log_tail()
        );
    }

    fn report(&self, container: &Value, page: &str) -> Result<()> {
        let field = |name| find_string(container, name).unwrap_or("?");
        let key = self
            .sandbox_key
            .as_deref()
            .map(|k| k.display().to_string())
            .unwrap_or_default();
        println!();
        println!("== what happened ==");
        println!(
            "world client : {WORLD_ADDR} on {WORLD_IF} in netns {}",
            self.world
        );
        println!(
            "node         : {NODE_ADDR} on {NODE_IF} in netns {} (the agent's uplink)",
            self.node
        );
        println!(
            "container    : {CONTAINER} at {} (gateway {}, MAC {}) in {key}",
            field("IPAddress"),
            field("Gateway"),
            field("MacAddress")
        );
        println!(
            "published    : {NODE_ADDR}:{HOST_PORT}/tcp -> {}:{CONTAINER_PORT}/tcp",
            field("IPAddress")
        );
        println!();
        println!(
            "== GET http://{NODE_ADDR}:{HOST_PORT}/ from {} ==",
            self.world
        );
        println!("{}", page.trim_end());
        for args in [
            &["container", "inspect", CONTAINER][..],
            &["ports"][..],
            &["stats"][..],
        ] {
            println!();
            println!("== bpfbridge {} ==", args.join(" "));
            println!("{}", self.bpfbridge(args)?.trim_end());
        }
        println!();
        println!("== try it yourself ==");
        println!(
            "ip netns exec {} busybox wget -q -O - http://{NODE_ADDR}:{HOST_PORT}/",
            self.world
        );
        println!(
            "{} --socket {} stats",
            self.bpfbridge.display(),
            self.socket.display()
        );
        println!(
            "agent log: {} (removed on exit)",
            self.agent_log().display()
        );
        println!();
        Ok(())
    }

    fn wait_for_stop(&mut self, seconds: Option<u64>) -> Result<()> {
        println!("bpfbridge demo running; press Ctrl-C to stop and clean up");
        let deadline = seconds.map(|s| {
            println!("(stopping by itself after {s} s, as {SECONDS_ENV} asks)");
            Instant::now() + Duration::from_secs(s)
        });
        if deadline.is_none() && !std::io::stdin().is_terminal() {
            println!(
                "(stdin is not a terminal: stop with SIGINT or SIGTERM, or set {SECONDS_ENV}=N)"
            );
        }
        loop {
            if stop_requested() {
                println!();
                println!("demo: stopping");
                return Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                println!("demo: {SECONDS_ENV} elapsed, stopping");
                return Ok(());
            }
            if let Some(status) = self.agent_exited()? {
                bail!(
                    "the agent exited unexpectedly ({status}); {}",
                    self.log_tail()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Cleans up and fails if any of that failed.
    fn finish(mut self) -> Result<()> {
        let errors = self.cleanup();
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("cleanup failed:\n  - {}", errors.join("\n  - "))
        }
    }

    /// Undoes whatever was set up, in order, carrying on past failures; returns every error.
    /// Running it again does nothing.
    fn cleanup(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        let mut note = |result: Result<()>| {
            if let Err(err) = result {
                eprintln!("demo cleanup: error: {err:#}");
                errors.push(format!("{err:#}"));
            }
        };
        if let Some(httpd) = self.httpd.take() {
            note(stop_child("httpd", httpd));
        }
        if std::mem::take(&mut self.container_created) {
            note(self.remove_container());
        }
        if let Some(agent) = self.agent.take() {
            note(stop_child("agent", agent));
        }
        for (created, netns) in [
            (&mut self.node_created, &self.node),
            (&mut self.world_created, &self.world),
        ] {
            if std::mem::take(created) {
                note(delete_netns(netns));
            }
        }
        if std::mem::take(&mut self.pin_dir_ours) && self.pin_dir.exists() {
            note(
                fs::remove_dir_all(&self.pin_dir)
                    .with_context(|| format!("removing {}", self.pin_dir.display())),
            );
            if !self.pin_dir.exists() {
                println!("demo cleanup: removed {}", self.pin_dir.display());
            }
        }
        if std::mem::take(&mut self.cgroup_ours) {
            note(
                fs::remove_dir(&self.cgroup)
                    .with_context(|| format!("removing cgroup {}", self.cgroup.display())),
            );
        }
        if let Some(dir) = self.dir.take() {
            note(
                dir.close()
                    .with_context(|| format!("removing {}", self.dir_path.display())),
            );
        }
        errors
    }

    fn remove_container(&mut self) -> Result<()> {
        match self.bpfbridge(&["container", "rm", CONTAINER]) {
            Ok(_) => {
                println!("demo cleanup: removed container {CONTAINER}");
                Ok(())
            }
            Err(err) => {
                // Without the agent's help the container's namespace would outlive the demo.
                let orphan = self.sandbox_key.as_deref().and_then(netns_name);
                match orphan.filter(|name| netns_path(name).exists()) {
                    Some(name) => match delete_netns(&name) {
                        Ok(()) => Err(err),
                        Err(del) => Err(anyhow!("{err:#}\nthen {del:#}")),
                    },
                    None => Err(err),
                }
            }
        }
    }

    /// Has the agent exited? Forgets it if so.
    fn agent_exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        let Some(agent) = self.agent.as_mut() else {
            return Ok(None);
        };
        let status = agent.try_wait().context("checking on the agent")?;
        if status.is_some() {
            self.agent = None;
        }
        Ok(status)
    }

    fn cli(&self) -> Command {
        let mut cli = Command::new(&self.bpfbridge);
        cli.arg("--socket").arg(&self.socket);
        cli
    }

    /// Runs `bpfbridge --socket SOCK ARGS...` and returns its stdout.
    fn bpfbridge(&self, args: &[&str]) -> Result<String> {
        run_quiet(self.cli().args(args))
    }

    fn agent_log(&self) -> PathBuf {
        self.dir_path.join("agent.log")
    }

    /// The end of the agent's log, for error messages (the log itself goes with the sandbox).
    fn log_tail(&self) -> String {
        const LINES: usize = 30;
        match fs::read_to_string(self.agent_log()) {
            Ok(log) if !log.trim().is_empty() => {
                let lines: Vec<&str> = log.lines().collect();
                let start = lines.len().saturating_sub(LINES);
                format!("the agent's log ends:\n{}", lines[start..].join("\n"))
            }
            Ok(_) => "the agent's log is empty".into(),
            Err(err) => format!("the agent's log could not be read: {err}"),
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let errors = self.cleanup();
        if !errors.is_empty() {
            eprintln!("demo cleanup finished with {} error(s)", errors.len());
        }
    }
}

/// Runs a command of the demo's, bounded in time and outside the terminal's process group (so
/// that Ctrl-C reaches xtask alone); returns its stdout.
fn run_quiet(command: &mut Command) -> Result<String> {
    cmd::output_timeout(command.process_group(0), COMMAND_TIMEOUT)
}

/// `ip -n NETNS ARGS...`
fn ip(netns: &str, args: &[&str]) -> Result<()> {
    run_quiet(Command::new("ip").args(["-n", netns]).args(args)).map(drop)
}

fn delete_netns(netns: &str) -> Result<()> {
    run_quiet(Command::new("ip").args(["netns", "del", netns]))?;
    println!("demo cleanup: deleted network namespace {netns}");
    Ok(())
}

fn netns_path(netns: &str) -> PathBuf {
    Path::new("/run/netns").join(netns)
}

/// The `ip netns` name of a namespace mounted in /run/netns.
fn netns_name(path: &Path) -> Option<String> {
    if path.parent() != Some(Path::new("/run/netns")) {
        return None;
    }
    Some(path.file_name()?.to_str()?.to_string())
}

/// SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL.
fn stop_child(name: &str, mut child: Child) -> Result<()> {
    if let Some(status) = child.try_wait()? {
        println!("demo cleanup: {name} had already exited ({status})");
        return Ok(());
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
    signal::kill(pid, Signal::SIGTERM).with_context(|| format!("sending SIGTERM to {name}"))?;
    if let Some(status) = cmd::wait_until(&mut child, Instant::now() + STOP_GRACE)? {
        println!("demo cleanup: stopped {name} ({status})");
        return Ok(());
    }
    child.kill().with_context(|| format!("killing {name}"))?;
    child
        .wait()
        .with_context(|| format!("waiting for {name}"))?;
    println!(
        "demo cleanup: {name} ignored SIGTERM for {} s and was killed",
        STOP_GRACE.as_secs()
    );
    Ok(())
}

/// The first non-empty string under `key` anywhere in `value` (containers are printed in
/// Docker's shape, where e.g. IPAddress may sit under NetworkSettings and again per network).
fn find_string<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    match value {
        Value::Object(map) => {
            if let Some(found) = map
                .get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                return Some(found);
            }
            map.values().find_map(|v| find_string(v, key))
        }
        Value::Array(items) => items.iter().find_map(|v| find_string(v, key)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_fields_at_any_depth_skipping_empty_ones() {
        let container = json!({
            "Name": "web",
            "NetworkSettings": {
                "SandboxKey": "/run/netns/bpfb-web",
                "IPAddress": "",
                "Networks": {"bridge": {"IPAddress": "172.17.0.2", "Gateway": "172.17.0.1"}}
            }
        });
        assert_eq!(
            find_string(&container, "SandboxKey"),
            Some("/run/netns/bpfb-web")
        );
        assert_eq!(find_string(&container, "IPAddress"), Some("172.17.0.2"));
        assert_eq!(find_string(&container, "Gateway"), Some("172.17.0.1"));
        assert_eq!(find_string(&container, "MacAddress"), None);
        let flat = json!({"SandboxKey": "/run/netns/x", "IPAddress": "172.17.0.3"});
        assert_eq!(find_string(&flat, "IPAddress"), Some("172.17.0.3"));
    }

    #[test]
    fn netns_names_only_for_run_netns() {
        assert_eq!(
            netns_name(Path::new("/run/netns/bpfb-web")).as_deref(),
            Some("bpfb-web")
        );
        assert_eq!(netns_name(Path::new("/proc/123/ns/net")), None);
        assert_eq!(netns_name(Path::new("/run/netns")), None);
    }
}
