//! report.md and the PNG plots of `cargo xtask bench`, from its results.json.

use std::{collections::BTreeSet, fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, Result};
use plotters::prelude::*;
use serde_json::Value;

const PATHS: [&str; 3] = ["ebpf", "iptables", "direct"];
/// The path through real Docker, measured with `--with-docker`.
const DOCKER: &str = "docker";

/// The paths with samples in `results`: the three of every run, and docker when measured.
fn paths(results: &Value) -> Vec<&'static str> {
    let mut paths = PATHS.to_vec();
    let sampled = |dp: &str| {
        results["samples"]
            .as_array()
            .is_some_and(|all| all.iter().any(|s| s["dataplane"] == dp))
    };
    if sampled(DOCKER) {
        paths.push(DOCKER);
    }
    paths
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

fn samples<'a>(results: &'a Value, scenario: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    results["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |s| s["scenario"] == scenario)
}

fn metric(
    results: &Value,
    scenario: &str,
    dataplane: &str,
    key: &str,
    filter: impl Fn(&Value) -> bool,
) -> Option<Spread> {
    let values: Vec<f64> = samples(results, scenario)
        .filter(|s| s["dataplane"] == dataplane && filter(s))
        .filter_map(|s| s[key].as_f64())
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
pub fn write(results: &Value, dir: &Path) -> Result<()> {
    let mut md = String::new();
    let m = &results["machine"];
    writeln!(
        md,
        "# bpfbridge benchmark ({} mode)\n",
        results["mode"].as_str().unwrap_or("?")
    )?;
    writeln!(
        md,
        "Kernel {}, {} CPUs ({}), {}; {}; {}; commit {}{}. Run took {:.0} s.\n",
        m["kernel"].as_str().unwrap_or("?"),
        m["cpus"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["memory"].as_str().unwrap_or("?"),
        m["iptables"].as_str().unwrap_or("?"),
        m["bpfbridge"].as_str().unwrap_or("?"),
        m["git_commit"].as_str().unwrap_or("?"),
        if m["git_dirty"] == true {
            " (with uncommitted changes)"
        } else {
            ""
        },
        results["duration_seconds"].as_f64().unwrap_or(0.0),
    )?;
    writeln!(
        md,
        "Paths: **ebpf** = {}; **iptables** = {}; **direct** = {}. Values are medians \
         [min–max] over the repetitions; the paths are interleaved within each repetition. \
         Load generator pinned to CPU 0, server to CPU 1 (on veth the kernel work of a packet \
         runs on the sending CPU). Every sample is in results.json.\n",
        results["paths"]["ebpf"].as_str().unwrap_or(""),
        results["paths"]["iptables"].as_str().unwrap_or(""),
        results["paths"]["direct"].as_str().unwrap_or(""),
    )?;
    let docker = paths(results).contains(&DOCKER);
    if docker {
        writeln!(
            md,
            "**docker** = {}, dockerd {}.\n",
            results["paths"]["docker"].as_str().unwrap_or(""),
            results["machine"]["dockerd"].as_str().unwrap_or("?"),
        )?;
    }

    // Connection rate.
    let ns: BTreeSet<u64> = samples(results, "connrate")
        .filter_map(|s| s["other_mappings"].as_u64())
        .collect();
    let rate = |dp: &str, n: u64| {
        metric(results, "connrate", dp, "rate", |s| {
            s["other_mappings"] == n
        })
    };
    let cpu = |dp: &str, n: u64| {
        metric(results, "connrate", dp, "cpu_us_per_connection", |s| {
            s["other_mappings"] == n
        })
    };
    if !ns.is_empty() {
        writeln!(
            md,
            "## Connection rate (new TCP connections/s: connect, 1 request, 1 response, close)\n"
        )?;
        writeln!(
            md,
            "{} s per point, {} concurrent client threads.\n",
            results["plan"]["connrate_seconds"], results["plan"]["concurrency"]
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
            let (e, i, d) = (rate("ebpf", n), rate("iptables", n), rate("direct", n));
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
                fmt_spread(cpu("ebpf", n), 1),
                fmt_spread(cpu("iptables", n), 1),
                fmt_spread(cpu("direct", n), 1),
            )?;
        }
        let errors: u64 = samples(results, "connrate")
            .map(|s| {
                ["refused", "timeout", "reset", "other"]
                    .iter()
                    .filter_map(|k| s["errors"][k].as_u64())
                    .sum::<u64>()
            })
            .sum();
        writeln!(
            md,
            "\nFailed connections over all conn-rate samples: {errors}.\n"
        )?;
        writeln!(md, "![connection rate](connrate.png)\n")?;
    }

    // Programming time.
    let pns: BTreeSet<u64> = samples(results, "programming")
        .filter_map(|s| s["n"].as_u64())
        .collect();
    let prog =
        |dp: &str, n: u64, key: &str| metric(results, "programming", dp, key, |s| s["n"] == n);
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
            let (pe, pi) = (
                prog("ebpf", n, "publish_seconds"),
                prog("iptables", n, "publish_seconds"),
            );
            let (re, ri) = (
                prog("ebpf", n, "remove_seconds"),
                prog("iptables", n, "remove_seconds"),
            );
            let docker_cells = match docker {
                true => {
                    let (pd, rd) = (
                        prog(DOCKER, n, "publish_seconds"),
                        prog(DOCKER, n, "remove_seconds"),
                    );
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
    let lat = |dp: &str, key: &str| metric(results, "latency", dp, key, |_| true);
    if samples(results, "latency").next().is_some() {
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
                fmt_spread(lat(dp, "p50_us"), 1),
                fmt_spread(lat(dp, "p99_us"), 1),
                fmt_spread(lat(dp, "p999_us"), 1),
                fmt_ratio(ratio(lat(dp, "p99_us"), lat("direct", "p99_us"))),
            )?;
        }
        writeln!(md, "\n![latency](latency.png)\n")?;
    }

    // UDP.
    let udp = |dp: &str| metric(results, "udp", dp, "rate", |_| true);
    if samples(results, "udp").next().is_some() {
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
                fmt_spread(udp(dp), 0),
                fmt_ratio(ratio(udp(dp), udp("iptables"))),
                fmt_ratio(ratio(udp(dp), udp("direct"))),
            )?;
        }
        writeln!(md)?;
    }

    // Bulk.
    let bulk = |dp: &str| metric(results, "bulk", dp, "gbit_per_s", |_| true);
    if samples(results, "bulk").next().is_some() {
        writeln!(md, "## Bulk TCP (one connection, Gbit/s)\n")?;
        writeln!(md, "| path | Gbit/s | vs iptables | vs direct |")?;
        writeln!(md, "|---|---|---|---|")?;
        for dp in paths(results) {
            writeln!(
                md,
                "| {dp} | {} | {} | {} |",
                fmt_spread(bulk(dp), 2),
                fmt_ratio(ratio(bulk(dp), bulk("iptables"))),
                fmt_ratio(ratio(bulk(dp), bulk("direct"))),
            )?;
        }
        writeln!(md)?;
    }

    // Restart.
    let restarts: Vec<&Value> = samples(results, "restart").collect();
    if !restarts.is_empty() {
        writeln!(
            md,
            "## Restart (the agent is stopped and started again under conn-rate load)\n"
        )?;
        writeln!(
            md,
            "| dataplane | connections ok | refused | timed out | reset | other | agent back after (s) |"
        )?;
        writeln!(md, "|---|---|---|---|---|---|---|")?;
        for s in &restarts {
            writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {:.2} |",
                s["dataplane"].as_str().unwrap_or("?"),
                s["connections"],
                s["errors"]["refused"],
                s["errors"]["timeout"],
                s["errors"]["reset"],
                s["errors"]["other"],
                s["agent_back_seconds"].as_f64().unwrap_or(0.0),
            )?;
        }
        writeln!(md)?;
    }

    egress_section(results, &mut md)?;
    scale_section(results, &mut md)?;
    flood_section(results, &mut md)?;

    // Targets.
    writeln!(md, "## Targets of the ebpf dataplane\n")?;
    writeln!(md, "| target | measured | |")?;
    writeln!(md, "|---|---|---|")?;
    let nmax = ns.iter().copied().max();
    let conn_vs_ipt = nmax.and_then(|n| ratio(rate("ebpf", n), rate("iptables", n)));
    let conn_vs_self = nmax.and_then(|n| ratio(rate("ebpf", n), rate("ebpf", 1)));
    let pmax = pns.iter().copied().max();
    let prog_e = pmax.and_then(|n| prog("ebpf", n, "publish_seconds"));
    // The ratio at the largest N both dataplanes were measured at.
    let pboth = pns
        .iter()
        .copied()
        .filter(|&n| prog("iptables", n, "publish_seconds").is_some())
        .max();
    let prog_ratio = pboth.and_then(|n| {
        ratio(
            prog("iptables", n, "publish_seconds"),
            prog("ebpf", n, "publish_seconds"),
        )
    });
    let udp_ratio = ratio(udp("ebpf"), udp("iptables"));
    let lat_ratio = ratio(lat("ebpf", "p99_us"), lat("direct", "p99_us"));
    let bulk_ratio = ratio(bulk("ebpf"), bulk("direct"));
    let restart_errors: Option<u64> = restarts.iter().find(|s| s["dataplane"] == "ebpf").map(|s| {
        ["refused", "timeout", "reset", "other"]
            .iter()
            .filter_map(|k| s["errors"][k].as_u64())
            .sum()
    });
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
    rows.extend(flow_targets(results));
    for (target, measured, met) in rows {
        writeln!(md, "| {target} | {measured} | {} |", verdict(met))?;
    }
    let notes: Vec<&str> = results["notes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mode = results["mode"].as_str().unwrap_or("");
    writeln!(md, "\n## Notes\n")?;
    if mode != "full" {
        writeln!(
            md,
            "- A {mode} run: the targets speak of 10,000 mappings, which only the full run (`cargo xtask bench`) installs."
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
        "- The restart scenario counts failed connections of the conn-rate client while the agent is stopped (SIGTERM) and started again; packets lost are not counted separately."
    )?;
    if docker {
        writeln!(
            md,
            "- docker: dockerd runs with `--userland-proxy=false` (with the proxy it starts a docker-proxy process per published port) and the vfs storage driver. Its other conn-rate mappings are loaded like the iptables node's, by `iptables-restore` of the rules dockerd writes for a port; the programming scenario goes through `docker run -p RANGE` and `docker rm -f`, and its time includes starting the container (the server joins the container's namespace once `docker run` returns). The restart scenario does not cover dockerd: without `--live-restore` a restart stops the containers."
        )?;
    }
    for note in notes {
        writeln!(md, "- {note}")?;
    }
    let plots = plots(results, dir);
    if let Err(e) = &plots {
        writeln!(md, "- No plots: {e:#}")?;
    }
    fs::write(dir.join("report.md"), md)?;
    Ok(())
}

/// The egress scenarios and the paths they run on (every node; `direct` has no egress).
const EGRESS: [&str; 2] = ["egress-one", "egress-many"];
const EGRESS_PATHS: [&str; 3] = ["ebpf", "iptables", DOCKER];

/// Failed connections of a scenario's samples on one path, by kind (refused, timeout, reset,
/// other) and in all.
fn failures(results: &Value, scenario: &str, dataplane: &str) -> ([u64; 4], u64) {
    let mut kinds = [0u64; 4];
    for s in samples(results, scenario).filter(|s| s["dataplane"] == dataplane) {
        for (n, k) in kinds
            .iter_mut()
            .zip(["refused", "timeout", "reset", "other"])
        {
            *n += s["errors"][k].as_u64().unwrap_or(0);
        }
    }
    (kinds, kinds.iter().sum())
}

/// The drop counters that grew during a scenario's samples on one path, summed, as
/// `name +N` (ebpf: its own counters; `—` for others).
fn drops(results: &Value, scenario: &str, dataplane: &str) -> String {
    let mut sum: std::collections::BTreeMap<String, u64> = Default::default();
    for s in samples(results, scenario).filter(|s| s["dataplane"] == dataplane) {
        for (name, n) in s["drops"].as_object().into_iter().flatten() {
            *sum.entry(name.clone()).or_default() += n.as_u64().unwrap_or(0);
        }
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

fn egress_section(results: &Value, md: &mut String) -> Result<()> {
    if !EGRESS
        .iter()
        .any(|sc| samples(results, sc).next().is_some())
    {
        return Ok(());
    }
    writeln!(
        md,
        "## Egress (new TCP connections/s from a container to outside servers, through masquerade)\n"
    )?;
    writeln!(
        md,
        "{} s per point, {} repetitions, {} client threads in the node's container `bench`: connect, 1 request, 1 response, the outside server closes first. egress-one: one server address; egress-many: 64, one after the other. Failed connections are summed over all repetitions.\n",
        results["plan"]["egress_seconds"],
        results["plan"]["egress_reps"],
        results["plan"]["concurrency"]
    )?;
    writeln!(
        md,
        "| scenario | path | conn/s | vs iptables | failed | refused / timed out / reset / other | CPU µs/conn | drop counters that grew |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|")?;
    for sc in EGRESS {
        let rate = |dp: &str| metric(results, sc, dp, "rate", |_| true);
        for dp in EGRESS_PATHS {
            if samples(results, sc).all(|s| s["dataplane"] != dp) {
                continue;
            }
            let ([r, t, x, o], failed) = failures(results, sc, dp);
            writeln!(
                md,
                "| {sc} | {dp} | {} | {} | {failed} | {r} / {t} / {x} / {o} | {} | {} |",
                fmt_spread(rate(dp), 0),
                fmt_ratio(ratio(rate(dp), rate("iptables"))),
                fmt_spread(
                    metric(results, sc, dp, "cpu_us_per_connection", |_| true),
                    1
                ),
                drops(results, sc, dp),
            )?;
        }
    }
    writeln!(md)?;
    Ok(())
}

/// The flow counts conntrack-scale measured, in increasing order.
fn scale_points(results: &Value) -> BTreeSet<u64> {
    samples(results, "conntrack-scale")
        .filter_map(|s| s["flows"].as_u64())
        .collect()
}

fn scale_sample<'a>(results: &'a Value, dataplane: &str, flows: u64) -> Option<&'a Value> {
    samples(results, "conntrack-scale").find(|s| s["dataplane"] == dataplane && s["flows"] == flows)
}

/// The last cleanup pass as the agent's `info` described it, or n/a: the fields that say
/// "last" when there are such (the others are totals since the agent began), else all.
fn fmt_gc(gc: &Value) -> String {
    let Some(fields) = gc.as_object().filter(|f| !f.is_empty()) else {
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

fn scale_section(results: &Value, md: &mut String) -> Result<()> {
    let points = scale_points(results);
    if points.is_empty() {
        return Ok(());
    }
    writeln!(
        md,
        "## conntrack-scale (a read-only API call, `GET /networks`, with N masqueraded flows in the table)\n"
    )?;
    writeln!(
        md,
        "The container `bench` opens N UDP flows to outside addresses (one datagram each); then the call is timed back to back for {} s. A call is given up after {} s (its time then counts as that, a lower bound). The ebpf agent runs on a fresh table sized for the largest point, with a UDP idle timeout longer than the scenario; the iptables node's flows are in the kernel's conntrack (its agent keeps none; unreplied UDP lives 30 s there).\n",
        results["plan"]["scale_window_seconds"], results["plan"]["api_timeout_seconds"]
    )?;
    writeln!(
        md,
        "| dataplane | flows | reached the world | kernel conntrack count | fill (s) | calls | p50 (ms) | p99 (ms) | max (ms) | timed out | last cleanup pass (agent's `info`) |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    for dp in ["ebpf", "iptables"] {
        for &n in &points {
            let Some(s) = scale_sample(results, dp, n) else {
                continue;
            };
            let api = &s["api"];
            let num = |v: &Value| v.as_u64().map_or_else(|| "—".into(), |n| n.to_string());
            writeln!(
                md,
                "| {dp} | {n} | {} | {} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
                num(&s["flows_reached_world"]),
                num(&s["kernel_conntrack_count"]),
                s["fill_seconds"].as_f64().unwrap_or(0.0),
                num(&api["calls"]),
                api["p50_ms"].as_f64().unwrap_or(0.0),
                api["p99_ms"].as_f64().unwrap_or(0.0),
                api["max_ms"].as_f64().unwrap_or(0.0),
                num(&api["timeouts"]),
                fmt_gc(&s["gc"]),
            )?;
        }
    }
    writeln!(md, "\n![conntrack-scale](conntrack_scale.png)\n")?;
    Ok(())
}

fn flood_section(results: &Value, md: &mut String) -> Result<()> {
    let floods: Vec<&Value> = samples(results, "flood").collect();
    if floods.is_empty() {
        return Ok(());
    }
    writeln!(
        md,
        "## Flood (live connections through a SYN flood to the published port and a container filling the flow table)\n"
    )?;
    writeln!(
        md,
        "{} idle connections through the published port (from the world) and {} from the container `bench` to an outside server, then at once: {} SYNs from 128 spoofed sources to the published port, the container opening {} unreplied UDP flows (the ebpf agent runs with `--conntrack-max {} --nat-flows-max {}`), and 4 threads opening new connections through the published port. Then every live connection must echo data again. Before an iptables or docker node is flooded, the bench waits (at most 75 s) until the kernel conntrack tables of those nodes hold fewer than 65,536 entries together (conntrack-scale and an earlier flood fill them, which slows the SYN sender fifteenfold).\n",
        results["plan"]["flood_held_connections"],
        results["plan"]["flood_held_connections"],
        results["plan"]["flood_syns"],
        results["plan"]["flood_conntrack_max"].as_u64().unwrap_or(0) * 2,
        results["plan"]["flood_conntrack_max"],
        results["plan"]["flood_nat_flows_max"],
    )?;
    writeln!(
        md,
        "| path | live connections survived (published / egress) | new conn/s during the flood | new connections failed | SYNs sent (s) | UDP flows sent | drop counters that grew |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|")?;
    for s in floods {
        let fresh = &s["new_connections"];
        let failed: u64 = ["refused", "timeout", "reset", "other"]
            .iter()
            .filter_map(|k| fresh["errors"][k].as_u64())
            .sum();
        writeln!(
            md,
            "| {} | {} of {} ({} / {}) | {:.0} | {failed} | {} ({:.1}) | {} | {} |",
            s["dataplane"].as_str().unwrap_or("?"),
            s["survived"],
            s["held"],
            s["held_published"]["survived"],
            s["held_egress"]["survived"],
            fresh["rate"].as_f64().unwrap_or(0.0),
            s["syn_flood"]["sent"],
            s["syn_flood"]["seconds"].as_f64().unwrap_or(0.0),
            s["udp_flows"]["sent"],
            drops(results, "flood", s["dataplane"].as_str().unwrap_or("")),
        )?;
    }
    writeln!(md)?;
    Ok(())
}

/// The targets of issue 12 that the egress, conntrack-scale and flood scenarios measure.
fn flow_targets(results: &Value) -> Vec<(String, String, Option<bool>)> {
    let rate = |sc: &str, dp: &str| metric(results, sc, dp, "rate", |_| true);
    let cpu = |sc: &str, dp: &str| metric(results, sc, dp, "cpu_us_per_connection", |_| true);
    let one = ratio(rate("egress-one", "ebpf"), rate("egress-one", "iptables"));
    let many = ratio(rate("egress-many", "ebpf"), rate("egress-many", "iptables"));
    let ran = samples(results, "egress-one").any(|s| s["dataplane"] == "ebpf");
    let (_, failed) = failures(results, "egress-one", "ebpf");
    let failed = ran.then_some(failed);
    let cpu_cell = |sc: &str| {
        let (e, i) = (cpu(sc, "ebpf"), cpu(sc, "iptables"));
        let text = match (e, i) {
            (Some(e), Some(i)) => format!("{:.1} / {:.1} µs", e.median, i.median),
            _ => "—".into(),
        };
        (text, e.zip(i).map(|(e, i)| e.median <= i.median))
    };
    let (cpu_one, cpu_one_met) = cpu_cell("egress-one");
    let (cpu_many, cpu_many_met) = cpu_cell("egress-many");
    let largest = scale_points(results).last().copied();
    let api = largest
        .and_then(|n| scale_sample(results, "ebpf", n))
        .map(|s| &s["api"]);
    let api_ms = |key: &str| api.and_then(|a| a[key].as_f64());
    let flows = largest.unwrap_or(0);
    let flood = samples(results, "flood").find(|s| s["dataplane"] == "ebpf");
    let survival = flood.and_then(|s| Some((s["survived"].as_u64()?, s["held"].as_u64()?)));
    let fresh = flood.map(|s| &s["new_connections"]);
    let fresh_rate = fresh.and_then(|f| f["rate"].as_f64());
    let fresh_failed: u64 = fresh.map_or(0, |f| {
        ["refused", "timeout", "reset", "other"]
            .iter()
            .filter_map(|k| f["errors"][k].as_u64())
            .sum()
    });
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
            api_ms("p99_ms").map_or_else(|| "—".into(), |v| format!("{v:.1} ms")),
            api_ms("p99_ms").map(|v| v <= 20.0),
        ),
        (
            format!("conntrack-scale: API max ≤ 100 ms with {flows} flows (262,144 in the target)"),
            api_ms("max_ms").map_or_else(|| "—".into(), |v| format!("{v:.1} ms")),
            api_ms("max_ms").map(|v| v <= 100.0),
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

fn color(dp: &str) -> RGBColor {
    match dp {
        "ebpf" => RGBColor(0x1f, 0x77, 0xb4),
        "iptables" => RGBColor(0xd6, 0x27, 0x28),
        DOCKER => RGBColor(0x94, 0x67, 0xbd),
        _ => RGBColor(0x2c, 0xa0, 0x2c),
    }
}

type Series = Vec<(String, RGBColor, Vec<(f64, f64)>)>;

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

fn plots(results: &Value, dir: &Path) -> Result<()> {
    font()?;
    let ns: BTreeSet<u64> = samples(results, "connrate")
        .filter_map(|s| s["other_mappings"].as_u64())
        .collect();
    let series: Series = paths(results)
        .iter()
        .map(|dp| {
            let pts = ns
                .iter()
                .filter_map(|&n| {
                    metric(results, "connrate", dp, "rate", |s| {
                        s["other_mappings"] == n
                    })
                    .map(|s| (n as f64, s.median))
                })
                .collect();
            (dp.to_string(), color(dp), pts)
        })
        .collect();
    line_plot(
        &dir.join("connrate.png"),
        "New TCP connections/s through the published port",
        "other published mappings installed",
        "connections/s (median)",
        &series,
        false,
    )
    .context("connrate.png")?;

    let pns: BTreeSet<u64> = samples(results, "programming")
        .filter_map(|s| s["n"].as_u64())
        .collect();
    let mut series: Series = Vec::new();
    let programmed: Vec<&str> = paths(results)
        .into_iter()
        .filter(|dp| *dp != "direct")
        .collect();
    for dp in programmed {
        for (key, what) in [("publish_seconds", "publish"), ("remove_seconds", "remove")] {
            let pts = pns
                .iter()
                .filter_map(|&n| {
                    metric(results, "programming", dp, key, |s| s["n"] == n)
                        .map(|s| (n as f64, s.median))
                })
                .collect();
            let mut c = color(dp);
            if what == "remove" {
                c = RGBColor(c.0 / 2 + 0x60, c.1 / 2 + 0x60, c.2 / 2 + 0x60);
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

    let points = scale_points(results);
    let series: Series = ["ebpf", "iptables"]
        .iter()
        .flat_map(|dp| {
            [("p99_ms", "p99"), ("max_ms", "max")].map(|(key, what)| {
                let pts = points
                    .iter()
                    .filter_map(|&n| {
                        let ms = scale_sample(results, dp, n)?["api"][key].as_f64()?;
                        Some((n as f64, ms))
                    })
                    .collect();
                let mut c = color(dp);
                if what == "max" {
                    c = RGBColor(c.0 / 2 + 0x60, c.1 / 2 + 0x60, c.2 / 2 + 0x60);
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
    let series: Series = paths(results)
        .iter()
        .map(|dp| {
            let pts = [("p50_us", 1.0), ("p99_us", 10.0), ("p999_us", 100.0)]
                .iter()
                .filter_map(|(k, x)| {
                    metric(results, "latency", dp, k, |_| true).map(|s| (*x, s.median))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_min_max() {
        let s = spread(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.count), (2.5, 1.0, 10.0, 4));
        assert!(spread(&[]).is_none());
    }

    #[test]
    fn report_from_a_small_result() {
        let dir = tempfile::tempdir().unwrap();
        let results = serde_json::json!({
            "mode": "smoke", "duration_seconds": 1.0,
            "machine": {"kernel": "6.x", "cpus": 2},
            "plan": {"connrate_seconds": 1, "concurrency": 1},
            "paths": {}, "notes": ["a note"],
            "samples": [
                {"scenario": "connrate", "dataplane": "ebpf", "other_mappings": 1, "rate": 100.0, "errors": {"reset": 0}},
                {"scenario": "connrate", "dataplane": "iptables", "other_mappings": 1, "rate": 50.0, "errors": {"reset": 1}},
                {"scenario": "programming", "dataplane": "ebpf", "n": 10, "publish_seconds": 0.01, "remove_seconds": 0.01},
                {"scenario": "latency", "dataplane": "direct", "p50_us": 10.0, "p99_us": 20.0, "p999_us": 30.0},
            ],
        });
        write(&results, dir.path()).unwrap();
        let md = fs::read_to_string(dir.path().join("report.md")).unwrap();
        assert!(md.contains("| 1 | 100 | 50 | — | 2.00× |"), "{md}");
        assert!(md.contains("a note"));
        assert!(
            !md.contains("docker"),
            "no docker column without docker samples"
        );
    }

    #[test]
    fn flow_scenarios_side_by_side_with_their_targets() {
        let dir = tempfile::tempdir().unwrap();
        let results = serde_json::json!({
            "mode": "quick", "duration_seconds": 1.0,
            "machine": {"kernel": "6.x", "cpus": 2},
            "plan": {"egress_seconds": 10, "egress_reps": 1, "concurrency": 16,
                     "scale_window_seconds": 3, "api_timeout_seconds": 10,
                     "flood_syns": 100, "flood_conntrack_max": 16, "flood_held_connections": 32},
            "paths": {}, "notes": [],
            "samples": [
                {"scenario": "egress-one", "dataplane": "ebpf", "rate": 400.0, "cpu_us_per_connection": 900.0,
                 "errors": {"timeout": 150}, "drops": {"container_ingress.drop.nat_exhausted": 7}},
                {"scenario": "egress-one", "dataplane": "iptables", "rate": 4000.0, "cpu_us_per_connection": 200.0,
                 "errors": {"timeout": 0}},
                {"scenario": "egress-many", "dataplane": "ebpf", "rate": 6000.0, "cpu_us_per_connection": 100.0},
                {"scenario": "egress-many", "dataplane": "iptables", "rate": 4000.0, "cpu_us_per_connection": 200.0},
                {"scenario": "conntrack-scale", "dataplane": "ebpf", "flows": 262144, "flows_reached_world": 262144,
                 "fill_seconds": 3.0, "api": {"calls": 1, "p50_ms": 10000.0, "p99_ms": 10000.0, "max_ms": 10000.0, "timeouts": 1},
                 "gc": {"Conntrack.LastGc.DurationMs": 12}},
                {"scenario": "flood", "dataplane": "ebpf", "held": 64, "survived": 64,
                 "held_published": {"survived": 32}, "held_egress": {"survived": 32},
                 "syn_flood": {"sent": 100, "seconds": 1.0}, "udp_flows": {"sent": 32},
                 "new_connections": {"rate": 1000.0, "errors": {"timeout": 2}}},
            ],
        });
        write(&results, dir.path()).unwrap();
        let md = fs::read_to_string(dir.path().join("report.md")).unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let results = serde_json::json!({
            "mode": "quick", "duration_seconds": 1.0,
            "machine": {"kernel": "6.x", "cpus": 2, "dockerd": "Docker version 20.10.24"},
            "plan": {"connrate_seconds": 1, "concurrency": 1},
            "paths": {"docker": "to dockerd"}, "notes": [],
            "samples": [
                {"scenario": "connrate", "dataplane": "ebpf", "other_mappings": 1, "rate": 100.0},
                {"scenario": "connrate", "dataplane": "docker", "other_mappings": 1, "rate": 40.0},
                {"scenario": "programming", "dataplane": "ebpf", "n": 10, "publish_seconds": 0.01, "remove_seconds": 0.01},
                {"scenario": "programming", "dataplane": "docker", "n": 10, "publish_seconds": 1.0, "remove_seconds": 0.5},
                {"scenario": "udp", "dataplane": "docker", "rate": 1000.0},
            ],
        });
        write(&results, dir.path()).unwrap();
        let md = fs::read_to_string(dir.path().join("report.md")).unwrap();
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
