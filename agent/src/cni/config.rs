//! What the runtime passes: the `CNI_*` environment and the plugin configuration on stdin.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

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

/// The subnet and gateway of a host-local style `ipam` section: the agent does the address
/// management, so only these are read, and only from host-local's keys.
fn ipam_subnet(ipam: &serde_json::Value) -> Result<(Option<String>, Option<String>), CniError> {
    let plugin = ipam.get("type").and_then(|t| t.as_str()).unwrap_or("");
    if !matches!(plugin, "" | "host-local" | "bpfbridge") {
        return Err(unsupported("ipam.type", &ipam["type"]));
    }
    let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
    // host-local's `ranges` is a list of range sets; the first range of the first set.
    let range = ipam
        .get("ranges")
        .and_then(|r| r.get(0))
        .and_then(|set| set.get(0));
    let subnet = text(ipam.get("subnet")).or_else(|| text(range.and_then(|r| r.get("subnet"))));
    let gateway = text(ipam.get("gateway")).or_else(|| text(range.and_then(|r| r.get("gateway"))));
    Ok((subnet, gateway))
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
            .ok_or_else(|| invalid_config("cniVersion is missing".into()))?;
        check_version(&cni_version, command)?;
        let name = raw
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid_config("name is missing".into()))?;
        if raw.plugin_type.is_none_or(|t| t.is_empty()) {
            return Err(invalid_config("type is missing".into()));
        }
        // DEL is best effort (SPEC.md): it needs the attachment's key, not what ADD took
        // from the configuration, so a part it cannot read does not stop it.
        let lenient = command == Command::Del;
        let (ipam_subnet, ipam_gateway) = match &raw.ipam {
            Some(ipam) => {
                ipam_subnet(ipam).or_else(|e| if lenient { Ok((None, None)) } else { Err(e) })?
            }
            None => (None, None),
        };
        let network = CniNetwork {
            name: raw.network.unwrap_or_else(|| name.clone()),
            subnet: raw.subnet.or(ipam_subnet),
            gateway: raw.gateway.or(ipam_gateway),
            mtu: raw.mtu,
            icc: raw.icc,
            ip_masq: raw.ip_masq,
            bridge: raw.bridge,
            gateway_mode: raw.gateway_mode,
        };
        if let Some(subnet) = &network.subnet {
            subnet
                .parse::<ipnet::Ipv4Net>()
                .map_err(|_| invalid_config(format!("subnet {subnet:?}: expected an IPv4 CIDR")))?;
        }
        if let Some(gateway) = &network.gateway {
            gateway.parse::<Ipv4Addr>().map_err(|_| {
                invalid_config(format!("gateway {gateway:?}: expected an IPv4 address"))
            })?;
        }
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

    /// The `portMappings` as the agent takes them: IPv6 host addresses are left out (the
    /// agent publishes IPv4 only), an empty or `0.0.0.0` one means every node address.
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
                "" | "0.0.0.0" => None,
                text => match text.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V4(ip)) => Some(ip),
                    Ok(std::net::IpAddr::V6(_)) => continue,
                    Err(_) => {
                        return Err(invalid_config(format!(
                            "portMappings hostIP {text:?}: not an address"
                        )));
                    }
                },
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

    /// The address the `ips` capability asks for: its first IPv4 one, prefix dropped.
    pub fn requested_ip(&self) -> Result<Option<Ipv4Addr>, CniError> {
        for entry in &self.runtime_config.ips {
            let address = entry.split('/').next().unwrap_or("");
            match address.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(ip)) => return Ok(Some(ip)),
                Ok(std::net::IpAddr::V6(_)) => continue,
                Err(_) => {
                    return Err(invalid_config(format!("ips {entry:?}: not an address")));
                }
            }
        }
        Ok(None)
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
                                     {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "::"},
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
            }
        );
        assert_eq!(conf.dns.nameservers, ["10.96.0.10"]);
        let mappings = conf.port_mappings().unwrap();
        assert_eq!(mappings.len(), 3, "the IPv6 one is left out: {mappings:?}");
        assert_eq!(mappings[2].host_port, 9090, "go-cni's keys");
        assert_eq!(mappings[1].protocol, Proto::Udp);
        assert_eq!(mappings[1].host_ip, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(
            conf.requested_ip().unwrap(),
            Some(Ipv4Addr::new(10, 244, 1, 7))
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
