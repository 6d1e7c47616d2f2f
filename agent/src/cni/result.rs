//! The ADD result (SPEC.md, "ADD Success") in the shape of each supported version: 0.4.0's
//! addresses carry `"version": "4"`, 1.0.0 dropped it, 1.1.0 added interfaces' `mtu`.

use serde::{Deserialize, Serialize};

use super::version_at_least;
use crate::model::CniAttachment;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// 0.4.0 only: "4" or "6".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The index into `interfaces` of the interface the address is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    fn is_empty(&self) -> bool {
        *self == Dns::default()
    }
}

/// An ADD result (or a `prevResult`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

impl CniResult {
    /// What an attachment adds: the node-side veth, the container interface (its index is
    /// the addresses' `interface`), the address of each family with its gateway, a default
    /// route per family with a gateway (`0.0.0.0/0`, `::/0`: the reference bridge plugin's
    /// `isDefaultGateway`), and the configuration's DNS.
    pub fn of_attachment(attachment: &CniAttachment, dns: &super::Dns) -> Self {
        let families: Vec<(String, Option<String>, &str)> = attachment
            .addresses()
            .into_iter()
            .map(|address| match address {
                ipnet::IpNet::V4(_) => (
                    address.to_string(),
                    attachment.gateway.map(|g| g.to_string()),
                    "0.0.0.0/0",
                ),
                ipnet::IpNet::V6(_) => (
                    address.to_string(),
                    attachment.ipv6_gateway.map(|g| g.to_string()),
                    "::/0",
                ),
            })
            .collect();
        CniResult {
            cni_version: String::new(),
            interfaces: vec![
                Interface {
                    name: attachment.host_veth.clone(),
                    mtu: Some(attachment.mtu),
                    ..Interface::default()
                },
                Interface {
                    name: attachment.ifname.clone(),
                    mac: Some(attachment.mac.to_string()),
                    mtu: Some(attachment.mtu),
                    sandbox: Some(attachment.netns.clone()),
                },
            ],
            ips: families
                .iter()
                .map(|(address, gateway, _)| IpConfig {
                    version: None,
                    address: address.clone(),
                    gateway: gateway.clone(),
                    interface: Some(1),
                })
                .collect(),
            routes: families
                .iter()
                .filter_map(|(_, gateway, default)| {
                    gateway.clone().map(|gw| Route {
                        dst: default.to_string(),
                        gw: Some(gw),
                    })
                })
                .collect(),
            dns: dns.clone(),
        }
    }

    /// `self` added to a previous plugin's result: its interfaces first, ours after them
    /// (our addresses' indices moved along), DNS ours only where it has none.
    pub fn after(mut self, previous: CniResult) -> Self {
        let offset = previous.interfaces.len();
        for ip in &mut self.ips {
            ip.interface = ip.interface.map(|i| i + offset);
        }
        let mut merged = previous;
        merged.interfaces.append(&mut self.interfaces);
        merged.ips.append(&mut self.ips);
        merged.routes.append(&mut self.routes);
        if merged.dns.is_empty() {
            merged.dns = self.dns;
        }
        merged
    }

    /// The result in `version`'s shape.
    pub fn in_version(mut self, version: &str) -> Self {
        self.cni_version = version.to_string();
        let before_1_0 = !version_at_least(version, "1.0.0");
        for ip in &mut self.ips {
            ip.version =
                before_1_0.then(|| if ip.address.contains(':') { "6" } else { "4" }.to_string());
        }
        if !version_at_least(version, "1.1.0") {
            for interface in &mut self.interfaces {
                interface.mtu = None;
            }
        }
        self
    }

    /// The addresses (`ADDRESS/PREFIX`) the result gives interface `ifname` in `sandbox`,
    /// in the result's order.
    pub fn addresses_of(&self, ifname: &str, sandbox: &str) -> Vec<&str> {
        let Some(index) = self
            .interfaces
            .iter()
            .position(|i| i.name == ifname && i.sandbox.as_deref() == Some(sandbox))
        else {
            return Vec::new();
        };
        self.ips
            .iter()
            .filter(|ip| ip.interface == Some(index))
            .map(|ip| ip.address.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MacAddress, Proto};

    fn attachment() -> CniAttachment {
        CniAttachment {
            container_id: "abc".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            network: "pods".into(),
            bridge: "cni0".into(),
            ip: Some("10.22.0.2".parse().unwrap()),
            prefix_len: Some(24),
            gateway: Some("10.22.0.1".parse().unwrap()),
            ipv6_address: None,
            ipv6_gateway: None,
            mac: MacAddress([2, 0x42, 10, 22, 0, 2]),
            mtu: 1500,
            host_veth: "veth1234567".into(),
            port_mappings: vec![crate::model::CniPortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: Proto::Tcp,
                host_ip: None,
            }],
            problems: Vec::new(),
        }
    }

    #[test]
    fn results_take_the_requested_versions_shape() {
        let dns = Dns {
            nameservers: vec!["10.96.0.10".into()],
            ..Dns::default()
        };
        let result = CniResult::of_attachment(&attachment(), &dns);
        let v1_1 = serde_json::to_value(result.clone().in_version("1.1.0")).unwrap();
        assert_eq!(
            v1_1,
            serde_json::json!({
                "cniVersion": "1.1.0",
                "interfaces": [
                    {"name": "veth1234567", "mtu": 1500},
                    {"name": "eth0", "mac": "02:42:0a:16:00:02", "mtu": 1500, "sandbox": "/run/netns/x"}
                ],
                "ips": [{"address": "10.22.0.2/24", "gateway": "10.22.0.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.22.0.1"}],
                "dns": {"nameservers": ["10.96.0.10"]}
            })
        );
        let v1_0 = serde_json::to_value(result.clone().in_version("1.0.0")).unwrap();
        assert!(v1_0["interfaces"][1].get("mtu").is_none(), "{v1_0}");
        assert!(v1_0["ips"][0].get("version").is_none(), "{v1_0}");
        let v0_4 = serde_json::to_value(result.in_version("0.4.0")).unwrap();
        assert_eq!(v0_4["cniVersion"], "0.4.0");
        assert_eq!(v0_4["ips"][0]["version"], "4");
    }

    #[test]
    fn a_previous_result_is_kept_and_extended() {
        let previous: CniResult = serde_json::from_str(
            r#"{"cniVersion": "0.4.0",
                "interfaces": [{"name": "lo0", "sandbox": "/run/netns/x"}],
                "ips": [{"version": "4", "address": "192.0.2.5/32", "interface": 0}],
                "dns": {"nameservers": ["192.0.2.53"]}}"#,
        )
        .unwrap();
        let ours = CniResult::of_attachment(&attachment(), &Dns::default());
        let merged = ours.after(previous).in_version("1.1.0");
        assert_eq!(merged.interfaces.len(), 3);
        assert_eq!(merged.ips[0].address, "192.0.2.5/32");
        assert_eq!(merged.ips[0].version, None, "in 1.1.0's shape");
        assert_eq!(merged.ips[1].interface, Some(2));
        assert_eq!(merged.dns.nameservers, ["192.0.2.53"]);
        assert_eq!(
            merged.addresses_of("eth0", "/run/netns/x"),
            ["10.22.0.2/24"]
        );
        assert!(merged.addresses_of("eth0", "/run/netns/other").is_empty());
    }

    #[test]
    fn a_dual_stack_attachment_gives_both_families() {
        let dual = CniAttachment {
            ipv6_address: Some("fd00:22::2/64".parse().unwrap()),
            ipv6_gateway: Some("fd00:22::1".parse().unwrap()),
            ..attachment()
        };
        let result = CniResult::of_attachment(&dual, &Dns::default());
        let v1_0 = serde_json::to_value(result.clone().in_version("1.0.0")).unwrap();
        assert_eq!(
            v1_0["ips"],
            serde_json::json!([
                {"address": "10.22.0.2/24", "gateway": "10.22.0.1", "interface": 1},
                {"address": "fd00:22::2/64", "gateway": "fd00:22::1", "interface": 1}
            ])
        );
        assert_eq!(
            v1_0["routes"],
            serde_json::json!([
                {"dst": "0.0.0.0/0", "gw": "10.22.0.1"},
                {"dst": "::/0", "gw": "fd00:22::1"}
            ])
        );
        let v0_4 = serde_json::to_value(result.clone().in_version("0.4.0")).unwrap();
        assert_eq!(v0_4["ips"][1]["version"], "6");
        assert_eq!(
            result.addresses_of("eth0", "/run/netns/x"),
            ["10.22.0.2/24", "fd00:22::2/64"]
        );
        // Without a way out (an isolated network): the addresses, no route.
        let isolated = CniAttachment {
            gateway: None,
            ipv6_gateway: None,
            ..dual.clone()
        };
        let result = CniResult::of_attachment(&isolated, &Dns::default());
        assert_eq!(result.ips.len(), 2);
        assert!(result.routes.is_empty(), "{result:?}");
        // IPv6-only: the IPv6 address and route alone.
        let ipv6_only = CniAttachment {
            ip: None,
            prefix_len: None,
            gateway: None,
            ..dual
        };
        let result = CniResult::of_attachment(&ipv6_only, &Dns::default());
        assert_eq!(
            serde_json::to_value(&result.routes).unwrap(),
            serde_json::json!([{"dst": "::/0", "gw": "fd00:22::1"}])
        );
        assert_eq!(
            result.addresses_of("eth0", "/run/netns/x"),
            ["fd00:22::2/64"]
        );
    }
}
