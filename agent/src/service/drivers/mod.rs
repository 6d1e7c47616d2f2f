//! The macvlan and ipvlan drivers: a network is a parent interface of the node (made by the
//! agent when it is an 802.1Q sub-interface or a dummy), an endpoint a macvlan or ipvlan
//! interface of that parent inside the container's namespace. No bridge, no veth, no NAT,
//! no published port and no BPF program: the kernel's driver switches the frames, so the
//! dataplane never hears of these networks or endpoints.

mod links;

pub(super) use crate::model::drivers::{ignored_options, is_driver_option, plan_driver};

use std::{net::Ipv4Addr, path::Path};

use super::{Service, Step, Undo, endpoints::configure_container_side};
use crate::{
    Error, Result,
    faults::{self, CrashPoint},
    model::{
        ContainerRecord, EndpointRecord, MacAddress, NetworkDriver, NetworkRecord, RepairKind,
        drivers::{Parent, ParentOrigin},
    },
    netlink, netns,
};

/// Where a container's default route goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum DefaultRoute {
    /// Through the network's gateway.
    Via(Ipv4Addr),
    /// Straight out of the named interface (ipvlan l3: the node routes).
    OutOf(String),
}

impl DefaultRoute {
    /// The IPv4 default route an endpoint on `network` gives its container: none on an
    /// IPv6-only network.
    pub fn of(network: &NetworkRecord, endpoint: &EndpointRecord) -> Option<Self> {
        match network.driver.routes_through_parent() {
            true => Some(DefaultRoute::OutOf(endpoint.ifname.clone())),
            false => network.gateway.map(DefaultRoute::Via),
        }
    }

    /// Sets it in the namespace `h` speaks to, replacing the one there.
    pub async fn set(&self, h: &rtnetlink::Handle) -> Result<()> {
        match self {
            DefaultRoute::Via(gateway) => netlink::set_default_route(h, *gateway).await,
            DefaultRoute::OutOf(ifname) => {
                let link = netlink::link_by_name(h, ifname)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("interface {ifname} is gone")))?;
                links::set_default_device_route(h, link.index).await
            }
        }
    }
}

/// Tears down a sub-interface endpoint: its interface, inside the container's namespace
/// (with the namespace, when that goes, it goes anyway).
pub(super) fn sub_interface_teardown(netns: &Path, endpoint: &EndpointRecord) -> Step {
    Step::DeleteLinkIn {
        netns: netns.to_path_buf(),
        name: endpoint.ifname.clone(),
    }
}

/// Deletes the link `name` inside the namespace at `netns`, if both are there.
pub(super) fn delete_link_in(netns: &Path, name: &str) -> Result<()> {
    if netns::is_netns(netns).is_err() {
        return Ok(());
    }
    let name = name.to_string();
    netns::with_netlink_in(netns, |h| async move {
        match netlink::link_by_name(&h, &name).await? {
            Some(link) => netlink::delete_link(&h, link.index).await,
            None => Ok(()),
        }
    })
}

/// Whether the interface `name` is in the namespace at `netns`.
fn link_in(netns: &Path, name: &str) -> Result<bool> {
    let name = name.to_string();
    netns::with_netlink_in(netns, |h| async move {
        Ok(netlink::link_by_name(&h, &name).await?.is_some())
    })
}

impl Service {
    /// Settles the parent of a macvlan or ipvlan network being planned: an interface another
    /// network already hangs on is shared as it is (a sub-interface the agent made stays
    /// the agent's); an existing one is the node's; a `LINK.VLAN` that does not exist yet
    /// needs `LINK`. Refuses a parent that a network of the other driver uses (the kernel
    /// allows one kind of sub-interface per device). Returns the MTU the network takes.
    pub(super) async fn settle_parent(&self, driver: &mut NetworkDriver) -> Result<u32> {
        let kind = driver.name();
        let Some(parent) = (match driver {
            NetworkDriver::Bridge => None,
            NetworkDriver::Macvlan { parent, .. } | NetworkDriver::Ipvlan { parent, .. } => {
                Some(parent)
            }
        }) else {
            return Ok(self.settings.mtu.unwrap_or(self.uplink_mtu));
        };
        for other in self.state.networks.values() {
            let Some(theirs) = other.driver.parent() else {
                continue;
            };
            if theirs.name != parent.name {
                continue;
            }
            if other.driver.name() != kind {
                return Err(Error::Conflict(format!(
                    "parent interface {} is used by {} network {}: one device cannot have both macvlan and ipvlan interfaces",
                    parent.name,
                    other.driver.name(),
                    other.name
                )));
            }
            *parent = theirs.clone();
            return Ok(other.mtu);
        }
        if let Some(link) = netlink::link_by_name(&self.handle, &parent.name).await? {
            if parent.origin == ParentOrigin::Dummy {
                return Err(Error::Conflict(format!(
                    "interface {} already exists on the node",
                    parent.name
                )));
            }
            parent.origin = ParentOrigin::Existing;
            return Ok(link.mtu);
        }
        match &parent.origin {
            ParentOrigin::Existing => Err(Error::NotFound(format!(
                "the requested parent interface {} was not found on the node",
                parent.name
            ))),
            ParentOrigin::Vlan { link, .. } => netlink::link_by_name(&self.handle, link)
                .await?
                .map(|l| l.mtu)
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "-o parent interface was not found on the node: {link}"
                    ))
                }),
            ParentOrigin::Dummy => Ok(1500),
        }
    }

    /// Makes the device a network hangs on if it is missing: its bridge, or the parent the
    /// agent makes (VLAN sub-interface, dummy), up.
    pub(super) async fn ensure_network_device(&self, network: &NetworkRecord) -> Result<()> {
        match network.driver.parent() {
            None => self.ensure_bridge(network).await,
            Some(parent) => self.ensure_parent(parent).await,
        }
    }

    async fn ensure_parent(&self, parent: &Parent) -> Result<()> {
        let link = match netlink::link_by_name(&self.handle, &parent.name).await? {
            Some(link) => link,
            None => {
                match &parent.origin {
                    ParentOrigin::Existing => {
                        return Err(Error::NotFound(format!(
                            "the parent interface {} is not on the node",
                            parent.name
                        )));
                    }
                    ParentOrigin::Vlan { link, id } => {
                        let lower = netlink::link_by_name(&self.handle, link)
                            .await?
                            .ok_or_else(|| {
                                Error::NotFound(format!(
                                    "interface {link}, which VLAN sub-interface {} hangs on, is not on the node",
                                    parent.name
                                ))
                            })?;
                        links::create_vlan(&self.handle, &parent.name, lower.index, *id).await?
                    }
                    ParentOrigin::Dummy => links::create_dummy(&self.handle, &parent.name).await?,
                }
                netlink::link_by_name(&self.handle, &parent.name)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("{} vanished", parent.name)))?
            }
        };
        if parent.made_by_agent() && !link.up {
            netlink::set_up(&self.handle, link.index).await?;
        }
        Ok(())
    }

    /// The steps that remove what a network has on the node: its bridge, or the parent the
    /// agent made when no other network hangs on it.
    pub(super) fn network_device_teardown(&self, network: &NetworkRecord) -> Vec<Step> {
        match network.driver.parent() {
            None => vec![Step::DeleteLink(network.bridge.clone())],
            Some(parent) => {
                let shared = self.state.networks.values().any(|n| {
                    n.name != network.name
                        && n.driver.parent().is_some_and(|p| p.name == parent.name)
                });
                match parent.made_by_agent() && !shared {
                    true => vec![Step::DeleteLink(parent.name.clone())],
                    false => Vec::new(),
                }
            }
        }
    }

    /// Makes `endpoint`'s macvlan or ipvlan interface of `network`'s parent straight in
    /// `netns`, under its own name, with its address, up, and the default route when
    /// `default_route`. An ipvlan's MAC is its parent's, recorded in `endpoint`.
    pub(super) async fn make_sub_interface(
        &mut self,
        netns: &Path,
        network: &NetworkRecord,
        endpoint: &mut EndpointRecord,
        default_route: bool,
        undo: &mut Undo,
    ) -> Result<()> {
        let parent = network
            .driver
            .parent()
            .ok_or_else(|| Error::Internal(format!("network {} has no parent", network.name)))?;
        // A sub-interface the agent made and someone deleted comes back here.
        self.ensure_parent(parent).await?;
        let parent_link = netlink::link_by_name(&self.handle, &parent.name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("parent {} vanished", parent.name)))?;
        if matches!(network.driver, NetworkDriver::Ipvlan { .. }) {
            endpoint.mac = MacAddress(parent_link.mac.unwrap_or_default());
        }
        let netns_file = std::fs::File::open(netns)
            .map_err(Error::io(format!("opening {}", netns.display())))?;
        undo.steps.push(sub_interface_teardown(netns, endpoint));
        links::create_sub_interface_in(
            &self.handle,
            &network.driver,
            &endpoint.ifname,
            parent_link.index,
            endpoint.mac.octets(),
            &netns_file,
        )
        .await?;
        faults::reach(CrashPoint::EndpointVethMade);

        let configured =
            configure_container_side(netns, &endpoint.ifname, network, endpoint, default_route);
        faults::reach(CrashPoint::EndpointConfigured);
        configured
    }

    /// On start: makes again each sub-interface endpoint of `container` whose interface is
    /// gone while its namespace is there. Answers whether the record changed.
    pub(super) async fn restore_sub_interface(
        &mut self,
        container: &ContainerRecord,
        endpoint: &mut EndpointRecord,
        default_route: bool,
    ) -> Result<bool> {
        if netns::is_netns(&container.netns).is_err()
            || link_in(&container.netns, &endpoint.ifname)?
        {
            return Ok(false);
        }
        tracing::warn!(container = %container.name, interface = %endpoint.ifname, "recreating a missing macvlan/ipvlan interface");
        let network = self.network_by_id(&endpoint.network_id)?.clone();
        let mut undo = Undo::default();
        let made = self
            .make_sub_interface(
                &container.netns,
                &network,
                endpoint,
                default_route,
                &mut undo,
            )
            .await;
        if let Err(e) = made {
            self.rollback(undo).await;
            return Err(e);
        }
        Ok(true)
    }

    /// Drift repair: a sub-interface endpoint whose interface someone deleted inside the
    /// container's namespace is made again, with its address, MAC and route.
    pub(super) async fn repair_sub_interface(
        &mut self,
        container: &mut ContainerRecord,
        position: usize,
        default_route: bool,
    ) -> Result<()> {
        let mut endpoint = container.endpoints[position].clone();
        netns::is_netns(&container.netns).map_err(|_| {
            Error::NotFound(format!(
                "the network namespace {} is gone: remove the container",
                container.netns.display()
            ))
        })?;
        if self
            .restore_sub_interface(container, &mut endpoint, default_route)
            .await?
        {
            container.endpoints[position] = endpoint;
            self.save_container(container.clone())?;
            let what = format!(
                "{} interface {} of container {}",
                self.network_by_id(&container.endpoints[position].network_id)?
                    .driver
                    .name(),
                container.endpoints[position].ifname,
                container.name
            );
            self.repaired(
                RepairKind::VethRecreated,
                &what,
                "was gone; made again with the same address and MAC",
            );
        }
        Ok(())
    }
}
