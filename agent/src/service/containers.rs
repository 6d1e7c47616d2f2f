//! Containers: create (in any network mode), inspect, remove; and what `--link` gives.
//! A create is planned first ([`Service::plan_container`] changes nothing), then applied in
//! small steps, each undone if a later one fails.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use super::{
    DEFAULT_NETWORK, HOST_NETWORK, NONE_NETWORK, Service, Step, Undo, default_host_ips,
    docker::refuse_docker_managed,
    endpoints::teardown_steps,
    node_netns,
    plan::{
        EndpointWish, PortPlan, conflict, container_port_requests, mode_warnings, network_names,
        parse_exposed, parse_mode, plan_endpoint, plan_links, port_endpoint,
    },
};
use crate::{
    Error, Result,
    faults::{self, CrashPoint},
    model::{
        ContainerHostConfig, ContainerInspect, ContainerRecord, ContainerState, CreateContainer,
        EndpointAddressing, EndpointIpamConfig, EndpointRecord, EndpointSettings, LinkInfo,
        ManagedBy, NetworkMode, NetworkRecord, NetworkSettings, now, port_map, random_id, short_id,
        validate_name,
    },
    netlink, netns,
};

/// What creating a container will do, decided before anything changes.
pub(super) struct ContainerPlan {
    /// The record to save first, pending: its planned endpoints and ports reserve their
    /// addresses and host ports.
    pub(super) container: ContainerRecord,
    /// The network of each planned endpoint, in the same order.
    networks: Vec<NetworkRecord>,
    ports: PortPlan,
    warnings: Vec<String>,
}

/// Where a container's network namespace comes from.
struct Namespace {
    /// The request's mode, with a `container:` target resolved to the namespace's owner.
    mode: NetworkMode,
    /// Empty for host mode, and for a namespace the agent is to make.
    path: PathBuf,
    /// Whether the agent makes the namespace (and deletes it with the container).
    owned: bool,
}

impl Service {
    pub async fn create_container(&mut self, request: CreateContainer) -> Result<ContainerInspect> {
        let plan = self.plan_container(&request)?;
        self.apply_container_plan(plan).await
    }

    /// Validates a create request into a plan: mode and namespace, networks, host ports,
    /// links and each endpoint's address.
    pub(super) fn plan_container(&self, request: &CreateContainer) -> Result<ContainerPlan> {
        validate_name("container", &request.name)?;
        if self.state.containers.contains_key(&request.name) {
            return Err(Error::Conflict(format!(
                "Conflict. The container name \"/{}\" is already in use",
                request.name
            )));
        }
        let (mode, primary) = parse_mode(request.host_config.network_mode.as_deref());
        let network_names = network_names(
            primary.as_deref(),
            request.networking_config.endpoints_config.keys(),
        );
        let host_config = &request.host_config;
        let has_ports = !host_config.port_bindings.is_empty() || host_config.publish_all_ports;
        let namespace = self.plan_namespace(mode, request, has_ports)?;
        let warnings = mode_warnings(&namespace.mode, &network_names, has_ports)?;
        let networks = match namespace.mode {
            NetworkMode::Bridge => self.joined_networks(&network_names)?,
            _ => Vec::new(),
        };
        let exposed = parse_exposed(request.exposed_ports.keys())?;
        let links = plan_links(
            &host_config.links,
            |target| self.container(target).ok(),
            &networks,
        )?;

        let id = random_id();
        let netns = if namespace.owned {
            self.settings
                .netns_dir
                .join(format!("bpfb-{}", short_id(&id)))
        } else {
            namespace.path
        };
        let mut container = ContainerRecord {
            id,
            name: request.name.clone(),
            created: now(),
            mode: namespace.mode,
            netns,
            netns_owned: namespace.owned,
            endpoints: Vec::new(),
            ports: Vec::new(),
            exposed,
            links,
            pending: true,
            managed_by: ManagedBy::Bpfbridge,
        };
        self.plan_endpoints(&mut container, &networks, request)?;
        // After the endpoints: whether the ports are published on IPv6 too depends on the
        // address of the endpoint that carries them, and none are on macvlan/ipvlan.
        let mut warnings = warnings;
        let ports = match container.mode {
            NetworkMode::Bridge => {
                let sub_interface_carrier =
                    port_endpoint(&container.endpoints, &self.state.networks)
                        .filter(|e| e.sub_interface);
                match sub_interface_carrier {
                    Some(carrier) if has_ports => {
                        // As Docker: its macvlan and ipvlan drivers map no port.
                        let network = self.network_by_id(&carrier.network_id)?;
                        warnings.push(format!(
                            "Published ports are discarded on {} network {}: its containers are reached at their own addresses",
                            network.driver.name(),
                            network.name
                        ));
                        PortPlan::default()
                    }
                    _ => {
                        let families = self.port_families(&container);
                        let host_ips = default_host_ips(&self.settings, networks.first(), families);
                        let requests =
                            container_port_requests(host_config, &container.exposed, &host_ips)?;
                        self.check_port_families(&requests, families)?;
                        self.plan_ports(&requests)?
                    }
                }
            }
            _ => PortPlan::default(),
        };
        container.ports = ports.bindings.clone();
        Ok(ContainerPlan {
            container,
            networks,
            ports,
            warnings,
        })
    }

    /// Where the namespace of a container in `mode` comes from: the node's (host), the
    /// target's (`container:`), the one the request names, or a new one.
    fn plan_namespace(
        &self,
        mode: NetworkMode,
        request: &CreateContainer,
        has_ports: bool,
    ) -> Result<Namespace> {
        let shared = |mode, path| Namespace {
            mode,
            path,
            owned: false,
        };
        match mode {
            NetworkMode::Host | NetworkMode::Container(_) if request.netns.is_some() => Err(
                conflict("a network namespace cannot be given with host or container network mode"),
            ),
            NetworkMode::Host => Ok(shared(NetworkMode::Host, PathBuf::new())),
            NetworkMode::Container(target) => {
                if target == request.name {
                    return Err(Error::InvalidArgument(
                        "cannot join own network namespace".into(),
                    ));
                }
                let target = self.container(&target)?;
                if has_ports {
                    return Err(conflict(
                        "port publishing and the container type network mode",
                    ));
                }
                // Joining a joiner means joining the namespace it joined.
                let owner = match &target.mode {
                    NetworkMode::Container(id) => id.clone(),
                    _ => target.id.clone(),
                };
                Ok(shared(NetworkMode::Container(owner), target.netns.clone()))
            }
            NetworkMode::Bridge | NetworkMode::None => match &request.netns {
                Some(path) => Ok(shared(mode, self.check_given_netns(Path::new(path))?)),
                None => Ok(Namespace {
                    mode,
                    path: PathBuf::new(),
                    owned: true,
                }),
            },
        }
    }

    /// A namespace a request names must exist and be no other container's.
    fn check_given_netns(&self, path: &Path) -> Result<PathBuf> {
        if !path.exists() {
            return Err(Error::NotFound(format!(
                "network namespace {} does not exist",
                path.display()
            )));
        }
        netns::is_netns(path)?;
        if let Some(user) = self
            .state
            .containers
            .values()
            .find(|c| c.netns == path && !matches!(c.mode, NetworkMode::Container(_)))
        {
            return Err(Error::Conflict(format!(
                "network namespace {} is already used by container {}",
                path.display(),
                user.name
            )));
        }
        Ok(path.to_path_buf())
    }

    /// The records of the networks a bridge-mode container joins, in order; the API joins
    /// none that Docker drives.
    fn joined_networks(&self, names: &[&str]) -> Result<Vec<NetworkRecord>> {
        names
            .iter()
            .map(|name| {
                let network = self.network(name)?;
                refuse_docker_managed("network", &network.name, network.managed_by)?;
                Ok(network.clone())
            })
            .collect()
    }

    /// Plans `container`'s endpoint on each of `networks`, with the addresses the request's
    /// networking config asks for; no two get the same address.
    fn plan_endpoints(
        &self,
        container: &mut ContainerRecord,
        networks: &[NetworkRecord],
        request: &CreateContainer,
    ) -> Result<()> {
        let mut planned_ips = BTreeSet::new();
        for network in networks {
            let config = request
                .networking_config
                .endpoints_config
                .get(&network.name)
                .cloned()
                .unwrap_or_default();
            let endpoint = plan_endpoint(
                &self.state.containers,
                container,
                network,
                EndpointWish::of(&config)?,
                &planned_ips,
            )?;
            planned_ips.extend(endpoint.ip);
            container.endpoints.push(endpoint);
        }
        Ok(())
    }

    /// Records the plan (pending), makes what it needs, and records it done; undoes
    /// everything made if a step fails.
    pub(super) async fn apply_container_plan(
        &mut self,
        plan: ContainerPlan,
    ) -> Result<ContainerInspect> {
        let ContainerPlan {
            mut container,
            networks,
            ports,
            warnings,
        } = plan;
        // The pending record reserves the addresses and host ports; a crash from here on is
        // rolled back on the next start.
        self.record_port_plan(&ports)?;
        let mut undo = Undo::default();
        self.save_container(container.clone())?;
        undo.steps
            .push(Step::DeleteContainerRecord(container.name.clone()));
        faults::reach(CrashPoint::ContainerCreateRecorded);
        match self.attach(&mut container, &networks, &mut undo).await {
            Ok(()) => {
                let mut inspect = self.inspect_container(&container.name)?;
                inspect.warnings = warnings;
                Ok(inspect)
            }
            Err(e) => {
                self.rollback(undo).await;
                Err(e)
            }
        }
    }

    /// Makes everything a planned container needs, then records it as done.
    async fn attach(
        &mut self,
        container: &mut ContainerRecord,
        networks: &[NetworkRecord],
        undo: &mut Undo,
    ) -> Result<()> {
        if container.netns_owned {
            self.make_owned_netns(container, undo)?;
            faults::reach(CrashPoint::ContainerCreateNetnsMade);
        }
        if matches!(container.mode, NetworkMode::Bridge | NetworkMode::None) {
            set_loopback_up(&container.netns)?;
        }
        self.make_planned_endpoints(container, networks, undo)
            .await?;
        faults::reach(CrashPoint::ContainerCreateEndpointsMade);
        container.pending = false;
        self.publish_ports(container, undo)?;
        self.finish_container(container)
    }

    /// Makes the namespace the plan named for `container`.
    fn make_owned_netns(&mut self, container: &mut ContainerRecord, undo: &mut Undo) -> Result<()> {
        let name = container
            .netns
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        container.netns = netns::create_named(&self.settings.netns_dir, &name)?;
        undo.steps.push(Step::DeleteNetns(container.netns.clone()));
        Ok(())
    }

    /// Makes each planned endpoint of `container` (on the matching one of `networks`); the
    /// one that carries the ports gets the default route.
    async fn make_planned_endpoints(
        &mut self,
        container: &mut ContainerRecord,
        networks: &[NetworkRecord],
        undo: &mut Undo,
    ) -> Result<()> {
        let carrier = port_endpoint(&container.endpoints, &self.state.networks)
            .map(|e| e.endpoint_id.clone());
        for (i, network) in networks.iter().enumerate() {
            let mut endpoint = container.endpoints[i].clone();
            let default_route = carrier.as_deref() == Some(endpoint.endpoint_id.as_str());
            self.make_endpoint(
                &container.netns,
                network,
                &mut endpoint,
                default_route,
                undo,
            )
            .await?;
            endpoint.pending = false;
            container.endpoints[i] = endpoint;
        }
        Ok(())
    }

    /// Records a made container as done and brings the views (allocation cursors, DNS,
    /// links) up to date.
    fn finish_container(&mut self, container: &ContainerRecord) -> Result<()> {
        self.save_container(container.clone())?;
        faults::reach(CrashPoint::ContainerCreateSaved);
        for endpoint in &container.endpoints {
            self.note_allocation(endpoint)?;
        }
        self.refresh_views()?;
        self.dns_for(container)
    }

    /// The steps that remove everything a container has on the node, record last.
    pub(super) fn container_teardown_steps(&self, c: &ContainerRecord) -> Vec<Step> {
        let mut steps: Vec<Step> = c.ports.iter().map(|p| Step::Unpublish(*p)).collect();
        for e in &c.endpoints {
            steps.extend(teardown_steps(&c.netns, e));
        }
        if c.netns_owned {
            steps.push(Step::DeleteNetns(c.netns.clone()));
        }
        steps.push(Step::DeleteContainerRecord(c.name.clone()));
        steps
    }

    pub async fn remove_container(&mut self, reference: &str) -> Result<()> {
        let container = self.container(reference)?.clone();
        refuse_docker_managed("container", &container.name, container.managed_by)?;
        let joiners: Vec<&str> = self
            .state
            .containers
            .values()
            .filter(|c| c.mode == NetworkMode::Container(container.id.clone()))
            .map(|c| c.name.as_str())
            .collect();
        if !joiners.is_empty() {
            return Err(Error::Conflict(format!(
                "container {} shares its network namespace with {}; remove them first",
                container.name,
                joiners.join(", ")
            )));
        }
        // Pending while it goes: a crash in the middle finishes the removal on start.
        self.save_container(ContainerRecord {
            pending: true,
            ..container.clone()
        })?;
        faults::reach(CrashPoint::ContainerRemoveMarked);
        self.dns.stop(&container.id);
        let steps = self.container_teardown_steps(&container);
        let result = self.run_all(steps).await;
        self.refresh_views()?;
        result
    }

    pub fn list_containers(&self) -> Result<Vec<ContainerInspect>> {
        self.state
            .containers
            .values()
            .filter(|c| !c.pending)
            .map(|c| self.inspect_record(c))
            .collect()
    }

    pub fn inspect_container(&self, reference: &str) -> Result<ContainerInspect> {
        self.inspect_record(self.container(reference)?)
    }

    fn endpoint_settings(
        &self,
        c: &ContainerRecord,
        e: &EndpointRecord,
    ) -> Result<(String, EndpointSettings)> {
        let network = self.network_by_id(&e.network_id)?;
        let mut aliases = Vec::new();
        if !network.is_default() {
            aliases.push(short_id(&c.id).to_string());
            aliases.extend(e.aliases.iter().cloned());
        }
        Ok((
            network.name.clone(),
            EndpointSettings {
                ipam_config: (e.requested_ip.is_some() || e.requested_ipv6.is_some()).then(|| {
                    EndpointIpamConfig {
                        ipv4_address: e.requested_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                        ipv6_address: e
                            .requested_ipv6
                            .map(|ip| ip.to_string())
                            .unwrap_or_default(),
                    }
                }),
                aliases: (!aliases.is_empty()).then_some(aliases),
                network_id: network.id.clone(),
                gw_priority: e.gw_priority,
                addressing: EndpointAddressing {
                    endpoint_id: e.endpoint_id.clone(),
                    // ipvlan l3: the container routes out of its interface.
                    gateway: match network.gateway_ipv4() {
                        Some(gateway) if !network.driver.routes_through_parent() => {
                            gateway.to_string()
                        }
                        _ => String::new(),
                    },
                    // Empty on an IPv6-only network, as Docker 28 shows it.
                    ip_address: e.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                    ip_prefix_len: network
                        .subnet
                        .filter(|_| e.ip.is_some())
                        .map_or(0, |subnet| subnet.prefix_len()),
                    ipv6_gateway: match (&network.ipv6, e.ipv6) {
                        (Some(side), Some(_)) => side.gateway.to_string(),
                        _ => String::new(),
                    },
                    global_ipv6_address: e.ipv6.map(|ip| ip.to_string()).unwrap_or_default(),
                    global_ipv6_prefix_len: match (&network.ipv6, e.ipv6) {
                        (Some(side), Some(_)) => side.subnet.prefix_len(),
                        _ => 0,
                    },
                    mac_address: e.mac.to_string(),
                },
            },
        ))
    }

    fn inspect_record(&self, c: &ContainerRecord) -> Result<ContainerInspect> {
        let mut networks = BTreeMap::new();
        let mut primary = EndpointAddressing::default();
        for e in &c.endpoints {
            let (name, settings) = self.endpoint_settings(c, e)?;
            // Like Docker, the top-level addressing is the default bridge's only.
            if name == DEFAULT_NETWORK {
                primary = settings.addressing.clone();
            }
            networks.insert(name, settings);
        }
        let network_mode = match &c.mode {
            NetworkMode::Bridge => match c.endpoints.first() {
                Some(e) => self.network_by_id(&e.network_id)?.name.clone(),
                None => DEFAULT_NETWORK.into(),
            },
            NetworkMode::Host => HOST_NETWORK.into(),
            NetworkMode::None => NONE_NETWORK.into(),
            NetworkMode::Container(id) => format!("container:{id}"),
        };
        if matches!(c.mode, NetworkMode::Host | NetworkMode::None) {
            let name = if c.mode == NetworkMode::Host {
                HOST_NETWORK
            } else {
                NONE_NETWORK
            };
            let id = self
                .state
                .meta
                .get(&format!("{name}-network-id"))
                .cloned()
                .unwrap_or_default();
            networks.insert(
                name.into(),
                EndpointSettings {
                    network_id: id,
                    ..EndpointSettings::default()
                },
            );
        }
        let sandbox_key = match &c.mode {
            NetworkMode::Host => node_netns(),
            _ => c.netns.clone(),
        };
        Ok(ContainerInspect {
            id: c.id.clone(),
            name: format!("/{}", c.name),
            created: c.created.clone(),
            host_config: ContainerHostConfig { network_mode },
            network_settings: NetworkSettings {
                sandbox_key: sandbox_key.display().to_string(),
                ports: if c.mode == NetworkMode::Bridge {
                    port_map(&c.ports)
                } else {
                    Default::default()
                },
                primary,
                link_local_ipv6_address: String::new(),
                link_local_ipv6_prefix_len: 0,
                networks,
            },
            link_info: self.link_info(c),
            state: ContainerState {
                error: self.repair_failures.get(&c.id).cloned().unwrap_or_default(),
            },
            warnings: Vec::new(),
        })
    }

    /// The /etc/hosts lines and environment variables Docker writes for `--link`, from the
    /// linked containers' current addresses and exposed ports.
    fn link_info(&self, c: &ContainerRecord) -> LinkInfo {
        let mut info = LinkInfo::default();
        let my_networks: BTreeSet<&str> =
            c.endpoints.iter().map(|e| e.network_id.as_str()).collect();
        for link in &c.links {
            let Some(other) = self.container_by_id(&link.container_id) else {
                continue;
            };
            let Some(endpoint) = other
                .endpoints
                .iter()
                .find(|e| my_networks.contains(e.network_id.as_str()))
                .or(other.endpoints.first())
            else {
                continue;
            };
            // The environment names the IPv4 address, the IPv6 one on an IPv6-only network.
            let Some(ip) = endpoint
                .ip
                .map(IpAddr::V4)
                .or(endpoint.ipv6.map(IpAddr::V6))
            else {
                continue;
            };
            let mut names = vec![link.alias.clone(), short_id(&other.id).to_string()];
            if other.name != link.alias {
                names.push(other.name.clone());
            }
            // A hosts line per address.
            for address in endpoint
                .ip
                .map(IpAddr::V4)
                .into_iter()
                .chain(endpoint.ipv6.map(IpAddr::V6))
            {
                info.hosts_entries
                    .push(format!("{address}\t{}", names.join(" ")));
            }
            let prefix = link.alias.to_uppercase().replace(['-', '.'], "_");
            info.env
                .push(format!("{prefix}_NAME=/{}/{}", c.name, link.alias));
            let exposed = other.all_exposed();
            if let Some(first) = exposed.first() {
                info.env.push(format!(
                    "{prefix}_PORT={}://{}",
                    first.proto.as_str(),
                    SocketAddr::new(ip, first.port)
                ));
            }
            for port in exposed {
                let (number, proto) = (port.port, port.proto.as_str());
                let var = format!("{prefix}_PORT_{number}_{}", proto.to_uppercase());
                info.env
                    .push(format!("{var}={proto}://{}", SocketAddr::new(ip, number)));
                info.env.push(format!("{var}_ADDR={ip}"));
                info.env.push(format!("{var}_PORT={number}"));
                info.env.push(format!("{var}_PROTO={proto}"));
            }
        }
        if let Some(own) = c.endpoints.first()
            && let Some(ip) = own.ip.map(IpAddr::V4).or(own.ipv6.map(IpAddr::V6))
        {
            info.hosts_entries
                .push(format!("{ip}\t{}", short_id(&c.id)));
        }
        info
    }
}

/// Brings up loopback in a container's namespace.
fn set_loopback_up(netns: &Path) -> Result<()> {
    netns::with_netlink_in(netns, |h| async move {
        match netlink::link_by_name(&h, "lo").await? {
            Some(lo) => netlink::set_up(&h, lo.index).await,
            None => Ok(()),
        }
    })
}
