//! The daemon's settings: built-in defaults, overridden by a config file (TOML or JSON,
//! keys like dockerd's daemon.json), overridden by command-line flags.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A pool that network subnets are carved from: `base` (IPv4 or IPv6) split into blocks
/// of `/size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressPool {
    pub base: IpNet,
    pub size: u8,
}

impl AddressPool {
    /// Docker's defaults: 172.17.0.0/16 … 172.31.0.0/16, then 192.168.0.0/20 blocks.
    pub fn docker_defaults() -> Vec<AddressPool> {
        vec![
            AddressPool {
                base: "172.17.0.0/16".parse().expect("valid"),
                size: 16,
            },
            AddressPool {
                base: "172.18.0.0/15".parse().expect("valid"),
                size: 16,
            },
            AddressPool {
                base: "172.20.0.0/14".parse().expect("valid"),
                size: 16,
            },
            AddressPool {
                base: "172.24.0.0/14".parse().expect("valid"),
                size: 16,
            },
            AddressPool {
                base: "172.28.0.0/14".parse().expect("valid"),
                size: 16,
            },
            AddressPool {
                base: "192.168.0.0/16".parse().expect("valid"),
                size: 20,
            },
        ]
    }

    /// The automatic IPv6 pool of networks made with `--ipv6` and no subnet, as Docker 27
    /// adds it: a unique local /48 (RFC 4193) from a 40-bit global id, split into /64s.
    pub fn ula(global_id: u64) -> AddressPool {
        let id = global_id & 0xff_ffff_ffff;
        let prefix = (0xfdu128 << 120) | (u128::from(id) << 80);
        AddressPool {
            base: Ipv6Net::new(prefix.into(), 48).expect("a /48").into(),
            size: 64,
        }
    }

    fn validate(&self) -> Result<()> {
        // IPv4 subnets keep room for a gateway and a container; IPv6 ones down to a /124.
        let longest = match self.base {
            IpNet::V4(_) => 30,
            IpNet::V6(_) => 124,
        };
        if self.size < self.base.prefix_len() || self.size > longest {
            return Err(Error::InvalidArgument(format!(
                "address pool {}: size /{} must be between /{} and /{longest}",
                self.base,
                self.size,
                self.base.prefix_len()
            )));
        }
        Ok(())
    }
}

impl FromStr for AddressPool {
    type Err = Error;

    /// dockerd's flag form: `base=10.10.0.0/16,size=24`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidArgument(format!(
                "invalid address pool {s:?}: expected base=CIDR,size=N"
            ))
        };
        let (mut base, mut size) = (None, None);
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("base", v)) => base = Some(v.parse::<IpNet>().map_err(|_| bad())?.trunc()),
                Some(("size", v)) => size = Some(v.parse::<u8>().map_err(|_| bad())?),
                _ => return Err(bad()),
            }
        }
        let pool = AddressPool {
            base: base.ok_or_else(bad)?,
            size: size.ok_or_else(bad)?,
        };
        pool.validate()?;
        Ok(pool)
    }
}

/// Which dataplane programs the node: the eBPF programs, or Docker 20.10's iptables rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneKind {
    Ebpf,
    Iptables,
}

/// Where the uplink program runs on each uplink: `auto` picks TC for virtual devices whose
/// frames may carry partial checksums (veth, tun/tap, macvlan, ...; XDP cannot update
/// those) and XDP (native, else generic) elsewhere.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UplinkHook {
    #[default]
    Auto,
    Xdp,
    Tc,
}

/// The config file's `uplink`: a list of interfaces, or one name as earlier agents wrote it.
fn one_or_many<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(name) => vec![name],
        OneOrMany::Many(names) => names,
    })
}

/// An inclusive range of ports within 1-65535, written `START-END`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl FromStr for PortRange {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidArgument(format!(
                "invalid port range {s:?}: expected START-END within 1-65535"
            ))
        };
        let (start, end) = s.split_once('-').ok_or_else(bad)?;
        let (start, end): (u16, u16) = (
            start.parse().map_err(|_| bad())?,
            end.parse().map_err(|_| bad())?,
        );
        if start == 0 || end < start {
            return Err(bad());
        }
        Ok(PortRange { start, end })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

serde_as_string!(PortRange);

/// The source ports masquerade hands out: `auto`, netfilter's choice (the container's own
/// port when free, else one of the kernel's range for its class), or a `START-END` range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MasqueradePorts {
    Auto,
    Range(PortRange),
}

impl MasqueradePorts {
    /// The range's first and last port; `None` for `auto`.
    pub fn bounds(self) -> Option<(u16, u16)> {
        match self {
            MasqueradePorts::Auto => None,
            MasqueradePorts::Range(r) => Some((r.start, r.end)),
        }
    }
}

impl FromStr for MasqueradePorts {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if s == "auto" {
            return Ok(MasqueradePorts::Auto);
        }
        s.parse().map(MasqueradePorts::Range).map_err(|_| {
            Error::InvalidArgument(format!(
                "invalid masquerade port range {s:?}: expected auto or START-END within 1-65535"
            ))
        })
    }
}

impl fmt::Display for MasqueradePorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MasqueradePorts::Auto => f.write_str("auto"),
            MasqueradePorts::Range(r) => r.fmt(f),
        }
    }
}

serde_as_string!(MasqueradePorts);

/// The agent's settings, defined once: each field is a flag of `bpfbridge agent` (its doc
/// comment is the flag's help, kept to one paragraph so that `-h` and `--help` agree) and a key of the config file, both in kebab-case; the
/// defaults are [`Settings::default`]. `bpfbridge info` shows the effective settings.
/// Flags are parsed into [`SettingsFlags`], which applies only the flags given.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct Settings {
    /// Interface where published ports answer and masqueraded replies come back
    /// (repeatable) [default: every interface of the node but loopback, bridge and bond
    /// ports and the agent's own, followed as they come and go].
    #[arg(long, value_name = "IFACE")]
    #[serde(deserialize_with = "one_or_many")]
    pub uplink: Vec<String>,
    /// Where the uplink program runs: auto (TC on virtual devices whose frames may carry
    /// partial checksums, such as veth; XDP elsewhere), xdp or tc [default: auto].
    #[arg(long)]
    pub uplink_hook: UplinkHook,
    /// Where the state database lives [default: /var/lib/bpfbridge].
    #[arg(long)]
    pub state_dir: PathBuf,
    /// bpffs directory for the pinned maps and links [default: /sys/fs/bpf/bpfbridge].
    #[arg(long)]
    pub pin_dir: PathBuf,
    /// Where namespaces the agent creates for containers are pinned [default: /run/netns].
    #[arg(long)]
    pub netns_dir: PathBuf,
    /// The dataplane [default: ebpf].
    #[arg(long)]
    pub dataplane: DataplaneKind,
    /// With --dataplane iptables: proxy node-local and hairpin connections to published TCP
    /// ports in userland, as dockerd does by default [default: true].
    // false writes Docker's `--userland-proxy=false` rules instead (hairpin DNAT,
    // route_localnet). The eBPF dataplane needs no proxy and ignores it.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub userland_proxy: bool,
    /// Turn on net.ipv4.ip_forward [default: true].
    // false leaves it alone.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub ip_forward: bool,
    /// The default bridge's gateway address and prefix, e.g. 172.26.0.1/16.
    #[arg(long)]
    pub bip: Option<Ipv4Net>,
    /// Pools for network subnets: base=CIDR,size=N, IPv4 or IPv6 (repeatable) [default:
    /// Docker's IPv4 pools; IPv6 subnets then come from a unique local /48 of the agent's].
    // An IPv6 pool given replaces the automatic ULA /48, as in Docker 27.
    #[arg(long = "default-address-pool", value_name = "base=CIDR,size=N")]
    pub default_address_pools: Vec<AddressPool>,
    /// MTU of the default bridge and new networks [default: the uplink's].
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Inter-container communication on the default bridge [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub icc: bool,
    /// Masquerade the default bridge's outgoing traffic [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub ip_masq: bool,
    /// Let the outside reach published container ports at the containers' own addresses on
    /// every nat-mode network, as dockerd's allow-direct-routing [default: false].
    // Skips the drop of direct access (Docker 28's raw-table rule) on every network.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub allow_direct_routing: bool,
    /// Default host address of published ports, IPv4 or IPv6 [default: 0.0.0.0, and :: for
    /// containers with an IPv6 address].
    #[arg(long)]
    pub ip: IpAddr,
    /// IPv6 on the default bridge network, as dockerd's --ipv6 [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub ipv6: bool,
    /// The default bridge's IPv6 subnet, with --ipv6 [default: a /64 of the IPv6 pools].
    #[arg(long)]
    pub fixed_cidr_v6: Option<Ipv6Net>,
    /// With --dataplane iptables: program Docker's ip6tables rules for IPv6 networks, as
    /// dockerd 27's ip6tables [default: true].
    // Without them IPv6 networks are routed as they are: no DNAT, masquerade or isolation.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub ip6tables: bool,
    /// Upstream resolvers for containers' DNS (IP:PORT, repeatable) [default: /etc/resolv.conf].
    // Where containers' DNS servers forward names that are not containers'.
    #[arg(long)]
    pub dns: Option<Vec<SocketAddr>>,
    /// Host ports for dynamic publishing, START-END [default: 32768-60999].
    // Handed out for `-p CTRPORT` and `-P`.
    #[arg(long)]
    pub port_range: PortRange,
    /// Source ports for masqueraded traffic, START-END, or "auto": keep the container's
    /// port when free, else pick from the kernel's range (as MASQUERADE does) [default: auto].
    // A range should stay apart from the node's ephemeral ports
    // (net.ipv4.ip_local_port_range, 32768-60999 by default).
    #[arg(long)]
    pub masquerade_port_range: MasqueradePorts,
    /// Entries of the connection-tracking table, two per masqueraded or linked flow
    /// [default: from the node's memory, as nf_conntrack_max: 65536 above 1 GiB, 262144
    /// above 4 GiB].
    // Unset, [`flow_table_size`] sizes it from the node's memory.
    #[arg(long)]
    pub conntrack_max: Option<u32>,
    /// Entries of the published-port flow table, one per flow [default: as conntrack-max's].
    #[arg(long)]
    pub nat_flows_max: Option<u32>,
    /// Seconds before an idle UDP or ICMP flow seen one way only is forgotten [default: 30].
    #[arg(long)]
    pub udp_idle_timeout: u64,
    /// Seconds before an idle UDP or ICMP flow seen both ways is forgotten [default: 120].
    #[arg(long)]
    pub udp_stream_timeout: u64,
    /// Seconds before an idle established TCP flow is forgotten [default: 432000].
    #[arg(long)]
    pub tcp_idle_timeout: u64,
    /// Seconds before a TCP flow not yet answered is forgotten [default: 30].
    #[arg(long)]
    pub tcp_unreplied_timeout: u64,
    /// Seconds before a closing TCP flow (FIN seen) is forgotten [default: 10].
    #[arg(long)]
    pub tcp_closing_timeout: u64,
    /// cgroup v2 whose processes reach published ports through 127.0.0.1 and the node's
    /// addresses [default: the cgroup2 root].
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Serve Docker's remote network and IPAM driver protocol as plugin NAME
    /// (`docker network create -d NAME [--ipam-driver NAME]`).
    #[arg(long, value_name = "NAME")]
    pub docker_plugin: Option<String>,
    /// The plugin's socket [default: /run/docker/plugins/NAME.sock].
    #[arg(long, value_name = "PATH")]
    pub docker_plugin_socket: Option<PathBuf>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics, e.g. 127.0.0.1:9323 (off by
    /// default, like dockerd's metrics-addr).
    // A TCP listener in the network namespace the agent runs in; docs/metrics.md lists the
    // metric families.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,
    /// Route another node's pod CIDR through its address of the same family, as CIDR=VIA
    /// (repeatable; IPv4 or IPv6): the host-gw routing of a cluster whose nodes share the
    /// uplink network (docs/kubernetes.md).
    #[arg(long = "peer-node", value_name = "CIDR=VIA")]
    pub peer_node: Vec<crate::peers::PeerNode>,
}

/// Where dockerd discovers plugins by their socket's name.
pub const DOCKER_PLUGIN_DIR: &str = "/run/docker/plugins";

impl Default for Settings {
    fn default() -> Self {
        Settings {
            uplink: Vec::new(),
            uplink_hook: UplinkHook::Auto,
            state_dir: "/var/lib/bpfbridge".into(),
            pin_dir: "/sys/fs/bpf/bpfbridge".into(),
            netns_dir: crate::netns::NETNS_RUN_DIR.into(),
            dataplane: DataplaneKind::Ebpf,
            userland_proxy: true,
            ip_forward: true,
            bip: None,
            default_address_pools: AddressPool::docker_defaults(),
            mtu: None,
            icc: true,
            ip_masq: true,
            allow_direct_routing: false,
            ip: Ipv4Addr::UNSPECIFIED.into(),
            ipv6: false,
            fixed_cidr_v6: None,
            ip6tables: true,
            dns: None,
            port_range: PortRange {
                start: 32768,
                end: 60999,
            },
            masquerade_port_range: MasqueradePorts::Auto,
            conntrack_max: None,
            nat_flows_max: None,
            udp_idle_timeout: 30,
            udp_stream_timeout: 120,
            tcp_idle_timeout: 432_000,
            tcp_unreplied_timeout: 30,
            tcp_closing_timeout: 10,
            cgroup: None,
            docker_plugin: None,
            docker_plugin_socket: None,
            metrics_addr: None,
            peer_node: Vec::new(),
        }
    }
}

impl Settings {
    /// Reads a config file, `.json` as JSON, anything else as TOML: the keys it has
    /// override the defaults.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(Error::io(format!("reading config file {}", path.display())))?;
        let bad =
            |e: String| Error::InvalidArgument(format!("config file {}: {e}", path.display()));
        let settings: Settings = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?
        } else {
            toml::from_str(&text).map_err(|e| bad(e.to_string()))?
        };
        settings.validate()?;
        Ok(settings)
    }
}

/// The flags of `bpfbridge agent` that set [`Settings`]: the ones given on the command
/// line, to put on top of the config file's or the default settings.
#[derive(Clone, Debug)]
pub struct SettingsFlags(clap::ArgMatches);

impl clap::FromArgMatches for SettingsFlags {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(SettingsFlags(matches.clone()))
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.0 = matches.clone();
        Ok(())
    }
}

impl clap::Args for SettingsFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        // Every setting has a default below the flags, so none is required; clap would
        // require the flags of fields that are not `Option`s.
        <Settings as clap::Args>::augment_args(cmd).mut_args(|arg| arg.required(false))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl SettingsFlags {
    /// The flags given, on top of `base`.
    pub fn apply(&self, mut base: Settings) -> Result<Settings> {
        // clap's update sets only the fields whose flags were given (there are no clap
        // defaults to mistake for given flags).
        clap::FromArgMatches::update_from_arg_matches(&mut base, &self.0)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        base.validate()?;
        Ok(base)
    }
}

/// The largest flow table a flag may ask for: a BPF hash map allocates its buckets when
/// it is made, 16 bytes each, so this bounds that to 256 MiB.
pub const FLOW_TABLE_MAX: u32 = 1 << 24;

/// The longest idle timeout, in seconds (about 136 years): its nanoseconds fit in the
/// 64-bit clock the flow tables keep.
pub const TIMEOUT_MAX: u64 = u32::MAX as u64;

/// The default size of a flow table on a node with `mem_total` bytes of memory: what the
/// kernel gives nf_conntrack_max (nf_conntrack_init_start): 262,144 above 4 GiB, 65,536
/// above 1 GiB, else one entry per 128 KiB, and never fewer than 1,024.
pub fn flow_table_size(mem_total: u64) -> u32 {
    const GIB: u64 = 1 << 30;
    match mem_total {
        m if m > 4 * GIB => 262_144,
        m if m > GIB => 65_536,
        m => u32::try_from(m / (128 << 10)).unwrap_or(u32::MAX).max(1024),
    }
}

/// `MemTotal` of a /proc/meminfo text, in bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut fields = line["MemTotal:".len()..].split_whitespace();
    let kib: u64 = fields.next()?.parse().ok()?;
    (fields.next() == Some("kB")).then_some(kib * 1024)
}

/// The sizes of the flow tables the dataplane makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTableSizes {
    pub conntrack: u32,
    pub nat_flows: u32,
}

impl Settings {
    /// The flow tables' sizes: the settings, else sized for a node with `mem_total` bytes.
    pub fn flow_table_sizes(&self, mem_total: u64) -> FlowTableSizes {
        let default = flow_table_size(mem_total);
        FlowTableSizes {
            conntrack: self.conntrack_max.unwrap_or(default),
            nat_flows: self.nat_flows_max.unwrap_or(default),
        }
    }

    /// The idle timeouts of translated flows.
    pub fn flow_timeouts(&self) -> crate::dataplane::FlowTimeouts {
        let secs = std::time::Duration::from_secs;
        crate::dataplane::FlowTimeouts {
            tcp_established: secs(self.tcp_idle_timeout),
            tcp_unreplied: secs(self.tcp_unreplied_timeout),
            tcp_closing: secs(self.tcp_closing_timeout),
            udp_unreplied: secs(self.udp_idle_timeout),
            udp_stream: secs(self.udp_stream_timeout),
        }
    }

    /// The Docker plugin's name and socket, when the agent serves one.
    pub fn docker_plugin(&self) -> Option<(&str, PathBuf)> {
        let name = self.docker_plugin.as_deref()?;
        let socket = self
            .docker_plugin_socket
            .clone()
            .unwrap_or_else(|| Path::new(DOCKER_PLUGIN_DIR).join(format!("{name}.sock")));
        Some((name, socket))
    }

    fn validate(&self) -> Result<()> {
        if let Some(name) = &self.docker_plugin {
            crate::model::validate_name("Docker plugin", name)?;
        } else if self.docker_plugin_socket.is_some() {
            return Err(Error::InvalidArgument(
                "docker-plugin-socket needs docker-plugin NAME".into(),
            ));
        }
        for (name, value, min) in [
            ("conntrack-max", self.conntrack_max, 2),
            ("nat-flows-max", self.nat_flows_max, 1),
        ] {
            if let Some(value) = value
                && !(min..=FLOW_TABLE_MAX).contains(&value)
            {
                return Err(Error::InvalidArgument(format!(
                    "--{name} {value}: must be between {min} and {FLOW_TABLE_MAX}"
                )));
            }
        }
        for (name, seconds) in [
            ("udp-idle-timeout", self.udp_idle_timeout),
            ("udp-stream-timeout", self.udp_stream_timeout),
            ("tcp-idle-timeout", self.tcp_idle_timeout),
            ("tcp-unreplied-timeout", self.tcp_unreplied_timeout),
            ("tcp-closing-timeout", self.tcp_closing_timeout),
        ] {
            if !(1..=TIMEOUT_MAX).contains(&seconds) {
                return Err(Error::InvalidArgument(format!(
                    "--{name} {seconds}: must be between 1 and {TIMEOUT_MAX} seconds"
                )));
            }
        }
        if let Some(bip) = self.bip
            && (bip.prefix_len() > 30
                || bip.addr() == bip.network()
                || bip.addr() == bip.broadcast())
        {
            return Err(Error::InvalidArgument(format!(
                "--bip {bip}: give the gateway address and prefix, e.g. 172.26.0.1/16"
            )));
        }
        if let Some(addr) = self.metrics_addr
            && addr.port() == 0
        {
            return Err(Error::InvalidArgument(format!(
                "--metrics-addr {addr}: give a port for Prometheus to scrape, e.g. {}:9323",
                addr.ip()
            )));
        }
        if let Some(mtu) = self.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(Error::InvalidArgument(format!(
                "--mtu {mtu}: must be between 68 and 65535"
            )));
        }
        if self.default_address_pools.is_empty() {
            return Err(Error::InvalidArgument(
                "default-address-pools must not be empty".into(),
            ));
        }
        self.default_address_pools
            .iter()
            .try_for_each(AddressPool::validate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        settings: SettingsFlags,
    }

    /// `args` as `bpfbridge agent` flags on top of `base`.
    fn with_flags(base: Settings, args: &[&str]) -> Result<Settings> {
        let flags = Flags::try_parse_from(std::iter::once("agent").chain(args.iter().copied()))
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        flags.settings.apply(base)
    }

    fn refused(args: &[&str]) -> String {
        match with_flags(Settings::default(), args) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{args:?} accepted"),
        }
    }

    #[test]
    fn layers_and_formats() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("bpfbridge.toml");
        std::fs::write(
            &toml_path,
            "mtu = 1400\nicc = false\nbip = \"172.26.0.1/16\"\ndefault-address-pools = [{ base = \"10.10.0.0/16\", size = 24 }]\ndataplane = \"iptables\"\nport-range = \"41000-41010\"\n",
        )
        .unwrap();
        let settings = Settings::from_file(&toml_path).unwrap();
        assert_eq!(settings.mtu, Some(1400));
        assert!(!settings.icc && settings.ip_masq);
        assert_eq!(settings.dataplane, DataplaneKind::Iptables);
        assert_eq!(
            settings.port_range,
            PortRange {
                start: 41000,
                end: 41010
            }
        );
        assert_eq!(
            settings.default_address_pools,
            vec!["base=10.10.0.0/16,size=24".parse().unwrap()]
        );
        let flagged = with_flags(settings.clone(), &["--icc", "--dataplane", "ebpf"]).unwrap();
        assert!(flagged.icc, "flags override the file");
        assert_eq!(flagged.dataplane, DataplaneKind::Ebpf);
        assert_eq!(
            Settings {
                icc: settings.icc,
                dataplane: settings.dataplane,
                ..flagged
            },
            settings,
            "flags not given keep the file's settings"
        );
        assert_eq!(
            with_flags(Settings::default(), &[]).unwrap(),
            Settings::default()
        );

        let json_path = dir.path().join("daemon.json");
        std::fs::write(
            &json_path,
            r#"{"ip-forward": false, "ip": "127.0.0.1", "masquerade-port-range": "61000-61001", "metrics-addr": "127.0.0.1:9323"}"#,
        )
        .unwrap();
        let s = Settings::from_file(&json_path).unwrap();
        assert!(!s.ip_forward);
        assert_eq!(s.ip, IpAddr::from(Ipv4Addr::LOCALHOST));
        assert_eq!(s.masquerade_port_range.bounds(), Some((61000, 61001)));
        assert_eq!(s.metrics_addr, Some("127.0.0.1:9323".parse().unwrap()));
    }

    #[test]
    fn the_uplink_key_takes_one_name_or_a_list() {
        let one: Settings = serde_json::from_str(r#"{"uplink": "eth0"}"#).unwrap();
        assert_eq!(one.uplink, ["eth0"]);
        let many: Settings = toml::from_str(r#"uplink = ["eth0", "wg0"]"#).unwrap();
        assert_eq!(many.uplink, ["eth0", "wg0"]);
        assert_eq!(many.uplink_hook, UplinkHook::Auto);
        let hook: Settings = toml::from_str(r#"uplink-hook = "xdp""#).unwrap();
        assert_eq!(hook.uplink_hook, UplinkHook::Xdp);
    }

    #[test]
    fn every_setting_is_a_flag_and_a_key() {
        let s = with_flags(
            Settings::default(),
            &[
                "--uplink=eth1",
                "--uplink=wg0",
                "--uplink-hook=tc",
                "--state-dir=/s",
                "--pin-dir=/p",
                "--netns-dir=/n",
                "--dataplane=iptables",
                "--userland-proxy=false",
                "--ip-forward=false",
                "--bip=172.26.0.1/16",
                "--default-address-pool=base=10.0.0.0/8,size=24",
                "--default-address-pool=base=10.1.0.0/16,size=24",
                "--default-address-pool=base=2001:db8::/56,size=64",
                "--mtu=1400",
                "--icc=false",
                "--ip-masq=false",
                "--allow-direct-routing",
                "--ip=127.0.0.1",
                "--ipv6",
                "--fixed-cidr-v6=2001:db8:1::/64",
                "--ip6tables=false",
                "--dns=192.0.2.1:53",
                "--dns=192.0.2.2:53",
                "--port-range=1000-2000",
                "--masquerade-port-range=3000-4000",
                "--conntrack-max=100",
                "--nat-flows-max=200",
                "--udp-idle-timeout=1",
                "--udp-stream-timeout=2",
                "--tcp-idle-timeout=3",
                "--tcp-unreplied-timeout=4",
                "--tcp-closing-timeout=5",
                "--cgroup=/sys/fs/cgroup/x",
                "--docker-plugin=bb",
                "--docker-plugin-socket=/run/bb.sock",
                "--metrics-addr=127.0.0.1:9323",
                "--peer-node=10.244.2.0/24=192.0.2.12",
            ],
        )
        .unwrap();
        // What `bpfbridge info` shows is what a config file takes back.
        let shown = serde_json::to_value(&s).unwrap();
        let object = shown.as_object().unwrap();
        assert_eq!(object["dataplane"], "iptables");
        assert_eq!(object["port-range"], "1000-2000");
        assert_eq!(object["masquerade-port-range"], "3000-4000");
        assert_eq!(
            serde_json::from_value::<Settings>(shown.clone()).unwrap(),
            s
        );
        let unchanged: Vec<&String> = object
            .keys()
            .filter(|k| {
                let default = serde_json::to_value(Settings::default()).unwrap();
                default[k.as_str()] == object[k.as_str()]
            })
            .collect();
        assert!(
            unchanged.is_empty(),
            "flags that set nothing: {unchanged:?}"
        );
        assert_eq!(
            serde_json::to_value(Settings::default()).unwrap()["masquerade-port-range"],
            "auto"
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        for (text, expected) in [
            ("no-such-key = 1\n", "unknown field `no-such-key`"),
            ("dataplane = \"xdp\"\n", "unknown variant `xdp`"),
            (
                "port-range = \"2000-1000\"\n",
                "invalid port range \"2000-1000\"",
            ),
            (
                "masquerade-port-range = \"x\"\n",
                "expected auto or START-END",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let error = Settings::from_file(&path).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
        for pool in [
            "base=10.0.0.0/16",
            "size=24",
            "base=10.0.0.0/16,size=8",
            "base=x,size=24",
        ] {
            assert!(pool.parse::<AddressPool>().is_err(), "{pool}");
        }
        for range in ["0-10", "10", "10-", "5-4", "1-65536", "a-b"] {
            assert!(range.parse::<PortRange>().is_err(), "{range}");
        }
        assert!(refused(&["--bip", "172.26.0.0/16"]).starts_with("--bip 172.26.0.0/16:"));
        assert!(refused(&["--mtu", "10"]).starts_with("--mtu 10:"));
        assert!(refused(&["--metrics-addr", "0.0.0.0:0"]).starts_with("--metrics-addr 0.0.0.0:0:"));
        assert!(
            refused(&["--metrics-addr", "localhost"]).contains("invalid socket address syntax")
        );
        assert!(refused(&["--dataplane", "xdp"]).contains("[possible values: ebpf, iptables]"));
        assert!(refused(&["--port-range", "1-0"]).contains("invalid port range \"1-0\""));
        assert!(
            refused(&["--docker-plugin-socket", "/x.sock"])
                .contains("docker-plugin-socket needs docker-plugin NAME")
        );
    }

    #[test]
    fn timeouts_and_table_sizes_are_checked() {
        assert_eq!(
            refused(&["--tcp-unreplied-timeout", "0"]),
            "--tcp-unreplied-timeout 0: must be between 1 and 4294967295 seconds"
        );
        assert!(
            refused(&["--udp-stream-timeout", "18446744073709551615"])
                .starts_with("--udp-stream-timeout 18446744073709551615:")
        );
        assert_eq!(
            refused(&["--conntrack-max", "1"]),
            "--conntrack-max 1: must be between 2 and 16777216"
        );
        assert!(refused(&["--nat-flows-max", "0"]).starts_with("--nat-flows-max 0:"));

        let settings = Settings::default();
        assert_eq!(
            settings.tcp_idle_timeout, 432_000,
            "nf_conntrack's established TCP"
        );
        let t = settings.flow_timeouts();
        assert_eq!(t.udp_stream, std::time::Duration::from_secs(120));
        assert_eq!(t.tcp_closing, std::time::Duration::from_secs(10));
        let given = with_flags(Settings::default(), &["--nat-flows-max", "1000"]).unwrap();
        assert_eq!(
            given.flow_table_sizes(2 << 30),
            FlowTableSizes {
                conntrack: 65_536,
                nat_flows: 1000
            }
        );
    }

    #[test]
    fn flow_tables_are_sized_like_nf_conntrack() {
        const GIB: u64 = 1 << 30;
        // MemTotal of a "2 GiB" and a "4 GiB" machine is a little less than that.
        assert_eq!(flow_table_size(GIB / 2), 4096);
        assert_eq!(flow_table_size(100 << 20), 1024, "never fewer than 1024");
        assert_eq!(flow_table_size(GIB), 8192);
        assert_eq!(flow_table_size(2 * GIB - (100 << 20)), 65_536);
        assert_eq!(flow_table_size(4 * GIB), 65_536);
        assert_eq!(flow_table_size(4 * GIB + 1), 262_144);
        assert_eq!(flow_table_size(64 * GIB), 262_144);
        let meminfo = "MemTotal:        2014420 kB\nMemFree:          120000 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(2_014_420 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    }
}
