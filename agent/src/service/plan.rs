//! Planning: the decisions an operation makes from the current records and its request
//! (which networks, which addresses, which host ports, which endpoint carries the published
//! ports, what to record) as functions that change nothing. The `Service` methods apply a
//! plan (store, netlink, dataplane) step by step with [`Undo`](super::Undo); keeping the
//! decisions here lets them be tested without a kernel.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::{DEFAULT_NETWORK, HOST_NETWORK, NONE_NETWORK};
use crate::{
    Error, Result,
    config::PortRange,
    ipam,
    model::{
        ContainerRecord, EndpointConfig, EndpointRecord, ExposedPort, HostConfig, HostPort,
        LinkRecord, MacAddress, NetworkMode, NetworkRecord, OPT_ENDPOINT_IFNAME, PortBinding,
        PortRequest, Proto, parse_port_proto, port_requests_from_map, random_id, validate_name,
    },
};

/// The endpoint that carries a container's published ports and its default route, as
/// Docker 28 picks its gateway endpoint: the highest `--gw-priority` among the endpoints on
/// a known network with a way out (not `--internal`) and a gateway on its bridge; ties go
/// to the network whose name sorts first. Planned (pending) endpoints count, so a plan and
/// the finished container agree; the dataplane is given ports only once that endpoint is
/// made.
pub(super) fn port_endpoint<'a>(
    endpoints: &'a [EndpointRecord],
    networks: &BTreeMap<String, NetworkRecord>,
) -> Option<&'a EndpointRecord> {
    endpoints
        .iter()
        .filter_map(|e| {
            let network = networks.values().find(|n| n.id == e.network_id)?;
            (!network.internal && network.has_gateway()).then_some((e, network.name.as_str()))
        })
        .min_by(|(a, a_name), (b, b_name)| {
            b.gw_priority
                .cmp(&a.gw_priority)
                .then_with(|| a_name.cmp(b_name))
        })
        .map(|(e, _)| e)
}

/// `HostConfig.NetworkMode` parsed: the mode, and for bridge mode the primary network.
pub(super) fn parse_mode(mode: Option<&str>) -> (NetworkMode, Option<String>) {
    match mode.unwrap_or("") {
        "" | "default" | DEFAULT_NETWORK => (NetworkMode::Bridge, Some(DEFAULT_NETWORK.into())),
        HOST_NETWORK => (NetworkMode::Host, None),
        NONE_NETWORK => (NetworkMode::None, None),
        other => match other.strip_prefix("container:") {
            Some(target) => (NetworkMode::Container(target.into()), None),
            None => (NetworkMode::Bridge, Some(other.into())),
        },
    }
}

pub(super) fn conflict(what: &str) -> Error {
    Error::InvalidArgument(format!("conflicting options: {what}"))
}

/// What the (resolved) network mode allows of the rest of a create request: networks only
/// in bridge mode; ports are dropped, with a warning, in host and none mode.
pub(super) fn mode_warnings(
    mode: &NetworkMode,
    networks: &[&str],
    has_ports: bool,
) -> Result<Vec<String>> {
    if *mode != NetworkMode::Bridge && !networks.is_empty() {
        return Err(conflict(
            "networks cannot be given with host, none or container network mode",
        ));
    }
    let mut warnings = Vec::new();
    if matches!(mode, NetworkMode::Host | NetworkMode::None) && has_ports {
        warnings
            .push("Published ports are discarded when using host or none network mode".to_string());
    }
    Ok(warnings)
}

/// The networks a container joins, in order: the primary first, then the others its
/// networking config names.
pub(super) fn network_names<'a>(
    primary: Option<&'a str>,
    configured: impl IntoIterator<Item = &'a String>,
) -> Vec<&'a str> {
    primary
        .into_iter()
        .chain(
            configured
                .into_iter()
                .map(String::as_str)
                .filter(|n| Some(*n) != primary),
        )
        .collect()
}

/// `ExposedPorts` keys (`PORT[/PROTO]`) as ports.
pub(super) fn parse_exposed<'a>(
    keys: impl IntoIterator<Item = &'a String>,
) -> Result<Vec<ExposedPort>> {
    keys.into_iter()
        .map(|key| {
            let (port, proto) = parse_port_proto(key)?;
            Ok(ExposedPort { port, proto })
        })
        .collect()
}

/// The port requests of a bridge-mode container: its `PortBindings`, and with `-P` every
/// exposed port not bound otherwise, on a dynamic host port.
pub(super) fn container_port_requests(
    host_config: &HostConfig,
    exposed: &[ExposedPort],
    host_ips: &[IpAddr],
) -> Result<Vec<PortRequest>> {
    let mut requests = port_requests_from_map(&host_config.port_bindings, host_ips)?;
    if host_config.publish_all_ports {
        for e in exposed {
            if !requests
                .iter()
                .any(|r| r.container_port == e.port && r.proto == e.proto)
            {
                requests.extend(host_ips.iter().map(|host_ip| PortRequest {
                    proto: e.proto,
                    container_port: e.port,
                    host_ip: *host_ip,
                    host_port: HostPort::Dynamic,
                }));
            }
        }
    }
    Ok(requests)
}

/// `--link OTHER[:ALIAS]` specs as records. `find` looks a container up by reference; the
/// linked container must share one of `networks`.
pub(super) fn plan_links<'a>(
    specs: &[String],
    find: impl Fn(&str) -> Option<&'a ContainerRecord>,
    networks: &[NetworkRecord],
) -> Result<Vec<LinkRecord>> {
    let mut links: Vec<LinkRecord> = Vec::new();
    for spec in specs {
        let (target, alias) = spec.split_once(':').unwrap_or((spec, spec));
        let target = find(target)
            .ok_or_else(|| Error::NotFound(format!("could not get container for {target}")))?;
        validate_name("link alias", alias)?;
        if links.iter().any(|l| l.alias == alias) {
            return Err(Error::InvalidArgument(format!(
                "link alias {alias} is given twice"
            )));
        }
        if !networks.iter().any(|n| target.endpoint(&n.id).is_some()) {
            return Err(Error::InvalidArgument(format!(
                "cannot link to container {}: it is on no network this container joins",
                target.name
            )));
        }
        links.push(LinkRecord {
            container_id: target.id.clone(),
            alias: alias.to_string(),
        });
    }
    Ok(links)
}

/// The lowest `PREFIXN` (`eth0`, `eth1`, ...) a container does not use yet.
pub(super) fn next_ifname(container: &ContainerRecord, prefix: &str) -> String {
    (0..)
        .map(|n| format!("{prefix}{n}"))
        .find(|name| !container.endpoints.iter().any(|e| &e.ifname == name))
        .expect("an unused interface name")
}

/// What a create or connect request asks of one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct EndpointWish {
    /// `--ip`.
    pub requested_ip: Option<Ipv4Addr>,
    /// `--ip6`.
    pub requested_ipv6: Option<Ipv6Addr>,
    pub aliases: Vec<String>,
    /// `--gw-priority`.
    pub gw_priority: i64,
    /// The interface name inside the container (`com.docker.network.endpoint.ifname`).
    pub ifname: Option<String>,
}

impl EndpointWish {
    /// The wish an endpoint config of the API expresses. Endpoint driver options Docker's
    /// bridge driver does not know are ignored, as Docker ignores them.
    pub fn of(config: &EndpointConfig) -> Result<Self> {
        let requested_ip = match config
            .ipam_config
            .as_ref()
            .map(|c| c.ipv4_address.as_str())
            .filter(|s| !s.is_empty())
        {
            Some(s) => Some(
                s.parse()
                    .map_err(|_| Error::InvalidArgument(format!("invalid IP address {s:?}")))?,
            ),
            None => None,
        };
        let requested_ipv6 = match config
            .ipam_config
            .as_ref()
            .map(|c| c.ipv6_address.as_str())
            .filter(|s| !s.is_empty())
        {
            Some(s) => Some(
                s.parse()
                    .map_err(|_| Error::InvalidArgument(format!("invalid IPv6 address {s:?}")))?,
            ),
            None => None,
        };
        Ok(EndpointWish {
            requested_ip,
            requested_ipv6,
            aliases: config.aliases.clone(),
            gw_priority: config.gw_priority,
            ifname: config.driver_opts.get(OPT_ENDPOINT_IFNAME).cloned(),
        })
    }
}

/// Plans an endpoint on `network` for `container`: address (requested or allocated, apart
/// from every address `containers` hold on it and `planned`), interface name, aliases and
/// gateway priority. Pending until made.
pub(super) fn plan_endpoint(
    containers: &BTreeMap<String, ContainerRecord>,
    container: &ContainerRecord,
    network: &NetworkRecord,
    wish: EndpointWish,
    planned: &BTreeSet<Ipv4Addr>,
) -> Result<EndpointRecord> {
    let EndpointWish {
        requested_ip,
        requested_ipv6,
        aliases,
        gw_priority,
        ifname,
    } = wish;
    if network.is_default() && (requested_ip.is_some() || requested_ipv6.is_some()) {
        return Err(Error::InvalidArgument(
            "user specified IP address is supported on user defined networks only".into(),
        ));
    }
    if network.is_default() && !aliases.is_empty() {
        return Err(Error::InvalidArgument(
            "network-scoped aliases are supported for user defined networks only".into(),
        ));
    }
    for alias in &aliases {
        validate_name("alias", alias)?;
    }
    let ip = plan_endpoint_ipv4(containers, network, requested_ip, planned)?;
    let ipv6 = plan_endpoint_ipv6(containers, network, requested_ipv6)?;
    let ifname = match ifname {
        Some(name) => {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', ':']) {
                return Err(Error::InvalidArgument(format!(
                    "endpoint option {OPT_ENDPOINT_IFNAME}={name:?}: not an interface name"
                )));
            }
            if container.endpoints.iter().any(|e| e.ifname == name) {
                return Err(Error::Conflict(format!(
                    "container {} already has an interface {name}",
                    container.name
                )));
            }
            name
        }
        None => next_ifname(
            container,
            network.container_iface_prefix.as_deref().unwrap_or("eth"),
        ),
    };
    Ok(EndpointRecord {
        network_id: network.id.clone(),
        endpoint_id: random_id(),
        ip,
        mac: ip.map_or_else(MacAddress::random, MacAddress::for_ip),
        ifname,
        host_veth: String::new(),
        host_veth_ifindex: 0,
        host_veth_mac: None,
        aliases,
        requested_ip,
        ipv6,
        requested_ipv6,
        pending: true,
        gw_priority,
        sub_interface: !network.driver.is_bridge(),
    })
}

/// The IPv4 address of a new endpoint on `network`: the one asked for with `--ip`, else
/// the next free one apart from `planned`; none on an IPv6-only network (where `--ip` is
/// refused).
fn plan_endpoint_ipv4(
    containers: &BTreeMap<String, ContainerRecord>,
    network: &NetworkRecord,
    requested: Option<Ipv4Addr>,
    planned: &BTreeSet<Ipv4Addr>,
) -> Result<Option<Ipv4Addr>> {
    let Some((subnet, gateway)) = network.ipv4() else {
        return match requested {
            Some(ip) => Err(Error::InvalidArgument(format!(
                "invalid address {ip}: network {} is IPv6-only (no IPv4 subnet)",
                network.name
            ))),
            None => Ok(None),
        };
    };
    let mut in_use: BTreeSet<Ipv4Addr> = containers
        .values()
        .filter_map(|c| c.endpoint(&network.id)?.ip)
        .collect();
    in_use.extend(planned);
    in_use.extend(network.aux_addresses.values());
    let ip = match requested {
        Some(ip) => {
            ipam::check_requested(&network.name, subnet, gateway, &in_use, ip)?;
            ip
        }
        None => ipam::allocate(
            &network.name,
            subnet,
            network.ip_range.unwrap_or(subnet),
            gateway,
            &in_use,
            network.last_allocated,
        )?,
    };
    Ok(Some(ip))
}

/// The IPv6 address of a new endpoint on `network`: the one asked for with `--ip6`, else
/// the next free one; none on a network without IPv6 (where `--ip6` is refused).
fn plan_endpoint_ipv6(
    containers: &BTreeMap<String, ContainerRecord>,
    network: &NetworkRecord,
    requested: Option<Ipv6Addr>,
) -> Result<Option<Ipv6Addr>> {
    let Some(side) = &network.ipv6 else {
        return match requested {
            Some(ip) => Err(Error::InvalidArgument(format!(
                "IPv6 address {ip} requested on network {}, which has no IPv6 (--ipv6)",
                network.name
            ))),
            None => Ok(None),
        };
    };
    let in_use: BTreeSet<Ipv6Addr> = containers
        .values()
        .filter_map(|c| c.endpoint(&network.id)?.ipv6)
        .collect();
    match requested {
        Some(ip) => {
            ipam::check_requested_v6(&network.name, side.subnet, side.gateway, &in_use, ip)?;
            Ok(Some(ip))
        }
        None => ipam::allocate_v6(
            &network.name,
            side.subnet,
            side.ip_range.unwrap_or(side.subnet),
            side.gateway,
            &in_use,
            side.last_allocated,
        )
        .map(Some),
    }
}

/// Host ports chosen for a request, and the dynamic-port cursor to record with them.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct PortPlan {
    pub bindings: Vec<PortBinding>,
    /// The last dynamic port handed out, when the plan handed one out: the next plan starts
    /// after it.
    pub last_dynamic: Option<u16>,
}

/// What host ports are free: the mappings already published (with their owners' names)
/// and the kernel's answer on whether a socket could bind.
pub(super) struct PortSpace<'a, B> {
    pub published: Vec<(&'a str, PortBinding)>,
    /// The dynamic range, inclusive.
    pub dynamic: PortRange,
    /// Where the last plan left the dynamic-port cursor.
    pub last_dynamic: Option<u16>,
    pub bindable: B,
}

impl<B: Fn(IpAddr, u16, Proto) -> Result<bool>> PortSpace<'_, B> {
    /// The owner of a mapping `binding` would clash with: another container, or an earlier
    /// binding of the same plan.
    fn clash(&self, binding: &PortBinding, chosen: &[PortBinding]) -> Option<String> {
        if chosen.iter().any(|c| c.overlaps(binding)) {
            return Some("this request".into());
        }
        self.published
            .iter()
            .find(|(_, p)| p.overlaps(binding))
            .map(|(owner, _)| format!("container {owner}"))
    }

    fn free(&self, binding: &PortBinding, chosen: &[PortBinding]) -> Result<bool> {
        Ok(self.clash(binding, chosen).is_none()
            && (self.bindable)(binding.host_ip, binding.host_port, binding.proto)?)
    }

    /// The first free binding among `candidates`.
    fn first_free(
        &self,
        candidates: impl IntoIterator<Item = PortBinding>,
        chosen: &[PortBinding],
    ) -> Result<Option<PortBinding>> {
        for binding in candidates {
            if self.free(&binding, chosen)? {
                return Ok(Some(binding));
            }
        }
        Ok(None)
    }

    /// Turns requests into bindings: fixed ports are checked, ranges' and dynamic ones
    /// picked. Dynamic ports go sequentially from the last one handed out, like Docker, so
    /// a port freed by a removed container is not reused at once.
    pub fn plan(&self, requests: &[PortRequest]) -> Result<PortPlan> {
        let PortRange {
            start: dyn_start,
            end: dyn_end,
        } = self.dynamic;
        let mut cursor = self.last_dynamic;
        let mut handed_out_dynamic = false;
        let mut chosen: Vec<PortBinding> = Vec::new();
        for request in requests {
            let binding = |host_port| PortBinding {
                proto: request.proto,
                container_port: request.container_port,
                host_ip: request.host_ip,
                host_port,
            };
            let picked = match request.host_port {
                HostPort::Fixed(port) => {
                    let b = binding(port);
                    if let Some(owner) = self.clash(&b, &chosen) {
                        return Err(Error::Conflict(format!(
                            "host port {}:{}/{} is already published by {owner}",
                            b.host_ip,
                            b.host_port,
                            b.proto.as_str()
                        )));
                    }
                    if !(self.bindable)(b.host_ip, port, b.proto)? {
                        return Err(Error::Conflict(format!(
                            "port mapping {}: host port {port}/{} is already in use on the node",
                            spec(request),
                            b.proto.as_str()
                        )));
                    }
                    b
                }
                HostPort::Range(start, end) => self
                    .first_free(
                        twin_port(&chosen, request)
                            .filter(|p| (start..=end).contains(p))
                            .into_iter()
                            .chain(start..=end)
                            .map(binding),
                        &chosen,
                    )?
                    .ok_or_else(|| {
                        Error::Conflict(format!(
                            "port mapping {}: no free host port in {start}-{end}",
                            spec(request)
                        ))
                    })?,
                HostPort::Dynamic => {
                    let span = u32::from(dyn_end - dyn_start) + 1;
                    let first = match cursor {
                        Some(p) if (dyn_start..=dyn_end).contains(&p) => {
                            u32::from(p - dyn_start) + 1
                        }
                        _ => 0,
                    };
                    // The port of the other family's binding of the same mapping first: `-p
                    // 80` takes one port on 0.0.0.0 and :: alike, as Docker does.
                    let candidates = twin_port(&chosen, request)
                        .filter(|p| (dyn_start..=dyn_end).contains(p))
                        .into_iter()
                        .chain((0..span).map(|step| dyn_start + ((first + step) % span) as u16))
                        .map(binding);
                    let b = self.first_free(candidates, &chosen)?.ok_or_else(|| {
                        Error::Conflict(format!(
                            "port mapping {}: no free host port in {dyn_start}-{dyn_end}",
                            spec(request)
                        ))
                    })?;
                    cursor = Some(b.host_port);
                    handed_out_dynamic = true;
                    b
                }
            };
            chosen.push(picked);
        }
        Ok(PortPlan {
            bindings: chosen,
            last_dynamic: cursor.filter(|_| handed_out_dynamic),
        })
    }
}

/// The host port chosen already for the same container port and protocol on every address
/// of the other family, when `request` binds every address of its own.
fn twin_port(chosen: &[PortBinding], request: &PortRequest) -> Option<u16> {
    if !request.host_ip.is_unspecified() {
        return None;
    }
    chosen
        .iter()
        .find(|b| {
            b.proto == request.proto
                && b.container_port == request.container_port
                && b.host_ip.is_unspecified()
                && b.host_ip.is_ipv4() != request.host_ip.is_ipv4()
        })
        .map(|b| b.host_port)
}

/// A request as `docker run -p` spells it, for error messages.
fn spec(request: &PortRequest) -> String {
    format!(
        "{}:{}->{}/{}",
        request.host_ip,
        match request.host_port {
            HostPort::Fixed(p) => p.to_string(),
            HostPort::Range(a, b) => format!("{a}-{b}"),
            HostPort::Dynamic => String::new(),
        },
        request.container_port,
        request.proto.as_str()
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::model::{HostBinding, ManagedBy};

    fn network(name: &str, id: &str, internal: bool) -> NetworkRecord {
        NetworkRecord {
            id: id.into(),
            internal,
            ..NetworkRecord::for_tests(name, "10.1.0.0/29")
        }
    }

    fn networks(list: &[NetworkRecord]) -> BTreeMap<String, NetworkRecord> {
        list.iter().map(|n| (n.name.clone(), n.clone())).collect()
    }

    fn endpoint(network_id: &str, ip: [u8; 4], ifname: &str, pending: bool) -> EndpointRecord {
        EndpointRecord {
            network_id: network_id.into(),
            endpoint_id: format!("ep-{network_id}"),
            ip: Some(ip.into()),
            mac: MacAddress::default(),
            ifname: ifname.into(),
            host_veth: String::new(),
            host_veth_ifindex: 0,
            host_veth_mac: None,
            aliases: Vec::new(),
            requested_ip: None,
            ipv6: None,
            requested_ipv6: None,
            pending,
            gw_priority: 0,
            sub_interface: false,
        }
    }

    fn container(name: &str, endpoints: Vec<EndpointRecord>) -> ContainerRecord {
        ContainerRecord {
            id: format!("{name}-id"),
            name: name.into(),
            created: String::new(),
            mode: NetworkMode::Bridge,
            netns: PathBuf::new(),
            netns_owned: false,
            endpoints,
            ports: Vec::new(),
            exposed: Vec::new(),
            links: Vec::new(),
            pending: false,
            managed_by: ManagedBy::Bpfbridge,
        }
    }

    #[test]
    fn the_ports_go_through_a_way_out() {
        let nets = networks(&[
            network("inside", "n-int", true),
            network("outside", "n-out", false),
            network("second", "n-2nd", false),
        ]);
        let cases: &[(&[&str], Option<&str>)] = &[
            (&[], None),
            (&["n-out"], Some("n-out")),
            (&["n-int"], None),
            (&["n-int", "n-out"], Some("n-out")),
            (&["n-2nd", "n-out"], Some("n-out")),
            (&["n-gone", "n-2nd"], Some("n-2nd")),
            (&["n-int", "n-gone"], None),
        ];
        for (on, expected) in cases {
            let endpoints: Vec<EndpointRecord> = on
                .iter()
                .map(|id| endpoint(id, [10, 1, 0, 2], "eth0", false))
                .collect();
            let carrier = port_endpoint(&endpoints, &nets).map(|e| e.network_id.as_str());
            assert_eq!(carrier, *expected, "endpoints on {on:?}");
        }
        // A planned endpoint is the carrier its finished self will be.
        let planned = [endpoint("n-out", [10, 1, 0, 2], "eth0", true)];
        assert!(port_endpoint(&planned, &nets).is_some());
    }

    #[test]
    fn network_modes() {
        let cases: &[(Option<&str>, NetworkMode, Option<&str>)] = &[
            (None, NetworkMode::Bridge, Some("bridge")),
            (Some("default"), NetworkMode::Bridge, Some("bridge")),
            (Some("bridge"), NetworkMode::Bridge, Some("bridge")),
            (Some("mynet"), NetworkMode::Bridge, Some("mynet")),
            (Some("host"), NetworkMode::Host, None),
            (Some("none"), NetworkMode::None, None),
            (
                Some("container:web"),
                NetworkMode::Container("web".into()),
                None,
            ),
        ];
        for (given, mode, primary) in cases {
            let (m, p) = parse_mode(*given);
            assert_eq!((&m, p.as_deref()), (mode, *primary), "{given:?}");
        }
    }

    #[test]
    fn what_each_mode_allows() {
        /// A create request's mode, networks and whether it publishes ports; the number
        /// of warnings, or `None` when it is refused.
        struct Case(NetworkMode, &'static [&'static str], bool, Option<usize>);
        let joiner = NetworkMode::Container("web".into());
        let cases = [
            Case(NetworkMode::Bridge, &["bridge", "other"], true, Some(0)),
            Case(NetworkMode::Host, &[], false, Some(0)),
            Case(NetworkMode::Host, &[], true, Some(1)),
            Case(NetworkMode::None, &[], true, Some(1)),
            Case(joiner.clone(), &[], false, Some(0)),
            Case(NetworkMode::Host, &["other"], false, None),
            Case(NetworkMode::None, &["other"], false, None),
            Case(joiner, &["other"], false, None),
        ];
        for Case(mode, networks, has_ports, expected) in cases {
            let warnings = mode_warnings(&mode, networks, has_ports)
                .ok()
                .map(|w| w.len());
            assert_eq!(
                warnings, expected,
                "{mode:?} {networks:?} ports: {has_ports}"
            );
        }
    }

    #[test]
    fn exposed_ports_parse() {
        let keys = [
            "80/tcp".to_string(),
            "53/udp".to_string(),
            "8080".to_string(),
        ];
        let ports: Vec<(u16, Proto)> = parse_exposed(&keys)
            .unwrap()
            .iter()
            .map(|p| (p.port, p.proto))
            .collect();
        assert_eq!(
            ports,
            [(80, Proto::Tcp), (53, Proto::Udp), (8080, Proto::Tcp)]
        );
        assert!(parse_exposed(&["80/sctp".to_string()]).is_err());
    }

    #[test]
    fn the_primary_network_comes_first_and_once() {
        let configured = ["b".to_string(), "a".to_string(), "c".to_string()];
        assert_eq!(network_names(Some("a"), &configured), ["a", "b", "c"]);
        assert_eq!(network_names(Some("z"), &configured), ["z", "b", "a", "c"]);
        assert!(network_names(None, &[]).is_empty());
    }

    #[test]
    fn publish_all_adds_the_exposed_ports_not_bound() {
        let any = IpAddr::from(Ipv4Addr::UNSPECIFIED);
        let mut host_config = HostConfig::default();
        host_config.port_bindings.insert(
            "80/tcp".into(),
            vec![HostBinding {
                host_ip: String::new(),
                host_port: "8080".into(),
            }],
        );
        let exposed = [
            ExposedPort {
                port: 80,
                proto: Proto::Tcp,
            },
            ExposedPort {
                port: 53,
                proto: Proto::Udp,
            },
        ];
        let fixed_only = container_port_requests(&host_config, &exposed, &[any]).unwrap();
        assert_eq!(fixed_only.len(), 1);
        host_config.publish_all_ports = true;
        let all = container_port_requests(&host_config, &exposed, &[any]).unwrap();
        let summary: Vec<(u16, Proto, HostPort)> = all
            .iter()
            .map(|r| (r.container_port, r.proto, r.host_port))
            .collect();
        assert_eq!(
            summary,
            [
                (80, Proto::Tcp, HostPort::Fixed(8080)),
                (53, Proto::Udp, HostPort::Dynamic)
            ]
        );
    }

    #[test]
    fn links_need_a_shared_network_and_distinct_aliases() {
        let shared = network("shared", "n-s", false);
        let other = network("other", "n-o", false);
        let db = container("db", vec![endpoint("n-s", [10, 1, 0, 2], "eth0", false)]);
        let find = |name: &str| (name == "db").then_some(&db);
        let joined = std::slice::from_ref(&shared);
        let spec = |s: &str| vec![s.to_string()];

        let links = plan_links(&spec("db"), find, joined).unwrap();
        assert_eq!(
            (links[0].alias.as_str(), links[0].container_id.as_str()),
            ("db", "db-id")
        );
        let links = plan_links(&spec("db:database"), find, joined).unwrap();
        assert_eq!(links[0].alias, "database");

        let cases: &[(Vec<String>, &[NetworkRecord], &str)] = &[
            (spec("cache"), joined, "could not get container"),
            (spec("db:bad alias"), joined, "invalid link alias"),
            (vec!["db:x".into(), "db:x".into()], joined, "given twice"),
            (spec("db"), std::slice::from_ref(&other), "on no network"),
        ];
        for (specs, nets, message) in cases {
            let error = plan_links(specs, find, nets).unwrap_err().to_string();
            assert!(error.contains(message), "{specs:?}: {error}");
        }
    }

    #[test]
    fn an_endpoint_on_an_ipv6_only_network_has_no_ipv4_address() {
        let net = NetworkRecord {
            id: "n-6".into(),
            ..NetworkRecord::ipv6_only_for_tests("v6", "fd00:6::/64")
        };
        let new = container("b", Vec::new());
        let plan = |wish: EndpointWish| {
            plan_endpoint(&BTreeMap::new(), &new, &net, wish, &BTreeSet::new())
        };
        let e = plan(EndpointWish::default()).unwrap();
        assert_eq!(e.ip, None);
        assert_eq!(e.ipv6, Some("fd00:6::2".parse().unwrap()));
        assert_eq!(e.mac.octets()[0] & 0x03, 0x02, "a random local MAC");
        let asking = EndpointWish {
            requested_ip: Some(Ipv4Addr::new(10, 255, 255, 5)),
            ..EndpointWish::default()
        };
        let error = plan(asking).unwrap_err().to_string();
        assert!(error.contains("is IPv6-only"), "{error}");
        let asking6 = EndpointWish {
            requested_ipv6: Some("fd00:6::9".parse().unwrap()),
            ..EndpointWish::default()
        };
        assert_eq!(
            plan(asking6).unwrap().ipv6,
            Some("fd00:6::9".parse().unwrap())
        );
    }

    #[test]
    fn endpoints_get_free_addresses_and_the_next_interface() {
        let net = network("mynet", "n-1", false);
        let holder = container("a", vec![endpoint("n-1", [10, 1, 0, 2], "eth0", false)]);
        let containers = BTreeMap::from([("a".to_string(), holder)]);
        let new = container("b", vec![endpoint("n-x", [10, 9, 0, 2], "eth0", false)]);
        let planned = BTreeSet::from([Ipv4Addr::new(10, 1, 0, 3)]);

        let plan = |net: &NetworkRecord, wish: EndpointWish| {
            plan_endpoint(&containers, &new, net, wish, &planned)
        };
        let asking = |ip: [u8; 4]| EndpointWish {
            requested_ip: Some(ip.into()),
            ..EndpointWish::default()
        };
        let e = plan(&net, EndpointWish::default()).unwrap();
        assert_eq!(
            (e.ip, e.ifname.as_str()),
            (Some(Ipv4Addr::new(10, 1, 0, 4)), "eth1")
        );
        assert_eq!(e.mac.to_string(), "02:42:0a:01:00:04");
        assert!(e.pending);

        let e = plan(&net, asking([10, 1, 0, 5])).unwrap();
        assert_eq!(e.ip, Some(Ipv4Addr::new(10, 1, 0, 5)));
        for taken in [[10, 1, 0, 2], [10, 1, 0, 3], [10, 1, 0, 1], [10, 2, 0, 2]] {
            assert!(plan(&net, asking(taken)).is_err());
        }

        let default = network(DEFAULT_NETWORK, "n-d", false);
        assert!(plan(&default, asking([10, 1, 0, 5])).is_err());
        let alias = EndpointWish {
            aliases: vec!["web".to_string()],
            ..EndpointWish::default()
        };
        assert!(plan(&default, alias).is_err());

        // The network's interface prefix, or the name the endpoint option gives.
        let prefixed = NetworkRecord {
            container_iface_prefix: Some("app".into()),
            ..net.clone()
        };
        assert_eq!(
            plan(&prefixed, EndpointWish::default()).unwrap().ifname,
            "app0"
        );
        let named = |name: &str| EndpointWish {
            ifname: Some(name.into()),
            gw_priority: 7,
            ..EndpointWish::default()
        };
        let e = plan(&net, named("front")).unwrap();
        assert_eq!((e.ifname.as_str(), e.gw_priority), ("front", 7));
        assert!(matches!(plan(&net, named("eth0")), Err(Error::Conflict(_))));
        assert!(plan(&net, named("a/b")).is_err());
    }

    #[test]
    fn the_highest_gateway_priority_carries_the_ports_then_the_first_name() {
        let nets = networks(&[
            network("alpha", "n-a", false),
            network("beta", "n-b", false),
            network("inside", "n-int", true),
            NetworkRecord {
                gateway_mode_ipv4: crate::model::GatewayMode::Isolated,
                ..network("isolated", "n-iso", true)
            },
        ]);
        let on = |list: &[(&str, i64)]| -> Vec<EndpointRecord> {
            list.iter()
                .map(|(id, priority)| EndpointRecord {
                    gw_priority: *priority,
                    ..endpoint(id, [10, 1, 0, 2], "eth0", false)
                })
                .collect()
        };
        type Endpoints = &'static [(&'static str, i64)];
        let cases: &[(Endpoints, Option<&str>)] = &[
            (&[("n-b", 0), ("n-a", 0)], Some("n-a")),
            (&[("n-a", 0), ("n-b", 1)], Some("n-b")),
            (&[("n-a", -1), ("n-b", -2)], Some("n-a")),
            (&[("n-int", 10), ("n-b", 0)], Some("n-b")),
            (&[("n-iso", 10), ("n-int", 5)], None),
        ];
        for (list, expected) in cases {
            let endpoints = on(list);
            let carrier = port_endpoint(&endpoints, &nets).map(|e| e.network_id.as_str());
            assert_eq!(carrier, *expected, "endpoints {list:?}");
        }
    }

    const ANY: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

    fn request(host_port: HostPort) -> PortRequest {
        PortRequest {
            proto: Proto::Tcp,
            container_port: 80,
            host_ip: ANY,
            host_port,
        }
    }

    fn tcp(host_ip: IpAddr, host_port: u16) -> PortBinding {
        PortBinding {
            proto: Proto::Tcp,
            container_port: 80,
            host_ip,
            host_port,
        }
    }

    /// A port space over the dynamic range 100-104 where `web` publishes 101 and the node
    /// has a socket on 102.
    fn space(
        last_dynamic: Option<u16>,
    ) -> PortSpace<'static, impl Fn(IpAddr, u16, Proto) -> Result<bool>> {
        PortSpace {
            published: vec![("web", tcp(ANY, 101))],
            dynamic: PortRange {
                start: 100,
                end: 104,
            },
            last_dynamic,
            bindable: |_, port, _| Ok(port != 102),
        }
    }

    #[test]
    fn host_ports_are_chosen_around_what_is_taken() {
        use HostPort::{Dynamic, Fixed, Range};
        /// Requested host ports and the cursor before; the ports chosen and the cursor after.
        struct Case(
            &'static [HostPort],
            Option<u16>,
            &'static [u16],
            Option<u16>,
        );
        let cases = [
            Case(&[Fixed(80)], None, &[80], None),
            Case(&[Range(100, 104)], None, &[100], None),
            Case(&[Range(101, 104)], None, &[103], None),
            Case(&[Range(101, 104), Range(101, 104)], None, &[103, 104], None),
            Case(&[Dynamic], None, &[100], Some(100)),
            Case(&[Dynamic], Some(100), &[103], Some(103)),
            Case(&[Dynamic, Dynamic], Some(103), &[104, 100], Some(100)),
            Case(&[Dynamic], Some(104), &[100], Some(100)),
            Case(&[Dynamic], Some(7), &[100], Some(100)),
            Case(&[Fixed(100), Dynamic], None, &[100, 103], Some(103)),
        ];
        for Case(asked, last, ports, cursor) in cases {
            let requests: Vec<PortRequest> = asked.iter().map(|h| request(*h)).collect();
            let plan = space(last).plan(&requests).unwrap();
            let chosen: Vec<u16> = plan.bindings.iter().map(|b| b.host_port).collect();
            assert_eq!(chosen, ports, "{asked:?} after {last:?}");
            assert_eq!(plan.last_dynamic, cursor, "{asked:?} after {last:?}");
        }
    }

    #[test]
    fn host_ports_that_are_taken_are_refused() {
        use HostPort::{Dynamic, Fixed, Range};
        let cases: &[(&[HostPort], &str)] = &[
            (&[Fixed(101)], "already published by container web"),
            (&[Fixed(80), Fixed(80)], "already published by this request"),
            (&[Fixed(102)], "already in use on the node"),
            (&[Range(101, 102)], "no free host port in 101-102"),
            (
                &[Dynamic, Dynamic, Dynamic, Dynamic],
                "no free host port in 100-104",
            ),
        ];
        for (asked, message) in cases {
            let requests: Vec<PortRequest> = asked.iter().map(|h| request(*h)).collect();
            let error = space(None).plan(&requests).unwrap_err();
            assert!(matches!(error, Error::Conflict(_)), "{asked:?}: {error}");
            assert!(error.to_string().contains(message), "{asked:?}: {error}");
        }
        // Another address is another port; every address clashes with each.
        let own_address = IpAddr::from([192, 0, 2, 1]);
        let web_on_one = PortSpace {
            published: vec![("web", tcp(own_address, 101))],
            ..space(None)
        };
        let elsewhere = PortRequest {
            host_ip: IpAddr::from([192, 0, 2, 2]),
            ..request(Fixed(101))
        };
        assert!(web_on_one.plan(&[elsewhere]).is_ok());
        assert!(web_on_one.plan(&[request(Fixed(101))]).is_err());
    }
}
