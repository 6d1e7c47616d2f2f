//! The records the agent persists: networks, containers and their endpoints. Everything on
//! the node (bridges, veths, map entries) is derived from these and reconciled on start.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::{
    MacAddress,
    ports::{PortBinding, Proto},
};

/// Docker's option keys for bridge networks.
pub const OPT_BRIDGE_NAME: &str = "com.docker.network.bridge.name";
pub const OPT_ENABLE_ICC: &str = "com.docker.network.bridge.enable_icc";
pub const OPT_ENABLE_IP_MASQUERADE: &str = "com.docker.network.bridge.enable_ip_masquerade";
pub const OPT_HOST_BINDING_IPV4: &str = "com.docker.network.bridge.host_binding_ipv4";
pub const OPT_MTU: &str = "com.docker.network.driver.mtu";
pub const OPT_GATEWAY_MODE_IPV4: &str = "com.docker.network.bridge.gateway_mode_ipv4";
pub const OPT_GATEWAY_MODE_IPV6: &str = "com.docker.network.bridge.gateway_mode_ipv6";
pub const OPT_TRUSTED_HOST_INTERFACES: &str = "com.docker.network.bridge.trusted_host_interfaces";
pub const OPT_INHIBIT_IPV4: &str = "com.docker.network.bridge.inhibit_ipv4";
pub const OPT_CONTAINER_IFACE_PREFIX: &str = "com.docker.network.container_iface_prefix";
/// `--ipv6` as a driver option (what Docker's API accepts besides `EnableIPv6`).
pub const OPT_ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
/// `false` asks for an IPv6-only network (Docker 28).
pub const OPT_ENABLE_IPV4: &str = "com.docker.network.enable_ipv4";
pub const KNOWN_OPTIONS: &[&str] = &[
    OPT_BRIDGE_NAME,
    OPT_ENABLE_ICC,
    OPT_ENABLE_IP_MASQUERADE,
    OPT_HOST_BINDING_IPV4,
    OPT_MTU,
    OPT_GATEWAY_MODE_IPV4,
    OPT_GATEWAY_MODE_IPV6,
    OPT_TRUSTED_HOST_INTERFACES,
    OPT_INHIBIT_IPV4,
    OPT_CONTAINER_IFACE_PREFIX,
    OPT_ENABLE_IPV6,
    OPT_ENABLE_IPV4,
];
/// The endpoint option (`DriverOpts` of a connect or create request) naming the interface
/// inside the container.
pub const OPT_ENDPOINT_IFNAME: &str = "com.docker.network.endpoint.ifname";
/// Options of bpfbridge's own: none is known yet, so every key under this prefix is a typo
/// and refused. Docker ignores the options it does not know; so does the agent, with a
/// warning, for every other key.
pub const OWN_OPTION_PREFIX: &str = "bpfbridge.";

/// How a network's containers meet the outside (Docker 28's `gateway_mode_ipv4`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GatewayMode {
    /// Published ports through the node's addresses, outgoing traffic masqueraded, no
    /// direct access to the containers' own addresses from outside the bridge.
    #[default]
    Nat,
    /// As `Nat`, but every port of the containers may be reached at their own addresses.
    NatUnprotected,
    /// No masquerade; published container ports (and ICMP) reachable at the containers'
    /// own addresses.
    Routed,
    /// No gateway address on the bridge and no default route (internal networks only).
    Isolated,
}

impl GatewayMode {
    pub const ALL: [GatewayMode; 4] = [
        GatewayMode::Nat,
        GatewayMode::NatUnprotected,
        GatewayMode::Routed,
        GatewayMode::Isolated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GatewayMode::Nat => "nat",
            GatewayMode::NatUnprotected => "nat-unprotected",
            GatewayMode::Routed => "routed",
            GatewayMode::Isolated => "isolated",
        }
    }
}

impl std::str::FromStr for GatewayMode {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        GatewayMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                crate::Error::InvalidArgument(format!(
                    "unknown gateway mode {s:?}: expected nat, nat-unprotected, routed or isolated"
                ))
            })
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// A bridge network (the default `bridge` or a user-defined one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub name: String,
    pub id: String,
    pub created: String,
    /// The Linux bridge device.
    pub bridge: String,
    /// The IPv4 subnet; `None` on an IPv6-only network (Docker 28's `EnableIPv4: false`),
    /// which then has an [`Ipv6Side`]. Records written before IPv6-only networks always
    /// have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    /// The IPv4 gateway: set exactly when `subnet` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// Where dynamic addresses come from (default: the whole subnet).
    pub ip_range: Option<Ipv4Net>,
    pub internal: bool,
    pub enable_icc: bool,
    pub enable_ip_masquerade: bool,
    /// Default host address of ports published by containers on this network: an IPv4 or
    /// (as Docker allows despite the name) an IPv6 address.
    pub host_binding_ipv4: Option<IpAddr>,
    pub mtu: u32,
    /// The `-o` options as given, for `network inspect`.
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// Where the next sequential allocation starts, so a freed address is not handed out
    /// again at once.
    pub last_allocated: Option<Ipv4Addr>,
    /// Set while the network is being created: a record still pending on start is debris of
    /// a crash and is rolled back.
    #[serde(default)]
    pub pending: bool,
    #[serde(default)]
    pub managed_by: ManagedBy,
    #[serde(default, skip_serializing_if = "is_default")]
    pub gateway_mode_ipv4: GatewayMode,
    /// Stored and shown; IPv6 is not supported yet.
    #[serde(default, skip_serializing_if = "is_default")]
    pub gateway_mode_ipv6: GatewayMode,
    /// Interfaces from which the containers' published ports may be reached at their own
    /// addresses in `nat` mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_host_interfaces: Vec<String>,
    /// No gateway address on the bridge (someone else configures it).
    #[serde(default, skip_serializing_if = "is_default")]
    pub inhibit_ipv4: bool,
    /// The prefix of the containers' interface names on this network (default `eth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_iface_prefix: Option<String>,
    /// `bridge` (records written before there were other drivers), or macvlan/ipvlan with
    /// its parent: then `bridge` is empty and none of the bridge options apply.
    #[serde(default, skip_serializing_if = "is_default")]
    pub driver: super::NetworkDriver,
    /// `--aux-address NAME=IP`: addresses of the subnet the IPAM never hands out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aux_addresses: BTreeMap<String, Ipv4Addr>,
    /// The IPv6 side of a network made with `--ipv6` (`EnableIPv6`); records written before
    /// IPv6 have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Side>,
}

/// A network's IPv6 subnet and addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Side {
    pub subnet: Ipv6Net,
    /// On the bridge (without duplicate address detection), the containers' default route.
    pub gateway: Ipv6Addr,
    /// Where dynamic addresses come from (default: the whole subnet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<Ipv6Net>,
    /// Where the next sequential allocation starts, as for IPv4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_allocated: Option<Ipv6Addr>,
}

#[cfg(test)]
impl NetworkRecord {
    /// A made bridge network of bpfbridge's own on `subnet`, its gateway the subnet's first
    /// address, its bridge `br-NAME`, every option at Docker's default: what the unit tests
    /// start from, changing what they are about.
    pub(crate) fn for_tests(name: &str, subnet: &str) -> Self {
        let subnet: Ipv4Net = subnet.parse().expect("a test subnet");
        NetworkRecord {
            name: name.into(),
            id: format!("{name}-id"),
            created: String::new(),
            bridge: format!("br-{name}"),
            subnet: Some(subnet),
            gateway: subnet.hosts().next(),
            ip_range: None,
            internal: false,
            enable_icc: true,
            enable_ip_masquerade: true,
            host_binding_ipv4: None,
            mtu: 1500,
            options: BTreeMap::new(),
            labels: BTreeMap::new(),
            last_allocated: None,
            pending: false,
            managed_by: ManagedBy::Bpfbridge,
            gateway_mode_ipv4: GatewayMode::default(),
            gateway_mode_ipv6: GatewayMode::default(),
            trusted_host_interfaces: Vec::new(),
            inhibit_ipv4: false,
            container_iface_prefix: None,
            driver: super::NetworkDriver::Bridge,
            aux_addresses: BTreeMap::new(),
            ipv6: None,
        }
    }

    /// As [`Self::for_tests`], but IPv6-only (Docker 28's `--ipv4=false --ipv6`) on
    /// `subnet`, its gateway the subnet's `::1`.
    pub(crate) fn ipv6_only_for_tests(name: &str, subnet: &str) -> Self {
        let subnet: Ipv6Net = subnet.parse().expect("a test subnet");
        NetworkRecord {
            subnet: None,
            gateway: None,
            ipv6: Some(Ipv6Side {
                subnet,
                gateway: crate::ipam::default_gateway_v6(subnet),
                ip_range: None,
                last_allocated: None,
            }),
            ..Self::for_tests(name, "10.255.255.0/24")
        }
    }
}

/// Who drives a network or container: the bpfbridge API, Docker through the plugin, or a
/// container runtime through the CNI plugin. Docker and the runtimes keep their own view of
/// what they drive, so the bpfbridge API only reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ManagedBy {
    #[default]
    Bpfbridge,
    Docker,
    /// A CNI attachment (`bpfbridge-cni`): the runtime made the namespace and removes it.
    Cni,
}

impl NetworkRecord {
    /// The network's IPv4 subnet and gateway; `None` on an IPv6-only network.
    pub fn ipv4(&self) -> Option<(Ipv4Net, Ipv4Addr)> {
        Some((self.subnet?, self.gateway?))
    }

    /// The IPv4 gateway with the subnet's prefix length, as it goes on the bridge.
    pub fn gateway_net(&self) -> Option<Ipv4Net> {
        let (subnet, gateway) = self.ipv4()?;
        Some(Ipv4Net::new(gateway, subnet.prefix_len()).expect("prefix of a valid net"))
    }

    /// Whether the network has IPv4 (Docker 28's `EnableIPv4`).
    pub fn enable_ipv4(&self) -> bool {
        self.subnet.is_some()
    }

    /// The default `bridge` network: no name resolution, legacy links.
    pub fn is_default(&self) -> bool {
        self.name == crate::service::DEFAULT_NETWORK
    }

    /// Whether the network has a gateway for its containers' default route: every
    /// network but an `isolated` one (with `inhibit_ipv4` someone else puts the address
    /// on the bridge). An IPv6-only network goes by its `gateway_mode_ipv6`.
    pub fn has_gateway(&self) -> bool {
        match self.subnet {
            Some(_) => self.gateway_mode_ipv4 != GatewayMode::Isolated,
            None => self.gateway_mode_ipv6 != GatewayMode::Isolated,
        }
    }

    /// The IPv4 gateway of the containers' default route, if the network has one.
    pub fn gateway_ipv4(&self) -> Option<Ipv4Addr> {
        self.gateway.filter(|_| self.has_gateway())
    }

    /// Whether the agent puts the IPv4 gateway address on the bridge.
    pub fn bridge_has_address(&self) -> bool {
        self.enable_ipv4() && self.has_gateway() && !self.inhibit_ipv4
    }

    /// The IPv6 gateway address the agent puts on the bridge, with the subnet's prefix:
    /// none without IPv6 or in `gateway_mode_ipv6=isolated`, which, like IPv4's, leaves
    /// the bridge without that family's address.
    pub fn bridge_ipv6_address(&self) -> Option<Ipv6Net> {
        let side = self.ipv6.as_ref()?;
        if self.gateway_mode_ipv6 == GatewayMode::Isolated {
            return None;
        }
        Some(Ipv6Net::new(side.gateway, side.subnet.prefix_len()).expect("prefix of a valid net"))
    }

    /// Whether the network's outgoing IPv6 traffic leaves with the node's IPv6 address:
    /// Docker 27's ip6tables MASQUERADE, unless masquerade is off or the IPv6 gateway mode
    /// is not a NAT one.
    pub fn masquerades_ipv6(&self) -> bool {
        self.ipv6.is_some()
            && self.enable_ip_masquerade
            && !self.internal
            && matches!(
                self.gateway_mode_ipv6,
                GatewayMode::Nat | GatewayMode::NatUnprotected
            )
    }

    /// Whether the network's outgoing IPv4 traffic leaves with the node's address.
    pub fn masquerades(&self) -> bool {
        self.enable_ipv4()
            && self.enable_ip_masquerade
            && !self.internal
            && matches!(
                self.gateway_mode_ipv4,
                GatewayMode::Nat | GatewayMode::NatUnprotected
            )
    }
}

/// How a container is networked (`--network-mode`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Attached to bridge networks (the default).
    Bridge,
    /// The node's own namespace: no veth, no address of its own.
    Host,
    /// A namespace with loopback only.
    None,
    /// Shares the namespace of the container with this id.
    Container(String),
}

/// A container's attachment to one network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub network_id: String,
    pub endpoint_id: String,
    /// The IPv4 address; `None` on an IPv6-only network.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    pub mac: MacAddress,
    /// The interface inside the container (eth0, eth1, ...).
    pub ifname: String,
    /// The node-side end of the veth pair.
    pub host_veth: String,
    pub host_veth_ifindex: u32,
    /// `None` until the veth is made.
    #[serde(with = "super::mac_or_empty")]
    pub host_veth_mac: Option<MacAddress>,
    pub aliases: Vec<String>,
    /// The address asked for with `--ip`, if any.
    pub requested_ip: Option<Ipv4Addr>,
    /// The IPv6 address, on a network with IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// The IPv6 address asked for with `--ip6`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_ipv6: Option<Ipv6Addr>,
    /// Set while the endpoint is being made; see [`NetworkRecord::pending`].
    #[serde(default)]
    pub pending: bool,
    /// `--gw-priority`: the endpoint with the highest holds the default route and the
    /// published ports ([`crate::service::plan`]'s `port_endpoint`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub gw_priority: i64,
    /// A macvlan or ipvlan interface of the network's parent, made inside the container's
    /// namespace: no veth, nothing on the node's side (`host_veth` stays empty).
    #[serde(default, skip_serializing_if = "is_default")]
    pub sub_interface: bool,
}

/// A port a container exposes (`--expose`, and every published container port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExposedPort {
    pub port: u16,
    pub proto: Proto,
}

/// `--link OTHER:ALIAS`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    /// The linked container's id.
    pub container_id: String,
    pub alias: String,
}

/// A container known to the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    pub created: String,
    pub mode: NetworkMode,
    /// The network namespace (bind-mounted nsfs file); for host mode, the agent's own.
    pub netns: PathBuf,
    /// Whether the agent created the namespace (and so deletes it on removal).
    pub netns_owned: bool,
    /// Attachments in order. The one with the highest `--gw-priority` on a network with a
    /// way out holds the default route and the published ports
    /// (`service::plan::port_endpoint`).
    pub endpoints: Vec<EndpointRecord>,
    pub ports: Vec<PortBinding>,
    pub exposed: Vec<ExposedPort>,
    pub links: Vec<LinkRecord>,
    /// Set while the container is being created; see [`NetworkRecord::pending`].
    #[serde(default)]
    pub pending: bool,
    #[serde(default)]
    pub managed_by: ManagedBy,
}

impl ContainerRecord {
    pub fn endpoint(&self, network_id: &str) -> Option<&EndpointRecord> {
        self.endpoints.iter().find(|e| e.network_id == network_id)
    }

    /// Exposed ports including the container side of every published port, sorted.
    pub fn all_exposed(&self) -> Vec<ExposedPort> {
        let mut all = self.exposed.clone();
        all.extend(self.ports.iter().map(|p| ExposedPort {
            port: p.container_port,
            proto: p.proto,
        }));
        all.sort();
        all.dedup();
        all
    }
}

/// An endpoint Docker created through the plugin (`NetworkDriver.CreateEndpoint`): the address
/// Docker's IPAM gave it and the ports to publish once it is the sandbox's way out. It becomes an
/// [`EndpointRecord`] of the sandbox's container on `Join`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerEndpointRecord {
    pub endpoint_id: String,
    pub network_id: String,
    /// None on an IPv6-only network (records from before those load as they are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// The IPv6 address Docker's IPAM gave it, on an `--ipv6` network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    pub mac: MacAddress,
    pub port_map: Vec<super::docker::DockerPortBinding>,
    pub exposed: Vec<ExposedPort>,
}

/// An address pool the plugin's IPAM driver handed to Docker, and the addresses it gave out.
/// An IPv4 or an IPv6 pool (`RequestPool` with `V6`); its addresses are of its family. The
/// addresses are written as text either way, so records from before IPv6 pools load as they
/// are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamPoolRecord {
    pub pool_id: String,
    pub pool: ipnet::IpNet,
    /// `--ip-range`: where dynamic addresses come from (default: the whole pool).
    pub sub_pool: Option<ipnet::IpNet>,
    pub allocated: std::collections::BTreeSet<IpAddr>,
    pub last_allocated: Option<IpAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_only_network_has_no_ipv4_side() {
        let network = NetworkRecord::ipv6_only_for_tests("v6", "fd00:6::/64");
        assert!(!network.enable_ipv4());
        assert_eq!(network.ipv4(), None);
        assert_eq!(network.gateway_net(), None);
        assert_eq!(network.gateway_ipv4(), None);
        assert!(network.has_gateway(), "its IPv6 gateway");
        assert!(
            !network.bridge_has_address(),
            "no IPv4 address on the bridge"
        );
        assert!(!network.masquerades() && network.masquerades_ipv6());
        let isolated = NetworkRecord {
            gateway_mode_ipv6: GatewayMode::Isolated,
            internal: true,
            ..network.clone()
        };
        assert!(!isolated.has_gateway(), "its IPv6 gateway mode decides");
        assert_eq!(isolated.bridge_ipv6_address(), None);
        assert_eq!(
            network.bridge_ipv6_address(),
            Some("fd00:6::1/64".parse().unwrap()),
            "the IPv6 gateway with the subnet's prefix"
        );

        let dual = NetworkRecord::for_tests("n", "10.1.0.0/24");
        assert_eq!(
            dual.gateway_net(),
            Some("10.1.0.1/24".parse().unwrap()),
            "the gateway with the subnet's prefix"
        );
    }

    #[test]
    fn network_records_load_with_and_without_ipv4() {
        // What agents before IPv6-only networks wrote: the IPv4 side is always there.
        let dual = NetworkRecord::for_tests("n", "10.1.0.0/24");
        let json = serde_json::to_value(&dual).unwrap();
        assert_eq!(json["subnet"], "10.1.0.0/24");
        assert_eq!(json["gateway"], "10.1.0.1");
        assert_eq!(serde_json::from_value::<NetworkRecord>(json).unwrap(), dual);

        let only6 = NetworkRecord::ipv6_only_for_tests("v6", "fd00:6::/64");
        let json = serde_json::to_value(&only6).unwrap();
        assert!(json.get("subnet").is_none() && json.get("gateway").is_none());
        assert_eq!(
            serde_json::from_value::<NetworkRecord>(json).unwrap(),
            only6
        );
    }

    #[test]
    fn endpoint_records_load_with_and_without_ipv4() {
        let old = r#"{"network_id":"n","endpoint_id":"e","ip":"172.17.0.2","mac":"02:42:ac:11:00:02","ifname":"eth0","host_veth":"veth1","host_veth_ifindex":7,"host_veth_mac":"aa:bb:cc:dd:ee:0f","aliases":[],"requested_ip":null,"pending":false}"#;
        let record: EndpointRecord = serde_json::from_str(old).unwrap();
        assert_eq!(record.ip, Some(Ipv4Addr::new(172, 17, 0, 2)));
        let only6 = r#"{"network_id":"n","endpoint_id":"e","ip":null,"mac":"06:42:ac:11:00:02","ifname":"eth0","host_veth":"veth1","host_veth_ifindex":7,"host_veth_mac":"aa:bb:cc:dd:ee:0f","aliases":[],"requested_ip":null,"ipv6":"fd00:6::2","pending":false}"#;
        let record: EndpointRecord = serde_json::from_str(only6).unwrap();
        assert_eq!(record.ip, None);
        assert_eq!(
            serde_json::to_string(&record).unwrap(),
            only6,
            "written back the same"
        );
        let without_key = only6.replace(r#""ip":null,"#, "");
        let record: EndpointRecord = serde_json::from_str(&without_key).unwrap();
        assert_eq!(record.ip, None);
    }
}
