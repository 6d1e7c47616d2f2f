//! The rtnetlink requests of the macvlan and ipvlan drivers: their parents (802.1Q
//! sub-interfaces, dummies) and the containers' interfaces, which are made straight inside
//! the container's namespace, so that a crash never leaves one in the node's.

use std::{net::Ipv4Addr, os::fd::AsRawFd as _};

use rtnetlink::{
    Handle, LinkDummy, LinkIpVlan, LinkMacVlan, LinkVlan, RouteMessageBuilder,
    packet_route::{
        link::{IpVlanFlags, IpVlanMode, MacVlanMode},
        route::RouteScope,
    },
};

use crate::{
    Error, Result,
    model::drivers::{IpvlanFlag, IpvlanMode, MacvlanMode, NetworkDriver},
};

/// Makes `name`, an 802.1Q sub-interface of the link with index `link` tagged `id`.
pub async fn create_vlan(h: &Handle, name: &str, link: u32, id: u16) -> Result<()> {
    h.link()
        .add(LinkVlan::new(name, link, id).build())
        .execute()
        .await
        .map_err(Error::netlink(format!(
            "creating VLAN sub-interface {name}"
        )))
}

pub async fn create_dummy(h: &Handle, name: &str) -> Result<()> {
    h.link()
        .add(LinkDummy::new(name).build())
        .execute()
        .await
        .map_err(Error::netlink(format!("creating dummy parent {name}")))
}

/// Makes the macvlan or ipvlan interface `name` of the parent with index `parent` (in the
/// current namespace) inside the namespace of `netns`, with `mac` for a macvlan (an ipvlan
/// has its parent's).
pub async fn create_sub_interface_in(
    h: &Handle,
    driver: &NetworkDriver,
    name: &str,
    parent: u32,
    mac: [u8; 6],
    netns: &std::fs::File,
) -> Result<()> {
    let fd = netns.as_raw_fd();
    let message = match driver {
        NetworkDriver::Bridge => {
            return Err(Error::Internal(format!(
                "interface {name}: a bridge network has no parent"
            )));
        }
        NetworkDriver::Macvlan { mode, .. } => {
            let mode = match mode {
                MacvlanMode::Bridge => MacVlanMode::Bridge,
                MacvlanMode::Private => MacVlanMode::Private,
                MacvlanMode::Vepa => MacVlanMode::Vepa,
                MacvlanMode::Passthru => MacVlanMode::Passthrough,
            };
            LinkMacVlan::new(name, parent, mode)
                .address(mac.to_vec())
                .setns_by_fd(fd)
                .build()
        }
        NetworkDriver::Ipvlan { mode, flag, .. } => {
            let mode = match mode {
                IpvlanMode::L2 => IpVlanMode::L2,
                IpvlanMode::L3 => IpVlanMode::L3,
                IpvlanMode::L3s => IpVlanMode::L3S,
            };
            let flag = match flag {
                IpvlanFlag::Bridge => IpVlanFlags::empty(),
                IpvlanFlag::Private => IpVlanFlags::Private,
                IpvlanFlag::Vepa => IpVlanFlags::Vepa,
            };
            LinkIpVlan::new(name, parent, mode)
                .flag(flag)
                .setns_by_fd(fd)
                .build()
        }
    };
    h.link()
        .add(message)
        .execute()
        .await
        .map_err(Error::netlink(format!(
            "creating the {} interface {name} in the container's namespace",
            driver.name()
        )))
}

/// The default route straight out of the link `index` (ipvlan l3: no gateway, the node
/// routes), replacing one that is already there.
pub async fn set_default_device_route(h: &Handle, index: u32) -> Result<()> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .output_interface(index)
        .scope(RouteScope::Link)
        .build();
    h.route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(Error::netlink(format!(
            "setting the default route out of link {index}"
        )))
}
