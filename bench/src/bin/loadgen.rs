//! `bpfbridge-loadgen`: the load generator and the server of `cargo xtask bench`.
//!
//! ```text
//! bpfbridge-loadgen serve    --tcp PORT [--udp PORT] --seconds MAX
//! bpfbridge-loadgen connrate --to IP:PORT --from IP --seconds S [--concurrency C] [--targets N]
//! bpfbridge-loadgen latency  --to IP:PORT --from IP --seconds S [--size BYTES]
//! bpfbridge-loadgen bulk     --to IP:PORT --from IP --seconds S
//! bpfbridge-loadgen udp      --to IP:PORT --from IP --seconds S [--size BYTES] [--senders K]
//! bpfbridge-loadgen udpflows --to IP:PORT --from IP --seconds S --first I --count N
//!                            [--addrs A] [--ports P] [--rate PPS]
//! bpfbridge-loadgen hold     --to IP:PORT --from IP --seconds MAX --count N
//! bpfbridge-loadgen synflood --to IP:PORT --from IP --seconds S --count N [--sources K]
//!                            [--rate PPS]
//! ```
//!
//! Every client prints one JSON object on stdout. Every mode is bounded in time: clients
//! stop at `--seconds`, the server exits after `--seconds` whatever happens.
//!
//! The TCP protocol: the first byte of a connection says what it is.
//! - `C`: one request, one response (`pong\n`), and the server closes (like an HTTP server
//!   with `Connection: close`, so TIME_WAIT stays on the server side).
//! - `E`: echo everything until the client closes (latency, hold), on a thread of its own:
//!   such connections live long and must not hold up the accepting workers.
//! - `B`: discard everything until the client shuts down its side, then answer with the
//!   number of bytes received (bulk).
//! - `W`: answer with the client's address as the server sees it, and close (the bench
//!   checks with it that egress leaves through the node's masquerade).

use std::{
    io::{ErrorKind, Read, Write},
    net::{
        IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener,
        TcpStream, UdpSocket,
    },
    os::fd::AsRawFd,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use clap::{Args, Parser, Subcommand};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

type Result<T> = std::result::Result<T, String>;

#[derive(Parser)]
#[command(
    name = "bpfbridge-loadgen",
    about = "The load generator and the server of `cargo xtask bench`"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

/// The flags of every client: where it connects from and to, and for how long. IPv4 or
/// IPv6 (`[2001:db8::1]:8080`), both of one family; the raw-socket senders are IPv4 only.
#[derive(Args)]
struct Endpoints {
    /// The local address to send from.
    #[arg(long)]
    from: IpAddr,
    /// The server (or first server) to reach.
    #[arg(long)]
    to: SocketAddr,
    /// How long to run (at most 3600).
    #[arg(long, value_parser = seconds)]
    seconds: Duration,
}

impl Endpoints {
    /// The IPv4 addresses of a sender that builds IPv4 packets itself.
    fn ipv4(&self) -> Result<(Ipv4Addr, SocketAddrV4)> {
        match (self.from, self.to) {
            (IpAddr::V4(from), SocketAddr::V4(to)) => Ok((from, to)),
            _ => Err("this sender builds IPv4 packets: --from and --to must be IPv4".into()),
        }
    }
}

#[derive(Subcommand)]
enum Mode {
    /// The server: TCP on `--tcp` (and UDP on `--udp`), exits after `--seconds`.
    Serve {
        #[arg(long)]
        tcp: u16,
        #[arg(long)]
        udp: Option<u16>,
        #[arg(long, value_parser = seconds)]
        seconds: Duration,
    },
    /// New connections per second (connect, 1 request, 1 response, close).
    Connrate {
        #[command(flatten)]
        path: Endpoints,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Consecutive server addresses from `--to`'s, one after the other.
        #[arg(long, default_value_t = 1)]
        targets: u32,
    },
    /// Round trips of `--size` bytes on one connection.
    Latency {
        #[command(flatten)]
        path: Endpoints,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// One connection writing as fast as it can.
    Bulk {
        #[command(flatten)]
        path: Endpoints,
    },
    /// Datagrams of `--size` bytes from `--senders` sockets, as fast as they go.
    Udp {
        #[command(flatten)]
        path: Endpoints,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 2)]
        senders: usize,
    },
    /// One UDP datagram for each of flows `--first` .. `--first + --count`, from a raw socket.
    Udpflows {
        #[command(flatten)]
        path: Endpoints,
        #[arg(long)]
        first: u64,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 1)]
        addrs: u32,
        #[arg(long, default_value_t = 1)]
        ports: u16,
        #[arg(long, default_value_t = 100_000)]
        rate: u64,
    },
    /// `--count` echo connections held idle until a line on stdin, then checked.
    Hold {
        #[command(flatten)]
        path: Endpoints,
        #[arg(long)]
        count: usize,
    },
    /// `--count` spoofed TCP SYNs from `--sources` addresses counted up from `--from`.
    Synflood {
        #[command(flatten)]
        path: Endpoints,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 128)]
        sources: u32,
        #[arg(long, default_value_t = 200_000)]
        rate: u64,
    },
}

/// `--seconds`: between 0 and 3600.
fn seconds(value: &str) -> Result<Duration> {
    let s: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number of seconds"))?;
    if !(0.0..=3600.0).contains(&s) {
        return Err("--seconds must be between 0 and 3600".into());
    }
    Ok(Duration::from_secs_f64(s))
}

fn main() -> ExitCode {
    let result = match Cli::parse().mode {
        Mode::Serve { tcp, udp, seconds } => serve(tcp, udp, seconds),
        Mode::Connrate {
            path,
            concurrency,
            targets,
        } => connrate(&path, concurrency, targets),
        Mode::Latency { path, size } => latency(&path, size),
        Mode::Bulk { path } => bulk(&path),
        Mode::Udp {
            path,
            size,
            senders,
        } => udp(&path, size, senders),
        Mode::Udpflows {
            path,
            first,
            count,
            addrs,
            ports,
            rate,
        } => udpflows(&path, first, count, addrs, ports, rate),
        Mode::Hold { path, count } => hold(&path, count),
        Mode::Synflood {
            path,
            count,
            sources,
            rate,
        } => synflood(&path, count, sources, rate),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bpfbridge-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

// --- the server ---------------------------------------------------------------------------

/// A TCP listener on `addr`; IPv6 ones take IPv6 only, as the IPv4 one has the IPv4 side.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

fn serve(tcp_port: u16, udp_port: Option<u16>, max: Duration) -> Result<()> {
    let ipv4 = listen(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, tcp_port).into()).map_err(err)?;
    // On [::] as well where the namespace has IPv6 (a dual-stack container's); each family
    // has its own listener, so that IPv4 clients meet an IPv4 socket as they always did.
    let ipv6 = listen(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, tcp_port, 0, 0).into()).ok();
    // The watchdog: whatever happens, the server does not outlive its time.
    thread::spawn(move || {
        thread::sleep(max);
        std::process::exit(0);
    });
    if let Some(port) = udp_port {
        let udp = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
        let _ = udp.set_recv_buffer_size(4 << 20);
        udp.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())
            .map_err(err)?;
        let udp: UdpSocket = udp.into();
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            loop {
                let _ = udp.recv(&mut buf);
            }
        });
    }
    let workers: Vec<_> = std::iter::once(ipv4)
        .chain(ipv6)
        .flat_map(|listener| (0..4).map(move |_| listener.try_clone().expect("clone listener")))
        .map(|listener| {
            thread::spawn(move || {
                loop {
                    if let Ok((stream, _)) = listener.accept() {
                        let _ = handle(stream);
                    }
                }
            })
        })
        .collect();
    println!("{{\"listening\":{tcp_port}}}");
    let _ = std::io::stdout().flush();
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

fn handle(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = vec![0u8; 256 * 1024];
    let n = stream.read(&mut buf)?;
    match buf.first().filter(|_| n > 0) {
        Some(b'C') => stream.write_all(b"pong\n"),
        Some(b'W') => {
            let peer = stream.peer_addr()?.ip().to_canonical().to_string();
            stream.write_all(peer.as_bytes())
        }
        Some(b'E') => {
            stream.write_all(&buf[..n])?;
            // Held connections sit idle through the bench's flood, up to a minute.
            stream.set_read_timeout(Some(Duration::from_secs(120)))?;
            thread::spawn(move || -> std::io::Result<()> {
                let mut buf = [0u8; 64 * 1024];
                loop {
                    let n = stream.read(&mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    stream.write_all(&buf[..n])?;
                }
            });
            Ok(())
        }
        Some(b'B') => {
            let mut total = (n - 1) as u64;
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            stream.write_all(total.to_string().as_bytes())
        }
        _ => Ok(()),
    }
}

// --- the clients --------------------------------------------------------------------------

fn err(e: std::io::Error) -> String {
    e.to_string()
}

/// A TCP connection from `from` (any port) to `to`, within `timeout`.
fn connect(from: IpAddr, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    // The port is chosen at connect, per destination: bind(port 0) alone would reserve one
    // port per socket and run out quickly.
    let one: libc::c_int = 1;
    // SAFETY: a valid socket, option and int. IPv6 TCP sockets take this IPv4-level option
    // too (the kernel hands SOL_IP options of non-raw IPv6 sockets to the IPv4 code).
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    socket.bind(&SockAddr::from(SocketAddr::new(from, 0)))?;
    socket.connect_timeout(&SockAddr::from(to), timeout)?;
    socket.set_tcp_nodelay(true)?;
    Ok(socket.into())
}

#[derive(Default)]
struct Errors {
    refused: AtomicU64,
    timeout: AtomicU64,
    reset: AtomicU64,
    other: AtomicU64,
}

impl Errors {
    fn count(&self, e: &std::io::Error) {
        let counter = match e.kind() {
            ErrorKind::ConnectionRefused => &self.refused,
            ErrorKind::TimedOut | ErrorKind::WouldBlock => &self.timeout,
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
                &self.reset
            }
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn json(&self) -> String {
        format!(
            "{{\"refused\":{},\"timeout\":{},\"reset\":{},\"other\":{}}}",
            self.refused.load(Ordering::Relaxed),
            self.timeout.load(Ordering::Relaxed),
            self.reset.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed)
        )
    }
}

/// The `i`-th of `targets` consecutive addresses from `to`'s, at `to`'s port.
fn nth_target(to: SocketAddr, targets: u32, i: u64) -> SocketAddr {
    let offset = (i % u64::from(targets.max(1))) as u32;
    let ip = match to.ip() {
        IpAddr::V4(ip) => IpAddr::V4(Ipv4Addr::from(u32::from(ip).wrapping_add(offset))),
        IpAddr::V6(ip) => IpAddr::V6(Ipv6Addr::from(
            u128::from(ip).wrapping_add(u128::from(offset)),
        )),
    };
    SocketAddr::new(ip, to.port())
}

/// New connections per second: connect, one request, one response, close; with
/// `--targets N`, to N consecutive server addresses from `--to`'s, one after the other.
fn connrate(path: &Endpoints, concurrency: usize, targets: u32) -> Result<()> {
    let &Endpoints { from, to, seconds } = path;
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Errors::default());
    // Round-robin over all threads, so that every address gets its share.
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + seconds;
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let (ok, errors, next) = (ok.clone(), errors.clone(), next.clone());
            thread::spawn(move || {
                let mut buf = [0u8; 64];
                while Instant::now() < deadline {
                    let to = nth_target(to, targets, next.fetch_add(1, Ordering::Relaxed));
                    let mut exchange = || -> std::io::Result<()> {
                        let mut s = connect(from, to, Duration::from_secs(1))?;
                        s.set_read_timeout(Some(Duration::from_secs(1)))?;
                        s.write_all(b"C ping\n")?;
                        let mut got = 0;
                        loop {
                            let n = s.read(&mut buf[got..])?;
                            if n == 0 {
                                break;
                            }
                            got += n;
                        }
                        match &buf[..got] == b"pong\n" {
                            true => Ok(()),
                            false => Err(std::io::Error::other("bad answer")),
                        }
                    };
                    match exchange() {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.count(&e),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "{{\"connections\":{ok},\"seconds\":{elapsed:.4},\"rate\":{:.1},\"errors\":{}}}",
        ok as f64 / elapsed,
        errors.json()
    );
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Round trips of `--size` bytes on one connection, each timed.
fn latency(path: &Endpoints, size: usize) -> Result<()> {
    let &Endpoints { from, to, seconds } = path;
    let mut s = connect(from, to, Duration::from_secs(2)).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(err)?;
    let mut msg = vec![b'x'; size.max(1)];
    msg[0] = b'E';
    let mut back = vec![0u8; msg.len()];
    let mut samples = Vec::with_capacity(1 << 20);
    let deadline = Instant::now() + seconds;
    let mut round = 0u64;
    while Instant::now() < deadline && samples.len() < 5_000_000 {
        let t = Instant::now();
        s.write_all(&msg).map_err(err)?;
        s.read_exact(&mut back).map_err(err)?;
        let ns = t.elapsed().as_nanos() as u64;
        round += 1;
        // The first round trips warm caches and the connection up.
        if round > 100 {
            samples.push(ns);
        }
    }
    samples.sort_unstable();
    let mean = samples.iter().sum::<u64>() as f64 / samples.len().max(1) as f64;
    println!(
        "{{\"samples\":{},\"mean_us\":{:.2},\"p50_us\":{:.2},\"p90_us\":{:.2},\"p99_us\":{:.2},\"p999_us\":{:.2},\"max_us\":{:.2}}}",
        samples.len(),
        mean / 1e3,
        percentile(&samples, 50.0) as f64 / 1e3,
        percentile(&samples, 90.0) as f64 / 1e3,
        percentile(&samples, 99.0) as f64 / 1e3,
        percentile(&samples, 99.9) as f64 / 1e3,
        samples.last().copied().unwrap_or(0) as f64 / 1e3,
    );
    Ok(())
}

/// One connection writing as fast as it can.
fn bulk(path: &Endpoints) -> Result<()> {
    let &Endpoints { from, to, seconds } = path;
    let mut s = connect(from, to, Duration::from_secs(2)).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(err)?;
    let start = Instant::now();
    let deadline = start + seconds;
    s.write_all(b"B").map_err(err)?;
    let chunk = vec![0x5au8; 128 * 1024];
    while Instant::now() < deadline {
        s.write_all(&chunk).map_err(err)?;
    }
    s.shutdown(Shutdown::Write).map_err(err)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(err)?;
    let elapsed = start.elapsed().as_secs_f64();
    let bytes: u64 = answer
        .trim()
        .parse()
        .map_err(|_| format!("bad bulk answer {answer:?}"))?;
    println!(
        "{{\"bytes\":{bytes},\"seconds\":{elapsed:.4},\"gbit_per_s\":{:.3}}}",
        bytes as f64 * 8.0 / elapsed / 1e9
    );
    Ok(())
}

/// Datagrams of `--size` bytes from `--senders` sockets, as fast as they go. The receiver
/// side counts what arrived (the bench reads the container's /proc/net/snmp).
fn udp(path: &Endpoints, size: usize, senders: usize) -> Result<()> {
    let &Endpoints { from, to, seconds } = path;
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + seconds;
    let threads: Vec<_> = (0..senders)
        .map(|_| -> Result<_> {
            let socket = UdpSocket::bind(SocketAddr::new(from, 0)).map_err(err)?;
            socket.connect(to).map_err(err)?;
            let (sent, failed) = (sent.clone(), failed.clone());
            Ok(thread::spawn(move || {
                let payload = vec![0xa5u8; size];
                let (mut ok, mut bad) = (0u64, 0u64);
                'outer: loop {
                    for _ in 0..64 {
                        match socket.send(&payload) {
                            Ok(_) => ok += 1,
                            Err(_) => bad += 1,
                        }
                    }
                    if Instant::now() >= deadline {
                        break 'outer;
                    }
                }
                sent.fetch_add(ok, Ordering::Relaxed);
                failed.fetch_add(bad, Ordering::Relaxed);
            }))
        })
        .collect::<Result<_>>()?;
    for t in threads {
        let _ = t.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{{\"sent\":{},\"send_errors\":{},\"seconds\":{elapsed:.4}}}",
        sent.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Flow `i` of the sequence `udpflows` walks: every `(address, port)` of the `addrs` x `ports`
/// destinations gets source port 1024 first, then 1025, ..., so that the flows are all
/// distinct and spread evenly over the destinations (each one's masquerade range fills
/// alike).
fn flow(to: SocketAddrV4, addrs: u32, ports: u16, i: u64) -> Option<(u16, SocketAddrV4)> {
    let per_round = u64::from(addrs) * u64::from(ports);
    let sport = u16::try_from(1024 + i / per_round).ok()?;
    let dest = i % per_round;
    let addr = Ipv4Addr::from(u32::from(*to.ip()).wrapping_add((dest / u64::from(ports)) as u32));
    let port = to.port().checked_add((dest % u64::from(ports)) as u16)?;
    Some((sport, SocketAddrV4::new(addr, port)))
}

/// An IPv4 + UDP datagram with an 8-byte payload. The kernel fills in the IP checksum and
/// id of a raw IPPROTO_RAW socket's packets; the UDP checksum is left out (0 is allowed).
fn udp_datagram(from: Ipv4Addr, sport: u16, to: SocketAddrV4) -> [u8; 36] {
    let mut p = [0u8; 36];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&36u16.to_be_bytes());
    p[8] = 64;
    p[9] = libc::IPPROTO_UDP as u8;
    p[12..16].copy_from_slice(&from.octets());
    p[16..20].copy_from_slice(&to.ip().octets());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&to.port().to_be_bytes());
    p[24..26].copy_from_slice(&16u16.to_be_bytes());
    p[28..].copy_from_slice(b"bpfbflow");
    p
}

/// One UDP datagram for each of flows `--first` .. `--first + --count` (see [`flow`]), from
/// `--from` to `--addrs` consecutive addresses from `--to`'s and `--ports` consecutive ports
/// from its port, at most `--rate` a second: a quick way to put many new masqueraded flows
/// in a node's tables. A raw socket, because the source ports are arbitrary and a socket per
/// flow would cost far more than the flow.
fn udpflows(
    path: &Endpoints,
    first: u64,
    count: u64,
    addrs: u32,
    ports: u16,
    rate: u64,
) -> Result<()> {
    let seconds = path.seconds;
    let (from, to) = path.ipv4()?;
    if addrs == 0 || ports == 0 || rate == 0 {
        return Err("--addrs, --ports and --rate must be positive".into());
    }
    let socket = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .map_err(err)?;
    let start = Instant::now();
    let deadline = start + seconds;
    let (mut sent, mut failed) = (0u64, 0u64);
    for i in first..first.saturating_add(count) {
        let Some((sport, dest)) = flow(to, addrs, ports, i) else {
            return Err(format!("flow {i} is past the last source port"));
        };
        if sent.is_multiple_of(1024) {
            if Instant::now() >= deadline {
                break;
            }
            // Paced, so that the node's queues (1,000 packets by default) do not overflow.
            let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        match socket.send_to(&udp_datagram(from, sport, dest), &SockAddr::from(dest)) {
            Ok(_) => sent += 1,
            Err(_) => failed += 1,
        }
    }
    println!(
        "{{\"sent\":{sent},\"send_errors\":{failed},\"seconds\":{:.4}}}",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One echo round trip on a held connection.
fn echo(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    match back == msg {
        true => Ok(()),
        false => Err(std::io::Error::other("bad echo")),
    }
}

/// `--count` echo connections that then sit idle: prints how many opened, waits for a line
/// on stdin (or `--seconds`), then checks that each one still carries data, and prints how
/// many did. The bench floods the node in between.
fn hold(path: &Endpoints, count: usize) -> Result<()> {
    let &Endpoints {
        from,
        to,
        seconds: max,
    } = path;
    let mut held: Vec<TcpStream> = (0..count)
        .filter_map(|_| {
            let mut s = connect(from, to, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            echo(&mut s, b"Ehold").ok()?;
            Some(s)
        })
        .collect();
    println!("{{\"opened\":{}}}", held.len());
    let _ = std::io::stdout().flush();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(max);
    let opened = held.len();
    // All at once: a lost connection costs its read timeout, not the sum of them.
    let survived = thread::scope(|scope| {
        let checks: Vec<_> = held
            .iter_mut()
            .map(|s| scope.spawn(move || echo(s, b"still").is_ok()))
            .collect();
        checks
            .into_iter()
            .filter_map(|c| c.join().ok())
            .filter(|&alive| alive)
            .count()
    });
    println!("{{\"opened\":{opened},\"survived\":{survived}}}");
    Ok(())
}

/// The Internet checksum of `parts` laid end to end (every part but the last of even length).
fn inet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 + TCP SYN from `src:sport` to `to`, with a correct TCP checksum (the receiver
/// checks it; the kernel fills in the IP header's).
fn tcp_syn(src: Ipv4Addr, sport: u16, to: SocketAddrV4, seq: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = libc::IPPROTO_TCP as u8;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&to.ip().octets());
    let tcp = &mut p[20..];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&to.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&to.ip().octets());
    pseudo[9] = libc::IPPROTO_TCP as u8;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let check = inet_checksum(&[&pseudo, &p[20..]]);
    p[36..38].copy_from_slice(&check.to_be_bytes());
    p
}

/// `--count` TCP SYNs to `--to` from `--sources` spoofed addresses counted up from `--from`
/// (source ports from 1024 up, one flow per SYN), at most `--rate` a second, for at most
/// `--seconds`: a SYN flood that never completes a handshake.
fn synflood(path: &Endpoints, count: u64, sources: u32, rate: u64) -> Result<()> {
    let seconds = path.seconds;
    let (from, to) = path.ipv4()?;
    if sources == 0 || rate == 0 {
        return Err("--sources and --rate must be positive".into());
    }
    let socket = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .map_err(err)?;
    let dest = SockAddr::from(to);
    let start = Instant::now();
    let deadline = start + seconds;
    let (mut sent, mut failed) = (0u64, 0u64);
    for i in 0..count {
        if i.is_multiple_of(1024) {
            if Instant::now() >= deadline {
                break;
            }
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        let src = Ipv4Addr::from(u32::from(from).wrapping_add((i % u64::from(sources)) as u32));
        let sport = 1024 + ((i / u64::from(sources)) % 64_512) as u16;
        let seq = (i as u32).wrapping_mul(2_654_435_761);
        match socket.send_to(&tcp_syn(src, sport, to, seq), &dest) {
            Ok(_) => sent += 1,
            Err(_) => failed += 1,
        }
    }
    println!(
        "{{\"sent\":{sent},\"send_errors\":{failed},\"seconds\":{:.4}}}",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_are_distinct_and_spread_over_the_destinations() {
        let to: SocketAddrV4 = "198.51.100.64:10000".parse().unwrap();
        let flows: Vec<_> = (0..8).map(|i| flow(to, 2, 2, i).unwrap()).collect();
        assert_eq!(flows[0], (1024, "198.51.100.64:10000".parse().unwrap()));
        assert_eq!(flows[1], (1024, "198.51.100.64:10001".parse().unwrap()));
        assert_eq!(flows[2], (1024, "198.51.100.65:10000".parse().unwrap()));
        assert_eq!(flows[4], (1025, "198.51.100.64:10000".parse().unwrap()));
        let mut unique = flows.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), flows.len());
        assert_eq!(flow(to, 1, 1, 70_000), None, "no source port past 65535");
    }

    #[test]
    fn syn_checksum_verifies() {
        let to: SocketAddrV4 = "198.51.100.1:8080".parse().unwrap();
        let src = Ipv4Addr::new(203, 0, 113, 130);
        let p = tcp_syn(src, 4242, to, 7);
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&src.octets());
        pseudo[4..8].copy_from_slice(&to.ip().octets());
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
        // A correct checksum sums, with itself, to all ones (0 once complemented).
        assert_eq!(inet_checksum(&[&pseudo, &p[20..]]), 0);
        assert_eq!(p[33], 0x02, "SYN only");
    }

    #[test]
    fn the_bench_command_lines_parse() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let parse = |line: &str| Cli::try_parse_from(line.split_whitespace());
        let Mode::Connrate {
            path,
            concurrency,
            targets,
        } = parse("loadgen connrate --from 198.51.100.2 --to 198.51.100.1:8080 --seconds 0.5")
            .unwrap()
            .mode
        else {
            panic!("not connrate");
        };
        assert_eq!(path.seconds, Duration::from_millis(500));
        assert_eq!((concurrency, targets), (16, 1), "the defaults");
        let Mode::Serve { tcp, udp, seconds } =
            parse("loadgen serve --tcp 80 --seconds 3600 --udp 82")
                .unwrap()
                .mode
        else {
            panic!("not serve");
        };
        assert_eq!((tcp, udp, seconds.as_secs()), (80, Some(82), 3600));
        let Mode::Udpflows {
            first,
            count,
            addrs,
            ports,
            rate,
            ..
        } = parse(
            "loadgen udpflows --from 172.26.0.2 --to 198.51.100.64:10000 --seconds 7              --first 0 --count 1000 --addrs 64 --ports 16 --rate 100000",
        )
        .unwrap()
        .mode
        else {
            panic!("not udpflows");
        };
        assert_eq!(
            (first, count, addrs, ports, rate),
            (0, 1000, 64, 16, 100_000)
        );
        assert!(parse("loadgen bulk --from 1.2.3.4 --to 1.2.3.5:80 --seconds 3601").is_err());
        assert!(parse("loadgen hold --from 1.2.3.4 --to 1.2.3.5:80 --seconds 1").is_err());
    }

    #[test]
    fn targets_go_round() {
        let to: SocketAddr = "192.0.2.64:9000".parse().unwrap();
        assert_eq!(nth_target(to, 64, 65), "192.0.2.65:9000".parse().unwrap());
        assert_eq!(nth_target(to, 1, 7), to);
        let to: SocketAddr = "[2001:db8:1::ff]:9000".parse().unwrap();
        assert_eq!(
            nth_target(to, 4, 2),
            "[2001:db8:1::101]:9000".parse().unwrap()
        );
    }
}
