//! The node's interfaces and their addresses, which the dataplane needs where netfilter
//! would look them up itself (`-i`-less rules, `-m addrtype --dst-type LOCAL`,
//! MASQUERADE): the uplinks, where published ports answer; the addresses on which ports
//! published on `0.0.0.0` answer; and the source of masqueraded traffic by the interface
//! it leaves by. They are read at start and again whenever the kernel announces a link or
//! address change (an interface plugged in, a VPN coming up, a DHCP renewal, a network's
//! gateway added), with a periodic pass that catches up on lost announcements and retries
//! a failed update.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use futures::{Stream, StreamExt, stream::BoxStream};
use ipnet::IpNet;
use tokio::{sync::Mutex, time::Instant};

use super::{BRIDGE_PREFIX, Service};
use crate::{
    Result,
    dataplane::uplinks::{Framing, UplinkLink},
    netlink,
};

/// How long a burst of announcements is gathered before the addresses are read: replacing
/// an address is a delete and an add, which one update should cover.
const BURST: Duration = Duration::from_millis(100);
/// How often the addresses are read without an announcement.
const PERIODIC_PASS: Duration = Duration::from_secs(10);

/// What the dataplane is told of the node's addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct NodeAddresses {
    /// Every IPv4 address of the node but loopback and every IPv6 one but loopback and
    /// link-local, with its interface's index, in order.
    addresses: BTreeSet<(u32, IpAddr)>,
    /// Each interface's primary (first) address of each family, by index and family (IPv4
    /// first): what masqueraded traffic leaving by it is sent from, as MASQUERADE picks it.
    masquerade_sources: BTreeMap<(u32, bool), IpAddr>,
}

impl NodeAddresses {
    /// From the namespace's addresses in the kernel's order (an interface's primary
    /// address first).
    fn plan(dump: &[(u32, IpNet)]) -> Self {
        let addresses: Vec<(u32, IpAddr)> = dump
            .iter()
            .map(|(index, net)| (*index, net.addr()))
            .filter(|(_, ip)| !ip.is_loopback())
            .collect();
        let mut masquerade_sources = BTreeMap::new();
        // An IPv6 link-local address is no source for traffic that leaves the link.
        let link_local = |ip: &IpAddr| matches!(ip, IpAddr::V6(ip) if ip.is_unicast_link_local());
        for (index, ip) in addresses.iter().filter(|(_, ip)| !link_local(ip)) {
            masquerade_sources
                .entry((*index, ip.is_ipv6()))
                .or_insert(*ip);
        }
        NodeAddresses {
            addresses: addresses.into_iter().collect(),
            masquerade_sources,
        }
    }

    fn masquerade_sources(&self) -> Vec<(u32, IpAddr)> {
        self.masquerade_sources
            .iter()
            .map(|((index, _), ip)| (*index, *ip))
            .collect()
    }

    /// What `self` has that `before` had not, and the other way round.
    fn difference(&self, before: &NodeAddresses) -> (Vec<IpAddr>, Vec<IpAddr>) {
        let ips = |a: &BTreeSet<(u32, IpAddr)>, b: &BTreeSet<(u32, IpAddr)>| {
            a.difference(b).map(|(_, ip)| *ip).collect()
        };
        (
            ips(&self.addresses, &before.addresses),
            ips(&before.addresses, &self.addresses),
        )
    }

    pub(super) fn addresses(&self) -> Vec<(u32, IpAddr)> {
        self.addresses.iter().copied().collect()
    }
}

/// The uplinks among the node's interfaces: those named by `--uplink` (`explicit`) that
/// exist, or else every Ethernet or layer-3 interface (not loopback and the like) but
/// ports of a bridge or bond (the bridge or bond is the interface), the agent's own bridges (`bridges`) and container veths on their way into
/// a container.
fn pick_uplinks(
    interfaces: &[netlink::Interface],
    explicit: &[String],
    bridges: &[&str],
) -> Vec<UplinkLink> {
    let uplink = |i: &netlink::Interface| UplinkLink {
        name: i.link.name.clone(),
        index: i.link.index,
        kind: i.kind.clone(),
        // One named though it carries no IP of its own framing is taken as Ethernet, as
        // before layer-3 devices were told apart.
        framing: i.framing.unwrap_or(Framing::Ethernet),
    };
    if !explicit.is_empty() {
        return explicit
            .iter()
            .filter_map(|name| interfaces.iter().find(|i| &i.link.name == name))
            .map(uplink)
            .collect();
    }
    interfaces
        .iter()
        .filter(|i| {
            let name = i.link.name.as_str();
            i.framing.is_some()
                && i.link.controller.is_none()
                && !bridges.contains(&name)
                && !name.starts_with(BRIDGE_PREFIX)
                && !name.starts_with(super::VETH_PEER_PREFIX)
        })
        .map(uplink)
        .collect()
}

/// Without `--uplink` and a default route: the first interface that would be an uplink,
/// bridges aside, whose MTU then is the default one.
pub(super) async fn first_uplink_candidate(handle: &rtnetlink::Handle) -> Result<Option<String>> {
    let interfaces = netlink::all_interfaces(handle).await?;
    Ok(pick_uplinks(&interfaces, &[], &[])
        .into_iter()
        .find(|u| u.kind.as_deref() != Some("bridge") && u.framing == Framing::Ethernet)
        .map(|u| u.name))
}

impl Service {
    /// Picks the uplinks among the node's interfaces and has the dataplane handle exactly
    /// those; what it says of each is kept for `info`.
    pub(super) async fn refresh_uplinks(&mut self) -> Result<()> {
        let interfaces = netlink::all_interfaces(&self.handle).await?;
        let bridges: Vec<&str> = self
            .state
            .networks
            .values()
            .map(|n| n.bridge.as_str())
            .collect();
        let wanted = pick_uplinks(&interfaces, &self.settings.uplink, &bridges);
        let uplinks = self.dataplane.set_uplinks(&wanted);
        if uplinks != self.uplinks {
            tracing::info!(?uplinks, "the uplinks changed");
            self.uplinks = uplinks;
        }
        Ok(())
    }

    /// Reads the node's addresses and, where they differ from what the dataplane was last
    /// told, tells it: which addresses are the node's, and the masquerade sources. Flows
    /// masqueraded with an address that is gone end, as netfilter's MASQUERADE ends them.
    pub(super) async fn refresh_node_addresses(&mut self) -> Result<()> {
        let mut dump: Vec<(u32, IpNet)> = netlink::ipv4_addresses(&self.handle)
            .await?
            .into_iter()
            .map(|(index, net)| (index, net.into()))
            .collect();
        dump.extend(
            netlink::ipv6_addresses(&self.handle)
                .await?
                .into_iter()
                .map(|(index, net)| (index, net.into())),
        );
        let planned = NodeAddresses::plan(&dump);
        let before = self.node_addresses.as_ref();
        if before == Some(&planned) {
            return Ok(());
        }
        match before {
            Some(before) => {
                let (added, removed) = planned.difference(before);
                if !added.is_empty() || !removed.is_empty() {
                    tracing::info!(?added, ?removed, "the node's addresses changed");
                }
                if planned.masquerade_sources != before.masquerade_sources {
                    tracing::info!(
                        from = ?before.masquerade_sources, to = ?planned.masquerade_sources,
                        "the masquerade sources changed"
                    );
                }
            }
            None => tracing::debug!(addresses = ?planned.addresses, "the node's addresses"),
        }
        self.dataplane.set_node_addresses(&planned.addresses())?;
        let ports = self.settings.masquerade_port_range.bounds();
        self.dataplane
            .set_masquerade(&planned.masquerade_sources(), ports)?;
        self.node_addresses = Some(planned);
        Ok(())
    }

    /// [`Self::refresh_uplinks`], then [`Self::refresh_node_addresses`].
    async fn refresh_interfaces(&mut self) -> Result<()> {
        self.refresh_uplinks().await?;
        self.refresh_node_addresses().await
    }
}

/// Keeps the dataplane's view of the node's interfaces and addresses current for as long
/// as the agent runs: after each burst of `changes` ([`netlink::interface_changes`],
/// subscribed before the service started, so that no change since is missed), and every
/// [`PERIODIC_PASS`].
/// A failed update is logged and tried again at the next change or pass; a subscription
/// that ends is made again at a pass.
pub async fn follow_node_addresses(
    service: Arc<Mutex<Service>>,
    changes: impl Stream<Item = ()> + Send + 'static,
) {
    let mut changes = Some(changes.boxed());
    let mut pass = tokio::time::interval(PERIODIC_PASS);
    pass.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the start has just told the dataplane.
    pass.tick().await;
    loop {
        tokio::select! {
            announced = next_change(&mut changes) => match (announced, changes.as_mut()) {
                (true, Some(changes)) => {
                    let until = Instant::now() + BURST;
                    while let Ok(Some(())) = tokio::time::timeout_at(until, changes.next()).await {}
                }
                _ => {
                    tracing::warn!("the interface change subscription ended; subscribing again within {PERIODIC_PASS:?}");
                    changes = None;
                    continue;
                }
            },
            _ = pass.tick() => {
                if changes.is_none() {
                    changes = netlink::interface_changes()
                        .inspect_err(|e| tracing::warn!("{e}"))
                        .ok()
                        .map(StreamExt::boxed);
                }
            }
        }
        if let Err(e) = service.lock().await.refresh_interfaces().await {
            tracing::error!(
                "updating the node's interfaces and addresses: {e}; trying again at the next change or within {PERIODIC_PASS:?}"
            );
        }
    }
}

/// Whether a change came (false: the subscription ended); never returns without a
/// subscription.
async fn next_change(changes: &mut Option<BoxStream<'static, ()>>) -> bool {
    match changes {
        Some(changes) => changes.next().await.is_some(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn every_address_but_loopback_counts_and_each_interfaces_first_is_its_source() {
        let dump = [
            (1, net("127.0.0.1/8")),
            (2, net("198.51.100.7/24")),
            (2, net("198.51.100.9/24")),
            (3, net("172.17.0.1/16")),
            (2, net("2001:db8::7/64")),
            (2, net("2001:db8::9/64")),
        ];
        let planned = NodeAddresses::plan(&dump);
        assert_eq!(
            planned.addresses(),
            vec![
                (2, "198.51.100.7".parse().unwrap()),
                (2, "198.51.100.9".parse().unwrap()),
                (2, "2001:db8::7".parse().unwrap()),
                (2, "2001:db8::9".parse().unwrap()),
                (3, "172.17.0.1".parse().unwrap()),
            ]
        );
        assert_eq!(
            planned.masquerade_sources(),
            vec![
                (2, "198.51.100.7".parse().unwrap()),
                (2, "2001:db8::7".parse().unwrap()),
                (3, "172.17.0.1".parse().unwrap()),
            ]
        );
    }

    fn interface(index: u32, name: &str, kind: Option<&str>) -> netlink::Interface {
        netlink::Interface {
            link: netlink::Link {
                index,
                name: name.into(),
                mtu: 1500,
                mac: Some([2, 0, 0, 0, 0, index as u8]),
                controller: None,
                up: true,
            },
            kind: kind.map(Into::into),
            framing: Some(Framing::Ethernet),
        }
    }

    #[test]
    fn every_interface_but_ours_is_an_uplink_unless_some_are_named() {
        let lo = netlink::Interface {
            framing: None,
            ..interface(1, "lo", None)
        };
        let wg = netlink::Interface {
            framing: Some(Framing::Ip),
            ..interface(6, "wg0", Some("wireguard"))
        };
        let mut port = interface(7, "vethabc1234", Some("veth"));
        port.link.controller = Some(4);
        let interfaces = [
            lo,
            interface(2, "eth0", None),
            interface(3, "up1", Some("veth")),
            interface(4, "bpfbr0", Some("bridge")),
            interface(5, "mynet", Some("bridge")),
            wg,
            port,
            interface(8, "bpfcabc1234", Some("veth")),
        ];
        let names = |uplinks: Vec<UplinkLink>| -> Vec<String> {
            uplinks.into_iter().map(|u| u.name).collect()
        };
        assert_eq!(
            names(pick_uplinks(&interfaces, &[], &["mynet"])),
            ["eth0", "up1", "wg0"]
        );
        let named = ["up1".to_string(), "absent".to_string()];
        assert_eq!(names(pick_uplinks(&interfaces, &named, &[])), ["up1"]);
    }

    #[test]
    fn a_replaced_address_is_one_added_and_one_removed() {
        let before = NodeAddresses::plan(&[(2, net("198.51.100.1/24"))]);
        let after = NodeAddresses::plan(&[(2, net("198.51.100.7/24"))]);
        assert_eq!(
            after.difference(&before),
            (
                vec!["198.51.100.7".parse().unwrap()],
                vec!["198.51.100.1".parse().unwrap()]
            )
        );
        assert_eq!(after.difference(&after), (vec![], vec![]));
    }
}
