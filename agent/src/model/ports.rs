//! Published ports: Docker's `-p` syntax and `PortBindings` JSON, and the flat bindings the
//! dataplane installs.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            other => Err(Error::InvalidArgument(format!(
                "invalid protocol {other:?} (tcp or udp)"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    pub fn ip_proto(self) -> u8 {
        match self {
            Proto::Tcp => dataplane_common::IPPROTO_TCP,
            Proto::Udp => dataplane_common::IPPROTO_UDP,
        }
    }

    /// Only TCP is published so far; UDP can be exposed (for links) but not published.
    fn check_publishable(self) -> Result<()> {
        match self {
            Proto::Tcp => Ok(()),
            Proto::Udp => Err(Error::InvalidArgument(
                "publishing udp ports is not supported yet (only tcp)".into(),
            )),
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

/// Parses `PORT[/PROTO]`, as in `--expose` and `ExposedPorts` keys.
pub fn parse_port_proto(s: &str) -> Result<(u16, Proto)> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    Ok((parse_port(port, "exposed")?, Proto::parse(proto)?))
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
    proto.check_publishable()?;
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
/// An empty `HostIp` binds `default_host_ip` (the network's `host_binding_ipv4`, else the
/// daemon's `--ip`).
pub fn port_bindings_from_map(
    map: &PortMap,
    default_host_ip: Ipv4Addr,
) -> Result<Vec<PortBinding>> {
    let mut out = Vec::new();
    for (key, hosts) in map {
        let (port, proto) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
        let proto = Proto::parse(proto)?;
        proto.check_publishable()?;
        let container_port = parse_port(port, "container")?;
        for host in hosts {
            let host_ip = if host.host_ip.is_empty() {
                default_host_ip
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
        let b = port_bindings_from_map(&map, Ipv4Addr::UNSPECIFIED).unwrap();
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
        assert!(port_bindings_from_map(&twice, Ipv4Addr::UNSPECIFIED).is_err());
        let bad_ip = PortMap::from([(
            "80/tcp".to_string(),
            vec![HostBinding {
                host_ip: "nope".into(),
                host_port: "8080".into(),
            }],
        )]);
        assert!(port_bindings_from_map(&bad_ip, Ipv4Addr::UNSPECIFIED).is_err());
    }
}
