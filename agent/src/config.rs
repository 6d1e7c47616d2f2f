//! The daemon's settings: built-in defaults, overridden by a config file (TOML or JSON,
//! keys like dockerd's daemon.json), overridden by command-line flags.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A pool that network subnets are carved from: `base` split into blocks of `/size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressPool {
    pub base: Ipv4Net,
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

    fn validate(&self) -> Result<()> {
        if self.size < self.base.prefix_len() || self.size > 30 {
            return Err(Error::InvalidArgument(format!(
                "address pool {}: size /{} must be between /{} and /30",
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
                Some(("base", v)) => base = Some(v.parse::<Ipv4Net>().map_err(|_| bad())?.trunc()),
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

/// The effective settings, as `bpfbridge info` shows them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Settings {
    pub uplink: Option<String>,
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub netns_dir: PathBuf,
    pub dataplane: String,
    /// With `--dataplane iptables`: a userland proxy per published TCP port for node-local
    /// and hairpin access, as dockerd's default; false writes Docker's
    /// `--userland-proxy=false` rules instead (hairpin DNAT, route_localnet). The eBPF
    /// dataplane needs no proxy and ignores it.
    pub userland_proxy: bool,
    /// Whether the agent turns on net.ipv4.ip_forward (false leaves it alone).
    pub ip_forward: bool,
    /// The default bridge's gateway address and prefix, e.g. 172.26.0.1/16.
    pub bip: Option<Ipv4Net>,
    pub default_address_pools: Vec<AddressPool>,
    /// MTU of the default bridge and of new networks (default: the uplink's).
    pub mtu: Option<u32>,
    /// Inter-container communication on the default bridge.
    pub icc: bool,
    /// Masquerade of the default bridge's outgoing traffic.
    pub ip_masq: bool,
    /// Default host address of published ports.
    pub ip: Ipv4Addr,
    /// Where containers' DNS servers forward names that are not containers' (default: the
    /// node's /etc/resolv.conf).
    pub dns: Option<Vec<SocketAddr>>,
    /// Host ports handed out for `-p CTRPORT` and `-P`: `START-END`.
    pub port_range: String,
    /// Source ports masquerade hands out: `START-END`, apart from the node's ephemeral
    /// ports (net.ipv4.ip_local_port_range, 32768-60999 by default).
    pub masquerade_port_range: String,
    /// Entries of the connection-tracking table (two per masqueraded or linked flow);
    /// `None`: sized from the node's memory ([`flow_table_size`]).
    pub conntrack_max: Option<u32>,
    /// Entries of the published-port flow table (one per flow); `None`: sized from the
    /// node's memory ([`flow_table_size`]).
    pub nat_flows_max: Option<u32>,
    /// Seconds a UDP or ICMP flow seen one way only may be idle before it is forgotten.
    pub udp_idle_timeout: u64,
    /// Seconds a UDP or ICMP flow seen both ways may be idle before it is forgotten.
    pub udp_stream_timeout: u64,
    /// Seconds an established TCP flow may be idle before it is forgotten.
    pub tcp_idle_timeout: u64,
    /// Seconds a TCP flow not yet answered (SYN sent) may be idle before it is forgotten.
    pub tcp_unreplied_timeout: u64,
    /// Seconds a closing TCP flow (FIN seen) may be idle before it is forgotten.
    pub tcp_closing_timeout: u64,
    /// The cgroup (v2) whose sockets get node-local access to published ports (default:
    /// the cgroup2 root).
    pub cgroup: Option<PathBuf>,
    /// Serve Docker's remote network and IPAM driver protocol under this plugin name.
    pub docker_plugin: Option<String>,
    /// The plugin's socket (default: /run/docker/plugins/NAME.sock, where dockerd looks).
    pub docker_plugin_socket: Option<PathBuf>,
}

/// Where dockerd discovers plugins by their socket's name.
pub const DOCKER_PLUGIN_DIR: &str = "/run/docker/plugins";

impl Default for Settings {
    fn default() -> Self {
        Settings {
            uplink: None,
            state_dir: "/var/lib/bpfbridge".into(),
            pin_dir: "/sys/fs/bpf/bpfbridge".into(),
            netns_dir: crate::netns::NETNS_RUN_DIR.into(),
            dataplane: "ebpf".into(),
            userland_proxy: true,
            ip_forward: true,
            bip: None,
            default_address_pools: AddressPool::docker_defaults(),
            mtu: None,
            icc: true,
            ip_masq: true,
            ip: Ipv4Addr::UNSPECIFIED,
            dns: None,
            port_range: "32768-60999".into(),
            masquerade_port_range: MASQUERADE_PORTS_AUTO.into(),
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
        }
    }
}

/// Settings that may be given, by a config file or by flags; unset fields keep what the
/// layer below says.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Overrides {
    pub uplink: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    pub netns_dir: Option<PathBuf>,
    pub dataplane: Option<String>,
    pub userland_proxy: Option<bool>,
    pub ip_forward: Option<bool>,
    pub bip: Option<Ipv4Net>,
    pub default_address_pools: Option<Vec<AddressPool>>,
    pub mtu: Option<u32>,
    pub icc: Option<bool>,
    pub ip_masq: Option<bool>,
    pub ip: Option<Ipv4Addr>,
    pub dns: Option<Vec<SocketAddr>>,
    pub port_range: Option<String>,
    pub masquerade_port_range: Option<String>,
    pub conntrack_max: Option<u32>,
    pub nat_flows_max: Option<u32>,
    pub udp_idle_timeout: Option<u64>,
    pub udp_stream_timeout: Option<u64>,
    pub tcp_idle_timeout: Option<u64>,
    pub tcp_unreplied_timeout: Option<u64>,
    pub tcp_closing_timeout: Option<u64>,
    pub cgroup: Option<PathBuf>,
    pub docker_plugin: Option<String>,
    pub docker_plugin_socket: Option<PathBuf>,
}

impl Overrides {
    /// Reads a config file: `.json` as JSON, anything else as TOML.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(Error::io(format!("reading config file {}", path.display())))?;
        let bad =
            |e: String| Error::InvalidArgument(format!("config file {}: {e}", path.display()));
        if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))
        } else {
            toml::from_str(&text).map_err(|e| bad(e.to_string()))
        }
    }

    /// `self` on top of `base`.
    pub fn apply(self, base: Settings) -> Result<Settings> {
        let settings = Settings {
            uplink: self.uplink.or(base.uplink),
            state_dir: self.state_dir.unwrap_or(base.state_dir),
            pin_dir: self.pin_dir.unwrap_or(base.pin_dir),
            netns_dir: self.netns_dir.unwrap_or(base.netns_dir),
            dataplane: self.dataplane.unwrap_or(base.dataplane),
            userland_proxy: self.userland_proxy.unwrap_or(base.userland_proxy),
            ip_forward: self.ip_forward.unwrap_or(base.ip_forward),
            bip: self.bip.or(base.bip),
            default_address_pools: self
                .default_address_pools
                .unwrap_or(base.default_address_pools),
            mtu: self.mtu.or(base.mtu),
            icc: self.icc.unwrap_or(base.icc),
            ip_masq: self.ip_masq.unwrap_or(base.ip_masq),
            ip: self.ip.unwrap_or(base.ip),
            dns: self.dns.or(base.dns),
            port_range: self.port_range.unwrap_or(base.port_range),
            masquerade_port_range: self
                .masquerade_port_range
                .unwrap_or(base.masquerade_port_range),
            conntrack_max: self.conntrack_max.or(base.conntrack_max),
            nat_flows_max: self.nat_flows_max.or(base.nat_flows_max),
            udp_idle_timeout: self.udp_idle_timeout.unwrap_or(base.udp_idle_timeout),
            udp_stream_timeout: self.udp_stream_timeout.unwrap_or(base.udp_stream_timeout),
            tcp_idle_timeout: self.tcp_idle_timeout.unwrap_or(base.tcp_idle_timeout),
            tcp_unreplied_timeout: self
                .tcp_unreplied_timeout
                .unwrap_or(base.tcp_unreplied_timeout),
            tcp_closing_timeout: self.tcp_closing_timeout.unwrap_or(base.tcp_closing_timeout),
            cgroup: self.cgroup.or(base.cgroup),
            docker_plugin: self.docker_plugin.or(base.docker_plugin),
            docker_plugin_socket: self.docker_plugin_socket.or(base.docker_plugin_socket),
        };
        settings.validate()?;
        Ok(settings)
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

    /// The dynamic host port range, inclusive.
    pub fn port_range(&self) -> Result<(u16, u16)> {
        parse_port_range("port-range", &self.port_range)
    }

    /// The masquerade source port range, inclusive; `None` ("auto"): netfilter's choice,
    /// the container's own port when free, else one of the kernel's range for its class.
    pub fn masquerade_port_range(&self) -> Result<Option<(u16, u16)>> {
        if self.masquerade_port_range == MASQUERADE_PORTS_AUTO {
            return Ok(None);
        }
        parse_port_range("masquerade-port-range", &self.masquerade_port_range).map(Some)
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
        self.port_range()?;
        self.masquerade_port_range()?;
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
        if self.dataplane != "ebpf" && self.dataplane != "iptables" {
            return Err(Error::InvalidArgument(format!(
                "dataplane {:?} is not available (\"ebpf\" or \"iptables\")",
                self.dataplane
            )));
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

/// `START-END`, inclusive, within 1-65535.
/// `--masquerade-port-range` when no range is set.
pub const MASQUERADE_PORTS_AUTO: &str = "auto";

fn parse_port_range(name: &str, value: &str) -> Result<(u16, u16)> {
    let bad = || {
        Error::InvalidArgument(format!(
            "{name} {value:?}: expected START-END within 1-65535"
        ))
    };
    let (start, end) = value.split_once('-').ok_or_else(bad)?;
    let (start, end): (u16, u16) = (
        start.parse().map_err(|_| bad())?,
        end.parse().map_err(|_| bad())?,
    );
    if start == 0 || end < start {
        return Err(bad());
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_and_formats() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("bpfbridge.toml");
        std::fs::write(
            &toml_path,
            "mtu = 1400\nicc = false\nbip = \"172.26.0.1/16\"\ndefault-address-pools = [{ base = \"10.10.0.0/16\", size = 24 }]\n",
        )
        .unwrap();
        let file = Overrides::from_file(&toml_path).unwrap();
        let settings = file.apply(Settings::default()).unwrap();
        assert_eq!(settings.mtu, Some(1400));
        assert!(!settings.icc && settings.ip_masq);
        assert_eq!(
            settings.default_address_pools,
            vec!["base=10.10.0.0/16,size=24".parse().unwrap()]
        );
        let flags = Overrides {
            icc: Some(true),
            ..Overrides::default()
        };
        assert!(
            flags.apply(settings).unwrap().icc,
            "flags override the file"
        );

        let json_path = dir.path().join("daemon.json");
        std::fs::write(&json_path, r#"{"ip-forward": false, "ip": "127.0.0.1"}"#).unwrap();
        let s = Overrides::from_file(&json_path)
            .unwrap()
            .apply(Settings::default())
            .unwrap();
        assert!(!s.ip_forward);
        assert_eq!(s.ip, Ipv4Addr::LOCALHOST);
    }

    #[test]
    fn bad_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "no-such-key = 1\n").unwrap();
        assert!(Overrides::from_file(&path).is_err());
        for pool in [
            "base=10.0.0.0/16",
            "size=24",
            "base=10.0.0.0/16,size=8",
            "base=x,size=24",
        ] {
            assert!(pool.parse::<AddressPool>().is_err(), "{pool}");
        }
        let bad_bip = Overrides {
            bip: Some("172.26.0.0/16".parse().unwrap()),
            ..Default::default()
        };
        assert!(bad_bip.apply(Settings::default()).is_err());
        let bad_mtu = Overrides {
            mtu: Some(10),
            ..Default::default()
        };
        assert!(bad_mtu.apply(Settings::default()).is_err());
    }

    #[test]
    fn timeouts_and_table_sizes_are_checked() {
        let refused = |overrides: Overrides| match overrides.apply(Settings::default()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        };
        let zero = Overrides {
            tcp_unreplied_timeout: Some(0),
            ..Default::default()
        };
        assert_eq!(
            refused(zero),
            "--tcp-unreplied-timeout 0: must be between 1 and 4294967295 seconds"
        );
        let huge = Overrides {
            udp_stream_timeout: Some(u64::MAX),
            ..Default::default()
        };
        assert!(refused(huge).starts_with("--udp-stream-timeout 18446744073709551615:"));
        let tiny = Overrides {
            conntrack_max: Some(1),
            ..Default::default()
        };
        assert_eq!(
            refused(tiny),
            "--conntrack-max 1: must be between 2 and 16777216"
        );
        let zero = Overrides {
            nat_flows_max: Some(0),
            ..Default::default()
        };
        assert!(refused(zero).starts_with("--nat-flows-max 0:"));

        let settings = Settings::default();
        assert_eq!(
            settings.tcp_idle_timeout, 432_000,
            "nf_conntrack's established TCP"
        );
        let t = settings.flow_timeouts();
        assert_eq!(t.udp_stream, std::time::Duration::from_secs(120));
        assert_eq!(t.tcp_closing, std::time::Duration::from_secs(10));
        let given = Overrides {
            nat_flows_max: Some(1000),
            ..Default::default()
        }
        .apply(Settings::default())
        .unwrap();
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
