//! Containers: create (in any network mode), inspect, remove; and what `--link` gives.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use super::{
    DEFAULT_NETWORK, HOST_NETWORK, NONE_NETWORK, Service, Step, Undo, default_host_ip,
    endpoints::teardown_steps,
    networks::{parse_requested_ip, refuse_docker_managed},
    node_netns,
};
use crate::{
    Error, Result,
    model::{
        ContainerHostConfig, ContainerInspect, ContainerRecord, CreateContainer,
        EndpointAddressing, EndpointIpamConfig, EndpointRecord, EndpointSettings, ExposedPort,
        HostPort, LinkInfo, LinkRecord, ManagedBy, NetworkMode, NetworkRecord, NetworkSettings,
        PortRequest, now, parse_port_proto, port_map, port_requests_from_map, random_id, short_id,
        validate_name,
    },
    netlink, netns,
};

/// `HostConfig.NetworkMode` parsed: the mode, and for bridge mode the primary network.
fn parse_mode(mode: Option<&str>) -> (NetworkMode, Option<String>) {
    match mode.unwrap_or("") {
        "" | "default" | DEFAULT_NETWORK => (NetworkMode::Bridge, Some(DEFAULT_NETWORK.into())),
        HOST_NETWORK => (NetworkMode::Host, None),
        NONE_NETWORK => (NetworkMode::None, None),
        other => match other.strip_prefix("container:") {
            Some(target) => (NetworkMode::Container(target.into()), None),
            None => (NetworkMode::Bridge, Some(other.into())),
        },
    }
}

fn conflict(what: &str) -> Error {
    Error::InvalidArgument(format!("conflicting options: {what}"))
}

impl Service {
    pub async fn create_container(&mut self, request: CreateContainer) -> Result<ContainerInspect> {
        validate_name("container", &request.name)?;
        if self.state.containers.contains_key(&request.name) {
            return Err(Error::Conflict(format!(
                "Conflict. The container name \"/{}\" is already in use",
                request.name
            )));
        }
        let (mut mode, primary) = parse_mode(request.host_config.network_mode.as_deref());
        let mut warnings = Vec::new();
        let extra_networks: Vec<String> = request
            .networking_config
            .endpoints_config
            .keys()
            .filter(|n| Some(*n) != primary.as_ref())
            .cloned()
            .collect();
        let has_ports =
            !request.host_config.port_bindings.is_empty() || request.host_config.publish_all_ports;

        // Where the container's network namespace comes from.
        let (netns_path, create_netns) =
            match &mode {
                NetworkMode::Host | NetworkMode::Container(_) if request.netns.is_some() => {
                    return Err(conflict(
                        "a network namespace cannot be given with host or container network mode",
                    ));
                }
                NetworkMode::Host => (PathBuf::new(), false),
                NetworkMode::Container(target) => {
                    if target == &request.name {
                        return Err(Error::InvalidArgument(
                            "cannot join own network namespace".into(),
                        ));
                    }
                    let target = self.container(target)?;
                    if has_ports {
                        return Err(conflict(
                            "port publishing and the container type network mode",
                        ));
                    }
                    // Joining a joiner means joining the namespace it joined.
                    let target_id = match &target.mode {
                        NetworkMode::Container(id) => id.clone(),
                        _ => target.id.clone(),
                    };
                    let netns = target.netns.clone();
                    mode = NetworkMode::Container(target_id);
                    (netns, false)
                }
                NetworkMode::Bridge | NetworkMode::None => match &request.netns {
                    Some(path) => {
                        let path = Path::new(path);
                        if !path.exists() {
                            return Err(Error::NotFound(format!(
                                "network namespace {} does not exist",
                                path.display()
                            )));
                        }
                        netns::is_netns(path)?;
                        if let Some(user) = self.state.containers.values().find(|c| {
                            c.netns == path && !matches!(c.mode, NetworkMode::Container(_))
                        }) {
                            return Err(Error::Conflict(format!(
                                "network namespace {} is already used by container {}",
                                path.display(),
                                user.name
                            )));
                        }
                        (path.to_path_buf(), false)
                    }
                    None => (PathBuf::new(), true),
                },
            };
        if mode != NetworkMode::Bridge && !extra_networks.is_empty() {
            return Err(conflict(
                "networks cannot be given with host, none or container network mode",
            ));
        }
        if matches!(mode, NetworkMode::Host | NetworkMode::None) && has_ports {
            warnings.push(
                "Published ports are discarded when using host or none network mode".to_string(),
            );
        }

        // Networks in order, the primary first.
        let networks: Vec<NetworkRecord> = match (&mode, &primary) {
            (NetworkMode::Bridge, Some(primary)) => std::iter::once(primary)
                .chain(extra_networks.iter())
                .map(|n| {
                    let network = self.network(n)?;
                    refuse_docker_managed("network", &network.name, network.managed_by)?;
                    Ok(network.clone())
                })
                .collect::<Result<_>>()?,
            _ => Vec::new(),
        };
        let mut exposed = Vec::new();
        for key in request.exposed_ports.keys() {
            let (port, proto) = parse_port_proto(key)?;
            exposed.push(ExposedPort { port, proto });
        }
        let ports = if mode == NetworkMode::Bridge {
            let host_ip = default_host_ip(&self.settings, networks.first());
            let mut requests = port_requests_from_map(&request.host_config.port_bindings, host_ip)?;
            if request.host_config.publish_all_ports {
                for e in &exposed {
                    if !requests
                        .iter()
                        .any(|r| r.container_port == e.port && r.proto == e.proto)
                    {
                        requests.push(PortRequest {
                            proto: e.proto,
                            container_port: e.port,
                            host_ip,
                            host_port: HostPort::Dynamic,
                        });
                    }
                }
            }
            self.resolve_ports(&requests)?
        } else {
            Vec::new()
        };
        let mut links = Vec::new();
        for spec in &request.host_config.links {
            let (target, alias) = spec.split_once(':').unwrap_or((spec, spec));
            let target = self
                .container(target)
                .map_err(|_| Error::NotFound(format!("could not get container for {target}")))?;
            validate_name("link alias", alias)?;
            if links.iter().any(|l: &LinkRecord| l.alias == alias) {
                return Err(Error::InvalidArgument(format!(
                    "link alias {alias} is given twice"
                )));
            }
            let shared = networks.iter().any(|n| target.endpoint(&n.id).is_some());
            if !shared {
                return Err(Error::InvalidArgument(format!(
                    "cannot link to container {}: it is on no network this container joins",
                    target.name
                )));
            }
            links.push(LinkRecord {
                container_id: target.id.clone(),
                alias: alias.to_string(),
            });
        }

        let id = random_id();
        let mut container = ContainerRecord {
            id,
            name: request.name.clone(),
            created: now(),
            mode: mode.clone(),
            netns: netns_path,
            netns_owned: create_netns,
            endpoints: Vec::new(),
            ports,
            exposed,
            links,
            pending: true,
            managed_by: ManagedBy::Bpfbridge,
        };
        if create_netns {
            container.netns = self
                .settings
                .netns_dir
                .join(format!("bpfb-{}", short_id(&container.id)));
        }
        let mut planned_ips = BTreeSet::new();
        for network in &networks {
            let config = request
                .networking_config
                .endpoints_config
                .get(&network.name)
                .cloned()
                .unwrap_or_default();
            let endpoint = self.plan_endpoint(
                &container,
                network,
                parse_requested_ip(&config)?,
                config.aliases,
                &planned_ips,
            )?;
            planned_ips.insert(endpoint.ip);
            container.endpoints.push(endpoint);
        }

        // The pending record reserves the addresses; a crash from here on is rolled back
        // on the next start.
        let mut undo = Undo::default();
        self.save_container(container.clone())?;
        undo.steps
            .push(Step::DeleteContainerRecord(container.name.clone()));
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
            let name = container
                .netns
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            container.netns = netns::create_named(&self.settings.netns_dir, &name)?;
            undo.steps.push(Step::DeleteNetns(container.netns.clone()));
        }
        if matches!(container.mode, NetworkMode::Bridge | NetworkMode::None) {
            netns::with_netlink_in(&container.netns, |h| async move {
                match netlink::link_by_name(&h, "lo").await? {
                    Some(lo) => netlink::set_up(&h, lo.index).await,
                    None => Ok(()),
                }
            })?;
        }
        let port_network = networks.iter().position(|n| !n.internal);
        for (i, network) in networks.iter().enumerate() {
            let mut endpoint = container.endpoints[i].clone();
            self.make_endpoint(
                &container.netns,
                network,
                &mut endpoint,
                Some(i) == port_network,
                undo,
            )
            .await?;
            endpoint.pending = false;
            container.endpoints[i] = endpoint;
        }
        container.pending = false;
        for (ep, port) in self.mappings_of(container)? {
            self.dataplane.publish(&ep, &port)?;
            undo.steps.push(Step::Unpublish(port));
        }
        self.save_container(container.clone())?;
        for endpoint in &container.endpoints {
            self.note_allocation(&endpoint.network_id, endpoint.ip)?;
        }
        self.refresh_views()?;
        self.dns_for(container)
    }

    /// The steps that remove everything a container has on the node, record last.
    pub(super) fn container_teardown_steps(&self, c: &ContainerRecord) -> Vec<Step> {
        let mut steps: Vec<Step> = c.ports.iter().map(|p| Step::Unpublish(*p)).collect();
        for e in &c.endpoints {
            steps.extend(teardown_steps(e));
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
                ipam_config: e.requested_ip.map(|ip| EndpointIpamConfig {
                    ipv4_address: ip.to_string(),
                }),
                aliases: (!aliases.is_empty()).then_some(aliases),
                network_id: network.id.clone(),
                addressing: EndpointAddressing {
                    endpoint_id: e.endpoint_id.clone(),
                    gateway: network.gateway.to_string(),
                    ip_address: e.ip.to_string(),
                    ip_prefix_len: network.subnet.prefix_len(),
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
                networks,
            },
            link_info: self.link_info(c),
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
            let ip = endpoint.ip;
            let mut names = vec![link.alias.clone(), short_id(&other.id).to_string()];
            if other.name != link.alias {
                names.push(other.name.clone());
            }
            info.hosts_entries
                .push(format!("{ip}\t{}", names.join(" ")));
            let prefix = link.alias.to_uppercase().replace(['-', '.'], "_");
            info.env
                .push(format!("{prefix}_NAME=/{}/{}", c.name, link.alias));
            let exposed = other.all_exposed();
            if let Some(first) = exposed.first() {
                info.env.push(format!(
                    "{prefix}_PORT={}://{ip}:{}",
                    first.proto.as_str(),
                    first.port
                ));
            }
            for port in exposed {
                let (number, proto) = (port.port, port.proto.as_str());
                let var = format!("{prefix}_PORT_{number}_{}", proto.to_uppercase());
                info.env.push(format!("{var}={proto}://{ip}:{number}"));
                info.env.push(format!("{var}_ADDR={ip}"));
                info.env.push(format!("{var}_PORT={number}"));
                info.env.push(format!("{var}_PROTO={proto}"));
            }
        }
        if let Some(own) = c.endpoints.first() {
            info.hosts_entries
                .push(format!("{}\t{}", own.ip, short_id(&c.id)));
        }
        info
    }
}
