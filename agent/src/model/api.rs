//! The API's request and response bodies, in Docker's shapes and field names.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ports::PortMap;

/// `POST /networks`, like Docker's `NetworkCreateRequest`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateNetwork {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Driver", default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(rename = "Internal", default)]
    pub internal: bool,
    /// `--ipv6` (also `-o com.docker.network.enable_ipv6=true`).
    #[serde(
        rename = "EnableIPv6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub enable_ipv6: Option<bool>,
    /// `false` for an IPv6-only network (also `-o com.docker.network.enable_ipv4=false`).
    #[serde(
        rename = "EnableIPv4",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub enable_ipv4: Option<bool>,
    #[serde(rename = "IPAM", default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Ipam>,
    #[serde(rename = "Options", default)]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "Labels", default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ipam {
    #[serde(rename = "Driver", default = "default_driver")]
    pub driver: String,
    #[serde(rename = "Options", default)]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "Config", default)]
    pub config: Vec<IpamConfig>,
}

fn enabled() -> bool {
    true
}

fn default_driver() -> String {
    "default".into()
}

impl Default for Ipam {
    fn default() -> Self {
        Ipam {
            driver: default_driver(),
            options: BTreeMap::new(),
            config: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamConfig {
    #[serde(rename = "Subnet", default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(rename = "IPRange", default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
    #[serde(rename = "Gateway", default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// The answer to `POST /networks`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetworkCreated {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Warning")]
    pub warning: String,
}

/// `GET /networks/{id}`, like `docker network inspect`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetworkInspect {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Created")]
    pub created: String,
    #[serde(rename = "Scope")]
    pub scope: String,
    #[serde(rename = "Driver")]
    pub driver: String,
    #[serde(rename = "EnableIPv4", default = "enabled")]
    pub enable_ipv4: bool,
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: bool,
    #[serde(rename = "IPAM")]
    pub ipam: Ipam,
    #[serde(rename = "Internal")]
    pub internal: bool,
    #[serde(rename = "Attachable")]
    pub attachable: bool,
    #[serde(rename = "Ingress")]
    pub ingress: bool,
    #[serde(rename = "ConfigOnly")]
    pub config_only: bool,
    #[serde(rename = "Containers")]
    pub containers: BTreeMap<String, NetworkContainer>,
    #[serde(rename = "Options")]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "Labels")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetworkContainer {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "MacAddress")]
    pub mac_address: String,
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: String,
}

/// `POST /networks/prune`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NetworksPruned {
    #[serde(rename = "NetworksDeleted")]
    pub networks_deleted: Vec<String>,
}

/// Per-network endpoint settings of a create or connect request.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EndpointConfig {
    #[serde(
        rename = "IPAMConfig",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ipam_config: Option<EndpointIpamConfig>,
    #[serde(rename = "Aliases", default)]
    pub aliases: Vec<String>,
    /// `--gw-priority`: the endpoint with the highest carries the default route.
    #[serde(rename = "GwPriority", default)]
    pub gw_priority: i64,
    /// Endpoint options, e.g. `com.docker.network.endpoint.ifname`.
    #[serde(rename = "DriverOpts", default)]
    pub driver_opts: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EndpointIpamConfig {
    #[serde(rename = "IPv4Address", default)]
    pub ipv4_address: String,
    /// `--ip6`.
    #[serde(
        rename = "IPv6Address",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub ipv6_address: String,
}

/// `POST /networks/{id}/connect`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectRequest {
    #[serde(rename = "Container")]
    pub container: String,
    #[serde(rename = "EndpointConfig", default)]
    pub endpoint_config: EndpointConfig,
}

/// `POST /networks/{id}/disconnect`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectRequest {
    #[serde(rename = "Container")]
    pub container: String,
    #[serde(rename = "Force", default)]
    pub force: bool,
}

/// `HostConfig` of a container create request: the networking part of Docker's.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// `bridge` (default), a network name, `host`, `none` or `container:NAME`.
    #[serde(
        rename = "NetworkMode",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub network_mode: Option<String>,
    #[serde(rename = "PortBindings", default)]
    pub port_bindings: PortMap,
    /// `-P`: publish every exposed port on a dynamic host port.
    #[serde(rename = "PublishAllPorts", default)]
    pub publish_all_ports: bool,
    /// `OTHER:ALIAS` (or `OTHER`, aliased as itself).
    #[serde(rename = "Links", default)]
    pub links: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NetworkingConfig {
    #[serde(rename = "EndpointsConfig", default)]
    pub endpoints_config: BTreeMap<String, EndpointConfig>,
}

/// `POST /containers`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateContainer {
    #[serde(rename = "Name")]
    pub name: String,
    /// Path of an existing network namespace; the agent makes one when absent.
    #[serde(rename = "NetNs", default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(rename = "HostConfig", default)]
    pub host_config: HostConfig,
    /// `"5432/tcp": {}` like Docker's.
    #[serde(rename = "ExposedPorts", default)]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    /// Extra networks (besides the one `NetworkMode` names) and per-network settings.
    #[serde(rename = "NetworkingConfig", default)]
    pub networking_config: NetworkingConfig,
}

/// A container's network settings, shaped like `docker inspect`'s `NetworkSettings`: the
/// primary network's addressing at the top level, every network's under `Networks`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetworkSettings {
    #[serde(rename = "SandboxKey")]
    pub sandbox_key: String,
    #[serde(rename = "Ports")]
    pub ports: PortMap,
    #[serde(flatten)]
    pub primary: EndpointAddressing,
    /// Docker leaves it empty unless `--link-local-ip` gives one; so does the agent (the
    /// kernel's fe80:: address of the interface is not reported).
    #[serde(rename = "LinkLocalIPv6Address", default)]
    pub link_local_ipv6_address: String,
    #[serde(rename = "LinkLocalIPv6PrefixLen", default)]
    pub link_local_ipv6_prefix_len: u8,
    #[serde(rename = "Networks")]
    pub networks: BTreeMap<String, EndpointSettings>,
}

/// The addressing fields an endpoint shows, both at the top of `NetworkSettings` and in
/// each entry of its `Networks`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EndpointAddressing {
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Gateway")]
    pub gateway: String,
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u8,
    #[serde(rename = "IPv6Gateway", default)]
    pub ipv6_gateway: String,
    #[serde(rename = "GlobalIPv6Address", default)]
    pub global_ipv6_address: String,
    #[serde(rename = "GlobalIPv6PrefixLen", default)]
    pub global_ipv6_prefix_len: u8,
    #[serde(rename = "MacAddress")]
    pub mac_address: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EndpointSettings {
    #[serde(rename = "IPAMConfig")]
    pub ipam_config: Option<EndpointIpamConfig>,
    #[serde(rename = "Aliases")]
    pub aliases: Option<Vec<String>>,
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "GwPriority", default)]
    pub gw_priority: i64,
    #[serde(flatten)]
    pub addressing: EndpointAddressing,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerHostConfig {
    #[serde(rename = "NetworkMode")]
    pub network_mode: String,
}

/// What `--link` gives the linking container, for its runtime to write: /etc/hosts lines
/// and environment variables, exactly as Docker writes them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LinkInfo {
    #[serde(rename = "HostsEntries")]
    pub hosts_entries: Vec<String>,
    #[serde(rename = "Env")]
    pub env: Vec<String>,
}

/// `GET /containers/{name}`, and the answer to `POST /containers`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerInspect {
    #[serde(rename = "Id")]
    pub id: String,
    /// Docker's form, with a leading slash.
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Created")]
    pub created: String,
    #[serde(rename = "HostConfig")]
    pub host_config: ContainerHostConfig,
    #[serde(rename = "NetworkSettings")]
    pub network_settings: NetworkSettings,
    #[serde(rename = "LinkInfo")]
    pub link_info: LinkInfo,
    #[serde(rename = "State", default)]
    pub state: ContainerState,
    /// Options that were accepted but have no effect (Docker's `Warnings`).
    #[serde(rename = "Warnings", default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The part of Docker's `State` that applies to the agent's containers: why its network
/// is broken, when the agent could not repair it (empty when all is well).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    #[serde(rename = "Error")]
    pub error: String,
}

/// Repairs of drift the agent made while running, by kind (`GET /info`'s `Repairs`).
/// Kinds added after the first release default to zero, so that a newer client reads an
/// older agent's answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repairs {
    /// A container's node-side veth was gone: a new pair made with the same address and MAC.
    #[serde(rename = "VethRecreated")]
    pub veth_recreated: u64,
    /// A node-side veth had left its bridge: put back.
    #[serde(rename = "VethReattached")]
    pub veth_reattached: u64,
    /// A node-side veth was down: set up.
    #[serde(rename = "VethSetUp")]
    pub veth_set_up: u64,
    /// A network's bridge was gone: made again with its address and MTU (its veths are
    /// put back on it as `VethReattached`).
    #[serde(rename = "BridgeRecreated", default)]
    pub bridge_recreated: u64,
    /// A bridge was down: set up.
    #[serde(rename = "BridgeSetUp", default)]
    pub bridge_set_up: u64,
    /// A bridge had lost its gateway address: given back.
    #[serde(rename = "BridgeAddressRestored", default)]
    pub bridge_address_restored: u64,
    /// A node sysctl the agent set (`net.ipv4.ip_forward`) had been changed: set again.
    #[serde(rename = "SysctlRestored", default)]
    pub sysctl_restored: u64,
    /// A program of the dataplane had been detached (a container's TC program, the
    /// uplink's XDP program, a cgroup socket program): attached again.
    #[serde(rename = "ProgramReattached", default)]
    pub program_reattached: u64,
    /// Entries of the dataplane's pinned maps deleted or altered from outside: written
    /// back from the records.
    #[serde(rename = "MapEntryRestored", default)]
    pub map_entry_restored: u64,
    /// iptables rules of the agent's (Docker's) deleted from outside: added again.
    #[serde(rename = "IptablesRuleRestored", default)]
    pub iptables_rule_restored: u64,
    /// Things whose repair failed (containers, bridges, the dataplane): counted when it
    /// starts failing; retried each pass.
    #[serde(rename = "Failed")]
    pub failed: u64,
}

/// A kind of repair, one of the counters of [`Repairs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepairKind {
    VethRecreated,
    VethReattached,
    VethSetUp,
    BridgeRecreated,
    BridgeSetUp,
    BridgeAddressRestored,
    SysctlRestored,
    ProgramReattached,
    MapEntryRestored,
    IptablesRuleRestored,
}

impl RepairKind {
    pub const ALL: [RepairKind; 10] = [
        RepairKind::VethRecreated,
        RepairKind::VethReattached,
        RepairKind::VethSetUp,
        RepairKind::BridgeRecreated,
        RepairKind::BridgeSetUp,
        RepairKind::BridgeAddressRestored,
        RepairKind::SysctlRestored,
        RepairKind::ProgramReattached,
        RepairKind::MapEntryRestored,
        RepairKind::IptablesRuleRestored,
    ];

    /// The name in the metric's `kind` label and in `monitor`'s repair events.
    pub fn name(self) -> &'static str {
        match self {
            RepairKind::VethRecreated => "veth_recreated",
            RepairKind::VethReattached => "veth_reattached",
            RepairKind::VethSetUp => "veth_set_up",
            RepairKind::BridgeRecreated => "bridge_recreated",
            RepairKind::BridgeSetUp => "bridge_set_up",
            RepairKind::BridgeAddressRestored => "bridge_address_restored",
            RepairKind::SysctlRestored => "sysctl_restored",
            RepairKind::ProgramReattached => "program_reattached",
            RepairKind::MapEntryRestored => "map_entry_restored",
            RepairKind::IptablesRuleRestored => "iptables_rule_restored",
        }
    }
}

impl Repairs {
    pub fn count_mut(&mut self, kind: RepairKind) -> &mut u64 {
        match kind {
            RepairKind::VethRecreated => &mut self.veth_recreated,
            RepairKind::VethReattached => &mut self.veth_reattached,
            RepairKind::VethSetUp => &mut self.veth_set_up,
            RepairKind::BridgeRecreated => &mut self.bridge_recreated,
            RepairKind::BridgeSetUp => &mut self.bridge_set_up,
            RepairKind::BridgeAddressRestored => &mut self.bridge_address_restored,
            RepairKind::SysctlRestored => &mut self.sysctl_restored,
            RepairKind::ProgramReattached => &mut self.program_reattached,
            RepairKind::MapEntryRestored => &mut self.map_entry_restored,
            RepairKind::IptablesRuleRestored => &mut self.iptables_rule_restored,
        }
    }

    /// Every counter with its metric label, `failed` last.
    pub fn by_kind(&self) -> Vec<(&'static str, u64)> {
        let mut copy = *self;
        let mut counts: Vec<(&'static str, u64)> = RepairKind::ALL
            .iter()
            .map(|kind| (kind.name(), *copy.count_mut(*kind)))
            .collect();
        counts.push(("failed", self.failed));
        counts
    }
}

/// One entry of the published-ports BPF map, for `bpfbridge ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    #[serde(rename = "HostIp")]
    pub host_ip: std::net::IpAddr,
    #[serde(rename = "HostPort")]
    pub host_port: u16,
    #[serde(rename = "Proto")]
    pub proto: String,
    #[serde(rename = "ContainerIp")]
    pub container_ip: std::net::IpAddr,
    #[serde(rename = "ContainerPort")]
    pub container_port: u16,
    #[serde(rename = "HostVethIfindex")]
    pub host_veth_ifindex: u32,
}

/// One counter summed over CPUs, for `bpfbridge stats`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatCounter {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Packets")]
    pub packets: u64,
    #[serde(rename = "Bytes")]
    pub bytes: u64,
}

/// `GET /info`: the effective settings, versions and counts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Info {
    #[serde(rename = "Version")]
    pub version: String,
    #[serde(rename = "KernelVersion")]
    pub kernel_version: String,
    #[serde(rename = "Dataplane")]
    pub dataplane: String,
    /// Whether the dataplane handles IPv6 traffic: published ports on IPv6 addresses, IPv6
    /// masquerade and policy. Without it IPv6 networks still get addresses and routes, and
    /// IPv6 host addresses are refused.
    #[serde(rename = "DataplaneIPv6", default)]
    pub dataplane_ipv6: bool,
    #[serde(rename = "Uplink")]
    pub uplink: String,
    /// The interfaces where published ports answer, and how the dataplane sees their
    /// traffic.
    #[serde(rename = "Uplinks", default)]
    pub uplinks: Vec<UplinkInfo>,
    #[serde(rename = "Settings")]
    pub settings: crate::config::Settings,
    #[serde(rename = "IPForwardEnabled")]
    pub ip_forward_enabled: bool,
    #[serde(rename = "Networks")]
    pub networks: usize,
    #[serde(rename = "Containers")]
    pub containers: usize,
    #[serde(rename = "PublishedPorts")]
    pub published_ports: usize,
    #[serde(rename = "PinDir")]
    pub pin_dir: String,
    /// The dataplane's own flow tables (the eBPF dataplane's; absent for iptables, whose
    /// flows the kernel's conntrack keeps).
    #[serde(
        rename = "FlowTables",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub flow_tables: Option<FlowTablesInfo>,
    /// The dataplane's BPF programs as the kernel verified them (none for iptables).
    #[serde(rename = "Programs", default, skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<ProgramInfo>,
    #[serde(rename = "Repairs", default)]
    pub repairs: Repairs,
    /// Drift the agent found and could not repair, one line each (what, and why); empty
    /// when all is well. Retried at every repair pass.
    #[serde(rename = "Unrepaired", default, skip_serializing_if = "Vec::is_empty")]
    pub unrepaired: Vec<String>,
}

/// One uplink of `GET /info`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkInfo {
    #[serde(rename = "Name")]
    pub name: String,
    /// `xdp` or `tc` (the eBPF dataplane's program and where it runs), `iptables` (Docker's
    /// rules match every interface), or `none` when attaching failed (see `Error`).
    #[serde(rename = "Hook")]
    pub hook: String,
    #[serde(rename = "Error", default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One loaded BPF program of `GET /info`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramInfo {
    #[serde(rename = "Name")]
    pub name: String,
    /// Instructions the verifier processed to accept the program (its complexity, against
    /// the verifier's limit of 1,000,000); `None` on kernels before 5.16, which do not say.
    #[serde(rename = "VerifiedInstructions")]
    pub verified_instructions: Option<u32>,
}

/// The flow tables of `GET /info`: their sizes and fill, the memory of the dataplane's
/// maps, and the idle-flow cleanup's work.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTablesInfo {
    #[serde(rename = "Tables")]
    pub tables: Vec<FlowTableInfo>,
    /// Kernel memory of all the dataplane's BPF maps, in bytes.
    #[serde(rename = "MapMemoryBytes")]
    pub map_memory_bytes: u64,
    #[serde(rename = "Gc")]
    pub gc: FlowGcStats,
}

/// One flow table (a BPF map).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTableInfo {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "MaxEntries")]
    pub max_entries: u32,
    /// Entries seen by the last cleanup pass.
    #[serde(rename = "Entries")]
    pub entries: u64,
    /// Kernel memory of the map now, in bytes.
    #[serde(rename = "MemoryBytes")]
    pub memory_bytes: u64,
}

/// The work of the idle-flow cleanup (GC): its last pass and totals since the agent began.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowGcStats {
    #[serde(rename = "Passes")]
    pub passes: u64,
    #[serde(rename = "LastPassMicros")]
    pub last_pass_micros: u64,
    /// Entries the last pass read, over all flow tables.
    #[serde(rename = "LastScanned")]
    pub last_scanned: u64,
    /// Entries the last pass removed: idle flows and entries whose other direction is gone.
    #[serde(rename = "LastRemoved")]
    pub last_removed: u64,
    /// Map reads and deletes that failed in the last pass.
    #[serde(rename = "LastErrors")]
    pub last_errors: u64,
    #[serde(rename = "Removed")]
    pub removed: u64,
    #[serde(rename = "Errors")]
    pub errors: u64,
}
