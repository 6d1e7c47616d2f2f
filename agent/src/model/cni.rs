//! The API's bodies for CNI attachments: a namespace the container runtime made, attached
//! to a network as `(container ID, interface name)`, the key of a CNI attachment.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::{MacAddress, Proto};

/// The prefix of the container record behind a CNI attachment: `cni-CONTAINERID`.
pub const CNI_CONTAINER_PREFIX: &str = "cni-";

/// The network an attachment joins, as the CNI network configuration describes it. The
/// agent makes it on the first attachment; later ones must agree with what it made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniNetwork {
    #[serde(rename = "Name")]
    pub name: String,
    /// The subnet (on Kubernetes, the node's pod CIDR); the agent's pools pick one when
    /// absent.
    #[serde(rename = "Subnet", default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(rename = "Gateway", default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The IPv6 subnet of a dual-stack network (host-local's IPv6 range set): the network is
    /// made with `--ipv6` on it. Absent: IPv4 only, unless the network exists with IPv6.
    #[serde(
        rename = "IPv6Subnet",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_subnet: Option<String>,
    /// The IPv6 gateway (default: the IPv6 subnet's `::1`).
    #[serde(
        rename = "IPv6Gateway",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_gateway: Option<String>,
    /// `false` for an IPv6-only network (host-local's IPv6 range set without an IPv4
    /// one); absent: IPv4, unless the network exists IPv6-only.
    #[serde(
        rename = "EnableIPv4",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub enable_ipv4: Option<bool>,
    #[serde(rename = "Mtu", default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Whether containers of the network reach each other (default: yes).
    #[serde(rename = "Icc", default, skip_serializing_if = "Option::is_none")]
    pub icc: Option<bool>,
    /// Whether outgoing traffic leaves with the node's address (default: yes).
    #[serde(rename = "IpMasq", default, skip_serializing_if = "Option::is_none")]
    pub ip_masq: Option<bool>,
    /// The Linux bridge's name.
    #[serde(rename = "Bridge", default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// `nat`, `nat-unprotected`, `routed` or `isolated`, as `gateway_mode_ipv4`: pods that
    /// other nodes reach at their own addresses need `nat-unprotected` or `routed`.
    #[serde(
        rename = "GatewayMode",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway_mode: Option<String>,
}

/// A CNI `portMappings` entry, with the reference portmap plugin's families: `HostIP` absent
/// publishes on every node address of each family the container has, `0.0.0.0` on every
/// IPv4 one, `::` on every IPv6 one, any other address on that address only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniPortMapping {
    #[serde(rename = "HostPort")]
    pub host_port: u16,
    #[serde(rename = "ContainerPort")]
    pub container_port: u16,
    #[serde(rename = "Protocol")]
    pub protocol: Proto,
    #[serde(rename = "HostIP", default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
}

/// `POST /cni/attachments`: attach the namespace at `netns` as `(container_id, ifname)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniAttachRequest {
    #[serde(rename = "ContainerID")]
    pub container_id: String,
    #[serde(rename = "IfName")]
    pub ifname: String,
    #[serde(rename = "NetNs")]
    pub netns: String,
    #[serde(rename = "Network")]
    pub network: CniNetwork,
    #[serde(rename = "PortMappings", default)]
    pub port_mappings: Vec<CniPortMapping>,
    /// The address asked for (the `ips` capability).
    #[serde(rename = "IP", default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// The IPv6 address asked for (the `ips` capability), on a network with IPv6.
    #[serde(rename = "IPv6", default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// The container interface's MAC asked for (the `mac` capability).
    #[serde(rename = "MAC", default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddress>,
}

/// A CNI attachment as the agent holds it: what an ADD's result and a CHECK need.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniAttachment {
    #[serde(rename = "ContainerID")]
    pub container_id: String,
    #[serde(rename = "IfName")]
    pub ifname: String,
    #[serde(rename = "NetNs")]
    pub netns: String,
    #[serde(rename = "Network")]
    pub network: String,
    #[serde(rename = "Bridge")]
    pub bridge: String,
    /// The IPv4 address; absent on an IPv6-only network.
    #[serde(rename = "IP", default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// The IPv4 subnet's prefix length, with `IP`.
    #[serde(rename = "PrefixLen", default, skip_serializing_if = "Option::is_none")]
    pub prefix_len: Option<u8>,
    /// Absent on a network without a way out.
    #[serde(rename = "Gateway", default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// The IPv6 address with the subnet's prefix length, on a network with IPv6.
    #[serde(
        rename = "IPv6Address",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_address: Option<Ipv6Net>,
    /// The IPv6 gateway of the container's IPv6 default route, when it has one.
    #[serde(
        rename = "IPv6Gateway",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_gateway: Option<Ipv6Addr>,
    #[serde(rename = "MAC")]
    pub mac: MacAddress,
    #[serde(rename = "Mtu")]
    pub mtu: u32,
    #[serde(rename = "HostVeth")]
    pub host_veth: String,
    /// The published bindings, one per host address: a mapping without `HostIP` on a
    /// dual-stack attachment shows as two, `0.0.0.0` and `::`.
    #[serde(rename = "PortMappings")]
    pub port_mappings: Vec<CniPortMapping>,
    /// Filled by `GET /cni/attachments/{id}/{ifname}` only: what is not as the records say
    /// (a veth or address gone, the namespace gone); empty when all is well.
    #[serde(rename = "Problems", default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl CniAttachment {
    /// The container's addresses with their prefixes: IPv4 first, then IPv6.
    pub fn addresses(&self) -> Vec<IpNet> {
        let ipv4 = self
            .ip
            .zip(self.prefix_len)
            .and_then(|(ip, len)| ipnet::Ipv4Net::new(ip, len).ok())
            .map(IpNet::V4);
        ipv4.into_iter()
            .chain(self.ipv6_address.map(IpNet::V6))
            .collect()
    }
}
