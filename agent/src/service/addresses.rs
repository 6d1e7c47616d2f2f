//! The node's own addresses, which the dataplane needs where netfilter would look them up
//! itself (`-m addrtype --dst-type LOCAL`, MASQUERADE): the addresses on which ports
//! published on `0.0.0.0` answer, and the source of masqueraded traffic. They are read at
//! start and again whenever the kernel announces an address change (a DHCP renewal, an
//! address reassigned, a network's gateway added), with a periodic pass that catches up
//! on lost announcements and retries a failed update.

use std::{collections::BTreeSet, net::Ipv4Addr, sync::Arc, time::Duration};

use futures::{Stream, StreamExt, stream::BoxStream};
use ipnet::Ipv4Net;
use tokio::{sync::Mutex, time::Instant};

use super::Service;
use crate::{Result, netlink};

/// How long a burst of announcements is gathered before the addresses are read: replacing
/// an address is a delete and an add, which one update should cover.
const BURST: Duration = Duration::from_millis(100);
/// How often the addresses are read without an announcement.
const PERIODIC_PASS: Duration = Duration::from_secs(10);

/// What the dataplane is told of the node's addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct NodeAddresses {
    /// Every IPv4 address of the node but loopback, with its interface's index, in order.
    addresses: BTreeSet<(u32, Ipv4Addr)>,
    /// The uplink's first address, which masqueraded traffic leaves with.
    masquerade_source: Option<Ipv4Addr>,
}

impl NodeAddresses {
    /// From the namespace's addresses in the kernel's order (an interface's primary
    /// address first) and the uplink's index, if the uplink exists.
    fn plan(dump: &[(u32, Ipv4Net)], uplink: Option<u32>) -> Self {
        let addresses: Vec<(u32, Ipv4Addr)> = dump
            .iter()
            .map(|(index, net)| (*index, net.addr()))
            .filter(|(_, ip)| !ip.is_loopback())
            .collect();
        let masquerade_source = uplink
            .and_then(|uplink| addresses.iter().find(|(index, _)| *index == uplink))
            .map(|(_, ip)| *ip);
        NodeAddresses {
            addresses: addresses.into_iter().collect(),
            masquerade_source,
        }
    }

    /// What `self` has that `before` had not, and the other way round.
    fn difference(&self, before: &NodeAddresses) -> (Vec<Ipv4Addr>, Vec<Ipv4Addr>) {
        let ips = |a: &BTreeSet<(u32, Ipv4Addr)>, b: &BTreeSet<(u32, Ipv4Addr)>| {
            a.difference(b).map(|(_, ip)| *ip).collect()
        };
        (
            ips(&self.addresses, &before.addresses),
            ips(&before.addresses, &self.addresses),
        )
    }

    fn addresses(&self) -> Vec<(u32, Ipv4Addr)> {
        self.addresses.iter().copied().collect()
    }
}

impl Service {
    /// Reads the node's addresses and, where they differ from what the dataplane was last
    /// told, tells it: which addresses are the node's, and the masquerade source. Flows
    /// masqueraded with an address that is gone end, as netfilter's MASQUERADE ends them.
    pub(super) async fn refresh_node_addresses(&mut self) -> Result<()> {
        let dump = netlink::ipv4_addresses(&self.handle).await?;
        let uplink = netlink::link_by_name(&self.handle, &self.uplink).await?;
        let planned = NodeAddresses::plan(&dump, uplink.map(|l| l.index));
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
                if planned.masquerade_source != before.masquerade_source {
                    tracing::info!(
                        uplink = %self.uplink, from = ?before.masquerade_source,
                        to = ?planned.masquerade_source, "the masquerade source changed"
                    );
                }
            }
            None => tracing::debug!(addresses = ?planned.addresses, "the node's addresses"),
        }
        if planned.masquerade_source.is_none() {
            tracing::warn!(uplink = %self.uplink, "the uplink has no IPv4 address: no masquerade");
        }
        self.dataplane.set_node_addresses(&planned.addresses())?;
        let ports = self.settings.masquerade_port_range.bounds();
        self.dataplane
            .set_masquerade(planned.masquerade_source, ports)?;
        self.node_addresses = Some(planned);
        Ok(())
    }
}

/// Keeps the dataplane's view of the node's addresses current for as long as the agent
/// runs: after each burst of `changes` ([`netlink::address_changes`], subscribed before
/// the service started, so that no change since is missed), and every [`PERIODIC_PASS`].
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
                    tracing::warn!("the address change subscription ended; subscribing again within {PERIODIC_PASS:?}");
                    changes = None;
                    continue;
                }
            },
            _ = pass.tick() => {
                if changes.is_none() {
                    changes = netlink::address_changes()
                        .inspect_err(|e| tracing::warn!("{e}"))
                        .ok()
                        .map(StreamExt::boxed);
                }
            }
        }
        if let Err(e) = service.lock().await.refresh_node_addresses().await {
            tracing::error!(
                "updating the node's addresses: {e}; trying again at the next change or within {PERIODIC_PASS:?}"
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

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    #[test]
    fn every_address_but_loopback_counts_and_the_uplinks_first_is_the_source() {
        let dump = [
            (1, net("127.0.0.1/8")),
            (2, net("198.51.100.7/24")),
            (2, net("198.51.100.9/24")),
            (3, net("172.17.0.1/16")),
        ];
        let planned = NodeAddresses::plan(&dump, Some(2));
        assert_eq!(
            planned.addresses(),
            vec![
                (2, "198.51.100.7".parse().unwrap()),
                (2, "198.51.100.9".parse().unwrap()),
                (3, "172.17.0.1".parse().unwrap()),
            ]
        );
        assert_eq!(planned.masquerade_source, "198.51.100.7".parse().ok());
        assert_eq!(NodeAddresses::plan(&dump, Some(4)).masquerade_source, None);
        assert_eq!(NodeAddresses::plan(&dump, None).masquerade_source, None);
    }

    #[test]
    fn a_replaced_address_is_one_added_and_one_removed() {
        let before = NodeAddresses::plan(&[(2, net("198.51.100.1/24"))], Some(2));
        let after = NodeAddresses::plan(&[(2, net("198.51.100.7/24"))], Some(2));
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
