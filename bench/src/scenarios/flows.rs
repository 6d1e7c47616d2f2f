//! The scenarios about flows and the tables that track them: `egress-one`, `egress-many`
//! (connections from a container to outside servers, through masquerade), `conntrack-scale`
//! (the agent's API with many flows in its table) and `flood` (live connections through a
//! SYN flood and a container filling the table).

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    os::unix::net::UnixStream,
    path::Path,
    process::{Child, ChildStdout, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use bpfbridge_lab::{Netns, check_stop, cmd, stop_requested, try_in_netns};
use serde_json::{Number, Value};

use super::{path_args, rotation, udp_counters, with_cpu_per_connection};
use crate::{
    lab::{
        ClientRunner, EBPF, IPTABLES, Lab, Node, OUTSIDE_CHECK, OUTSIDE_MANY, OUTSIDE_MANY_COUNT,
        OUTSIDE_ONE, OUTSIDE_PORT, PUBLISHED_TCP, command_in,
    },
    results::{
        ApiLatency, ConnLoad, ConntrackScale, Drops, Egress, Flood, Held, Measurement,
        Path as BenchPath, Plan, Sample, Scenario, Sent,
    },
};

/// Destination ports of conntrack-scale's UDP flows, on each of the egress-many addresses:
/// 64 x 16 destinations, so that no one destination's masquerade ports run short.
const FLOW_PORT: u16 = 10000;
const FLOW_PORTS: u16 = 16;

/// How fast conntrack-scale opens flows: quick to fill, slow enough for the default queue
/// lengths of the veths on the way (the sender tops up what was lost anyway).
const FLOW_RATE: u64 = 100_000;
/// The UDP idle timeout of the ebpf agent during conntrack-scale: longer than the scenario,
/// so that every flow opened is still in the table when the API is timed.
const SCALE_UDP_IDLE_SECONDS: u64 = 3600;
/// The ebpf agent's `--conntrack-max` during `flood`: small, so that a container fills it
/// cheaply.
pub(crate) const FLOOD_CONNTRACK_MAX: u64 = 16_384;
/// Its `--nat-flows-max`, the table a published port's new flows go into (sized from the
/// node's memory by default).
pub(crate) const FLOOD_NAT_FLOWS_MAX: u64 = 131_072;
/// SYNs of the full flood: twice 262,144 (issue 12's flood, the default NAT_FLOWS size on
/// small nodes), four times the flood's own NAT_FLOWS.
pub(crate) const FLOOD_SYNS: u64 = 2 * 262_144;
const FLOOD_RATE: u64 = 200_000;
/// The longest the flood's senders may take, whatever their rate: an iptables node slows
/// them (its work for each packet runs on the sender's CPU) to ~20,000 SYNs/s here.
const SENDERS_MAX: f64 = 40.0;
/// Live connections held through the flood, through the published port and to the outside.
pub(crate) const HELD: usize = 32;
/// The first flow number of the flood's UDP flows: past conntrack-scale's, so that they are
/// new to the kernel's conntrack too.
const FLOOD_FIRST_FLOW: u64 = 1 << 20;

impl Node {
    /// The agent's counters with "drop" in their name (`GET /stats`), or `None` when the
    /// agent does not answer in time.
    fn drop_counters(&self, timeout: Duration) -> Option<Drops> {
        let socket = &self.agent.as_ref()?.socket;
        let Ok(Api::Answer(_, stats)) = api_get(socket, "/stats", timeout) else {
            return None;
        };
        Some(
            stats
                .as_array()?
                .iter()
                .filter_map(|c| Some((c["Name"].as_str()?, c["Packets"].as_u64()?)))
                .filter(|(name, _)| name.contains("drop"))
                .map(|(name, packets)| (name.to_string(), packets))
                .collect(),
        )
    }
}

impl Lab {
    /// Checks that node `i`'s container `bench` reaches the outside server, which sees the
    /// node's address: egress leaves through the node's masquerade.
    fn check_masquerade(&self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let netns = node.bench_netns.as_ref().context("bench netns")?;
        let to = SocketAddrV4::new(node.outside(OUTSIDE_CHECK), OUTSIDE_PORT);
        let seen = try_in_netns(netns, || -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"W")?;
            let mut seen = String::new();
            s.read_to_string(&mut seen)?;
            Ok(seen)
        })?
        .with_context(|| format!("{}: the container cannot reach {to}", node.dataplane))?;
        ensure!(
            seen == node.node_ip.to_string(),
            "{}: the outside server sees {seen:?}, not the node's address {}: no masquerade",
            node.dataplane,
            node.node_ip
        );
        Ok(())
    }
}

/// Scenarios `egress-one` and `egress-many`: new TCP connections per second from every
/// node's container `bench` to `targets` outside servers (one after the other, per
/// connection), through the node's masquerade; connect, 1 request, 1 response, the server
/// closes first. With the failed connections, the CPU per connection and, from agents, the
/// drop counters that grew.
pub(super) fn egress(
    lab: &mut Lab,
    plan: &Plan,
    samples: &mut Vec<Sample>,
    scenario: Scenario,
) -> Result<()> {
    let targets = match scenario {
        Scenario::EgressOne => 1,
        _ => OUTSIDE_MANY_COUNT,
    };
    for i in 0..lab.nodes.len() {
        lab.check_masquerade(i)?;
    }
    let paths: Vec<BenchPath> = lab.nodes.iter().map(|n| n.dataplane).collect();
    for rep in 0..plan.egress_reps {
        for path in rotation(rep, &paths) {
            check_stop()?;
            let node = &lab.nodes[lab.path_node(path)];
            let from = node.bench_ip.context("bench address")?;
            let netns = node.bench_netns.clone().context("bench netns")?;
            let first = match targets {
                1 => node.outside(OUTSIDE_ONE),
                _ => node.outside(OUTSIDE_MANY),
            };
            let to = SocketAddrV4::new(first, OUTSIDE_PORT);
            let mut args = path_args("connrate", from, to, plan.egress_seconds);
            args.extend([
                "--concurrency".into(),
                plan.concurrency.to_string(),
                "--targets".into(),
                targets.to_string(),
            ]);
            let agent = node.dockerd.is_none();
            let before = agent
                .then(|| node.drop_counters(plan.api_timeout()))
                .flatten();
            let load =
                with_cpu_per_connection(|| lab.runner_in(&netns).run(&args, plan.egress_seconds))?;
            let after = agent
                .then(|| node.drop_counters(plan.api_timeout()))
                .flatten();
            let drops = before
                .zip(after)
                .map(|(before, after)| grown(&before, &after));
            let failed = load.load.errors.total();
            eprintln!(
                "bench: {scenario} {path}: {:.0}/s, {failed} failed",
                load.load.rate
            );
            let egress = Egress {
                load,
                drops,
                failed,
                targets,
            };
            samples.push(Sample {
                measurement: match scenario {
                    Scenario::EgressOne => Measurement::EgressOne(egress),
                    _ => Measurement::EgressMany(egress),
                },
                dataplane: path,
                rep,
            });
        }
    }
    Ok(())
}

/// Scenario `conntrack-scale`: the agent's API latency with many masqueraded flows in the
/// table, and what the agent says of its last cleanup pass.
///
/// The ebpf agent is restarted on fresh tables big enough for the largest point (a flow
/// takes two entries of its table today) and with a UDP idle timeout longer than the
/// scenario, so that every flow opened is still there when the API is timed. The container
/// `bench` opens UDP flows to the outside servers (one datagram each, from a raw socket) up
/// to each point, then a read-only call (`GET /networks`) is timed back to back. The iptables
/// node gets the same flows for comparison: its agent keeps no flow table, the kernel's
/// conntrack does (unreplied UDP lives 30 s there, so its count is read, not assumed).
pub(super) fn conntrack_scale(
    lab: &mut Lab,
    plan: &Plan,
    samples: &mut Vec<Sample>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let largest = plan.scale_flows.iter().copied().max().unwrap_or(0);
    let conntrack_max = 2 * largest + 65_536;
    let agent_args = [
        "--conntrack-max".into(),
        conntrack_max.to_string(),
        "--udp-idle-timeout".into(),
        SCALE_UDP_IDLE_SECONDS.to_string(),
    ];
    with_fresh_ebpf_agent(lab, agent_args.into(), |lab| {
        for i in [EBPF, IPTABLES] {
            scale_node(lab, plan, samples, i, conntrack_max)?;
        }
        Ok(())
    })?;
    let gc_known = samples.iter().any(
        |s| matches!(&s.measurement, Measurement::ConntrackScale(point) if point.gc.is_some()),
    );
    if !gc_known {
        notes.push(
            "conntrack-scale: the agent's `info` has no field about its flow-table cleanup \
             (GC) pass; its time is reported as n/a"
                .into(),
        );
    }
    Ok(())
}

/// The points of conntrack-scale on node `i`, in increasing order of flows.
fn scale_node(
    lab: &Lab,
    plan: &Plan,
    samples: &mut Vec<Sample>,
    i: usize,
    conntrack_max: u64,
) -> Result<()> {
    let node = &lab.nodes[i];
    let world = lab.world.path();
    let from = node.bench_ip.context("bench address")?;
    let netns = node.bench_netns.clone().context("bench netns")?;
    let to = SocketAddrV4::new(node.outside(OUTSIDE_MANY), FLOW_PORT);
    // Flows are numbered; `next` is the first not sent yet, `reached` how many arrived in the
    // world (nothing listens there: each one counts as a UDP NoPorts).
    let (mut next, mut reached) = (0u64, 0u64);
    for &target in &plan.scale_flows {
        check_stop()?;
        let t = Instant::now();
        let mut send_errors = 0u64;
        // A few rounds: what a full queue lost is sent again with new flows; a round that
        // gets almost nothing through means the table refuses, and ends the fill.
        for _ in 0..4 {
            if reached >= target {
                break;
            }
            let want = target - reached;
            let before = udp_counters(&world, &["NoPorts"])?;
            let seconds = (want as f64 / FLOW_RATE as f64) * 2.0 + 5.0;
            let args = udpflows_args(from, to, seconds, next, want);
            let sent: Sent = lab.runner_in(&netns).run(&args, seconds)?;
            send_errors += sent.send_errors;
            next += want;
            thread::sleep(Duration::from_millis(300));
            let got = udp_counters(&world, &["NoPorts"])?.saturating_sub(before);
            reached += got;
            if got < want / 100 {
                break;
            }
        }
        let fill_seconds = t.elapsed().as_secs_f64();
        let socket = &node.agent()?.socket;
        let api = api_latency(socket, plan.scale_window(), plan.api_timeout());
        let gc = match api_get(socket, "/info", plan.api_timeout()) {
            Ok(Api::Answer(_, info)) => Some(gc_fields(&info)).filter(|m| !m.is_empty()),
            _ => None,
        };
        // The kernel's own count, for the iptables node (its agent has no table).
        let kernel_count = (node.dataplane == BenchPath::Iptables)
            .then(|| nf_conntrack_count(&node.netns))
            .flatten();
        eprintln!(
            "bench: conntrack-scale {} flows={target} (reached {reached}): API p50 {:.1} ms, \
             p99 {:.1} ms, max {:.1} ms, {} timed out; gc {}",
            node.dataplane,
            api.p50_ms,
            api.p99_ms,
            api.max_ms,
            api.timeouts,
            gc.as_ref()
                .and_then(|g| serde_json::to_string(g).ok())
                .unwrap_or_else(|| "n/a".into()),
        );
        samples.push(Sample {
            measurement: Measurement::ConntrackScale(ConntrackScale {
                flows: target,
                flows_reached_world: reached,
                flows_sent: next,
                send_errors,
                kernel_conntrack_count: kernel_count,
                conntrack_max: (node.dataplane == BenchPath::Ebpf).then_some(conntrack_max),
                fill_seconds,
                api,
                gc,
            }),
            dataplane: node.dataplane,
            rep: 0,
        });
    }
    Ok(())
}

/// `bpfbridge-loadgen udpflows`: flows `first` to `first + count` from `from` to the
/// [`OUTSIDE_MANY_COUNT`] addresses from `to`'s and [`FLOW_PORTS`] ports from its port, at
/// [`FLOW_RATE`].
fn udpflows_args(
    from: Ipv4Addr,
    to: SocketAddrV4,
    seconds: f64,
    first: u64,
    count: u64,
) -> Vec<String> {
    let mut args = path_args("udpflows", from, to, seconds);
    args.extend([
        "--first".into(),
        first.to_string(),
        "--count".into(),
        count.to_string(),
        "--addrs".into(),
        OUTSIDE_MANY_COUNT.to_string(),
        "--ports".into(),
        FLOW_PORTS.to_string(),
        "--rate".into(),
        FLOW_RATE.to_string(),
    ]);
    args
}

/// `nf_conntrack_count` of a node namespace: the kernel's tracked connections there.
fn nf_conntrack_count(netns: &Netns) -> Option<u64> {
    let cat = ["/proc/sys/net/netfilter/nf_conntrack_count"];
    cmd::output(&mut command_in(&netns.path(), "cat", &cat).ok()?)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// An API answer, or how long the agent kept us waiting before the call was given up.
enum Api {
    Answer(Duration, Value),
    TimedOut(Duration),
}

/// `GET path` on an agent's API socket, within `timeout`. HTTP/1.0, so that the answer ends
/// when the agent closes the connection.
fn api_get(socket: &Path, path: &str, timeout: Duration) -> Result<Api> {
    let t = Instant::now();
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: bpfbridge\r\n\r\n")?;
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            return Ok(Api::TimedOut(t.elapsed()));
        }
        Err(e) => return Err(e).context(format!("GET {path}")),
    }
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path}: no HTTP answer"))?;
    ensure!(
        head.split_whitespace().nth(1) == Some("200"),
        "GET {path}: {}",
        head.lines().next().unwrap_or("")
    );
    let body = serde_json::from_str(body).with_context(|| format!("GET {path}: body"))?;
    Ok(Api::Answer(took, body))
}

/// Times `GET /networks` back to back (10 ms apart) for `window`: p50, p99 and max in ms.
/// A call that timed out counts with the time it was given up after (a lower bound).
fn api_latency(socket: &Path, window: Duration, timeout: Duration) -> ApiLatency {
    let (mut ms, mut timeouts, mut errors) = (Vec::new(), 0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < window && !stop_requested() {
        match api_get(socket, "/networks", timeout) {
            Ok(Api::Answer(took, _)) => ms.push(took.as_secs_f64() * 1e3),
            Ok(Api::TimedOut(took)) => {
                ms.push(took.as_secs_f64() * 1e3);
                timeouts += 1;
            }
            Err(_) => errors += 1,
        }
        thread::sleep(Duration::from_millis(10));
    }
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| -> f64 {
        match ms.len() {
            0 => 0.0,
            n => ms[((p / 100.0) * (n - 1) as f64).round() as usize],
        }
    };
    ApiLatency {
        calls: ms.len() as u64,
        p50_ms: at(50.0),
        p99_ms: at(99.0),
        max_ms: ms.last().copied().unwrap_or(0.0),
        timeouts,
        errors,
        timeout_ms: timeout.as_secs_f64() * 1e3,
    }
}

/// What the agent's `info` says of its flow-table cleanup, under whatever names it uses:
/// every number whose JSON path mentions "gc" or "expir" (in any case), by that path, e.g.
/// `{"Conntrack.LastGc.DurationMs": 12}`. Agents from before those fields give nothing.
fn gc_fields(info: &Value) -> BTreeMap<String, Number> {
    fn walk(v: &Value, path: &str, out: &mut BTreeMap<String, Number>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let path = match path {
                        "" => k.clone(),
                        _ => format!("{path}.{k}"),
                    };
                    walk(v, &path, out);
                }
            }
            Value::Number(n) => {
                let lower = path.to_lowercase();
                if lower.contains("gc") || lower.contains("expir") {
                    out.insert(path.to_string(), n.clone());
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk(info, "", &mut out);
    out
}

/// Scenario `flood`: live idle connections (through the published port from the world, and
/// from the container `bench` to an outside server) must survive a flood of spoofed SYNs to
/// the published port and the container opening unreplied UDP flows until the table is
/// full; new connections through the published port are counted meanwhile. The ebpf agent
/// runs on a fresh, small flow table for it.
pub(super) fn flood(lab: &mut Lab, plan: &Plan, samples: &mut Vec<Sample>) -> Result<()> {
    let agent_args = [
        "--conntrack-max".into(),
        FLOOD_CONNTRACK_MAX.to_string(),
        "--nat-flows-max".into(),
        FLOOD_NAT_FLOWS_MAX.to_string(),
    ];
    with_fresh_ebpf_agent(lab, agent_args.into(), |lab| {
        for i in 0..lab.nodes.len() {
            flood_node(lab, plan, samples, i)?;
        }
        Ok(())
    })
}

/// Runs `measure` with the ebpf agent restarted on fresh tables with `agent_args` (after
/// checking that egress still leaves through its masquerade), then restarts it on fresh
/// tables with the bench's settings, whatever happened.
fn with_fresh_ebpf_agent(
    lab: &mut Lab,
    agent_args: Vec<String>,
    measure: impl FnOnce(&Lab) -> Result<()>,
) -> Result<()> {
    lab.nodes[EBPF].restart_fresh(agent_args)?;
    let measured = lab.check_masquerade(EBPF).and_then(|()| measure(lab));
    let restored = lab.nodes[EBPF].restart_fresh(Vec::new());
    measured?;
    restored
}

/// Where a node's spoofed SYNs come from: addresses of another TEST-NET, off the node's
/// uplink subnet and above every world address (.128 up). The node sends its SYN-ACKs to
/// its default route, the world, which drops them (it forwards nothing).
fn spoofed_sources(node_ip: Ipv4Addr) -> Ipv4Addr {
    match node_ip.octets() {
        [198, 51, 100, _] => Ipv4Addr::new(203, 0, 113, 128),
        _ => Ipv4Addr::new(198, 51, 100, 128),
    }
}

fn flood_node(lab: &Lab, plan: &Plan, samples: &mut Vec<Sample>, i: usize) -> Result<()> {
    check_stop()?;
    let node = &lab.nodes[i];
    let kernel_before = (node.dataplane != BenchPath::Ebpf)
        .then(|| quiet_conntrack(lab))
        .flatten();
    let world = lab.client_runner();
    let container = lab.runner_in(node.bench_netns.as_ref().context("bench netns")?);
    let bench_ip = node.bench_ip.context("bench address")?;
    let published = SocketAddrV4::new(node.node_ip, PUBLISHED_TCP);
    let outside = SocketAddrV4::new(node.outside(OUTSIDE_ONE), OUTSIDE_PORT);
    // The new connections are counted while the flood should last at its rate; the senders
    // may take longer (the node's work for each packet runs on the sender's CPU).
    let flood_seconds = plan.flood_syns as f64 / FLOOD_RATE as f64 + 1.0;
    // After the senders' longest, and before the servers end an idle echo connection
    // (120 s).
    let hold_max = SENDERS_MAX + 15.0;
    let held_in = Holder::start(&world, node.client_ip, published, hold_max)?;
    let held_out = Holder::start(&container, bench_ip, outside, hold_max)?;
    let agent = node.dockerd.is_none();
    let before = agent
        .then(|| node.drop_counters(plan.api_timeout()))
        .flatten();
    let mut syn_args = path_args(
        "synflood",
        spoofed_sources(node.node_ip),
        published,
        SENDERS_MAX,
    );
    syn_args.extend([
        "--count".into(),
        plan.flood_syns.to_string(),
        "--sources".into(),
        "128".into(),
        "--rate".into(),
        FLOOD_RATE.to_string(),
    ]);
    let udp_count = 2 * FLOOD_CONNTRACK_MAX;
    let udp_args = udpflows_args(
        bench_ip,
        SocketAddrV4::new(node.outside(OUTSIDE_MANY), FLOW_PORT),
        SENDERS_MAX,
        FLOOD_FIRST_FLOW,
        udp_count,
    );
    let mut fresh_args = path_args("connrate", node.client_ip, published, flood_seconds);
    fresh_args.extend(["--concurrency".into(), "4".into()]);
    // The flood, the container filling the table and new connections, all at once.
    let (syn, udp, fresh) = thread::scope(|scope| {
        let syn = scope.spawn(|| world.run::<Sent>(&syn_args, SENDERS_MAX));
        let udp = scope.spawn(|| container.run::<Sent>(&udp_args, SENDERS_MAX));
        let fresh = scope.spawn(|| world.run::<ConnLoad>(&fresh_args, flood_seconds));
        fn join<T>(h: thread::ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
            h.join()
                .map_err(|_| anyhow::anyhow!("a flood thread panicked"))?
        }
        (join(syn), join(udp), join(fresh))
    });
    let (syn, udp, fresh) = (syn?, udp?, fresh?);
    let (held_in, held_out) = (held_in.check()?, held_out.check()?);
    let after = agent
        .then(|| node.drop_counters(plan.api_timeout()))
        .flatten();
    let held = held_in.opened + held_out.opened;
    let survived = held_in.survived + held_out.survived;
    eprintln!(
        "bench: flood {}: {survived} of {held} live connections survived; {:.0} new conn/s \
         during the flood, {} failed",
        node.dataplane, fresh.rate, fresh.errors
    );
    samples.push(Sample {
        measurement: Measurement::Flood(Flood {
            held,
            survived,
            kernel_conntrack_before: kernel_before,
            held_published: held_in,
            held_egress: held_out,
            syn_flood: syn,
            udp_flows: udp,
            new_connections: fresh,
            drops: before
                .zip(after)
                .map(|(before, after)| grown(&before, &after)),
        }),
        dataplane: node.dataplane,
        rep: 0,
    });
    Ok(())
}

/// Waits (at most 75 s) until the kernel conntrack tables of the iptables and docker nodes
/// hold fewer than 65,536 entries together, and returns that count. conntrack-scale and an
/// earlier flood leave them full (unreplied UDP lives 30 s, a SYN answered by the container
/// 60 s), and the flood's SYN sender then went from ~30,000 to ~2,000 a second here, on
/// either node (probably because the conntrack hash is shared by every namespace, and a
/// full table looks for an entry to evict before each new one).
fn quiet_conntrack(lab: &Lab) -> Option<u64> {
    let deadline = Instant::now() + Duration::from_secs(75);
    loop {
        let count = lab
            .nodes
            .iter()
            .filter(|n| n.dataplane != BenchPath::Ebpf)
            .map(|n| nf_conntrack_count(&n.netns))
            .sum::<Option<u64>>()?;
        if count < 65_536 || Instant::now() >= deadline || stop_requested() {
            return Some(count);
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// A `bpfbridge-loadgen hold` under way: [`HELD`] connections opened and now idle.
struct Holder {
    child: Child,
    stdout: BufReader<ChildStdout>,
    opened: u64,
}

impl Holder {
    fn start(runner: &ClientRunner, from: Ipv4Addr, to: SocketAddrV4, max: f64) -> Result<Self> {
        let mut args = path_args("hold", from, to, max);
        args.extend(["--count".into(), HELD.to_string()]);
        let mut child = cmd::spawn(
            runner
                .command(&args)?
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
        )?;
        let mut stdout = BufReader::new(child.stdout.take().context("hold stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let Held { opened, .. } =
            serde_json::from_str(line.trim()).with_context(|| format!("hold to {to}: {line:?}"))?;
        ensure!(opened > 0, "hold: no connection to {to} opened");
        Ok(Holder {
            child,
            stdout,
            opened,
        })
    }

    /// Tells the holder to check its connections: how many opened, and how many still carry
    /// data.
    fn check(mut self) -> Result<Held> {
        if let Some(mut stdin) = self.child.stdin.take() {
            // It may have given up waiting already; it checks then anyway.
            let _ = stdin.write_all(b"check\n");
        }
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let _ = self.child.wait();
        let checked: Held =
            serde_json::from_str(line.trim()).with_context(|| format!("hold: {line:?}"))?;
        Ok(Held {
            opened: self.opened,
            survived: checked.survived,
        })
    }
}

/// The counters of `after` that grew since `before`, by how much.
fn grown(before: &Drops, after: &Drops) -> Drops {
    after
        .iter()
        .filter_map(|(name, &n)| {
            let was = before.get(name).copied().unwrap_or(0);
            let delta = n.saturating_sub(was);
            (delta > 0).then(|| (name.clone(), delta))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spoofed_sources_are_off_the_node_subnet() {
        for node in [[198, 51, 100, 1], [203, 0, 113, 1], [192, 0, 2, 1]] {
            let src = spoofed_sources(Ipv4Addr::from(node)).octets();
            assert_ne!(src[..3], node[..3]);
            assert_eq!(src[3], 128);
        }
    }

    #[test]
    fn gc_fields_are_found_by_name_whatever_their_place() {
        let info = json!({
            "Version": "0.1",
            "Settings": {"UdpIdleTimeout": 30},
            "Conntrack": {"LastGc": {"DurationMs": 12.5, "Scanned": 1000, "Removed": 3}},
            "FlowExpiry": {"Seconds": 0.1},
        });
        let found = gc_fields(&info);
        assert_eq!(found.len(), 4, "{found:?}");
        assert_eq!(found["Conntrack.LastGc.DurationMs"].as_f64(), Some(12.5));
        assert_eq!(found["FlowExpiry.Seconds"].as_f64(), Some(0.1));
        assert!(gc_fields(&json!({"Version": "0.1", "Networks": 2})).is_empty());
    }
}
