//! What the runtime passes: the `CNI_*` environment and the plugin configuration on stdin.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use serde::Deserialize;

use super::{
    CURRENT_VERSION, CniError, DEFAULT_AGENT_SOCKET, DEFAULT_STATE_DIR, ErrorCode,
    SUPPORTED_VERSIONS, result::Dns, version_at_least,
};
use crate::model::{CniNetwork, CniPortMapping, MacAddress, Proto};

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    /// The first version of the spec that has the command.
    fn since(self) -> &'static str {
        match self {
            Command::Status | Command::Gc => "1.1.0",
            Command::Check => "0.4.0",
            Command::Add | Command::Del | Command::Version => "0.1.0",
        }
    }
}

/// The environment of one invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
}

fn invalid_env(details: String) -> CniError {
    CniError::new(
        ErrorCode::InvalidEnvironment,
        "invalid CNI environment variables",
        details,
    )
}

impl Invocation {
    /// Reads the `CNI_*` variables through `var`; each command's required ones must be set.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let command = match var("CNI_COMMAND") {
            None => return Err(invalid_env("CNI_COMMAND is not set".into())),
            Some(c) => Command::parse(&c).ok_or_else(|| {
                invalid_env(format!(
                    "CNI_COMMAND {c:?}: expected ADD, DEL, CHECK, STATUS, GC or VERSION"
                ))
            })?,
        };
        let required: &[&str] = match command {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Command::Status | Command::Gc | Command::Version => &[],
        };
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|name| var(name).is_none_or(|v| v.is_empty()))
            .collect();
        if !missing.is_empty() {
            return Err(invalid_env(format!(
                "{} not set, required by {command:?}",
                missing.join(", ")
            )));
        }
        let container_id = var("CNI_CONTAINERID").unwrap_or_default();
        let valid_id = container_id.is_empty()
            || (container_id.starts_with(|c: char| c.is_ascii_alphanumeric())
                && container_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')));
        if !valid_id {
            return Err(invalid_env(format!(
                "CNI_CONTAINERID {container_id:?}: expected [a-zA-Z0-9][a-zA-Z0-9_.-]*"
            )));
        }
        Ok(Invocation {
            command,
            container_id,
            netns: var("CNI_NETNS").unwrap_or_default(),
            ifname: var("CNI_IFNAME").unwrap_or_default(),
        })
    }
}

/// A `portMappings` entry as runtimes write it: CONVENTIONS.md's keys, or the Go field
/// names containerd's go-cni sends (Go's JSON decoding, which the reference portmap plugin
/// uses, ignores case).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort", alias = "HostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort", alias = "ContainerPort")]
    pub container_port: u16,
    #[serde(default, alias = "Protocol")]
    pub protocol: Option<String>,
    #[serde(rename = "hostIP", default, alias = "HostIP", alias = "hostIp")]
    pub host_ip: Option<String>,
}

/// `runtimeConfig`: the capabilities the runtime fills in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub port_mappings: Vec<PortMapping>,
    pub ips: Vec<String>,
    pub mac: Option<String>,
}

/// Capabilities the plugin accepts and leaves alone (besides the ones it takes:
/// `portMappings`, `ips` and `mac`).
const IGNORED_CAPABILITIES: &[&str] = &["io.kubernetes.cri.pod-annotations"];

/// `cni.dev/valid-attachments` of a `GC`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The plugin configuration, as far as the plugin reads it; other keys pass unread.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// The agent network: `network`, else the configuration's `name`.
    pub network: CniNetwork,
    pub agent_socket: PathBuf,
    pub state_dir: PathBuf,
    pub dns: Dns,
    pub runtime_config: RuntimeConfig,
    pub prev_result: Option<serde_json::Value>,
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// The raw configuration keys, before they are checked.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    network: Option<String>,
    subnet: Option<String>,
    gateway: Option<String>,
    ipv6_subnet: Option<String>,
    ipv6_gateway: Option<String>,
    mtu: Option<u32>,
    icc: Option<bool>,
    ip_masq: Option<bool>,
    bridge: Option<String>,
    gateway_mode: Option<String>,
    agent_socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    #[serde(default)]
    dns: Dns,
    ipam: Option<serde_json::Value>,
    #[serde(default)]
    runtime_config: BTreeMap<String, serde_json::Value>,
    prev_result: Option<serde_json::Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<ValidAttachment>>,
}

fn invalid_config(details: String) -> CniError {
    CniError::new(ErrorCode::InvalidConfig, "invalid network config", details)
}

fn unsupported(key: &str, value: &serde_json::Value) -> CniError {
    CniError::new(
        ErrorCode::UnsupportedField,
        "unsupported field in network config",
        format!("{key}: {value}"),
    )
}

/// The version the configuration asks for, for errors about it: the runtime understands an
/// error in the version it asked for.
pub fn version_of(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| CURRENT_VERSION.to_string())
}

/// Checks the version `cni_version` against what the plugin speaks and what `command` needs.
fn check_version(cni_version: &str, command: Command) -> Result<(), CniError> {
    if !SUPPORTED_VERSIONS.contains(&cni_version) {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            "incompatible CNI version",
            format!(
                "config version {cni_version:?}; plugin supports {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    if !version_at_least(cni_version, command.since()) {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            "incompatible CNI version",
            format!(
                "{command:?} needs cniVersion {} or later, the config has {cni_version}",
                command.since()
            ),
        ));
    }
    Ok(())
}

/// One address family's subnet and gateway as a configuration gives them, unchecked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct FamilyConf {
    subnet: Option<String>,
    gateway: Option<String>,
}

/// What a host-local style `ipam` section gives, per family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct IpamConf {
    ipv4: FamilyConf,
    ipv6: FamilyConf,
}

/// The subnets and gateways of a host-local style `ipam` section: the agent does the
/// address management, so only these are read, and only from host-local's keys. As
/// host-local, `ranges` is a list of range sets, one address each, and the older `subnet`
/// and `gateway` keys are one more set before them; the agent gives a container one address
/// per family, so there is at most one set per family, and the first range of a set is its
/// subnet (the others are checked, not used). Ranges that overlap are refused as host-local
/// refuses them.
fn ipam_conf(ipam: &serde_json::Value) -> Result<IpamConf, CniError> {
    let plugin = ipam.get("type").and_then(|t| t.as_str()).unwrap_or("");
    if !matches!(plugin, "" | "host-local" | "bpfbridge") {
        return Err(unsupported("ipam.type", &ipam["type"]));
    }
    let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
    let mut sets: Vec<(String, Vec<&serde_json::Value>)> = Vec::new();
    if ipam.get("subnet").is_some() || ipam.get("gateway").is_some() {
        sets.push(("ipam".into(), vec![ipam]));
    }
    match ipam.get("ranges") {
        None => {}
        Some(serde_json::Value::Array(ranges)) => {
            for (i, set) in ranges.iter().enumerate() {
                let set = set
                    .as_array()
                    .filter(|set| !set.is_empty())
                    .ok_or_else(|| {
                        invalid_config(format!("ipam.ranges[{i}]: expected a list of ranges"))
                    })?;
                sets.push((format!("ipam.ranges[{i}]"), set.iter().collect()));
            }
        }
        Some(other) => {
            return Err(invalid_config(format!(
                "ipam.ranges: expected a list of range sets, got {other}"
            )));
        }
    }
    let mut conf = IpamConf::default();
    let mut seen: Vec<(String, ipnet::IpNet)> = Vec::new();
    for (name, ranges) in sets {
        let mut family = None;
        for (j, range) in ranges.iter().enumerate() {
            let key = if name == "ipam" {
                name.clone()
            } else {
                format!("{name}[{j}]")
            };
            let Some(subnet) = text(range.get("subnet")) else {
                return Err(invalid_config(format!("{key}.subnet is missing")));
            };
            let net: ipnet::IpNet = subnet
                .parse()
                .map_err(|_| invalid_config(format!("{key}.subnet {subnet:?}: not a CIDR")))?;
            let is_ipv6 = matches!(net, ipnet::IpNet::V6(_));
            if *family.get_or_insert(is_ipv6) != is_ipv6 {
                return Err(invalid_config(format!(
                    "{key}.subnet {subnet}: a range set has one address family"
                )));
            }
            if let Some((other, _)) = seen
                .iter()
                .find(|(_, s)| s.contains(&net.network()) || net.contains(&s.network()))
            {
                return Err(invalid_config(format!(
                    "{key}.subnet {subnet} overlaps {other}"
                )));
            }
            seen.push((format!("{key}.subnet"), net));
        }
        let first = ranges[0];
        let slot = if family == Some(true) {
            &mut conf.ipv6
        } else {
            &mut conf.ipv4
        };
        if slot.subnet.is_some() {
            return Err(CniError::new(
                ErrorCode::UnsupportedField,
                "unsupported field in network config",
                format!(
                    "{name}: a second range set of the same address family (the agent gives \
                     a container one address per family)"
                ),
            ));
        }
        *slot = FamilyConf {
            subnet: text(first.get("subnet")),
            gateway: text(first.get("gateway")),
        };
    }
    Ok(conf)
}

/// Checks one family's subnet and gateway (`ipv6` or not): the subnet a CIDR of the family,
/// the gateway an address of the family inside it. `keys` name them in errors.
fn check_family(
    family: &FamilyConf,
    ipv6: bool,
    (subnet_key, gateway_key): (&str, &str),
) -> Result<(), CniError> {
    let name = if ipv6 { "IPv6" } else { "IPv4" };
    let subnet = match &family.subnet {
        Some(text) => {
            let net: ipnet::IpNet = text.parse().map_err(|_| {
                invalid_config(format!("{subnet_key} {text:?}: expected an {name} CIDR"))
            })?;
            if matches!(net, ipnet::IpNet::V6(_)) != ipv6 {
                return Err(invalid_config(format!(
                    "{subnet_key} {text:?}: expected an {name} CIDR"
                )));
            }
            Some(net)
        }
        None => None,
    };
    if let Some(text) = &family.gateway {
        let gateway: std::net::IpAddr = text
            .parse()
            .ok()
            .filter(|g: &std::net::IpAddr| g.is_ipv6() == ipv6)
            .ok_or_else(|| {
                invalid_config(format!(
                    "{gateway_key} {text:?}: expected an {name} address"
                ))
            })?;
        match subnet {
            None => {
                return Err(invalid_config(format!(
                    "{gateway_key} {text}: a gateway needs its subnet"
                )));
            }
            Some(subnet) if !subnet.contains(&gateway) || gateway == subnet.network() => {
                return Err(invalid_config(format!(
                    "{gateway_key} {gateway} is not a usable address of {subnet}"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn runtime_config(raw: BTreeMap<String, serde_json::Value>) -> Result<RuntimeConfig, CniError> {
    let mut config = RuntimeConfig::default();
    for (key, value) in raw {
        let bad = |e: serde_json::Error| {
            CniError::new(
                ErrorCode::Decoding,
                "failed to decode runtimeConfig",
                format!("{key}: {e}"),
            )
        };
        match key.as_str() {
            "portMappings" => config.port_mappings = serde_json::from_value(value).map_err(bad)?,
            "ips" => config.ips = serde_json::from_value(value).map_err(bad)?,
            "mac" => config.mac = serde_json::from_value(value).map_err(bad)?,
            ignored if IGNORED_CAPABILITIES.contains(&ignored) => {}
            // A capability the plugin would have to honour (bandwidth limits, say) is
            // refused rather than silently left out.
            _ => return Err(unsupported(&format!("runtimeConfig.{key}"), &value)),
        }
    }
    Ok(config)
}

/// The agent network the configuration describes: bpfbridge's own keys (`subnet`,
/// `gateway`, `ipv6Subnet`, `ipv6Gateway`, ...) first, else host-local's `ipam` ones, each
/// family checked. host-local ranges of IPv6 alone make an IPv6-only network, as they give
/// host-local's pods IPv6 alone; the plugin's own keys without `subnet` leave the IPv4
/// subnet to the agent's pools.
fn network_of(raw: &RawConf, name: &str) -> Result<CniNetwork, CniError> {
    let ipam = raw
        .ipam
        .as_ref()
        .map(ipam_conf)
        .transpose()?
        .unwrap_or_default();
    let ipv6_only = ipam.ipv6.subnet.is_some()
        && ipam.ipv4.subnet.is_none()
        && raw.subnet.is_none()
        && raw.gateway.is_none();
    let ipv4 = FamilyConf {
        subnet: raw.subnet.clone().or(ipam.ipv4.subnet),
        gateway: raw.gateway.clone().or(ipam.ipv4.gateway),
    };
    let ipv6 = FamilyConf {
        subnet: raw.ipv6_subnet.clone().or(ipam.ipv6.subnet),
        gateway: raw.ipv6_gateway.clone().or(ipam.ipv6.gateway),
    };
    check_family(&ipv4, false, ("subnet", "gateway"))?;
    check_family(&ipv6, true, ("ipv6Subnet", "ipv6Gateway"))?;
    Ok(CniNetwork {
        name: raw.network.clone().unwrap_or_else(|| name.to_string()),
        subnet: ipv4.subnet,
        gateway: ipv4.gateway,
        ipv6_subnet: ipv6.subnet,
        ipv6_gateway: ipv6.gateway,
        enable_ipv4: ipv6_only.then_some(false),
        mtu: raw.mtu,
        icc: raw.icc,
        ip_masq: raw.ip_masq,
        bridge: raw.bridge.clone(),
        gateway_mode: raw.gateway_mode.clone(),
    })
}

impl NetConf {
    /// Parses and checks the configuration of a command other than `VERSION`.
    pub fn parse(stdin: &[u8], command: Command) -> Result<Self, CniError> {
        let raw: RawConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                ErrorCode::Decoding,
                "failed to decode network config",
                e.to_string(),
            )
        })?;
        let cni_version = raw
            .cni_version
            .clone()
            .ok_or_else(|| invalid_config("cniVersion is missing".into()))?;
        check_version(&cni_version, command)?;
        let name = raw
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid_config("name is missing".into()))?;
        if raw.plugin_type.as_deref().is_none_or(str::is_empty) {
            return Err(invalid_config("type is missing".into()));
        }
        // DEL is best effort (SPEC.md): it needs the attachment's key, not what ADD took
        // from the configuration, so a part it cannot read does not stop it.
        let lenient = command == Command::Del;
        let network = network_of(&raw, &name).or_else(|e| {
            if lenient {
                Ok(CniNetwork {
                    name: raw.network.clone().unwrap_or_else(|| name.clone()),
                    ..CniNetwork::default()
                })
            } else {
                Err(e)
            }
        })?;
        Ok(NetConf {
            cni_version,
            name,
            network,
            agent_socket: raw
                .agent_socket
                .unwrap_or_else(|| DEFAULT_AGENT_SOCKET.into()),
            state_dir: raw.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            dns: raw.dns,
            runtime_config: runtime_config(raw.runtime_config).or_else(|e| {
                if lenient {
                    Ok(RuntimeConfig::default())
                } else {
                    Err(e)
                }
            })?,
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments,
        })
    }

    /// The `portMappings` as the agent takes them. As the reference portmap plugin: an
    /// empty `hostIP` publishes on every node address of both families, `0.0.0.0` on every
    /// IPv4 one, `::` on every IPv6 one, another address on that one alone (a mapping of a
    /// family the network does not have is left out by the agent).
    pub fn port_mappings(&self) -> Result<Vec<CniPortMapping>, CniError> {
        let mut mappings = Vec::new();
        for mapping in &self.runtime_config.port_mappings {
            let protocol = match mapping.protocol.as_deref().map(str::to_ascii_lowercase) {
                None => Proto::Tcp,
                Some(p) if p.is_empty() || p == "tcp" => Proto::Tcp,
                Some(p) if p == "udp" => Proto::Udp,
                Some(p) => {
                    return Err(unsupported(
                        "runtimeConfig.portMappings.protocol",
                        &serde_json::Value::String(p),
                    ));
                }
            };
            let host_ip = match mapping.host_ip.as_deref().unwrap_or("") {
                "" => None,
                text => Some(text.parse::<IpAddr>().map_err(|_| {
                    invalid_config(format!("portMappings hostIP {text:?}: not an address"))
                })?),
            };
            if mapping.host_port == 0 || mapping.container_port == 0 {
                return Err(invalid_config(format!(
                    "portMappings {}:{}: ports must be 1-65535",
                    mapping.host_port, mapping.container_port
                )));
            }
            mappings.push(CniPortMapping {
                host_port: mapping.host_port,
                container_port: mapping.container_port,
                protocol,
                host_ip,
            });
        }
        Ok(mappings)
    }

    /// The addresses the `ips` capability asks for: its first IPv4 and its first IPv6 one,
    /// prefixes dropped.
    pub fn requested_ips(&self) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), CniError> {
        let (mut ipv4, mut ipv6) = (None, None);
        for entry in &self.runtime_config.ips {
            let address = entry.split('/').next().unwrap_or("");
            match address.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => {
                    ipv4.get_or_insert(ip);
                }
                Ok(IpAddr::V6(ip)) => {
                    ipv6.get_or_insert(ip);
                }
                Err(_) => {
                    return Err(invalid_config(format!("ips {entry:?}: not an address")));
                }
            }
        }
        Ok((ipv4, ipv6))
    }

    /// The MAC the `mac` capability asks for.
    pub fn requested_mac(&self) -> Result<Option<MacAddress>, CniError> {
        self.runtime_config
            .mac
            .as_deref()
            .map(|m| {
                m.parse()
                    .map_err(|_| invalid_config(format!("mac {m:?}: not a MAC address")))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn each_command_needs_its_variables() {
        let add = Invocation::from_env(env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!(add.command, Command::Add);
        let missing = Invocation::from_env(env(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")]))
            .unwrap_err();
        assert_eq!(missing.code, ErrorCode::InvalidEnvironment);
        assert!(
            missing.details.contains("CNI_CONTAINERID, CNI_NETNS"),
            "{missing:?}"
        );
        // DEL needs no namespace: it may be gone already.
        assert!(
            Invocation::from_env(env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_IFNAME", "eth0"),
            ]))
            .is_ok()
        );
        for bad in [vec![], vec![("CNI_COMMAND", "FROB")]] {
            let error = Invocation::from_env(env(&bad)).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidEnvironment, "{bad:?}");
            assert!(error.details.contains("CNI_COMMAND"), "{error:?}");
        }
        let bad_id = Invocation::from_env(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "-a/b"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap_err();
        assert!(bad_id.details.contains("CNI_CONTAINERID"), "{bad_id:?}");
        assert!(Invocation::from_env(env(&[("CNI_COMMAND", "VERSION")])).is_ok());
    }

    #[test]
    fn a_conflist_entry_maps_onto_an_agent_network() {
        let conf = NetConf::parse(
            br#"{"cniVersion": "1.0.0", "name": "pods", "type": "bpfbridge-cni",
                 "bridge": "cni0", "mtu": 1450, "icc": false, "ipMasq": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"}]]},
                 "dns": {"nameservers": ["10.96.0.10"]},
                 "someOtherKey": [1, 2],
                 "runtimeConfig": {
                    "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                                     {"hostPort": 5353, "containerPort": 53, "protocol": "UDP", "hostIP": "10.0.0.1"},
                                     {"hostPort": 8443, "containerPort": 443, "protocol": "tcp", "hostIP": "::"},
                                     {"HostPort": 9090, "ContainerPort": 90, "Protocol": "tcp", "HostIP": ""}],
                    "ips": ["fd00::5/64", "10.244.1.7/24"],
                    "mac": "c2:11:22:33:44:55",
                    "io.kubernetes.cri.pod-annotations": {"a": "b"}
                 }}"#,
            Command::Add,
        )
        .unwrap();
        assert_eq!(
            conf.network,
            CniNetwork {
                name: "pods".into(),
                subnet: Some("10.244.1.0/24".into()),
                gateway: Some("10.244.1.1".into()),
                mtu: Some(1450),
                icc: Some(false),
                ip_masq: Some(true),
                bridge: Some("cni0".into()),
                gateway_mode: None,
                ..CniNetwork::default()
            }
        );
        assert_eq!(conf.dns.nameservers, ["10.96.0.10"]);
        let mappings = conf.port_mappings().unwrap();
        assert_eq!(mappings.len(), 4, "{mappings:?}");
        assert_eq!(mappings[0].host_ip, None, "both families");
        assert_eq!(mappings[1].protocol, Proto::Udp);
        assert_eq!(mappings[1].host_ip, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(
            mappings[2].host_ip,
            Some("::".parse().unwrap()),
            "IPv6 only"
        );
        assert_eq!(mappings[3].host_port, 9090, "go-cni's keys");
        assert_eq!(mappings[3].host_ip, None);
        assert_eq!(
            conf.requested_ips().unwrap(),
            (
                Some(Ipv4Addr::new(10, 244, 1, 7)),
                Some("fd00::5".parse().unwrap())
            )
        );
        assert_eq!(
            conf.requested_mac().unwrap().unwrap().to_string(),
            "c2:11:22:33:44:55"
        );
        assert_eq!(conf.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
        // `network` names the agent network apart from the configuration's name.
        let named = NetConf::parse(
            br#"{"cniVersion": "1.1.0", "name": "pods", "type": "x", "network": "bridge", "subnet": "10.1.0.0/16"}"#,
            Command::Add,
        )
        .unwrap();
        assert_eq!(named.network.name, "bridge");
        assert_eq!(named.network.subnet.as_deref(), Some("10.1.0.0/16"));
    }

    #[test]
    fn dual_stack_ranges_and_keys() {
        let parse = |json: &str| NetConf::parse(json.as_bytes(), Command::Add);
        // host-local's dual stack: one range set per family.
        let conf = parse(
            r#"{"cniVersion": "1.0.0", "name": "pods", "type": "bpfbridge-cni",
                "ipam": {"type": "host-local", "ranges": [
                    [{"subnet": "10.244.1.0/24"}],
                    [{"subnet": "fd00:244:1::/64", "gateway": "fd00:244:1::fe"}]],
                    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}}"#,
        )
        .unwrap();
        assert_eq!(conf.network.subnet.as_deref(), Some("10.244.1.0/24"));
        assert_eq!(conf.network.ipv6_subnet.as_deref(), Some("fd00:244:1::/64"));
        assert_eq!(conf.network.ipv6_gateway.as_deref(), Some("fd00:244:1::fe"));
        // The IPv6 set first, and the older `ipam.subnet` as one more set.
        let conf = parse(
            r#"{"cniVersion": "1.0.0", "name": "pods", "type": "t",
                "ipam": {"subnet": "10.1.0.0/16", "ranges": [[{"subnet": "2001:db8::/64"}]]}}"#,
        )
        .unwrap();
        assert_eq!(conf.network.subnet.as_deref(), Some("10.1.0.0/16"));
        assert_eq!(conf.network.ipv6_subnet.as_deref(), Some("2001:db8::/64"));
        // bpfbridge's own keys; the IPv4 subnet may come from the agent's pools.
        let conf = parse(
            r#"{"cniVersion": "1.1.0", "name": "pods", "type": "t",
                "ipv6Subnet": "fd00:9::/64", "ipv6Gateway": "fd00:9::1"}"#,
        )
        .unwrap();
        assert_eq!(conf.network.subnet, None);
        assert_eq!(conf.network.ipv6_subnet.as_deref(), Some("fd00:9::/64"));
        assert_eq!(conf.network.enable_ipv4, None, "IPv4 from the pools");
        // host-local's IPv6 range set alone: IPv6-only pods.
        let conf = parse(
            r#"{"cniVersion": "1.1.0", "name": "pods", "type": "t",
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "fd00:9::/64"}]]}}"#,
        )
        .unwrap();
        assert_eq!(conf.network.enable_ipv4, Some(false));
        assert_eq!(conf.network.subnet, None);

        let refused = |json: &str| parse(json).unwrap_err();
        for (bad, code, says) in [
            (
                r#""ipv6Subnet": "fd00:9::/129""#,
                ErrorCode::InvalidConfig,
                "expected an IPv6 CIDR",
            ),
            (
                r#""ipv6Subnet": "10.9.0.0/16""#,
                ErrorCode::InvalidConfig,
                "expected an IPv6 CIDR",
            ),
            (
                r#""subnet": "fd00:9::/64""#,
                ErrorCode::InvalidConfig,
                "expected an IPv4 CIDR",
            ),
            (
                r#""ipv6Subnet": "fd00:9::/64", "ipv6Gateway": "fd00:8::1""#,
                ErrorCode::InvalidConfig,
                "not a usable address",
            ),
            (
                r#""ipv6Gateway": "fd00:8::1""#,
                ErrorCode::InvalidConfig,
                "needs its subnet",
            ),
            (
                r#""subnet": "10.9.0.0/24", "gateway": "10.8.0.1""#,
                ErrorCode::InvalidConfig,
                "not a usable address",
            ),
            (
                r#""ipam": {"ranges": [[{"subnet": "10.9.0.0/24"}], [{"subnet": "fd00:9::/64", "gateway": "fd00:8::1"}]]}"#,
                ErrorCode::InvalidConfig,
                "not a usable address",
            ),
            (
                r#""ipam": {"ranges": [[{"subnet": "10.9.0.0/24"}], [{"subnet": "fd00:9::/64"}, {"subnet": "fd00:9::/48"}]]}"#,
                ErrorCode::InvalidConfig,
                "overlaps",
            ),
            (
                r#""ipam": {"ranges": [[{"subnet": "10.9.0.0/24"}], [{"subnet": "fd00:9::/64"}, {"subnet": "10.8.0.0/24"}]]}"#,
                ErrorCode::InvalidConfig,
                "one address family",
            ),
            (
                r#""ipam": {"ranges": [[{"subnet": "10.9.0.0/24"}], [{"subnet": "fd00::/ff"}]]}"#,
                ErrorCode::InvalidConfig,
                "not a CIDR",
            ),
            (
                r#""ipam": {"ranges": [[{"subnet": "10.9.0.0/24"}], [{"gateway": "fd00::1"}]]}"#,
                ErrorCode::InvalidConfig,
                "subnet is missing",
            ),
            (
                r#""ipam": {"ranges": [[{"subnet": "10.9.0.0/24"}], []]}"#,
                ErrorCode::InvalidConfig,
                "a list of ranges",
            ),
            (
                r#""ipam": {"ranges": [[{"subnet": "10.9.0.0/24"}], [{"subnet": "fd00:9::/64"}], [{"subnet": "fd00:8::/64"}]]}"#,
                ErrorCode::UnsupportedField,
                "second range set",
            ),
        ] {
            let json = format!(r#"{{"cniVersion": "1.1.0", "name": "n", "type": "t", {bad}}}"#);
            let error = refused(&json);
            assert_eq!(error.code, code, "{bad}: {error:?}");
            assert!(error.details.contains(says), "{bad}: {error:?}");
        }
        // DEL reads past a range it cannot use.
        assert!(
            NetConf::parse(
                br#"{"cniVersion": "1.1.0", "name": "n", "type": "t", "ipv6Subnet": "nope"}"#,
                Command::Del
            )
            .is_ok()
        );
    }

    #[test]
    fn bad_configurations_get_the_specs_codes() {
        let code = |json: &str, command| NetConf::parse(json.as_bytes(), command).unwrap_err();
        assert_eq!(code("{not json", Command::Add).code, ErrorCode::Decoding);
        assert_eq!(
            code(
                r#"{"cniVersion": "0.3.1", "name": "n", "type": "t"}"#,
                Command::Add
            )
            .code,
            ErrorCode::IncompatibleVersion
        );
        assert_eq!(
            code(
                r#"{"cniVersion": "2.0.0", "name": "n", "type": "t"}"#,
                Command::Add
            )
            .code,
            ErrorCode::IncompatibleVersion
        );
        // GC and STATUS came with 1.1.0.
        let old_gc = code(
            r#"{"cniVersion": "1.0.0", "name": "n", "type": "t"}"#,
            Command::Gc,
        );
        assert_eq!(old_gc.code, ErrorCode::IncompatibleVersion);
        assert!(old_gc.details.contains("1.1.0"), "{old_gc:?}");
        for missing in [
            r#"{"name": "n", "type": "t"}"#,
            r#"{"cniVersion": "1.1.0", "type": "t"}"#,
            r#"{"cniVersion": "1.1.0", "name": "n"}"#,
            r#"{"cniVersion": "1.1.0", "name": "n", "type": "t", "subnet": "10.0.0.0/33"}"#,
        ] {
            assert_eq!(
                code(missing, Command::Add).code,
                ErrorCode::InvalidConfig,
                "{missing}"
            );
        }
        let bandwidth = code(
            r#"{"cniVersion": "1.1.0", "name": "n", "type": "t", "runtimeConfig": {"bandwidth": {"ingressRate": 1}}}"#,
            Command::Add,
        );
        assert_eq!(bandwidth.code, ErrorCode::UnsupportedField);
        assert!(
            bandwidth.details.contains("runtimeConfig.bandwidth"),
            "{bandwidth:?}"
        );
        assert_eq!(
            code(
                r#"{"cniVersion": "1.1.0", "name": "n", "type": "t", "ipam": {"type": "dhcp"}}"#,
                Command::Add
            )
            .code,
            ErrorCode::UnsupportedField
        );
        assert_eq!(
            code(
                r#"{"cniVersion": "1.1.0", "name": "n", "type": "t", "runtimeConfig": {"portMappings": [{"hostPort": "x"}]}}"#,
                Command::Add
            )
            .code,
            ErrorCode::Decoding
        );
        // DEL reads past what it does not need.
        assert!(
            NetConf::parse(
                br#"{"cniVersion": "1.1.0", "name": "n", "type": "t", "ipam": {"type": "dhcp"}, "runtimeConfig": {"bandwidth": {}}}"#,
                Command::Del
            )
            .is_ok()
        );
        assert_eq!(version_of(b"{\"cniVersion\": \"0.4.0\"}"), "0.4.0");
        assert_eq!(version_of(b"garbage"), CURRENT_VERSION);
    }
}
