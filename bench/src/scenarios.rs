//! The scenarios of the bench, each a function that measures on the lab and pushes typed
//! samples: the published-port paths here (`programming`, `latency`, `udp`, `bulk`,
//! `restart`, `connrate`, `uplink-hook`), the flow scenarios in [`flows`].

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, SocketAddrV4, TcpStream},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use bpfbridge_lab::{Netns, check_stop, cmd, stop_requested, try_in_netns};
use serde::de::DeserializeOwned;

use crate::{
    lab::{EBPF, IPTABLES, Lab, UPLINK_HOOK_FLAG, command_in, stop_child},
    results::{
        ConnLoad, Connrate, CpuLoad, HookConnrate, Measurement, Path as BenchPath, Plan,
        Programming, ProgrammingOutcome, ProgrammingTimes, Restart, RestartVariant, Sample,
        Scenario, Sent, Udp,
    },
};

pub(crate) mod flows;

/// Host ports of the programming scenario.
const PROGRAM_BASE: u16 = 40000;

/// Runs one scenario; its samples go to `samples`, what the report should say to `notes`.
pub(crate) fn run(
    scenario: Scenario,
    lab: &mut Lab,
    plan: &Plan,
    samples: &mut Vec<Sample>,
    notes: &mut Vec<String>,
) -> Result<()> {
    match scenario {
        Scenario::Programming => programming(lab, plan, samples, notes),
        Scenario::Latency => per_path(lab, plan, samples, "latency", Measurement::Latency),
        Scenario::Udp => udp(lab, plan, samples),
        Scenario::Bulk => per_path(lab, plan, samples, "bulk", Measurement::Bulk),
        Scenario::Connrate => connrate(lab, plan, samples),
        Scenario::ConnrateIpv6 => connrate_ipv6(lab, plan, samples),
        Scenario::UplinkHook => uplink_hook(lab, plan, samples),
        Scenario::Restart => restart(lab, plan, samples),
        Scenario::EgressOne | Scenario::EgressMany => flows::egress(lab, plan, samples, scenario),
        Scenario::ConntrackScale => flows::conntrack_scale(lab, plan, samples, notes),
        Scenario::Flood => flows::flood(lab, plan, samples),
    }
}

/// Busy and total CPU time of the whole machine (/proc/stat, in USER_HZ ticks).
fn cpu_ticks() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

pub(crate) fn path_args(
    kind: &str,
    from: impl Into<IpAddr>,
    to: impl Into<SocketAddr>,
    seconds: f64,
) -> Vec<String> {
    let (from, to) = (from.into(), to.into());
    vec![
        kind.into(),
        "--from".into(),
        from.to_string(),
        "--to".into(),
        to.to_string(),
        "--seconds".into(),
        format!("{seconds}"),
    ]
}

/// The paths in a different order each repetition, so that drift hits every path alike.
pub(crate) fn rotation(rep: usize, paths: &[BenchPath]) -> Vec<BenchPath> {
    let mut order = paths.to_vec();
    order.rotate_left(rep % paths.len().max(1));
    order
}

/// Scenario `connrate`: new TCP connections per second through the published port with N
/// other mappings installed.
fn connrate(lab: &mut Lab, plan: &Plan, samples: &mut Vec<Sample>) -> Result<()> {
    for &n in &plan.other_mappings {
        for i in 0..lab.nodes.len() {
            lab.fill(i, n)?;
        }
        for rep in 0..plan.reps {
            for path in rotation(rep, &lab.paths()) {
                check_stop()?;
                let (from, to) = lab.path(path, true);
                let mut args = path_args("connrate", from, to, plan.connrate_seconds);
                args.extend(["--concurrency".into(), plan.concurrency.to_string()]);
                let load = with_cpu_per_connection(|| lab.client(&args, plan.connrate_seconds))?;
                eprintln!("bench: connrate n={n} {path}: {:.0}/s", load.load.rate);
                samples.push(Sample {
                    measurement: Measurement::Connrate(Connrate {
                        load,
                        other_mappings: n,
                    }),
                    dataplane: path,
                    rep,
                });
            }
        }
    }
    Ok(())
}

/// The paths `connrate-ipv6` measures: the agent nodes' published ports and `direct` (the
/// docker node is IPv4 only).
const IPV6_PATHS: [BenchPath; 3] = [BenchPath::Ebpf, BenchPath::Iptables, BenchPath::Direct];

/// Scenario `connrate-ipv6`: `connrate` over IPv6, from the world's IPv6 addresses to the
/// published port of a container on each agent node's dual-stack network, with N other
/// IPv6 mappings installed (the IPv4 ones of `connrate` are in other tables and chains).
fn connrate_ipv6(lab: &mut Lab, plan: &Plan, samples: &mut Vec<Sample>) -> Result<()> {
    for &n in &plan.other_mappings {
        for i in [EBPF, IPTABLES] {
            lab.fill6(i, n)?;
        }
        for rep in 0..plan.reps {
            for path in rotation(rep, &IPV6_PATHS) {
                check_stop()?;
                let (from, to) = lab.path6(path)?;
                let mut args = path_args("connrate", from, to, plan.connrate_seconds);
                args.extend(["--concurrency".into(), plan.concurrency.to_string()]);
                let load = with_cpu_per_connection(|| lab.client(&args, plan.connrate_seconds))?;
                eprintln!("bench: connrate-ipv6 n={n} {path}: {:.0}/s", load.load.rate);
                samples.push(Sample {
                    measurement: Measurement::ConnrateIpv6(Connrate {
                        load,
                        other_mappings: n,
                    }),
                    dataplane: path,
                    rep,
                });
            }
        }
    }
    Ok(())
}

/// The uplink hooks `uplink-hook` compares.
const HOOKS: [&str; 2] = ["xdp", "tc"];

/// How long a restarted agent may take before its published port answers.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Scenario `uplink-hook`: the uplink program's cost at XDP against TC, as conn-rate
/// through the ebpf node's published port, masquerade on as always. Each point restarts the
/// ebpf agent on fresh pins with `--uplink-hook` set; the hooks alternate, one first in one
/// repetition and the other in the next, so that drift hits both alike. The node ends on
/// the bench's settings again (XDP).
fn uplink_hook(lab: &mut Lab, plan: &Plan, samples: &mut Vec<Sample>) -> Result<()> {
    let other_mappings = lab.nodes[EBPF].filled;
    let mut measure = |lab: &mut Lab, rep: usize, hook: &str| -> Result<()> {
        check_stop()?;
        let hook_args = vec![UPLINK_HOOK_FLAG.to_string(), hook.to_string()];
        lab.nodes[EBPF].restart_fresh(hook_args)?;
        let (from, to) = lab.path(BenchPath::Ebpf, true);
        if wait_for(&lab.world.path(), to, true, ANSWER_WITHIN)?.is_none() {
            bail!("the published port did not answer on {hook} within {ANSWER_WITHIN:?}");
        }
        let mut args = path_args("connrate", from, to, plan.connrate_seconds);
        args.extend(["--concurrency".into(), plan.concurrency.to_string()]);
        let load = with_cpu_per_connection(|| lab.client(&args, plan.connrate_seconds))?;
        eprintln!("bench: uplink-hook {hook}: {:.0}/s", load.load.rate);
        samples.push(Sample {
            measurement: Measurement::UplinkHook(HookConnrate {
                load,
                hook: hook.to_string(),
                other_mappings,
            }),
            dataplane: BenchPath::Ebpf,
            rep,
        });
        Ok(())
    };
    let measured = (0..plan.reps).try_for_each(|rep| {
        let mut hooks = HOOKS;
        hooks.rotate_left(rep % HOOKS.len());
        hooks.iter().try_for_each(|hook| measure(lab, rep, hook))
    });
    let restored = lab.nodes[EBPF].restart_fresh(Vec::new());
    measured?;
    restored
}

/// Runs a conn-rate load and adds the CPU time of the whole machine per connection it made
/// (from /proc/stat: on veth the kernel work of a packet runs on the sending CPU).
pub(crate) fn with_cpu_per_connection(run: impl FnOnce() -> Result<ConnLoad>) -> Result<CpuLoad> {
    let (busy0, _) = cpu_ticks();
    let load = run()?;
    let (busy1, _) = cpu_ticks();
    let conns = load.connections as f64;
    let cpu_seconds = (busy1 - busy0) as f64 / ticks_per_second();
    Ok(CpuLoad {
        load,
        cpu_seconds,
        cpu_us_per_connection: if conns > 0.0 {
            cpu_seconds * 1e6 / conns
        } else {
            0.0
        },
    })
}

/// Scenarios `latency` and `bulk`: one load generator `kind` run per path and repetition,
/// its output the sample.
fn per_path<T: DeserializeOwned>(
    lab: &mut Lab,
    plan: &Plan,
    samples: &mut Vec<Sample>,
    kind: &str,
    measurement: fn(T) -> Measurement,
) -> Result<()> {
    for rep in 0..plan.reps {
        for path in rotation(rep, &lab.paths()) {
            check_stop()?;
            let (from, to) = lab.path(path, true);
            let load: T = lab.client(
                &path_args(kind, from, to, plan.short_seconds),
                plan.short_seconds,
            )?;
            samples.push(Sample {
                measurement: measurement(load),
                dataplane: path,
                rep,
            });
        }
    }
    Ok(())
}

/// UDP datagrams that reached the container's UDP layer (`InDatagrams + InErrors` of its
/// /proc/net/snmp: queued to the socket, or dropped there for want of buffer).
fn udp_arrived(netns: &Path) -> Result<u64> {
    udp_counters(netns, &["InDatagrams", "InErrors"])
}

/// The sum of counters `keys` of the `Udp:` lines of a namespace's /proc/net/snmp.
pub(crate) fn udp_counters(netns: &Path, keys: &[&str]) -> Result<u64> {
    let text = cmd::output(&mut command_in(netns, "cat", &["/proc/net/snmp"])?)?;
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (
        lines.next().context("Udp header")?,
        lines.next().context("Udp values")?,
    );
    let get = |key: &str| -> Option<u64> {
        let i = names.split_whitespace().position(|w| w == key)?;
        values.split_whitespace().nth(i)?.parse().ok()
    };
    Ok(keys.iter().map(|k| get(k).unwrap_or(0)).sum())
}

fn udp(lab: &mut Lab, plan: &Plan, samples: &mut Vec<Sample>) -> Result<()> {
    for rep in 0..plan.reps {
        for path in rotation(rep, &lab.paths()) {
            check_stop()?;
            let (from, to) = lab.path(path, false);
            let netns = lab.nodes[lab.path_node(path)]
                .bench_netns
                .clone()
                .context("bench netns")?;
            let before = udp_arrived(&netns)?;
            let mut args = path_args("udp", from, to, plan.short_seconds);
            args.extend(["--size".into(), "64".into(), "--senders".into(), "2".into()]);
            let sent: Sent = lab.client(&args, plan.short_seconds)?;
            thread::sleep(Duration::from_millis(200));
            let arrived = udp_arrived(&netns)? - before;
            let rate = arrived as f64 / sent.seconds;
            samples.push(Sample {
                measurement: Measurement::Udp(Udp {
                    sent,
                    arrived,
                    rate,
                }),
                dataplane: path,
                rep,
            });
        }
    }
    Ok(())
}

/// One exchange with the server behind `to`, from the world namespace.
fn answers(to: SocketAddrV4) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&to.into(), Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"C probe\n").is_err() {
        return false;
    }
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).is_ok() && answer == b"pong\n"
}

/// Polls from the world namespace until `to` answers (`open`) or stops answering.
fn wait_for(
    world: &Path,
    to: SocketAddrV4,
    open: bool,
    limit: Duration,
) -> Result<Option<Instant>> {
    try_in_netns(world, || {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if answers(to) == open {
                return Some(Instant::now());
            }
            if stop_requested() {
                return None;
            }
            thread::sleep(Duration::from_millis(2));
        }
        None
    })
}

/// Scenario `programming`: from the API call to traffic flowing through the last of N new
/// mappings, and from the removal call to the last one closing.
fn programming(
    lab: &mut Lab,
    plan: &Plan,
    samples: &mut Vec<Sample>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let world = lab.world.path();
    // Per node, the last point measured: N and the longer of its two times.
    let mut seen: Vec<Option<(usize, f64)>> = vec![None; lab.nodes.len()];
    for &n in &plan.programming_n {
        for (i, last_point) in seen.iter_mut().enumerate() {
            check_stop()?;
            let dataplane = lab.nodes[i].dataplane;
            // Skip what would blow the time budget, judging by the last point (growth
            // taken as N^1.5: every `-C` walks a longer chain).
            if let Some((prev_n, prev_s)) = *last_point {
                let estimate = prev_s * (n as f64 / prev_n as f64).powf(1.5);
                if estimate > plan.program_budget().as_secs_f64() {
                    let note = format!(
                        "programming N={n} on {dataplane}: not run, estimated {estimate:.0} s \
                         from N={prev_n} ({prev_s:.1} s), over the {} s budget",
                        plan.program_budget().as_secs()
                    );
                    eprintln!("bench: {note}");
                    notes.push(note);
                    samples.push(Sample {
                        measurement: Measurement::Programming(Programming {
                            n,
                            outcome: ProgrammingOutcome::Skipped {
                                skipped: true,
                                estimated_publish_seconds: estimate,
                            },
                        }),
                        dataplane,
                        rep: 0,
                    });
                    continue;
                }
            }
            let last = PROGRAM_BASE + n as u16 - 1;
            // An agent publishes into a namespace made beforehand, whose server listens
            // already. A docker container's namespace only exists once `docker run` has
            // returned: its server starts then, a few ms inside the measured time.
            let prog_ns = match lab.nodes[i].dockerd {
                Some(_) => None,
                None => Some(Netns::named(&format!("{}-prog", lab.prefix))?),
            };
            let mut server = match &prog_ns {
                Some(ns) => Some(lab.start_server(&ns.path(), last, None)?),
                None => None,
            };
            let node = &lab.nodes[i];
            let to = SocketAddrV4::new(node.node_ip, last);
            let range = format!("{PROGRAM_BASE}-{last}:{PROGRAM_BASE}-{last}");
            let limit = plan.program_budget() * 3;
            let t0 = Instant::now();
            let created = match &prog_ns {
                Some(ns) => node
                    .cli(
                        &[
                            "container",
                            "create",
                            "prog",
                            "--netns",
                            &ns.path().to_string_lossy(),
                            "-p",
                            &range,
                        ],
                        limit,
                    )
                    .map(|_| None),
                None => node
                    .create_container("prog", std::slice::from_ref(&range), limit)
                    .map(|(_, netns)| Some(netns)),
            };
            let api = t0.elapsed();
            let created = match created {
                Ok(Some(netns)) => lab.start_server(&netns, last, None).map(|s| {
                    server = Some(s);
                }),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            let ready = created.as_ref().ok().and_then(|_| {
                wait_for(&world, to, true, Duration::from_secs(10))
                    .ok()
                    .flatten()
            });
            let publish = ready.map(|t| t - t0);
            let t1 = Instant::now();
            let removed = node.remove_container("prog", limit);
            let rm_api = t1.elapsed();
            let gone = wait_for(&world, to, false, Duration::from_secs(10))?;
            let remove = gone.map(|t| t - t1);
            if let Some(server) = server {
                stop_child(server);
            }
            if let Some(ns) = prog_ns {
                let _ = ns.delete();
            }
            created.context("creating the programming container")?;
            removed.context("removing the programming container")?;
            let (Some(publish), Some(remove)) = (publish, remove) else {
                bail!(
                    "programming N={n} on {dataplane}: the last port never answered or never closed"
                );
            };
            eprintln!(
                "bench: programming N={n} {dataplane}: publish {:.3} s, remove {:.3} s",
                publish.as_secs_f64(),
                remove.as_secs_f64()
            );
            *last_point = Some((n, publish.as_secs_f64().max(remove.as_secs_f64())));
            samples.push(Sample {
                measurement: Measurement::Programming(Programming {
                    n,
                    outcome: ProgrammingOutcome::Measured(ProgrammingTimes {
                        publish_api_seconds: api.as_secs_f64(),
                        publish_seconds: publish.as_secs_f64(),
                        remove_api_seconds: rm_api.as_secs_f64(),
                        remove_seconds: remove.as_secs_f64(),
                    }),
                }),
                dataplane,
                rep: 0,
            });
        }
    }
    Ok(())
}

/// Scenario `restart`: connections that fail while the agent restarts under load; then,
/// given an agent of the previous map layout, while the ebpf node's agent is upgraded from
/// it to this build (which migrates the pinned maps).
fn restart(lab: &mut Lab, plan: &Plan, samples: &mut Vec<Sample>) -> Result<()> {
    for i in [EBPF, IPTABLES] {
        samples.push(restart_under_load(lab, plan, i, RestartVariant::Restart)?);
    }
    if let Some(previous) = lab.bins.upgrade_from.clone() {
        check_stop()?;
        // The previous build's agent, on pins of its own layout made from the node's records.
        lab.nodes[EBPF].restart_fresh_with(&previous)?;
        samples.push(restart_under_load(
            lab,
            plan,
            EBPF,
            RestartVariant::Upgrade,
        )?);
    }
    Ok(())
}

/// A conn-rate load on node `i`'s published port while its agent is stopped (SIGTERM) and
/// started again: the same binary, or this build's for an upgrade.
fn restart_under_load(
    lab: &mut Lab,
    plan: &Plan,
    i: usize,
    variant: RestartVariant,
) -> Result<Sample> {
    check_stop()?;
    let path = lab.nodes[i].dataplane;
    let (from, to) = lab.path(path, true);
    let mut args = path_args("connrate", from, to, plan.restart_seconds);
    args.extend(["--concurrency".into(), "4".into()]);
    let runner = lab.client_runner();
    let this_build = lab.bins.bpfbridge.clone();
    let ((down, back), load) = thread::scope(|scope| -> Result<_> {
        let load = scope.spawn(|| runner.run::<ConnLoad>(&args, plan.restart_seconds));
        thread::sleep(Duration::from_secs_f64(plan.restart_seconds / 4.0));
        let t = Instant::now();
        let node = &mut lab.nodes[i];
        node.stop_agent();
        let down = t.elapsed();
        // This build's agent on the bench's flags: on XDP as the restarted agents, not on
        // the `auto` hook (TC on this veth) it would take without `--uplink-hook`, whose
        // move off XDP under load is no part of an upgrade.
        if variant == RestartVariant::Upgrade {
            node.set_agent_bin(&this_build)?;
            node.set_bench_args()?;
        }
        node.start_agent()?;
        let back = t.elapsed();
        let v = load.join().map_err(|_| anyhow::anyhow!("load thread"))??;
        Ok(((down, back), v))
    })?;
    eprintln!("bench: {} {path}: {}", variant.name(), load.errors);
    Ok(Sample {
        measurement: Measurement::Restart(Restart {
            load,
            agent_stop_seconds: down.as_secs_f64(),
            agent_back_seconds: back.as_secs_f64(),
            variant,
        }),
        dataplane: path,
        rep: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_puts_every_path_first_once() {
        use BenchPath::*;
        let paths = [Ebpf, Iptables, Direct, Docker];
        let firsts: Vec<BenchPath> = (0..4).map(|r| rotation(r, &paths)[0]).collect();
        assert_eq!(firsts, paths);
        assert_eq!(rotation(1, &paths), [Iptables, Direct, Docker, Ebpf]);
    }
}
