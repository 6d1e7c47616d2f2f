//! Prometheus metrics on `--metrics-addr`: the dataplane's counters, its flow tables and
//! their cleanup, the API's request latency and the agent's start. docs/metrics.md lists
//! the families.
//!
//! The dataplane's numbers live in its maps (or iptables' rule counters), not in the
//! agent: each scrape reads them afresh under the service lock, for as long as the map
//! reads take, and encodes them from a registry made for that scrape. What the agent
//! itself measures (API requests) lives in a registry kept for its lifetime.

use std::{
    sync::Arc,
    sync::atomic::AtomicU64,
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    extract::State,
    http::{Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::{Registry, Unit},
};

use crate::{
    Error, Result,
    api::Shared,
    model::{FlowTablesInfo, Info as AgentInfo, StatCounter},
};

/// What Prometheus accepts for the OpenMetrics text that prometheus-client writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric's name starts with this.
const PREFIX: &str = "bpfbridge";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiRequestLabels {
    method: &'static str,
    /// The route's pattern (`/containers/{name}`), so that names do not make new series.
    route: String,
    status: u16,
}

/// A counter of the eBPF programs: `program.verdict.reason` in `bpfbridge stats`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramCounterLabels {
    program: String,
    verdict: String,
    /// Empty (so absent to Prometheus) for a counter named `program.what` only.
    reason: String,
}

/// A published port's DNAT rule counter of the iptables dataplane.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublishedPortLabels {
    proto: String,
    host_ip: String,
    host_port: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowTableLabels {
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    version: String,
    dataplane: String,
    uplink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepairLabels {
    /// A [`crate::model::RepairKind`]'s name, or `failed` (`info`'s `Repairs`).
    kind: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The agent's metrics: what it measures itself, and the scrape of the rest.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    api_requests: Family<ApiRequestLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        // 0.5 ms to about 16 s: map updates are fast, a container's setup takes a while.
        let api_requests = Family::<ApiRequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register_with_unit(
            "api_request_duration",
            "Requests to the agent's API by method, route and status, until the response's head",
            Unit::Seconds,
            api_requests.clone(),
        );
        let started = FloatGauge::default();
        started.set(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
        );
        registry.register_with_unit(
            "agent_start_time",
            "When the agent started, in seconds since the epoch; its changes count restarts",
            Unit::Seconds,
            started,
        );
        Metrics {
            registry,
            api_requests,
        }
    }

    /// Records one API request; `route` is its matched pattern, `None` when none matched.
    pub fn observe_api_request(
        &self,
        method: &Method,
        route: Option<&str>,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let labels = ApiRequestLabels {
            method: method_label(method),
            route: route.unwrap_or("unmatched").to_string(),
            status: status.as_u16(),
        };
        self.api_requests
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// The exposition: the agent's own metrics and those of `snapshot`.
    pub fn encode(&self, snapshot: &Snapshot) -> std::result::Result<String, std::fmt::Error> {
        let mut out = String::new();
        text::encode_registry(&mut out, &self.registry)?;
        text::encode_registry(&mut out, &snapshot.registry())?;
        text::encode_eof(&mut out)?;
        Ok(out)
    }
}

/// A client's method, or `other` for one outside HTTP's usual ones (methods are free
/// text, and each would make a series).
fn method_label(method: &Method) -> &'static str {
    const USUAL: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"];
    USUAL
        .into_iter()
        .find(|usual| *usual == method.as_str())
        .unwrap_or("other")
}

/// The dataplane's numbers at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub counters: Vec<StatCounter>,
    pub info: AgentInfo,
}

impl Snapshot {
    /// Reads the counters and the flow tables: map reads (or one `iptables -L` for that
    /// dataplane), under the lock only for as long as those take.
    pub async fn read(service: &Shared) -> Result<Snapshot> {
        let service = service.lock().await;
        Ok(Snapshot {
            counters: service.stats()?,
            info: service.info()?,
        })
    }

    fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register(
            "agent",
            "The agent's version, dataplane and uplink",
            Info::new(AgentLabels {
                version: self.info.version.clone(),
                dataplane: self.info.dataplane.clone(),
                uplink: self.info.uplink.clone(),
            }),
        );
        for (name, help, value) in [
            ("networks", "Networks the agent keeps", self.info.networks),
            ("containers", "Containers attached", self.info.containers),
            (
                "published_ports",
                "Port bindings of the containers",
                self.info.published_ports,
            ),
        ] {
            let gauge = Gauge::<i64>::default();
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
            registry.register(name, help, gauge);
        }
        self.register_counters(&mut registry);
        self.register_repairs(&mut registry);
        if let Some(tables) = &self.info.flow_tables {
            register_flow_tables(&mut registry, tables);
        }
        registry
    }

    fn register_repairs(&self, registry: &mut Registry) {
        let repairs = Family::<RepairLabels, Counter>::default();
        for (kind, count) in self.info.repairs.by_kind() {
            repairs.get_or_create(&RepairLabels { kind }).inc_by(count);
        }
        registry.register(
            "repairs",
            "Drift the agent repaired while running, by kind; failed counts what (a container, a bridge, the dataplane) started failing to be repaired",
            repairs,
        );
        let unrepaired = Gauge::<i64>::default();
        unrepaired.set(i64::try_from(self.info.unrepaired.len()).unwrap_or(i64::MAX));
        registry.register(
            "unrepaired",
            "Drift the agent's last repair pass could not repair (info's Unrepaired)",
            unrepaired,
        );
    }

    fn register_counters(&self, registry: &mut Registry) {
        let mut program_counters = Vec::new();
        let mut port_counters = Vec::new();
        for counter in &self.counters {
            match published_port_labels(&counter.name) {
                Some(labels) => port_counters.push((labels, counter)),
                None => program_counters.push((program_counter_labels(&counter.name), counter)),
            }
        }
        register_packets_and_bytes(
            registry,
            "dataplane",
            "by the eBPF program that saw them, its verdict and the reason",
            program_counters,
        );
        register_packets_and_bytes(
            registry,
            "published_port",
            "through a published port's DNAT rule (iptables dataplane)",
            port_counters,
        );
    }
}

/// `PREFIX_packets_total` and `PREFIX_bytes_total` of `counters`; nothing when there are
/// none (a family of the other dataplane).
fn register_packets_and_bytes<S>(
    registry: &mut Registry,
    prefix: &str,
    help: &str,
    counters: Vec<(S, &StatCounter)>,
) where
    S: EncodeLabelSet + Clone + Eq + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static,
{
    if counters.is_empty() {
        return;
    }
    let packets = Family::<S, Counter>::default();
    let bytes = Family::<S, Counter>::default();
    for (labels, counter) in counters {
        packets.get_or_create(&labels).inc_by(counter.packets);
        bytes.get_or_create(&labels).inc_by(counter.bytes);
    }
    registry.register(
        format!("{prefix}_packets"),
        format!("Packets {help}"),
        packets,
    );
    registry.register_with_unit(prefix, format!("Bytes {help}"), Unit::Bytes, bytes);
}

fn register_flow_tables(registry: &mut Registry, tables: &FlowTablesInfo) {
    let entries = Family::<FlowTableLabels, Gauge<u64, AtomicU64>>::default();
    let max_entries = Family::<FlowTableLabels, Gauge<u64, AtomicU64>>::default();
    let fill = Family::<FlowTableLabels, FloatGauge>::default();
    let memory = Family::<FlowTableLabels, Gauge<u64, AtomicU64>>::default();
    for table in &tables.tables {
        let labels = FlowTableLabels {
            table: table.name.to_lowercase(),
        };
        entries.get_or_create(&labels).set(table.entries);
        max_entries
            .get_or_create(&labels)
            .set(u64::from(table.max_entries));
        if table.max_entries > 0 {
            fill.get_or_create(&labels)
                .set(table.entries as f64 / f64::from(table.max_entries));
        }
        memory.get_or_create(&labels).set(table.memory_bytes);
    }
    registry.register(
        "flow_table_entries",
        "Entries of a flow table, as the last cleanup pass counted them",
        entries,
    );
    registry.register(
        "flow_table_max_entries",
        "The size of a flow table",
        max_entries,
    );
    registry.register(
        "flow_table_fill_ratio",
        "Entries over size of a flow table",
        fill,
    );
    registry.register_with_unit(
        "flow_table_memory",
        "Kernel memory of a flow table",
        Unit::Bytes,
        memory,
    );
    let map_memory = Gauge::<u64, AtomicU64>::default();
    map_memory.set(tables.map_memory_bytes);
    registry.register_with_unit(
        "dataplane_map_memory",
        "Kernel memory of all the dataplane's BPF maps",
        Unit::Bytes,
        map_memory,
    );

    let gc = &tables.gc;
    for (name, help, value) in [
        (
            "flow_gc_passes",
            "Passes of the idle-flow cleanup since the agent started",
            gc.passes,
        ),
        (
            "flow_gc_removed",
            "Flow-table entries the cleanup removed since the agent started",
            gc.removed,
        ),
        (
            "flow_gc_errors",
            "Map reads and deletes of the cleanup that failed since the agent started",
            gc.errors,
        ),
    ] {
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        registry.register(name, help, counter);
    }
    let last_pass = FloatGauge::default();
    last_pass.set(Duration::from_micros(gc.last_pass_micros).as_secs_f64());
    registry.register_with_unit(
        "flow_gc_last_pass_duration",
        "How long the cleanup's last pass took",
        Unit::Seconds,
        last_pass,
    );
    for (name, help, value) in [
        (
            "flow_gc_last_pass_scanned",
            "Entries the cleanup's last pass read, over all flow tables",
            gc.last_scanned,
        ),
        (
            "flow_gc_last_pass_removed",
            "Entries the cleanup's last pass removed",
            gc.last_removed,
        ),
    ] {
        let gauge = Gauge::<u64, AtomicU64>::default();
        gauge.set(value);
        registry.register(name, help, gauge);
    }
}

/// `program.verdict.reason` (`container_ingress.drop.untracked_segment`), or
/// `program.what` (`monitor.events_suppressed`) with no reason.
fn program_counter_labels(name: &str) -> ProgramCounterLabels {
    let mut parts = name.splitn(3, '.');
    let mut next = || parts.next().unwrap_or_default().to_string();
    ProgramCounterLabels {
        program: next(),
        verdict: next(),
        reason: next(),
    }
}

/// The iptables dataplane's `dnat.PROTO.HOSTIP:HOSTPORT`.
fn published_port_labels(name: &str) -> Option<PublishedPortLabels> {
    let (proto, address) = name.strip_prefix("dnat.")?.split_once('.')?;
    let (host_ip, host_port) = address.rsplit_once(':')?;
    Some(PublishedPortLabels {
        proto: proto.into(),
        host_ip: host_ip.into(),
        host_port: host_port.into(),
    })
}

/// The `/metrics` endpoint.
pub fn router(service: Shared, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state((service, metrics))
}

async fn scrape(State((service, metrics)): State<(Shared, Arc<Metrics>)>) -> Response {
    let encoded = Snapshot::read(&service).await.and_then(|snapshot| {
        metrics
            .encode(&snapshot)
            .map_err(|e| Error::Internal(format!("encoding the metrics: {e}")))
    });
    match encoded {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            let message = e.report();
            tracing::error!("serving metrics: {message}");
            (StatusCode::INTERNAL_SERVER_ERROR, message).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FlowGcStats, FlowTableInfo};

    fn info(flow_tables: Option<FlowTablesInfo>) -> AgentInfo {
        AgentInfo {
            version: "0.1.0".into(),
            kernel_version: "6.1".into(),
            dataplane: "ebpf".into(),
            dataplane_ipv6: false,
            uplink: "eth0".into(),
            uplinks: Vec::new(),
            settings: Default::default(),
            ip_forward_enabled: true,
            networks: 2,
            containers: 3,
            published_ports: 1,
            pin_dir: "/sys/fs/bpf/bpfbridge".into(),
            flow_tables,
            programs: Vec::new(),
            repairs: Default::default(),
            unrepaired: Vec::new(),
        }
    }

    fn counter(name: &str, packets: u64, bytes: u64) -> StatCounter {
        StatCounter {
            name: name.into(),
            packets,
            bytes,
        }
    }

    #[test]
    fn counters_are_labelled_by_program_verdict_and_reason() {
        let metrics = Metrics::new();
        metrics.observe_api_request(
            &Method::GET,
            Some("/containers/{name}"),
            StatusCode::NOT_FOUND,
            Duration::from_millis(3),
        );
        metrics.observe_api_request(
            &Method::from_bytes(b"BREW").unwrap(),
            None,
            StatusCode::NOT_FOUND,
            Duration::from_millis(1),
        );
        let snapshot = Snapshot {
            counters: vec![
                counter("uplink_ingress.redirect.dnat", 7, 700),
                counter("monitor.events_suppressed", 2, 0),
            ],
            info: info(Some(FlowTablesInfo {
                tables: vec![FlowTableInfo {
                    name: "NAT_FLOWS".into(),
                    max_entries: 1000,
                    entries: 250,
                    memory_bytes: 4096,
                }],
                map_memory_bytes: 65536,
                gc: FlowGcStats {
                    passes: 4,
                    last_pass_micros: 1500,
                    removed: 9,
                    ..Default::default()
                },
            })),
        };
        let text = metrics.encode(&snapshot).unwrap();
        for line in [
            "bpfbridge_dataplane_packets_total{program=\"uplink_ingress\",verdict=\"redirect\",reason=\"dnat\"} 7",
            "bpfbridge_dataplane_bytes_total{program=\"uplink_ingress\",verdict=\"redirect\",reason=\"dnat\"} 700",
            "bpfbridge_dataplane_packets_total{program=\"monitor\",verdict=\"events_suppressed\",reason=\"\"} 2",
            "bpfbridge_flow_table_entries{table=\"nat_flows\"} 250",
            "bpfbridge_flow_table_fill_ratio{table=\"nat_flows\"} 0.25",
            "bpfbridge_flow_gc_removed_total 9",
            "bpfbridge_flow_gc_last_pass_duration_seconds 0.0015",
            "bpfbridge_containers 3",
            "bpfbridge_repairs_total{kind=\"iptables_rule_restored\"} 0",
            "bpfbridge_repairs_total{kind=\"failed\"} 0",
            "bpfbridge_unrepaired 0",
            "bpfbridge_api_request_duration_seconds_count{method=\"GET\",route=\"/containers/{name}\",status=\"404\"} 1",
            "bpfbridge_api_request_duration_seconds_count{method=\"other\",route=\"unmatched\",status=\"404\"} 1",
            "bpfbridge_agent_info{version=\"0.1.0\",dataplane=\"ebpf\",uplink=\"eth0\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.contains("# TYPE bpfbridge_agent_start_time_seconds gauge"));
        assert!(text.ends_with("# EOF\n"));
        assert!(!text.contains("published_port_packets"), "{text}");
    }

    #[test]
    fn iptables_rule_counters_are_labelled_by_port() {
        let snapshot = Snapshot {
            counters: vec![counter("dnat.tcp.0.0.0.0:8080", 5, 300)],
            info: info(None),
        };
        let text = Metrics::new().encode(&snapshot).unwrap();
        assert!(
            text.lines().any(|l| l
                == "bpfbridge_published_port_packets_total{proto=\"tcp\",host_ip=\"0.0.0.0\",host_port=\"8080\"} 5"),
            "{text}"
        );
        assert!(!text.contains("flow_table"), "{text}");
        assert!(!text.contains("dataplane_packets"), "{text}");
    }

    /// The `bpfbridge_*` names in `text`.
    fn names_in(text: &str) -> std::collections::BTreeSet<String> {
        text.match_indices("bpfbridge_")
            .map(|(at, _)| {
                text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect::<String>()
            })
            .filter(|name| name.len() > "bpfbridge_".len())
            .collect()
    }

    #[test]
    fn docs_and_dashboard_name_the_metrics_there_are() {
        let metrics = Metrics::new();
        metrics.observe_api_request(
            &Method::GET,
            Some("/info"),
            StatusCode::OK,
            Duration::from_millis(1),
        );
        let mut text = String::new();
        for snapshot in [
            Snapshot {
                counters: vec![counter("uplink_ingress.redirect.dnat", 1, 1)],
                info: info(Some(FlowTablesInfo {
                    tables: vec![FlowTableInfo {
                        name: "CONNTRACK".into(),
                        max_entries: 2,
                        ..Default::default()
                    }],
                    ..Default::default()
                })),
            },
            Snapshot {
                counters: vec![counter("dnat.udp.127.0.0.1:53", 1, 1)],
                info: info(None),
            },
        ] {
            text += &metrics.encode(&snapshot).unwrap();
        }
        let samples: std::collections::BTreeSet<String> = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split(['{', ' ']).next())
            .map(str::to_string)
            .collect();
        // A histogram's family name is not a sample's: its `_count` is.
        let exists =
            |name: &String| samples.contains(name) || samples.contains(&format!("{name}_count"));
        let docs = names_in(include_str!("../../docs/metrics.md"));
        let dashboard = names_in(include_str!("../../deploy/grafana-dashboard.json"));
        let unknown: Vec<_> = docs
            .iter()
            .chain(&dashboard)
            .filter(|n| !exists(n))
            .collect();
        assert!(unknown.is_empty(), "named but not served: {unknown:?}");
        let undocumented: Vec<_> = samples
            .iter()
            .filter(|sample| {
                !docs.iter().any(|family| {
                    *sample == family
                        || sample
                            .strip_prefix(family.as_str())
                            .is_some_and(|suffix| ["_bucket", "_sum", "_count"].contains(&suffix))
                })
            })
            .collect();
        assert!(
            undocumented.is_empty(),
            "served but not in docs/metrics.md: {undocumented:?}"
        );
    }
}
