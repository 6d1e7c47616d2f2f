//! Docker's remote network driver: each call becomes what the bpfbridge API does for the same
//! change. A Docker network is a bpfbridge network with Docker's id; a Docker sandbox (the
//! container's network namespace) is a bpfbridge container named after it, whose endpoints
//! are the sandbox's endpoints on our networks. Docker moves and addresses the interface
//! itself, so the agent only makes the veth on the bridge and attaches the dataplane.
//!
//! Every call is safe to repeat: a create for something that exists with the same settings
//! succeeds, a removal of something unknown succeeds.
//!
//! The rest of the service asks this module, and only this module, what differs for records
//! Docker drives (`ManagedBy`): [`refuse_docker_managed`], [`api_drives`],
//! [`agent_dns_answers_for`], [`endpoint_went_with_its_veth`], [`forgotten_when_empty`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use ipnet::IpNet;

use super::{Service, Step, Undo, default_host_ips, plan::next_ifname, veth_names};
use crate::{
    Error, Result,
    model::{
        ContainerRecord, CreateNetwork, DockerEndpointRecord, EndpointRecord, ExposedPort,
        HostPort, Ipam, IpamConfig, MacAddress, ManagedBy, NetworkMode, NetworkRecord, PortBinding,
        PortRequest,
        docker::{
            CreateEndpointReply, CreateEndpointRequest, CreateNetworkRequest, DockerPortBinding,
            DockerTransportPort, ExternalConnectivityRequest, InterfaceName, InterfaceReply,
            JoinReply, JoinRequest, OPT_ENABLE_IPV6, OPT_GENERIC, OPT_INTERNAL, OPT_PORT_MAP,
            endpoint_ports, proto_from_number,
        },
        now, random_id,
    },
};

/// Docker keeps its own state of what it drives through the plugin; changing it behind
/// Docker's back would leave the two disagreeing.
pub(super) fn refuse_docker_managed(kind: &str, name: &str, managed_by: ManagedBy) -> Result<()> {
    match managed_by {
        ManagedBy::Bpfbridge => Ok(()),
        ManagedBy::Docker => Err(Error::Forbidden(format!(
            "{kind} {name} is managed by Docker through the bpfbridge plugin; change it with docker"
        ))),
        ManagedBy::Cni => Err(Error::Forbidden(format!(
            "{kind} {name} is managed by a container runtime through bpfbridge-cni; remove it with that runtime"
        ))),
    }
}

/// Whether the bpfbridge API drives records `managed_by` (and so may remove them unasked,
/// as a prune does).
pub(super) fn api_drives(managed_by: ManagedBy) -> bool {
    match managed_by {
        ManagedBy::Bpfbridge => true,
        ManagedBy::Docker | ManagedBy::Cni => false,
    }
}

/// Whether the agent's DNS answers for `container`: Docker's embedded DNS answers for the
/// sandboxes it drives.
pub(super) fn agent_dns_answers_for(container: &ContainerRecord) -> bool {
    api_drives(container.managed_by)
}

/// Whether a missing node-side veth means `container`'s endpoint is gone: Docker made the
/// container side and removes it with the sandbox, so for a sandbox it does (the sandbox
/// went while the agent was down); so does a CNI runtime's namespace, which takes the veth
/// pair with it; the agent recreates its own containers' veths.
pub(super) fn endpoint_went_with_its_veth(container: &ContainerRecord) -> bool {
    matches!(container.managed_by, ManagedBy::Docker | ManagedBy::Cni)
}

/// Whether `container`'s record goes with its last endpoint: a sandbox's does, as it is
/// only the sandbox's endpoints on our networks, and so does a CNI attachment's.
pub(super) fn forgotten_when_empty(container: &ContainerRecord) -> bool {
    matches!(container.managed_by, ManagedBy::Docker | ManagedBy::Cni)
}

/// Docker names the interface it moves into the sandbox this prefix plus a number.
const INTERFACE_PREFIX: &str = "eth";

/// Docker's ids are 64 hex digits; anything else is not from Docker.
fn check_docker_id(kind: &str, id: &str) -> Result<()> {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid {kind} id {id:?}: expected 64 hex digits"
        )))
    }
}

/// The bpfbridge name of a Docker network: Docker does not tell drivers its names.
fn network_name(network_id: &str) -> String {
    format!("docker-{}", &network_id[..12])
}

/// The bpfbridge name of a Docker sandbox: the sandbox id that names its namespace file
/// (`docker inspect -f '{{.NetworkSettings.SandboxKey}}'`).
fn sandbox_name(sandbox: &std::path::Path) -> String {
    let id = sandbox
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(str::to_string)
        .unwrap_or_else(|| random_id()[..12].to_string());
    format!("docker-{id}")
}

/// An option that Docker sends as a JSON boolean (or, from older clients, a string).
fn bool_option(options: &crate::model::docker::Options, key: &str) -> Result<bool> {
    match options.get(key) {
        None | Some(serde_json::Value::Null) => Ok(false),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(serde_json::Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
        Some(other) => Err(Error::InvalidArgument(format!(
            "option {key}: expected true or false, got {other}"
        ))),
    }
}

/// The `-o` options, as the strings `docker network create` was given.
fn generic_options(options: &crate::model::docker::Options) -> Result<BTreeMap<String, String>> {
    let Some(generic) = options.get(OPT_GENERIC) else {
        return Ok(BTreeMap::new());
    };
    let serde_json::Value::Object(map) = generic else {
        return Ok(BTreeMap::new());
    };
    map.iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k.clone(), s.clone())),
            serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {
                Ok((k.clone(), v.to_string()))
            }
            other => Err(Error::InvalidArgument(format!(
                "option {k}: expected a string, got {other}"
            ))),
        })
        .collect()
}

/// `ADDRESS/PREFIX` or `ADDRESS`, as Docker writes addresses (IPv4 or IPv6 as `T` is).
pub(super) fn parse_cidr_address<T: std::str::FromStr>(what: &str, s: &str) -> Result<T> {
    s.split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| Error::InvalidArgument(format!("invalid {what} {s:?}")))
}

/// The port map as bpfbridge's requests: an empty host address means the network's default,
/// host port 0 a dynamic port, an end above the start a range.
fn port_requests(map: &[DockerPortBinding], default_ips: &[IpAddr]) -> Result<Vec<PortRequest>> {
    let mut requests = Vec::new();
    for b in map {
        let host_ips = match b.host_ip.as_str() {
            "" => default_ips.to_vec(),
            ip => vec![ip.parse().map_err(|_| {
                Error::InvalidArgument(format!("invalid host IP {ip:?} in port map"))
            })?],
        };
        for host_ip in host_ips {
            requests.push(port_request(b, host_ip)?);
        }
    }
    Ok(requests)
}

/// One binding of the port map on `host_ip`.
fn port_request(b: &DockerPortBinding, host_ip: IpAddr) -> Result<PortRequest> {
    if b.port == 0 {
        return Err(Error::InvalidArgument(
            "container port 0 in port map".into(),
        ));
    }
    let host_port = match (b.host_port, b.host_port_end) {
        (0, _) => HostPort::Dynamic,
        (start, end) if end > start => HostPort::Range(start, end),
        (port, _) => HostPort::Fixed(port),
    };
    Ok(PortRequest {
        proto: proto_from_number(b.proto)?,
        container_port: b.port,
        host_ip,
        host_port,
    })
}

/// `com.docker.network.endpoint.exposedports` as bpfbridge's exposed ports.
fn exposed_ports(list: &[DockerTransportPort]) -> Result<Vec<ExposedPort>> {
    list.iter()
        .map(|p| {
            Ok(ExposedPort {
                port: p.port,
                proto: proto_from_number(p.proto)?,
            })
        })
        .collect()
}

/// Whether `bindings` are what `requests` asked for (a repeated call).
fn satisfies(bindings: &[PortBinding], requests: &[PortRequest]) -> bool {
    bindings.len() == requests.len()
        && requests.iter().zip(bindings).all(|(r, b)| {
            r.proto == b.proto
                && r.container_port == b.container_port
                && r.host_ip == b.host_ip
                && match r.host_port {
                    HostPort::Fixed(p) => b.host_port == p,
                    HostPort::Range(start, end) => (start..=end).contains(&b.host_port),
                    HostPort::Dynamic => true,
                }
        })
}

impl Service {
    /// The sandbox container holding the Docker endpoint `endpoint_id`, if it joined one.
    fn holder_of(&self, endpoint_id: &str) -> Option<&ContainerRecord> {
        self.state.containers.values().find(|c| {
            c.managed_by == ManagedBy::Docker
                && c.endpoints.iter().any(|e| e.endpoint_id == endpoint_id)
        })
    }

    fn docker_network(&self, network_id: &str) -> Result<&NetworkRecord> {
        self.state
            .networks
            .values()
            .find(|n| n.id == network_id && n.managed_by == ManagedBy::Docker)
            .ok_or_else(|| Error::NotFound(format!("network {network_id} not found")))
    }

    pub async fn docker_create_network(&mut self, request: CreateNetworkRequest) -> Result<()> {
        check_docker_id("network", &request.network_id)?;
        // `--ipv6`: the IPv6 pool comes from the network's IPAM driver, Docker's (which
        // needs an IPv6 `--subnet`) or bpfbridge's. Without `--ipv6`, the `-o` option
        // com.docker.network.enable_ipv6=true has bpfbridge choose the subnet and the
        // endpoints' addresses, which Docker takes from CreateEndpoint's answer.
        let ipv6 = match request.ipv6_data.as_slice() {
            [] if bool_option(&request.options, OPT_ENABLE_IPV6)? => {
                return Err(Error::InvalidArgument(
                    "--ipv6 without an IPv6 pool from the IPAM driver".into(),
                ));
            }
            [] => None,
            [ipv6] if !ipv6.aux_addresses.is_empty() => {
                return Err(Error::InvalidArgument(
                    "--aux-address is not supported by bpfbridge".into(),
                ));
            }
            [ipv6] => Some((
                crate::ipam::parse_subnet_v6("subnet", &ipv6.pool)?,
                match ipv6.gateway.as_str() {
                    "" => None,
                    g => Some(parse_cidr_address::<Ipv6Addr>("gateway", g)?),
                },
            )),
            more => {
                return Err(Error::InvalidArgument(format!(
                    "bpfbridge needs at most one IPv6 subnet per network, got {}",
                    more.len()
                )));
            }
        };
        let ipv6_pool = ipv6.map(|(subnet, _)| subnet);
        // No IPv4 pool: an IPv6-only network (Docker 28's `--ipv4=false --ipv6`), as
        // `bpfbridge network create --ipv4=false --ipv6` makes it.
        let ipv4 = match request.ipv4_data.as_slice() {
            [] if ipv6_pool.is_none() => {
                return Err(Error::InvalidArgument(
                    "bpfbridge needs an IPv4 or an IPv6 subnet from the IPAM driver, got none"
                        .into(),
                ));
            }
            [] => None,
            [ipv4] if !ipv4.aux_addresses.is_empty() => {
                return Err(Error::InvalidArgument(
                    "--aux-address is not supported by bpfbridge".into(),
                ));
            }
            [ipv4] => Some((
                super::networks::parse_subnet("subnet", &ipv4.pool)?,
                match ipv4.gateway.as_str() {
                    "" => None,
                    g => Some(parse_cidr_address::<Ipv4Addr>("gateway", g)?.to_string()),
                },
            )),
            more => {
                return Err(Error::InvalidArgument(format!(
                    "bpfbridge needs at most one IPv4 subnet per network, got {}",
                    more.len()
                )));
            }
        };
        let pool = ipv4.as_ref().map(|(subnet, _)| *subnet);
        let gateway = ipv4.and_then(|(_, gateway)| gateway);
        let internal = bool_option(&request.options, OPT_INTERNAL)?;
        let options = generic_options(&request.options)?;
        if let Some(existing) = self
            .state
            .networks
            .values()
            .find(|n| n.id == request.network_id)
        {
            // An IPv6 subnet bpfbridge chose (Docker gave none) is told by the options.
            let same = existing.subnet == pool
                && ipv6_pool
                    .is_none_or(|p| existing.ipv6.as_ref().map(|side| side.subnet) == Some(p))
                && gateway
                    .as_ref()
                    .is_none_or(|g| existing.gateway.map(|e| e.to_string()).as_ref() == Some(g))
                && existing.internal == internal
                && existing.options == options;
            return if same {
                Ok(())
            } else {
                Err(Error::Conflict(format!(
                    "network {} exists with other settings",
                    request.network_id
                )))
            };
        }
        let create = CreateNetwork {
            name: network_name(&request.network_id),
            driver: None,
            internal,
            // Unset without Docker's IPv6 pool: the `-o` option decides.
            enable_ipv6: ipv6_pool.is_some().then_some(true),
            enable_ipv4: pool.is_none().then_some(false),
            ipam: Some(Ipam {
                config: pool
                    .map(|pool| IpamConfig {
                        subnet: Some(pool.to_string()),
                        ip_range: None,
                        gateway,
                        ..IpamConfig::default()
                    })
                    .into_iter()
                    .chain(ipv6.map(|(subnet, gateway)| IpamConfig {
                        subnet: Some(subnet.to_string()),
                        gateway: gateway.map(|g| g.to_string()),
                        ..IpamConfig::default()
                    }))
                    .collect(),
                ..Ipam::default()
            }),
            options,
            labels: BTreeMap::new(),
        };
        let own_pools: Vec<IpNet> = pool
            .map(IpNet::V4)
            .into_iter()
            .chain(ipv6_pool.map(IpNet::V6))
            .collect();
        let mut network = self.plan_network(&create, false, &own_pools).await?;
        for warning in super::networks::ignored_options(&create.options) {
            tracing::warn!(network = %request.network_id, "{warning}");
        }
        network.id = request.network_id;
        network.managed_by = ManagedBy::Docker;
        self.add_network(network).await.map(drop)
    }

    pub async fn docker_delete_network(&mut self, network_id: &str) -> Result<()> {
        let Ok(network) = self.docker_network(network_id).cloned() else {
            return Ok(());
        };
        // Endpoints Docker created but never deleted go with their network.
        let leftovers: Vec<String> = self
            .state
            .docker_endpoints
            .values()
            .filter(|e| e.network_id == network.id)
            .map(|e| e.endpoint_id.clone())
            .collect();
        for endpoint_id in leftovers {
            self.docker_delete_endpoint(&endpoint_id).await?;
        }
        self.remove_network_record(network).await
    }

    pub fn docker_create_endpoint(
        &mut self,
        request: CreateEndpointRequest,
    ) -> Result<CreateEndpointReply> {
        check_docker_id("endpoint", &request.endpoint_id)?;
        let network = self.docker_network(&request.network_id)?.clone();
        let interface = &request.interface;
        let ipv6 = match (interface.address_ipv6.as_str(), &network.ipv6) {
            ("", None) => None,
            // Docker gave none on a network whose IPv6 side bpfbridge chose: bpfbridge
            // chooses, and Docker takes it from the answer.
            ("", Some(_)) => Some(self.chosen_ipv6(&request.endpoint_id, &network)?),
            (address, Some(side)) => {
                let ip: Ipv6Addr = parse_cidr_address("IPv6 address", address)?;
                if !side.subnet.contains(&ip) || [side.subnet.network(), side.gateway].contains(&ip)
                {
                    return Err(Error::InvalidArgument(format!(
                        "IPv6 address {ip} is not a usable container address of network {} ({})",
                        network.name, side.subnet
                    )));
                }
                Some(ip)
            }
            (address, None) => {
                return Err(Error::InvalidArgument(format!(
                    "IPv6 address {address} on network {}, which has no IPv6",
                    network.name
                )));
            }
        };
        let ip = match (interface.address.as_str(), network.ipv4()) {
            ("", Some(_)) => {
                return Err(Error::InvalidArgument(
                    "the endpoint has no IPv4 address: Docker's IPAM (or --ipam-driver) must \
                     give one"
                        .into(),
                ));
            }
            // An IPv6-only network: its endpoints have no IPv4 address.
            ("", None) => None,
            (address, Some((subnet, gateway))) => {
                let ip = parse_cidr_address("address", address)?;
                if !subnet.contains(&ip)
                    || [subnet.network(), subnet.broadcast(), gateway].contains(&ip)
                {
                    return Err(Error::InvalidArgument(format!(
                        "IP address {ip} is not a usable container address of network {} \
                         ({subnet})",
                        network.name
                    )));
                }
                Some(ip)
            }
            (address, None) => {
                return Err(Error::InvalidArgument(format!(
                    "IPv4 address {address} on network {}, which is IPv6-only",
                    network.name
                )));
            }
        };
        let mac = match (interface.mac_address.as_str(), ip) {
            ("", Some(ip)) => MacAddress::for_ip(ip),
            // Without an IPv4 address to derive it from, a random one, as for bpfbridge's
            // own containers; the one given already when Docker repeats the call.
            ("", None) => self
                .state
                .docker_endpoints
                .get(&request.endpoint_id)
                .map_or_else(MacAddress::random, |existing| existing.mac),
            (given, _) => given.parse()?,
        };
        let (port_map, exposed) = endpoint_ports(&request.options)?;
        port_requests(&port_map, &[Ipv4Addr::UNSPECIFIED.into()])?;
        let exposed = exposed_ports(&exposed)?;
        let record = DockerEndpointRecord {
            endpoint_id: request.endpoint_id.clone(),
            network_id: network.id.clone(),
            ip,
            ipv6,
            mac,
            port_map,
            exposed,
        };
        let reply = CreateEndpointReply {
            interface: Some(InterfaceReply {
                mac_address: interface.mac_address.is_empty().then(|| mac.to_string()),
                address_ipv6: ipv6
                    .filter(|_| interface.address_ipv6.is_empty())
                    .zip(network.ipv6.as_ref())
                    .map(|(ip, side)| format!("{ip}/{}", side.subnet.prefix_len())),
            })
            .filter(|filled| *filled != InterfaceReply::default()),
        };
        if let Some(existing) = self.state.docker_endpoints.get(&request.endpoint_id) {
            return if *existing == record {
                Ok(reply)
            } else {
                Err(Error::Conflict(format!(
                    "endpoint {} exists with other settings",
                    request.endpoint_id
                )))
            };
        }
        if let Some(ip) = ip {
            let in_use = self
                .state
                .containers
                .values()
                .filter_map(|c| c.endpoint(&network.id)?.ip)
                .chain(
                    self.state
                        .docker_endpoints
                        .values()
                        .filter(|e| e.network_id == network.id)
                        .filter_map(|e| e.ip),
                )
                .any(|used| used == ip);
            if in_use {
                return Err(Error::Conflict(format!(
                    "IP address {ip} is already in use on network {}",
                    network.name
                )));
            }
        }
        if interface.address_ipv6.is_empty()
            && let (Some(mut side), Some(ip)) = (network.ipv6.clone(), record.ipv6)
        {
            side.last_allocated = Some(ip);
            self.save_network(NetworkRecord {
                ipv6: Some(side),
                ..network
            })?;
        }
        self.store.put_docker_endpoint(&record)?;
        self.state
            .docker_endpoints
            .insert(record.endpoint_id.clone(), record);
        Ok(reply)
    }

    /// The IPv6 address bpfbridge gives a Docker endpoint on `network`: the one it gave
    /// already when Docker repeats the call, else the next free one of the network's IPv6
    /// side, as for bpfbridge's own containers.
    fn chosen_ipv6(&self, endpoint_id: &str, network: &NetworkRecord) -> Result<Ipv6Addr> {
        if let Some(ip) = self
            .state
            .docker_endpoints
            .get(endpoint_id)
            .and_then(|e| e.ipv6)
        {
            return Ok(ip);
        }
        let side = network
            .ipv6
            .as_ref()
            .ok_or_else(|| Error::Internal(format!("network {} has no IPv6 side", network.name)))?;
        let in_use: BTreeSet<Ipv6Addr> = self
            .state
            .containers
            .values()
            .filter_map(|c| c.endpoint(&network.id)?.ipv6)
            .chain(
                self.state
                    .docker_endpoints
                    .values()
                    .filter(|e| e.network_id == network.id)
                    .filter_map(|e| e.ipv6),
            )
            .collect();
        crate::ipam::allocate_v6(
            &network.name,
            side.subnet,
            side.ip_range.unwrap_or(side.subnet),
            side.gateway,
            &in_use,
            side.last_allocated,
        )
    }

    pub async fn docker_delete_endpoint(&mut self, endpoint_id: &str) -> Result<()> {
        // A Leave that never came (the agent was down) is done now.
        self.docker_leave(endpoint_id).await?;
        if self.state.docker_endpoints.contains_key(endpoint_id) {
            self.store.delete_docker_endpoint(endpoint_id)?;
            self.state.docker_endpoints.remove(endpoint_id);
        }
        Ok(())
    }

    /// What `EndpointOperInfo` reports: the address and the ports as published, host ports
    /// chosen. Docker 20.10 shows none of it in `docker port` (see the README).
    pub fn docker_endpoint_info(&self, endpoint_id: &str) -> BTreeMap<String, serde_json::Value> {
        let mut info = BTreeMap::new();
        if let Some(record) = self.state.docker_endpoints.get(endpoint_id) {
            info.insert(
                "IPAddress".into(),
                record
                    .ip
                    .map(|ip| ip.to_string())
                    .unwrap_or_default()
                    .into(),
            );
        }
        if let Some(container) = self.holder_of(endpoint_id) {
            let published: Vec<DockerPortBinding> = container
                .ports
                .iter()
                .map(|p| DockerPortBinding {
                    proto: p.proto.ip_proto(),
                    ip: String::new(),
                    port: p.container_port,
                    host_ip: p.host_ip.to_string(),
                    host_port: p.host_port,
                    host_port_end: p.host_port,
                })
                .collect();
            info.insert(
                OPT_PORT_MAP.into(),
                serde_json::to_value(published).unwrap_or_default(),
            );
        }
        info
    }

    pub async fn docker_join(&mut self, request: JoinRequest) -> Result<JoinReply> {
        let record = self
            .state
            .docker_endpoints
            .get(&request.endpoint_id)
            .cloned()
            .ok_or_else(|| {
                Error::NotFound(format!("endpoint {} not found", request.endpoint_id))
            })?;
        if record.network_id != request.network_id {
            return Err(Error::InvalidArgument(format!(
                "endpoint {} belongs to network {}, not {}",
                record.endpoint_id, record.network_id, request.network_id
            )));
        }
        let network = self.docker_network(&record.network_id)?.clone();
        // Docker binds the namespace there only after Join, when the container starts.
        let sandbox = PathBuf::from(&request.sandbox_key);
        if !sandbox.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "sandbox key {:?} is not an absolute path",
                request.sandbox_key
            )));
        }
        let reply = JoinReply {
            interface_name: InterfaceName {
                src_name: veth_names(&record.endpoint_id).1,
                dst_prefix: network
                    .container_iface_prefix
                    .clone()
                    .unwrap_or_else(|| INTERFACE_PREFIX.into()),
            },
            gateway: network.gateway_ipv4().filter(|_| !network.internal),
            gateway_ipv6: network
                .ipv6
                .as_ref()
                .filter(|_| !network.internal && record.ipv6.is_some())
                .map(|side| side.gateway),
            disable_gateway_service: false,
        };
        if let Some(holder) = self.holder_of(&record.endpoint_id) {
            return if holder.netns == sandbox {
                Ok(reply)
            } else {
                Err(Error::Conflict(format!(
                    "endpoint {} has joined another sandbox",
                    record.endpoint_id
                )))
            };
        }
        let mut container = match self
            .state
            .containers
            .values()
            .find(|c| c.managed_by == ManagedBy::Docker && c.netns == sandbox)
        {
            Some(c) => c.clone(),
            None => ContainerRecord {
                id: random_id(),
                name: sandbox_name(&sandbox),
                created: now(),
                mode: NetworkMode::Bridge,
                netns: sandbox,
                netns_owned: false,
                endpoints: Vec::new(),
                ports: Vec::new(),
                exposed: Vec::new(),
                links: Vec::new(),
                pending: false,
                managed_by: ManagedBy::Docker,
            },
        };
        let mut endpoint = EndpointRecord {
            network_id: network.id.clone(),
            endpoint_id: record.endpoint_id.clone(),
            ip: record.ip,
            mac: record.mac,
            ifname: next_ifname(
                &container,
                network
                    .container_iface_prefix
                    .as_deref()
                    .unwrap_or(INTERFACE_PREFIX),
            ),
            host_veth: String::new(),
            host_veth_ifindex: 0,
            host_veth_mac: None,
            aliases: Vec::new(),
            requested_ip: None,
            ipv6: record.ipv6,
            requested_ipv6: None,
            pending: true,
            gw_priority: 0,
            sub_interface: false,
        };
        // The pending endpoint in the record: a crash from here on is rolled back on start.
        container.endpoints.push(endpoint.clone());
        self.save_container(container.clone())?;
        let mut undo = Undo::default();
        let made = self
            .make_veth_on_bridge(&network, &mut endpoint, &mut undo)
            .await;
        let position = container.endpoints.len() - 1;
        match made {
            Ok(_) => {
                endpoint.pending = false;
                container.endpoints[position] = endpoint;
                self.save_container(container)?;
                self.refresh_views()?;
                Ok(reply)
            }
            Err(e) => {
                self.rollback(undo).await;
                container.endpoints.pop();
                self.forget_or_save_sandbox(container)?;
                Err(e)
            }
        }
    }

    /// Saves a sandbox's container, or deletes its record once no endpoint is left.
    fn forget_or_save_sandbox(&mut self, container: ContainerRecord) -> Result<()> {
        if container.endpoints.is_empty() {
            self.forget_container(&container.name)
        } else {
            self.save_container(container)
        }
    }

    pub async fn docker_leave(&mut self, endpoint_id: &str) -> Result<()> {
        let Some(mut container) = self.holder_of(endpoint_id).cloned() else {
            return Ok(());
        };
        let position = container
            .endpoints
            .iter()
            .position(|e| e.endpoint_id == endpoint_id)
            .expect("the holder holds the endpoint");
        self.remove_endpoint(&mut container, position).await?;
        if container.endpoints.is_empty() {
            self.forget_or_save_sandbox(container)?;
        }
        self.refresh_views()
    }

    /// Publishes the sandbox's ports through this endpoint, its way out.
    pub async fn docker_program_external(
        &mut self,
        request: ExternalConnectivityRequest,
    ) -> Result<()> {
        let mut container = self
            .holder_of(&request.endpoint_id)
            .cloned()
            .ok_or_else(|| {
                Error::NotFound(format!("endpoint {} has not joined", request.endpoint_id))
            })?;
        let network = self.docker_network(&request.network_id)?.clone();
        let (port_map, exposed) = endpoint_ports(&request.options)?;
        let families = self.port_families(&container);
        let host_ips = default_host_ips(&self.settings, Some(&network), families);
        let requests = port_requests(&port_map, &host_ips)?;
        self.check_port_families(&requests, families)?;
        if !container.ports.is_empty() {
            if satisfies(&container.ports, &requests) {
                return Ok(());
            }
            self.docker_revoke_external(&request.endpoint_id).await?;
            // What revoking recorded.
            container.ports.clear();
        }
        let ports = self.plan_ports(&requests)?;
        let before = container.clone();
        container.ports = ports.bindings.clone();
        for port in exposed_ports(&exposed)? {
            if !container.exposed.contains(&port) {
                container.exposed.push(port);
            }
        }
        // Recorded first: a crash before the dataplane has them is made good on start.
        self.record_port_plan(&ports)?;
        self.save_container(container.clone())?;
        let mut undo = Undo::default();
        if let Err(e) = self.publish_ports(&container, &mut undo) {
            self.rollback(undo).await;
            self.save_container(before)?;
            return Err(e);
        }
        self.refresh_views()
    }

    pub async fn docker_revoke_external(&mut self, endpoint_id: &str) -> Result<()> {
        let Some(mut container) = self.holder_of(endpoint_id).cloned() else {
            return Ok(());
        };
        // Recorded first: after a crash, the start-up sync withdraws what is left.
        let steps = std::mem::take(&mut container.ports)
            .into_iter()
            .map(Step::Unpublish)
            .collect();
        self.save_container(container)?;
        self.run_all(steps).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Proto;

    fn binding(host_port: u16, host_port_end: u16) -> DockerPortBinding {
        DockerPortBinding {
            proto: 6,
            ip: String::new(),
            port: 80,
            host_ip: String::new(),
            host_port,
            host_port_end,
        }
    }

    #[test]
    fn port_map_entries_become_requests() {
        let default_ip: IpAddr = "192.0.2.1".parse().unwrap();
        let map = [
            binding(8080, 8080),
            binding(0, 0),
            binding(8000, 8010),
            DockerPortBinding {
                proto: 17,
                host_ip: "127.0.0.1".into(),
                ..binding(53, 0)
            },
        ];
        let requests = port_requests(&map, &[default_ip]).unwrap();
        let host_ports: Vec<HostPort> = requests.iter().map(|r| r.host_port).collect();
        assert_eq!(
            host_ports,
            [
                HostPort::Fixed(8080),
                HostPort::Dynamic,
                HostPort::Range(8000, 8010),
                HostPort::Fixed(53)
            ]
        );
        assert_eq!(requests[0].host_ip, default_ip);
        assert_eq!(
            (requests[3].proto, requests[3].host_ip),
            (Proto::Udp, IpAddr::from(Ipv4Addr::LOCALHOST))
        );
        let v6 = DockerPortBinding {
            host_ip: "::".into(),
            ..binding(80, 80)
        };
        assert_eq!(
            port_requests(&[v6], &[default_ip]).unwrap()[0].host_ip,
            IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
        );
        let bad = DockerPortBinding {
            host_ip: "nope".into(),
            ..binding(80, 80)
        };
        assert!(port_requests(&[bad], &[default_ip]).is_err());
    }

    #[test]
    fn a_repeated_program_call_is_recognised() {
        let ip = IpAddr::from(Ipv4Addr::UNSPECIFIED);
        let requests = port_requests(&[binding(0, 0), binding(8000, 8010)], &[ip]).unwrap();
        let bound = |first: u16, second: u16| {
            [first, second].map(|host_port| PortBinding {
                proto: Proto::Tcp,
                container_port: 80,
                host_ip: ip,
                host_port,
            })
        };
        assert!(satisfies(&bound(32768, 8005), &requests));
        assert!(!satisfies(&bound(32768, 9000), &requests));
        assert!(!satisfies(&bound(32768, 8005)[..1], &requests));
    }

    #[test]
    fn names_and_ids() {
        assert!(check_docker_id("network", &"a".repeat(64)).is_ok());
        assert!(check_docker_id("network", "abc").is_err());
        assert!(check_docker_id("network", &"g".repeat(64)).is_err());
        assert_eq!(
            sandbox_name(std::path::Path::new("/var/run/docker/netns/88d6dedf4868")),
            "docker-88d6dedf4868"
        );
        assert_eq!(
            parse_cidr_address::<Ipv4Addr>("a", "10.0.0.2/24").unwrap(),
            Ipv4Addr::new(10, 0, 0, 2)
        );
        assert!(parse_cidr_address::<Ipv4Addr>("a", "fe80::1/64").is_err());
    }
}
