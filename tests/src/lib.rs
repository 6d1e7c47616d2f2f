//! The hermetic test topology that every integration test builds on, from the lab crate
//! (`bpfbridge-lab`), which the demo and the bench share:
//!
//! ```text
//!   world netns                 node netns (agent runs here)            container netns
//!   wl0 198.51.100.2/24 <-veth-> up0 198.51.100.1/24   bpfbr0 <- vethXXX <-veth-> eth0
//! ```
//!
//! Every name is unique per test, everything is removed by `Drop` (also when a test
//! panics), and nothing touches the root network namespace. What only tests need lives
//! here: the dataplane of the run, the agent flags it implies, and clients and servers
//! inside namespaces.

pub mod cni;
pub mod cri;
pub mod docker;
pub mod figures;
pub mod packet;
pub mod podman;

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    ops::{Deref, DerefMut},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
pub use bpfbridge_lab::{
    NODE_IP, NODE_IPV6, Netns, Topology, UPLINK, WORLD_IP, WORLD_IPV6, WORLD_LINK, cgroup2_mount,
    cmd::run_program as run,
    in_netns,
    netns::{enter_netns, enter_netns_on_this_thread},
    spawn_in_netns, unique,
};

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

/// Tries `condition` every 50 ms until it holds, for at most `bound`; returns how long that
/// took, or `None`.
pub fn time_until(bound: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < bound {
        if condition() {
            return Some(start.elapsed());
        }
        thread::sleep(Duration::from_millis(50));
    }
    None
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

/// For a test (or the rest of one) that needs the dataplane to handle IPv6 traffic
/// (translation, masquerade, policy): when `agent`'s `info` says `DataplaneIPv6: false`,
/// says that `what` is skipped and why, and returns true.
pub fn skip_without_dataplane_ipv6(agent: &Agent, what: &str) -> Result<bool> {
    let info = agent.cli_json(&["info"])?;
    if info["DataplaneIPv6"].as_bool() == Some(true) {
        return Ok(false);
    }
    say_left_out(&format!(
        "skipped: {what}: the dataplane does not handle IPv6 traffic yet \
         (Capabilities::ipv6 off, info DataplaneIPv6 false)"
    ));
    Ok(true)
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

/// A bpfbridge agent running in the node namespace on this run's dataplane, with private
/// socket, state, pin directory, namespace directory and cgroup; stopped and cleaned up on
/// drop. Everything else is the lab's [`bpfbridge_lab::Agent`].
pub struct Agent(bpfbridge_lab::Agent);

impl Agent {
    pub fn start(topology: &Topology) -> Result<Self> {
        Self::start_with(topology, &[])
    }

    /// Starts an agent with extra `bpfbridge agent` flags.
    pub fn start_with(topology: &Topology, args: &[&str]) -> Result<Self> {
        Self::start_on_uplinks(topology, &[bpfbridge_lab::UPLINK], args)
    }

    /// Starts an agent with extra flags and these `--uplink`s instead of the topology's one
    /// (none: every interface of the node, the agent's default).
    pub fn start_on_uplinks(topology: &Topology, uplinks: &[&str], args: &[&str]) -> Result<Self> {
        Self::start_in(&topology.node, uplinks, args)
    }

    /// Starts an agent in `node`, a namespace of a topology the test built itself.
    pub fn start_in(node: &Netns, uplinks: &[&str], args: &[&str]) -> Result<Self> {
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
        let options = bpfbridge_lab::AgentOptions::new(&bpfbridge_bin())
            .uplinks(uplinks)
            .args(args);
        Ok(Agent(bpfbridge_lab::Agent::start(node, options)?))
    }

    /// Starts the agent process, expecting it to fail; returns why it did.
    pub fn spawn_expecting_failure(&mut self) -> Result<String> {
        match self.spawn() {
            Ok(()) => bail!("the agent started"),
            Err(e) => Ok(e.to_string()),
        }
    }
}

impl Deref for Agent {
    type Target = bpfbridge_lab::Agent;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// A TCP server on `0.0.0.0:port` in a namespace that answers one connection: it reads
/// one line and replies `pong <line>`; the handle returns the peer address it saw.
pub fn serve_once(netns: &Path, port: u16) -> thread::JoinHandle<Result<SocketAddr>> {
    serve_once_on(netns, Ipv4Addr::UNSPECIFIED.into(), port)
}

/// [`serve_once`] on `[::]:port`.
pub fn serve_once_v6(netns: &Path, port: u16) -> thread::JoinHandle<Result<SocketAddr>> {
    serve_once_on(netns, Ipv6Addr::UNSPECIFIED.into(), port)
}

/// The first connection to a non-blocking `listener` within `within`, made blocking again:
/// the servers of the tests wait for their client this way, bounded.
pub fn accept_within(listener: &TcpListener, within: Duration) -> Result<(TcpStream, SocketAddr)> {
    let deadline = Instant::now() + within;
    let (stream, peer) = loop {
        match listener.accept() {
            Ok(conn) => break conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10))
            }
            Err(e) => return Err(e).context("accept"),
        }
    };
    stream.set_nonblocking(false)?;
    Ok((stream, peer))
}

/// [`serve_once`] on `address:port`.
fn serve_once_on(
    netns: &Path,
    address: IpAddr,
    port: u16,
) -> thread::JoinHandle<Result<SocketAddr>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let netns = netns.to_path_buf();
    let handle = thread::spawn(move || -> Result<SocketAddr> {
        enter_netns_on_this_thread(&netns)?;
        let listener = TcpListener::bind((address, port))?;
        listener.set_nonblocking(true)?;
        let _ = ready_tx.send(());
        let (mut stream, peer) = accept_within(&listener, Duration::from_secs(15))?;
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
pub fn request(netns: &Path, to: impl Into<SocketAddr>, message: &str) -> std::io::Result<String> {
    let to = to.into();
    in_netns(netns, || {
        let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
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

/// The IPv4 addresses of the A records in a DNS answer.
pub fn a_records(answer: &hickory_proto::op::Message) -> Vec<Ipv4Addr> {
    answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            hickory_proto::rr::RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// Asks the container DNS server at 127.0.0.11:53, from inside `netns`, for `name`'s A
/// records. `Ok(None)`: the server answered without an address (NXDOMAIN, SERVFAIL, none);
/// `Err`: nothing answered within `wait`.
pub fn dns_lookup(netns: &Path, name: &str, wait: Duration) -> Result<Option<Vec<Ipv4Addr>>> {
    use hickory_proto::{
        op::{Message, Query, ResponseCode},
        rr::{Name, RecordType},
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
    let ips = a_records(&response);
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
        enter_netns_on_this_thread(&netns)?;
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
    let mut command = Command::new(&bin);
    command.args(args);
    if let Some(procs) = cgroup.map(|c| c.join("cgroup.procs")) {
        // SAFETY: only open/write/close on a path between fork and exec in a
        // single-threaded child.
        unsafe {
            command.pre_exec(move || fs::write(&procs, b"0"));
        }
    }
    enter_netns(&mut command, netns)?;
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

/// Whether one ICMP or ICMPv6 echo from `netns` to `to` is answered within two seconds
/// (busybox ping).
pub fn ping_reaches(netns: &Path, to: impl Into<IpAddr>) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args([
            "busybox",
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            &to.into().to_string(),
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}
