//! Networks: the default `bridge`, user-defined bridge networks, and the predefined `host`
//! and `none`; connecting and disconnecting containers.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{
    BRIDGE_PREFIX, DEFAULT_NETWORK, HOST_NETWORK, NONE_NETWORK, Service, Step, Undo,
    docker::{self, refuse_docker_managed},
    drivers,
    plan::{EndpointWish, plan_endpoint},
};
use crate::{
    Error, Result,
    dataplane::{DirectAccess, NetworkPolicy},
    faults::{self, CrashPoint},
    ipam,
    model::{
        ConnectRequest, CreateNetwork, DisconnectRequest, EndpointRecord, GatewayMode, Ipam,
        IpamConfig, Ipv6Side, KNOWN_OPTIONS, ManagedBy, NetworkContainer, NetworkCreated,
        NetworkDriver, NetworkInspect, NetworkMode, NetworkRecord, NetworksPruned, OPT_BRIDGE_NAME,
        OPT_CONTAINER_IFACE_PREFIX, OPT_ENABLE_ICC, OPT_ENABLE_IP_MASQUERADE, OPT_ENABLE_IPV4,
        OPT_ENABLE_IPV6, OPT_GATEWAY_MODE_IPV4, OPT_GATEWAY_MODE_IPV6, OPT_HOST_BINDING_IPV4,
        OPT_INHIBIT_IPV4, OPT_MTU, OPT_TRUSTED_HOST_INTERFACES, OWN_OPTION_PREFIX, now, random_id,
        validate_name,
    },
    netlink,
};

/// The owner [`Service::taken_subnets`] names for a route on the node.
const NODE_ROUTE: &str = "a route on the node";

/// The owner [`Service::taken_subnets_v6`] names for the subnet of an address of the node.
const NODE_ADDRESS: &str = "an address of the node";

fn parse_bool_option(key: &str, value: &str) -> Result<bool> {
    value.parse().map_err(|_| {
        Error::InvalidArgument(format!("option {key}={value:?}: expected true or false"))
    })
}

/// Parses a CIDR that must be a network address (no host bits), like Docker.
pub(super) fn parse_subnet(what: &str, s: &str) -> Result<Ipv4Net> {
    let net: Ipv4Net = s
        .parse()
        .map_err(|_| Error::InvalidArgument(format!("invalid {what} {s:?}")))?;
    if net.trunc() != net {
        return Err(Error::InvalidArgument(format!(
            "invalid {what} {s}: host bits set; did you mean {}?",
            net.trunc()
        )));
    }
    if net.prefix_len() > 30 {
        return Err(Error::InvalidArgument(format!(
            "invalid {what} {s}: a /{} has no room for containers",
            net.prefix_len()
        )));
    }
    Ok(net)
}

/// A valid Linux interface name that does not exist yet.
fn check_bridge_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', ':']) {
        return Err(Error::InvalidArgument(format!(
            "invalid bridge name {name:?} (at most 15 characters, no '/', ':' or space)"
        )));
    }
    Ok(())
}

impl Service {
    /// Tells the dataplane the networks' policy (isolation, icc, internal, masquerade,
    /// direct access).
    pub(super) fn sync_networks(&mut self) -> Result<()> {
        let policies = self.network_policies(false);
        self.dataplane.set_networks(&policies)
    }

    /// The networks' policies, those half made or half removed too when `with_pending`.
    pub(super) fn network_policies(&self, with_pending: bool) -> Vec<NetworkPolicy> {
        let allow_direct_routing = self.settings.allow_direct_routing;
        self.state
            .networks
            .values()
            .filter(|n| (with_pending || !n.pending) && n.driver.is_bridge())
            .map(|n| network_policy(n, allow_direct_routing))
            .collect()
    }

    /// Subnets in use: by networks, by pools the Docker IPAM driver handed out (but
    /// `own_pools`, those a network is being made for) and by routes on the node that are not
    /// our bridges'.
    pub(super) async fn taken_subnets(
        &self,
        own_pools: &[IpNet],
    ) -> Result<Vec<(Ipv4Net, String)>> {
        let mut taken: Vec<(Ipv4Net, String)> = self
            .state
            .networks
            .values()
            .filter_map(|n| Some((n.subnet?, format!("network {}", n.name))))
            .collect();
        taken.extend(
            self.ipam_pools_but(own_pools)
                .filter_map(|(pool, owner)| match pool {
                    IpNet::V4(pool) => Some((pool, owner)),
                    IpNet::V6(_) => None,
                }),
        );
        let ours: BTreeSet<Ipv4Net> = self
            .state
            .networks
            .values()
            .filter_map(|n| n.subnet)
            .collect();
        for route in netlink::ipv4_routes(&self.handle).await? {
            if route.destination.prefix_len() > 0 && !ours.contains(&route.destination) {
                taken.push((route.destination, NODE_ROUTE.into()));
            }
        }
        Ok(taken)
    }

    /// The pools the Docker IPAM driver handed out but `own_pools`, each with its owner's
    /// name for a message.
    fn ipam_pools_but<'a>(
        &'a self,
        own_pools: &'a [IpNet],
    ) -> impl Iterator<Item = (IpNet, String)> + 'a {
        self.state
            .ipam_pools
            .values()
            .filter(|p| !own_pools.contains(&p.pool))
            .map(|p| (p.pool, format!("Docker IPAM pool {}", p.pool_id)))
    }

    /// IPv6 subnets in use: by networks, by IPv6 pools the Docker IPAM driver handed out
    /// (but `own_pools`) and by the node's addresses.
    pub(super) async fn taken_subnets_v6(
        &self,
        own_pools: &[IpNet],
    ) -> Result<Vec<(Ipv6Net, String)>> {
        let mut taken: Vec<(Ipv6Net, String)> = self
            .state
            .networks
            .values()
            .filter_map(|n| Some((n.ipv6.as_ref()?.subnet, format!("network {}", n.name))))
            .collect();
        taken.extend(
            self.ipam_pools_but(own_pools)
                .filter_map(|(pool, owner)| match pool {
                    IpNet::V6(pool) => Some((pool, owner)),
                    IpNet::V4(_) => None,
                }),
        );
        taken.extend(
            netlink::ipv6_addresses(&self.handle)
                .await?
                .into_iter()
                .map(|(_, net)| (net.trunc(), NODE_ADDRESS.to_string())),
        );
        Ok(taken)
    }

    /// The first subnet of the IPv6 pools (those of `--default-address-pool` with an IPv6
    /// base, else the agent's unique local /48) that overlaps none of `taken`, for `owner`
    /// (named when the pools are exhausted).
    pub(super) fn free_subnet_v6(
        &self,
        owner: &str,
        taken: &[(Ipv6Net, String)],
    ) -> Result<Ipv6Net> {
        let taken: Vec<Ipv6Net> = taken.iter().map(|(t, _)| *t).collect();
        let pools = ipam::ipv6_pools(&self.settings.default_address_pools, self.ula_global_id);
        ipam::first_free_subnet_v6(&pools, &taken).ok_or_else(|| Error::PoolExhausted {
            network: owner.to_string(),
        })
    }

    /// Creates the network's bridge if it is missing, and gives it its address, MTU and
    /// link state.
    pub(super) async fn ensure_bridge(&self, network: &NetworkRecord) -> Result<()> {
        let bridge = match netlink::link_by_name(&self.handle, &network.bridge).await? {
            Some(link) => link,
            None => {
                netlink::create_bridge(&self.handle, &network.bridge, network.mtu).await?;
                netlink::link_by_name(&self.handle, &network.bridge)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("bridge {} vanished", network.bridge)))?
            }
        };
        if bridge.mtu != network.mtu {
            netlink::set_mtu(&self.handle, bridge.index, network.mtu).await?;
        }
        let addresses = netlink::ipv4_addresses(&self.handle).await?;
        if let Some(gateway) = network.gateway_net()
            && network.bridge_has_address()
            && !addresses
                .iter()
                .any(|(i, a)| *i == bridge.index && *a == gateway)
        {
            netlink::add_address(&self.handle, bridge.index, gateway).await?;
        }
        if network.ipv6.is_some() && self.settings.ip_forward {
            super::enable_ipv6_forwarding()?;
        }
        if let Some(gateway) = network.bridge_ipv6_address() {
            let addresses = netlink::ipv6_addresses(&self.handle).await?;
            if !addresses
                .iter()
                .any(|(i, a)| *i == bridge.index && *a == gateway)
            {
                netlink::add_address_v6(&self.handle, bridge.index, gateway).await?;
            }
        }
        netlink::set_up(&self.handle, bridge.index).await
    }

    /// The IPv4 side of a network being planned: the subnet of `config` (the IPAM entry
    /// without an IPv6 subnet), else the first free subnet of the address pools; its
    /// gateway the subnet's first address unless given.
    async fn plan_ipv4(
        &self,
        name: &str,
        config: &IpamConfig,
        driver: &NetworkDriver,
        own_pools: &[IpNet],
    ) -> Result<Ipv4Plan> {
        if config.subnet.is_none() && (config.gateway.is_some() || config.ip_range.is_some()) {
            return Err(Error::InvalidArgument(
                "--gateway and --ip-range need --subnet".into(),
            ));
        }
        let taken = self.taken_subnets(own_pools).await?;
        let subnet = match &config.subnet {
            Some(s) => {
                let subnet = parse_subnet("subnet", s)?;
                // A macvlan or ipvlan subnet is the LAN's, which the node may well route.
                let overlapping = |(t, owner): &&(Ipv4Net, String)| {
                    ipam::overlaps(t, &subnet) && (driver.is_bridge() || owner != NODE_ROUTE)
                };
                if let Some((_, owner)) = taken.iter().find(overlapping) {
                    return Err(Error::Conflict(format!(
                        "subnet {subnet} overlaps with {owner}"
                    )));
                }
                subnet
            }
            None => {
                let taken: Vec<Ipv4Net> = taken.iter().map(|(t, _)| *t).collect();
                ipam::first_free_subnet(&self.settings.default_address_pools, &taken).ok_or_else(
                    || Error::PoolExhausted {
                        network: name.to_string(),
                    },
                )?
            }
        };
        let gateway = match &config.gateway {
            Some(g) => {
                let gateway: Ipv4Addr = g
                    .parse()
                    .map_err(|_| Error::InvalidArgument(format!("invalid gateway {g:?}")))?;
                if !subnet.contains(&gateway)
                    || gateway == subnet.network()
                    || gateway == subnet.broadcast()
                {
                    return Err(Error::InvalidArgument(format!(
                        "gateway {gateway} is not a usable address of subnet {subnet}"
                    )));
                }
                gateway
            }
            None => ipam::default_gateway(subnet),
        };
        let ip_range = match &config.ip_range {
            Some(r) => {
                let range = parse_subnet("ip-range", r)?;
                if !subnet.contains(&range) {
                    return Err(Error::InvalidArgument(format!(
                        "ip-range {range} is not inside subnet {subnet}"
                    )));
                }
                Some(range)
            }
            None => None,
        };
        Ok(Ipv4Plan {
            subnet,
            gateway,
            ip_range,
            aux_addresses: parse_aux_addresses(&config.aux_addresses, subnet)?,
        })
    }

    /// The IPv6 side of a network being planned: with IPv6 asked for (`--ipv6`, its driver
    /// option, or `--ipv6` of the daemon for the default bridge), the subnet of `config` (an
    /// IPAM entry with an IPv6 subnet), else a free /64 of the IPv6 pools; its gateway is
    /// the subnet's `::1` unless given. `own_pools` as for [`Service::taken_subnets`]. A
    /// macvlan or ipvlan subnet is the LAN's: it may be the subnet of the node's own address
    /// on the parent, as for IPv4.
    async fn plan_ipv6(
        &self,
        name: &str,
        enabled: bool,
        config: Option<&IpamConfig>,
        driver: &NetworkDriver,
        own_pools: &[IpNet],
    ) -> Result<Option<Ipv6Side>> {
        if !enabled {
            return match config {
                Some(_) => Err(Error::InvalidArgument(
                    "an IPv6 subnet needs IPv6 enabled on the network (--ipv6)".into(),
                )),
                None => Ok(None),
            };
        }
        let taken = self.taken_subnets_v6(own_pools).await?;
        let config = config.cloned().unwrap_or_default();
        let subnet = match &config.subnet {
            Some(s) => {
                let subnet = ipam::parse_subnet_v6("subnet", s)?;
                let overlapping = |(t, owner): &&(Ipv6Net, String)| {
                    ipam::overlaps_v6(t, &subnet) && (driver.is_bridge() || owner != NODE_ADDRESS)
                };
                if let Some((_, owner)) = taken.iter().find(overlapping) {
                    return Err(Error::Conflict(format!(
                        "subnet {subnet} overlaps with {owner}"
                    )));
                }
                subnet
            }
            None => self.free_subnet_v6(name, &taken)?,
        };
        let gateway = match &config.gateway {
            Some(g) => {
                let gateway = g
                    .parse()
                    .map_err(|_| Error::InvalidArgument(format!("invalid IPv6 gateway {g:?}")))?;
                if !subnet.contains(&gateway) || gateway == subnet.network() {
                    return Err(Error::InvalidArgument(format!(
                        "gateway {gateway} is not a usable address of subnet {subnet}"
                    )));
                }
                gateway
            }
            None => ipam::default_gateway_v6(subnet),
        };
        let ip_range = match &config.ip_range {
            Some(r) => {
                let range = ipam::parse_subnet_v6("ip-range", r)?;
                if !subnet.contains(&range) {
                    return Err(Error::InvalidArgument(format!(
                        "ip-range {range} is not inside subnet {subnet}"
                    )));
                }
                Some(range)
            }
            None => None,
        };
        Ok(Some(Ipv6Side {
            subnet,
            gateway,
            ip_range,
            last_allocated: None,
        }))
    }

    /// Validates a create request into a (pending) record, without changing anything.
    pub(super) async fn plan_network(
        &self,
        request: &CreateNetwork,
        is_default: bool,
        own_pools: &[IpNet],
    ) -> Result<NetworkRecord> {
        validate_name("network", &request.name)?;
        if self.state.networks.contains_key(&request.name)
            || [HOST_NETWORK, NONE_NETWORK].contains(&request.name.as_str())
        {
            return Err(Error::Conflict(format!(
                "network with name {} already exists",
                request.name
            )));
        }
        let id = random_id();
        let mut driver = drivers::plan_driver(
            request.driver.as_deref(),
            &request.options,
            request.internal,
            &id,
        )?;
        let ipam = request.ipam.clone().unwrap_or_default();
        if ipam.driver != "default" {
            return Err(Error::InvalidArgument(format!(
                "IPAM driver {:?} is not supported (only \"default\")",
                ipam.driver
            )));
        }
        // An entry whose subnet is IPv6 is the IPv6 side's; the other (with a subnet or not)
        // the IPv4 side's.
        let (ipv6_configs, ipv4_configs): (Vec<&IpamConfig>, Vec<&IpamConfig>) = ipam
            .config
            .iter()
            .partition(|c| c.subnet.as_deref().is_some_and(|s| s.contains(':')));
        if ipv4_configs.len() > 1 || ipv6_configs.len() > 1 {
            return Err(Error::InvalidArgument(
                "only one IPAM config per address family (one IPv4 and one IPv6 subnet) per network is supported".into(),
            ));
        }
        let option_enabled = |key: &str| -> Result<Option<bool>> {
            request
                .options
                .get(key)
                .map(|value| parse_bool_option(key, value))
                .transpose()
        };
        let enable_ipv6 = request
            .enable_ipv6
            .or(option_enabled(OPT_ENABLE_IPV6)?)
            .unwrap_or(is_default && self.settings.ipv6);
        let enable_ipv4 = request
            .enable_ipv4
            .or(option_enabled(OPT_ENABLE_IPV4)?)
            .unwrap_or(true);
        check_families(enable_ipv4, enable_ipv6, is_default)?;
        // ipvlan l3's IPv6 default route would go out of the interface, not through a
        // gateway: not done.
        if driver.routes_through_parent() && (enable_ipv6 || !ipv6_configs.is_empty()) {
            return Err(Error::InvalidArgument(format!(
                "IPv6 on {} networks in l3 or l3s mode is not supported yet",
                driver.name()
            )));
        }
        let ipv6_config = ipv6_configs.first().copied();
        let ipv6 = match (is_default, self.settings.fixed_cidr_v6) {
            (true, Some(cidr)) if enable_ipv6 => {
                let config = IpamConfig {
                    subnet: Some(cidr.trunc().to_string()),
                    ..IpamConfig::default()
                };
                self.plan_ipv6(&request.name, true, Some(&config), &driver, own_pools)
                    .await?
            }
            _ => {
                self.plan_ipv6(&request.name, enable_ipv6, ipv6_config, &driver, own_pools)
                    .await?
            }
        };
        let config = ipv4_configs
            .first()
            .map(|c| (*c).clone())
            .unwrap_or_default();
        let ipv4 = match enable_ipv4 {
            true => Some(
                self.plan_ipv4(&request.name, &config, &driver, own_pools)
                    .await?,
            ),
            false if config != IpamConfig::default() => {
                return Err(Error::InvalidArgument(
                    "an IPv4 subnet, gateway, ip-range or aux-address needs IPv4 enabled on the network (it was asked IPv6-only with --ipv4=false)".into(),
                ));
            }
            false => None,
        };
        let mtu = self.settle_parent(&mut driver).await?;

        let mut network = NetworkRecord {
            name: request.name.clone(),
            created: now(),
            bridge: format!("{BRIDGE_PREFIX}-{}", &id[..9]),
            id,
            subnet: ipv4.as_ref().map(|v4| v4.subnet),
            gateway: ipv4.as_ref().map(|v4| v4.gateway),
            ip_range: ipv4.as_ref().and_then(|v4| v4.ip_range),
            internal: request.internal,
            enable_icc: if is_default { self.settings.icc } else { true },
            enable_ip_masquerade: if is_default {
                self.settings.ip_masq
            } else {
                true
            },
            host_binding_ipv4: None,
            mtu,
            options: request.options.clone(),
            labels: request.labels.clone(),
            last_allocated: None,
            pending: true,
            managed_by: ManagedBy::Bpfbridge,
            gateway_mode_ipv4: GatewayMode::Nat,
            gateway_mode_ipv6: GatewayMode::Nat,
            trusted_host_interfaces: Vec::new(),
            inhibit_ipv4: false,
            container_iface_prefix: None,
            driver: NetworkDriver::Bridge,
            aux_addresses: ipv4.map(|v4| v4.aux_addresses).unwrap_or_default(),
            ipv6,
        };
        if !driver.is_bridge() {
            // No bridge and no NAT: the bridge options were refused with the driver.
            network.bridge = String::new();
            network.enable_ip_masquerade = false;
            network.driver = driver;
            for (key, value) in &request.options {
                if !drivers::is_driver_option(key) {
                    apply_option(&mut network, key, value)?;
                }
            }
            return Ok(network);
        }
        for (key, value) in &request.options {
            match key.as_str() {
                OPT_BRIDGE_NAME => {
                    check_bridge_name(value)?;
                    if self.state.networks.values().any(|n| &n.bridge == value)
                        || netlink::link_by_name(&self.handle, value).await?.is_some()
                    {
                        return Err(Error::Conflict(format!(
                            "bridge name {value} is already in use on the node"
                        )));
                    }
                    network.bridge = value.clone();
                }
                OPT_ENABLE_ICC => network.enable_icc = parse_bool_option(key, value)?,
                OPT_ENABLE_IP_MASQUERADE => {
                    network.enable_ip_masquerade = parse_bool_option(key, value)?
                }
                OPT_HOST_BINDING_IPV4 => {
                    network.host_binding_ipv4 = Some(value.parse().map_err(|_| {
                        Error::InvalidArgument(format!(
                            "option {key}={value:?}: expected an IP address"
                        ))
                    })?)
                }
                OPT_ENABLE_IPV6 | OPT_ENABLE_IPV4 => {}
                OPT_MTU => {
                    network.mtu = value
                        .parse()
                        .ok()
                        .filter(|m| (68..=65535).contains(m))
                        .ok_or_else(|| {
                            Error::InvalidArgument(format!(
                                "option {key}={value:?}: expected an MTU between 68 and 65535"
                            ))
                        })?
                }
                _ => apply_option(&mut network, key, value)?,
            }
        }
        check_options(&network, is_default)?;
        Ok(network)
    }

    pub async fn create_network(&mut self, request: CreateNetwork) -> Result<NetworkCreated> {
        let network = self.plan_network(&request, false, &[]).await?;
        let warnings = match network.driver.is_bridge() {
            true => ignored_options(&request.options),
            false => drivers::ignored_options(network.driver.name(), &request.options),
        };
        for warning in &warnings {
            tracing::warn!(network = %request.name, "{warning}");
        }
        self.add_network(network).await.map(|n| NetworkCreated {
            id: n.id,
            warning: warnings.join("; "),
        })
    }

    /// Records a planned network (pending), makes its bridge, then marks it done; undoes
    /// everything if a step fails.
    pub(super) async fn add_network(
        &mut self,
        mut network: NetworkRecord,
    ) -> Result<NetworkRecord> {
        let mut undo = Undo::default();
        let result = async {
            self.save_network(network.clone())?;
            undo.steps
                .push(Step::DeleteNetworkRecord(network.name.clone()));
            undo.steps.extend(self.network_device_teardown(&network));
            faults::reach(CrashPoint::NetworkCreateRecorded);
            self.ensure_network_device(&network).await?;
            faults::reach(CrashPoint::NetworkCreateBridgeMade);
            network.pending = false;
            self.save_network(network.clone())?;
            faults::reach(CrashPoint::NetworkCreateSaved);
            self.sync_networks()
        }
        .await;
        match result {
            Ok(()) => Ok(network),
            Err(e) => {
                self.rollback(undo).await;
                Err(e)
            }
        }
    }

    /// The default network's planned record, from `--bip` or the address pools.
    pub(super) async fn plan_default_network(&self) -> Result<NetworkRecord> {
        let mut request = CreateNetwork {
            name: DEFAULT_NETWORK.into(),
            ..CreateNetwork::default()
        };
        if let Some(bip) = self.settings.bip {
            request.ipam = Some(Ipam {
                driver: "default".into(),
                config: vec![IpamConfig {
                    subnet: Some(bip.trunc().to_string()),
                    gateway: Some(bip.addr().to_string()),
                    ip_range: None,
                    ..IpamConfig::default()
                }],
                ..Ipam::default()
            });
        }
        let mut network = self.plan_network(&request, true, &[]).await?;
        network.bridge = super::DEFAULT_BRIDGE.into();
        network.host_binding_ipv4 = Some(self.settings.ip);
        Ok(network)
    }

    pub async fn remove_network(&mut self, reference: &str) -> Result<()> {
        if [DEFAULT_NETWORK, HOST_NETWORK, NONE_NETWORK].contains(&reference) {
            return Err(Error::Forbidden(format!(
                "{reference} is a pre-defined network and cannot be removed"
            )));
        }
        let network = self.network(reference)?.clone();
        if network.is_default() {
            return Err(Error::Forbidden(format!(
                "{} is a pre-defined network and cannot be removed",
                network.name
            )));
        }
        refuse_docker_managed("network", &network.name, network.managed_by)?;
        self.remove_network_record(network).await
    }

    /// Removes a network that no container uses: its bridge, then its record.
    pub(super) async fn remove_network_record(&mut self, network: NetworkRecord) -> Result<()> {
        let users: Vec<&str> = self
            .state
            .containers
            .values()
            .filter(|c| c.endpoint(&network.id).is_some())
            .map(|c| c.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "error while removing network: network {} id {} has active endpoints ({})",
                network.name,
                network.id,
                users.join(", ")
            )));
        }
        // Pending while the bridge goes, so a crash in between finishes the removal on start.
        self.save_network(NetworkRecord {
            pending: true,
            ..network.clone()
        })?;
        faults::reach(CrashPoint::NetworkRemoveMarked);
        // The dataplane lets the network go while its record is there: a crash later
        // leaves no rule that nothing knows of.
        self.sync_networks()?;
        faults::reach(CrashPoint::NetworkRemovePolicyGone);
        let mut steps = self.network_device_teardown(&network);
        steps.push(Step::DeleteNetworkRecord(network.name));
        self.run_all(steps).await
    }

    pub async fn prune_networks(&mut self) -> Result<NetworksPruned> {
        let unused: Vec<String> = self
            .state
            .networks
            .values()
            .filter(|n| !n.is_default() && docker::api_drives(n.managed_by))
            .filter(|n| {
                !self
                    .state
                    .containers
                    .values()
                    .any(|c| c.endpoint(&n.id).is_some())
            })
            .map(|n| n.name.clone())
            .collect();
        let mut pruned = NetworksPruned::default();
        for name in unused {
            self.remove_network(&name).await?;
            pruned.networks_deleted.push(name);
        }
        Ok(pruned)
    }

    fn network_inspect_record(&self, n: &NetworkRecord) -> NetworkInspect {
        let containers = self
            .state
            .containers
            .values()
            .filter_map(|c| {
                let e = c.endpoint(&n.id)?;
                Some((
                    c.id.clone(),
                    NetworkContainer {
                        name: c.name.clone(),
                        endpoint_id: e.endpoint_id.clone(),
                        mac_address: e.mac.to_string(),
                        ipv4_address: match (e.ip, n.subnet) {
                            (Some(ip), Some(subnet)) => format!("{ip}/{}", subnet.prefix_len()),
                            _ => String::new(),
                        },
                        ipv6_address: match (e.ipv6, &n.ipv6) {
                            (Some(ip), Some(side)) => format!("{ip}/{}", side.subnet.prefix_len()),
                            _ => String::new(),
                        },
                    },
                ))
            })
            .collect();
        let mut options = n.driver.inspect_options(&n.options);
        if n.is_default() {
            // What Docker shows for its default bridge: the effective settings.
            options = BTreeMap::from([
                (
                    "com.docker.network.bridge.default_bridge".into(),
                    "true".into(),
                ),
                (OPT_ENABLE_ICC.into(), n.enable_icc.to_string()),
                (
                    OPT_ENABLE_IP_MASQUERADE.into(),
                    n.enable_ip_masquerade.to_string(),
                ),
                (
                    OPT_HOST_BINDING_IPV4.into(),
                    n.host_binding_ipv4
                        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
                        .to_string(),
                ),
                (OPT_BRIDGE_NAME.into(), n.bridge.clone()),
                (OPT_MTU.into(), n.mtu.to_string()),
            ]);
        }
        NetworkInspect {
            name: n.name.clone(),
            id: n.id.clone(),
            created: n.created.clone(),
            scope: "local".into(),
            driver: n.driver.name().into(),
            enable_ipv4: n.enable_ipv4(),
            enable_ipv6: n.ipv6.is_some(),
            ipam: Ipam {
                driver: "default".into(),
                options: BTreeMap::new(),
                config: n
                    .ipv4()
                    .map(|(subnet, gateway)| IpamConfig {
                        subnet: Some(subnet.to_string()),
                        ip_range: n.ip_range.map(|r| r.to_string()),
                        gateway: Some(gateway.to_string()),
                        aux_addresses: n
                            .aux_addresses
                            .iter()
                            .map(|(name, ip)| (name.clone(), ip.to_string()))
                            .collect(),
                    })
                    .into_iter()
                    .chain(n.ipv6.as_ref().map(|side| IpamConfig {
                        subnet: Some(side.subnet.to_string()),
                        ip_range: side.ip_range.map(|r| r.to_string()),
                        gateway: Some(side.gateway.to_string()),
                        aux_addresses: BTreeMap::new(),
                    }))
                    .collect(),
            },
            internal: n.internal,
            attachable: false,
            ingress: false,
            config_only: false,
            containers,
            options,
            labels: n.labels.clone(),
        }
    }

    fn predefined_inspect(&mut self, name: &str) -> Result<NetworkInspect> {
        let id = self.predefined_id(name)?;
        let mode = if name == HOST_NETWORK {
            NetworkMode::Host
        } else {
            NetworkMode::None
        };
        let containers = self
            .state
            .containers
            .values()
            .filter(|c| c.mode == mode)
            .map(|c| {
                let e = NetworkContainer {
                    name: c.name.clone(),
                    endpoint_id: String::new(),
                    mac_address: String::new(),
                    ipv4_address: String::new(),
                    ipv6_address: String::new(),
                };
                (c.id.clone(), e)
            })
            .collect();
        Ok(NetworkInspect {
            name: name.into(),
            id,
            created: String::new(),
            scope: "local".into(),
            driver: if name == HOST_NETWORK { "host" } else { "null" }.into(),
            enable_ipv4: true,
            enable_ipv6: false,
            ipam: Ipam {
                driver: "default".into(),
                ..Ipam::default()
            },
            internal: false,
            attachable: false,
            ingress: false,
            config_only: false,
            containers,
            options: BTreeMap::new(),
            labels: BTreeMap::new(),
        })
    }

    pub fn list_networks(&mut self) -> Result<Vec<NetworkInspect>> {
        let mut out: Vec<NetworkInspect> = self
            .state
            .networks
            .values()
            .filter(|n| !n.pending)
            .map(|n| self.network_inspect_record(n))
            .collect();
        out.push(self.predefined_inspect(HOST_NETWORK)?);
        out.push(self.predefined_inspect(NONE_NETWORK)?);
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn inspect_network(&mut self, reference: &str) -> Result<NetworkInspect> {
        if [HOST_NETWORK, NONE_NETWORK].contains(&reference) {
            return self.predefined_inspect(reference);
        }
        for name in [HOST_NETWORK, NONE_NETWORK] {
            if !reference.is_empty() && self.predefined_id(name)?.starts_with(reference) {
                return self.predefined_inspect(name);
            }
        }
        let network = self.network(reference)?;
        Ok(self.network_inspect_record(network))
    }

    /// Remembers the last addresses handed out on a network (sequential allocation).
    pub(super) fn note_allocation(&mut self, endpoint: &EndpointRecord) -> Result<()> {
        let mut network = self.network_by_id(&endpoint.network_id)?.clone();
        if let Some(ip) = endpoint.ip {
            network.last_allocated = Some(ip);
        }
        if let (Some(side), Some(ip)) = (network.ipv6.as_mut(), endpoint.ipv6) {
            side.last_allocated = Some(ip);
        }
        self.save_network(network)
    }

    pub async fn connect(&mut self, reference: &str, request: ConnectRequest) -> Result<()> {
        if [HOST_NETWORK, NONE_NETWORK].contains(&reference) {
            return Err(Error::Forbidden(format!(
                "container cannot be connected to the {reference} network"
            )));
        }
        let network = self.network(reference)?.clone();
        let mut container = self.container(&request.container)?.clone();
        refuse_docker_managed("network", &network.name, network.managed_by)?;
        refuse_docker_managed("container", &container.name, container.managed_by)?;
        if container.mode != NetworkMode::Bridge {
            return Err(Error::Forbidden(format!(
                "container {} cannot be connected to network {}: it does not use bridge networking",
                container.name, network.name
            )));
        }
        if container.endpoint(&network.id).is_some() {
            return Err(Error::Conflict(format!(
                "endpoint with name {} already exists in network {}",
                container.name, network.name
            )));
        }
        let mut endpoint = plan_endpoint(
            &self.state.containers,
            &container,
            &network,
            EndpointWish::of(&request.endpoint_config)?,
            &BTreeSet::new(),
        )?;
        let had_primary = self.port_endpoint(&container).is_some();
        container.endpoints.push(endpoint.clone());
        let becomes_primary = self
            .port_endpoint(&container)
            .is_some_and(|e| e.endpoint_id == endpoint.endpoint_id);
        self.save_container(container.clone())?;
        faults::reach(CrashPoint::ConnectRecorded);
        let mut undo = Undo::default();
        let result = self
            .make_endpoint(
                &container.netns,
                &network,
                &mut endpoint,
                becomes_primary,
                &mut undo,
            )
            .await;
        let position = container.endpoints.len() - 1;
        match result {
            Ok(()) => {
                endpoint.pending = false;
                container.endpoints[position] = endpoint.clone();
                self.save_container(container.clone())?;
                faults::reach(CrashPoint::ConnectSaved);
                self.note_allocation(&endpoint)?;
                // A new carrier (a higher --gw-priority, or a network whose name sorts
                // first) took the default route as it was made; the ports move to it.
                if becomes_primary {
                    if had_primary {
                        for port in &container.ports {
                            self.dataplane.unpublish(port)?;
                        }
                    }
                    self.publish_ports(&container, &mut undo)?;
                }
                self.refresh_views()?;
                self.dns_for(&container)
            }
            Err(e) => {
                self.rollback(undo).await;
                container.endpoints.pop();
                self.save_container(container)?;
                Err(e)
            }
        }
    }

    pub async fn disconnect(&mut self, reference: &str, request: DisconnectRequest) -> Result<()> {
        let network = self.network(reference)?.clone();
        let mut container = self.container(&request.container)?.clone();
        refuse_docker_managed("container", &container.name, container.managed_by)?;
        let Some(position) = container
            .endpoints
            .iter()
            .position(|e| e.network_id == network.id)
        else {
            return Err(Error::NotFound(format!(
                "container {} is not connected to network {}",
                container.name, network.name
            )));
        };
        if self.remove_endpoint(&mut container, position).await? {
            self.fix_default_route(&container).await?;
        }
        self.refresh_views()?;
        self.dns_for(&container)
    }
}

/// What the dataplane enforces for `network`.
pub(super) fn network_policy(network: &NetworkRecord, allow_direct_routing: bool) -> NetworkPolicy {
    let direct_access_of = |mode| direct_access(mode, network.internal, allow_direct_routing);
    NetworkPolicy {
        index: network_index(&network.id),
        bridge: network.bridge.clone(),
        subnet: network.subnet,
        icc: network.enable_icc,
        internal: network.internal,
        masquerade: network.masquerades(),
        gateway: network.gateway,
        direct_access: direct_access_of(network.gateway_mode_ipv4),
        trusted_interfaces: network.trusted_host_interfaces.clone(),
        subnet_ipv6: network.ipv6.as_ref().map(|side| side.subnet),
        gateway_ipv6: network.ipv6.as_ref().map(|side| side.gateway),
        masquerade_ipv6: network.masquerades_ipv6(),
        direct_access_ipv6: direct_access_of(network.gateway_mode_ipv6),
    }
}

/// What one family's gateway mode lets the outside reach at the containers' own addresses
/// of that family (Docker 28 applies `gateway_mode_ipv4` to IPv4 and `gateway_mode_ipv6`
/// to IPv6): nothing on an internal network, and in `nat` mode only with
/// `--allow-direct-routing`.
fn direct_access(mode: GatewayMode, internal: bool, allow_direct_routing: bool) -> DirectAccess {
    match mode {
        _ if internal => DirectAccess::None,
        GatewayMode::NatUnprotected => DirectAccess::Any,
        GatewayMode::Routed => DirectAccess::PublishedAndIcmp,
        GatewayMode::Nat if allow_direct_routing => DirectAccess::Published,
        GatewayMode::Nat | GatewayMode::Isolated => DirectAccess::None,
    }
}

/// Applies one of Docker 28's options that need no lookup on the node; other keys are
/// ignored (as Docker's bridge driver ignores them, [`ignored_options`] warns), but those
/// under bpfbridge's own prefix, which are refused.
fn apply_option(network: &mut NetworkRecord, key: &str, value: &str) -> Result<()> {
    match key {
        OPT_GATEWAY_MODE_IPV4 => network.gateway_mode_ipv4 = value.parse()?,
        OPT_GATEWAY_MODE_IPV6 => network.gateway_mode_ipv6 = value.parse()?,
        OPT_INHIBIT_IPV4 => network.inhibit_ipv4 = parse_bool_option(key, value)?,
        OPT_TRUSTED_HOST_INTERFACES => {
            network.trusted_host_interfaces = parse_interface_list(key, value)?
        }
        OPT_CONTAINER_IFACE_PREFIX => {
            check_interface_prefix(key, value)?;
            network.container_iface_prefix = Some(value.to_string());
        }
        own if own.starts_with(OWN_OPTION_PREFIX) => {
            return Err(Error::InvalidArgument(format!(
                "unknown network option {own:?} (known: {})",
                KNOWN_OPTIONS.join(", ")
            )));
        }
        _ => {}
    }
    Ok(())
}

/// The options Docker 28 refuses in combination.
fn check_options(network: &NetworkRecord, is_default: bool) -> Result<()> {
    for (key, mode) in [
        (OPT_GATEWAY_MODE_IPV4, network.gateway_mode_ipv4),
        (OPT_GATEWAY_MODE_IPV6, network.gateway_mode_ipv6),
    ] {
        if mode == GatewayMode::Isolated && !network.internal {
            return Err(Error::InvalidArgument(format!(
                "option {key}=isolated is only for internal networks (--internal)"
            )));
        }
    }
    if network.inhibit_ipv4 && is_default {
        return Err(Error::InvalidArgument(format!(
            "option {OPT_INHIBIT_IPV4} is only for user-defined networks"
        )));
    }
    Ok(())
}

/// A warning for each option the agent accepts without acting on it, as Docker ignores
/// the labels its bridge driver does not know.
pub(super) fn ignored_options(options: &BTreeMap<String, String>) -> Vec<String> {
    options
        .keys()
        .filter(|k| !KNOWN_OPTIONS.contains(&k.as_str()))
        .map(|k| format!("network option {k:?} is not known to bpfbridge and is ignored"))
        .collect()
}

/// `--aux-address NAME=IP`: addresses of `subnet` the IPAM keeps out of its hands.
/// The IPv4 side of a network being planned (see [`Service::plan_ipv4`]).
struct Ipv4Plan {
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    ip_range: Option<Ipv4Net>,
    aux_addresses: BTreeMap<String, Ipv4Addr>,
}

/// Refuses the address families Docker 28 refuses: a network needs one at least, and the
/// default bridge keeps IPv4 (an IPv6-only network is a user-defined one).
fn check_families(enable_ipv4: bool, enable_ipv6: bool, is_default: bool) -> Result<()> {
    match (enable_ipv4, enable_ipv6) {
        (false, false) => Err(Error::InvalidArgument(
            "IPv4 or IPv6 must be enabled: --ipv4=false (enable_ipv4=false) needs --ipv6".into(),
        )),
        (false, true) if is_default => Err(Error::InvalidArgument(
            "the default bridge network cannot be IPv6-only: it keeps IPv4".into(),
        )),
        _ => Ok(()),
    }
}

fn parse_aux_addresses(
    given: &BTreeMap<String, String>,
    subnet: Ipv4Net,
) -> Result<BTreeMap<String, Ipv4Addr>> {
    given
        .iter()
        .map(|(name, ip)| {
            let address: Ipv4Addr = ip.parse().map_err(|_| {
                Error::InvalidArgument(format!("invalid aux-address {name}={ip:?}"))
            })?;
            if !subnet.contains(&address) {
                return Err(Error::InvalidArgument(format!(
                    "no matching subnet for aux-address {address}"
                )));
            }
            Ok((name.clone(), address))
        })
        .collect()
}

/// `if1:if2:...` (`trusted_host_interfaces`): valid interface names.
fn parse_interface_list(key: &str, value: &str) -> Result<Vec<String>> {
    value
        .split(':')
        .filter(|name| !name.is_empty())
        .map(|name| {
            if name.len() > 15 || name.contains(['/', ' ']) {
                return Err(Error::InvalidArgument(format!(
                    "option {key}={value:?}: {name:?} is not an interface name"
                )));
            }
            Ok(name.to_string())
        })
        .collect()
}

/// A container interface prefix leaves room for a number within Linux's 15 characters.
fn check_interface_prefix(key: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > 12 || value.contains(['/', ' ', ':']) {
        return Err(Error::InvalidArgument(format!(
            "option {key}={value:?}: expected 1 to 12 characters, no '/', ':' or space"
        )));
    }
    Ok(())
}

/// A number naming a network for the dataplane, from its (random) id.
fn network_index(id: &str) -> u32 {
    u32::from_str_radix(&id[..8.min(id.len())], 16).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> NetworkRecord {
        NetworkRecord {
            id: "0123456789abcdef".into(),
            bridge: "br-n".into(),
            gateway_mode_ipv4: GatewayMode::Nat,
            gateway_mode_ipv6: GatewayMode::Nat,
            ..NetworkRecord::for_tests(name, "10.1.0.0/24")
        }
    }

    fn network(options: &[(&str, &str)], internal: bool) -> Result<NetworkRecord> {
        let mut network = record("n");
        network.internal = internal;
        for (key, value) in options {
            apply_option(&mut network, key, value)?;
        }
        check_options(&network, false)?;
        Ok(network)
    }

    #[test]
    fn docker_28_options_and_their_policy() {
        /// A network's gateway mode, whether it masquerades and is internal, and the agent's
        /// --allow-direct-routing; the direct access and masquerade the dataplane gets.
        struct Case(&'static str, bool, bool, bool, DirectAccess, bool);
        let cases = [
            Case("nat", true, false, false, DirectAccess::None, true),
            Case("nat", true, false, true, DirectAccess::Published, true),
            Case("nat", false, false, false, DirectAccess::None, false),
            Case(
                "nat-unprotected",
                true,
                false,
                false,
                DirectAccess::Any,
                true,
            ),
            Case(
                "routed",
                true,
                false,
                false,
                DirectAccess::PublishedAndIcmp,
                false,
            ),
            Case("isolated", true, true, true, DirectAccess::None, false),
        ];
        for Case(mode, masquerade, internal, allow_direct_routing, access, masquerades) in cases {
            let mut network = network(&[(OPT_GATEWAY_MODE_IPV4, mode)], internal).unwrap();
            network.enable_ip_masquerade = masquerade;
            let policy = network_policy(&network, allow_direct_routing);
            assert_eq!(
                (policy.direct_access, policy.masquerade),
                (access, masquerades),
                "{mode} masquerade={masquerade} internal={internal} \
                 allow-direct-routing={allow_direct_routing}"
            );
        }
        let trusted = network(&[(OPT_TRUSTED_HOST_INTERFACES, "eth3:vxlan.1")], false).unwrap();
        assert_eq!(trusted.trusted_host_interfaces, ["eth3", "vxlan.1"]);
        let isolated = network(&[(OPT_GATEWAY_MODE_IPV4, "isolated")], true).unwrap();
        assert!(!isolated.has_gateway() && !isolated.bridge_has_address());
        let inhibited = network(&[(OPT_INHIBIT_IPV4, "true")], false).unwrap();
        assert!(inhibited.has_gateway() && !inhibited.bridge_has_address());
        let v6 = network(&[(OPT_GATEWAY_MODE_IPV6, "routed")], false).unwrap();
        assert_eq!(v6.gateway_mode_ipv6, GatewayMode::Routed);
    }

    #[test]
    fn a_network_needs_a_family_and_the_default_bridge_keeps_ipv4() {
        for (ipv4, ipv6, default, refused) in [
            (true, false, false, None),
            (true, true, true, None),
            (false, true, false, None),
            (false, false, false, Some("IPv4 or IPv6 must be enabled")),
            (false, false, true, Some("IPv4 or IPv6 must be enabled")),
            (false, true, true, Some("cannot be IPv6-only")),
        ] {
            let result = check_families(ipv4, ipv6, default);
            match refused {
                None => assert!(result.is_ok(), "{ipv4} {ipv6} {default}"),
                Some(message) => {
                    let error = result.unwrap_err().to_string();
                    assert!(error.contains(message), "{error}");
                }
            }
        }
    }

    #[test]
    fn an_ipv6_only_network_has_an_ipv6_policy_only() {
        let mut network = NetworkRecord::ipv6_only_for_tests("v6", "fd00:6::/64");
        network.gateway_mode_ipv6 = GatewayMode::Routed;
        let policy = network_policy(&network, false);
        assert_eq!((policy.subnet, policy.gateway), (None, None));
        assert!(!policy.masquerade && !policy.masquerade_ipv6);
        assert_eq!(policy.subnet_ipv6, Some("fd00:6::/64".parse().unwrap()));
        assert_eq!(policy.gateway_ipv6, Some("fd00:6::1".parse().unwrap()));
        assert_eq!(
            policy.direct_access_ipv6,
            DirectAccess::PublishedAndIcmp,
            "its IPv6 gateway mode's"
        );
        network.gateway_mode_ipv6 = GatewayMode::Nat;
        assert!(network_policy(&network, false).masquerade_ipv6);
    }

    /// Docker 28 applies each family's gateway mode to that family: direct access and
    /// masquerade of IPv4 follow `gateway_mode_ipv4`, those of IPv6 `gateway_mode_ipv6`.
    #[test]
    fn each_family_of_a_dual_stack_network_follows_its_own_gateway_mode() {
        use DirectAccess::*;
        /// The two modes, internal, --allow-direct-routing; then (direct access,
        /// masquerade) for IPv4 and for IPv6.
        struct Case(
            &'static str,
            &'static str,
            bool,
            bool,
            (DirectAccess, bool),
            (DirectAccess, bool),
        );
        let cases = [
            Case(
                "nat",
                "routed",
                false,
                false,
                (None, true),
                (PublishedAndIcmp, false),
            ),
            Case(
                "routed",
                "nat",
                false,
                false,
                (PublishedAndIcmp, false),
                (None, true),
            ),
            Case(
                "nat",
                "routed",
                false,
                true,
                (Published, true),
                (PublishedAndIcmp, false),
            ),
            Case(
                "routed",
                "nat",
                false,
                true,
                (PublishedAndIcmp, false),
                (Published, true),
            ),
            Case(
                "nat",
                "nat-unprotected",
                false,
                false,
                (None, true),
                (Any, true),
            ),
            Case(
                "nat-unprotected",
                "routed",
                false,
                false,
                (Any, true),
                (PublishedAndIcmp, false),
            ),
            Case("nat", "isolated", true, true, (None, false), (None, false)),
            Case("isolated", "nat", true, false, (None, false), (None, false)),
        ];
        for Case(mode4, mode6, internal, allow_direct_routing, ipv4, ipv6) in cases {
            let mut network = network(
                &[
                    (OPT_GATEWAY_MODE_IPV4, mode4),
                    (OPT_GATEWAY_MODE_IPV6, mode6),
                ],
                internal,
            )
            .unwrap();
            network.ipv6 = NetworkRecord::ipv6_only_for_tests("n", "fd00:1::/64").ipv6;
            let policy = network_policy(&network, allow_direct_routing);
            let context = format!(
                "ipv4={mode4} ipv6={mode6} internal={internal} \
                 allow-direct-routing={allow_direct_routing}"
            );
            assert_eq!(
                (policy.direct_access, policy.masquerade),
                ipv4,
                "IPv4 of {context}"
            );
            assert_eq!(
                (policy.direct_access_ipv6, policy.masquerade_ipv6),
                ipv6,
                "IPv6 of {context}"
            );
        }
    }

    #[test]
    fn refused_options() {
        for (options, internal, message) in [
            (
                &[(OPT_GATEWAY_MODE_IPV4, "bridged")][..],
                false,
                "unknown gateway mode",
            ),
            (&[(OPT_GATEWAY_MODE_IPV4, "isolated")], false, "internal"),
            (&[(OPT_GATEWAY_MODE_IPV6, "isolated")], false, "internal"),
            (&[(OPT_INHIBIT_IPV4, "yes")], false, "true or false"),
            (
                &[(OPT_TRUSTED_HOST_INTERFACES, "eth0:a very long name")],
                false,
                "not an interface name",
            ),
            (&[(OPT_CONTAINER_IFACE_PREFIX, "")], false, "1 to 12"),
            (
                &[("bpfbridge.enable_icc", "false")],
                false,
                "unknown network option",
            ),
        ] {
            let error = network(options, internal).unwrap_err().to_string();
            assert!(error.contains(message), "{options:?}: {error}");
        }
        let mut default = record("bridge");
        default.inhibit_ipv4 = true;
        assert!(check_options(&default, true).is_err());
    }

    #[test]
    fn unknown_docker_options_are_accepted_with_a_warning() {
        let options = BTreeMap::from([
            (
                "com.docker.network.bridge.enable_icc".to_string(),
                "true".to_string(),
            ),
            (
                "com.docker.network.windowsshim.hnsid".to_string(),
                "x".to_string(),
            ),
            ("com.example.label".to_string(), "y".to_string()),
        ]);
        let mut record = network(&[], false).unwrap();
        for (k, v) in &options {
            apply_option(&mut record, k, v).unwrap();
        }
        let warnings = ignored_options(&options);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("com.docker.network.windowsshim.hnsid"));
    }
}
