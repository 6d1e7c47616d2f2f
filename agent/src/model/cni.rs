//! The API's bodies for CNI attachments: a namespace the container runtime made, attached
//! to a network as `(container ID, interface name)`, the key of a CNI attachment.

use std::net::Ipv4Addr;

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

/// A CNI `portMappings` entry: `hostIP` empty or absent for every node address.
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
    pub host_ip: Option<Ipv4Addr>,
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
    #[serde(rename = "IP")]
    pub ip: Ipv4Addr,
    #[serde(rename = "PrefixLen")]
    pub prefix_len: u8,
    /// Absent on a network without a way out.
    #[serde(rename = "Gateway", default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(rename = "MAC")]
    pub mac: MacAddress,
    #[serde(rename = "Mtu")]
    pub mtu: u32,
    #[serde(rename = "HostVeth")]
    pub host_veth: String,
    #[serde(rename = "PortMappings")]
    pub port_mappings: Vec<CniPortMapping>,
    /// Filled by `GET /cni/attachments/{id}/{ifname}` only: what is not as the records say
    /// (a veth or address gone, the namespace gone); empty when all is well.
    #[serde(rename = "Problems", default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}
