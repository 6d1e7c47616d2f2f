//! The agent's operations: the default network, attaching and detaching containers. Every
//! operation either completes or undoes what it did, and the store is written before a
//! success is reported.

use std::{
    collections::BTreeSet,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::SystemTime,
};

use ipnet::Ipv4Net;
use rand::RngCore as _;
use rtnetlink::Handle;

use crate::{
    Error, Result,
    dataplane::{Dataplane, Endpoint},
    ipam,
    model::{
        ContainerInspect, ContainerRecord, CreateContainer, Info, NetworkRecord, PortBinding,
        PublishedPort, StatCounter, format_mac, mac_for_ip, parse_mac, port_bindings_from_map,
        validate_name,
    },
    netlink, netns,
    store::{State, Store},
};

pub const DEFAULT_NETWORK: &str = "bridge";
pub const DEFAULT_BRIDGE: &str = "bpfbr0";

/// Where the agent's pieces live; the daemon fills it from flags.
#[derive(Clone, Debug)]
pub struct Paths {
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    /// Where namespaces the agent creates are pinned.
    pub netns_dir: PathBuf,
}

pub struct Service {
    handle: Handle,
    store: Store,
    state: State,
    dataplane: Box<dyn Dataplane>,
    uplink: String,
    paths: Paths,
}

fn random_id() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
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
pub fn enable_ip_forward() -> Result<()> {
    fs::write("/proc/sys/net/ipv4/ip_forward", b"1")
        .map_err(Error::io("enabling net.ipv4.ip_forward"))
}

impl Service {
    /// Brings the node to the saved state: bridge, dataplane, containers' endpoints and
    /// published ports. `make_dataplane` gets the uplink's name and index.
    pub async fn start(
        handle: Handle,
        uplink: Option<String>,
        paths: Paths,
        make_dataplane: impl FnOnce(&str, u32) -> Result<Box<dyn Dataplane>>,
    ) -> Result<Self> {
        let uplink = match uplink {
            Some(u) => u,
            None => default_route_interface(&handle).await?,
        };
        let uplink_link = netlink::link_by_name(&handle, &uplink)
            .await?
            .ok_or_else(|| Error::NotFound(format!("uplink interface {uplink} does not exist")))?;
        let store = Store::open(&paths.state_dir)?;
        let state = store.load()?;
        let dataplane = make_dataplane(&uplink, uplink_link.index)?;
        let mut service = Service {
            handle,
            store,
            state,
            dataplane,
            uplink,
            paths,
        };
        service.ensure_default_network(uplink_link.mtu).await?;
        enable_ip_forward()?;
        service.refresh_node_addresses().await?;
        service.restore_containers().await?;
        Ok(service)
    }

    fn network(&self) -> Result<&NetworkRecord> {
        self.state
            .network
            .as_ref()
            .ok_or_else(|| Error::NotFound("default network is not set up".into()))
    }

    async fn ensure_default_network(&mut self, mtu: u32) -> Result<()> {
        let network = match self.state.network.clone() {
            Some(n) => n,
            None => {
                let routed: Vec<Ipv4Net> = netlink::ipv4_routes(&self.handle)
                    .await?
                    .into_iter()
                    .map(|r| r.destination)
                    .collect();
                let subnet =
                    ipam::first_free_subnet(&routed).ok_or_else(|| Error::PoolExhausted {
                        network: DEFAULT_NETWORK.into(),
                    })?;
                // A bridge by our name but not in our state is debris of a crash: start over.
                if let Some(stale) = netlink::link_by_name(&self.handle, DEFAULT_BRIDGE).await? {
                    netlink::delete_link(&self.handle, stale.index).await?;
                }
                let network = NetworkRecord {
                    name: DEFAULT_NETWORK.into(),
                    id: random_id(),
                    created: now(),
                    bridge: DEFAULT_BRIDGE.into(),
                    subnet,
                    gateway: ipam::default_gateway(subnet),
                    last_allocated: None,
                };
                self.state.network = Some(network.clone());
                self.store.save(&self.state)?;
                network
            }
        };
        let bridge = match netlink::link_by_name(&self.handle, &network.bridge).await? {
            Some(link) => link,
            None => {
                netlink::create_bridge(&self.handle, &network.bridge, mtu).await?;
                netlink::link_by_name(&self.handle, &network.bridge)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("bridge {} vanished", network.bridge)))?
            }
        };
        let gateway = Ipv4Net::new(network.gateway, network.subnet.prefix_len())
            .expect("prefix from a valid net");
        let has_address = netlink::ipv4_addresses(&self.handle)
            .await?
            .iter()
            .any(|(i, a)| *i == bridge.index && *a == gateway);
        if !has_address {
            netlink::add_address(&self.handle, bridge.index, gateway).await?;
        }
        netlink::set_up(&self.handle, bridge.index).await
    }

    /// Tells the dataplane which addresses are the node's (all but loopback).
    pub async fn refresh_node_addresses(&mut self) -> Result<()> {
        let addresses: Vec<(u32, Ipv4Addr)> = netlink::ipv4_addresses(&self.handle)
            .await?
            .into_iter()
            .map(|(i, a)| (i, a.addr()))
            .filter(|(_, a)| !a.is_loopback())
            .collect();
        self.dataplane.set_node_addresses(&addresses)
    }

    /// Re-adopts the endpoints of saved containers and makes the published-port map match
    /// the state exactly; a container whose veth is gone publishes nothing. Veths on our
    /// bridge that no record owns (a crash in the middle of a create) are removed.
    async fn restore_containers(&mut self) -> Result<()> {
        let owned: Vec<String> = self
            .state
            .containers
            .values()
            .map(|c| c.host_veth.clone())
            .collect();
        let network = self.network()?.clone();
        let links = netlink::all_links(&self.handle).await?;
        if let Some(bridge) = links.iter().find(|l| l.name == network.bridge) {
            for orphan in links
                .iter()
                .filter(|l| l.controller == Some(bridge.index) && !owned.contains(&l.name))
            {
                tracing::warn!(veth = %orphan.name, "removing a veth that no container owns");
                netlink::delete_link(&self.handle, orphan.index).await?;
            }
        }
        self.dataplane.retain_endpoints(&owned)?;
        let mut wanted = Vec::new();
        let containers: Vec<ContainerRecord> = self.state.containers.values().cloned().collect();
        for container in containers {
            let Some(link) = netlink::link_by_name(&self.handle, &container.host_veth).await?
            else {
                tracing::warn!(container = %container.name, veth = %container.host_veth, "veth is gone; its ports stay closed until `container rm`");
                continue;
            };
            let mut endpoint = endpoint_of(&container)?;
            endpoint.host_veth_ifindex = link.index;
            self.dataplane.attach_endpoint(&endpoint)?;
            wanted.extend(container.ports.iter().map(|p| (endpoint.clone(), *p)));
        }
        self.dataplane.sync_published(&wanted)
    }

    pub fn info(&self) -> Result<Info> {
        let network = self.network()?;
        Ok(Info {
            version: env!("CARGO_PKG_VERSION").into(),
            dataplane: self.dataplane.name().into(),
            uplink: self.uplink.clone(),
            bridge: network.bridge.clone(),
            subnet: network.subnet.to_string(),
            gateway: network.gateway.to_string(),
            containers: self.state.containers.len(),
            pin_dir: self.paths.pin_dir.display().to_string(),
        })
    }

    pub fn list(&self) -> Result<Vec<ContainerInspect>> {
        let network = self.network()?;
        Ok(self
            .state
            .containers
            .values()
            .map(|c| ContainerInspect::new(c, network))
            .collect())
    }

    pub fn inspect(&self, name: &str) -> Result<ContainerInspect> {
        let container = self
            .state
            .containers
            .get(name)
            .ok_or_else(|| no_such_container(name))?;
        Ok(ContainerInspect::new(container, self.network()?))
    }

    pub fn published(&self) -> Result<Vec<PublishedPort>> {
        self.dataplane.published()
    }

    pub fn stats(&self) -> Result<Vec<StatCounter>> {
        self.dataplane.stats()
    }

    /// Checks a create request against the state without changing anything.
    fn validate(&self, request: &CreateContainer) -> Result<Vec<PortBinding>> {
        validate_name(&request.name)?;
        if self.state.containers.contains_key(&request.name) {
            return Err(Error::Conflict(format!(
                "container name {:?} is already in use",
                request.name
            )));
        }
        let ports = port_bindings_from_map(&request.port_bindings)?;
        for port in &ports {
            for other in self.state.containers.values() {
                if other.ports.iter().any(|p| p.overlaps(port)) {
                    return Err(Error::Conflict(format!(
                        "host port {}:{}/{} is already published by container {}",
                        port.host_ip,
                        port.host_port,
                        port.proto.as_str(),
                        other.name
                    )));
                }
            }
        }
        if let Some(path) = &request.netns {
            let path = Path::new(path);
            if !path.exists() {
                return Err(Error::NotFound(format!(
                    "network namespace {} does not exist",
                    path.display()
                )));
            }
            netns::is_netns(path)?;
            if let Some(user) = self.state.containers.values().find(|c| c.netns == path) {
                return Err(Error::Conflict(format!(
                    "network namespace {} is already used by container {}",
                    path.display(),
                    user.name
                )));
            }
        }
        Ok(ports)
    }

    pub async fn create(&mut self, request: CreateContainer) -> Result<ContainerInspect> {
        let ports = self.validate(&request)?;
        let network = self.network()?.clone();
        let in_use: BTreeSet<Ipv4Addr> = self.state.containers.values().map(|c| c.ip).collect();
        let ip = ipam::allocate(
            &network.name,
            network.subnet,
            network.gateway,
            &in_use,
            network.last_allocated,
        )?;
        let id = random_id();
        let mut undo = Undo::default();
        match self
            .attach(&request, &network, &id, ip, ports, &mut undo)
            .await
        {
            Ok(record) => {
                let name = record.name.clone();
                self.state.containers.insert(name.clone(), record);
                if let Some(n) = self.state.network.as_mut() {
                    n.last_allocated = Some(ip);
                }
                if let Err(e) = self.store.save(&self.state) {
                    self.state.containers.remove(&name);
                    self.rollback(undo).await;
                    return Err(e);
                }
                self.inspect(&name)
            }
            Err(e) => {
                self.rollback(undo).await;
                Err(e)
            }
        }
    }

    async fn attach(
        &mut self,
        request: &CreateContainer,
        network: &NetworkRecord,
        id: &str,
        ip: Ipv4Addr,
        ports: Vec<PortBinding>,
        undo: &mut Undo,
    ) -> Result<ContainerRecord> {
        let (netns_path, netns_owned) = match &request.netns {
            Some(path) => (PathBuf::from(path), false),
            None => {
                let path =
                    netns::create_named(&self.paths.netns_dir, &format!("bpfb-{}", &id[..12]))?;
                undo.steps.push(Step::DeleteNetns(path.clone()));
                (path, true)
            }
        };
        let bridge = netlink::link_by_name(&self.handle, &network.bridge)
            .await?
            .ok_or_else(|| Error::NotFound(format!("bridge {} does not exist", network.bridge)))?;
        let host_veth = format!("veth{}", &id[..7]);
        let peer = format!("bpfc{}", &id[..7]);
        netlink::create_veth(&self.handle, &host_veth, &peer, bridge.mtu).await?;
        undo.steps.push(Step::DeleteLink(host_veth.clone()));
        let peer_link = netlink::link_by_name(&self.handle, &peer)
            .await?
            .ok_or_else(|| Error::NotFound(format!("veth peer {peer} vanished")))?;
        let mac = mac_for_ip(ip);
        netlink::set_mac(&self.handle, peer_link.index, mac).await?;
        netlink::enable_gro(&peer)?;
        let netns_file = fs::File::open(&netns_path)
            .map_err(Error::io(format!("opening {}", netns_path.display())))?;
        netlink::move_to_netns(&self.handle, peer_link.index, &netns_file).await?;
        let host = netlink::link_by_name(&self.handle, &host_veth)
            .await?
            .ok_or_else(|| Error::NotFound(format!("veth {host_veth} vanished")))?;
        netlink::set_controller(&self.handle, host.index, bridge.index).await?;
        netlink::set_up(&self.handle, host.index).await?;
        let host_mac = host
            .mac
            .ok_or_else(|| Error::NotFound(format!("veth {host_veth} has no MAC")))?;

        let address =
            Ipv4Net::new(ip, network.subnet.prefix_len()).expect("prefix from a valid net");
        let gateway = network.gateway;
        netns::with_netlink_in(&netns_path, |h| async move {
            let link = netlink::link_by_name(&h, &peer).await?.ok_or_else(|| {
                Error::NotFound(format!("{peer} did not arrive in the namespace"))
            })?;
            netlink::set_name(&h, link.index, "eth0").await?;
            netlink::add_address(&h, link.index, address).await?;
            netlink::set_up(&h, link.index).await?;
            if let Some(lo) = netlink::link_by_name(&h, "lo").await? {
                netlink::set_up(&h, lo.index).await?;
            }
            netlink::add_default_route(&h, gateway).await
        })?;

        let record = ContainerRecord {
            id: id.to_string(),
            name: request.name.clone(),
            created: now(),
            endpoint_id: random_id(),
            netns: netns_path,
            netns_owned,
            ip,
            mac: format_mac(mac),
            host_veth: host_veth.clone(),
            host_veth_ifindex: host.index,
            host_veth_mac: format_mac(host_mac),
            ports,
        };
        let endpoint = endpoint_of(&record)?;
        self.dataplane.attach_endpoint(&endpoint)?;
        undo.steps.push(Step::DetachEndpoint(endpoint.clone()));
        for port in &record.ports {
            self.dataplane.publish(&endpoint, port)?;
            undo.steps.push(Step::Unpublish(*port));
        }
        Ok(record)
    }

    async fn rollback(&mut self, undo: Undo) {
        for step in undo.steps.into_iter().rev() {
            if let Err(e) = self.run_step(step).await {
                tracing::error!("rolling back a failed create: {e}");
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
            Step::DetachEndpoint(endpoint) => self.dataplane.detach_endpoint(&endpoint),
            Step::Unpublish(port) => self.dataplane.unpublish(&port),
        }
    }

    /// Detaches a container: every step is attempted, in the reverse order of `create`; the
    /// record is dropped only when all succeeded, so a failed removal can be retried.
    pub async fn remove(&mut self, name: &str) -> Result<()> {
        let container = self
            .state
            .containers
            .get(name)
            .cloned()
            .ok_or_else(|| no_such_container(name))?;
        let mut steps: Vec<Step> = container
            .ports
            .iter()
            .map(|p| Step::Unpublish(*p))
            .collect();
        steps.push(Step::DetachEndpoint(endpoint_of(&container)?));
        steps.push(Step::DeleteLink(container.host_veth.clone()));
        if container.netns_owned {
            steps.push(Step::DeleteNetns(container.netns.clone()));
        }
        let mut errors = Vec::new();
        for step in steps {
            if let Err(e) = self.run_step(step).await {
                errors.push(e);
            }
        }
        Error::collect(errors)?;
        self.state.containers.remove(name);
        self.store.save(&self.state)
    }
}

fn no_such_container(name: &str) -> Error {
    Error::NotFound(format!("no such container: {name}"))
}

fn endpoint_of(c: &ContainerRecord) -> Result<Endpoint> {
    let bad_mac =
        |m: &str| Error::InvalidArgument(format!("container {}: bad MAC {m} in state", c.name));
    Ok(Endpoint {
        container_ip: c.ip,
        container_mac: parse_mac(&c.mac).ok_or_else(|| bad_mac(&c.mac))?,
        host_veth: c.host_veth.clone(),
        host_veth_ifindex: c.host_veth_ifindex,
        host_veth_mac: parse_mac(&c.host_veth_mac).ok_or_else(|| bad_mac(&c.host_veth_mac))?,
    })
}

/// What a half-done `create` has changed, to be undone in reverse.
#[derive(Default)]
struct Undo {
    steps: Vec<Step>,
}

enum Step {
    DeleteNetns(PathBuf),
    DeleteLink(String),
    DetachEndpoint(Endpoint),
    Unpublish(PortBinding),
}
