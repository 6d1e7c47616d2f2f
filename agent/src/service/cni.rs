//! CNI attachments: a namespace a container runtime made (`CNI_NETNS`), attached to a
//! network as `(container ID, interface name)`. Each is a container record named
//! `cni-CONTAINERID`, managed by the runtime ([`ManagedBy::Cni`]), with one endpoint whose
//! interface is the attachment's; so records, reconciliation and published ports are the
//! containers' own, and a restart keeps the attachments. The network is made on the first
//! attachment from the CNI network configuration.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::Ipv6Net;

use super::{Service, docker::refuse_docker_managed};
use crate::{
    Error, Result,
    faults::{self, CrashPoint},
    model::{
        CNI_CONTAINER_PREFIX, CniAttachRequest, CniAttachment, CniNetwork, CniPortMapping,
        ContainerRecord, CreateContainer, CreateNetwork, EndpointConfig, EndpointIpamConfig,
        HostBinding, HostConfig, Ipam, IpamConfig, ManagedBy, NetworkRecord, NetworkingConfig,
        OPT_BRIDGE_NAME, OPT_ENABLE_ICC, OPT_ENABLE_IP_MASQUERADE, OPT_ENDPOINT_IFNAME,
        OPT_GATEWAY_MODE_IPV4, OPT_MTU,
    },
    netlink, netns,
};

/// The container record's name of the attachments of `container_id`.
fn record_name(container_id: &str) -> String {
    format!("{CNI_CONTAINER_PREFIX}{container_id}")
}

/// Whether `network`, made before, is what `wanted` describes: the keys a configuration
/// gives must match (those it leaves out take whatever the network has).
fn check_network_matches(network: &NetworkRecord, wanted: &CniNetwork) -> Result<()> {
    let mut differences = Vec::new();
    match (network.ipv4(), &wanted.subnet) {
        (None, Some(wanted)) => differences.push(format!("no IPv4 (configured: {wanted})")),
        (Some((subnet, _)), Some(wanted)) if wanted.parse().ok() != Some(subnet) => {
            differences.push(format!("subnet {subnet} (configured: {wanted})"))
        }
        _ => {}
    }
    if let (Some((_, gateway)), Some(wanted)) = (network.ipv4(), &wanted.gateway)
        && wanted.parse().ok() != Some(gateway)
    {
        differences.push(format!("gateway {gateway} (configured: {wanted})"));
    }
    if wanted.enable_ipv4 == Some(false) && network.enable_ipv4() {
        differences.push("IPv4 (configured: IPv6 only)".to_string());
    }
    match (&network.ipv6, &wanted.ipv6_subnet) {
        (None, Some(wanted)) => differences.push(format!("no IPv6 (configured: {wanted})")),
        (Some(side), Some(wanted)) if wanted.parse().ok() != Some(side.subnet) => differences.push(
            format!("IPv6 subnet {} (configured: {wanted})", side.subnet),
        ),
        _ => {}
    }
    if let (Some(side), Some(wanted)) = (&network.ipv6, &wanted.ipv6_gateway)
        && wanted.parse().ok() != Some(side.gateway)
    {
        differences.push(format!(
            "IPv6 gateway {} (configured: {wanted})",
            side.gateway
        ));
    }
    if let Some(mtu) = wanted.mtu
        && mtu != network.mtu
    {
        differences.push(format!("mtu {} (configured: {mtu})", network.mtu));
    }
    if let Some(icc) = wanted.icc
        && icc != network.enable_icc
    {
        differences.push(format!("icc {} (configured: {icc})", network.enable_icc));
    }
    if let Some(masq) = wanted.ip_masq
        && masq != network.enable_ip_masquerade
    {
        differences.push(format!(
            "ipMasq {} (configured: {masq})",
            network.enable_ip_masquerade
        ));
    }
    if let Some(bridge) = &wanted.bridge
        && *bridge != network.bridge
    {
        differences.push(format!("bridge {} (configured: {bridge})", network.bridge));
    }
    if let Some(mode) = &wanted.gateway_mode
        && mode != network.gateway_mode_ipv4.as_str()
    {
        differences.push(format!(
            "gatewayMode {} (configured: {mode})",
            network.gateway_mode_ipv4.as_str()
        ));
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(Error::Conflict(format!(
            "network {} exists with {}; remove it or change the CNI configuration",
            network.name,
            differences.join(", ")
        )))
    }
}

/// The `POST /networks` request that makes the network a CNI configuration describes.
fn network_request(wanted: &CniNetwork) -> CreateNetwork {
    let mut options = BTreeMap::new();
    let mut set = |key: &str, value: Option<String>| {
        if let Some(value) = value {
            options.insert(key.to_string(), value);
        }
    };
    set(OPT_BRIDGE_NAME, wanted.bridge.clone());
    set(OPT_ENABLE_ICC, wanted.icc.map(|b| b.to_string()));
    set(
        OPT_ENABLE_IP_MASQUERADE,
        wanted.ip_masq.map(|b| b.to_string()),
    );
    set(OPT_MTU, wanted.mtu.map(|m| m.to_string()));
    set(OPT_GATEWAY_MODE_IPV4, wanted.gateway_mode.clone());
    // One IPAM entry per family given, as `--subnet` once per family.
    let entry = |subnet: &Option<String>, gateway: &Option<String>| {
        subnet.as_ref().map(|subnet| IpamConfig {
            subnet: Some(subnet.clone()),
            gateway: gateway.clone(),
            ..IpamConfig::default()
        })
    };
    let config: Vec<IpamConfig> = [
        entry(&wanted.subnet, &wanted.gateway),
        entry(&wanted.ipv6_subnet, &wanted.ipv6_gateway),
    ]
    .into_iter()
    .flatten()
    .collect();
    CreateNetwork {
        name: wanted.name.clone(),
        enable_ipv6: wanted.ipv6_subnet.is_some().then_some(true),
        enable_ipv4: wanted.enable_ipv4,
        ipam: (!config.is_empty()).then(|| Ipam {
            config,
            ..Ipam::default()
        }),
        options,
        ..CreateNetwork::default()
    }
}

/// The address families of a network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Families {
    ipv4: bool,
    ipv6: bool,
}

impl Families {
    fn of(network: &NetworkRecord) -> Self {
        Families {
            ipv4: network.enable_ipv4(),
            ipv6: network.ipv6.is_some(),
        }
    }

    fn has(self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(_) => self.ipv4,
            IpAddr::V6(_) => self.ipv6,
        }
    }
}

/// The container create request behind an attachment on a network of `families`. As the
/// reference plugins, a `HostIP` or an address asked for of a family the network does not
/// have is left out.
fn container_request(request: &CniAttachRequest, families: Families) -> CreateContainer {
    let mut port_bindings: BTreeMap<String, Vec<HostBinding>> = BTreeMap::new();
    let mappings = request
        .port_mappings
        .iter()
        .filter(|m| m.host_ip.is_none_or(|ip| families.has(ip)));
    for mapping in mappings {
        port_bindings
            .entry(format!(
                "{}/{}",
                mapping.container_port,
                mapping.protocol.as_str()
            ))
            .or_default()
            .push(HostBinding {
                host_ip: mapping.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                host_port: mapping.host_port.to_string(),
            });
    }
    let ipv4 = request.ip.filter(|_| families.ipv4);
    let ipv6 = request.ipv6.filter(|_| families.ipv6);
    let endpoint = EndpointConfig {
        ipam_config: (ipv4.is_some() || ipv6.is_some()).then(|| EndpointIpamConfig {
            ipv4_address: ipv4.map(|ip| ip.to_string()).unwrap_or_default(),
            ipv6_address: ipv6.map(|ip| ip.to_string()).unwrap_or_default(),
        }),
        driver_opts: BTreeMap::from([(OPT_ENDPOINT_IFNAME.to_string(), request.ifname.clone())]),
        ..EndpointConfig::default()
    };
    CreateContainer {
        name: record_name(&request.container_id),
        netns: Some(request.netns.clone()),
        host_config: HostConfig {
            network_mode: Some(request.network.name.clone()),
            port_bindings,
            ..HostConfig::default()
        },
        networking_config: NetworkingConfig {
            endpoints_config: BTreeMap::from([(request.network.name.clone(), endpoint)]),
        },
        ..CreateContainer::default()
    }
}

/// Interface names as the kernel takes them.
fn check_ifname(ifname: &str) -> Result<()> {
    let valid = !ifname.is_empty()
        && ifname.len() < 16
        && ifname != "."
        && ifname != ".."
        && !ifname.contains(['/', ':'])
        && !ifname.chars().any(char::is_whitespace);
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid interface name {ifname:?}"
        )))
    }
}

impl Service {
    /// Attaches a runtime's namespace; the network is made first if it does not exist.
    pub async fn cni_attach(&mut self, request: CniAttachRequest) -> Result<CniAttachment> {
        check_ifname(&request.ifname)?;
        let name = record_name(&request.container_id);
        if let Some(existing) = self.state.containers.get(&name) {
            let ifnames: Vec<&str> = existing
                .endpoints
                .iter()
                .map(|e| e.ifname.as_str())
                .collect();
            return Err(Error::Conflict(
                if ifnames.contains(&request.ifname.as_str()) {
                    format!(
                        "container {} already has interface {} (ADD without DEL)",
                        request.container_id, request.ifname
                    )
                } else {
                    format!(
                        "container {} already has interface {} from bpfbridge; one interface per container is supported",
                        request.container_id,
                        ifnames.join(", ")
                    )
                },
            ));
        }
        self.ensure_cni_network(&request.network).await?;
        let families = self
            .state
            .networks
            .get(&request.network.name)
            .map(Families::of)
            .ok_or_else(|| {
                Error::Internal(format!("network {} was not made", request.network.name))
            })?;
        let mut plan = self.plan_container(&container_request(&request, families))?;
        plan.container.managed_by = ManagedBy::Cni;
        if let Some(mac) = request.mac {
            for endpoint in &mut plan.container.endpoints {
                endpoint.mac = mac;
            }
        }
        self.apply_container_plan(plan).await?;
        let container = self.container(&name)?;
        self.attachment_of(container)
    }

    /// The network a configuration describes: the existing one if it matches, else a new one.
    async fn ensure_cni_network(&mut self, wanted: &CniNetwork) -> Result<()> {
        match self.state.networks.get(&wanted.name) {
            Some(network) => {
                refuse_docker_managed("network", &network.name, network.managed_by)?;
                check_network_matches(network, wanted)
            }
            None => self.create_network(network_request(wanted)).await.map(drop),
        }
    }

    /// Every CNI attachment.
    pub fn cni_attachments(&self) -> Result<Vec<CniAttachment>> {
        self.state
            .containers
            .values()
            .filter(|c| c.managed_by == ManagedBy::Cni && !c.pending)
            .map(|c| self.attachment_of(c))
            .collect()
    }

    /// One attachment, with what on the node is not as its records say.
    pub async fn cni_check(&self, container_id: &str, ifname: &str) -> Result<CniAttachment> {
        let container = self.cni_container(container_id, ifname)?;
        let mut attachment = self.attachment_of(container)?;
        attachment.problems = self.cni_problems(container, &attachment).await;
        Ok(attachment)
    }

    /// Removes an attachment: its veth, published ports and record. The runtime removes
    /// the namespace.
    pub async fn cni_detach(&mut self, container_id: &str, ifname: &str) -> Result<()> {
        let container = self.cni_container(container_id, ifname)?.clone();
        // Pending while it goes: a crash in the middle finishes the removal on start.
        self.save_container(ContainerRecord {
            pending: true,
            ..container.clone()
        })?;
        faults::reach(CrashPoint::ContainerRemoveMarked);
        self.dns.stop(&container.id);
        let steps = self.container_teardown_steps(&container);
        let result = self.run_all(steps).await;
        self.refresh_views()?;
        result
    }

    fn cni_container(&self, container_id: &str, ifname: &str) -> Result<&ContainerRecord> {
        self.state
            .containers
            .get(&record_name(container_id))
            .filter(|c| {
                c.managed_by == ManagedBy::Cni
                    && !c.pending
                    && c.endpoints.iter().any(|e| e.ifname == ifname)
            })
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no CNI attachment of container {container_id} with interface {ifname}"
                ))
            })
    }

    fn attachment_of(&self, container: &ContainerRecord) -> Result<CniAttachment> {
        let endpoint = container.endpoints.first().ok_or_else(|| {
            Error::Internal(format!("CNI container {} has no endpoint", container.name))
        })?;
        let network = self.network_by_id(&endpoint.network_id)?;
        let ipv4 = endpoint.ip.zip(network.ipv4());
        let ipv6 = endpoint.ipv6.zip(network.ipv6.as_ref());
        if ipv4.is_none() && ipv6.is_none() {
            return Err(Error::Internal(format!(
                "CNI container {} has no address",
                container.name
            )));
        }
        Ok(CniAttachment {
            container_id: container
                .name
                .strip_prefix(CNI_CONTAINER_PREFIX)
                .unwrap_or(&container.name)
                .to_string(),
            ifname: endpoint.ifname.clone(),
            netns: container.netns.display().to_string(),
            network: network.name.clone(),
            bridge: network.bridge.clone(),
            ip: ipv4.map(|(ip, _)| ip),
            prefix_len: ipv4.map(|(_, (subnet, _))| subnet.prefix_len()),
            gateway: network.gateway_ipv4(),
            ipv6_address: ipv6.map(|(address, side)| {
                Ipv6Net::new(address, side.subnet.prefix_len()).expect("prefix of a valid net")
            }),
            ipv6_gateway: ipv6
                .filter(|_| network.has_gateway())
                .map(|(_, side)| side.gateway),
            mac: endpoint.mac,
            mtu: network.mtu,
            host_veth: endpoint.host_veth.clone(),
            port_mappings: container
                .ports
                .iter()
                .map(|p| CniPortMapping {
                    host_port: p.host_port,
                    container_port: p.container_port,
                    protocol: p.proto,
                    host_ip: Some(p.host_ip),
                })
                .collect(),
            problems: Vec::new(),
        })
    }

    /// What a CHECK reports: the namespace, the veth's node side, the interface inside and
    /// its address, each as the records say.
    async fn cni_problems(
        &self,
        container: &ContainerRecord,
        attachment: &CniAttachment,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = netns::is_netns(&container.netns) {
            problems.push(e.to_string());
            return problems;
        }
        let host_veth = &attachment.host_veth;
        match netlink::link_by_name(&self.handle, host_veth).await {
            Ok(Some(_)) => {}
            Ok(None) => problems.push(format!("the veth {host_veth} is gone from the node")),
            Err(e) => problems.push(format!("looking up {host_veth}: {e}")),
        }
        let ifname = attachment.ifname.clone();
        let inside = netns::with_netlink_in(&container.netns, |h| async move {
            let Some(link) = netlink::link_by_name(&h, &ifname).await? else {
                return Ok(None);
            };
            let ipv4 = netlink::ipv4_addresses(&h).await?;
            let ipv6 = netlink::ipv6_addresses(&h).await?;
            let on_link = ipv4
                .into_iter()
                .map(|(index, net)| (index, IpAddr::V4(net.addr())))
                .chain(
                    ipv6.into_iter()
                        .map(|(index, net)| (index, IpAddr::V6(net.addr()))),
                )
                .filter(|(index, _)| *index == link.index)
                .map(|(_, address)| address)
                .collect::<Vec<_>>();
            Ok(Some(on_link))
        });
        match inside {
            Ok(Some(addresses)) => {
                let expected = attachment.addresses();
                for lost in expected.iter().filter(|a| !addresses.contains(&a.addr())) {
                    problems.push(format!(
                        "interface {} has lost its address {}",
                        attachment.ifname,
                        lost.addr()
                    ));
                }
            }
            Ok(None) => problems.push(format!(
                "interface {} is gone from {}",
                attachment.ifname, attachment.netns
            )),
            Err(e) => problems.push(format!("looking into {}: {e}", attachment.netns)),
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Proto;

    #[test]
    fn an_attachment_is_a_container_with_its_interface_and_ports() {
        let request = CniAttachRequest {
            container_id: "abc123".into(),
            ifname: "net1".into(),
            netns: "/run/netns/cni-1".into(),
            network: CniNetwork {
                name: "pods".into(),
                ..CniNetwork::default()
            },
            port_mappings: vec![
                CniPortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: Proto::Tcp,
                    host_ip: None,
                },
                CniPortMapping {
                    host_port: 5353,
                    container_port: 53,
                    protocol: Proto::Udp,
                    host_ip: Some("10.0.0.1".parse().unwrap()),
                },
                CniPortMapping {
                    host_port: 8443,
                    container_port: 443,
                    protocol: Proto::Tcp,
                    host_ip: Some("::".parse().unwrap()),
                },
            ],
            ip: Some("10.22.0.9".parse().unwrap()),
            ipv6: None,
            mac: None,
        };
        let create = container_request(
            &request,
            Families {
                ipv4: true,
                ipv6: false,
            },
        );
        assert_eq!(create.name, "cni-abc123");
        assert_eq!(create.netns.as_deref(), Some("/run/netns/cni-1"));
        assert_eq!(create.host_config.network_mode.as_deref(), Some("pods"));
        let ports = &create.host_config.port_bindings;
        assert_eq!(ports["80/tcp"][0].host_port, "8080");
        assert_eq!(ports["80/tcp"][0].host_ip, "");
        assert_eq!(ports["53/udp"][0].host_ip, "10.0.0.1");
        let endpoint = &create.networking_config.endpoints_config["pods"];
        assert_eq!(endpoint.driver_opts[OPT_ENDPOINT_IFNAME], "net1");
        assert_eq!(
            endpoint.ipam_config.as_ref().unwrap().ipv4_address,
            "10.22.0.9"
        );
        assert!(
            !ports.contains_key("443/tcp"),
            "an IPv6 hostIP is left out without IPv6, as portmap does: {ports:?}"
        );

        // On a dual-stack network: the IPv6 mapping and the IPv6 address asked for.
        let dual = CniAttachRequest {
            ipv6: Some("fd00:22::9".parse().unwrap()),
            ..request
        };
        let create = container_request(
            &dual,
            Families {
                ipv4: true,
                ipv6: true,
            },
        );
        let ports = &create.host_config.port_bindings;
        assert_eq!(ports["443/tcp"][0].host_ip, "::");
        let ipam = create.networking_config.endpoints_config["pods"]
            .ipam_config
            .clone()
            .unwrap();
        assert_eq!(
            (ipam.ipv4_address.as_str(), ipam.ipv6_address.as_str()),
            ("10.22.0.9", "fd00:22::9")
        );

        // On an IPv6-only network: the IPv4 mapping and address are left out.
        let create = container_request(
            &dual,
            Families {
                ipv4: false,
                ipv6: true,
            },
        );
        let ports = &create.host_config.port_bindings;
        assert!(!ports.contains_key("53/udp"), "{ports:?}");
        assert_eq!(ports["80/tcp"][0].host_ip, "", "both families: :: only");
        let ipam = create.networking_config.endpoints_config["pods"]
            .ipam_config
            .clone()
            .unwrap();
        assert_eq!(ipam.ipv4_address, "");
    }

    #[test]
    fn a_made_network_must_match_what_the_configuration_gives() {
        let network = NetworkRecord::for_tests("pods", "10.22.0.0/24");
        let mut wanted = CniNetwork {
            name: "pods".into(),
            subnet: Some("10.22.0.0/24".into()),
            ..CniNetwork::default()
        };
        assert!(check_network_matches(&network, &wanted).is_ok());
        wanted.subnet = Some("10.23.0.0/24".into());
        wanted.mtu = Some(9000);
        let refused = check_network_matches(&network, &wanted)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("subnet 10.22.0.0/24 (configured: 10.23.0.0/24)")
                && refused.contains("mtu 1500 (configured: 9000)"),
            "{refused}"
        );
        let request = network_request(&CniNetwork {
            name: "pods".into(),
            subnet: Some("10.22.0.0/24".into()),
            icc: Some(false),
            bridge: Some("cni0".into()),
            ..CniNetwork::default()
        });
        assert_eq!(request.options[OPT_ENABLE_ICC], "false");
        assert_eq!(request.options[OPT_BRIDGE_NAME], "cni0");
        assert!(!request.options.contains_key(OPT_MTU));
        assert_eq!(
            request.ipam.unwrap().config[0].subnet.as_deref(),
            Some("10.22.0.0/24")
        );
        assert_eq!(request.enable_ipv6, None);
    }

    #[test]
    fn a_dual_stack_configuration_makes_and_matches_the_ipv6_side() {
        let wanted = CniNetwork {
            name: "pods".into(),
            subnet: Some("10.22.0.0/24".into()),
            ipv6_subnet: Some("fd00:22::/64".into()),
            ipv6_gateway: Some("fd00:22::fe".into()),
            ..CniNetwork::default()
        };
        let request = network_request(&wanted);
        assert_eq!(request.enable_ipv6, Some(true));
        let config = request.ipam.unwrap().config;
        assert_eq!(config.len(), 2, "{config:?}");
        assert_eq!(config[1].subnet.as_deref(), Some("fd00:22::/64"));
        assert_eq!(config[1].gateway.as_deref(), Some("fd00:22::fe"));

        // A network made IPv4 only does not match an IPv6 range.
        let ipv4_only = NetworkRecord::for_tests("pods", "10.22.0.0/24");
        let refused = check_network_matches(&ipv4_only, &wanted)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("no IPv6"), "{refused}");
        // A dual-stack one matches when its IPv6 side is the configured one.
        let mut dual = ipv4_only.clone();
        dual.ipv6 = NetworkRecord::ipv6_only_for_tests("pods", "fd00:22::/64").ipv6;
        let refused = check_network_matches(&dual, &wanted)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("IPv6 gateway fd00:22::1 (configured: fd00:22::fe)"),
            "{refused}"
        );
        let without_gateway = CniNetwork {
            ipv6_gateway: None,
            ..wanted.clone()
        };
        assert!(check_network_matches(&dual, &without_gateway).is_ok());
        let other_subnet = CniNetwork {
            ipv6_subnet: Some("fd00:23::/64".into()),
            ..without_gateway
        };
        assert!(check_network_matches(&dual, &other_subnet).is_err());
        // An IPv6-only network matches an IPv6-only configuration, not an IPv4 subnet.
        let ipv6_only = NetworkRecord::ipv6_only_for_tests("pods", "fd00:22::/64");
        let only6 = CniNetwork {
            subnet: None,
            ipv6_gateway: None,
            enable_ipv4: Some(false),
            ..wanted.clone()
        };
        assert!(check_network_matches(&ipv6_only, &only6).is_ok());
        assert!(check_network_matches(&dual, &only6).is_err());
        let refused = check_network_matches(&ipv6_only, &wanted)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("no IPv4"), "{refused}");
        assert_eq!(network_request(&only6).enable_ipv4, Some(false));
        // The IPv4-only configuration takes whatever IPv6 side the network has.
        let ipv4_config = CniNetwork {
            ipv6_subnet: None,
            ipv6_gateway: None,
            ..wanted
        };
        assert!(check_network_matches(&dual, &ipv4_config).is_ok());
    }

    #[test]
    fn interface_names() {
        for good in ["eth0", "net1", "a"] {
            assert!(check_ifname(good).is_ok(), "{good}");
        }
        for bad in ["", "a/b", "averyveryverylongname", "a b", ".."] {
            assert!(check_ifname(bad).is_err(), "{bad}");
        }
    }
}
