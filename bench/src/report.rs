//! report.md and the PNG plots of `cargo xtask bench`, from its [`Results`].

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    path::Path,
};

use anyhow::{Context as _, Result};
use plotters::prelude::*;

use crate::results::{
    ApiLatency, BulkLoad, ConnErrors, Connrate, ConntrackScale, Drops, Egress, Flood, HookConnrate,
    LatencyLoad, Measurement, Mode, Path as BenchPath, Programming, ProgrammingTimes, Restart,
    RestartVariant, Results, Scenario, Udp,
};

use BenchPath::{Direct, Docker as DOCKER, Ebpf, Iptables};

const PATHS: [BenchPath; 3] = [Ebpf, Iptables, Direct];

/// The paths with samples in `results`: the three of every run, and docker when measured.
fn paths(results: &Results) -> Vec<BenchPath> {
    let mut paths = PATHS.to_vec();
    if results.samples.iter().any(|s| s.dataplane == DOCKER) {
        paths.push(DOCKER);
    }
    paths
}

/// The samples of one scenario, as `pick` finds them in a measurement, with their path.
fn points<'a, T: 'a>(
    results: &'a Results,
    pick: impl Fn(&'a Measurement) -> Option<&'a T> + 'a,
) -> impl Iterator<Item = (BenchPath, &'a T)> + 'a {
    results
        .samples
        .iter()
        .filter_map(move |s| Some((s.dataplane, pick(&s.measurement)?)))
}

/// Functions that find the measurement of one scenario in a sample's, for [`points`].
macro_rules! pickers {
    ($($name:ident: $variant:ident($ty:ty)),* $(,)?) => {$(
        fn $name(m: &Measurement) -> Option<&$ty> {
            match m {
                Measurement::$variant(x) => Some(x),
                _ => None,
            }
        }
    )*};
}

pickers! {
    connrate: Connrate(Connrate),
    connrate_ipv6: ConnrateIpv6(Connrate),
    uplink_hook: UplinkHook(HookConnrate),
    programming: Programming(Programming),
    latency: Latency(LatencyLoad),
    udp: Udp(Udp),
    bulk: Bulk(BulkLoad),
    restart: Restart(Restart),
    conntrack_scale: ConntrackScale(ConntrackScale),
    flood: Flood(Flood),
}

/// The egress measurements of scenario `sc` (egress-one or egress-many).
fn egress(sc: Scenario) -> impl Fn(&Measurement) -> Option<&Egress> {
    move |m| match m {
        Measurement::EgressOne(e) if sc == Scenario::EgressOne => Some(e),
        Measurement::EgressMany(e) if sc == Scenario::EgressMany => Some(e),
        _ => None,
    }
}

/// Median, minimum and maximum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub count: usize,
}

pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
        count: n,
    })
}

/// The spread of what `value` reads from the points of one path.
fn metric<'a, T: 'a>(
    points: impl Iterator<Item = (BenchPath, &'a T)>,
    dataplane: BenchPath,
    value: impl Fn(&T) -> Option<f64>,
) -> Option<Spread> {
    let values: Vec<f64> = points
        .filter(|(dp, _)| *dp == dataplane)
        .filter_map(|(_, t)| value(t))
        .collect();
    spread(&values)
}

fn fmt_spread(s: Option<Spread>, digits: usize) -> String {
    match s {
        Some(s) if s.count > 1 => {
            format!("{:.d$} [{:.d$}–{:.d$}]", s.median, s.min, s.max, d = digits)
        }
        Some(s) => format!("{:.d$}", s.median, d = digits),
        None => "—".into(),
    }
}

fn ratio(a: Option<Spread>, b: Option<Spread>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
        _ => None,
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}×")).unwrap_or_else(|| "—".into())
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

/// Writes report.md and the plots into `dir`.
pub fn write(results: &Results, dir: &Path) -> Result<()> {
    let mut md = String::new();
    let m = &results.machine;
    writeln!(md, "# bpfbridge benchmark ({} mode)\n", results.mode)?;
    writeln!(
        md,
        "Kernel {}, {} CPUs ({}), {}; {}; {}; commit {}{}. Run took {:.0} s.\n",
        m.kernel,
        m.cpus,
        m.cpu_model.as_deref().unwrap_or("?"),
        m.memory.as_deref().unwrap_or("?"),
        m.iptables,
        m.bpfbridge,
        m.git_commit,
        if m.git_dirty {
            " (with uncommitted changes)"
        } else {
            ""
        },
        results.duration_seconds,
    )?;
    writeln!(
        md,
        "Paths: **ebpf** = {}; **iptables** = {}; **direct** = {}. Values are medians \
         [min–max] over the repetitions; the paths are interleaved within each repetition. \
         Load generator pinned to CPU 0, server to CPU 1 (on veth the kernel work of a packet \
         runs on the sending CPU). Every sample is in results.json.\n",
        results.paths.ebpf, results.paths.iptables, results.paths.direct,
    )?;
    let docker = paths(results).contains(&DOCKER);
    if docker {
        writeln!(
            md,
            "**docker** = {}, dockerd {}.\n",
            results.paths.docker.as_deref().unwrap_or(""),
            m.dockerd.as_deref().unwrap_or("?"),
        )?;
    }

    // Connection rate, over IPv4 and over IPv6.
    let ns = connrate_ns(results, false);
    let rate = |dp: BenchPath, n: usize| conn_rate(results, false, dp, n);
    connrate_section(results, &mut md, false, docker)?;
    connrate_section(results, &mut md, true, false)?;

    // Programming time.
    let pns: BTreeSet<usize> = points(results, programming).map(|(_, p)| p.n).collect();
    let publish = |dp: BenchPath, n: usize| program_metric(results, dp, n, |t| t.publish_seconds);
    let remove = |dp: BenchPath, n: usize| program_metric(results, dp, n, |t| t.remove_seconds);
    if !pns.is_empty() {
        writeln!(
            md,
            "## Programming time (API call until the last of N mappings answers / stops answering)\n"
        )?;
        let (docker_head, docker_rule) = match docker {
            true => (
                " publish docker (s) | docker/ebpf | remove docker (s) | docker/ebpf |",
                "---|---|---|---|",
            ),
            false => ("", ""),
        };
        writeln!(
            md,
            "| N | publish ebpf (s) | publish iptables (s) | iptables/ebpf | remove ebpf (s) | remove iptables (s) | iptables/ebpf |{docker_head}"
        )?;
        writeln!(md, "|---|---|---|---|---|---|---|{docker_rule}")?;
        for &n in &pns {
            let (pe, pi) = (publish(Ebpf, n), publish(Iptables, n));
            let (re, ri) = (remove(Ebpf, n), remove(Iptables, n));
            let docker_cells = match docker {
                true => {
                    let (pd, rd) = (publish(DOCKER, n), remove(DOCKER, n));
                    format!(
                        " {} | {} | {} | {} |",
                        fmt_spread(pd, 3),
                        fmt_ratio(ratio(pd, pe)),
                        fmt_spread(rd, 3),
                        fmt_ratio(ratio(rd, re)),
                    )
                }
                false => String::new(),
            };
            writeln!(
                md,
                "| {n} | {} | {} | {} | {} | {} | {} |{docker_cells}",
                fmt_spread(pe, 3),
                fmt_spread(pi, 3),
                fmt_ratio(ratio(pi, pe)),
                fmt_spread(re, 3),
                fmt_spread(ri, 3),
                fmt_ratio(ratio(ri, re)),
            )?;
        }
        writeln!(md)?;
        writeln!(md, "![programming time](programming.png)\n")?;
    }

    // Latency.
    let lat = |dp: BenchPath, value: fn(&LatencyLoad) -> f64| {
        metric(points(results, latency), dp, |l| Some(value(l)))
    };
    let p99 = |dp: BenchPath| lat(dp, |l| l.p99_us);
    if points(results, latency).next().is_some() {
        writeln!(
            md,
            "## Latency (64-byte TCP request/response on one connection, µs)\n"
        )?;
        writeln!(md, "| path | p50 | p99 | p99.9 | p99 vs direct |")?;
        writeln!(md, "|---|---|---|---|---|")?;
        for dp in paths(results) {
            writeln!(
                md,
                "| {dp} | {} | {} | {} | {} |",
                fmt_spread(lat(dp, |l| l.p50_us), 1),
                fmt_spread(p99(dp), 1),
                fmt_spread(lat(dp, |l| l.p999_us), 1),
                fmt_ratio(ratio(p99(dp), p99(Direct))),
            )?;
        }
        writeln!(md, "\n![latency](latency.png)\n")?;
    }

    // UDP.
    let udp_rate = |dp: BenchPath| metric(points(results, udp), dp, |u| Some(u.rate));
    if points(results, udp).next().is_some() {
        writeln!(
            md,
            "## Small packets (UDP, 64-byte payloads, 2 sending threads; datagrams/s that reached the container)\n"
        )?;
        writeln!(md, "| path | datagrams/s | vs iptables | vs direct |")?;
        writeln!(md, "|---|---|---|---|")?;
        for dp in paths(results) {
            writeln!(
                md,
                "| {dp} | {} | {} | {} |",
                fmt_spread(udp_rate(dp), 0),
                fmt_ratio(ratio(udp_rate(dp), udp_rate(Iptables))),
                fmt_ratio(ratio(udp_rate(dp), udp_rate(Direct))),
            )?;
        }
        writeln!(md)?;
    }

    // Bulk.
    let gbits = |dp: BenchPath| metric(points(results, bulk), dp, |b| Some(b.gbit_per_s));
    if points(results, bulk).next().is_some() {
        writeln!(md, "## Bulk TCP (one connection, Gbit/s)\n")?;
        writeln!(md, "| path | Gbit/s | vs iptables | vs direct |")?;
        writeln!(md, "|---|---|---|---|")?;
        for dp in paths(results) {
            writeln!(
                md,
                "| {dp} | {} | {} | {} |",
                fmt_spread(gbits(dp), 2),
                fmt_ratio(ratio(gbits(dp), gbits(Iptables))),
                fmt_ratio(ratio(gbits(dp), gbits(Direct))),
            )?;
        }
        writeln!(md)?;
    }

    // Restart.
    let restarts: Vec<(BenchPath, &Restart)> = points(results, restart).collect();
    if !restarts.is_empty() {
        writeln!(
            md,
            "## Restart (the agent is stopped and started again under conn-rate load)\n"
        )?;
        writeln!(
            md,
            "| dataplane | agent | connections ok | refused | timed out | reset | other | agent back after (s) |"
        )?;
        writeln!(md, "|---|---|---|---|---|---|---|---|")?;
        for (dp, r) in &restarts {
            let ConnErrors {
                refused,
                timeout,
                reset,
                other,
            } = r.load.errors;
            writeln!(
                md,
                "| {dp} | {} | {} | {refused} | {timeout} | {reset} | {other} | {:.2} |",
                match r.variant {
                    RestartVariant::Restart => "restarted",
                    RestartVariant::Upgrade => "upgraded (map migration)",
                },
                r.load.connections,
                r.agent_back_seconds,
            )?;
        }
        writeln!(md)?;
    }

    hook_section(results, &mut md)?;
    egress_section(results, &mut md)?;
    scale_section(results, &mut md)?;
    flood_section(results, &mut md)?;

    // Targets.
    writeln!(md, "## Targets of the ebpf dataplane\n")?;
    writeln!(md, "| target | measured | |")?;
    writeln!(md, "|---|---|---|")?;
    let nmax = ns.iter().copied().max();
    let conn_vs_ipt = nmax.and_then(|n| ratio(rate(Ebpf, n), rate(Iptables, n)));
    let conn_vs_self = nmax.and_then(|n| ratio(rate(Ebpf, n), rate(Ebpf, 1)));
    let pmax = pns.iter().copied().max();
    let prog_e = pmax.and_then(|n| publish(Ebpf, n));
    // The ratio at the largest N both dataplanes were measured at.
    let pboth = pns
        .iter()
        .copied()
        .filter(|&n| publish(Iptables, n).is_some())
        .max();
    let prog_ratio = pboth.and_then(|n| ratio(publish(Iptables, n), publish(Ebpf, n)));
    let udp_ratio = ratio(udp_rate(Ebpf), udp_rate(Iptables));
    let lat_ratio = ratio(p99(Ebpf), p99(Direct));
    let bulk_ratio = ratio(gbits(Ebpf), gbits(Direct));
    let ebpf_errors = |variant: RestartVariant| -> Option<u64> {
        restarts
            .iter()
            .find(|(dp, r)| *dp == Ebpf && r.variant == variant)
            .map(|(_, r)| r.load.errors.total())
    };
    let restart_errors = ebpf_errors(RestartVariant::Restart);
    let upgrade_errors = ebpf_errors(RestartVariant::Upgrade);
    let mut rows: Vec<(String, String, Option<bool>)> = vec![
        (
            format!(
                "conn rate with {} other mappings ≥ 10× iptables",
                nmax.unwrap_or(0)
            ),
            fmt_ratio(conn_vs_ipt),
            conn_vs_ipt.map(|r| r >= 10.0),
        ),
        (
            format!(
                "conn rate with {} mappings within 10% of 1 mapping",
                nmax.unwrap_or(0)
            ),
            fmt_ratio(conn_vs_self),
            conn_vs_self.map(|r| r >= 0.9),
        ),
        (
            format!("{} mappings programmed in < 1 s", pmax.unwrap_or(0)),
            fmt_spread(prog_e, 3),
            prog_e.map(|s| s.median < 1.0),
        ),
        (
            format!(
                "programming ≥ 100× faster than iptables (N = {}, the largest both ran)",
                pboth.unwrap_or(0)
            ),
            fmt_ratio(prog_ratio),
            prog_ratio.map(|r| r >= 100.0),
        ),
        (
            "UDP 64-byte rate ≥ 2× iptables".into(),
            fmt_ratio(udp_ratio),
            udp_ratio.map(|r| r >= 2.0),
        ),
        (
            "latency p99 ≤ 1.05× direct".into(),
            fmt_ratio(lat_ratio),
            lat_ratio.map(|r| r <= 1.05),
        ),
        (
            "bulk ≥ 0.95× direct".into(),
            fmt_ratio(bulk_ratio),
            bulk_ratio.map(|r| r >= 0.95),
        ),
        (
            "restart: 0 failed connections".into(),
            restart_errors
                .map(|e| e.to_string())
                .unwrap_or_else(|| "—".into()),
            restart_errors.map(|e| e == 0),
        ),
    ];
    // Only runs that built an agent of the previous layout (not smoke runs) measure it.
    if let Some(errors) = upgrade_errors {
        rows.push((
            "upgrade across a map layout change: 0 failed connections".into(),
            errors.to_string(),
            Some(errors == 0),
        ));
    }
    rows.extend(ipv6_targets(results));
    rows.extend(flow_targets(results));
    for (target, measured, met) in rows {
        writeln!(md, "| {target} | {measured} | {} |", verdict(met))?;
    }
    writeln!(md, "\n## Notes\n")?;
    if results.mode != Mode::Full {
        writeln!(
            md,
            "- A {} run: the targets speak of 10,000 mappings, which only the full run (`cargo xtask bench`) installs.",
            results.mode
        )?;
    }
    writeln!(
        md,
        "- The other mappings of the conn-rate scenario are installed through the agent's API in ebpf mode; in iptables mode they are loaded by one `iptables-restore --noflush` of exactly the rules the iptables dataplane writes for a port (DNAT, ACCEPT, hairpin MASQUERADE), because programming them one `iptables` process at a time is what the programming scenario measures. The measured container is created last, so its rules are at the end of every chain (the worst case of the linear walk)."
    )?;
    writeln!(
        md,
        "- `direct` goes through the ebpf node: the XDP program parses the packet, finds no published port and passes it to the kernel, which routes it (no netfilter rule there)."
    )?;
    writeln!(
        md,
        "- Both agents run with masquerade on (`--ip-masq`'s default), as users run them; the egress scenarios need it, and the published-port paths do not go through it."
    )?;
    writeln!(
        md,
        "- Conntrack is not flushed between runs (the lab installs no conntrack tool); each path has its own client address."
    )?;
    writeln!(
        md,
        "- The restart scenario counts failed connections of the conn-rate client while the agent is stopped (SIGTERM) and started again; packets lost are not counted separately. Its upgrade variant (quick and full runs, and smoke runs given `--upgrade-from`) first runs the ebpf node on an agent of the previous map layout (built once from a fixed earlier commit into target/bench/upgrade-from), then stops it under the same load and starts this build's agent, which migrates the pinned maps."
    )?;
    if docker {
        writeln!(
            md,
            "- docker: dockerd runs with `--userland-proxy=false` (with the proxy it starts a docker-proxy process per published port) and the vfs storage driver. Its other conn-rate mappings are loaded like the iptables node's, by `iptables-restore` of the rules dockerd writes for a port; the programming scenario goes through `docker run -p RANGE` and `docker rm -f`, and its time includes starting the container (the server joins the container's namespace once `docker run` returns). The restart scenario does not cover dockerd: without `--live-restore` a restart stops the containers."
        )?;
    }
    for note in &results.notes {
        writeln!(md, "- {note}")?;
    }
    let plots = plots(results, dir);
    if let Err(e) = &plots {
        writeln!(md, "- No plots: {e:#}")?;
    }
    fs::write(dir.join("report.md"), md)?;
    Ok(())
}

/// The measurement of `connrate`, or (`ipv6`) of `connrate-ipv6`.
fn connrate_pick(ipv6: bool) -> fn(&Measurement) -> Option<&Connrate> {
    match ipv6 {
        false => connrate,
        true => connrate_ipv6,
    }
}

/// The numbers of other mappings a conn-rate scenario was measured with.
fn connrate_ns(results: &Results, ipv6: bool) -> BTreeSet<usize> {
    points(results, connrate_pick(ipv6))
        .map(|(_, c)| c.other_mappings)
        .collect()
}

/// One figure of a conn-rate scenario's points with `n` other mappings on one path.
fn conn_metric(
    results: &Results,
    ipv6: bool,
    dp: BenchPath,
    n: usize,
    value: fn(&Connrate) -> f64,
) -> Option<Spread> {
    metric(
        points(results, connrate_pick(ipv6)).filter(|(_, c)| c.other_mappings == n),
        dp,
        |c| Some(value(c)),
    )
}

/// The connection rate of a conn-rate scenario's points with `n` other mappings on one path.
fn conn_rate(results: &Results, ipv6: bool, dp: BenchPath, n: usize) -> Option<Spread> {
    conn_metric(results, ipv6, dp, n, |c| c.load.load.rate)
}

/// The table of a conn-rate scenario (`connrate`, or `connrate-ipv6`: no docker column, the
/// docker node being IPv4 only), and its plot.
fn connrate_section(results: &Results, md: &mut String, ipv6: bool, docker: bool) -> Result<()> {
    let ns = connrate_ns(results, ipv6);
    if ns.is_empty() {
        return Ok(());
    }
    let rate = |dp: BenchPath, n: usize| conn_rate(results, ipv6, dp, n);
    let cpu = |dp: BenchPath, n: usize| {
        conn_metric(results, ipv6, dp, n, |c| c.load.cpu_us_per_connection)
    };
    let plan = &results.plan;
    match ipv6 {
        false => writeln!(
            md,
            "## Connection rate (new TCP connections/s: connect, 1 request, 1 response, close)\n"
        )?,
        true => writeln!(
            md,
            "## Connection rate over IPv6 (the same load, from the world's IPv6 addresses)\n\n{}\n",
            results.paths.ipv6.as_deref().unwrap_or("")
        )?,
    }
    writeln!(
        md,
        "{:?} s per point, {} concurrent client threads.\n",
        plan.connrate_seconds, plan.concurrency
    )?;
    let (docker_head, docker_rule) = match docker {
        true => (
            " docker | ebpf/docker | CPU µs/conn docker |",
            "---|---|---|",
        ),
        false => ("", ""),
    };
    writeln!(
        md,
        "| other mappings | ebpf | iptables | direct | ebpf/iptables | ebpf/direct | CPU µs/conn ebpf | iptables | direct |{docker_head}"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|{docker_rule}")?;
    for &n in &ns {
        let (e, i, d) = (rate(Ebpf, n), rate(Iptables, n), rate(Direct, n));
        let docker_cells = match docker {
            true => format!(
                " {} | {} | {} |",
                fmt_spread(rate(DOCKER, n), 0),
                fmt_ratio(ratio(e, rate(DOCKER, n))),
                fmt_spread(cpu(DOCKER, n), 1),
            ),
            false => String::new(),
        };
        writeln!(
            md,
            "| {n} | {} | {} | {} | {} | {} | {} | {} | {} |{docker_cells}",
            fmt_spread(e, 0),
            fmt_spread(i, 0),
            fmt_spread(d, 0),
            fmt_ratio(ratio(e, i)),
            fmt_ratio(ratio(e, d)),
            fmt_spread(cpu(Ebpf, n), 1),
            fmt_spread(cpu(Iptables, n), 1),
            fmt_spread(cpu(Direct, n), 1),
        )?;
    }
    let errors: u64 = points(results, connrate_pick(ipv6))
        .map(|(_, c)| c.load.load.errors.total())
        .sum();
    let (what, plot) = match ipv6 {
        false => ("conn-rate", "connrate.png"),
        true => ("IPv6 conn-rate", "connrate_ipv6.png"),
    };
    writeln!(
        md,
        "\nFailed connections over all {what} samples: {errors}.\n"
    )?;
    writeln!(md, "![connection rate]({plot})\n")?;
    Ok(())
}

/// Issue 13's target for `connrate-ipv6`: the same ratios as IPv4, at the largest N both
/// scenarios ran, against iptables and against direct. "The same" is taken as not more
/// than 10% below the IPv4 ratio: a larger one keeps the advantage all the more.
fn ipv6_targets(results: &Results) -> Vec<(String, String, Option<bool>)> {
    let ns6 = connrate_ns(results, true);
    let Some(n) = connrate_ns(results, false)
        .intersection(&ns6)
        .copied()
        .max()
    else {
        return Vec::new();
    };
    [(Iptables, "iptables"), (Direct, "direct")]
        .into_iter()
        .map(|(other, name)| {
            let of = |ipv6: bool| {
                ratio(
                    conn_rate(results, ipv6, Ebpf, n),
                    conn_rate(results, ipv6, other, n),
                )
            };
            let (v4, v6) = (of(false), of(true));
            let relative = v4.zip(v6).map(|(v4, v6)| v6 / v4);
            (
                format!(
                    "IPv6 conn rate with {n} other mappings: ebpf/{name} ≥ 0.9× the IPv4 ratio"
                ),
                format!(
                    "{} (IPv4 {}; IPv6/IPv4 {})",
                    fmt_ratio(v6),
                    fmt_ratio(v4),
                    relative.map_or("—".into(), |r| format!("{r:.2}")),
                ),
                relative.map(|r| r >= 0.9),
            )
        })
        .collect()
}

/// The spread of one of the times of the programming points of N on one path (points
/// skipped for the time budget have none).
fn program_metric(
    results: &Results,
    dataplane: BenchPath,
    n: usize,
    value: fn(&ProgrammingTimes) -> f64,
) -> Option<Spread> {
    metric(
        points(results, programming).filter(|(_, p)| p.n == n),
        dataplane,
        |p| p.times().map(value),
    )
}

/// The egress scenarios and the paths they run on (every node; `direct` has no egress).
const EGRESS: [Scenario; 2] = [Scenario::EgressOne, Scenario::EgressMany];
const EGRESS_PATHS: [BenchPath; 3] = [Ebpf, Iptables, DOCKER];

/// Failed connections of a scenario's samples on one path, by kind, and in all.
fn failures(results: &Results, scenario: Scenario, dataplane: BenchPath) -> (ConnErrors, u64) {
    let mut sum = ConnErrors::default();
    for (_, e) in points(results, egress(scenario)).filter(|(dp, _)| *dp == dataplane) {
        let errors = e.load.load.errors;
        sum.refused += errors.refused;
        sum.timeout += errors.timeout;
        sum.reset += errors.reset;
        sum.other += errors.other;
    }
    (sum, sum.total())
}

/// The drop counters that grew during some samples, summed, as `name +N` (ebpf: its own
/// counters; `—` for others).
fn fmt_drops<'a>(drops: impl Iterator<Item = &'a Drops>) -> String {
    let mut sum: BTreeMap<&str, u64> = BTreeMap::new();
    for (name, n) in drops.flatten() {
        *sum.entry(name).or_default() += n;
    }
    match sum.is_empty() {
        true => "—".into(),
        false => sum
            .iter()
            .map(|(name, n)| format!("`{name}` +{n}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// XDP against TC on the ebpf node's uplink: conn-rate, CPU per connection, failures.
fn hook_section(results: &Results, md: &mut String) -> Result<()> {
    let hooks: Vec<&HookConnrate> = points(results, uplink_hook).map(|(_, h)| h).collect();
    let Some(first) = hooks.first() else {
        return Ok(());
    };
    writeln!(
        md,
        "## Uplink hook (new TCP connections/s through the ebpf node's published port, XDP against TC)
"
    )?;
    writeln!(
        md,
        "{:?} s per point, {} repetitions, {} client threads, {} other mappings, masquerade on; \
         the ebpf agent restarted on fresh pins with `--uplink-hook xdp` or `tc` before each \
         point, the hooks alternating which goes first. The world's TX offload is off, so XDP \
         is safe on the veth uplink. Failed connections are summed over all repetitions.\n",
        results.plan.connrate_seconds,
        results.plan.reps,
        results.plan.concurrency,
        first.other_mappings,
    )?;
    writeln!(md, "| hook | conn/s | vs XDP | CPU µs/conn | failed |")?;
    writeln!(md, "|---|---|---|---|---|")?;
    let spread_of = |hook: &str, value: fn(&HookConnrate) -> f64| {
        let values: Vec<f64> = hooks
            .iter()
            .filter(|h| h.hook == hook)
            .map(|h| value(h))
            .collect();
        spread(&values)
    };
    let xdp_rate = spread_of("xdp", |h| h.load.load.rate);
    for hook in ["xdp", "tc"] {
        let rate = spread_of(hook, |h| h.load.load.rate);
        let failed: u64 = hooks
            .iter()
            .filter(|h| h.hook == hook)
            .map(|h| h.load.load.errors.total())
            .sum();
        writeln!(
            md,
            "| {hook} | {} | {} | {} | {failed} |",
            fmt_spread(rate, 0),
            fmt_ratio(ratio(rate, xdp_rate)),
            fmt_spread(spread_of(hook, |h| h.load.cpu_us_per_connection), 1),
        )?;
    }
    writeln!(md)?;
    Ok(())
}

fn egress_section(results: &Results, md: &mut String) -> Result<()> {
    if !EGRESS
        .iter()
        .any(|&sc| points(results, egress(sc)).next().is_some())
    {
        return Ok(());
    }
    writeln!(
        md,
        "## Egress (new TCP connections/s from a container to outside servers, through masquerade)\n"
    )?;
    writeln!(
        md,
        "{:?} s per point, {} repetitions, {} client threads in the node's container `bench`: connect, 1 request, 1 response, the outside server closes first. egress-one: one server address; egress-many: 64, one after the other. Failed connections are summed over all repetitions.\n",
        results.plan.egress_seconds, results.plan.egress_reps, results.plan.concurrency
    )?;
    writeln!(
        md,
        "| scenario | path | conn/s | vs iptables | failed | refused / timed out / reset / other | CPU µs/conn | drop counters that grew |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|")?;
    for sc in EGRESS {
        let rate = |dp| metric(points(results, egress(sc)), dp, |e| Some(e.load.load.rate));
        for dp in EGRESS_PATHS {
            if points(results, egress(sc)).all(|(p, _)| p != dp) {
                continue;
            }
            let (errors, failed) = failures(results, sc, dp);
            let drops = points(results, egress(sc))
                .filter(|(p, _)| *p == dp)
                .filter_map(|(_, e)| e.drops.as_ref());
            writeln!(
                md,
                "| {sc} | {dp} | {} | {} | {failed} | {} / {} / {} / {} | {} | {} |",
                fmt_spread(rate(dp), 0),
                fmt_ratio(ratio(rate(dp), rate(Iptables))),
                errors.refused,
                errors.timeout,
                errors.reset,
                errors.other,
                fmt_spread(
                    metric(points(results, egress(sc)), dp, |e| Some(
                        e.load.cpu_us_per_connection
                    )),
                    1
                ),
                fmt_drops(drops),
            )?;
        }
    }
    writeln!(md)?;
    Ok(())
}

/// The flow counts conntrack-scale measured, in increasing order.
fn scale_points(results: &Results) -> BTreeSet<u64> {
    points(results, conntrack_scale)
        .map(|(_, c)| c.flows)
        .collect()
}

fn scale_sample(results: &Results, dataplane: BenchPath, flows: u64) -> Option<&ConntrackScale> {
    points(results, conntrack_scale)
        .find(|(dp, c)| *dp == dataplane && c.flows == flows)
        .map(|(_, c)| c)
}

/// The last cleanup pass as the agent's `info` described it, or n/a: the fields that say
/// "last" when there are such (the others are totals since the agent began), else all.
fn fmt_gc(gc: Option<&BTreeMap<String, serde_json::Number>>) -> String {
    let Some(fields) = gc.filter(|f| !f.is_empty()) else {
        return "n/a".into();
    };
    // Right after the agent started (smoke runs) the first pass may not have run.
    let no_pass = fields
        .iter()
        .any(|(k, v)| k.to_lowercase().ends_with("passes") && v.as_u64() == Some(0));
    if no_pass {
        return "no pass yet".into();
    }
    let last: Vec<_> = fields
        .iter()
        .filter(|(k, _)| k.to_lowercase().contains("last"))
        .collect();
    let shown = match last.is_empty() {
        true => fields.iter().collect(),
        false => last,
    };
    shown
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn scale_section(results: &Results, md: &mut String) -> Result<()> {
    let flow_counts = scale_points(results);
    if flow_counts.is_empty() {
        return Ok(());
    }
    writeln!(
        md,
        "## conntrack-scale (a read-only API call, `GET /networks`, with N masqueraded flows in the table)\n"
    )?;
    writeln!(
        md,
        "The container `bench` opens N UDP flows to outside addresses (one datagram each); then the call is timed back to back for {:?} s. A call is given up after {:?} s (its time then counts as that, a lower bound). The ebpf agent runs on a fresh table sized for the largest point, with a UDP idle timeout longer than the scenario; the iptables node's flows are in the kernel's conntrack (its agent keeps none; unreplied UDP lives 30 s there).\n",
        results.plan.scale_window_seconds, results.plan.api_timeout_seconds
    )?;
    writeln!(
        md,
        "| dataplane | flows | reached the world | kernel conntrack count | fill (s) | calls | p50 (ms) | p99 (ms) | max (ms) | timed out | last cleanup pass (agent's `info`) |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    for dp in [Ebpf, Iptables] {
        for &n in &flow_counts {
            let Some(s) = scale_sample(results, dp, n) else {
                continue;
            };
            let api = &s.api;
            writeln!(
                md,
                "| {dp} | {n} | {} | {} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
                s.flows_reached_world,
                s.kernel_conntrack_count
                    .map_or_else(|| "—".into(), |n| n.to_string()),
                s.fill_seconds,
                api.calls,
                api.p50_ms,
                api.p99_ms,
                api.max_ms,
                api.timeouts,
                fmt_gc(s.gc.as_ref()),
            )?;
        }
    }
    writeln!(md, "\n![conntrack-scale](conntrack_scale.png)\n")?;
    Ok(())
}

fn flood_section(results: &Results, md: &mut String) -> Result<()> {
    let floods: Vec<(BenchPath, &Flood)> = points(results, flood).collect();
    if floods.is_empty() {
        return Ok(());
    }
    let plan = &results.plan;
    writeln!(
        md,
        "## Flood (live connections through a SYN flood to the published port and a container filling the flow table)\n"
    )?;
    writeln!(
        md,
        "{} idle connections through the published port (from the world) and {} from the container `bench` to an outside server, then at once: {} SYNs from 128 spoofed sources to the published port, the container opening {} unreplied UDP flows (the ebpf agent runs with `--conntrack-max {} --nat-flows-max {}`), and 4 threads opening new connections through the published port. Then every live connection must echo data again. Before an iptables or docker node is flooded, the bench waits (at most 75 s) until the kernel conntrack tables of those nodes hold fewer than 65,536 entries together (conntrack-scale and an earlier flood fill them, which slows the SYN sender fifteenfold).\n",
        plan.flood_held_connections,
        plan.flood_held_connections,
        plan.flood_syns,
        plan.flood_conntrack_max * 2,
        plan.flood_conntrack_max,
        plan.flood_nat_flows_max,
    )?;
    writeln!(
        md,
        "| path | live connections survived (published / egress) | new conn/s during the flood | new connections failed | SYNs sent (s) | UDP flows sent | drop counters that grew |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|")?;
    for (dp, f) in &floods {
        let fresh = &f.new_connections;
        let drops = floods
            .iter()
            .filter(|(p, _)| p == dp)
            .filter_map(|(_, f)| f.drops.as_ref());
        writeln!(
            md,
            "| {dp} | {} of {} ({} / {}) | {:.0} | {} | {} ({:.1}) | {} | {} |",
            f.survived,
            f.held,
            f.held_published.survived,
            f.held_egress.survived,
            fresh.rate,
            fresh.errors.total(),
            f.syn_flood.sent,
            f.syn_flood.seconds,
            f.udp_flows.sent,
            fmt_drops(drops),
        )?;
    }
    writeln!(md)?;
    Ok(())
}

/// The targets of issue 12 that the egress, conntrack-scale and flood scenarios measure.
fn flow_targets(results: &Results) -> Vec<(String, String, Option<bool>)> {
    let rate = |sc, dp| metric(points(results, egress(sc)), dp, |e| Some(e.load.load.rate));
    let cpu = |sc, dp| {
        metric(points(results, egress(sc)), dp, |e| {
            Some(e.load.cpu_us_per_connection)
        })
    };
    let one = ratio(
        rate(Scenario::EgressOne, Ebpf),
        rate(Scenario::EgressOne, Iptables),
    );
    let many = ratio(
        rate(Scenario::EgressMany, Ebpf),
        rate(Scenario::EgressMany, Iptables),
    );
    let ran = points(results, egress(Scenario::EgressOne)).any(|(dp, _)| dp == Ebpf);
    let (_, failed) = failures(results, Scenario::EgressOne, Ebpf);
    let failed = ran.then_some(failed);
    let cpu_cell = |sc| {
        let (e, i) = (cpu(sc, Ebpf), cpu(sc, Iptables));
        let text = match (e, i) {
            (Some(e), Some(i)) => format!("{:.1} / {:.1} µs", e.median, i.median),
            _ => "—".into(),
        };
        (text, e.zip(i).map(|(e, i)| e.median <= i.median))
    };
    let (cpu_one, cpu_one_met) = cpu_cell(Scenario::EgressOne);
    let (cpu_many, cpu_many_met) = cpu_cell(Scenario::EgressMany);
    let largest = scale_points(results).last().copied();
    let api = largest
        .and_then(|n| scale_sample(results, Ebpf, n))
        .map(|s| &s.api);
    let p99_ms = api.map(|a| a.p99_ms);
    let max_ms = api.map(|a| a.max_ms);
    let flows = largest.unwrap_or(0);
    let flood = points(results, flood)
        .find(|(dp, _)| *dp == Ebpf)
        .map(|(_, f)| f);
    let survival = flood.map(|f| (f.survived, f.held));
    let fresh_rate = flood.map(|f| f.new_connections.rate);
    let fresh_failed = flood.map_or(0, |f| f.new_connections.errors.total());
    vec![
        (
            "egress-one ≥ 1.0× iptables".into(),
            fmt_ratio(one),
            one.map(|r| r >= 1.0),
        ),
        (
            "egress-one: 0 failed connections (ebpf, every repetition)".into(),
            failed.map_or_else(|| "—".into(), |f| f.to_string()),
            failed.map(|f| f == 0),
        ),
        (
            "egress-many ≥ 1.2× iptables".into(),
            fmt_ratio(many),
            many.map(|r| r >= 1.2),
        ),
        (
            "egress-one CPU per connection ≤ iptables (ebpf / iptables)".into(),
            cpu_one,
            cpu_one_met,
        ),
        (
            "egress-many CPU per connection ≤ iptables (ebpf / iptables)".into(),
            cpu_many,
            cpu_many_met,
        ),
        (
            format!("conntrack-scale: API p99 ≤ 20 ms with {flows} flows (262,144 in the target)"),
            p99_ms.map_or_else(|| "—".into(), |v| format!("{v:.1} ms")),
            p99_ms.map(|v| v <= 20.0),
        ),
        (
            format!("conntrack-scale: API max ≤ 100 ms with {flows} flows (262,144 in the target)"),
            max_ms.map_or_else(|| "—".into(), |v| format!("{v:.1} ms")),
            max_ms.map(|v| v <= 100.0),
        ),
        (
            "flood: 100% of live connections survive (ebpf)".into(),
            survival.map_or_else(|| "—".into(), |(s, h)| format!("{s} of {h}")),
            survival.map(|(s, h)| s == h),
        ),
        (
            "flood: new connections keep succeeding (ebpf, rate during the flood, none failed)"
                .into(),
            fresh_rate.map_or_else(
                || "—".into(),
                |r| format!("{r:.0}/s, {fresh_failed} failed"),
            ),
            fresh_rate.map(|r| r > 0.0 && fresh_failed == 0),
        ),
    ]
}

/// Registers DejaVu Sans for the plots' text, if the machine has it.
fn font() -> Result<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        ]
        .iter()
        .find_map(|p| fs::read(p).ok())
        .map(|bytes| {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        })
        .unwrap_or(false)
    });
    anyhow::ensure!(
        ok,
        "no DejaVuSans.ttf for the plots' text (apt-get install fonts-dejavu-core)"
    );
    Ok(())
}

fn color(dp: BenchPath) -> RGBColor {
    match dp {
        Ebpf => RGBColor(0x1f, 0x77, 0xb4),
        Iptables => RGBColor(0xd6, 0x27, 0x28),
        DOCKER => RGBColor(0x94, 0x67, 0xbd),
        Direct => RGBColor(0x2c, 0xa0, 0x2c),
    }
}

type Series = Vec<(String, RGBColor, Vec<(f64, f64)>)>;

/// One number read from a measurement, for a plot's series.
type Reading<T> = fn(&T) -> f64;

/// A line plot with a log-scale x axis.
fn line_plot(
    path: &Path,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &Series,
    log_y: bool,
) -> Result<()> {
    let points = series.iter().flat_map(|s| s.2.iter());
    let (mut xmax, mut ymax, mut ymin) = (1.0f64, 0.0f64, f64::MAX);
    for &(x, y) in points {
        xmax = xmax.max(x);
        ymax = ymax.max(y);
        ymin = ymin.min(y);
    }
    if ymax <= 0.0 {
        return Ok(());
    }
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(80);
    let x_range = (0.8f64..xmax * 1.25).log_scale();
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(xlabel)
                .y_desc(ylabel)
                .label_style(("sans-serif", 14))
                .draw()?;
            for (name, c, pts) in series {
                let c = *c;
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                    });
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()?;
        }};
    }
    if log_y {
        draw!(builder.build_cartesian_2d(x_range, (ymin.max(1e-4) / 2.0..ymax * 2.0).log_scale())?);
    } else {
        draw!(builder.build_cartesian_2d(x_range, 0.0..ymax * 1.15)?);
    }
    root.present()?;
    Ok(())
}

fn plots(results: &Results, dir: &Path) -> Result<()> {
    font()?;
    for (ipv6, file, title) in [
        (
            false,
            "connrate.png",
            "New TCP connections/s through the published port",
        ),
        (
            true,
            "connrate_ipv6.png",
            "New TCP connections/s through the published port, over IPv6",
        ),
    ] {
        let ns = connrate_ns(results, ipv6);
        if ns.is_empty() {
            continue;
        }
        let series: Series = paths(results)
            .into_iter()
            .map(|dp| {
                let pts = ns
                    .iter()
                    .filter_map(|&n| conn_rate(results, ipv6, dp, n).map(|s| (n as f64, s.median)))
                    .collect();
                (dp.to_string(), color(dp), pts)
            })
            .filter(|(_, _, pts): &(String, RGBColor, Vec<(f64, f64)>)| !pts.is_empty())
            .collect();
        line_plot(
            &dir.join(file),
            title,
            "other published mappings installed",
            "connections/s (median)",
            &series,
            false,
        )
        .context(file)?;
    }

    let pns: BTreeSet<usize> = points(results, programming).map(|(_, p)| p.n).collect();
    let mut series: Series = Vec::new();
    let programmed: Vec<BenchPath> = paths(results)
        .into_iter()
        .filter(|dp| *dp != Direct)
        .collect();
    for dp in programmed {
        let times: [(Reading<ProgrammingTimes>, &str); 2] = [
            (|t| t.publish_seconds, "publish"),
            (|t| t.remove_seconds, "remove"),
        ];
        for (value, what) in times {
            let pts = pns
                .iter()
                .filter_map(|&n| {
                    program_metric(results, dp, n, value).map(|s| (n as f64, s.median))
                })
                .collect();
            let mut c = color(dp);
            if what == "remove" {
                c = paler(c);
            }
            series.push((format!("{dp} {what}"), c, pts));
        }
    }
    line_plot(
        &dir.join("programming.png"),
        "Programming time: API call until the last mapping answers (or stops)",
        "mappings (N)",
        "seconds",
        &series,
        true,
    )
    .context("programming.png")?;

    let flow_counts = scale_points(results);
    let series: Series = [Ebpf, Iptables]
        .iter()
        .flat_map(|&dp| {
            let api_ms: [(Reading<ApiLatency>, &str); 2] =
                [(|a| a.p99_ms, "p99"), (|a| a.max_ms, "max")];
            api_ms.map(|(value, what)| {
                let pts = flow_counts
                    .iter()
                    .filter_map(|&n| Some((n as f64, value(&scale_sample(results, dp, n)?.api))))
                    .collect();
                let mut c = color(dp);
                if what == "max" {
                    c = paler(c);
                }
                (format!("{dp} {what}"), c, pts)
            })
        })
        .collect();
    line_plot(
        &dir.join("conntrack_scale.png"),
        "Read-only API call (GET /networks) with N flows in the table",
        "flows in the table (N)",
        "ms",
        &series,
        true,
    )
    .context("conntrack_scale.png")?;

    // Latency percentiles: x = 50, 99, 99.9 as "nines" positions 1, 2, 3.
    let percentiles: [(Reading<LatencyLoad>, f64); 3] = [
        (|l| l.p50_us, 1.0),
        (|l| l.p99_us, 10.0),
        (|l| l.p999_us, 100.0),
    ];
    let series: Series = paths(results)
        .into_iter()
        .map(|dp| {
            let pts = percentiles
                .iter()
                .filter_map(|(value, x)| {
                    metric(points(results, latency), dp, |l| Some(value(l))).map(|s| (*x, s.median))
                })
                .collect();
            (dp.to_string(), color(dp), pts)
        })
        .collect();
    line_plot(
        &dir.join("latency.png"),
        "TCP request/response latency (1 = p50, 10 = p99, 100 = p99.9)",
        "percentile",
        "µs (median over repetitions)",
        &series,
        false,
    )
    .context("latency.png")?;
    Ok(())
}

/// The paler colour of a path's second series (remove, max).
fn paler(c: RGBColor) -> RGBColor {
    RGBColor(c.0 / 2 + 0x60, c.1 / 2 + 0x60, c.2 / 2 + 0x60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{
        ApiLatency, ConnLoad, CpuLoad, Held, Machine, PathDescriptions, Plan, ProgrammingOutcome,
        Sample, Sent,
    };

    #[test]
    fn spread_is_median_min_max() {
        let s = spread(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.count), (2.5, 1.0, 10.0, 4));
        assert!(spread(&[]).is_none());
    }

    fn results(mode: Mode, plan: Plan, samples: Vec<(BenchPath, Measurement)>) -> Results {
        Results {
            mode,
            duration_seconds: 1.0,
            plan,
            machine: Machine {
                kernel: "6.x".into(),
                cpus: 2,
                ..Machine::default()
            },
            samples: samples
                .into_iter()
                .map(|(dataplane, measurement)| Sample {
                    measurement,
                    dataplane,
                    rep: 0,
                })
                .collect(),
            ..Results::default()
        }
    }

    fn load(rate: f64, errors: ConnErrors) -> ConnLoad {
        ConnLoad {
            rate,
            errors,
            ..ConnLoad::default()
        }
    }

    fn cpu_load(rate: f64, cpu_us_per_connection: f64, errors: ConnErrors) -> CpuLoad {
        CpuLoad {
            load: load(rate, errors),
            cpu_us_per_connection,
            ..CpuLoad::default()
        }
    }

    fn connrate_point(other_mappings: usize, rate: f64, errors: ConnErrors) -> Measurement {
        Measurement::Connrate(Connrate {
            load: cpu_load(rate, 0.0, errors),
            other_mappings,
        })
    }

    fn programming_point(n: usize, publish_seconds: f64, remove_seconds: f64) -> Measurement {
        Measurement::Programming(Programming {
            n,
            outcome: ProgrammingOutcome::Measured(ProgrammingTimes {
                publish_seconds,
                remove_seconds,
                ..ProgrammingTimes::default()
            }),
        })
    }

    fn timeouts(timeout: u64) -> ConnErrors {
        ConnErrors {
            timeout,
            ..ConnErrors::default()
        }
    }

    fn report(results: &Results) -> String {
        let dir = tempfile::tempdir().unwrap();
        write(results, dir.path()).unwrap();
        fs::read_to_string(dir.path().join("report.md")).unwrap()
    }

    #[test]
    fn the_uplink_hooks_side_by_side() {
        let hook = |hook: &str, rate: f64, cpu: f64, errors: ConnErrors| {
            (
                Ebpf,
                Measurement::UplinkHook(HookConnrate {
                    load: cpu_load(rate, cpu, errors),
                    hook: hook.into(),
                    other_mappings: 1000,
                }),
            )
        };
        let results = results(
            Mode::Quick,
            Plan::default(),
            vec![
                hook("xdp", 4000.0, 50.0, ConnErrors::default()),
                hook("tc", 3000.0, 60.0, timeouts(2)),
                hook("xdp", 5000.0, 40.0, ConnErrors::default()),
            ],
        );
        let md = report(&results);
        assert!(md.contains("## Uplink hook"), "{md}");
        assert!(
            md.contains("| xdp | 4500 [4000–5000] | 1.00× | 45.0 [40.0–50.0] | 0 |"),
            "{md}"
        );
        assert!(md.contains("| tc | 3000 | 0.67× | 60.0 | 2 |"), "{md}");
    }

    #[test]
    fn ipv6_connrate_beside_ipv4_with_its_target() {
        let v6 = |rate: f64| {
            Measurement::ConnrateIpv6(Connrate {
                load: cpu_load(rate, 0.0, ConnErrors::default()),
                other_mappings: 100,
            })
        };
        let none = ConnErrors::default;
        let mut results = results(
            Mode::Quick,
            Plan::default(),
            vec![
                (Ebpf, connrate_point(100, 300.0, none())),
                (Iptables, connrate_point(100, 100.0, none())),
                (Direct, connrate_point(100, 300.0, none())),
                (Ebpf, v6(280.0)),
                (Iptables, v6(100.0)),
                (Direct, v6(400.0)),
            ],
        );
        results.paths.ipv6 = Some("the IPv6 paths".into());
        let md = report(&results);
        assert!(md.contains("## Connection rate over IPv6"), "{md}");
        assert!(md.contains("the IPv6 paths"), "{md}");
        assert!(
            md.contains("| 100 | 280 | 100 | 400 | 2.80× | 0.70× |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| IPv6 conn rate with 100 other mappings: ebpf/iptables ≥ 0.9× the IPv4 ratio | 2.80× (IPv4 3.00×; IPv6/IPv4 0.93) | met |"
            ),
            "{md}"
        );
        assert!(
            md.contains("ebpf/direct ≥ 0.9× the IPv4 ratio | 0.70× (IPv4 1.00×; IPv6/IPv4 0.70) | **missed** |"),
            "{md}"
        );
    }

    #[test]
    fn report_from_a_small_result() {
        let plan = Plan {
            connrate_seconds: 1.0,
            concurrency: 1,
            ..Plan::default()
        };
        let mut results = results(
            Mode::Smoke,
            plan,
            vec![
                (Ebpf, connrate_point(1, 100.0, ConnErrors::default())),
                (
                    Iptables,
                    connrate_point(
                        1,
                        50.0,
                        ConnErrors {
                            reset: 1,
                            ..ConnErrors::default()
                        },
                    ),
                ),
                (Ebpf, programming_point(10, 0.01, 0.01)),
                (
                    Direct,
                    Measurement::Latency(LatencyLoad {
                        p50_us: 10.0,
                        p99_us: 20.0,
                        p999_us: 30.0,
                        ..LatencyLoad::default()
                    }),
                ),
            ],
        );
        results.notes = vec!["a note".into()];
        let md = report(&results);
        assert!(md.contains("| 1 | 100 | 50 | — | 2.00× |"), "{md}");
        assert!(md.contains("Failed connections over all conn-rate samples: 1."));
        assert!(md.contains("a note"));
        assert!(
            !md.contains("docker"),
            "no docker column without docker samples"
        );
    }

    #[test]
    fn flow_scenarios_side_by_side_with_their_targets() {
        let plan = Plan {
            egress_seconds: 10.0,
            egress_reps: 1,
            concurrency: 16,
            scale_window_seconds: 3.0,
            api_timeout_seconds: 10.0,
            flood_syns: 100,
            flood_conntrack_max: 16,
            flood_held_connections: 32,
            ..Plan::default()
        };
        let egress = |rate, cpu, errors, drops: Option<Drops>| Egress {
            load: cpu_load(rate, cpu, errors),
            drops,
            ..Egress::default()
        };
        let nat_exhausted = Drops::from([("container_ingress.drop.nat_exhausted".into(), 7)]);
        let results = results(
            Mode::Quick,
            plan,
            vec![
                (
                    Ebpf,
                    Measurement::EgressOne(egress(
                        400.0,
                        900.0,
                        timeouts(150),
                        Some(nat_exhausted),
                    )),
                ),
                (
                    Iptables,
                    Measurement::EgressOne(egress(4000.0, 200.0, timeouts(0), None)),
                ),
                (
                    Ebpf,
                    Measurement::EgressMany(egress(6000.0, 100.0, timeouts(0), None)),
                ),
                (
                    Iptables,
                    Measurement::EgressMany(egress(4000.0, 200.0, timeouts(0), None)),
                ),
                (
                    Ebpf,
                    Measurement::ConntrackScale(ConntrackScale {
                        flows: 262144,
                        flows_reached_world: 262144,
                        fill_seconds: 3.0,
                        api: ApiLatency {
                            calls: 1,
                            p50_ms: 10000.0,
                            p99_ms: 10000.0,
                            max_ms: 10000.0,
                            timeouts: 1,
                            ..ApiLatency::default()
                        },
                        gc: Some(BTreeMap::from([(
                            "Conntrack.LastGc.DurationMs".into(),
                            12.into(),
                        )])),
                        ..ConntrackScale::default()
                    }),
                ),
                (
                    Ebpf,
                    Measurement::Flood(Flood {
                        held: 64,
                        survived: 64,
                        held_published: Held {
                            opened: 32,
                            survived: 32,
                        },
                        held_egress: Held {
                            opened: 32,
                            survived: 32,
                        },
                        syn_flood: Sent {
                            sent: 100,
                            seconds: 1.0,
                            ..Sent::default()
                        },
                        udp_flows: Sent {
                            sent: 32,
                            ..Sent::default()
                        },
                        new_connections: load(1000.0, timeouts(2)),
                        ..Flood::default()
                    }),
                ),
            ],
        );
        let md = report(&results);
        assert!(
            md.contains("| egress-one | ebpf | 400 | 0.10× | 150 | 0 / 150 / 0 / 0 | 900.0 | `container_ingress.drop.nat_exhausted` +7 |"),
            "{md}"
        );
        assert!(
            md.contains("| egress-many ≥ 1.2× iptables | 1.50× | met |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| egress-one: 0 failed connections (ebpf, every repetition) | 150 | **missed** |"
            ),
            "{md}"
        );
        assert!(md.contains("Conntrack.LastGc.DurationMs = 12"), "{md}");
        assert!(md.contains("API p99 ≤ 20 ms with 262144 flows (262,144 in the target) | 10000.0 ms | **missed** |"), "{md}");
        assert!(
            md.contains("| ebpf | 64 of 64 (32 / 32) | 1000 | 2 |"),
            "{md}"
        );
        assert!(
            md.contains("| flood: 100% of live connections survive (ebpf) | 64 of 64 | met |"),
            "{md}"
        );
        assert!(md.contains("| 1000/s, 2 failed | **missed** |"), "{md}");
    }

    #[test]
    fn docker_columns_when_docker_was_measured() {
        let plan = Plan {
            connrate_seconds: 1.0,
            concurrency: 1,
            ..Plan::default()
        };
        let mut results = results(
            Mode::Quick,
            plan,
            vec![
                (Ebpf, connrate_point(1, 100.0, ConnErrors::default())),
                (DOCKER, connrate_point(1, 40.0, ConnErrors::default())),
                (Ebpf, programming_point(10, 0.01, 0.01)),
                (DOCKER, programming_point(10, 1.0, 0.5)),
                (
                    DOCKER,
                    Measurement::Udp(Udp {
                        rate: 1000.0,
                        ..Udp::default()
                    }),
                ),
            ],
        );
        results.machine.dockerd = Some("Docker version 20.10.24".into());
        results.paths = PathDescriptions {
            docker: Some("to dockerd".into()),
            ..PathDescriptions::default()
        };
        let md = report(&results);
        assert!(
            md.contains("**docker** = to dockerd, dockerd Docker version 20.10.24"),
            "{md}"
        );
        assert!(
            md.contains("| 40 | 2.50× |"),
            "conn rate and ebpf/docker: {md}"
        );
        assert!(
            md.contains("| 1.000 | 100.00× | 0.500 | 50.00× |"),
            "programming: {md}"
        );
        assert!(md.contains("| docker | 1000 |"), "UDP row: {md}");
    }
}
