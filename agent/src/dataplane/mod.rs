//! The packet-processing backend behind the agent. The agent decides *what* (endpoints,
//! published ports, networks' policy); a `Dataplane` decides *how*. `ebpf` is the fast path;
//! `iptables` reproduces Docker's rules, for comparison and as the reference behaviour.
//!
//! What the agent hands a backend carries everything the backend needs (an endpoint's bridge,
//! a network's bridge and options), so that no backend asks the kernel for state the agent
//! already knows. Beyond attaching endpoints and publishing ports, a backend declares what
//! it does in its [`Capabilities`]; the service holds it through [`Backend`], which checks
//! them once at start and calls only what the backend declared.

mod backend;
pub mod ebpf;
pub mod flow_gc;
pub mod flows;
pub mod iptables;
pub mod migrate;
pub mod uplinks;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

pub use backend::Backend;

use crate::{
    Error, Result,
    model::{
        FilterRecord, FlowInfo, FlowTablesInfo, MonitorEvent, PortBinding, ProgramInfo,
        PublishedPort, RepairKind, StatCounter, UplinkInfo,
    },
};

/// A container's attachment as the dataplane sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The container's IPv4 address; `None` on an IPv6-only network, where a backend
    /// programs nothing IPv4 for the endpoint.
    pub container_ip: Option<Ipv4Addr>,
    pub container_mac: [u8; 6],
    /// The node-side end of the veth pair.
    pub host_veth: String,
    pub host_veth_ifindex: u32,
    pub host_veth_mac: [u8; 6],
    /// The bridge of the endpoint's network, which the veth is enslaved to.
    pub bridge: String,
    /// The IPv4 gateway of the endpoint's network (`None` on an IPv6-only network).
    pub gateway: Option<Ipv4Addr>,
    /// The container's IPv6 address, on a network with IPv6 enabled.
    pub container_ipv6: Option<Ipv6Addr>,
    /// The IPv6 gateway of the endpoint's network (on its bridge), if it has IPv6.
    pub gateway_ipv6: Option<Ipv6Addr>,
}

/// Hits of one filter rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterHits {
    pub packets: u64,
    pub bytes: u64,
}

/// A bridge network as the dataplane's policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// A number naming the network, unique among the networks.
    pub index: u32,
    /// The network's bridge, which holds its gateway address.
    pub bridge: String,
    /// The network's IPv4 subnet; `None` on an IPv6-only network.
    pub subnet: Option<ipnet::Ipv4Net>,
    /// Containers on the network may talk to each other.
    pub icc: bool,
    /// No way out.
    pub internal: bool,
    pub masquerade: bool,
    /// The network's IPv4 gateway address (on its bridge unless `inhibit_ipv4` or
    /// `isolated`); `None` on an IPv6-only network.
    pub gateway: Option<Ipv4Addr>,
    /// What the outside may reach at the containers' own IPv4 addresses (the IPv4
    /// gateway mode's).
    pub direct_access: DirectAccess,
    /// Interfaces from which the published container ports may be reached at the
    /// containers' own addresses even when the family's direct access is
    /// [`DirectAccess::None`].
    pub trusted_interfaces: Vec<String>,
    /// The network's IPv6 subnet, when IPv6 is enabled on it.
    pub subnet_ipv6: Option<ipnet::Ipv6Net>,
    /// The network's IPv6 gateway address (on its bridge).
    pub gateway_ipv6: Option<Ipv6Addr>,
    /// Outgoing IPv6 traffic leaves with the node's IPv6 address (Docker 27's ip6tables
    /// MASQUERADE); off, the IPv6 subnet is routed as it is.
    pub masquerade_ipv6: bool,
    /// What the outside may reach at the containers' own IPv6 addresses: the IPv6 gateway
    /// mode's, as Docker 28 applies each family's mode to that family.
    pub direct_access_ipv6: DirectAccess,
}

/// What frames from outside a network's bridge may reach at its containers' own addresses
/// (not through published host ports), from Docker 28's gateway modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectAccess {
    /// Nothing (`nat`, Docker's raw-table drop; internal networks).
    None,
    /// Published container ports and the replies of flows the containers opened
    /// (`nat` with `--allow-direct-routing`).
    Published,
    /// Published container ports, replies, and ICMP (`routed`).
    PublishedAndIcmp,
    /// Every port (`nat-unprotected`).
    Any,
}

/// What a `--link` allows through `icc=false`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkRule {
    /// The bridge of the network the two containers share.
    pub bridge: String,
    pub from: IpAddr,
    pub to: IpAddr,
    pub port: u16,
    pub proto: crate::model::Proto,
}

/// What the agent's records say a backend holds, for [`Dataplane::repair`] to hold the node
/// against.
pub struct Intended<'a> {
    /// The node's addresses, with the interface of each (what `set_node_addresses` got
    /// last).
    pub node_addresses: &'a [(u32, IpAddr)],
    /// The cgroup of the socket programs.
    pub cgroup: &'a Path,
    /// The made endpoints whose node-side veth exists.
    pub endpoints: &'a [Endpoint],
    pub published: &'a [(Endpoint, PortBinding)],
    pub networks: &'a [NetworkPolicy],
    pub filters: &'a [FilterRecord],
    pub links: &'a [LinkRule],
}

/// One piece of drift a backend put back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repaired {
    pub kind: RepairKind,
    /// What was repaired, e.g. `TC program on veth1234567`.
    pub what: String,
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

/// What a backend does beyond attaching endpoints and publishing ports, and what it needs
/// of the bridge ports. The service calls an optional method of [`Dataplane`] only when the
/// backend declares the capability that goes with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Programs attached to the node-side veths ([`Dataplane::attach_endpoint`],
    /// [`Dataplane::retain_endpoints`]).
    pub endpoint_programs: bool,
    /// The bridge ports need hairpin mode: a container reaching its own published port is
    /// translated back out of the port it came in by.
    pub hairpin_ports: bool,
    /// Told the node's addresses ([`Dataplane::set_node_addresses`]) to recognise traffic for
    /// ports bound to `0.0.0.0`, rather than asking the kernel on each packet.
    pub node_addresses: bool,
    /// Masquerades with the source address and port range the agent gives
    /// ([`Dataplane::set_masquerade`]), rather than letting netfilter choose them.
    pub masquerade: bool,
    /// Isolation, icc and internal networks ([`Dataplane::set_networks`]); bridge networks
    /// need it, so the service refuses a backend without it.
    pub network_policy: bool,
    /// The `--link` allow-list through `icc=false` ([`Dataplane::set_links`]).
    pub links: bool,
    /// Source filters on published ports ([`Dataplane::set_filters`],
    /// [`Dataplane::filter_hits`]).
    pub source_filters: bool,
    /// Lists and forgets the translated flows ([`Dataplane::flow_lister`],
    /// [`Dataplane::flush_flows`]).
    pub flows: bool,
    /// Flow tables of its own, with sizes and a cleanup to report ([`Dataplane::flow_tables`]).
    pub flow_tables: bool,
    /// A feed of drop and new-flow events ([`Dataplane::subscribe`]).
    pub monitor_events: bool,
    /// IPv6 traffic: published ports on IPv6 node addresses, IPv6 masquerade, isolation,
    /// links and filters. Without it the service publishes and filters IPv4 only, and
    /// refuses an explicit IPv6 host address.
    pub ipv6: bool,
}

/// The answer of an optional method that its backend does not declare: the service checks
/// the capabilities first, so this is a fault of the agent, not of the request.
fn undeclared(what: &str, dataplane: &str) -> Error {
    Error::Dataplane {
        context: format!("{what} on the {dataplane} dataplane"),
        source: Box::new(std::io::Error::other(
            "not among the backend's capabilities",
        )),
    }
}

/// The dataplane backends' common interface. The methods with a default body are optional:
/// each belongs to one of the [`Capabilities`], and a backend implements those it declares.
pub trait Dataplane: Send + Sync {
    /// `ebpf` or `iptables`, as given to `--dataplane`.
    fn name(&self) -> &'static str;
    fn capabilities(&self) -> Capabilities;
    /// Stops handling a container's traffic and forgets its flows and published ports.
    fn detach_endpoint(&mut self, endpoint: &Endpoint) -> Result<()>;
    fn publish(&mut self, endpoint: &Endpoint, port: &PortBinding) -> Result<()>;
    fn unpublish(&mut self, port: &PortBinding) -> Result<()>;
    /// Makes the installed mappings exactly `wanted`: used when an agent starts over state
    /// that a previous agent left.
    fn sync_published(&mut self, wanted: &[(Endpoint, PortBinding)]) -> Result<()>;
    /// The installed mappings, read back from the dataplane.
    fn published(&self) -> Result<Vec<PublishedPort>>;
    fn stats(&self) -> Result<Vec<StatCounter>>;
    /// Stops the dataplane's background work (the dataplane itself stays in place for the
    /// next agent).
    fn shutdown(&mut self) {}
    /// Puts back what was changed under the agent since it set it up: detached programs,
    /// map entries or rules deleted or altered from outside. Each repair is pushed to
    /// `repaired` as it is made, so that a failure later in the pass loses none. Flow
    /// tables are state, not configuration: they are left as they are.
    fn repair(&mut self, intended: &Intended, repaired: &mut Vec<Repaired>) -> Result<()>;

    /// Starts handling traffic from a container's veth (`endpoint_programs`).
    fn attach_endpoint(&mut self, _endpoint: &Endpoint) -> Result<()> {
        Err(undeclared("attaching an endpoint", self.name()))
    }
    /// Drops the attachments of every node-side veth not named in `keep`: debris of a
    /// crash between attaching and recording a container (`endpoint_programs`).
    fn retain_endpoints(&mut self, _keep: &[String]) -> Result<()> {
        Err(undeclared("pruning endpoints", self.name()))
    }
    /// The node's own addresses, on which ports bound to `0.0.0.0` (IPv4 ones) and `::`
    /// (IPv6 ones) answer (`node_addresses`).
    fn set_node_addresses(&mut self, _addresses: &[(u32, IpAddr)]) -> Result<()> {
        Err(undeclared("node addresses", self.name()))
    }
    /// The source address of masqueraded traffic by the interface (index) it leaves by, an
    /// IPv4 and (with IPv6 addresses on it) an IPv6 one per interface (none for an interface
    /// and family: no masquerade out of it) and the port range (`None`: netfilter's choice)
    /// (`masquerade`). A source that goes ends the flows masqueraded
    /// with it, as MASQUERADE does when an address goes.
    fn set_masquerade(
        &mut self,
        _sources: &[(u32, IpAddr)],
        _ports: Option<(u16, u16)>,
    ) -> Result<()> {
        Err(undeclared("masquerade", self.name()))
    }
    /// Handles the traffic that arrives on exactly `uplinks` (published ports, masqueraded
    /// replies) and says how each is hooked. A backend whose rules match every interface
    /// (iptables) has nothing to do.
    fn set_uplinks(&mut self, uplinks: &[uplinks::UplinkLink]) -> Vec<UplinkInfo> {
        uplinks
            .iter()
            .map(|uplink| UplinkInfo {
                name: uplink.name.clone(),
                hook: self.name().into(),
                error: None,
            })
            .collect()
    }
    /// Installs exactly `networks` for the isolation, icc and internal-network policy
    /// (`network_policy`).
    fn set_networks(&mut self, _networks: &[NetworkPolicy]) -> Result<()> {
        Err(undeclared("network policy", self.name()))
    }
    /// Installs exactly `links` as the `--link` allow-list (`links`).
    fn set_links(&mut self, _links: &[LinkRule]) -> Result<()> {
        Err(undeclared("links", self.name()))
    }
    /// Installs exactly `rules` as the source filters of published ports (`source_filters`).
    fn set_filters(&mut self, _rules: &[FilterRecord]) -> Result<()> {
        Err(undeclared("source filtering", self.name()))
    }
    /// Hits of a filter rule (`source_filters`).
    fn filter_hits(&self, _rule_id: u32) -> Result<FilterHits> {
        Err(undeclared("source filtering", self.name()))
    }
    /// A job that lists the translated flows, to run without the agent's lock: a table of
    /// many flows takes a while to read (`flows`).
    fn flow_lister(&self) -> Result<FlowLister> {
        Err(undeclared("listing flows", self.name()))
    }
    /// Forgets every translated flow; returns how many table entries were removed (`flows`).
    fn flush_flows(&mut self) -> Result<usize> {
        Err(undeclared("flushing flows", self.name()))
    }
    /// The flow tables' sizes, fill and memory and their cleanup's work (`flow_tables`).
    fn flow_tables(&self) -> Result<FlowTablesInfo> {
        Err(undeclared("flow tables", self.name()))
    }
    /// A feed of drop and new-flow events (`monitor_events`).
    fn subscribe(&self) -> Result<tokio::sync::broadcast::Receiver<MonitorEvent>> {
        Err(undeclared("monitor events", self.name()))
    }
    /// The BPF programs it loaded, with their verifier figures: none for a backend
    /// without programs.
    fn programs(&self) -> Result<Vec<ProgramInfo>> {
        Ok(Vec::new())
    }
}
