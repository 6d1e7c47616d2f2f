//! Published ports: Docker's `-p` syntax and `PortBindings` JSON, and the flat bindings the
//! dataplane installs.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Transport protocol of a published or exposed port.
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
}

/// One published port: `host_ip:host_port` on the node → `container_port` in the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortBinding {
    pub proto: Proto,
    pub container_port: u16,
    /// `0.0.0.0` means every IPv4 address of the node, `::` every IPv6 one. Records and
    /// JSON of agents before IPv6 hold IPv4 text, which reads as the same address.
    pub host_ip: IpAddr,
    pub host_port: u16,
}

impl PortBinding {
    /// Two bindings compete for the same packets when port, protocol and address family
    /// match and either binds every address of the family or both bind the same one.
    pub fn overlaps(&self, other: &PortBinding) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && self.host_ip.is_ipv4() == other.host_ip.is_ipv4()
            && (self.host_ip.is_unspecified()
                || other.host_ip.is_unspecified()
                || self.host_ip == other.host_ip)
    }
}

/// The host side of a requested binding, before dynamic ports are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPort {
    Fixed(u16),
    /// Any free port in the range (inclusive), as `8000-8010:80` asks.
    Range(u16, u16),
    /// Any free port of the dynamic range, as `-p 80` or `-P` ask.
    Dynamic,
}

/// A requested binding: what `PortBindings` says, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRequest {
    pub proto: Proto,
    pub container_port: u16,
    pub host_ip: IpAddr,
    pub host_port: HostPort,
}

/// Parses `PORT[/PROTO]`, as in `--expose` and `ExposedPorts` keys.
pub fn parse_port_proto(s: &str) -> Result<(u16, Proto)> {
    parse_port_proto_of("container", s)
}

/// Parses `PORT[/PROTO]` naming a `what` (container or host) port in errors.
pub fn parse_port_proto_of(what: &str, s: &str) -> Result<(u16, Proto)> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    Ok((parse_port(port, what)?, Proto::parse(proto)?))
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

/// `PORT` or `START-END`.
fn parse_range(s: &str, what: &str) -> Result<(u16, u16)> {
    match s.split_once('-') {
        Some((start, end)) => {
            let (start, end) = (parse_port(start, what)?, parse_port(end, what)?);
            if end < start {
                return Err(Error::InvalidArgument(format!(
                    "invalid {what} port range {s}: the end is before the start"
                )));
            }
            Ok((start, end))
        }
        None => parse_port(s, what).map(|p| (p, p)),
    }
}

/// Parses a `-p` value in any of Docker's forms into `PortBindings` entries:
/// `CTR`, `HOST:CTR`, `IP:HOST:CTR`, `IP::CTR`, ranges `8000-8010:80-90` (one entry per
/// port) and `8000-8010:80` (one entry whose host port is the range), each with an optional
/// `/tcp` or `/udp`.
pub fn parse_publish_flag(spec: &str) -> Result<Vec<(String, HostBinding)>> {
    let bad = |why: &str| Error::InvalidArgument(format!("invalid port mapping {spec:?}: {why}"));
    let (ports, proto) = spec.rsplit_once('/').unwrap_or((spec, "tcp"));
    let proto = Proto::parse(proto)
        .map_err(|_| bad(&format!("unknown protocol {proto:?} (tcp or udp)")))?;
    // As Docker splits it: the last part is the container port, the one before the host
    // port, and the rest the host address, in brackets or not (`[::1]:8080:80`,
    // `::1:8080:80`).
    let parts: Vec<&str> = ports.split(':').collect();
    let (host_ip, host, container) = match parts.as_slice() {
        [container] => (String::new(), "", *container),
        [host, container] => (String::new(), *host, *container),
        [ip @ .., host, container] => (ip.join(":"), *host, *container),
        [] => return Err(bad("expected [IP:][HOSTPORT:]CONTAINERPORT[/PROTO]")),
    };
    let host_ip = match host_ip.strip_prefix('[') {
        Some(bracketed) => bracketed
            .strip_suffix(']')
            .ok_or_else(|| bad(&format!("invalid host IP {host_ip:?}")))?
            .to_string(),
        None => host_ip,
    };
    if !host_ip.is_empty() {
        host_ip
            .parse::<IpAddr>()
            .map_err(|_| bad(&format!("invalid host IP {host_ip:?}")))?;
    }
    if container.is_empty() {
        return Err(bad("no container port"));
    }
    let (c_start, c_end) = parse_range(container, "container")?;
    let entry = |c: u16, host_port: String| {
        (
            format!("{c}/{}", proto.as_str()),
            HostBinding {
                host_ip: host_ip.clone(),
                host_port,
            },
        )
    };
    if host.is_empty() {
        return Ok((c_start..=c_end).map(|c| entry(c, String::new())).collect());
    }
    let (h_start, h_end) = parse_range(host, "host")?;
    if c_start == c_end {
        let host_port = if h_start == h_end {
            h_start.to_string()
        } else {
            format!("{h_start}-{h_end}")
        };
        return Ok(vec![entry(c_start, host_port)]);
    }
    if h_end - h_start != c_end - c_start {
        return Err(bad("host and container port ranges have different lengths"));
    }
    Ok((c_start..=c_end)
        .zip(h_start..=h_end)
        .map(|(c, h)| entry(c, h.to_string()))
        .collect())
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

/// Validates a Docker-shaped port map. An empty `HostIp` binds each of
/// `default_host_ips` (the network's `host_binding_ipv4`, else the daemon's `--ip`, and
/// `::` beside `0.0.0.0` for a container with IPv6); an empty `HostPort` asks for a dynamic
/// one.
pub fn port_requests_from_map(
    map: &PortMap,
    default_host_ips: &[IpAddr],
) -> Result<Vec<PortRequest>> {
    let mut out = Vec::new();
    for (key, hosts) in map {
        let (container_port, proto) = parse_port_proto(key)?;
        for host in hosts {
            let host_ips = if host.host_ip.is_empty() {
                default_host_ips.to_vec()
            } else {
                vec![host.host_ip.parse().map_err(|_| {
                    Error::InvalidArgument(format!("invalid host IP {:?}", host.host_ip))
                })?]
            };
            let host_port = match host.host_port.as_str() {
                "" => HostPort::Dynamic,
                p => match parse_range(p, "host")? {
                    (start, end) if start == end => HostPort::Fixed(start),
                    (start, end) => HostPort::Range(start, end),
                },
            };
            out.extend(host_ips.into_iter().map(|host_ip| PortRequest {
                proto,
                container_port,
                host_ip,
                host_port,
            }));
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

/// The bindings a `Ports` map shows (the inverse of [`port_map`]).
pub fn bindings_from_port_map(map: &PortMap) -> Result<Vec<PortBinding>> {
    let mut out = Vec::new();
    for (key, hosts) in map {
        let (container_port, proto) = parse_port_proto(key)?;
        for host in hosts {
            let host_ip = host.host_ip.parse().map_err(|_| {
                Error::InvalidArgument(format!("invalid host IP {:?}", host.host_ip))
            })?;
            let host_port = parse_port(&host.host_port, "host")?;
            out.push(PortBinding {
                proto,
                container_port,
                host_ip,
                host_port,
            });
        }
    }
    Ok(out)
}

/// `docker port` lines for `bindings`, optionally only those of one container port
/// (`PORT[/PROTO]`): sorted by port, protocol and host address, like Docker.
pub fn port_lines(bindings: &[PortBinding], only: Option<(u16, Proto)>) -> Vec<String> {
    let mut sorted: Vec<&PortBinding> = bindings
        .iter()
        .filter(|b| only.is_none_or(|(port, proto)| b.container_port == port && b.proto == proto))
        .collect();
    sorted.sort_by_key(|b| {
        (
            b.container_port,
            b.proto,
            b.host_ip.to_string(),
            b.host_port,
        )
    });
    sorted
        .into_iter()
        .map(|b| {
            // `[::]:8080` for IPv6, as Go's JoinHostPort writes it.
            let host = std::net::SocketAddr::new(b.host_ip, b.host_port);
            match only {
                Some(_) => host.to_string(),
                None => format!("{}/{} -> {host}", b.container_port, b.proto.as_str()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(spec: &str) -> Vec<(String, String, String)> {
        parse_publish_flag(spec)
            .unwrap()
            .into_iter()
            .map(|(k, h)| (k, h.host_ip, h.host_port))
            .collect()
    }

    fn t(k: &str, ip: &str, port: &str) -> (String, String, String) {
        (k.into(), ip.into(), port.into())
    }

    #[test]
    fn every_publish_form() {
        assert_eq!(flag("80"), [t("80/tcp", "", "")]);
        assert_eq!(flag("8080:80"), [t("80/tcp", "", "8080")]);
        assert_eq!(
            flag("127.0.0.1:8081:80"),
            [t("80/tcp", "127.0.0.1", "8081")]
        );
        assert_eq!(flag("127.0.0.1::80"), [t("80/tcp", "127.0.0.1", "")]);
        assert_eq!(flag("53/udp"), [t("53/udp", "", "")]);
        assert_eq!(
            flag("8000-8002:80-82"),
            [
                t("80/tcp", "", "8000"),
                t("81/tcp", "", "8001"),
                t("82/tcp", "", "8002")
            ]
        );
        assert_eq!(flag("8000-8010:80/udp"), [t("80/udp", "", "8000-8010")]);
        assert_eq!(flag("80-81"), [t("80/tcp", "", ""), t("81/tcp", "", "")]);
        assert_eq!(flag("[::1]:8080:80"), [t("80/tcp", "::1", "8080")]);
        assert_eq!(flag("::1:8080:80"), [t("80/tcp", "::1", "8080")]);
        assert_eq!(
            flag("[2001:db8::1]::53/udp"),
            [t("53/udp", "2001:db8::1", "")]
        );
    }

    #[test]
    fn bindings_of_agents_before_ipv6_still_load() {
        let old = r#"{"proto":"tcp","container_port":80,"host_ip":"0.0.0.0","host_port":8080}"#;
        let binding: PortBinding = serde_json::from_str(old).unwrap();
        assert_eq!(binding.host_ip, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(serde_json::to_string(&binding).unwrap(), old);
        let v6 = PortBinding {
            host_ip: "::".parse().unwrap(),
            ..binding
        };
        assert!(!v6.overlaps(&binding), "one port on each family");
        assert!(v6.overlaps(&PortBinding {
            host_ip: "::1".parse().unwrap(),
            ..binding
        }));
    }

    #[test]
    fn malformed_publish_specs_are_refused() {
        for bad in [
            "",
            "80:",
            "70000",
            "0:80",
            "8080:0",
            "a:80",
            "80/sctp",
            "8010-8000:80",
            "8000-8005:80-81",
            "1.2.3:80:80",
            "1:2:3:4",
            "80-",
            "[::1:8080:80",
            "[::1]]:8080:80",
        ] {
            assert!(
                parse_publish_flag(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn port_map_requests() {
        let map = PortMap::from([(
            "80/tcp".to_string(),
            vec![
                HostBinding {
                    host_ip: String::new(),
                    host_port: "8080".into(),
                },
                HostBinding {
                    host_ip: "127.0.0.1".into(),
                    host_port: "".into(),
                },
                HostBinding {
                    host_ip: String::new(),
                    host_port: "9000-9009".into(),
                },
            ],
        )]);
        let any = [IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED)];
        let r = port_requests_from_map(&map, &any).unwrap();
        assert_eq!(r[0].host_port, HostPort::Fixed(8080));
        assert_eq!(
            (r[1].host_ip, r[1].host_port),
            (IpAddr::from([127, 0, 0, 1]), HostPort::Dynamic)
        );
        assert_eq!(r[2].host_port, HostPort::Range(9000, 9009));
        let bad_ip = PortMap::from([(
            "80/tcp".to_string(),
            vec![HostBinding {
                host_ip: "nope".into(),
                host_port: "1".into(),
            }],
        )]);
        assert!(port_requests_from_map(&bad_ip, &any).is_err());
        let both = [any[0], IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)];
        let r = port_requests_from_map(&map, &both).unwrap();
        assert_eq!(r.len(), 5, "the empty addresses twice, the given one once");
        assert_eq!((r[0].host_ip, r[1].host_ip), (both[0], both[1]));
    }

    #[test]
    fn docker_port_output() {
        let b = |port, proto, ip: [u8; 4], host| PortBinding {
            proto,
            container_port: port,
            host_ip: ip.into(),
            host_port: host,
        };
        let bindings = [
            b(80, Proto::Tcp, [127, 0, 0, 1], 8081),
            b(80, Proto::Tcp, [0, 0, 0, 0], 8080),
            b(53, Proto::Udp, [0, 0, 0, 0], 32768),
            PortBinding {
                host_ip: "::".parse().unwrap(),
                ..b(80, Proto::Tcp, [0, 0, 0, 0], 8080)
            },
        ];
        assert_eq!(
            port_lines(&bindings, None),
            [
                "53/udp -> 0.0.0.0:32768",
                "80/tcp -> 0.0.0.0:8080",
                "80/tcp -> 127.0.0.1:8081",
                "80/tcp -> [::]:8080"
            ]
        );
        assert_eq!(
            port_lines(&bindings, Some((80, Proto::Tcp))),
            ["0.0.0.0:8080", "127.0.0.1:8081", "[::]:8080"]
        );
        assert!(port_lines(&bindings, Some((81, Proto::Tcp))).is_empty());
    }
}
