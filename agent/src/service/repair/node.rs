//! Repair of the node's side of the networks: the sysctls the agent set in the node's
//! namespace, and each network's bridge (deleted, set down, its gateway address removed,
//! the route to its subnet deleted). The bridge's veths, released when it is deleted, are
//! put back on it by the endpoints' repair that follows in the same pass.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;

use super::super::{Service, enable_ip_forward, ip_forward_enabled};
use crate::{
    model::{NetworkRecord, RepairKind},
    netlink::{self, Link, Route},
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
    gateway: Option<Ipv4Net>,
) -> Vec<BridgeDrift> {
    let Some(bridge) = bridge else {
        return vec![BridgeDrift::Missing];
    };
    let mut drift = Vec::new();
    if !bridge.up {
        drift.push(BridgeDrift::Down);
    }
    // An IPv6-only network's bridge has no IPv4 gateway to lose.
    if let Some(gateway) = gateway
        && !addresses
            .iter()
            .any(|(index, address)| *index == bridge.index && *address == gateway)
    {
        drift.push(BridgeDrift::AddressGone);
    }
    drift
}

/// Whether the route to `subnet` on `bridge` is gone. The kernel makes it with the gateway
/// address and takes it away with the address or when the bridge goes down, so only a
/// bridge without other drift is asked; someone's `ip route del` is what leaves it missing
/// then, and the node (containers' replies, node-local clients) no longer reaches the
/// network.
fn subnet_route_missing(bridge: &Link, routes: &[Route], subnet: Ipv4Net) -> bool {
    !routes
        .iter()
        .any(|r| r.destination == subnet.trunc() && r.oif == Some(bridge.index))
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
        let routes = netlink::ipv4_routes(&self.handle).await;
        let (links, addresses, routes) = match (links, addresses, routes) {
            (Ok(links), Ok(addresses), Ok(routes)) => (links, addresses, routes),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                failures.insert(
                    "bridges".into(),
                    format!("listing the node's links, addresses and routes: {e}"),
                );
                return;
            }
        };
        let networks: Vec<NetworkRecord> = self
            .state
            .networks
            .values()
            .filter(|n| !n.pending && n.driver.is_bridge())
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
            let mut drift = bridge_drift(bridge, &addresses, network.gateway_net());
            // The IPv6 gateway, on a network with IPv6, is the bridge's address too.
            if let (Some(bridge), Some(gateway)) = (bridge, network.bridge_ipv6_address()) {
                let held = ipv6_addresses
                    .iter()
                    .any(|(index, address)| *index == bridge.index && *address == gateway);
                if !held && !drift.contains(&BridgeDrift::AddressGone) {
                    drift.push(BridgeDrift::AddressGone);
                }
            }
            if drift.is_empty() {
                if let Some(bridge) = bridge
                    && let Some((subnet, gateway)) = network.ipv4()
                    && network.bridge_has_address()
                    && subnet_route_missing(bridge, &routes, subnet)
                {
                    self.repair_subnet_route(&network, (subnet, gateway), bridge.index, failures)
                        .await;
                }
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

impl Service {
    /// Gives the route to `network`'s IPv4 subnet back to its bridge (link `bridge`).
    async fn repair_subnet_route(
        &mut self,
        network: &NetworkRecord,
        (subnet, gateway): (Ipv4Net, std::net::Ipv4Addr),
        bridge: u32,
        failures: &mut BTreeMap<String, String>,
    ) {
        let what = format!(
            "route to {subnet} on bridge {} of network {}",
            network.bridge, network.name
        );
        match netlink::add_prefix_route(&self.handle, subnet.trunc(), bridge, gateway).await {
            Ok(()) => self.repaired(
                RepairKind::SubnetRouteRestored,
                &what,
                "was deleted; added again",
            ),
            Err(e) => drop(failures.insert(what, e.to_string())),
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
        assert_eq!(
            bridge_drift(None, &held, Some(gateway)),
            [BridgeDrift::Missing]
        );
        assert!(bridge_drift(Some(&bridge(true)), &held, Some(gateway)).is_empty());
        assert_eq!(
            bridge_drift(Some(&bridge(false)), &held, Some(gateway)),
            [BridgeDrift::Down]
        );
        // The gateway on another link, or another prefix on the bridge, is not its own.
        let elsewhere = [(4, gateway), (3, "172.17.0.1/24".parse().unwrap())];
        assert_eq!(
            bridge_drift(Some(&bridge(false)), &elsewhere, Some(gateway)),
            [BridgeDrift::Down, BridgeDrift::AddressGone]
        );
        // An IPv6-only network's bridge holds no IPv4 gateway.
        assert!(bridge_drift(Some(&bridge(true)), &[], None).is_empty());
    }

    #[test]
    fn the_subnet_route_is_the_subnets_on_the_bridge() {
        let subnet: Ipv4Net = "172.17.0.0/16".parse().unwrap();
        let route = |destination: &str, oif| Route {
            destination: destination.parse().unwrap(),
            oif: Some(oif),
        };
        assert!(!subnet_route_missing(
            &bridge(true),
            &[route("172.17.0.0/16", 3)],
            subnet
        ));
        // Another link's, or a narrower one, is not it.
        assert!(subnet_route_missing(
            &bridge(true),
            &[route("172.17.0.0/16", 4), route("172.17.0.0/24", 3)],
            subnet
        ));
    }
}
