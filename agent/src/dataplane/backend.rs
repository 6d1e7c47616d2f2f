//! The service's hold on its dataplane: the backend with the capabilities it declared,
//! checked once when the agent starts, so that the service calls only what the backend does
//! and answers requests for the rest the same way whichever backend runs.

use std::net::IpAddr;

use rtnetlink::Handle;

use super::{
    Capabilities, Dataplane, Endpoint, FilterHits, FlowLister, Intended, LinkRule, NetworkPolicy,
    Repaired,
};
use crate::{
    Error, Result,
    config::Settings,
    model::{
        FilterRecord, FlowTablesInfo, MonitorEvent, PortBinding, ProgramInfo, PublishedPort,
        StatCounter,
    },
    netlink,
};

/// A request for something the running dataplane does not do.
fn unsupported(what: &str, dataplane: &str) -> Error {
    Error::InvalidArgument(format!(
        "{what} is not supported by the {dataplane} dataplane"
    ))
}

pub struct Backend {
    dataplane: Box<dyn Dataplane>,
    capabilities: Capabilities,
    /// For what the backend needs done to the bridge ports.
    handle: Handle,
}

impl Backend {
    /// Takes `dataplane` into service: refuses one that cannot keep bridge networks apart,
    /// and warns of the settings it does not follow.
    pub fn new(dataplane: Box<dyn Dataplane>, handle: Handle, settings: &Settings) -> Result<Self> {
        let capabilities = dataplane.capabilities();
        let name = dataplane.name();
        if !capabilities.network_policy {
            return Err(unsupported("network policy", name));
        }
        if !capabilities.masquerade && settings.masquerade_port_range.bounds().is_some() {
            tracing::warn!(
                dataplane = name,
                "--masquerade-port-range is ignored: netfilter chooses the masquerade's ports"
            );
        }
        if !capabilities.flow_tables
            && (settings.conntrack_max.is_some() || settings.nat_flows_max.is_some())
        {
            tracing::warn!(
                dataplane = name,
                "--conntrack-max and --nat-flows-max are ignored: the dataplane has no flow tables of its own"
            );
        }
        Ok(Backend {
            dataplane,
            capabilities,
            handle,
        })
    }

    pub fn name(&self) -> &'static str {
        self.dataplane.name()
    }

    /// Puts the endpoint's bridge port in hairpin mode if the backend needs it, and attaches
    /// the backend's programs to the veth if it has any.
    pub async fn attach_endpoint(&mut self, endpoint: &Endpoint) -> Result<()> {
        if self.capabilities.hairpin_ports {
            netlink::set_hairpin(&self.handle, endpoint.host_veth_ifindex, true).await?;
        }
        if self.capabilities.endpoint_programs {
            self.dataplane.attach_endpoint(endpoint)?;
        }
        Ok(())
    }

    pub fn retain_endpoints(&mut self, keep: &[String]) -> Result<()> {
        match self.capabilities.endpoint_programs {
            true => self.dataplane.retain_endpoints(keep),
            false => Ok(()),
        }
    }

    pub fn detach_endpoint(&mut self, endpoint: &Endpoint) -> Result<()> {
        self.dataplane.detach_endpoint(endpoint)
    }

    /// Whether the backend handles traffic of `ip`'s family: every backend does IPv4, and
    /// one without [`Capabilities::ipv6`] is handed nothing of IPv6.
    pub fn handles(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() || self.capabilities.ipv6
    }

    /// Whether the backend handles IPv6 traffic ([`Capabilities::ipv6`]).
    pub fn handles_ipv6(&self) -> bool {
        self.capabilities.ipv6
    }

    /// The service plans IPv6 bindings only for a backend that handles them; a binding of
    /// a family the backend does not handle is left out, as a filter or link of it is.
    pub fn publish(&mut self, endpoint: &Endpoint, port: &PortBinding) -> Result<()> {
        match self.handles(port.host_ip) {
            true => self.dataplane.publish(endpoint, port),
            false => Ok(()),
        }
    }

    pub fn unpublish(&mut self, port: &PortBinding) -> Result<()> {
        match self.handles(port.host_ip) {
            true => self.dataplane.unpublish(port),
            false => Ok(()),
        }
    }

    pub fn sync_published(&mut self, wanted: &[(Endpoint, PortBinding)]) -> Result<()> {
        let wanted = self.handled_bindings(wanted);
        self.dataplane.sync_published(&wanted)
    }

    fn handled_bindings(
        &self,
        bindings: &[(Endpoint, PortBinding)],
    ) -> Vec<(Endpoint, PortBinding)> {
        bindings
            .iter()
            .filter(|(_, port)| self.handles(port.host_ip))
            .cloned()
            .collect()
    }

    fn handled_links(&self, links: &[LinkRule]) -> Vec<LinkRule> {
        links
            .iter()
            .filter(|link| self.handles(link.from) && self.handles(link.to))
            .cloned()
            .collect()
    }

    fn handled_filters(&self, rules: &[FilterRecord]) -> Vec<FilterRecord> {
        rules
            .iter()
            .filter(|rule| self.handles(rule.source.addr()))
            .cloned()
            .collect()
    }

    fn handled_addresses(&self, addresses: &[(u32, IpAddr)]) -> Vec<(u32, IpAddr)> {
        addresses
            .iter()
            .filter(|(_, ip)| self.handles(*ip))
            .copied()
            .collect()
    }

    pub fn published(&self) -> Result<Vec<PublishedPort>> {
        self.dataplane.published()
    }

    pub fn stats(&self) -> Result<Vec<StatCounter>> {
        self.dataplane.stats()
    }

    /// A backend that recognises the node's addresses by itself is not told them.
    pub fn set_node_addresses(&mut self, addresses: &[(u32, IpAddr)]) -> Result<()> {
        match self.capabilities.node_addresses {
            true => self
                .dataplane
                .set_node_addresses(&self.handled_addresses(addresses)),
            false => Ok(()),
        }
    }

    /// A backend without the capability masquerades per network, as part of its policy.
    pub fn set_masquerade(
        &mut self,
        sources: &[(u32, IpAddr)],
        ports: Option<(u16, u16)>,
    ) -> Result<()> {
        match self.capabilities.masquerade {
            true => self
                .dataplane
                .set_masquerade(&self.handled_addresses(sources), ports),
            false => Ok(()),
        }
    }

    /// Checked at start: every backend in service has network policy.
    pub fn set_networks(&mut self, networks: &[NetworkPolicy]) -> Result<()> {
        self.dataplane.set_networks(networks)
    }

    pub fn set_links(&mut self, links: &[LinkRule]) -> Result<()> {
        let links = self.handled_links(links);
        match (self.capabilities.links, links.is_empty()) {
            (true, _) => self.dataplane.set_links(&links),
            (false, true) => Ok(()),
            (false, false) => Err(unsupported("links", self.name())),
        }
    }

    pub fn set_filters(&mut self, rules: &[FilterRecord]) -> Result<()> {
        let rules = self.handled_filters(rules);
        match (self.capabilities.source_filters, rules.is_empty()) {
            (true, _) => self.dataplane.set_filters(&rules),
            (false, true) => Ok(()),
            (false, false) => Err(unsupported("source filtering", self.name())),
        }
    }

    pub fn filter_hits(&self, rule_id: u32) -> Result<FilterHits> {
        match self.capabilities.source_filters {
            true => self.dataplane.filter_hits(rule_id),
            false => Ok(FilterHits::default()),
        }
    }

    pub fn flow_lister(&self) -> Result<FlowLister> {
        match self.capabilities.flows {
            true => self.dataplane.flow_lister(),
            false => Err(unsupported("listing flows", self.name())),
        }
    }

    /// Without flows of its own there is nothing to forget.
    pub fn flush_flows(&mut self) -> Result<usize> {
        match self.capabilities.flows {
            true => self.dataplane.flush_flows(),
            false => Ok(0),
        }
    }

    /// `None` for a backend without flow tables of its own.
    pub fn flow_tables(&self) -> Result<Option<FlowTablesInfo>> {
        match self.capabilities.flow_tables {
            true => self.dataplane.flow_tables().map(Some),
            false => Ok(None),
        }
    }

    pub fn set_uplinks(
        &mut self,
        uplinks: &[super::uplinks::UplinkLink],
    ) -> Vec<crate::model::UplinkInfo> {
        self.dataplane.set_uplinks(uplinks)
    }

    /// Empty for a backend without BPF programs.
    pub fn programs(&self) -> Result<Vec<ProgramInfo>> {
        self.dataplane.programs()
    }

    /// `None` for a backend without an event feed.
    pub fn subscribe(&self) -> Result<Option<tokio::sync::broadcast::Receiver<MonitorEvent>>> {
        match self.capabilities.monitor_events {
            true => self.dataplane.subscribe().map(Some),
            false => Ok(None),
        }
    }

    pub fn repair(&mut self, intended: &Intended, repaired: &mut Vec<Repaired>) -> Result<()> {
        let node_addresses = self.handled_addresses(intended.node_addresses);
        let published = self.handled_bindings(intended.published);
        let filters = self.handled_filters(intended.filters);
        let links = self.handled_links(intended.links);
        let handled = Intended {
            node_addresses: &node_addresses,
            published: &published,
            filters: &filters,
            links: &links,
            ..*intended
        };
        self.dataplane.repair(&handled, repaired)
    }

    pub fn shutdown(&mut self) {
        self.dataplane.shutdown();
    }
}
