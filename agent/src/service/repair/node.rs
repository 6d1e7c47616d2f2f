//! Repair of the node's side of the networks: the sysctls the agent set in the node's
//! namespace, and each network's bridge (deleted, set down, its gateway address removed).
//! The bridge's veths, released when it is deleted, are put back on it by the endpoints'
//! repair that follows in the same pass.

use std::collections::BTreeMap;

use ipnet::{Ipv4Net, Ipv6Net};

use super::super::{Service, enable_ip_forward, ip_forward_enabled};
use crate::{
    model::{NetworkRecord, RepairKind},
    netlink::{self, Link},
};

/// What is wrong with a network's bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BridgeDrift {
    Missing,
    Down,
    AddressGone,
}

impl BridgeDrift {
    fn kind(self) -> RepairKind {
        match self {
            BridgeDrift::Missing => RepairKind::BridgeRecreated,
            BridgeDrift::Down => RepairKind::BridgeSetUp,
            BridgeDrift::AddressGone => RepairKind::BridgeAddressRestored,
        }
    }

    fn how(self) -> &'static str {
        match self {
            BridgeDrift::Missing => "was gone; made again with its address",
            BridgeDrift::Down => "was down; set up",
            BridgeDrift::AddressGone => "had lost its gateway address; given back",
        }
    }
}

/// The drift of a bridge against its network's gateway address; none when all is well.
fn bridge_drift(
    bridge: Option<&Link>,
    addresses: &[(u32, Ipv4Net)],
    gateway: Ipv4Net,
) -> Vec<BridgeDrift> {
    let Some(bridge) = bridge else {
        return vec![BridgeDrift::Missing];
    };
    let mut drift = Vec::new();
    if !bridge.up {
        drift.push(BridgeDrift::Down);
    }
    if !addresses
        .iter()
        .any(|(index, address)| *index == bridge.index && *address == gateway)
    {
        drift.push(BridgeDrift::AddressGone);
    }
    drift
}

fn gateway_address(network: &NetworkRecord) -> Ipv4Net {
    Ipv4Net::new(network.gateway, network.subnet.prefix_len()).expect("prefix of a valid net")
}

impl Service {
    /// Puts back the node's sysctls and the networks' bridges; what fails goes to
    /// `failures`, by what it is.
    pub(super) async fn repair_node(&mut self, failures: &mut BTreeMap<String, String>) {
        const IP_FORWARD: &str = "sysctl net.ipv4.ip_forward";
        if self.settings.ip_forward && !ip_forward_enabled() {
            match enable_ip_forward() {
                Ok(()) => self.repaired(
                    RepairKind::SysctlRestored,
                    IP_FORWARD,
                    "had been turned off; set to 1 again",
                ),
                Err(e) => drop(failures.insert(IP_FORWARD.into(), e.to_string())),
            }
        }
        let links = netlink::all_links(&self.handle).await;
        let addresses = netlink::ipv4_addresses(&self.handle).await;
        let (links, addresses) = match (links, addresses) {
            (Ok(links), Ok(addresses)) => (links, addresses),
            (Err(e), _) | (_, Err(e)) => {
                failures.insert("bridges".into(), format!("listing the node's links: {e}"));
                return;
            }
        };
        let networks: Vec<NetworkRecord> = self
            .state
            .networks
            .values()
            .filter(|n| !n.pending)
            .cloned()
            .collect();
        let ipv6_addresses = match networks.iter().any(|n| n.ipv6.is_some()) {
            true => match netlink::ipv6_addresses(&self.handle).await {
                Ok(addresses) => addresses,
                Err(e) => {
                    failures.insert("bridges".into(), format!("listing the node's links: {e}"));
                    return;
                }
            },
            false => Vec::new(),
        };
        for network in networks {
            let bridge = links.iter().find(|l| l.name == network.bridge);
            let mut drift = bridge_drift(bridge, &addresses, gateway_address(&network));
            // The IPv6 gateway, on a network with IPv6, is the bridge's address too.
            if let (Some(bridge), Some(side)) = (bridge, &network.ipv6) {
                let gateway = Ipv6Net::new(side.gateway, side.subnet.prefix_len())
                    .expect("prefix of a valid net");
                let held = ipv6_addresses
                    .iter()
                    .any(|(index, address)| *index == bridge.index && *address == gateway);
                if !held && !drift.contains(&BridgeDrift::AddressGone) {
                    drift.push(BridgeDrift::AddressGone);
                }
            }
            if drift.is_empty() {
                continue;
            }
            let what = format!("bridge {} of network {}", network.bridge, network.name);
            match self.ensure_bridge(&network).await {
                Ok(()) => {
                    for drift in drift {
                        self.repaired(drift.kind(), &what, drift.how());
                    }
                }
                Err(e) => drop(failures.insert(what, e.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge(up: bool) -> Link {
        Link {
            index: 3,
            name: "bpfbr0".into(),
            mtu: 1500,
            mac: None,
            controller: None,
            up,
        }
    }

    #[test]
    fn bridge_drift_is_what_differs_from_up_with_its_gateway() {
        let gateway: Ipv4Net = "172.17.0.1/16".parse().unwrap();
        let held = [(3, gateway)];
        assert_eq!(bridge_drift(None, &held, gateway), [BridgeDrift::Missing]);
        assert!(bridge_drift(Some(&bridge(true)), &held, gateway).is_empty());
        assert_eq!(
            bridge_drift(Some(&bridge(false)), &held, gateway),
            [BridgeDrift::Down]
        );
        // The gateway on another link, or another prefix on the bridge, is not its own.
        let elsewhere = [(4, gateway), (3, "172.17.0.1/24".parse().unwrap())];
        assert_eq!(
            bridge_drift(Some(&bridge(false)), &elsewhere, gateway),
            [BridgeDrift::Down, BridgeDrift::AddressGone]
        );
    }
}
