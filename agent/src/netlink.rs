//! The link, address and route operations the agent needs, over rtnetlink.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
};

use futures::TryStreamExt as _;
use ipnet::{Ipv4Net, Ipv6Net};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::{AddressAttribute, AddressFlags},
        link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope},
    },
};

use crate::{Error, Result, dataplane::uplinks::Framing};

const RT_TABLE_MAIN: u32 = 254;

/// What the agent needs to know of a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    /// The bridge (or other controller) the link is enslaved to.
    pub controller: Option<u32>,
    /// Administratively up (`ip link set up`).
    pub up: bool,
}

/// A link with what its uplink hook depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub link: Link,
    /// The kind of a virtual device (`veth`, `bridge`, `tun`, ...; `ip -d link`); `None`
    /// for a hardware NIC.
    pub kind: Option<String>,
    /// What its frames start with: an Ethernet header, or the IP header (a layer-3 device
    /// such as ipip, GRE, WireGuard's or a tun); `None` for devices of neither kind
    /// (loopback, ...).
    pub framing: Option<Framing>,
}

fn link_from_message(msg: LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mtu: 0,
        mac: None,
        controller: None,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::Address(bytes) => link.mac = bytes.try_into().ok(),
            LinkAttribute::Controller(index) => link.controller = Some(index),
            _ => {}
        }
    }
    link
}

fn is_not_found(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::ENODEV)
}

pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<Link>> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(msg) => Ok(msg.map(link_from_message)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(Error::netlink(format!("looking up link {name}"))(e)),
    }
}

pub async fn link_by_index(h: &Handle, index: u32) -> Result<Option<Link>> {
    let mut links = h.link().get().match_index(index).execute();
    match links.try_next().await {
        Ok(msg) => Ok(msg.map(link_from_message)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(Error::netlink(format!("looking up link {index}"))(e)),
    }
}

pub async fn all_links(h: &Handle) -> Result<Vec<Link>> {
    let mut stream = h.link().get().execute();
    let mut out = Vec::new();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(Error::netlink("listing links"))?
    {
        out.push(link_from_message(msg));
    }
    Ok(out)
}

/// Every link of the namespace with its kind.
pub async fn all_interfaces(h: &Handle) -> Result<Vec<Interface>> {
    let mut stream = h.link().get().execute();
    let mut out = Vec::new();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(Error::netlink("listing links"))?
    {
        let framing = Framing::of(msg.header.link_layer_type);
        let kind = msg.attributes.iter().find_map(|attr| match attr {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
                LinkInfo::Kind(kind) => Some(kind.to_string()),
                _ => None,
            }),
            _ => None,
        });
        out.push(Interface {
            link: link_from_message(msg),
            kind,
            framing,
        });
    }
    Ok(out)
}

/// A nudge for each link change (added, removed, renamed, up or down, enslaved) in the
/// current namespace, from a netlink socket of its own subscribed to link events. Ends when
/// that socket fails.
pub fn link_changes() -> Result<impl futures::Stream<Item = ()> + Unpin> {
    changes(
        &[rtnetlink::MulticastGroup::Link],
        "subscribing to link events",
    )
}

/// A nudge for each change of the node's interfaces: links (added, removed, renamed, up or
/// down, enslaved) and IPv4 and IPv6 addresses, from one netlink socket of its own
/// subscribed to all three. Ends when that socket fails.
pub fn interface_changes() -> Result<impl futures::Stream<Item = ()> + Unpin> {
    changes(
        &[
            rtnetlink::MulticastGroup::Link,
            rtnetlink::MulticastGroup::Ipv4Ifaddr,
            rtnetlink::MulticastGroup::Ipv6Ifaddr,
        ],
        "subscribing to link and address events",
    )
}

/// A nudge for each message of `groups`, from a netlink socket of its own; the socket's
/// task ends once the stream is dropped (its handle is dropped here already).
fn changes(
    groups: &[rtnetlink::MulticastGroup],
    what: &'static str,
) -> Result<impl futures::Stream<Item = ()> + Unpin> {
    let (connection, _, messages) =
        rtnetlink::new_multicast_connection(groups).map_err(Error::io(what))?;
    tokio::spawn(connection);
    Ok(futures::StreamExt::map(messages, |_| ()))
}

pub async fn create_bridge(h: &Handle, name: &str, mtu: u32) -> Result<()> {
    h.link()
        .add(LinkBridge::new(name).mtu(mtu).build())
        .execute()
        .await
        .map_err(Error::netlink(format!("creating bridge {name}")))
}

/// Creates a veth pair; both ends start in the current namespace, down.
pub async fn create_veth(h: &Handle, name: &str, peer: &str, mtu: u32) -> Result<()> {
    h.link()
        .add(LinkVeth::new(name, peer).mtu(mtu).build())
        .execute()
        .await
        .map_err(Error::netlink(format!("creating veth pair {name}/{peer}")))
}

pub async fn delete_link(h: &Handle, index: u32) -> Result<()> {
    match h.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::netlink(format!("deleting link {index}"))(e)),
    }
}

async fn set_link(h: &Handle, msg: LinkMessage, what: String) -> Result<()> {
    h.link()
        .set(msg)
        .execute()
        .await
        .map_err(Error::netlink(what))
}

pub async fn set_up(h: &Handle, index: u32) -> Result<()> {
    set_link(
        h,
        LinkUnspec::new_with_index(index).up().build(),
        format!("setting link {index} up"),
    )
    .await
}

pub async fn set_mac(h: &Handle, index: u32, mac: [u8; 6]) -> Result<()> {
    set_link(
        h,
        LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build(),
        format!("setting MAC of link {index}"),
    )
    .await
}

pub async fn set_name(h: &Handle, index: u32, name: &str) -> Result<()> {
    set_link(
        h,
        LinkUnspec::new_with_index(index).name(name).build(),
        format!("renaming link {index} to {name}"),
    )
    .await
}

pub async fn set_controller(h: &Handle, index: u32, bridge: u32) -> Result<()> {
    set_link(
        h,
        LinkUnspec::new_with_index(index).controller(bridge).build(),
        format!("attaching link {index} to bridge {bridge}"),
    )
    .await
}

/// Turns a bridge port's hairpin mode on or off (IFLA_BRPORT_MODE): whether the bridge may
/// send a frame back out of the port it came in by.
pub async fn set_hairpin(h: &Handle, index: u32, on: bool) -> Result<()> {
    // A bridge port's settings go in RTM_NEWLINK, which `set_port` sends.
    h.link()
        .set_port(LinkBridgePort::new(index).hairpin(on).build())
        .execute()
        .await
        .map_err(Error::netlink(format!(
            "setting hairpin mode of link {index}"
        )))
}

/// Moves a link into the network namespace of `netns`.
pub async fn move_to_netns(h: &Handle, index: u32, netns: &std::fs::File) -> Result<()> {
    set_link(
        h,
        LinkUnspec::new_with_index(index)
            .setns_by_fd(netns.as_raw_fd())
            .build(),
        format!("moving link {index} to another namespace"),
    )
    .await
}

pub async fn add_address(h: &Handle, index: u32, net: Ipv4Net) -> Result<()> {
    h.address()
        .add(index, net.addr().into(), net.prefix_len())
        .execute()
        .await
        .map_err(Error::netlink(format!(
            "adding address {net} to link {index}"
        )))
}

/// Adds an IPv6 address without duplicate address detection (`nodad`): the agent hands
/// out the addresses of its subnets, and a tentative address would hold traffic back for
/// the second or so DAD takes.
pub async fn add_address_v6(h: &Handle, index: u32, net: Ipv6Net) -> Result<()> {
    let mut request = h.address().add(index, net.addr().into(), net.prefix_len());
    request
        .message_mut()
        .attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    request.execute().await.map_err(Error::netlink(format!(
        "adding address {net} to link {index}"
    )))
}

/// Adds the IPv6 default route via `gateway`, replacing one that is already there.
pub async fn set_default_route_v6(h: &Handle, gateway: Ipv6Addr) -> Result<()> {
    let route = RouteMessageBuilder::<Ipv6Addr>::new()
        .gateway(gateway)
        .build();
    replace_route(
        h,
        route,
        format!("setting the IPv6 default route via {gateway}"),
    )
    .await
}

/// Removes the IPv6 default route, if any.
pub async fn delete_default_route_v6(h: &Handle) -> Result<()> {
    let route = RouteMessageBuilder::<Ipv6Addr>::new().build();
    delete_route_if_present(h, route, "removing the IPv6 default route").await
}

/// Adds the default route via `gateway`, replacing one that is already there.
pub async fn set_default_route(h: &Handle, gateway: Ipv4Addr) -> Result<()> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .build();
    replace_route(h, route, format!("setting the default route via {gateway}")).await
}

/// Adds the route the kernel makes for an address's prefix (`subnet` on link `index`, from
/// `source`: `proto kernel scope link src SOURCE`), as it made it, so that the kernel also
/// takes it away with the address.
pub async fn add_prefix_route(
    h: &Handle,
    subnet: Ipv4Net,
    index: u32,
    source: Ipv4Addr,
) -> Result<()> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(subnet.network(), subnet.prefix_len())
        .output_interface(index)
        .pref_source(source)
        .protocol(RouteProtocol::Kernel)
        .scope(RouteScope::Link)
        .build();
    h.route()
        .add(route)
        .execute()
        .await
        .map_err(Error::netlink(format!(
            "adding the route to {subnet} on link {index}"
        )))
}

/// Removes the default route, if any.
pub async fn delete_default_route(h: &Handle) -> Result<()> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new().build();
    delete_route_if_present(h, route, "removing the default route").await
}

/// Adds `route`, replacing one with the same key (`ip route replace`).
async fn replace_route(h: &Handle, route: RouteMessage, what: String) -> Result<()> {
    h.route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(Error::netlink(what))
}

/// Removes `route`; one that is not there (ESRCH) counts as removed.
async fn delete_route_if_present(h: &Handle, route: RouteMessage, what: &str) -> Result<()> {
    match h.route().del(route).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ESRCH => Ok(()),
        Err(e) => Err(Error::netlink(what)(e)),
    }
}

pub async fn set_mtu(h: &Handle, index: u32, mtu: u32) -> Result<()> {
    let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
    set_link(h, msg, format!("setting MTU of link {index}")).await
}

/// An IPv4 route of the main table: destination and output interface.
#[derive(Clone, Debug)]
pub struct Route {
    pub destination: Ipv4Net,
    pub oif: Option<u32>,
}

pub async fn ipv4_routes(h: &Handle) -> Result<Vec<Route>> {
    let mut stream = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut routes = Vec::new();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(Error::netlink("listing routes"))?
    {
        let mut table = u32::from(msg.header.table);
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let mut oif = None;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        if table != RT_TABLE_MAIN {
            continue;
        }
        if let Ok(destination) = Ipv4Net::new(dst, msg.header.destination_prefix_length) {
            routes.push(Route { destination, oif });
        }
    }
    Ok(routes)
}

/// The IPv4 addresses of the namespace, with their interface.
pub async fn ipv4_addresses(h: &Handle) -> Result<Vec<(u32, Ipv4Net)>> {
    let mut stream = h.address().get().execute();
    let mut out = Vec::new();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(Error::netlink("listing addresses"))?
    {
        if msg.header.family != AddressFamily::Inet {
            continue;
        }
        for attr in &msg.attributes {
            if let AddressAttribute::Local(std::net::IpAddr::V4(ip)) = attr
                && let Ok(net) = Ipv4Net::new(*ip, msg.header.prefix_len)
            {
                out.push((msg.header.index, net));
            }
        }
    }
    Ok(out)
}

/// The IPv6 addresses of the namespace that are neither loopback nor link-local, with
/// their interface, in the kernel's order. IPv6 addresses carry `IFA_ADDRESS` only.
pub async fn ipv6_addresses(h: &Handle) -> Result<Vec<(u32, Ipv6Net)>> {
    let mut stream = h.address().get().execute();
    let mut out = Vec::new();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(Error::netlink("listing addresses"))?
    {
        if msg.header.family != AddressFamily::Inet6 {
            continue;
        }
        for attr in &msg.attributes {
            if let AddressAttribute::Address(std::net::IpAddr::V6(ip)) = attr
                && !ip.is_loopback()
                && !ip.is_unicast_link_local()
                && let Ok(net) = Ipv6Net::new(*ip, msg.header.prefix_len)
            {
                out.push((msg.header.index, net));
            }
        }
    }
    Ok(out)
}

/// A nudge for each IPv4 address change (RTM_NEWADDR and RTM_DELADDR of the
/// RTNLGRP_IPV4_IFADDR group) in the current namespace, from a netlink socket of its own.
/// What changed is not told: the caller reads the addresses again, which also covers
/// changes whose announcement was lost. Ends when that socket fails.
pub fn address_changes() -> Result<impl futures::Stream<Item = ()> + Unpin> {
    changes(
        &[rtnetlink::MulticastGroup::Ipv4Ifaddr],
        "subscribing to address changes",
    )
}

/// Turns GRO on for `ifname` (ethtool `ETHTOOL_SGRO`). A veth end that receives frames
/// redirected by native XDP needs NAPI, which GRO enables; without it such frames vanish
/// without a counter (shared/reference/kernel-facts.md).
pub fn enable_gro(ifname: &str) -> Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_SGRO: u32 = 0x2c;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_SGRO,
        data: 1,
    };
    // SAFETY: all-zero is a valid ifreq.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if ifname.len() >= ifr.ifr_name.len() {
        return Err(Error::InvalidArgument(format!(
            "interface name {ifname} is too long"
        )));
    }
    for (dst, src) in ifr.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::io("socket for ethtool")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `ifr` points at `value`, both live across the call.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut ifr) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the descriptor we opened.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(Error::io(format!("enabling GRO on {ifname}"))(err));
    }
    Ok(())
}
