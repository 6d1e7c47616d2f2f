//! Name resolution through the agent: containers on user-defined networks resolve each
//! other by name and alias at 127.0.0.11, never across networks; the default bridge has no
//! resolver, like Docker. Names keep resolving while the agent restarts (the DNS keeper
//! holds the sockets).

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::{Ipv4Addr, UdpSocket},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use bpfbridge_tests::{
    Agent, FakeUpstream, Netns, Topology, dns_lookup, enter_netns_on_this_thread, figures,
};
use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{Name, RecordType},
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(3);

fn ip(container: &Value, network: &str) -> Ipv4Addr {
    container["NetworkSettings"]["Networks"][network]["IPAddress"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn names_resolve_on_shared_networks_only() -> Result<()> {
    let topology = Topology::new()?;
    let _upstream = FakeUpstream::start(&topology.world, 5353)?;
    let mut agent = Agent::start_with(&topology, &["--dns", "198.51.100.2:5353"])?;
    for net in ["a", "b"] {
        let out = agent.cli(&["network", "create", net])?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (c1, c1_ns) = agent.create_container(&["c1", "--network", "a"])?;
    let (c2, _) = agent.create_container(&["c2", "--network", "a", "--alias", "api"])?;
    let (_, c3_ns) = agent.create_container(&["c3", "--network", "b"])?;
    let (c5, _) = agent.create_container(&["c5", "--network", "a", "--network", "b"])?;
    let (_, c4_ns) = agent.create_container(&["c4"])?;

    let c2_short = c2["Id"].as_str().unwrap()[..12].to_string();
    let cases: Vec<(&std::path::Path, &str, Option<Vec<Ipv4Addr>>)> = vec![
        (&c1_ns, "c2", Some(vec![ip(&c2, "a")])),
        (&c1_ns, "C2.", Some(vec![ip(&c2, "a")])),
        (&c1_ns, "api", Some(vec![ip(&c2, "a")])),
        (&c1_ns, &c2_short, Some(vec![ip(&c2, "a")])),
        (&c1_ns, "c1", Some(vec![ip(&c1, "a")])),
        (&c1_ns, "c5", Some(vec![ip(&c5, "a")])),
        (&c3_ns, "c5", Some(vec![ip(&c5, "b")])),
        // Across networks nothing is answered locally; the upstream says NXDOMAIN.
        (&c1_ns, "c3", None),
        (&c3_ns, "c1", None),
        (&c3_ns, "api", None),
        // The default bridge network's names are not served either.
        (&c1_ns, "c4", None),
    ];
    for (ns, name, expected) in &cases {
        assert_eq!(
            &dns_lookup(ns, name, WAIT)?,
            expected,
            "{name} from {}",
            ns.display()
        );
    }
    assert!(
        dns_lookup(&c4_ns, "c1", Duration::from_millis(500)).is_err(),
        "no resolver on the default bridge"
    );

    // Removal and restart: the view follows the records.
    assert!(agent.cli(&["container", "rm", "c2"])?.status.success());
    assert_eq!(dns_lookup(&c1_ns, "api", WAIT)?, None);
    agent.stop();
    agent.spawn()?;
    assert_eq!(dns_lookup(&c1_ns, "c5", WAIT)?, Some(vec![ip(&c5, "a")]));
    Ok(())
}

/// How a stub resolver waits (musl's, or glibc's with `options timeout:1 attempts:5`): the
/// query goes again after each second without an answer, and is given up after five.
const RETRY_AFTER: Duration = Duration::from_secs(1);
const GIVE_UP_AFTER: Duration = Duration::from_secs(5);
/// 100 queries/s.
const QUERY_INTERVAL: Duration = Duration::from_millis(10);
/// Bounds a query run whatever happens to the agent.
const LONGEST_RUN: Duration = Duration::from_secs(300);

/// What a run of [`query_steadily`] saw.
#[derive(Debug, Default)]
struct Queries {
    sent: u64,
    /// Answered with the expected address.
    answered: u64,
    /// No answer within [`GIVE_UP_AFTER`].
    failed: u64,
    /// Answered, but not with the expected address (NXDOMAIN from the upstream, say).
    wrong: u64,
    /// ICMP port unreachable came back: nothing listened at 127.0.0.11:53.
    refused: u64,
    /// Queries sent more than once before their answer.
    retransmitted: u64,
    /// From a query's first sending to its answer.
    longest_answer: Duration,
}

/// Asks 127.0.0.11, from `netns`, for `name`'s A record every 10 ms until `stop`, then
/// waits for the answers still due.
fn query_steadily(
    netns: &Path,
    name: &str,
    expected: Ipv4Addr,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Result<Queries>> {
    let netns = netns.to_path_buf();
    let mut fqdn = Name::from_ascii(name).unwrap();
    fqdn.set_fqdn(true);
    thread::spawn(move || {
        enter_netns_on_this_thread(&netns)?;
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        socket.connect((Ipv4Addr::new(127, 0, 0, 11), 53))?;
        struct Pending {
            bytes: Vec<u8>,
            first_sent: Instant,
            last_sent: Instant,
            retransmitted: bool,
        }
        let mut pending: HashMap<u16, Pending> = HashMap::new();
        let mut queries = Queries::default();
        let mut next_id: u16 = 0;
        let started = Instant::now();
        let mut next_send = started;
        let mut buf = vec![0; 4096];
        loop {
            ensure!(started.elapsed() < LONGEST_RUN, "query run over time");
            let stopping = stop.load(Ordering::Relaxed);
            if stopping && pending.is_empty() {
                return Ok(queries);
            }
            let now = Instant::now();
            if !stopping && now >= next_send {
                let mut query = Message::query();
                query.metadata.id = next_id;
                query.metadata.recursion_desired = true;
                query.add_query(Query::query(fqdn.clone(), RecordType::A));
                let bytes = query.to_vec()?;
                let _ = socket.send(&bytes);
                pending.insert(
                    next_id,
                    Pending {
                        bytes,
                        first_sent: now,
                        last_sent: now,
                        retransmitted: false,
                    },
                );
                next_id = next_id.wrapping_add(1);
                queries.sent += 1;
                next_send = (next_send + QUERY_INTERVAL).max(now);
            }
            pending.retain(|_, p| {
                if now - p.first_sent >= GIVE_UP_AFTER {
                    queries.failed += 1;
                    return false;
                }
                if now - p.last_sent >= RETRY_AFTER {
                    let _ = socket.send(&p.bytes);
                    p.last_sent = now;
                    p.retransmitted = true;
                }
                true
            });
            let wait = next_send.saturating_duration_since(Instant::now());
            socket.set_read_timeout(Some(
                wait.clamp(Duration::from_millis(1), Duration::from_millis(5)),
            ))?;
            let len = match socket.recv(&mut buf) {
                Ok(len) => len,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    queries.refused += 1;
                    continue;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let Ok(answer) = Message::from_vec(&buf[..len]) else {
                queries.wrong += 1;
                continue;
            };
            // A second answer to a retransmitted query finds nothing pending.
            let Some(query) = pending.remove(&answer.metadata.id) else {
                continue;
            };
            let addresses = bpfbridge_tests::a_records(&answer);
            if answer.metadata.response_code == ResponseCode::NoError && addresses == [expected] {
                queries.answered += 1;
                queries.longest_answer = queries.longest_answer.max(query.first_sent.elapsed());
                queries.retransmitted += u64::from(query.retransmitted);
            } else {
                queries.wrong += 1;
            }
        }
    })
}

/// The agent's DNS keeper, if one runs, and how many containers' sockets it holds: its
/// sockets that are not unix sockets of the node namespace (its listener and its connection
/// to the agent) are the UDP sockets and TCP listeners in containers' namespaces, two per
/// container.
fn keeper(agent: &Agent) -> Result<Option<(i32, usize)>> {
    let keepers = agent.dns_keepers();
    ensure!(keepers.len() <= 1, "several DNS keepers: {keepers:?}");
    if let Some(&pid) = keepers.first() {
        // Columns of /proc/net/unix: Num RefCount Protocol Flags Type St Inode [Path].
        let unix: HashSet<String> = fs::read_to_string(format!("/proc/{pid}/net/unix"))?
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(6).map(str::to_string))
            .collect();
        let mut held = 0;
        for fd in fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                && !unix.contains(inode)
            {
                held += 1;
            }
        }
        ensure!(held % 2 == 0, "the keeper holds {held} sockets, not pairs");
        return Ok(Some((pid, held / 2)));
    }
    Ok(None)
}

/// Waits up to 3 s for the keeper to hold `containers` containers' sockets (`None`: to be
/// gone).
fn wait_for_keeper(agent: &Agent, containers: Option<usize>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let seen = keeper(agent)?.map(|(_, held)| held);
        if seen == containers {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the DNS keeper holds {seen:?} containers' sockets, not {containers:?}; {}",
            agent.log_tail(20)
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Clone, Copy, Debug)]
enum Restart {
    /// SIGTERM, then start again.
    Term,
    /// SIGKILL, as a crash.
    Kill,
}

/// A container resolves another's name at 100 queries/s, as a stub resolver would, across
/// 10 restarts with SIGTERM and 10 with SIGKILL: every query is answered, with the right
/// address. The keeper follows the containers (and holds nothing once they are gone, when
/// it exits with the agent).
#[test]
fn names_resolve_through_agent_restarts() -> Result<()> {
    let topology = Topology::new()?;
    let _upstream = FakeUpstream::start(&topology.world, 5353)?;
    let mut agent = Agent::start_with(&topology, &["--dns", "198.51.100.2:5353"])?;
    assert!(agent.cli(&["network", "create", "a"])?.status.success());
    let (_, c1_ns) = agent.create_container(&["c1", "--network", "a"])?;
    let (c2, _) = agent.create_container(&["c2", "--network", "a"])?;
    let c2_ip = ip(&c2, "a");
    assert_eq!(dns_lookup(&c1_ns, "c2", WAIT)?, Some(vec![c2_ip]));
    wait_for_keeper(&agent, Some(2))?;

    let mut figures = serde_json::Map::new();
    let mut outcomes = Vec::new();
    for restart in [Restart::Term, Restart::Kill] {
        let stop = Arc::new(AtomicBool::new(false));
        let client = query_steadily(&c1_ns, "c2", c2_ip, stop.clone());
        let pause = Duration::from_millis(300);
        thread::sleep(pause);
        let mut longest_down = Duration::ZERO;
        let restarts = 10;
        for _ in 0..restarts {
            let down = Instant::now();
            match restart {
                Restart::Term => drop(agent.stop()),
                Restart::Kill => agent.kill(),
            }
            agent.spawn()?;
            longest_down = longest_down.max(down.elapsed());
            thread::sleep(pause);
        }
        stop.store(true, Ordering::Relaxed);
        let queries = client.join().expect("query thread")?;
        let how = match restart {
            Restart::Term => "sigterm",
            Restart::Kill => "sigkill",
        };
        eprintln!(
            "{how}: {restarts} restarts (longest {} ms until the API answered): {queries:?}",
            longest_down.as_millis()
        );
        figures.insert(
            how.into(),
            json!({
                "restarts": restarts,
                "queries_sent": queries.sent,
                "queries_failed": queries.failed + queries.wrong + queries.refused,
                "queries_retransmitted": queries.retransmitted,
                "longest_answer_ms": queries.longest_answer.as_millis() as u64,
                "longest_restart_ms": longest_down.as_millis() as u64,
            }),
        );
        outcomes.push((how, queries));
    }
    figures::record("dns_restart", Value::Object(figures))?;
    for (how, queries) in outcomes {
        assert_eq!(
            (queries.failed, queries.wrong, queries.refused),
            (0, 0, 0),
            "{how}: {queries:?}; {}",
            agent.log_tail(30)
        );
        assert_eq!(queries.answered, queries.sent, "{how}: {queries:?}");
    }

    // Containers made and removed after the restarts: the keeper follows.
    wait_for_keeper(&agent, Some(2))?;
    let (c3, _) = agent.create_container(&["c3", "--network", "a"])?;
    assert_eq!(dns_lookup(&c1_ns, "c3", WAIT)?, Some(vec![ip(&c3, "a")]));
    wait_for_keeper(&agent, Some(3))?;
    for name in ["c3", "c2", "c1"] {
        assert!(agent.cli(&["container", "rm", name])?.status.success());
    }
    wait_for_keeper(&agent, Some(0))?;
    // Stopped for good with nothing to keep: the keeper goes too.
    agent.stop();
    wait_for_keeper(&agent, None)?;
    Ok(())
}

/// Sockets handed back by the keeper that no container of the new agent claims (here: the
/// container's namespace was deleted while no agent ran) are closed, and said so.
#[test]
fn unclaimed_keeper_sockets_are_closed() -> Result<()> {
    let topology = Topology::new()?;
    let _upstream = FakeUpstream::start(&topology.world, 5353)?;
    let mut agent = Agent::start_with(&topology, &["--dns", "198.51.100.2:5353"])?;
    assert!(agent.cli(&["network", "create", "a"])?.status.success());
    let gone = Netns::new("gone")?;
    let gone_path = gone.path();
    let gone_path = gone_path.to_str().unwrap();
    agent.create_container(&["c1", "--network", "a", "--netns", gone_path])?;
    agent.create_container(&["c2", "--network", "a"])?;
    wait_for_keeper(&agent, Some(2))?;
    let (keeper_pid, _) = keeper(&agent)?.unwrap();
    agent.kill();
    drop(gone);
    agent.spawn()?;
    wait_for_keeper(&agent, Some(1))?;
    // The same keeper: the new agent adopted what it had.
    assert_eq!(keeper(&agent)?.map(|(pid, _)| pid), Some(keeper_pid));
    let log = agent.log();
    assert!(
        log.contains(
            "closing the DNS sockets the keeper held for a container this agent does not serve"
        ),
        "{}",
        agent.log_tail(30)
    );
    Ok(())
}
