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

use std::fs;
use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bpfbridge_lab::{
    Agent, AgentOptions, Stopped, Topology, catch_stop_signals, check_stop,
    netns::{Netns, delete_named, netns_name, netns_path},
    spawn_in_netns, stop_child_within, stop_requested,
};
use serde_json::Value;

use bpfbridge_lab::cmd;

const CONTAINER: &str = "web";
const HOST_PORT: u16 = 8080;
const CONTAINER_PORT: u16 = 80;
const PAGE: &str =
    "<!doctype html>\n<title>bpfbridge</title>\n<h1>hello from bpfbridge container web</h1>\n";

/// How long the agent gets to start answering on its socket.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long any one command the demo runs (the bpfbridge CLI, wget) may take.
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
/// How many lines of the agent's log an error shows.
const LOG_TAIL: usize = 30;

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
    /// The names the namespaces get: fixed per run, so that a user can type them.
    node_name: String,
    world_name: String,
    topology: Option<Topology>,
    /// The web server's page and log.
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    agent: Option<Agent>,
    httpd: Option<Child>,
    container_created: bool,
    sandbox_key: Option<PathBuf>,
}

impl Demo {
    fn new(bpfbridge: &Path) -> Result<Self> {
        let pid = std::process::id();
        let dir = tempfile::Builder::new()
            .prefix("bpfbridge-demo-")
            .tempdir()
            .context("creating a temporary directory")?;
        Ok(Demo {
            bpfbridge: bpfbridge.to_path_buf(),
            node_name: format!("bpfb-demo-node-{pid}"),
            world_name: format!("bpfb-demo-world-{pid}"),
            topology: None,
            dir_path: dir.path().to_path_buf(),
            dir: Some(dir),
            agent: None,
            httpd: None,
            container_created: false,
            sandbox_key: None,
        })
    }

    fn create_network(&mut self) -> Result<()> {
        println!(
            "demo: creating network namespaces {} and {}",
            self.world_name, self.node_name
        );
        // The world's TX offload is on (the default), as on a veth anywhere: its frames carry
        // partial checksums, so the agent's `auto` hook puts the uplink program at TC.
        self.topology = Some(
            Topology::builder()
                .names(&self.node_name, &self.world_name)
                .build()?,
        );
        Ok(())
    }

    fn topology(&self) -> Result<&Topology> {
        self.topology.as_ref().context("no network yet")
    }

    fn start_agent(&mut self) -> Result<()> {
        let options = AgentOptions::new(&self.bpfbridge)
            .name(&format!("bpfb-demo-{}", std::process::id()))
            .args(["--dataplane", "ebpf"])
            .dir_prefix("bpfbridge-demo-agent-")
            // Container namespaces in /run/netns, where `ip netns exec` finds them.
            .private_netns_dir(false)
            .ready_timeout(AGENT_START_TIMEOUT)
            .stop_grace(STOP_GRACE)
            // Ctrl-C reaches only xtask, which then stops things in order.
            .own_process_group(true);
        let mut agent = Agent::new(&self.topology()?.node, options)?;
        println!(
            "demo: starting the agent in {}: {}",
            self.node_name,
            cmd::display(&agent.command())
        );
        let started = agent.spawn();
        self.agent = Some(agent);
        started?;
        println!(
            "demo: the agent answers on {}",
            self.agent()?.socket.display()
        );
        Ok(())
    }

    fn agent(&self) -> Result<&Agent> {
        self.agent.as_ref().context("the agent is not running")
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
        let log = fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut httpd = Command::new("busybox");
        httpd
            .args(["httpd", "-f", "-p", &CONTAINER_PORT.to_string(), "-h"])
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
        self.httpd = Some(spawn_in_netns(&mut httpd, &key)?);
        Ok(())
    }

    /// Fetches the page through the published port from the world namespace, retrying while the
    /// web server starts.
    fn fetch_page(&mut self) -> Result<String> {
        let url = format!("http://{}:{HOST_PORT}/", self.topology()?.uplink.node_ip);
        println!("demo: fetching {url} from {}", self.world_name);
        let mut last_error = None;
        for attempt in 1..=FETCH_ATTEMPTS {
            check_stop()?;
            // No `wget -T`: Debian 12's busybox-static wget crashes (SIGSEGV) with it, so the
            // timeout is ours.
            let mut wget = Command::new("ip");
            wget.args(["netns", "exec", &self.world_name])
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
            self.world_name,
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
        let uplink = &self.topology()?.uplink;
        let (node_ip, world_ip) = (uplink.node_ip, uplink.world_ip);
        let agent = self.agent()?;
        println!();
        println!("== what happened ==");
        println!(
            "world client : {world_ip} on {} in netns {}",
            uplink.world_link, self.world_name
        );
        println!(
            "node         : {node_ip} on {} in netns {} (the agent's uplink)",
            uplink.node_link, self.node_name
        );
        println!(
            "container    : {CONTAINER} at {} (gateway {}, MAC {}) in {key}",
            field("IPAddress"),
            field("Gateway"),
            field("MacAddress")
        );
        println!(
            "published    : {node_ip}:{HOST_PORT}/tcp -> {}:{CONTAINER_PORT}/tcp",
            field("IPAddress")
        );
        println!();
        println!(
            "== GET http://{node_ip}:{HOST_PORT}/ from {} ==",
            self.world_name
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
            "ip netns exec {} busybox wget -q -O - http://{node_ip}:{HOST_PORT}/",
            self.world_name
        );
        println!(
            "{} --socket {} stats",
            self.bpfbridge.display(),
            agent.socket.display()
        );
        println!(
            "agent log: {} (removed on exit)",
            agent.log_path().display()
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
            if let Some(agent) = self.agent.as_mut()
                && let Some(status) = agent.exited()?
            {
                bail!(
                    "the agent exited unexpectedly ({status}); {}",
                    agent.log_tail(LOG_TAIL)
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
            report_stop("httpd", stop_child_within(httpd, STOP_GRACE));
        }
        if std::mem::take(&mut self.container_created) {
            note(self.remove_container());
        }
        if let Some(mut agent) = self.agent.take() {
            if let Some(stopped) = agent.shut_down() {
                report_stop("agent", stopped);
            }
            let pin_dir = agent.pin_dir.clone();
            note(agent.clean_up());
            if !pin_dir.exists() {
                println!("demo cleanup: removed {}", pin_dir.display());
            }
        }
        if let Some(Topology { node, world, .. }) = self.topology.take() {
            for netns in [node, world] {
                note(delete_netns(netns));
            }
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
                    Some(name) => match delete_named(&name) {
                        Ok(()) => Err(err),
                        Err(del) => Err(anyhow!("{err:#}\nthen {del:#}")),
                    },
                    None => Err(err),
                }
            }
        }
    }

    /// Runs `bpfbridge --socket SOCK ARGS...` and returns its stdout.
    fn bpfbridge(&self, args: &[&str]) -> Result<String> {
        let agent = self.agent()?;
        agent
            .cli_within(args, COMMAND_TIMEOUT)
            .with_context(|| agent.log_tail(LOG_TAIL))
    }

    /// The end of the agent's log, for error messages (the log itself goes with the sandbox).
    fn log_tail(&self) -> String {
        self.agent
            .as_ref()
            .map(|agent| agent.log_tail(LOG_TAIL))
            .unwrap_or_default()
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

/// Deletes a namespace the demo made and says so.
fn delete_netns(netns: Netns) -> Result<()> {
    let name = netns.name.clone();
    netns.delete()?;
    println!("demo cleanup: deleted network namespace {name}");
    Ok(())
}

fn report_stop(name: &str, stopped: Stopped) {
    match stopped {
        Stopped::AlreadyExited(status) => {
            println!("demo cleanup: {name} had already exited ({status})")
        }
        Stopped::Exited(status) => println!("demo cleanup: stopped {name} ({status})"),
        Stopped::Killed => println!(
            "demo cleanup: {name} ignored SIGTERM for {} s and was killed",
            STOP_GRACE.as_secs()
        ),
    }
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
}
