//! The agent's operations on networks, containers and their endpoints. Every operation
//! either completes or undoes what it did; records are written before and after the work
//! (`pending` while it runs), so that a crash at any point is rolled back on the next start
//! and nothing leaks.

mod addresses;
mod cni;
mod containers;
mod docker;
mod docker_ipam;
mod drivers;
mod endpoints;
mod filters;
mod networks;
mod plan;
mod ports;
mod reconcile;
mod repair;

pub use addresses::follow_node_addresses;
pub use docker_ipam::ADDRESS_SPACES;
pub use repair::{REPAIR_INTERVAL, repair_drift};

use std::{collections::BTreeMap, fs, net::IpAddr, path::PathBuf};

use rtnetlink::Handle;

use crate::{
    Error, Result,
    config::Settings,
    dataplane::{Backend, Dataplane, Endpoint, LinkRule},
    dns,
    faults::{self, CrashPoint},
    model::{
        ContainerRecord, EndpointRecord, Info, NetworkMode, NetworkRecord, PortBinding,
        PublishedPort, Repairs, StatCounter, UplinkInfo, random_id,
    },
    netlink, netns,
    store::{State, Store},
};

pub const DEFAULT_NETWORK: &str = "bridge";
pub const DEFAULT_BRIDGE: &str = "bpfbr0";
pub const HOST_NETWORK: &str = "host";
pub const NONE_NETWORK: &str = "none";
/// Bridges the agent names itself start with this, so that on start it can tell its own
/// leftovers from other bridges on the node.
pub const BRIDGE_PREFIX: &str = "bpfbr";
/// The container end of a new veth is named with this prefix while it is still in the
/// node's namespace.
const VETH_PEER_PREFIX: &str = "bpfc";

pub struct Service {
    handle: Handle,
    store: Store,
    state: State,
    dataplane: Backend,
    dns: dns::Resolver,
    settings: Settings,
    uplink: String,
    uplink_mtu: u32,
    /// Drift repaired since the agent started, by kind.
    repairs: Repairs,
    /// Why each container (by id) whose network the last repair pass could not mend is
    /// broken; shown as its `State.Error`.
    repair_failures: BTreeMap<String, String>,
    /// Why each other thing (a bridge, a sysctl, the dataplane) the last repair pass could
    /// not mend is broken, by what it is; shown in `info`'s `Unrepaired`.
    unrepaired: BTreeMap<String, String>,
    /// `monitor`'s feed: the dataplane's events and the repairs.
    events: tokio::sync::broadcast::Sender<crate::model::MonitorEvent>,
    /// What the dataplane was last told of the node's addresses; `None` before the first
    /// time.
    node_addresses: Option<addresses::NodeAddresses>,
    /// The uplinks, as the dataplane last hooked them.
    uplinks: Vec<UplinkInfo>,
    /// The 40-bit global id of the agent's unique local IPv6 /48 (RFC 4193), from which
    /// IPv6 subnets come when no IPv6 pool is configured: random once, then kept.
    ula_global_id: u64,
}

const ULA_GLOBAL_ID: &str = "ula-global-id";

/// The ULA global id the store keeps, made (random) and stored the first time.
fn ula_global_id(store: &Store, state: &mut crate::store::State) -> Result<u64> {
    if let Some(id) = state.meta.get(ULA_GLOBAL_ID).and_then(|v| v.parse().ok()) {
        return Ok(id);
    }
    let id = rand::random::<u64>() & 0xff_ffff_ffff;
    store.put_meta(ULA_GLOBAL_ID, &id.to_string())?;
    state.meta.insert(ULA_GLOBAL_ID.into(), id.to_string());
    Ok(id)
}

/// The interface of the default route, the usual uplink.
pub async fn default_route_interface(handle: &Handle) -> Result<String> {
    let routes = netlink::ipv4_routes(handle).await?;
    let oif = routes
        .iter()
        .find(|r| r.destination.prefix_len() == 0)
        .and_then(|r| r.oif)
        .ok_or_else(|| Error::InvalidArgument("no default route: give --uplink".into()))?;
    let link = netlink::link_by_index(handle, oif).await?;
    link.map(|l| l.name)
        .ok_or_else(|| Error::NotFound(format!("default route interface {oif} vanished")))
}

/// Docker's forwarding switch, for the agent's own namespace (/proc/sys/net is per netns).
fn enable_ip_forward() -> Result<()> {
    fs::write("/proc/sys/net/ipv4/ip_forward", b"1")
        .map_err(Error::io("enabling net.ipv4.ip_forward"))
}

/// IPv6 forwarding (net.ipv6.conf.all.forwarding) in the agent's own namespace, turned on
/// as dockerd turns it on: when a network with IPv6 is made or found (not at start, since
/// forwarding makes the node's interfaces ignore router advertisements).
fn enable_ipv6_forwarding() -> Result<()> {
    fs::write("/proc/sys/net/ipv6/conf/all/forwarding", b"1")
        .map_err(Error::io("enabling net.ipv6.conf.all.forwarding"))
}

fn ip_forward_enabled() -> bool {
    fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "1")
}

/// The node's own namespace as a path, for host-mode containers' `SandboxKey`.
fn node_netns() -> PathBuf {
    PathBuf::from(format!("/proc/{}/ns/net", std::process::id()))
}

/// Where names that are not containers' go: `--dns`, else the node's resolv.conf.
fn dns_upstreams(settings: &Settings) -> Vec<std::net::SocketAddr> {
    match &settings.dns {
        Some(servers) => servers.clone(),
        None => fs::read_to_string("/etc/resolv.conf")
            .map(|text| dns::Resolver::upstreams_from_resolv_conf(&text))
            .unwrap_or_default(),
    }
}

impl Service {
    /// Brings the node to the saved state (see [`reconcile`]) and hooks the uplinks.
    /// `make_dataplane` gets the first uplink's name (the first `--uplink`, else
    /// the default route's interface), whose MTU is the default one.
    pub async fn start(
        handle: Handle,
        settings: Settings,
        make_dataplane: impl FnOnce(&str) -> Result<Box<dyn Dataplane>>,
    ) -> Result<Self> {
        // First: the containers' DNS servers answer again from here on.
        let dns = dns::Resolver::new(dns_upstreams(&settings));
        dns.keep_sockets_in(&settings.state_dir);
        let uplink = match settings.uplink.first() {
            Some(u) => u.clone(),
            None => match default_route_interface(&handle).await {
                Ok(name) => name,
                // A node without a default route (its world reaches it, not the other
                // way round) still has interfaces.
                Err(e) => addresses::first_uplink_candidate(&handle).await?.ok_or(e)?,
            },
        };
        let uplink_link = netlink::link_by_name(&handle, &uplink)
            .await?
            .ok_or_else(|| Error::NotFound(format!("uplink interface {uplink} does not exist")))?;
        let store = Store::open(&settings.state_dir)?;
        let mut state = store.load()?;
        let ula_global_id = ula_global_id(&store, &mut state)?;
        if settings.ip_forward {
            enable_ip_forward()?;
        }
        let dataplane = Backend::new(make_dataplane(&uplink)?, handle.clone(), &settings)?;
        let events = repair::event_feed(&dataplane)?;
        let mut service = Service {
            handle,
            store,
            state,
            dataplane,
            dns,
            settings,
            uplink,
            uplink_mtu: uplink_link.mtu,
            repairs: Repairs::default(),
            repair_failures: BTreeMap::new(),
            unrepaired: BTreeMap::new(),
            events,
            node_addresses: None,
            uplinks: Vec::new(),
            ula_global_id,
        };
        service.reconcile().await?;
        service.refresh_uplinks().await?;
        service.dns.release_unclaimed();
        Ok(service)
    }

    pub fn info(&self) -> Result<Info> {
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Info {
            version: env!("CARGO_PKG_VERSION").into(),
            kernel_version: kernel,
            dataplane: self.dataplane.name().into(),
            dataplane_ipv6: self.dataplane.handles_ipv6(),
            uplink: self.uplink.clone(),
            uplinks: self.uplinks.clone(),
            settings: self.settings.clone(),
            ip_forward_enabled: ip_forward_enabled(),
            networks: self.state.networks.len(),
            containers: self.state.containers.len(),
            published_ports: self.state.containers.values().map(|c| c.ports.len()).sum(),
            pin_dir: self.settings.pin_dir.display().to_string(),
            flow_tables: self.dataplane.flow_tables()?,
            programs: self.dataplane.programs()?,
            repairs: self.repairs,
            unrepaired: self.unrepaired_report(),
        })
    }

    /// Stops the dataplane's background work before the agent exits.
    pub fn shutdown(&mut self) {
        self.dataplane.shutdown();
    }

    pub fn published(&self) -> Result<Vec<PublishedPort>> {
        self.dataplane.published()
    }

    pub fn stats(&self) -> Result<Vec<StatCounter>> {
        self.dataplane.stats()
    }

    /// A network by name, full id or unique id prefix, like Docker.
    fn network(&self, reference: &str) -> Result<&NetworkRecord> {
        if let Some(n) = self.state.networks.get(reference) {
            return Ok(n);
        }
        let mut matches = self
            .state
            .networks
            .values()
            .filter(|n| n.id.starts_with(reference));
        match (matches.next(), matches.next(), reference.is_empty()) {
            (Some(n), None, false) => Ok(n),
            (Some(_), Some(_), false) => Err(Error::InvalidArgument(format!(
                "network {reference} is ambiguous: several networks match"
            ))),
            _ => Err(Error::NotFound(format!("network {reference} not found"))),
        }
    }

    fn network_by_id(&self, id: &str) -> Result<&NetworkRecord> {
        self.state
            .networks
            .values()
            .find(|n| n.id == id)
            .ok_or_else(|| Error::NotFound(format!("network {id} not found")))
    }

    /// A container by name, full id or unique id prefix.
    fn container(&self, reference: &str) -> Result<&ContainerRecord> {
        let reference = reference.strip_prefix('/').unwrap_or(reference);
        if let Some(c) = self.state.containers.get(reference) {
            return Ok(c);
        }
        let mut matches = self
            .state
            .containers
            .values()
            .filter(|c| c.id.starts_with(reference));
        match (matches.next(), matches.next(), reference.is_empty()) {
            (Some(c), None, false) => Ok(c),
            (Some(_), Some(_), false) => Err(Error::InvalidArgument(format!(
                "container {reference} is ambiguous: several containers match"
            ))),
            _ => Err(Error::NotFound(format!("no such container: {reference}"))),
        }
    }

    fn container_by_id(&self, id: &str) -> Option<&ContainerRecord> {
        self.state.containers.values().find(|c| c.id == id)
    }

    /// The id of a predefined network (`host`, `none`), made once and kept.
    fn predefined_id(&mut self, name: &str) -> Result<String> {
        let key = format!("{name}-network-id");
        if let Some(id) = self.state.meta.get(&key) {
            return Ok(id.clone());
        }
        let id = random_id();
        self.store.put_meta(&key, &id)?;
        self.state.meta.insert(key, id.clone());
        Ok(id)
    }

    fn save_container(&mut self, container: ContainerRecord) -> Result<()> {
        self.store.put_container(&container)?;
        self.state
            .containers
            .insert(container.name.clone(), container);
        Ok(())
    }

    fn forget_container(&mut self, name: &str) -> Result<()> {
        self.store.delete_container(name)?;
        self.state.containers.remove(name);
        Ok(())
    }

    fn save_network(&mut self, network: NetworkRecord) -> Result<()> {
        self.store.put_network(&network)?;
        self.state.networks.insert(network.name.clone(), network);
        Ok(())
    }

    /// The endpoint that carries `container`'s published ports and default route
    /// ([`plan::port_endpoint`]).
    fn port_endpoint<'a>(&self, container: &'a ContainerRecord) -> Option<&'a EndpointRecord> {
        plan::port_endpoint(&container.endpoints, &self.state.networks)
    }

    /// The dataplane's view of one of our endpoints.
    fn endpoint_view(&self, endpoint: &EndpointRecord) -> Result<Endpoint> {
        dataplane_endpoint(endpoint, self.network_by_id(&endpoint.network_id)?)
    }

    /// What the dataplane should hold for `container`'s ports.
    fn mappings_of(&self, container: &ContainerRecord) -> Result<Vec<(Endpoint, PortBinding)>> {
        if container.mode != NetworkMode::Bridge {
            return Ok(Vec::new());
        }
        // Ports go to the dataplane once the endpoint that carries them is made; a macvlan
        // or ipvlan endpoint has nothing to publish through (its address is on the LAN).
        let Some(endpoint) = self
            .port_endpoint(container)
            .filter(|e| !e.pending && !e.sub_interface)
        else {
            return Ok(Vec::new());
        };
        let endpoint = self.endpoint_view(endpoint)?;
        // A binding leads nowhere through an endpoint without an address of its family
        // (the ports moved to such a carrier on a disconnect).
        Ok(container
            .ports
            .iter()
            .filter(|p| match p.host_ip {
                IpAddr::V4(_) => endpoint.container_ip.is_some(),
                IpAddr::V6(_) => endpoint.container_ipv6.is_some(),
            })
            .map(|p| (endpoint.clone(), *p))
            .collect())
    }

    /// Gives the dataplane `container`'s ports, each undone by a step in `undo`.
    fn publish_ports(&mut self, container: &ContainerRecord, undo: &mut Undo) -> Result<()> {
        for (endpoint, port) in self.mappings_of(container)? {
            self.dataplane.publish(&endpoint, &port)?;
            undo.steps.push(Step::Unpublish(port));
            faults::reach(CrashPoint::PortPublished);
        }
        Ok(())
    }

    /// Makes the DNS records and the dataplane's link allow-list match the state.
    fn refresh_views(&mut self) -> Result<()> {
        self.refresh_dns()?;
        self.sync_links()
    }

    /// `--link` allow-lists: from each linking container's address to each exposed port of
    /// the linked container, on every network they share.
    fn sync_links(&mut self) -> Result<()> {
        let rules = self.link_rules();
        self.dataplane.set_links(&rules)
    }

    /// The `--link` allow-list the state asks for.
    fn link_rules(&self) -> Vec<LinkRule> {
        let mut rules = Vec::new();
        for c in self.state.containers.values().filter(|c| !c.pending) {
            for link in &c.links {
                let Some(other) = self.container_by_id(&link.container_id) else {
                    continue;
                };
                for mine in &c.endpoints {
                    let Some(theirs) = other.endpoint(&mine.network_id) else {
                        continue;
                    };
                    let Ok(network) = self.network_by_id(&mine.network_id) else {
                        continue;
                    };
                    // Only a bridge has a policy to open; elsewhere a link is a name.
                    if !network.driver.is_bridge() {
                        continue;
                    }
                    // Each family where both have an address of it.
                    let mut pairs = Vec::new();
                    if let (Some(from), Some(to)) = (mine.ip, theirs.ip) {
                        pairs.push((IpAddr::V4(from), IpAddr::V4(to)));
                    }
                    if let (Some(from), Some(to)) = (mine.ipv6, theirs.ipv6) {
                        pairs.push((from.into(), to.into()));
                    }
                    for port in other.all_exposed() {
                        for (from, to) in &pairs {
                            rules.push(LinkRule {
                                bridge: network.bridge.clone(),
                                from: *from,
                                to: *to,
                                port: port.port,
                                proto: port.proto,
                            });
                        }
                    }
                }
            }
        }
        rules
    }

    /// Makes the DNS servers' view match the state: one record per container per
    /// user-defined network; a server in each namespace that is on a user-defined network.
    fn refresh_dns(&mut self) -> Result<()> {
        let mut records = Vec::new();
        let ours = |c: &&ContainerRecord| !c.pending && docker::agent_dns_answers_for(c);
        for c in self.state.containers.values().filter(ours) {
            for e in c.endpoints.iter().filter(|e| !e.pending) {
                let Ok(network) = self.network_by_id(&e.network_id) else {
                    continue;
                };
                if network.is_default() {
                    continue;
                }
                let mut names = vec![c.name.clone(), crate::model::short_id(&c.id).to_string()];
                names.extend(e.aliases.iter().cloned());
                records.push(dns::Record {
                    container_id: c.id.clone(),
                    network: network.name.clone(),
                    names,
                    ip: e.ip,
                    ipv6: e.ipv6.filter(|_| network.ipv6.is_some()),
                });
            }
        }
        self.dns.set_records(records);
        Ok(())
    }

    /// Starts or stops the DNS server of one container, as its networks say.
    fn dns_for(&self, container: &ContainerRecord) -> Result<()> {
        let on_user_network = container.endpoints.iter().any(|e| {
            !e.pending
                && self
                    .network_by_id(&e.network_id)
                    .is_ok_and(|n| !n.is_default())
        });
        if on_user_network
            && container.mode == NetworkMode::Bridge
            && docker::agent_dns_answers_for(container)
        {
            self.dns.serve(&container.id, &container.netns)
        } else {
            self.dns.stop(&container.id);
            Ok(())
        }
    }
}

/// The dataplane's view of an endpoint on `network`.
fn dataplane_endpoint(e: &EndpointRecord, network: &NetworkRecord) -> Result<Endpoint> {
    let host_veth_mac = e.host_veth_mac.ok_or_else(|| {
        Error::Internal(format!(
            "endpoint {}: its host veth's MAC is not known yet",
            e.endpoint_id
        ))
    })?;
    Ok(Endpoint {
        container_ip: e.ip,
        container_mac: e.mac.octets(),
        host_veth: e.host_veth.clone(),
        host_veth_ifindex: e.host_veth_ifindex,
        host_veth_mac: host_veth_mac.octets(),
        bridge: network.bridge.clone(),
        gateway: network.gateway,
        container_ipv6: e.ipv6.filter(|_| network.ipv6.is_some()),
        gateway_ipv6: network
            .ipv6
            .as_ref()
            .filter(|_| e.ipv6.is_some())
            .map(|side| side.gateway),
    })
}

/// What a half-done operation has changed, to be undone in reverse order.
#[derive(Default)]
struct Undo {
    steps: Vec<Step>,
}

enum Step {
    DeleteNetns(PathBuf),
    DeleteLink(String),
    /// A link inside a container's namespace (a macvlan or ipvlan endpoint's interface).
    DeleteLinkIn {
        netns: PathBuf,
        name: String,
    },
    DetachEndpoint(Endpoint),
    Unpublish(PortBinding),
    DeleteContainerRecord(String),
    DeleteNetworkRecord(String),
}

impl Service {
    async fn rollback(&mut self, undo: Undo) {
        for step in undo.steps.into_iter().rev() {
            if let Err(e) = self.run_step(step).await {
                tracing::error!("rolling back a failed operation: {e}");
            }
        }
    }

    async fn run_step(&mut self, step: Step) -> Result<()> {
        match step {
            Step::DeleteNetns(path) => netns::delete_named(&path),
            Step::DeleteLink(name) => match netlink::link_by_name(&self.handle, &name).await? {
                Some(link) => netlink::delete_link(&self.handle, link.index).await,
                None => Ok(()),
            },
            Step::DeleteLinkIn { netns, name } => drivers::delete_link_in(&netns, &name),
            Step::DetachEndpoint(endpoint) => self.dataplane.detach_endpoint(&endpoint),
            Step::Unpublish(port) => self.dataplane.unpublish(&port),
            Step::DeleteContainerRecord(name) => self.forget_container(&name),
            Step::DeleteNetworkRecord(name) => {
                self.store.delete_network(&name)?;
                self.state.networks.remove(&name);
                Ok(())
            }
        }
    }

    /// Runs every step, collecting the errors instead of stopping at the first.
    async fn run_all(&mut self, steps: Vec<Step>) -> Result<()> {
        let mut errors = Vec::new();
        for step in steps {
            if let Err(e) = self.run_step(step).await {
                errors.push(e);
            }
            faults::reach(CrashPoint::TeardownStep);
        }
        Error::collect(errors)
    }
}

/// A veth name for an endpoint: the node side and the temporary name of the peer.
fn veth_names(endpoint_id: &str) -> (String, String) {
    (
        format!("veth{}", &endpoint_id[..7]),
        format!("{VETH_PEER_PREFIX}{}", &endpoint_id[..7]),
    )
}

/// The address families a container's ports are published on (see
/// [`Service::port_families`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PortFamilies {
    /// The endpoint that carries the ports has an IPv4 address (or there is none yet).
    pub ipv4: bool,
    /// That endpoint has an IPv6 address and the dataplane handles IPv6.
    pub ipv6: bool,
}

/// The addresses a port binding uses when none is given: the network's
/// `host_binding_ipv4`, else `--ip`; `::` beside `0.0.0.0` when the container's ports are
/// published on IPv6 too, as Docker 27 publishes `-p 8080:80` on both families, and `::`
/// alone for a container on an IPv6-only network (Docker 28).
fn default_host_ips(
    settings: &Settings,
    network: Option<&NetworkRecord>,
    families: PortFamilies,
) -> Vec<IpAddr> {
    let ip = network
        .and_then(|n| n.host_binding_ipv4)
        .unwrap_or(settings.ip);
    let any_ipv6 = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() && !families.ipv4 => vec![any_ipv6],
        IpAddr::V4(v4) if v4.is_unspecified() && families.ipv6 => vec![ip, any_ipv6],
        _ => vec![ip],
    }
}

impl Service {
    /// The families `container`'s ports may be published on: those of the addresses of
    /// the endpoint that carries them, IPv6 only where the dataplane handles it.
    fn port_families(&self, container: &ContainerRecord) -> PortFamilies {
        let carrier = self.port_endpoint(container);
        PortFamilies {
            ipv4: carrier.is_none_or(|e| e.ip.is_some()),
            ipv6: self.dataplane.handles_ipv6() && carrier.is_some_and(|e| e.ipv6.is_some()),
        }
    }

    /// Refuses a binding on a host address of a family that cannot be published (see
    /// [`Self::port_families`]): Docker would proxy it to the container's address of the
    /// other family in userland; bpfbridge translates within one family only.
    fn check_port_families(
        &self,
        requests: &[crate::model::PortRequest],
        families: PortFamilies,
    ) -> Result<()> {
        if let Some(request) = requests
            .iter()
            .find(|r| r.host_ip.is_ipv4() && !families.ipv4)
        {
            return Err(Error::InvalidArgument(format!(
                "port mapping on {}: the container has no IPv4 address (its network is IPv6-only); \
                 an IPv4 port is not translated to an IPv6 container",
                request.host_ip
            )));
        }
        let Some(request) = requests.iter().find(|r| r.host_ip.is_ipv6()) else {
            return Ok(());
        };
        let why = match self.dataplane.handles_ipv6() {
            false => format!(
                "the {} dataplane does not publish on IPv6 addresses yet",
                self.dataplane.name()
            ),
            true if !families.ipv6 => {
                "the container has no IPv6 address (its network needs --ipv6); \
                 an IPv6 port is not translated to an IPv4 container"
                    .to_string()
            }
            true => return Ok(()),
        };
        Err(Error::InvalidArgument(format!(
            "port mapping on {}: {why}",
            request.host_ip
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_default_to_the_families_of_the_carrier() {
        let settings = Settings::default();
        let (any4, any6) = (
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        );
        let families = |ipv4, ipv6| PortFamilies { ipv4, ipv6 };
        assert_eq!(
            default_host_ips(&settings, None, families(true, false)),
            [any4]
        );
        assert_eq!(
            default_host_ips(&settings, None, families(true, true)),
            [any4, any6]
        );
        // A container on an IPv6-only network: `::` alone, as Docker 28.
        assert_eq!(
            default_host_ips(&settings, None, families(false, true)),
            [any6]
        );
        // A given host address stays (and is refused for a family the carrier lacks).
        let network = NetworkRecord {
            host_binding_ipv4: Some("192.0.2.1".parse().unwrap()),
            ..NetworkRecord::ipv6_only_for_tests("v6", "fd00:6::/64")
        };
        assert_eq!(
            default_host_ips(&settings, Some(&network), families(false, true)),
            ["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
    }
}
