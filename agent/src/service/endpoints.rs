//! A container's attachment to one network: the veth pair, the addressing inside the
//! container's namespace, and the dataplane's hold on the node-side end.

use std::path::Path;

use ipnet::{Ipv4Net, Ipv6Net};

use super::{
    Service, Step, Undo, dataplane_endpoint,
    drivers::{self, DefaultRoute},
    veth_names,
};
use crate::{
    Error, Result,
    dataplane::Endpoint,
    faults::{self, CrashPoint},
    model::{ContainerRecord, EndpointRecord, MacAddress, NetworkRecord},
    netlink, netns,
};

/// The node-side veth of an endpoint: the recorded one, or, for an endpoint whose creation
/// was cut short before its veth was recorded, the name it was being made with.
fn host_veth_of(e: &EndpointRecord) -> String {
    match e.host_veth.is_empty() {
        true => veth_names(&e.endpoint_id).0,
        false => e.host_veth.clone(),
    }
}

/// The dataplane's view of an endpoint for tearing it down: its addresses and veth. An
/// endpoint whose creation was cut short may not know its MACs yet, and teardown needs
/// neither them nor the network's bridge and gateway.
fn teardown_endpoint(e: &EndpointRecord) -> Endpoint {
    Endpoint {
        container_ip: e.ip,
        container_mac: e.mac.octets(),
        host_veth: host_veth_of(e),
        host_veth_ifindex: e.host_veth_ifindex,
        host_veth_mac: e.host_veth_mac.map(|m| m.octets()).unwrap_or_default(),
        bridge: String::new(),
        gateway: None,
        container_ipv6: e.ipv6,
        gateway_ipv6: None,
    }
}

/// The steps that undo an endpoint: the dataplane's hold first, then the veth (deleting one
/// end deletes the pair); for a macvlan or ipvlan endpoint, its interface in `netns`.
pub(super) fn teardown_steps(netns: &Path, e: &EndpointRecord) -> Vec<Step> {
    if e.sub_interface {
        return vec![drivers::sub_interface_teardown(netns, e)];
    }
    vec![
        Step::DetachEndpoint(teardown_endpoint(e)),
        Step::DeleteLink(host_veth_of(e)),
    ]
}

/// Configures an endpoint's interface inside `netns`, where it arrived as `arrived_as`: its
/// name, address, up (loopback too), and the default route when `default_route`.
pub(super) fn configure_container_side(
    netns: &Path,
    arrived_as: &str,
    network: &NetworkRecord,
    endpoint: &EndpointRecord,
    default_route: bool,
) -> Result<()> {
    let address = match (endpoint.ip, network.subnet) {
        (Some(ip), Some(subnet)) => {
            Some(Ipv4Net::new(ip, subnet.prefix_len()).expect("prefix of a valid net"))
        }
        _ => None,
    };
    let route = default_route
        .then(|| DefaultRoute::of(network, endpoint))
        .flatten();
    // The IPv6 address without duplicate address detection (the agent hands out each
    // address once), so that it is usable at once.
    let ipv6 = match (endpoint.ipv6, &network.ipv6) {
        (Some(ip), Some(side)) => Some((
            Ipv6Net::new(ip, side.subnet.prefix_len()).expect("prefix of a valid net"),
            default_route.then_some(side.gateway),
        )),
        _ => None,
    };
    let (arrived_as, ifname) = (arrived_as.to_string(), endpoint.ifname.clone());
    netns::with_netlink_in(netns, |h| async move {
        let link = netlink::link_by_name(&h, &arrived_as)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!("{arrived_as} did not arrive in the namespace"))
            })?;
        if arrived_as != ifname {
            netlink::set_name(&h, link.index, &ifname).await?;
        }
        if let Some(address) = address {
            netlink::add_address(&h, link.index, address).await?;
        }
        if let Some((address, _)) = ipv6 {
            netlink::add_address_v6(&h, link.index, address).await?;
        }
        netlink::set_up(&h, link.index).await?;
        if let Some(lo) = netlink::link_by_name(&h, "lo").await? {
            netlink::set_up(&h, lo.index).await?;
        }
        if let Some((_, Some(gateway))) = ipv6 {
            netlink::set_default_route_v6(&h, gateway).await?;
        }
        match route {
            Some(route) => route.set(&h).await,
            None => Ok(()),
        }
    })
}

impl Service {
    /// Creates `endpoint`'s veth pair on `network`'s bridge, with the container side (its
    /// MAC set) still in the node's namespace, and attaches the dataplane. Records the
    /// node-side name, index and MAC in `endpoint`; returns the container side's link.
    pub(super) async fn make_veth_on_bridge(
        &mut self,
        network: &NetworkRecord,
        endpoint: &mut EndpointRecord,
        undo: &mut Undo,
    ) -> Result<netlink::Link> {
        let bridge = netlink::link_by_name(&self.handle, &network.bridge)
            .await?
            .ok_or_else(|| Error::NotFound(format!("bridge {} does not exist", network.bridge)))?;
        let (host_veth, peer) = veth_names(&endpoint.endpoint_id);
        netlink::create_veth(&self.handle, &host_veth, &peer, network.mtu).await?;
        undo.steps.push(Step::DeleteLink(host_veth.clone()));
        faults::reach(CrashPoint::EndpointVethMade);
        let peer_link = netlink::link_by_name(&self.handle, &peer)
            .await?
            .ok_or_else(|| Error::NotFound(format!("veth peer {peer} vanished")))?;
        // The MTU given at creation is the node side's only.
        if peer_link.mtu != network.mtu {
            netlink::set_mtu(&self.handle, peer_link.index, network.mtu).await?;
        }
        netlink::set_mac(&self.handle, peer_link.index, endpoint.mac.octets()).await?;
        netlink::enable_gro(&peer)?;
        let host = netlink::link_by_name(&self.handle, &host_veth)
            .await?
            .ok_or_else(|| Error::NotFound(format!("veth {host_veth} vanished")))?;
        netlink::set_controller(&self.handle, host.index, bridge.index).await?;
        netlink::set_up(&self.handle, host.index).await?;
        faults::reach(CrashPoint::EndpointVethOnBridge);
        let host_mac = host
            .mac
            .ok_or_else(|| Error::NotFound(format!("veth {host_veth} has no MAC")))?;
        endpoint.host_veth = host_veth;
        endpoint.host_veth_ifindex = host.index;
        endpoint.host_veth_mac = Some(MacAddress(host_mac));
        let dp = dataplane_endpoint(endpoint, network)?;
        self.dataplane.attach_endpoint(&dp).await?;
        undo.steps.push(Step::DetachEndpoint(dp));
        faults::reach(CrashPoint::EndpointAttached);
        Ok(peer_link)
    }

    /// Makes `endpoint` with [`Self::make_veth_on_bridge`] and configures the container side
    /// inside `netns`: name, address, and the default route when `default_route`. On a
    /// macvlan or ipvlan network, a sub-interface of its parent instead.
    pub(super) async fn make_endpoint(
        &mut self,
        netns: &Path,
        network: &NetworkRecord,
        endpoint: &mut EndpointRecord,
        default_route: bool,
        undo: &mut Undo,
    ) -> Result<()> {
        if endpoint.sub_interface {
            return self
                .make_sub_interface(netns, network, endpoint, default_route, undo)
                .await;
        }
        let peer_link = self.make_veth_on_bridge(network, endpoint, undo).await?;
        let peer = peer_link.name.clone();
        let netns_file = std::fs::File::open(netns)
            .map_err(Error::io(format!("opening {}", netns.display())))?;
        netlink::move_to_netns(&self.handle, peer_link.index, &netns_file).await?;
        faults::reach(CrashPoint::EndpointMoved);

        let configured = configure_container_side(netns, &peer, network, endpoint, default_route);
        faults::reach(CrashPoint::EndpointConfigured);
        configured
    }

    /// Takes `container`'s endpoint at `position` off the node and out of its record (saved).
    /// When that endpoint carried the published ports, they move to the next way out, and
    /// the answer is true.
    pub(super) async fn remove_endpoint(
        &mut self,
        container: &mut ContainerRecord,
        position: usize,
    ) -> Result<bool> {
        let was_primary = self
            .port_endpoint(container)
            .is_some_and(|e| e.endpoint_id == container.endpoints[position].endpoint_id);
        // Pending while it goes: a crash in the middle finishes the removal on start.
        container.endpoints[position].pending = true;
        self.save_container(container.clone())?;
        faults::reach(CrashPoint::DisconnectMarked);
        let mut steps = Vec::new();
        if was_primary {
            steps.extend(container.ports.iter().map(|p| Step::Unpublish(*p)));
        }
        steps.extend(teardown_steps(
            &container.netns,
            &container.endpoints[position],
        ));
        self.run_all(steps).await?;
        container.endpoints.remove(position);
        self.save_container(container.clone())?;
        faults::reach(CrashPoint::DisconnectSaved);
        if was_primary {
            // The ports' new carrier is made already: nothing to undo if publishing fails.
            self.publish_ports(container, &mut Undo::default())?;
        }
        Ok(was_primary)
    }

    /// Points the container's default route at the gateway of its port endpoint (the first
    /// attachment with a way out), or removes it when there is none.
    pub(super) async fn fix_default_route(&self, container: &ContainerRecord) -> Result<()> {
        let (route, gateway_ipv6) = match self.port_endpoint(container) {
            Some(e) => {
                let network = self.network_by_id(&e.network_id)?;
                let ipv6 = network.ipv6.as_ref().filter(|_| e.ipv6.is_some());
                (DefaultRoute::of(network, e), ipv6.map(|side| side.gateway))
            }
            None => (None, None),
        };
        netns::with_netlink_in(&container.netns, |h| async move {
            match gateway_ipv6 {
                Some(gateway) => netlink::set_default_route_v6(&h, gateway).await?,
                None => netlink::delete_default_route_v6(&h).await?,
            }
            match route {
                Some(route) => route.set(&h).await,
                None => netlink::delete_default_route(&h).await,
            }
        })
    }
}
