//! The packet-processing backend behind the agent. The agent decides *what* (endpoints,
//! published ports); a `Dataplane` decides *how*. `ebpf` is the fast path; an `iptables`
//! backend that reproduces Docker's rules for comparison comes with the benchmark work.

pub mod ebpf;
pub mod flow_gc;
pub mod flows;
pub mod iptables;

use std::net::Ipv4Addr;

use crate::{
    Error, Result,
    model::{
        FilterRecord, FlowInfo, FlowTablesInfo, MonitorEvent, PortBinding, PublishedPort,
        StatCounter,
    },
};

/// A container's attachment as the dataplane sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub container_ip: Ipv4Addr,
    pub container_mac: [u8; 6],
    /// The node-side end of the veth pair.
    pub host_veth: String,
    pub host_veth_ifindex: u32,
    pub host_veth_mac: [u8; 6],
    /// The gateway of the endpoint's network.
    pub gateway: Ipv4Addr,
}

/// Hits of one filter rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterHits {
    pub packets: u64,
    pub bytes: u64,
}

/// A bridge network as the dataplane's policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// A number naming the network, unique among the networks.
    pub index: u32,
    pub subnet: ipnet::Ipv4Net,
    /// Containers on the network may talk to each other.
    pub icc: bool,
    /// No way out.
    pub internal: bool,
    pub masquerade: bool,
}

/// What a `--link` allows through `icc=false`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkRule {
    pub from: Ipv4Addr,
    pub to: Ipv4Addr,
    pub port: u16,
    pub proto: crate::model::Proto,
}

/// Lists the translated flows (see [`Dataplane::flow_lister`]).
pub type FlowLister = Box<dyn FnOnce() -> Result<Vec<FlowInfo>> + Send>;

/// Idle times after which translated flows are forgotten, by protocol and state (as
/// nf_conntrack's timeouts). ICMP flows follow the UDP ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTimeouts {
    /// TCP flows answered by the other side.
    pub tcp_established: std::time::Duration,
    /// TCP flows not yet answered (a SYN sent).
    pub tcp_unreplied: std::time::Duration,
    /// TCP flows after a FIN.
    pub tcp_closing: std::time::Duration,
    /// UDP and ICMP flows seen one way only.
    pub udp_unreplied: std::time::Duration,
    /// UDP and ICMP flows seen both ways.
    pub udp_stream: std::time::Duration,
}

fn unsupported(what: &str, dataplane: &str) -> Error {
    Error::InvalidArgument(format!(
        "{what} is not supported by the {dataplane} dataplane"
    ))
}

/// The dataplane backends' common interface.
pub trait Dataplane: Send + Sync {
    /// `ebpf` or `iptables`, as given to `--dataplane`.
    fn name(&self) -> &'static str;
    /// The node's own addresses, on which ports bound to `0.0.0.0` answer.
    fn set_node_addresses(&mut self, addresses: &[(u32, Ipv4Addr)]) -> Result<()>;
    /// Starts handling traffic from a container's veth.
    fn attach_endpoint(&mut self, endpoint: &Endpoint) -> Result<()>;
    /// Drops the attachments of every node-side veth not named in `keep`: debris of a
    /// crash between attaching and recording a container.
    fn retain_endpoints(&mut self, keep: &[String]) -> Result<()>;
    /// Stops handling a container's traffic and forgets its flows.
    fn detach_endpoint(&mut self, endpoint: &Endpoint) -> Result<()>;
    fn publish(&mut self, endpoint: &Endpoint, port: &PortBinding) -> Result<()>;
    fn unpublish(&mut self, port: &PortBinding) -> Result<()>;
    /// Makes the installed mappings exactly `wanted`: used when an agent starts over state
    /// that a previous agent left.
    fn sync_published(&mut self, wanted: &[(Endpoint, PortBinding)]) -> Result<()>;
    /// The installed mappings, read back from the dataplane.
    fn published(&self) -> Result<Vec<PublishedPort>>;
    fn stats(&self) -> Result<Vec<StatCounter>>;
    /// Installs exactly `networks` for the isolation, icc and internal-network policy.
    fn set_networks(&mut self, networks: &[NetworkPolicy]) -> Result<()> {
        match networks.is_empty() {
            true => Ok(()),
            false => Err(unsupported("network policy", self.name())),
        }
    }
    /// A feed of drop and new-flow events, if the dataplane has one.
    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<MonitorEvent>> {
        None
    }
    /// Installs exactly `links` as the `--link` allow-list.
    fn set_links(&mut self, links: &[LinkRule]) -> Result<()> {
        match links.is_empty() {
            true => Ok(()),
            false => Err(unsupported("links", self.name())),
        }
    }
    /// The source address (`None`: no masquerade) and port range (`None`: netfilter's
    /// choice) of masqueraded traffic.
    fn set_masquerade(
        &mut self,
        source: Option<Ipv4Addr>,
        _ports: Option<(u16, u16)>,
    ) -> Result<()> {
        match source {
            None => Ok(()),
            Some(_) => Err(unsupported("masquerade", self.name())),
        }
    }
    /// Installs exactly `rules` as the source filters of published ports.
    fn set_filters(&mut self, rules: &[FilterRecord]) -> Result<()> {
        match rules.is_empty() {
            true => Ok(()),
            false => Err(unsupported("source filtering", self.name())),
        }
    }
    /// Hits of a filter rule.
    fn filter_hits(&self, _rule_id: u32) -> Result<FilterHits> {
        Ok(FilterHits::default())
    }
    /// A job that lists the translated flows, to run without the agent's lock: a table of
    /// many flows takes a while to read.
    fn flow_lister(&self) -> Result<FlowLister> {
        Err(unsupported("listing flows", self.name()))
    }
    /// Forgets every translated flow; returns how many table entries were removed.
    fn flush_flows(&mut self) -> Result<usize> {
        Ok(0)
    }
    /// The flow tables' sizes, fill and memory and their cleanup's work, if the dataplane
    /// keeps flow tables of its own.
    fn flow_tables(&self) -> Result<Option<FlowTablesInfo>> {
        Ok(None)
    }
    /// Stops the dataplane's background work (the dataplane itself stays in place for the
    /// next agent).
    fn shutdown(&mut self) {}
}
