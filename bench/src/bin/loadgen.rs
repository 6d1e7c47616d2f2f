//! `bpfbridge-loadgen`: the load generator and the server of `cargo xtask bench`.
//!
//! ```text
//! bpfbridge-loadgen serve    --tcp PORT [--udp PORT] --seconds MAX
//! bpfbridge-loadgen connrate --to IP:PORT --from IP --seconds S [--concurrency C]
//! bpfbridge-loadgen latency  --to IP:PORT --from IP --seconds S [--size BYTES]
//! bpfbridge-loadgen bulk     --to IP:PORT --from IP --seconds S
//! bpfbridge-loadgen udp      --to IP:PORT --from IP --seconds S [--size BYTES] [--senders K]
//! ```
//!
//! Every client prints one JSON object on stdout. Every mode is bounded in time: clients
//! stop at `--seconds`, the server exits after `--seconds` whatever happens.
//!
//! The TCP protocol: the first byte of a connection says what it is.
//! - `C`: one request, one response (`pong\n`), and the server closes (like an HTTP server
//!   with `Connection: close`, so TIME_WAIT stays on the server side).
//! - `E`: echo everything until the client closes (latency).
//! - `B`: discard everything until the client shuts down its side, then answer with the
//!   number of bytes received (bulk).

use std::{
    collections::HashMap,
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

type Result<T> = std::result::Result<T, String>;

struct Args(HashMap<String, String>);

impl Args {
    fn parse(words: &[String]) -> Result<Self> {
        let mut map = HashMap::new();
        let mut it = words.iter();
        while let Some(word) = it.next() {
            let key = word
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {word:?}"))?;
            let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            map.insert(key.to_string(), value.clone());
        }
        Ok(Args(map))
    }

    fn get<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        let value = self
            .0
            .get(key)
            .ok_or_else(|| format!("--{key} is required"))?;
        value
            .parse()
            .map_err(|_| format!("--{key} {value:?} is not valid"))
    }

    fn get_or<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T> {
        match self.0.contains_key(key) {
            true => self.get(key),
            false => Ok(default),
        }
    }

    fn seconds(&self) -> Result<Duration> {
        let s: f64 = self.get("seconds")?;
        if !(0.0..=3600.0).contains(&s) {
            return Err("--seconds must be between 0 and 3600".into());
        }
        Ok(Duration::from_secs_f64(s))
    }
}

fn main() -> ExitCode {
    let words: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, rest)) = words.split_first() else {
        eprintln!("usage: bpfbridge-loadgen serve|connrate|latency|bulk|udp --flags...");
        return ExitCode::FAILURE;
    };
    let result = Args::parse(rest).and_then(|args| match mode.as_str() {
        "serve" => serve(&args),
        "connrate" => connrate(&args),
        "latency" => latency(&args),
        "bulk" => bulk(&args),
        "udp" => udp(&args),
        other => Err(format!("unknown mode {other:?}")),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bpfbridge-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

// --- the server ---------------------------------------------------------------------------

fn serve(args: &Args) -> Result<()> {
    let max = args.seconds()?;
    let tcp_port: u16 = args.get("tcp")?;
    let udp_port: Option<u16> = args
        .0
        .contains_key("udp")
        .then(|| args.get("udp"))
        .transpose()?;
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket
        .bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, tcp_port).into())
        .map_err(err)?;
    socket.listen(4096).map_err(err)?;
    let listener: TcpListener = socket.into();
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
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let listener = listener.try_clone().expect("clone listener");
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
        Some(b'E') => {
            stream.write_all(&buf[..n])?;
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                stream.write_all(&buf[..n])?;
            }
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
fn connect(from: Ipv4Addr, to: SocketAddrV4, timeout: Duration) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    // The port is chosen at connect, per destination: bind(port 0) alone would reserve one
    // port per socket and run out quickly.
    let one: libc::c_int = 1;
    // SAFETY: a valid socket, option and int.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    socket.bind(&SockAddr::from(SocketAddrV4::new(from, 0)))?;
    socket.connect_timeout(&SockAddr::from(to), timeout)?;
    socket.set_tcp_nodelay(true)?;
    Ok(socket.into())
}

fn endpoints(args: &Args) -> Result<(Ipv4Addr, SocketAddrV4)> {
    Ok((args.get("from")?, args.get("to")?))
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

/// New connections per second: connect, one request, one response, close.
fn connrate(args: &Args) -> Result<()> {
    let (from, to) = endpoints(args)?;
    let seconds = args.seconds()?;
    let concurrency: usize = args.get_or("concurrency", 16)?;
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Errors::default());
    let start = Instant::now();
    let deadline = start + seconds;
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let (ok, errors) = (ok.clone(), errors.clone());
            thread::spawn(move || {
                let mut buf = [0u8; 64];
                while Instant::now() < deadline {
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
fn latency(args: &Args) -> Result<()> {
    let (from, to) = endpoints(args)?;
    let seconds = args.seconds()?;
    let size: usize = args.get_or("size", 64)?;
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
fn bulk(args: &Args) -> Result<()> {
    let (from, to) = endpoints(args)?;
    let seconds = args.seconds()?;
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
fn udp(args: &Args) -> Result<()> {
    let (from, to) = endpoints(args)?;
    let seconds = args.seconds()?;
    let size: usize = args.get_or("size", 64)?;
    let senders: usize = args.get_or("senders", 2)?;
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + seconds;
    let threads: Vec<_> = (0..senders)
        .map(|_| -> Result<_> {
            let socket = UdpSocket::bind(SocketAddrV4::new(from, 0)).map_err(err)?;
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
