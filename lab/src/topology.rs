//! The topology every lab user builds on: a node namespace (where the agent runs) joined to
//! a world namespace (remote hosts) by the uplink veth.
//!
//! ```text
//!   world netns                 node netns (agent runs here)            container netns
//!   wl0 198.51.100.2/24 <-veth-> up0 198.51.100.1/24   bpfbr0 <- vethXXX <-veth-> eth0
//! ```
//!
//! A world may serve several nodes (the bench joins one world to a node per dataplane): build
//! the namespaces yourself and [`Uplink::connect`] each node to the world.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Result;

use crate::netns::{Netns, TxOffload};

/// The node's uplink address in the default topology (TEST-NET-2).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The world's address on the default uplink.
pub const WORLD_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The node's IPv6 uplink address of a dual-stack topology ([`Topology::with_ipv6`]), from
/// the documentation prefix 2001:db8::/32.
pub const NODE_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// The world's IPv6 address on the uplink of a dual-stack topology.
pub const WORLD_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// The uplink's name on the node side: the agent's `--uplink`.
pub const UPLINK: &str = "up0";
/// The uplink's name on the world side.
pub const WORLD_LINK: &str = "wl0";

/// Which side routes through the other by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultRoute {
    /// The world reaches everything (the node's published ports, its containers) through the
    /// node: one world, one node.
    WorldViaNode,
    /// The node's default route leads into the world, as a real node's does: the world
    /// plays the internet, with hosts of its own (several nodes may share it).
    NodeViaWorld,
}

/// A veth pair between a node and the world, with an address on each end in one subnet.
#[derive(Clone, Debug)]
pub struct Uplink {
    pub node_link: String,
    pub world_link: String,
    pub node_ip: Ipv4Addr,
    pub world_ip: Ipv4Addr,
    pub prefix_len: u8,
    pub default_route: DefaultRoute,
    /// The world side's TX checksum offload. On by default, as a veth comes: frames from
    /// the world then reach the node with partial checksums (CHECKSUM_PARTIAL), as they do
    /// where the node is itself a container, which the agent handles by putting its uplink
    /// program at TC (`--uplink-hook auto`). Off, the world plays remote hosts whose frames
    /// arrive with complete checksums, as a real NIC delivers them, and XDP is safe.
    pub world_tx_offload: TxOffload,
    /// More addresses of the world (/32s on its end of the link): hosts on the internet.
    pub world_hosts: Vec<Ipv4Addr>,
}

impl Default for Uplink {
    /// up0 198.51.100.1/24 in the node, wl0 198.51.100.2/24 in the world, which routes
    /// through the node.
    fn default() -> Self {
        Uplink {
            node_link: UPLINK.into(),
            world_link: WORLD_LINK.into(),
            node_ip: NODE_IP,
            world_ip: WORLD_IP,
            prefix_len: 24,
            default_route: DefaultRoute::WorldViaNode,
            world_tx_offload: TxOffload::On,
            world_hosts: Vec::new(),
        }
    }
}

impl Uplink {
    /// An uplink in `node_ip`'s /24 with the default link names.
    pub fn new(node_ip: Ipv4Addr, world_ip: Ipv4Addr) -> Self {
        Uplink {
            node_ip,
            world_ip,
            ..Uplink::default()
        }
    }

    pub fn world_link(mut self, name: &str) -> Self {
        self.world_link = name.into();
        self
    }

    pub fn default_route(mut self, route: DefaultRoute) -> Self {
        self.default_route = route;
        self
    }

    pub fn world_tx_offload(mut self, offload: TxOffload) -> Self {
        self.world_tx_offload = offload;
        self
    }

    pub fn world_hosts(mut self, hosts: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        self.world_hosts.extend(hosts);
        self
    }

    /// An address in the uplink's subnet with the last byte `host`.
    pub fn host(&self, host: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.node_ip.octets();
        Ipv4Addr::new(a, b, c, host)
    }

    /// Creates the veth pair between `node` and `world` and configures both ends.
    pub fn connect(&self, node: &Netns, world: &Netns) -> Result<()> {
        let (node_link, world_link) = (self.node_link.as_str(), self.world_link.as_str());
        node.ip(&[
            "link",
            "add",
            node_link,
            "type",
            "veth",
            "peer",
            "name",
            world_link,
            "netns",
            &world.name,
        ])?;
        let prefix_len = self.prefix_len;
        node.ip(&[
            "addr",
            "add",
            &format!("{}/{prefix_len}", self.node_ip),
            "dev",
            node_link,
        ])?;
        world.ip(&[
            "addr",
            "add",
            &format!("{}/{prefix_len}", self.world_ip),
            "dev",
            world_link,
        ])?;
        node.ip(&["link", "set", node_link, "up"])?;
        world.ip(&["link", "set", world_link, "up"])?;
        world.set_tx_offload(world_link, self.world_tx_offload)?;
        if !self.world_hosts.is_empty() {
            let hosts: String = self
                .world_hosts
                .iter()
                .map(|host| format!("addr add {host}/32 dev {world_link}\n"))
                .collect();
            world.ip_batch(&hosts)?;
        }
        match self.default_route {
            DefaultRoute::WorldViaNode => {
                world.ip(&["route", "add", "default", "via", &self.node_ip.to_string()])?
            }
            DefaultRoute::NodeViaWorld => {
                node.ip(&["route", "add", "default", "via", &self.world_ip.to_string()])?
            }
        };
        Ok(())
    }
}

/// One node and its world, joined by an [`Uplink`]; both namespaces go on drop.
pub struct Topology {
    pub node: Netns,
    pub world: Netns,
    pub uplink: Uplink,
}

impl Topology {
    /// The default topology under [`unique`](crate::netns::unique) names.
    pub fn new() -> Result<Self> {
        Topology::builder().build()
    }

    /// Makes the uplink dual-stack: [`NODE_IPV6`] and [`WORLD_IPV6`] (/64, without
    /// duplicate address detection, so that they are usable at once) and, when the world
    /// routes through the node, its IPv6 default route too.
    pub fn with_ipv6(self) -> Result<Self> {
        let (node_link, world_link) = (&self.uplink.node_link, &self.uplink.world_link);
        self.node.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{NODE_IPV6}/64"),
            "dev",
            node_link,
            "nodad",
        ])?;
        self.world.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{WORLD_IPV6}/64"),
            "dev",
            world_link,
            "nodad",
        ])?;
        if self.uplink.default_route == DefaultRoute::WorldViaNode {
            self.world.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &NODE_IPV6.to_string(),
            ])?;
        }
        Ok(self)
    }

    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }
}

/// Names and uplink of a [`Topology`]; everything has a default.
#[derive(Default)]
pub struct TopologyBuilder {
    /// `(node, world)`: fixed namespace names instead of unique ones.
    names: Option<(String, String)>,
    uplink: Uplink,
}

impl TopologyBuilder {
    /// Fixed namespace names (for the demo, whose names a user types).
    pub fn names(mut self, node: &str, world: &str) -> Self {
        self.names = Some((node.into(), world.into()));
        self
    }

    pub fn uplink(mut self, uplink: Uplink) -> Self {
        self.uplink = uplink;
        self
    }

    pub fn world_tx_offload(mut self, offload: TxOffload) -> Self {
        self.uplink.world_tx_offload = offload;
        self
    }

    pub fn world_hosts(mut self, hosts: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        self.uplink.world_hosts.extend(hosts);
        self
    }

    pub fn build(self) -> Result<Topology> {
        let (node, world) = match &self.names {
            Some((node, world)) => (Netns::named(node)?, Netns::named(world)?),
            None => (Netns::new("node")?, Netns::new("world")?),
        };
        self.uplink.connect(&node, &world)?;
        Ok(Topology {
            node,
            world,
            uplink: self.uplink,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_in_the_uplink_subnet() {
        let uplink = Uplink::new(Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(203, 0, 113, 2));
        assert_eq!(uplink.host(10), Ipv4Addr::new(203, 0, 113, 10));
        assert_eq!(uplink.node_link, UPLINK);
        assert_eq!(uplink.world_tx_offload, TxOffload::On);
    }
}
