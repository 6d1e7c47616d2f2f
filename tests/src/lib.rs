//! The hermetic test topology that every integration test builds on:
//!
//! ```text
//!   world netns                 node netns (agent runs here)            container netns
//!   wl0 198.51.100.2/24 <-veth-> up0 198.51.100.1/24   bpfbr0 <- vethXXX <-veth-> eth0
//! ```
//!
//! Every name is unique per test, everything is removed by `Drop` (also when a test
//! panics), and nothing touches the root network namespace.

pub mod docker;
pub mod packet;

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use nix::sched::{CloneFlags, setns};

pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const WORLD_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const UPLINK: &str = "up0";
pub const WORLD_LINK: &str = "wl0";

/// A name no other test (or test run) on this machine uses at the same time.
pub fn unique(role: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "bpfbt-{}-{}-{role}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command; an error carries its command line and stderr.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("spawning {program}"))?;
    ensure!(
        output.status.success(),
        "{program} {}: {}: {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(output)
}

/// A network namespace: one the test made (`ip netns add`, deleted on drop), or one made by
/// someone else and only used here.
pub struct Netns {
    pub name: String,
    /// Where the namespace is pinned, for namespaces outside /run/netns.
    path: Option<PathBuf>,
}

impl Netns {
    pub fn new(role: &str) -> Result<Self> {
        let name = unique(role);
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name, path: None };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A namespace pinned at `path` by someone else (e.g. the agent); not deleted on drop.
    pub fn borrowed(path: PathBuf) -> Self {
        Netns {
            name: String::new(),
            path: Some(path),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| PathBuf::from("/run/netns").join(&self.name))
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let path = self.path();
        let net = format!("--net={}", path.display());
        let mut full = vec![net.as_str(), "ip"];
        full.extend_from_slice(args);
        run("nsenter", &full)
    }

    /// Runs a program inside the namespace (`ip netns exec`: private /sys, fine for tools
    /// that only need the network).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.path(), f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.path.is_none() {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }
}

/// Runs `f` on a thread that entered the network namespace at `path` (and only that).
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                let file =
                    fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// The world and node namespaces joined by the uplink veth.
pub struct Topology {
    pub node: Netns,
    pub world: Netns,
}

impl Topology {
    pub fn new() -> Result<Self> {
        let node = Netns::new("node")?;
        let world = Netns::new("world")?;
        node.ip(&[
            "link",
            "add",
            UPLINK,
            "type",
            "veth",
            "peer",
            "name",
            WORLD_LINK,
            "netns",
            &world.name,
        ])?;
        node.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", UPLINK])?;
        world.ip(&["addr", "add", &format!("{WORLD_IP}/24"), "dev", WORLD_LINK])?;
        node.ip(&["link", "set", UPLINK, "up"])?;
        world.ip(&["link", "set", WORLD_LINK, "up"])?;
        world.ip(&["route", "add", "default", "via", &NODE_IP.to_string()])?;
        // The world side plays a remote host, whose frames arrive with complete checksums
        // (veth would otherwise hand over CHECKSUM_PARTIAL packets).
        world.exec("ethtool", &["-K", WORLD_LINK, "tx", "off"])?;
        Ok(Topology { node, world })
    }
}

/// The dataplane this run's agents use: `BPFBRIDGE_TEST_DATAPLANE`, `ebpf` when unset.
pub fn dataplane() -> String {
    std::env::var("BPFBRIDGE_TEST_DATAPLANE")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "ebpf".into())
}

fn is_ebpf() -> bool {
    dataplane() == "ebpf"
}

/// Says on stderr, past the test harness's capture so that it shows in every run, that
/// the current test leaves something out on this run's dataplane.
fn say_left_out(what: &str) {
    let test = thread::current().name().unwrap_or("?").to_string();
    let _ = writeln!(
        std::io::stderr(),
        "{test}: {what} (not on the {} dataplane)",
        dataplane()
    );
}

/// For a test of something only the eBPF dataplane has: on another dataplane, says why the
/// test does not apply and returns true, and the test returns.
pub fn skip_unless_ebpf(reason: &str) -> bool {
    if is_ebpf() {
        return false;
    }
    say_left_out(&format!("skipped: {reason}"));
    true
}

/// Guards the checks of a test that concern only the eBPF dataplane (`what`: its counters,
/// its flow table, ...): true on the eBPF dataplane; on another one, says what is not
/// checked and returns false. The test's checks of behaviour run on every dataplane.
pub fn ebpf_checks(what: &str) -> bool {
    if is_ebpf() {
        return true;
    }
    say_left_out(&format!("not checked: {what}"));
    false
}

/// The `bpfbridge` binary the tests drive (built by `cargo xtask test` before the tests).
pub fn bpfbridge_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("BPFBRIDGE_BIN") {
        return path.into();
    }
    // target/debug/deps/<test> → target/debug/bpfbridge
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("bpfbridge");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// Spawns `command` in the network namespace `netns` and no other, as `nsenter --net` does
/// (`ip netns exec` would also give it a private /sys without the host's bpffs and cgroups).
pub fn spawn_in_netns(command: &mut Command, netns: &Path) -> Result<Child> {
    let netns = fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    // SAFETY: setns is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            setns(&netns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    Ok(command.spawn()?)
}

/// The cgroup2 mount point, found in /proc/self/mounts.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .next()
        .context("no cgroup2 mount")
}

/// A bpfbridge agent running in the node namespace with private socket, state, pin
/// directory, namespace directory and cgroup; stopped and cleaned up on drop.
pub struct Agent {
    child: Option<Child>,
    /// Extra `bpfbridge agent` flags, kept for restarts.
    args: Vec<String>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub netns_dir: PathBuf,
    pub cgroup: PathBuf,
    node_path: PathBuf,
}

impl Agent {
    pub fn start(topology: &Topology) -> Result<Self> {
        Self::start_with(topology, &[])
    }

    /// Starts an agent with extra `bpfbridge agent` flags.
    pub fn start_with(topology: &Topology, args: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("bpfbt-agent-").tempdir()?;
        let name = unique("agent");
        let cgroup = cgroup2_mount()?.join(&name);
        fs::create_dir(&cgroup).with_context(|| format!("creating cgroup {}", cgroup.display()))?;
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        // BPFBRIDGE_TEST_DATAPLANE=iptables runs the suite against the iptables dataplane,
        // without the userland proxy: the eBPF dataplane has none and does what Docker does
        // with --userland-proxy=false, so that is where the same expectations hold.
        if !args.iter().any(|a| a.starts_with("--dataplane")) && !is_ebpf() {
            args.extend(["--dataplane".to_string(), dataplane()]);
            if !args.iter().any(|a| a.starts_with("--userland-proxy")) {
                args.push("--userland-proxy=false".into());
            }
        }
        let mut agent = Agent {
            child: None,
            args,
            socket: dir.path().join("bpfbridge.sock"),
            pin_dir: PathBuf::from("/sys/fs/bpf").join(&name),
            netns_dir: dir.path().join("netns"),
            cgroup,
            node_path: topology.node.path(),
            dir,
        };
        agent.spawn()?;
        Ok(agent)
    }

    /// Starts the agent process (again) and waits until its API answers.
    pub fn spawn(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))?;
        let mut command = Command::new(bpfbridge_bin());
        command
            .arg("--socket")
            .arg(&self.socket)
            .args(["agent", "--uplink", UPLINK, "--state-dir"])
            .arg(self.dir.path().join("state"))
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--netns-dir")
            .arg(&self.netns_dir)
            // Never the root cgroup: the socket programs go to this test's own.
            .arg("--cgroup")
            .arg(&self.cgroup)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // The agent must see the host's bpffs and cgroup2.
        let child = spawn_in_netns(&mut command, &self.node_path).context("spawning the agent")?;
        fs::write(self.cgroup.join("cgroup.procs"), child.id().to_string())?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self
                .cli(&["info"])
                .map(|o| o.status.success())
                .unwrap_or(false)
            {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("agent exited with {status}: {}", self.log());
            }
            if Instant::now() > deadline {
                bail!("agent not ready after 20 s: {}", self.log());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the agent process and returns at once, without waiting for it to be ready
    /// (for tests that expect it to fail).
    pub fn spawn_expecting_failure(&mut self) -> Result<String> {
        match self.spawn() {
            Ok(()) => bail!("the agent started"),
            Err(e) => Ok(e.to_string()),
        }
    }

    /// Kills the agent with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The agent's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Stops the agent with SIGTERM (the dataplane stays in place). Returns its exit
    /// status when it ended by itself within 5 s; `None` when it was killed or was not
    /// running.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                _ => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Runs `bpfbridge --socket SOCKET ARGS` and returns its output whatever the status.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(bpfbridge_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()?)
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

    /// The counter named `name`, summed over CPUs.
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

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.stop();
        // Pinned links and maps: removing the pins detaches the programs.
        let _ = fs::remove_dir_all(&self.pin_dir);
        if let Ok(entries) = fs::read_dir(&self.netns_dir) {
            for entry in entries.flatten() {
                let _ = nix::mount::umount2(&entry.path(), nix::mount::MntFlags::MNT_DETACH);
                let _ = fs::remove_file(entry.path());
            }
        }
        let _ = fs::remove_dir(&self.cgroup);
    }
}

/// A TCP server in a namespace that answers one connection: it reads one line and replies
/// `pong <line>`; the handle returns the peer address it saw.
pub fn serve_once(netns: &Path, port: u16) -> thread::JoinHandle<Result<SocketAddr>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let netns = netns.to_path_buf();
    let handle = thread::spawn(move || -> Result<SocketAddr> {
        let file = fs::File::open(&netns)?;
        setns(&file, CloneFlags::CLONE_NEWNET)?;
        let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
        listener.set_nonblocking(true)?;
        let _ = ready_tx.send(());
        let deadline = Instant::now() + Duration::from_secs(15);
        let (mut stream, peer) = loop {
            match listener.accept() {
                Ok(conn) => break conn,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    thread::sleep(Duration::from_millis(10))
                }
                Err(e) => return Err(e).context("accept"),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf)?;
        stream.write_all(b"pong ")?;
        stream.write_all(&buf[..n])?;
        Ok(peer)
    });
    let _ = ready_rx.recv_timeout(Duration::from_secs(5));
    handle
}

/// Connects from a namespace, sends `message` and returns the whole answer.
pub fn request(netns: &Path, to: SocketAddrV4, message: &str) -> std::io::Result<String> {
    in_netns(netns, || {
        let mut stream = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(message.as_bytes())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    })
}

/// Names of the links in a namespace.
pub fn links(netns: &Netns) -> Result<Vec<String>> {
    let out = netns.ip(&["-o", "link", "show"])?;
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|l| {
            l.split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap_or(n).to_string())
        })
        .collect())
}

/// Asks the container DNS server at 127.0.0.11:53, from inside `netns`, for `name`'s A
/// records. `Ok(None)`: the server answered without an address (NXDOMAIN, SERVFAIL, none);
/// `Err`: nothing answered within `wait`.
pub fn dns_lookup(netns: &Path, name: &str, wait: Duration) -> Result<Option<Vec<Ipv4Addr>>> {
    use hickory_proto::{
        op::{Message, Query, ResponseCode},
        rr::{Name, RData, RecordType},
    };
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    let mut fqdn = Name::from_ascii(name)?;
    fqdn.set_fqdn(true);
    query.add_query(Query::query(fqdn, RecordType::A));
    let bytes = query.to_vec()?;
    let answer = in_netns(netns, || -> std::io::Result<Vec<u8>> {
        let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        socket.connect((Ipv4Addr::new(127, 0, 0, 11), 53))?;
        socket.set_read_timeout(Some(wait))?;
        socket.send(&bytes)?;
        let mut buf = vec![0; 4096];
        let len = socket.recv(&mut buf)?;
        buf.truncate(len);
        Ok(buf)
    })?;
    let response = Message::from_vec(&answer)?;
    ensure!(
        response.metadata.id == query.metadata.id,
        "answer to another query"
    );
    let ips: Vec<Ipv4Addr> = response
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    Ok(
        (response.metadata.response_code == ResponseCode::NoError && !ips.is_empty())
            .then_some(ips),
    )
}

/// A stand-in for the node's upstream resolver, in the world namespace: answers every query
/// with NXDOMAIN, for a bounded time.
pub struct FakeUpstream {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeUpstream {
    pub fn start(world: &Netns, port: u16) -> Result<Self> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let socket = world.run(|| std::net::UdpSocket::bind((WORLD_IP, port)))?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut buf = vec![0; 4096];
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(query) = hickory_proto::op::Message::from_vec(&buf[..len]) else {
                    continue;
                };
                let mut answer = query.clone();
                answer.metadata.message_type = hickory_proto::op::MessageType::Response;
                answer.metadata.recursion_available = true;
                answer.metadata.response_code = hickory_proto::op::ResponseCode::NXDomain;
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, from);
                }
            }
        });
        Ok(FakeUpstream {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A UDP server in a namespace that answers one datagram with `pong <datagram>`; the handle
/// returns the peer address it saw.
pub fn udp_serve_once(netns: &Path, port: u16) -> thread::JoinHandle<Result<SocketAddr>> {
    let netns = netns.to_path_buf();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = thread::spawn(move || -> Result<SocketAddr> {
        let file = fs::File::open(&netns)?;
        setns(&file, CloneFlags::CLONE_NEWNET)?;
        let socket = std::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
        socket.set_read_timeout(Some(Duration::from_secs(10)))?;
        let _ = ready_tx.send(());
        let mut buf = [0u8; 512];
        let (n, peer) = socket.recv_from(&mut buf).context("no datagram arrived")?;
        let mut answer = b"pong ".to_vec();
        answer.extend_from_slice(&buf[..n]);
        socket.send_to(&answer, peer)?;
        Ok(peer)
    });
    let _ = ready_rx.recv_timeout(Duration::from_secs(5));
    handle
}

/// Sends one datagram from a namespace; returns the answer and the address it came from.
pub fn udp_request(
    netns: &Path,
    to: SocketAddrV4,
    message: &str,
) -> std::io::Result<(String, SocketAddr)> {
    in_netns(netns, || {
        let socket = std::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
        socket.set_read_timeout(Some(Duration::from_secs(3)))?;
        socket.send_to(message.as_bytes(), to)?;
        let mut buf = [0u8; 512];
        let (n, from) = socket.recv_from(&mut buf)?;
        Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
    })
}

/// Like [`request`], from a given source address of the namespace.
pub fn request_from(
    netns: &Path,
    from: Ipv4Addr,
    to: SocketAddrV4,
    message: &str,
) -> std::io::Result<String> {
    in_netns(netns, || {
        let socket = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::empty(),
            None,
        )?;
        nix::sys::socket::bind(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            &nix::sys::socket::SockaddrIn::from(SocketAddrV4::new(from, 0)),
        )?;
        let mut stream = TcpStream::from(socket);
        // Connect with a deadline: a filtered SYN is dropped, not refused.
        stream.set_nonblocking(true)?;
        match nix::sys::socket::connect(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            &nix::sys::socket::SockaddrIn::from(to),
        ) {
            Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
            Err(e) => return Err(e.into()),
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match stream.peer_addr() {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => {
                    if let Ok(Some(e)) = stream.take_error() {
                        return Err(e);
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timed out",
                    ));
                }
            }
        }
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(message.as_bytes())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    })
}

/// Runs the `nettool` test client (tests/src/bin/nettool.rs) inside `netns`, optionally
/// inside `cgroup`; returns its `key=value` lines.
pub fn nettool(
    netns: &Path,
    cgroup: Option<&Path>,
    args: &[&str],
) -> Result<std::collections::BTreeMap<String, String>> {
    let bin = bpfbridge_bin().with_file_name("nettool");
    let netns_file = fs::File::open(netns)?;
    let procs = cgroup.map(|c| c.join("cgroup.procs"));
    let mut command = Command::new(&bin);
    command.args(args);
    // SAFETY: only async-signal-safe calls (open/write/close via std fs on a path, setns)
    // between fork and exec in a single-threaded child.
    unsafe {
        command.pre_exec(move || {
            if let Some(procs) = &procs {
                fs::write(procs, b"0")?;
            }
            setns(&netns_file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    let out = command
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    ensure!(
        out.status.success(),
        "nettool {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}

/// TCP and UDP echo servers on `port` in a namespace, answering `pong <message>` until
/// dropped (at most two minutes).
pub struct Echo {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Echo {
    pub fn start(netns: &Path, port: u16) -> Result<Self> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tcp, udp) = in_netns(netns, || -> std::io::Result<_> {
            let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
            Ok((TcpListener::bind(addr)?, std::net::UdpSocket::bind(addr)?))
        })?;
        tcp.set_nonblocking(true)?;
        udp.set_read_timeout(Some(Duration::from_millis(50)))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let flag = stop.clone();
        let tcp_thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                match tcp.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 256];
                        if let Ok(n) = stream.read(&mut buf) {
                            let _ = stream.write_all(b"pong ");
                            let _ = stream.write_all(&buf[..n]);
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        let flag = stop.clone();
        let udp_thread = thread::spawn(move || {
            let mut buf = [0u8; 256];
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok((n, peer)) = udp.recv_from(&mut buf) {
                    let mut answer = b"pong ".to_vec();
                    answer.extend_from_slice(&buf[..n]);
                    let _ = udp.send_to(&answer, peer);
                }
            }
        });
        Ok(Echo {
            stop,
            threads: vec![tcp_thread, udp_thread],
        })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Whether a TCP exchange from `netns` to `to` succeeds within `wait`.
pub fn tcp_reaches(netns: &Path, to: SocketAddrV4, wait: Duration) -> bool {
    in_netns(netns, || {
        let Ok(mut stream) = TcpStream::connect_timeout(&to.into(), wait) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(wait));
        if stream.write_all(b"hi").is_err() {
            return false;
        }
        let mut answer = String::new();
        stream.read_to_string(&mut answer).is_ok() && answer == "pong hi"
    })
}

/// Whether a UDP exchange from `netns` to `to` gets its answer within `wait`.
pub fn udp_reaches(netns: &Path, to: SocketAddrV4, wait: Duration) -> bool {
    in_netns(netns, || {
        let Ok(socket) = std::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
        else {
            return false;
        };
        let _ = socket.set_read_timeout(Some(wait));
        if socket.send_to(b"hi", to).is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        matches!(socket.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == b"pong hi")
    })
}

/// Whether one ICMP echo from `netns` to `to` is answered within a second (busybox ping).
pub fn ping_reaches(netns: &Path, to: Ipv4Addr) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["busybox", "ping", "-c", "1", "-W", "1", &to.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}
