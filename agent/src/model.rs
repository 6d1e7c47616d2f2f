//! What the agent knows (persisted records) and what the API speaks (Docker-shaped JSON).

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
}

impl Proto {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" | "sctp" => Err(Error::InvalidArgument(format!(
                "publishing {s} ports is not supported yet (only tcp)"
            ))),
            other => Err(Error::InvalidArgument(format!(
                "invalid protocol {other:?}"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
        }
    }

    pub fn ip_proto(self) -> u8 {
        match self {
            Proto::Tcp => dataplane_common::IPPROTO_TCP,
        }
    }
}

/// One published port: `host_ip:host_port` on the node → `container_port` in the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortBinding {
    pub proto: Proto,
    pub container_port: u16,
    /// `0.0.0.0` means every node address.
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
}

impl PortBinding {
    /// Two bindings compete for the same packets when port and protocol match and either
    /// binds every address or both bind the same one.
    pub fn overlaps(&self, other: &PortBinding) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && (self.host_ip.is_unspecified()
                || other.host_ip.is_unspecified()
                || self.host_ip == other.host_ip)
    }
}

fn parse_port(s: &str, what: &str) -> Result<u16> {
    match s.parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        Ok(_) => Err(Error::InvalidArgument(format!(
            "invalid {what} port {s}: must be between 1 and 65535"
        ))),
        Err(_) => Err(Error::InvalidArgument(format!("invalid {what} port {s:?}"))),
    }
}

/// Parses the `-p HOSTPORT:CTRPORT[/tcp]` form into Docker's `PortBindings` shape.
pub fn parse_publish_flag(spec: &str) -> Result<(String, HostBinding)> {
    let (ports, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let proto = Proto::parse(proto)?;
    let Some((host, container)) = ports.split_once(':') else {
        return Err(Error::InvalidArgument(format!(
            "invalid port mapping {spec:?}: expected HOSTPORT:CONTAINERPORT[/tcp]"
        )));
    };
    let container = parse_port(container, "container")?;
    let host = parse_port(host, "host")?;
    Ok((
        format!("{container}/{}", proto.as_str()),
        HostBinding {
            host_ip: String::new(),
            host_port: host.to_string(),
        },
    ))
}

/// Docker's `{"HostIp": "", "HostPort": "8080"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostBinding {
    #[serde(rename = "HostIp", default)]
    pub host_ip: String,
    #[serde(rename = "HostPort", default)]
    pub host_port: String,
}

/// Docker's `PortBindings`/`Ports` map: `"80/tcp"` → host bindings.
pub type PortMap = BTreeMap<String, Vec<HostBinding>>;

/// Validates a Docker-shaped port map and flattens it.
pub fn port_bindings_from_map(map: &PortMap) -> Result<Vec<PortBinding>> {
    let mut out = Vec::new();
    for (key, hosts) in map {
        let (port, proto) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
        let proto = Proto::parse(proto)?;
        let container_port = parse_port(port, "container")?;
        for host in hosts {
            let host_ip = if host.host_ip.is_empty() {
                Ipv4Addr::UNSPECIFIED
            } else {
                host.host_ip.parse().map_err(|_| {
                    Error::InvalidArgument(format!("invalid host IP {:?}", host.host_ip))
                })?
            };
            if host.host_port.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "port {key}: dynamic host ports are not supported yet; give HostPort"
                )));
            }
            let host_port = parse_port(&host.host_port, "host")?;
            let binding = PortBinding {
                proto,
                container_port,
                host_ip,
                host_port,
            };
            if let Some(other) = out.iter().find(|b: &&PortBinding| b.overlaps(&binding)) {
                return Err(Error::InvalidArgument(format!(
                    "host port {}/{} is requested twice ({} and {})",
                    host_port,
                    proto.as_str(),
                    other.container_port,
                    container_port
                )));
            }
            out.push(binding);
        }
    }
    Ok(out)
}

/// Docker's `Ports` map for display.
pub fn port_map(bindings: &[PortBinding]) -> PortMap {
    let mut map = PortMap::new();
    for b in bindings {
        map.entry(format!("{}/{}", b.container_port, b.proto.as_str()))
            .or_default()
            .push(HostBinding {
                host_ip: b.host_ip.to_string(),
                host_port: b.host_port.to_string(),
            });
    }
    map
}

/// The default bridge network, as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub name: String,
    pub id: String,
    pub created: String,
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Where the next sequential allocation starts, so a freed address is not handed out
    /// again at once.
    pub last_allocated: Option<Ipv4Addr>,
}

/// A container attached by the agent, as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    pub created: String,
    pub endpoint_id: String,
    /// The network namespace (bind-mounted nsfs file).
    pub netns: PathBuf,
    /// Whether the agent created the namespace (and so deletes it on removal).
    pub netns_owned: bool,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub host_veth: String,
    pub host_veth_ifindex: u32,
    pub host_veth_mac: String,
    pub ports: Vec<PortBinding>,
}

/// `POST /containers` body.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateContainer {
    #[serde(rename = "Name")]
    pub name: String,
    /// Path of an existing network namespace; the agent makes one when absent.
    #[serde(rename = "NetNs", default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(rename = "PortBindings", default)]
    pub port_bindings: PortMap,
}

/// A container's network settings, shaped like `docker inspect`'s `NetworkSettings`: the
/// primary network's addressing at the top level, every network's under `Networks`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetworkSettings {
    #[serde(rename = "SandboxKey")]
    pub sandbox_key: String,
    #[serde(rename = "Ports")]
    pub ports: PortMap,
    #[serde(flatten)]
    pub primary: EndpointAddressing,
    #[serde(rename = "Networks")]
    pub networks: BTreeMap<String, EndpointSettings>,
}

/// The addressing fields an endpoint shows, both at the top of `NetworkSettings` and in
/// each entry of its `Networks`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EndpointAddressing {
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Gateway")]
    pub gateway: String,
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u8,
    #[serde(rename = "MacAddress")]
    pub mac_address: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EndpointSettings {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(flatten)]
    pub addressing: EndpointAddressing,
}

/// `GET /containers/{name}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerInspect {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Created")]
    pub created: String,
    #[serde(rename = "HostVeth")]
    pub host_veth: String,
    #[serde(rename = "NetworkSettings")]
    pub network_settings: NetworkSettings,
}

impl ContainerInspect {
    pub fn new(c: &ContainerRecord, net: &NetworkRecord) -> Self {
        let addressing = EndpointAddressing {
            endpoint_id: c.endpoint_id.clone(),
            gateway: net.gateway.to_string(),
            ip_address: c.ip.to_string(),
            ip_prefix_len: net.subnet.prefix_len(),
            mac_address: c.mac.clone(),
        };
        let endpoint = EndpointSettings {
            network_id: net.id.clone(),
            addressing: addressing.clone(),
        };
        ContainerInspect {
            id: c.id.clone(),
            name: c.name.clone(),
            created: c.created.clone(),
            host_veth: c.host_veth.clone(),
            network_settings: NetworkSettings {
                sandbox_key: c.netns.display().to_string(),
                ports: port_map(&c.ports),
                primary: addressing,
                networks: BTreeMap::from([(net.name.clone(), endpoint)]),
            },
        }
    }
}

/// One entry of the published-ports BPF map, for `bpfbridge ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    #[serde(rename = "HostIp")]
    pub host_ip: Ipv4Addr,
    #[serde(rename = "HostPort")]
    pub host_port: u16,
    #[serde(rename = "Proto")]
    pub proto: String,
    #[serde(rename = "ContainerIp")]
    pub container_ip: Ipv4Addr,
    #[serde(rename = "ContainerPort")]
    pub container_port: u16,
    #[serde(rename = "HostVethIfindex")]
    pub host_veth_ifindex: u32,
}

/// One counter summed over CPUs, for `bpfbridge stats`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatCounter {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Packets")]
    pub packets: u64,
    #[serde(rename = "Bytes")]
    pub bytes: u64,
}

/// `GET /info`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Info {
    #[serde(rename = "Version")]
    pub version: String,
    #[serde(rename = "Dataplane")]
    pub dataplane: String,
    #[serde(rename = "Uplink")]
    pub uplink: String,
    #[serde(rename = "Bridge")]
    pub bridge: String,
    #[serde(rename = "Subnet")]
    pub subnet: String,
    #[serde(rename = "Gateway")]
    pub gateway: String,
    #[serde(rename = "Containers")]
    pub containers: usize,
    #[serde(rename = "PinDir")]
    pub pin_dir: String,
}

/// Docker's MAC for an IPv4 endpoint: 02:42 followed by the address.
pub fn mac_for_ip(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut out {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Container names as Docker accepts them.
pub fn validate_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 128;
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid container name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_flag_forms() {
        let (key, host) = parse_publish_flag("8080:80").unwrap();
        assert_eq!(key, "80/tcp");
        assert_eq!(host.host_port, "8080");
        assert_eq!(parse_publish_flag("8080:80/tcp").unwrap().0, "80/tcp");
        for bad in [
            "80",
            "0:80",
            "8080:0",
            "70000:80",
            "a:80",
            "8080:80/udp",
            "8080:80/xyz",
            ":80",
        ] {
            assert!(parse_publish_flag(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn port_map_validation() {
        let map = PortMap::from([(
            "80/tcp".to_string(),
            vec![HostBinding {
                host_ip: String::new(),
                host_port: "8080".into(),
            }],
        )]);
        let b = port_bindings_from_map(&map).unwrap();
        assert_eq!(b[0].host_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(port_map(&b)["80/tcp"][0].host_ip, "0.0.0.0");

        let twice = PortMap::from([
            (
                "80/tcp".to_string(),
                vec![HostBinding {
                    host_ip: String::new(),
                    host_port: "8080".into(),
                }],
            ),
            (
                "81/tcp".to_string(),
                vec![HostBinding {
                    host_ip: "10.0.0.1".into(),
                    host_port: "8080".into(),
                }],
            ),
        ]);
        assert!(port_bindings_from_map(&twice).is_err());
        let bad_ip = PortMap::from([(
            "80/tcp".to_string(),
            vec![HostBinding {
                host_ip: "nope".into(),
                host_port: "8080".into(),
            }],
        )]);
        assert!(port_bindings_from_map(&bad_ip).is_err());
    }

    #[test]
    fn names_and_macs() {
        assert!(validate_name("web-1.a_b").is_ok());
        for bad in ["", "-x", "a b", "a/b", "ü"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        let mac = mac_for_ip(Ipv4Addr::new(172, 17, 0, 2));
        assert_eq!(format_mac(mac), "02:42:ac:11:00:02");
        assert_eq!(parse_mac("02:42:ac:11:00:02"), Some(mac));
        assert_eq!(parse_mac("02:42:ac:11:00"), None);
    }
}
