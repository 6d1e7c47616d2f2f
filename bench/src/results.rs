//! What a bench run measured, as written to results.json and read back by the report.
//!
//! Every sample is one JSON object: `scenario`, `dataplane` (the path measured) and `rep`,
//! next to the fields of its scenario ([`Measurement`]). The load generator's own output
//! ([`ConnLoad`], [`LatencyLoad`], ...) is kept as it printed it, inside the scenario's
//! fields.

use std::{collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Everything one run wrote: the machine, the plan, the paths, notes and every sample.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// The version of this layout.
    pub schema: u32,
    pub mode: Mode,
    pub started_unix: u64,
    pub duration_seconds: f64,
    pub plan: Plan,
    pub paths: PathDescriptions,
    pub machine: Machine,
    pub notes: Vec<String>,
    pub samples: Vec<Sample>,
}

/// The layout of results.json that this code writes and reads.
pub const SCHEMA: u32 = 1;

/// How much of everything a run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `--smoke`: seconds, only checks the harness.
    Smoke,
    /// `--quick`: a few minutes.
    Quick,
    #[default]
    Full,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Smoke => "smoke",
            Mode::Quick => "quick",
            Mode::Full => "full",
        })
    }
}

/// How much of everything to do, as results.json records it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub reps: usize,
    /// Seconds per conn-rate point.
    pub connrate_seconds: f64,
    /// Seconds per latency, UDP and bulk point.
    pub short_seconds: f64,
    pub concurrency: usize,
    /// The numbers of other published mappings conn-rate is measured with.
    pub other_mappings: Vec<usize>,
    /// The N of the programming scenario.
    pub programming_n: Vec<usize>,
    /// The longest the iptables dataplane may be expected to take for one programming point
    /// (a point estimated to take longer is skipped).
    pub programming_budget_seconds: f64,
    pub restart_seconds: f64,
    /// Seconds and repetitions per egress point.
    pub egress_seconds: f64,
    pub egress_reps: usize,
    /// conntrack-scale: the flow counts, how long the API is sampled at each, and the
    /// longest one API call may take.
    pub scale_flows: Vec<u64>,
    pub scale_window_seconds: f64,
    pub api_timeout_seconds: f64,
    /// SYNs of the flood scenario, and the ebpf agent's table sizes during it.
    pub flood_syns: u64,
    pub flood_conntrack_max: u64,
    pub flood_nat_flows_max: u64,
    /// Idle connections held through the flood, in each direction.
    pub flood_held_connections: usize,
}

/// What each path is, in words.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PathDescriptions {
    pub ebpf: String,
    pub iptables: String,
    pub direct: String,
    /// Only when dockerd was measured.
    pub docker: Option<String>,
    pub egress: String,
    /// The paths of `connrate-ipv6`, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
}

/// The machine and the versions a run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: Option<String>,
    pub memory: Option<String>,
    pub iptables: String,
    pub rustc: String,
    pub bpfbridge: String,
    pub dockerd: Option<String>,
    pub git_commit: String,
    pub git_dirty: bool,
}

/// A path measured: a node's published port, or `direct` routing to the ebpf node's
/// container. Written as `dataplane` in a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    Ebpf,
    Iptables,
    Direct,
    Docker,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Ebpf => "ebpf",
            Path::Iptables => "iptables",
            Path::Direct => "direct",
            Path::Docker => "docker",
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The scenarios, in the order they run.
///
/// `restart` comes before `connrate`, whose other mappings (in iptables mode loaded behind
/// the agent's back) a restarted iptables agent would first remove, one rule at a time.
/// The egress scenarios come before `connrate` too, so that they run without its mappings;
/// `connrate-ipv6` follows `connrate`, on a dual-stack network and other mappings of its
/// own (made when it first runs: the restart scenario's earlier agent never sees them).
/// `uplink-hook`, `conntrack-scale` and `flood` come last: they restart the ebpf agent (on
/// another uplink hook, on tables of their own size).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    Programming,
    Latency,
    Udp,
    Bulk,
    Restart,
    EgressOne,
    EgressMany,
    Connrate,
    ConnrateIpv6,
    UplinkHook,
    ConntrackScale,
    Flood,
}

impl Scenario {
    pub const ALL: [Scenario; 12] = [
        Scenario::Programming,
        Scenario::Latency,
        Scenario::Udp,
        Scenario::Bulk,
        Scenario::Restart,
        Scenario::EgressOne,
        Scenario::EgressMany,
        Scenario::Connrate,
        Scenario::ConnrateIpv6,
        Scenario::UplinkHook,
        Scenario::ConntrackScale,
        Scenario::Flood,
    ];

    /// The name on the command line and in results.json.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Programming => "programming",
            Scenario::Latency => "latency",
            Scenario::Udp => "udp",
            Scenario::Bulk => "bulk",
            Scenario::Restart => "restart",
            Scenario::EgressOne => "egress-one",
            Scenario::EgressMany => "egress-many",
            Scenario::Connrate => "connrate",
            Scenario::ConnrateIpv6 => "connrate-ipv6",
            Scenario::UplinkHook => "uplink-hook",
            Scenario::ConntrackScale => "conntrack-scale",
            Scenario::Flood => "flood",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A scenario name that is none of [`Scenario::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown scenario {0:?} (one of {names})", names = Scenario::ALL.map(Scenario::name).join(", "))]
pub struct UnknownScenario(String);

impl FromStr for Scenario {
    type Err = UnknownScenario;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Scenario::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| UnknownScenario(name.to_string()))
    }
}

/// One measurement of one scenario on one path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    #[serde(flatten)]
    pub measurement: Measurement,
    /// The path measured.
    pub dataplane: Path,
    /// The repetition (0 for scenarios measured once).
    pub rep: usize,
}

impl Sample {
    pub fn scenario(&self) -> Scenario {
        self.measurement.scenario()
    }
}

/// What a scenario measured, by scenario (`scenario` in the JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "scenario", rename_all = "kebab-case")]
pub enum Measurement {
    Programming(Programming),
    Latency(LatencyLoad),
    Udp(Udp),
    Bulk(BulkLoad),
    Restart(Restart),
    EgressOne(Egress),
    EgressMany(Egress),
    Connrate(Connrate),
    /// `connrate` over IPv6: the same fields.
    ConnrateIpv6(Connrate),
    UplinkHook(HookConnrate),
    ConntrackScale(ConntrackScale),
    Flood(Flood),
}

impl Measurement {
    pub fn scenario(&self) -> Scenario {
        match self {
            Measurement::Programming(_) => Scenario::Programming,
            Measurement::Latency(_) => Scenario::Latency,
            Measurement::Udp(_) => Scenario::Udp,
            Measurement::Bulk(_) => Scenario::Bulk,
            Measurement::Restart(_) => Scenario::Restart,
            Measurement::EgressOne(_) => Scenario::EgressOne,
            Measurement::EgressMany(_) => Scenario::EgressMany,
            Measurement::Connrate(_) => Scenario::Connrate,
            Measurement::ConnrateIpv6(_) => Scenario::ConnrateIpv6,
            Measurement::UplinkHook(_) => Scenario::UplinkHook,
            Measurement::ConntrackScale(_) => Scenario::ConntrackScale,
            Measurement::Flood(_) => Scenario::Flood,
        }
    }
}

/// Failed connections of a load, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnErrors {
    pub refused: u64,
    pub timeout: u64,
    pub reset: u64,
    pub other: u64,
}

impl ConnErrors {
    pub fn total(&self) -> u64 {
        self.refused + self.timeout + self.reset + self.other
    }
}

impl fmt::Display for ConnErrors {
    /// As JSON, the way the bench has always printed them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{\"other\":{},\"refused\":{},\"reset\":{},\"timeout\":{}}}",
            self.other, self.refused, self.reset, self.timeout
        )
    }
}

/// `bpfbridge-loadgen connrate`: new connections (connect, 1 request, 1 response, close).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnLoad {
    pub connections: u64,
    pub seconds: f64,
    pub rate: f64,
    #[serde(default)]
    pub errors: ConnErrors,
}

/// `bpfbridge-loadgen latency`: round trips on one connection, in µs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyLoad {
    pub samples: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// `bpfbridge-loadgen bulk`: one connection writing as fast as it can.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BulkLoad {
    pub bytes: u64,
    pub seconds: f64,
    pub gbit_per_s: f64,
}

/// What a sender of packets (`udp`, `udpflows`, `synflood`) sent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sent {
    pub sent: u64,
    pub send_errors: u64,
    pub seconds: f64,
}

/// `bpfbridge-loadgen hold`: how many connections opened, then how many survived.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Held {
    pub opened: u64,
    #[serde(default)]
    pub survived: u64,
}

/// A conn-rate load and the CPU time of the whole machine it took.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuLoad {
    #[serde(flatten)]
    pub load: ConnLoad,
    pub cpu_seconds: f64,
    pub cpu_us_per_connection: f64,
}

/// Scenario `connrate`: through the published port, with N other mappings installed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Connrate {
    #[serde(flatten)]
    pub load: CpuLoad,
    pub other_mappings: usize,
}

/// Scenario `uplink-hook`: conn-rate through the ebpf node's published port with its uplink
/// program on one hook.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HookConnrate {
    #[serde(flatten)]
    pub load: CpuLoad,
    /// `xdp` or `tc`, as `--uplink-hook` names it.
    pub hook: String,
    pub other_mappings: usize,
}

/// Scenario `udp`: what was sent, and what reached the container's UDP layer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Udp {
    #[serde(flatten)]
    pub sent: Sent,
    pub arrived: u64,
    /// Datagrams that arrived, per second.
    pub rate: f64,
}

/// Scenario `restart`: a conn-rate load while the agent is stopped and started again.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Restart {
    #[serde(flatten)]
    pub load: ConnLoad,
    pub agent_stop_seconds: f64,
    pub agent_back_seconds: f64,
    /// The same agent again, or a newer one over the pins of an older map layout.
    #[serde(default)]
    pub variant: RestartVariant,
}

/// What starts again in the restart scenario.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartVariant {
    /// The same agent.
    #[default]
    Restart,
    /// This build's agent, after one of the previous map layout (`Bins::upgrade_from`): it
    /// migrates the pinned maps under the load.
    Upgrade,
}

impl RestartVariant {
    pub fn name(self) -> &'static str {
        match self {
            RestartVariant::Restart => "restart",
            RestartVariant::Upgrade => "upgrade",
        }
    }
}

/// Scenario `programming`: one N on one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Programming {
    pub n: usize,
    #[serde(flatten)]
    pub outcome: ProgrammingOutcome,
}

/// A programming point measured, or skipped for the time budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProgrammingOutcome {
    Measured(ProgrammingTimes),
    Skipped {
        skipped: bool,
        estimated_publish_seconds: f64,
    },
}

/// From the API call to the last mapping answering (publish) or closing (remove), and how
/// long the API calls themselves took.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgrammingTimes {
    pub publish_api_seconds: f64,
    pub publish_seconds: f64,
    pub remove_api_seconds: f64,
    pub remove_seconds: f64,
}

impl Programming {
    pub fn times(&self) -> Option<&ProgrammingTimes> {
        match &self.outcome {
            ProgrammingOutcome::Measured(times) => Some(times),
            ProgrammingOutcome::Skipped { .. } => None,
        }
    }
}

/// Drop counters of an agent that grew during a load, by name.
pub type Drops = BTreeMap<String, u64>;

/// Scenarios `egress-one` and `egress-many`: from a container to outside servers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Egress {
    #[serde(flatten)]
    pub load: CpuLoad,
    /// Agents only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drops: Option<Drops>,
    pub failed: u64,
    pub targets: u8,
}

/// The agent API's latency over a window of calls, in ms.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiLatency {
    pub calls: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub timeouts: u64,
    pub errors: u64,
    pub timeout_ms: f64,
}

/// Scenario `conntrack-scale`: one flow count on one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConntrackScale {
    pub flows: u64,
    pub flows_reached_world: u64,
    pub flows_sent: u64,
    pub send_errors: u64,
    /// The kernel's count (iptables node).
    pub kernel_conntrack_count: Option<u64>,
    /// The ebpf agent's `--conntrack-max`.
    pub conntrack_max: Option<u64>,
    pub fill_seconds: f64,
    pub api: ApiLatency,
    /// The fields of the agent's `info` about its flow-table cleanup, by JSON path.
    pub gc: Option<BTreeMap<String, serde_json::Number>>,
}

/// Scenario `flood`: live connections through a SYN flood and a container filling the table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Flood {
    pub held: u64,
    pub survived: u64,
    /// The kernel conntrack count of the iptables and docker nodes before (not for ebpf).
    pub kernel_conntrack_before: Option<u64>,
    pub held_published: Held,
    pub held_egress: Held,
    pub syn_flood: Sent,
    pub udp_flows: Sent,
    pub new_connections: ConnLoad,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drops: Option<Drops>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_keep_their_json_shape() {
        let sample = Sample {
            measurement: Measurement::Connrate(Connrate {
                load: CpuLoad {
                    load: ConnLoad {
                        connections: 10,
                        seconds: 1.0,
                        rate: 10.0,
                        errors: ConnErrors {
                            reset: 1,
                            ..Default::default()
                        },
                    },
                    cpu_seconds: 0.5,
                    cpu_us_per_connection: 50000.0,
                },
                other_mappings: 100,
            }),
            dataplane: Path::Iptables,
            rep: 2,
        };
        let json = serde_json::to_value(&sample).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "scenario": "connrate", "dataplane": "iptables", "rep": 2,
                "connections": 10, "seconds": 1.0, "rate": 10.0,
                "errors": {"refused": 0, "timeout": 0, "reset": 1, "other": 0},
                "cpu_seconds": 0.5, "cpu_us_per_connection": 50000.0, "other_mappings": 100,
            })
        );
        assert_eq!(serde_json::from_value::<Sample>(json).unwrap(), sample);
    }

    #[test]
    fn programming_points_are_measured_or_skipped() {
        let skipped: Sample = serde_json::from_value(serde_json::json!({
            "scenario": "programming", "dataplane": "iptables", "n": 10000, "rep": 0,
            "skipped": true, "estimated_publish_seconds": 900.0,
        }))
        .unwrap();
        let Measurement::Programming(p) = &skipped.measurement else {
            panic!("{skipped:?}");
        };
        assert_eq!(p.times(), None);
        let measured: Sample = serde_json::from_value(serde_json::json!({
            "scenario": "programming", "dataplane": "ebpf", "n": 100, "rep": 0,
            "publish_api_seconds": 0.01, "publish_seconds": 0.02,
            "remove_api_seconds": 0.01, "remove_seconds": 0.03,
        }))
        .unwrap();
        let Measurement::Programming(p) = &measured.measurement else {
            panic!("{measured:?}");
        };
        assert_eq!(p.times().map(|t| t.remove_seconds), Some(0.03));
        let json = serde_json::to_value(&measured).unwrap();
        assert_eq!(json["publish_seconds"], 0.02);
    }

    #[test]
    fn scenario_names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(s.name().parse::<Scenario>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
        }
        let err = "nope".parse::<Scenario>().unwrap_err().to_string();
        assert!(err.contains("conntrack-scale"), "{err}");
    }
}
