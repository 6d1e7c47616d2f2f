//! Docker's remote network driver and IPAM driver protocol (libnetwork's `remote` and
//! `ipams/remote` APIs, 20.10): JSON bodies POSTed to `/NetworkDriver.*` and `/IpamDriver.*`.
//! Go's encoder writes `null` for an empty map or list, so such fields accept it.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{Deserialize, Deserializer, Serialize};

use super::ports::Proto;
use crate::{Error, Result};

/// Option keys libnetwork passes to drivers.
pub const OPT_GENERIC: &str = "com.docker.network.generic";
pub const OPT_INTERNAL: &str = "com.docker.network.internal";
pub const OPT_ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
pub const OPT_PORT_MAP: &str = "com.docker.network.portmap";
pub const OPT_EXPOSED_PORTS: &str = "com.docker.network.endpoint.exposedports";
/// `IpamDriver.RequestAddress` option that marks the network's gateway address.
pub const OPT_REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
pub const ADDRESS_TYPE_GATEWAY: &str = "com.docker.network.gateway";

/// `null` as the type's default.
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

pub type Options = BTreeMap<String, serde_json::Value>;

/// The reply to every call that has nothing to say; an error is `{"Err": "..."}`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorReply {
    #[serde(rename = "Err")]
    pub err: String,
}

#[derive(Debug, Serialize)]
pub struct ActivateReply {
    #[serde(rename = "Implements")]
    pub implements: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkCapabilities {
    pub scope: &'static str,
    pub connectivity_scope: &'static str,
}

#[derive(Debug, Default, Deserialize)]
pub struct IpamData {
    #[serde(rename = "AddressSpace", default)]
    pub address_space: String,
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "Gateway", default)]
    pub gateway: String,
    #[serde(rename = "AuxAddresses", default, deserialize_with = "nullable")]
    pub aux_addresses: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
pub struct CreateNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: Options,
    #[serde(rename = "IPv4Data", default, deserialize_with = "nullable")]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", default, deserialize_with = "nullable")]
    pub ipv6_data: Vec<IpamData>,
}

#[derive(Debug, Deserialize)]
pub struct NetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct EndpointInterface {
    #[serde(rename = "Address", default)]
    pub address: String,
    #[serde(rename = "AddressIPv6", default)]
    pub address_ipv6: String,
    #[serde(rename = "MacAddress", default)]
    pub mac_address: String,
}

#[derive(Debug, Deserialize)]
pub struct CreateEndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Interface", default, deserialize_with = "nullable")]
    pub interface: EndpointInterface,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: Options,
}

/// Only what Docker left empty may be filled in (libnetwork refuses a change of what it
/// gave): the MAC address, and the IPv6 address on a network whose IPv6 side bpfbridge
/// chose.
#[derive(Debug, Default, Serialize)]
pub struct CreateEndpointReply {
    #[serde(rename = "Interface", skip_serializing_if = "Option::is_none")]
    pub interface: Option<InterfaceReply>,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct InterfaceReply {
    #[serde(rename = "MacAddress", skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// CIDR form, as Docker parses it.
    #[serde(rename = "AddressIPv6", skip_serializing_if = "Option::is_none")]
    pub address_ipv6: Option<String>,
}

/// Leave, DeleteEndpoint, EndpointOperInfo and RevokeExternalConnectivity.
#[derive(Debug, Deserialize)]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

#[derive(Debug, Serialize)]
pub struct EndpointInfoReply {
    #[serde(rename = "Value")]
    pub value: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct JoinRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "SandboxKey")]
    pub sandbox_key: String,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: Options,
}

#[derive(Debug, Serialize)]
pub struct InterfaceName {
    /// The link, in the namespace dockerd runs in, that Docker moves into the sandbox.
    #[serde(rename = "SrcName")]
    pub src_name: String,
    /// Docker names it this prefix plus a number (eth0, eth1, ...).
    #[serde(rename = "DstPrefix")]
    pub dst_prefix: String,
}

#[derive(Debug, Serialize)]
pub struct JoinReply {
    #[serde(rename = "InterfaceName")]
    pub interface_name: InterfaceName,
    /// Absent on an internal network: no way out, no default route.
    #[serde(rename = "Gateway", skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// The IPv6 default route's gateway, on a network with IPv6 and a way out.
    #[serde(rename = "GatewayIPv6", skip_serializing_if = "Option::is_none")]
    pub gateway_ipv6: Option<std::net::Ipv6Addr>,
    #[serde(rename = "DisableGatewayService")]
    pub disable_gateway_service: bool,
}

#[derive(Debug, Deserialize)]
pub struct ExternalConnectivityRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: Options,
}

/// One entry of `com.docker.network.portmap` (libnetwork's `types.PortBinding`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerPortBinding {
    #[serde(rename = "Proto")]
    pub proto: u8,
    #[serde(rename = "IP", default)]
    pub ip: String,
    #[serde(rename = "Port")]
    pub port: u16,
    /// Empty means every address of the node.
    #[serde(rename = "HostIP", default)]
    pub host_ip: String,
    /// 0 means a dynamic port.
    #[serde(rename = "HostPort", default)]
    pub host_port: u16,
    /// Above `host_port`: any free port of the range.
    #[serde(rename = "HostPortEnd", default)]
    pub host_port_end: u16,
}

/// One entry of `com.docker.network.endpoint.exposedports` (`types.TransportPort`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerTransportPort {
    #[serde(rename = "Proto")]
    pub proto: u8,
    #[serde(rename = "Port")]
    pub port: u16,
}

/// Docker's IP protocol numbers.
pub fn proto_from_number(number: u8) -> Result<Proto> {
    match number {
        6 => Ok(Proto::Tcp),
        17 => Ok(Proto::Udp),
        other => Err(Error::InvalidArgument(format!(
            "IP protocol {other} is not supported for ports (only tcp and udp)"
        ))),
    }
}

/// The port map and exposed ports out of an endpoint's options (absent means none).
pub fn endpoint_ports(
    options: &Options,
) -> Result<(Vec<DockerPortBinding>, Vec<DockerTransportPort>)> {
    fn field<T: serde::de::DeserializeOwned + Default>(options: &Options, key: &str) -> Result<T> {
        match options.get(key) {
            None | Some(serde_json::Value::Null) => Ok(T::default()),
            Some(value) => serde_json::from_value(value.clone())
                .map_err(|e| Error::InvalidArgument(format!("option {key}: {e}"))),
        }
    }
    Ok((
        field(options, OPT_PORT_MAP)?,
        field(options, OPT_EXPOSED_PORTS)?,
    ))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamCapabilities {
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    pub requires_request_replay: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddressSpaces {
    pub local_default_address_space: &'static str,
    pub global_default_address_space: &'static str,
}

#[derive(Debug, Deserialize)]
pub struct RequestPoolRequest {
    #[serde(rename = "AddressSpace", default)]
    pub address_space: String,
    #[serde(rename = "Pool", default)]
    pub pool: String,
    #[serde(rename = "SubPool", default)]
    pub sub_pool: String,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: BTreeMap<String, String>,
    /// For the IPv6 pool of an `--ipv6` network: libnetwork (20.10) asks for it after the
    /// IPv4 pool, only on such networks, then for its gateway with `RequestAddress` and
    /// [`OPT_REQUEST_ADDRESS_TYPE`] as for IPv4, and for each endpoint's address.
    #[serde(rename = "V6", default)]
    pub v6: bool,
}

#[derive(Debug, Serialize)]
pub struct RequestPoolReply {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
pub struct ReleasePoolRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

#[derive(Debug, Deserialize)]
pub struct RequestAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Address", default)]
    pub address: String,
    #[serde(rename = "Options", default, deserialize_with = "nullable")]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct RequestAddressReply {
    /// CIDR form: the address with the pool's prefix length.
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
pub struct ReleaseAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Address")]
    pub address: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_nulls_and_missing_fields_decode_as_empty() {
        let request: CreateNetworkRequest = serde_json::from_str(
            r#"{"NetworkID":"n","Options":null,"IPv4Data":[{"AddressSpace":"","Pool":"10.40.0.0/24","Gateway":"10.40.0.1/24","AuxAddresses":null}],"IPv6Data":null}"#,
        )
        .unwrap();
        assert_eq!(request.ipv4_data[0].pool, "10.40.0.0/24");
        assert!(request.options.is_empty() && request.ipv6_data.is_empty());
        let request: JoinRequest =
            serde_json::from_str(r#"{"NetworkID":"n","EndpointID":"e","SandboxKey":"/k"}"#)
                .unwrap();
        assert!(request.options.is_empty());
    }

    #[test]
    fn create_endpoint_answers_only_what_docker_left_empty() {
        let answer = |interface| serde_json::to_value(CreateEndpointReply { interface }).unwrap();
        assert_eq!(answer(None), serde_json::json!({}));
        // libnetwork parses the address as CIDR and refuses a field it had filled.
        let ipv6_only = InterfaceReply {
            address_ipv6: Some("fd00:42::2/64".into()),
            ..InterfaceReply::default()
        };
        assert_eq!(
            answer(Some(ipv6_only)),
            serde_json::json!({"Interface": {"AddressIPv6": "fd00:42::2/64"}})
        );
    }

    #[test]
    fn port_options_as_dockerd_sends_them() {
        // From a capture of dockerd 20.10 (shared/reference/docker-20.10/remote-driver).
        let options: Options = serde_json::from_str(
            r#"{"com.docker.network.endpoint.exposedports":[{"Proto":6,"Port":9999},{"Proto":6,"Port":80}],
                "com.docker.network.portmap":[{"Proto":6,"IP":"","Port":9999,"HostIP":"","HostPort":0,"HostPortEnd":0},
                                              {"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8181,"HostPortEnd":8181}]}"#,
        )
        .unwrap();
        let (map, exposed) = endpoint_ports(&options).unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(
            (map[1].port, map[1].host_port, map[1].host_port_end),
            (80, 8181, 8181)
        );
        assert_eq!(
            exposed[0],
            DockerTransportPort {
                proto: 6,
                port: 9999
            }
        );
        let bad: Options =
            serde_json::from_str(r#"{"com.docker.network.portmap":"nonsense"}"#).unwrap();
        assert!(endpoint_ports(&bad).is_err());
        assert!(proto_from_number(132).is_err());
    }
}
