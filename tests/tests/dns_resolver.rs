//! The embedded DNS server (`bpfbridge::dns`) in a world of its own:
//!
//! ```text
//!   container netns C1, C3         node netns (resolver's runtime)        upstream netns
//!   127.0.0.11:53 (server)         dns0 192.0.2.1/24  <----- veth ----->  dns1 192.0.2.53/24
//!                                                                          fake DNS server
//! ```
//!
//! The upstream is reachable from the node namespace only, so an upstream answer proves
//! both that a name was forwarded and that forwarding happened from the node namespace.

use std::{
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use bpfbridge::dns::{Record, Resolver};
use bpfbridge_tests::{Netns, enter_netns_on_this_thread};
use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{Name, RData, Record as DnsRecord, RecordType, rdata::A},
};

const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 11), 53);
const UPSTREAM: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 53), 53);
/// What the fake upstream answers to any A query over UDP, and over TCP.
const UPSTREAM_UDP_ANSWER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const UPSTREAM_TCP_ANSWER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 8);
/// Names under this domain get a truncated answer from the fake upstream over UDP.
const BIG: &str = "big.example.";

/// Container ids: 64 hex digits, whose first 12 are the short id.
const ID1: &str = "1111111111aa1111111111111111111111111111111111111111111111111111";
const ID2: &str = "2222222222bb2222222222222222222222222222222222222222222222222222";
const ID3: &str = "3333333333cc3333333333333333333333333333333333333333333333333333";
const ID4: &str = "4444444444dd4444444444444444444444444444444444444444444444444444";

fn record(id: &str, network: &str, names: &[&str], ip: [u8; 4]) -> Record {
    let mut names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    names.push(id[..12].to_string());
    Record {
        container_id: id.into(),
        network: network.into(),
        names,
        ip: Some(ip.into()),
        ipv6: None,
    }
}

/// c1 and c2 on network "a", c3 on "b", c4 on both.
fn records() -> Vec<Record> {
    vec![
        record(ID1, "a", &["c1"], [10, 89, 1, 1]),
        record(ID2, "a", &["c2", "db"], [10, 89, 1, 2]),
        record(ID3, "b", &["c3"], [10, 89, 2, 3]),
        record(ID4, "a", &["c4"], [10, 89, 1, 4]),
        record(ID4, "b", &["c4", "cache"], [10, 89, 2, 4]),
    ]
}

/// The namespaces, the fake upstream and the runtime the resolver's tasks run on.
struct World {
    // Fields drop in this order: the runtime (and the tasks) before the namespaces.
    runtime: tokio::runtime::Runtime,
    _upstream_server: FakeUpstream,
    node: Netns,
    _upstream: Netns,
    c1: Netns,
    c3: Netns,
}

impl World {
    fn new() -> Result<Self> {
        let node = Netns::new("dns-node")?;
        let upstream = Netns::new("dns-up")?;
        node.ip(&[
            "link",
            "add",
            "dns0",
            "type",
            "veth",
            "peer",
            "name",
            "dns1",
            "netns",
            &upstream.name,
        ])?;
        node.ip(&["addr", "add", "192.0.2.1/24", "dev", "dns0"])?;
        upstream.ip(&[
            "addr",
            "add",
            &format!("{}/24", UPSTREAM.ip()),
            "dev",
            "dns1",
        ])?;
        node.ip(&["link", "set", "dns0", "up"])?;
        upstream.ip(&["link", "set", "dns1", "up"])?;
        let upstream_server = FakeUpstream::start(&upstream)?;
        // Built on a thread in the node namespace: its worker threads are created there and
        // stay there, like the agent's.
        let runtime = node.run(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
        })?;
        Ok(World {
            runtime,
            _upstream_server: upstream_server,
            node,
            _upstream: upstream,
            c1: Netns::new("dns-c1")?,
            c3: Netns::new("dns-c3")?,
        })
    }

    /// `resolver.serve`, called like the agent does: from the node namespace, on its runtime.
    fn serve(&self, resolver: &Resolver, id: &str, container: &Netns) -> Result<()> {
        let path = container.path();
        self.node.run(|| {
            let _runtime = self.runtime.enter();
            resolver.serve(id, &path)
        })?;
        Ok(())
    }
}

/// A DNS server in the upstream namespace, answering every A query (over UDP, except
/// under [`BIG`], and over TCP), until dropped or after two minutes.
struct FakeUpstream {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Result<()>>>,
}

impl FakeUpstream {
    fn start(netns: &Netns) -> Result<Self> {
        let path = netns.path();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = thread::spawn({
            let stop = stop.clone();
            move || -> Result<()> {
                enter_netns_on_this_thread(&path)?;
                let udp = UdpSocket::bind(UPSTREAM)?;
                udp.set_nonblocking(true)?;
                let tcp = TcpListener::bind(UPSTREAM)?;
                tcp.set_nonblocking(true)?;
                let _ = ready_tx.send(());
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut buf = [0; 4096];
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let mut idle = true;
                    match udp.recv_from(&mut buf) {
                        Ok((len, peer)) => {
                            idle = false;
                            if let Some(answer) = upstream_answer(&buf[..len], false) {
                                udp.send_to(&answer, peer)?;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e.into()),
                    }
                    match tcp.accept() {
                        Ok((mut stream, _)) => {
                            idle = false;
                            // One query per connection is all the resolver sends.
                            stream.set_nonblocking(false)?;
                            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                            let answer = read_framed(&mut stream)
                                .ok()
                                .and_then(|query| upstream_answer(&query, true));
                            if let Some(answer) = answer {
                                let _ = write_framed(&mut stream, &answer);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e.into()),
                    }
                    if idle {
                        thread::sleep(Duration::from_millis(5));
                    }
                }
                Ok(())
            }
        });
        let mut upstream = FakeUpstream {
            stop,
            thread: Some(thread),
        };
        if ready_rx.recv_timeout(Duration::from_secs(5)).is_err() {
            upstream.finish()?;
            bail!("the fake upstream did not start");
        }
        Ok(upstream)
    }

    fn finish(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => bail!("the fake upstream panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            eprintln!("fake upstream: {e:#}");
        }
    }
}

fn upstream_answer(query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let question = request.queries.first()?.clone();
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(question.clone());
    if !tcp && question.name().to_ascii().ends_with(BIG) {
        response.metadata.truncation = true;
    } else if question.query_type() == RecordType::A {
        let ip = if tcp {
            UPSTREAM_TCP_ANSWER
        } else {
            UPSTREAM_UDP_ANSWER
        };
        response.add_answer(DnsRecord::from_rdata(
            question.name().clone(),
            60,
            RData::A(A(ip)),
        ));
    }
    response.to_vec().ok()
}

fn read_framed(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0; 2];
    stream.read_exact(&mut len)?;
    let mut message = vec![0; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message)?;
    Ok(message)
}

fn write_framed(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len()).map_err(io::Error::other)?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(message);
    stream.write_all(&framed)
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Udp,
    Tcp,
}

/// What a client sees of an answer.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    code: ResponseCode,
    truncated: bool,
    ips: Vec<Ipv4Addr>,
}

fn found(ips: &[[u8; 4]]) -> Outcome {
    Outcome {
        code: ResponseCode::NoError,
        truncated: false,
        ips: ips.iter().map(|&ip| ip.into()).collect(),
    }
}

fn code(code: ResponseCode) -> Outcome {
    Outcome {
        code,
        truncated: false,
        ips: vec![],
    }
}

fn query(name: &str, record_type: RecordType) -> Result<Message> {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    let mut name = Name::from_ascii(name)?;
    // As on the wire, so that the question compares equal to the one echoed back.
    name.set_fqdn(true);
    message.add_query(Query::query(name, record_type));
    Ok(message)
}

/// Checks that `response` answers `request` and sums it up.
fn outcome(request: &Message, response: &[u8]) -> Result<Outcome> {
    let response = Message::from_vec(response)?;
    ensure!(response.metadata.id == request.metadata.id, "wrong id");
    ensure!(response.queries == request.queries, "wrong question");
    ensure!(response.metadata.recursion_available, "RA not set");
    Ok(Outcome {
        code: response.metadata.response_code,
        truncated: response.metadata.truncation,
        ips: response
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect(),
    })
}

/// Sends one datagram from `container` to the server and returns the answer.
fn exchange_udp(container: &Netns, message: &[u8], wait: Duration) -> io::Result<Vec<u8>> {
    container.run(|| {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        socket.connect(SERVER)?;
        socket.set_read_timeout(Some(wait))?;
        socket.send(message)?;
        let mut buf = vec![0; 65535];
        let len = socket.recv(&mut buf)?;
        buf.truncate(len);
        Ok(buf)
    })
}

/// Sends queries over one TCP connection from `container` and returns the answers.
fn exchange_tcp(container: &Netns, messages: &[Vec<u8>]) -> io::Result<Vec<Vec<u8>>> {
    container.run(|| {
        let mut stream = TcpStream::connect_timeout(&SERVER.into(), Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        messages
            .iter()
            .map(|message| {
                write_framed(&mut stream, message)?;
                read_framed(&mut stream)
            })
            .collect()
    })
}

fn ask(container: &Netns, name: &str, record_type: RecordType, via: Via) -> Result<Outcome> {
    let request = query(name, record_type)?;
    let bytes = request.to_vec()?;
    let response = match via {
        Via::Udp => exchange_udp(container, &bytes, Duration::from_secs(5))?,
        Via::Tcp => exchange_tcp(container, &[bytes])?.remove(0),
    };
    outcome(&request, &response)
}

fn check(cases: &[(&Netns, &str, RecordType, Via, Outcome)]) -> Result<()> {
    for (container, name, record_type, via, expected) in cases {
        let got = ask(container, name, *record_type, *via)
            .with_context(|| format!("{}: {name} {record_type} over {via:?}", container.name))?;
        assert_eq!(
            &got, expected,
            "{}: {name} {record_type} over {via:?}",
            container.name
        );
    }
    Ok(())
}

#[test]
fn answers_names_on_shared_networks_and_forwards_the_rest() -> Result<()> {
    let world = World::new()?;
    let resolver = Resolver::new(vec![UPSTREAM.into()]);
    resolver.set_records(records());
    world.serve(&resolver, ID1, &world.c1)?;
    world.serve(&resolver, ID3, &world.c3)?;
    let (c1, c3) = (&world.c1, &world.c3);
    use RecordType::{A, AAAA, MX};
    use Via::{Tcp, Udp};
    let upstream = found(&[UPSTREAM_UDP_ANSWER.octets()]);
    check(&[
        (c1, "c2", A, Udp, found(&[[10, 89, 1, 2]])),
        (c1, "C2.", A, Udp, found(&[[10, 89, 1, 2]])),
        (c1, "db", A, Udp, found(&[[10, 89, 1, 2]])),
        (c1, &ID2[..12], A, Udp, found(&[[10, 89, 1, 2]])),
        (c1, "c1", A, Udp, found(&[[10, 89, 1, 1]])),
        (c1, &ID1[..12], A, Udp, found(&[[10, 89, 1, 1]])),
        // On "b" only: unknown to c1, so the upstream answers.
        (c1, "c3", A, Udp, upstream),
        (c1, "cache", A, Udp, found(&[UPSTREAM_UDP_ANSWER.octets()])),
        (
            c1,
            "example.com",
            A,
            Udp,
            found(&[UPSTREAM_UDP_ANSWER.octets()]),
        ),
        // On both networks: c1 sees its address on "a", c3 the one on "b".
        (c1, "c4", A, Udp, found(&[[10, 89, 1, 4]])),
        (c3, "c4", A, Udp, found(&[[10, 89, 2, 4]])),
        (c3, "cache", A, Udp, found(&[[10, 89, 2, 4]])),
        (c3, "c3", A, Udp, found(&[[10, 89, 2, 3]])),
        (c3, "c2", A, Udp, found(&[UPSTREAM_UDP_ANSWER.octets()])),
        // Known names have no other records.
        (c1, "c2", AAAA, Udp, found(&[])),
        (c1, "c2", MX, Tcp, found(&[])),
        (c1, "c2", A, Tcp, found(&[[10, 89, 1, 2]])),
        (c1, "c3", A, Tcp, found(&[UPSTREAM_UDP_ANSWER.octets()])),
        // Truncated over UDP: relayed as is to a UDP client, fetched whole for a TCP one.
        (
            c1,
            "www.big.example",
            A,
            Udp,
            Outcome {
                code: ResponseCode::NoError,
                truncated: true,
                ips: vec![],
            },
        ),
        (
            c1,
            "www.big.example",
            A,
            Tcp,
            found(&[UPSTREAM_TCP_ANSWER.octets()]),
        ),
    ])?;

    // Several queries on one connection.
    let requests = [query("c2", A)?, query("c3", A)?, query("c1", A)?];
    let bytes: Vec<Vec<u8>> = requests
        .iter()
        .map(Message::to_vec)
        .collect::<Result<_, _>>()?;
    let answers = exchange_tcp(c1, &bytes)?;
    let outcomes: Vec<Outcome> = requests
        .iter()
        .zip(&answers)
        .map(|(request, answer)| outcome(request, answer))
        .collect::<Result<_>>()?;
    assert_eq!(
        outcomes,
        [
            found(&[[10, 89, 1, 2]]),
            found(&[UPSTREAM_UDP_ANSWER.octets()]),
            found(&[[10, 89, 1, 1]]),
        ]
    );

    // Garbage: no header at all is ignored; a header without its question gets FORMERR.
    let ignored = exchange_udp(c1, b"\x01\x02\x03", Duration::from_millis(500));
    assert!(ignored.is_err(), "garbage answered: {ignored:?}");
    let formerr = exchange_udp(
        c1,
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00",
        Duration::from_secs(5),
    )?;
    let formerr = Message::from_vec(&formerr)?;
    assert_eq!(formerr.metadata.id, 0x1234);
    assert_eq!(formerr.metadata.response_code, ResponseCode::FormErr);
    // ...and the server lives on.
    check(&[(c1, "c2", A, Udp, found(&[[10, 89, 1, 2]]))])?;
    Ok(())
}

#[test]
fn follows_record_changes_restarts_and_stops() -> Result<()> {
    let world = World::new()?;
    let resolver = Resolver::new(vec![UPSTREAM.into()]);
    resolver.set_records(records());
    world.serve(&resolver, ID1, &world.c1)?;
    let c1 = &world.c1;
    use RecordType::A;
    use Via::{Tcp, Udp};
    check(&[(c1, "c2", A, Udp, found(&[[10, 89, 1, 2]]))])?;

    resolver.set_records(
        records()
            .into_iter()
            .filter(|r| r.container_id != ID2)
            .collect(),
    );
    check(&[
        (c1, "c2", A, Udp, found(&[UPSTREAM_UDP_ANSWER.octets()])),
        (c1, "c1", A, Udp, found(&[[10, 89, 1, 1]])),
    ])?;

    // Serving again replaces the server, which goes on answering.
    world.serve(&resolver, ID1, &world.c1)?;
    world.serve(&resolver, ID1, &world.c1)?;
    check(&[
        (c1, "c1", A, Udp, found(&[[10, 89, 1, 1]])),
        (c1, "c1", A, Tcp, found(&[[10, 89, 1, 1]])),
    ])?;

    resolver.stop(ID1);
    // The sockets close once the aborted tasks are dropped, shortly after.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match c1.run(|| TcpStream::connect_timeout(&SERVER.into(), Duration::from_secs(1))) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
            other if Instant::now() > deadline => bail!("still listening after stop: {other:?}"),
            _ => thread::sleep(Duration::from_millis(50)),
        }
    }
    let request = query("c1", A)?.to_vec()?;
    let answer = exchange_udp(c1, &request, Duration::from_millis(500));
    assert!(answer.is_err(), "answered after stop: {answer:?}");
    // Stopping what is not running is a no-op.
    resolver.stop(ID1);
    resolver.stop("nope");
    Ok(())
}

#[test]
fn upstreams_are_tried_in_order_and_their_failure_is_servfail() -> Result<()> {
    let world = World::new()?;
    let c1 = &world.c1;
    use RecordType::A;
    use Via::{Tcp, Udp};

    let none = Resolver::new(vec![]);
    none.set_records(records());
    world.serve(&none, ID1, c1)?;
    check(&[
        (c1, "c3", A, Udp, code(ResponseCode::ServFail)),
        (c1, "c3", A, Tcp, code(ResponseCode::ServFail)),
        (c1, "c2", A, Udp, found(&[[10, 89, 1, 2]])),
    ])?;
    none.stop(ID1);

    // A closed port (refused at once), then a silent address (times out), then the good one.
    let resolver = Resolver::new(vec![
        SocketAddr::from(([192, 0, 2, 53], 5353)),
        SocketAddr::from(([192, 0, 2, 99], 53)),
        UPSTREAM.into(),
    ]);
    resolver.set_records(records());
    // The stopped server's sockets may take a moment to close.
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = world.serve(&resolver, ID1, c1) {
        ensure!(Instant::now() < deadline, "serve: {e:#}");
        thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    check(&[(c1, "c3", A, Udp, found(&[UPSTREAM_UDP_ANSWER.octets()]))])?;
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "the silent upstream was not waited for"
    );
    Ok(())
}
