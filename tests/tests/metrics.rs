//! `--metrics-addr`: Prometheus metrics served from the node namespace, with the values of
//! real traffic and API calls; nothing listening without the flag; a bad address refused
//! at start.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddrV4, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use bpfbridge_tests::{Agent, NODE_IP, Topology, ebpf_checks, in_netns, request, serve_once};

/// dockerd's usual metrics port.
const METRICS_PORT: u16 = 9323;

/// `GET /metrics` from the node namespace; the body of a 200 answer.
fn scrape(topology: &Topology, address: SocketAddrV4) -> Result<String> {
    let answer = in_netns(&topology.node.path(), || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&address.into(), Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    })
    .context("scraping the metrics")?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .context("no end of the answer's head")?;
    ensure!(head.starts_with("HTTP/1.0 200"), "{answer}");
    ensure!(
        head.to_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    Ok(body.to_string())
}

/// The value of the series written exactly `series` (name and labels), if it is there.
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

fn positive(metrics: &str, series: &str) -> Result<f64> {
    let v = value(metrics, series).with_context(|| format!("no {series} in\n{metrics}"))?;
    ensure!(v > 0.0, "{series} is {v}");
    Ok(v)
}

#[test]
fn metrics_show_traffic_flow_tables_and_api_latency() -> Result<()> {
    let topology = Topology::new()?;
    let address = SocketAddrV4::new(NODE_IP, METRICS_PORT);
    let agent = Agent::start_with(&topology, &["--metrics-addr", &address.to_string()])?;
    let (_, container) = agent.create_container(&["--name", "web", "-p", "8080:80"])?;
    let server = serve_once(&container, 80);
    let answer = request(
        &topology.world.path(),
        SocketAddrV4::new(NODE_IP, 8080),
        "ping\n",
    )?;
    server.join().expect("server thread")?;
    ensure!(answer == "pong ping\n", "{answer:?}");

    let metrics = scrape(&topology, address)?;
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    // The lab's readiness check calls `info`; the CLI created the container.
    positive(
        &metrics,
        "bpfbridge_api_request_duration_seconds_count{method=\"GET\",route=\"/info\",status=\"200\"}",
    )?;
    assert_eq!(
        value(
            &metrics,
            "bpfbridge_api_request_duration_seconds_count{method=\"POST\",route=\"/containers\",status=\"201\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(value(&metrics, "bpfbridge_containers"), Some(1.0));
    assert_eq!(value(&metrics, "bpfbridge_published_ports"), Some(1.0));
    positive(&metrics, "bpfbridge_agent_start_time_seconds")?;

    if ebpf_checks("the eBPF programs' counters and flow tables") {
        positive(
            &metrics,
            "bpfbridge_dataplane_packets_total{program=\"uplink_ingress\",verdict=\"redirect\",reason=\"dnat\"}",
        )?;
        positive(
            &metrics,
            "bpfbridge_dataplane_bytes_total{program=\"container_ingress\",verdict=\"redirect\",reason=\"reply\"}",
        )?;
        assert_eq!(
            value(
                &metrics,
                "bpfbridge_dataplane_packets_total{program=\"uplink_ingress\",verdict=\"drop\",reason=\"malformed\"}"
            ),
            Some(0.0),
            "every counter is there, zero or not"
        );
        for table in ["conntrack", "nat_flows"] {
            positive(
                &metrics,
                &format!("bpfbridge_flow_table_max_entries{{table=\"{table}\"}}"),
            )?;
            positive(
                &metrics,
                &format!("bpfbridge_flow_table_memory_bytes{{table=\"{table}\"}}"),
            )?;
            value(
                &metrics,
                &format!("bpfbridge_flow_table_entries{{table=\"{table}\"}}"),
            )
            .with_context(|| format!("no entries of {table} in\n{metrics}"))?;
        }
        positive(&metrics, "bpfbridge_dataplane_map_memory_bytes")?;
        value(&metrics, "bpfbridge_flow_gc_passes_total").context("no GC passes")?;
    } else {
        positive(
            &metrics,
            "bpfbridge_published_port_packets_total{proto=\"tcp\",host_ip=\"0.0.0.0\",host_port=\"8080\"}",
        )?;
        assert!(!metrics.contains("bpfbridge_flow_table"), "{metrics}");
    }

    // A scrape needs no API call: the histogram only counts the API's requests.
    let again = scrape(&topology, address)?;
    assert_eq!(
        value(
            &again,
            "bpfbridge_api_request_duration_seconds_count{method=\"POST\",route=\"/containers\",status=\"201\"}"
        ),
        Some(1.0)
    );
    bpfbridge_tests::figures::record(
        "metrics",
        serde_json::json!({
            "series": metrics.lines().filter(|l| !l.starts_with('#')).count(),
            "container_create_seconds": value(
                &metrics,
                "bpfbridge_api_request_duration_seconds_sum{method=\"POST\",route=\"/containers\",status=\"201\"}",
            ),
        }),
    )
}

#[test]
fn without_the_flag_nothing_listens_and_a_bad_address_stops_the_start() -> Result<()> {
    let topology = Topology::new()?;
    let mut agent = Agent::start(&topology)?;
    let listening = topology.node.exec("ss", &["-Hltnp"])?;
    let listening = String::from_utf8_lossy(&listening.stdout);
    assert!(!listening.contains("bpfbridge"), "{listening}");
    let refused = in_netns(&topology.node.path(), || {
        TcpStream::connect_timeout(
            &SocketAddrV4::new(NODE_IP, METRICS_PORT).into(),
            Duration::from_secs(3),
        )
    });
    assert!(refused.is_err(), "something answers on {METRICS_PORT}");

    // 192.0.2.9 is no address of the node's.
    agent.stop();
    let mut args = agent.args().to_vec();
    args.extend(["--metrics-addr".into(), "192.0.2.9:9323".into()]);
    agent.set_args(&args);
    let error = agent.spawn_expecting_failure()?;
    assert!(
        error.contains("binding --metrics-addr 192.0.2.9:9323")
            && error.contains("Cannot assign requested address"),
        "{error}"
    );
    Ok(())
}
