//! `bpfbridge`: the node agent (`bpfbridge agent`) and a thin CLI client of its API, with
//! Docker's command and flag names.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, bail};
use bpfbridge::{
    client::Client,
    config::{Settings, SettingsFlags},
    daemon,
    faults::{CrashAt, CrashPoint},
    model::{
        ConnectRequest, ContainerInspect, CreateContainer, CreateFilter, CreateNetwork,
        DisconnectRequest, EndpointConfig, EndpointIpamConfig, FilterInfo, FlowInfo, HostConfig,
        Info, Ipam, IpamConfig, NetworkCreated, NetworkInspect, NetworkingConfig, NetworksPruned,
        PortMap, PublishedPort, StatCounter, bindings_from_port_map, parse_port_proto,
        parse_publish_flag, port_lines, short_id,
    },
};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bpfbridge",
    version,
    about = "Docker-style bridge networking with an eBPF/XDP fast path"
)]
struct Cli {
    /// The agent's API socket.
    #[arg(
        long,
        global = true,
        env = "BPFBRIDGE_SOCKET",
        default_value = "/run/bpfbridge/bpfbridge.sock"
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent in the current network namespace.
    Agent(Box<AgentArgs>),
    /// Manage containers' network attachments.
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Manage networks.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// List a container's published ports, like `docker port`.
    Port {
        container: String,
        /// Only this container port: PORT[/tcp|udp].
        port: Option<String>,
    },
    /// Manage source filters on published ports (Docker's DOCKER-USER use case).
    #[command(subcommand)]
    Filter(FilterCommand),
    /// The translated flows, like `conntrack -L`.
    #[command(subcommand)]
    Conntrack(ConntrackCommand),
    /// Stream drop and new-flow events as JSON lines (rate-limited in the kernel).
    Monitor {
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Show the published-port entries of the dataplane.
    Ports,
    /// Show the dataplane's packet and byte counters.
    Stats,
    /// Show the agent's effective settings, versions and counts.
    Info,
    /// Hold containers' DNS sockets while no agent runs; the agent starts it
    /// (`bpfbridge::dns::keeper`).
    #[command(hide = true)]
    DnsKeeper {
        /// Where agents reach it.
        #[arg(long)]
        listen: PathBuf,
        /// How long to wait for an agent to come back before closing everything.
        #[arg(long, default_value_t = bpfbridge::dns::keeper::DEFAULT_GRACE.as_secs())]
        grace_seconds: u64,
    },
    /// Developers' tools (fault injection); not a stable interface.
    #[command(subcommand, hide = true)]
    Debug(DebugCommand),
}

#[derive(Subcommand)]
enum DebugCommand {
    /// List the crash points `agent --crash-at` takes, one a line.
    CrashPoints,
}

#[derive(Args)]
struct AgentArgs {
    /// Config file (TOML, or JSON when named *.json) with the same keys as these flags.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: SettingsFlags,
    /// Tests only: kill the agent with SIGKILL the Nth time (default 1) it reaches this
    /// crash point (`bpfbridge debug crash-points` lists them).
    #[arg(long, hide = true, env = bpfbridge::faults::CRASH_AT_ENV, value_name = "POINT[:N]")]
    crash_at: Option<CrashAt>,
}

impl AgentArgs {
    /// The defaults, then the config file, then the flags.
    fn settings(self) -> anyhow::Result<Settings> {
        let base = match &self.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        Ok(self.flags.apply(base)?)
    }
}

#[derive(Subcommand)]
enum ContainerCommand {
    /// Attach a container's network namespace (a new one unless --netns is given).
    Create(Box<CreateArgs>),
    /// Detach containers and remove everything made for them.
    Rm { names: Vec<String> },
    /// List containers.
    Ls {
        /// `json` for one JSON object per container.
        #[arg(long)]
        format: Option<String>,
    },
    /// Show containers' network settings (JSON).
    Inspect { names: Vec<String> },
}

#[derive(Args)]
struct CreateArgs {
    /// The container's name.
    #[arg(value_name = "NAME", required_unless_present = "name")]
    positional_name: Option<String>,
    #[arg(long, conflicts_with = "positional_name")]
    name: Option<String>,
    /// An existing network namespace (default: the agent creates one).
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Networks to attach to, the first one primary (or host, none, container:NAME); as in
    /// Docker, NAME or name=NAME[,gw-priority=N][,driver-opt=KEY=VALUE]...
    #[arg(long = "network", visible_alias = "net")]
    networks: Vec<String>,
    /// The gateway priority of the first network: the endpoint with the highest carries
    /// the default route and the published ports.
    #[arg(long, allow_negative_numbers = true)]
    gw_priority: Option<i64>,
    /// bridge (default), host, none or container:NAME.
    #[arg(long)]
    network_mode: Option<String>,
    /// A fixed address on the first network.
    #[arg(long)]
    ip: Option<std::net::Ipv4Addr>,
    /// A fixed IPv6 address on the first network (one with IPv6).
    #[arg(long)]
    ip6: Option<std::net::Ipv6Addr>,
    /// A network-scoped alias on the first network (repeatable).
    #[arg(long = "alias")]
    aliases: Vec<String>,
    /// Link to another container: OTHER[:ALIAS] (repeatable).
    #[arg(long = "link")]
    links: Vec<String>,
    /// Expose a port: PORT[/tcp|udp] (repeatable).
    #[arg(long = "expose")]
    expose: Vec<String>,
    /// Publish ports: [IP:][HOSTPORT[-END]:]CONTAINERPORT[-END][/tcp|udp] (repeatable).
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[IP:][HOSTPORT:]CONTAINERPORT[/PROTO]"
    )]
    publish: Vec<String>,
    /// Publish every exposed port on a dynamic host port.
    #[arg(short = 'P', long = "publish-all")]
    publish_all: bool,
}

impl CreateArgs {
    fn request(self) -> anyhow::Result<CreateContainer> {
        let name = self
            .name
            .or(self.positional_name)
            .context("a container name is needed")?;
        let mut port_bindings = PortMap::new();
        for spec in &self.publish {
            for (key, host) in parse_publish_flag(spec)? {
                port_bindings.entry(key).or_default().push(host);
            }
        }
        let is_mode = |n: &str| ["host", "none"].contains(&n) || n.starts_with("container:");
        let mut network_mode = self.network_mode;
        let mut networks = Vec::new();
        let mut network_configs = Vec::new();
        for spec in &self.networks {
            let (name, config) = parse_network_flag(spec)?;
            networks.push(name);
            network_configs.push(config);
        }
        if network_mode.is_none() && networks.first().is_some_and(|n| is_mode(n)) {
            network_mode = Some(networks.remove(0));
            network_configs.remove(0);
        }
        if network_mode.is_none() {
            network_mode = networks.first().cloned();
        }
        let mut endpoints_config = BTreeMap::new();
        for (i, (network, mut config)) in networks.iter().zip(network_configs).enumerate() {
            if i == 0 {
                config.aliases = self.aliases.clone();
                config.ipam_config = ipam_config(self.ip, self.ip6);
                if let Some(priority) = self.gw_priority {
                    config.gw_priority = priority;
                }
            }
            endpoints_config.insert(network.clone(), config);
        }
        if networks.is_empty()
            && (self.ip.is_some()
                || self.ip6.is_some()
                || !self.aliases.is_empty()
                || self.gw_priority.is_some())
        {
            let config = EndpointConfig {
                aliases: self.aliases,
                ipam_config: ipam_config(self.ip, self.ip6),
                gw_priority: self.gw_priority.unwrap_or(0),
                driver_opts: BTreeMap::new(),
            };
            endpoints_config.insert(
                network_mode.clone().unwrap_or_else(|| "bridge".into()),
                config,
            );
        }
        Ok(CreateContainer {
            name,
            netns: self.netns.map(|p| p.display().to_string()),
            host_config: HostConfig {
                network_mode,
                port_bindings,
                publish_all_ports: self.publish_all,
                links: self.links,
            },
            exposed_ports: self
                .expose
                .into_iter()
                .map(|p| (p, serde_json::json!({})))
                .collect(),
            networking_config: NetworkingConfig { endpoints_config },
        })
    }
}

#[derive(Subcommand)]
enum FilterCommand {
    /// Add a rule: the longest matching source prefix decides; rules for a port before
    /// rules for every port; no match allows. A /0 rule is a scope's default.
    Add {
        /// Source prefix, e.g. 192.0.2.0/24.
        #[arg(long)]
        source: String,
        /// Only this published host port: PORT[/tcp|udp].
        #[arg(long)]
        port: Option<String>,
        /// allow or deny.
        #[arg(long)]
        action: String,
    },
    /// Remove a rule by id.
    Rm { id: u32 },
    /// List rules with their hit counters.
    Ls,
}

#[derive(Subcommand)]
enum ConntrackCommand {
    /// List translated flows.
    Ls,
    /// Forget every translated flow.
    Flush,
}

/// `--network NAME`, or Docker's `name=NAME[,gw-priority=N][,driver-opt=KEY=VALUE]...`.
fn parse_network_flag(spec: &str) -> anyhow::Result<(String, EndpointConfig)> {
    let mut config = EndpointConfig::default();
    if !spec.starts_with("name=") {
        return Ok((spec.to_string(), config));
    }
    let mut name = None;
    for field in spec.split(',') {
        let (key, value) = field
            .split_once('=')
            .with_context(|| format!("--network {spec}: {field:?} is not KEY=VALUE"))?;
        match key {
            "name" => name = Some(value.to_string()),
            "gw-priority" => {
                config.gw_priority = value
                    .parse()
                    .with_context(|| format!("--network {spec}: gw-priority {value:?}"))?
            }
            "driver-opt" => {
                let (k, v) = value
                    .split_once('=')
                    .with_context(|| format!("--network {spec}: driver-opt {value:?}"))?;
                config.driver_opts.insert(k.to_string(), v.to_string());
            }
            other => anyhow::bail!("--network {spec}: unknown field {other:?}"),
        }
    }
    Ok((name.context("--network needs name=NAME")?, config))
}

#[derive(Subcommand)]
enum NetworkCommand {
    /// Create a network: a bridge, or macvlan/ipvlan on a parent interface (-o parent=IFACE).
    Create {
        name: String,
        /// bridge, macvlan or ipvlan.
        #[arg(long, short = 'd', default_value = "bridge")]
        driver: String,
        /// A subnet in CIDR form; one IPv4 and one IPv6 (with --ipv6) at most.
        #[arg(long)]
        subnet: Vec<String>,
        /// The gateway of the subnet of its family.
        #[arg(long)]
        gateway: Vec<String>,
        /// Where dynamic addresses of the subnet of its family come from.
        #[arg(long)]
        ip_range: Vec<String>,
        /// NAME=IP (repeatable): an address of the subnet that is never handed out.
        #[arg(long = "aux-address")]
        aux_addresses: Vec<String>,
        /// Enable IPv6 (a subnet from --subnet, else a /64 of the IPv6 pools).
        #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
        ipv6: Option<bool>,
        /// false for an IPv6-only network (with --ipv6; Docker 28).
        #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
        ipv4: Option<bool>,
        /// No way out: no masquerade, no published ports.
        #[arg(long)]
        internal: bool,
        /// Driver options, KEY=VALUE (repeatable), e.g. com.docker.network.bridge.enable_icc=false,
        /// parent=eth0.10, macvlan_mode=private, ipvlan_mode=l3.
        #[arg(short = 'o', long = "opt")]
        options: Vec<String>,
        /// KEY=VALUE (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// List networks.
    Ls {
        /// `json` for one JSON object per network.
        #[arg(long)]
        format: Option<String>,
    },
    /// Show networks (JSON).
    Inspect { names: Vec<String> },
    /// Remove networks.
    Rm { names: Vec<String> },
    /// Remove all unused user-defined networks.
    Prune {
        /// Do not prompt (there is no prompt; accepted for Docker compatibility).
        #[arg(short, long)]
        force: bool,
    },
    /// Connect a container to a network.
    Connect {
        network: String,
        container: String,
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
        /// A fixed IPv6 address on a network with IPv6.
        #[arg(long)]
        ip6: Option<std::net::Ipv6Addr>,
        #[arg(long = "alias")]
        aliases: Vec<String>,
        /// The endpoint with the highest carries the default route and the published ports.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        gw_priority: i64,
        /// Endpoint options, KEY=VALUE (repeatable), e.g.
        /// com.docker.network.endpoint.ifname=app0.
        #[arg(long = "driver-opt")]
        driver_opts: Vec<String>,
    },
    /// Disconnect a container from a network.
    Disconnect {
        network: String,
        container: String,
        #[arg(short, long)]
        force: bool,
    },
}

fn key_values(pairs: &[String], what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("invalid {what} {p:?}: expected KEY=VALUE"),
        })
        .collect()
}

/// A column of a listing: its title and the width its cells are padded to, on the left or
/// the right; the last column is unpadded (width 0) unless it is right-aligned.
struct Column {
    title: &'static str,
    width: usize,
    right_aligned: bool,
}

const fn left(title: &'static str, width: usize) -> Column {
    Column {
        title,
        width,
        right_aligned: false,
    }
}

const fn right(title: &'static str, width: usize) -> Column {
    Column {
        title,
        width,
        right_aligned: true,
    }
}

/// Prints a listing the way `docker network ls` does: a header of the titles, then a line
/// per row, cells padded to their column's width (never cut) and separated by a space.
fn print_table<R: IntoIterator<Item = String>>(
    columns: &[Column],
    rows: impl IntoIterator<Item = R>,
) {
    let line = |cells: &mut dyn Iterator<Item = String>| {
        columns
            .iter()
            .zip(cells)
            .map(|(column, cell)| match column.right_aligned {
                true => format!("{cell:>width$}", width = column.width),
                false => format!("{cell:<width$}", width = column.width),
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("{}", line(&mut columns.iter().map(|c| c.title.to_string())));
    for row in rows {
        println!("{}", line(&mut row.into_iter()));
    }
}

/// `--ip` and `--ip6` as an endpoint's IPAM config (none when neither is given).
fn ipam_config(
    ip: Option<std::net::Ipv4Addr>,
    ip6: Option<std::net::Ipv6Addr>,
) -> Option<EndpointIpamConfig> {
    (ip.is_some() || ip6.is_some()).then(|| EndpointIpamConfig {
        ipv4_address: ip.map(|ip| ip.to_string()).unwrap_or_default(),
        ipv6_address: ip6.map(|ip| ip.to_string()).unwrap_or_default(),
    })
}

/// `--subnet`, `--gateway` and `--ip-range` as IPAM entries, one per address family (an
/// address with a colon is IPv6), as Docker pairs them.
fn ipam_configs(
    subnets: &[String],
    gateways: &[String],
    ranges: &[String],
    aux_addresses: BTreeMap<String, String>,
) -> anyhow::Result<Vec<IpamConfig>> {
    let mut configs = Vec::new();
    for ipv6 in [false, true] {
        let of_family = |values: &[String], what: &str| -> anyhow::Result<Option<String>> {
            let mut found = values.iter().filter(|v| v.contains(':') == ipv6);
            let first = found.next().cloned();
            if found.next().is_some() {
                bail!("more than one {what} of a family: one IPv4 and one IPv6 at most");
            }
            Ok(first)
        };
        let config = IpamConfig {
            subnet: of_family(subnets, "--subnet")?,
            gateway: of_family(gateways, "--gateway")?,
            ip_range: of_family(ranges, "--ip-range")?,
            // Each auxiliary address belongs to the entry of its family, as in Docker's IPAM
            // config.
            aux_addresses: aux_addresses
                .iter()
                .filter(|(_, ip)| ip.contains(':') == ipv6)
                .map(|(name, ip)| (name.clone(), ip.clone()))
                .collect(),
        };
        if config != IpamConfig::default() {
            configs.push(config);
        }
    }
    Ok(configs)
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn network_command(client: &Client, command: NetworkCommand) -> anyhow::Result<()> {
    match command {
        NetworkCommand::Create {
            name,
            driver,
            subnet,
            gateway,
            ip_range,
            aux_addresses,
            ipv6,
            ipv4,
            internal,
            options,
            labels,
        } => {
            let aux_addresses = key_values(&aux_addresses, "aux-address")?;
            let config = ipam_configs(&subnet, &gateway, &ip_range, aux_addresses)?;
            let ipam = (!config.is_empty()).then(|| Ipam {
                driver: "default".into(),
                options: BTreeMap::new(),
                config,
            });
            let request = CreateNetwork {
                name,
                driver: Some(driver),
                internal,
                enable_ipv6: ipv6,
                enable_ipv4: ipv4,
                ipam,
                options: key_values(&options, "option")?,
                labels: key_values(&labels, "label")?,
            };
            let created: NetworkCreated = client.post("/networks", &request).await?;
            if !created.warning.is_empty() {
                eprintln!("WARNING: {}", created.warning);
            }
            println!("{}", created.id);
        }
        NetworkCommand::Ls { format } => {
            let networks: Vec<NetworkInspect> = client.get("/networks").await?;
            if format.as_deref() == Some("json") {
                for n in networks {
                    let line = serde_json::json!({
                        "CreatedAt": n.created, "Driver": n.driver, "ID": short_id(&n.id),
                        "IPv6": n.enable_ipv6.to_string(), "Internal": n.internal.to_string(),
                        "Labels": n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                        "Name": n.name, "Scope": n.scope,
                    });
                    println!("{line}");
                }
            } else if let Some(other) = format {
                bail!("unknown format {other:?} (only json)");
            } else {
                print_table(
                    &[
                        left("NETWORK ID", 14),
                        left("NAME", 20),
                        left("DRIVER", 9),
                        left("SCOPE", 0),
                    ],
                    networks
                        .into_iter()
                        .map(|n| [short_id(&n.id).to_string(), n.name, n.driver, n.scope]),
                );
            }
        }
        NetworkCommand::Inspect { names } => {
            let mut out = Vec::new();
            for name in &names {
                out.push(
                    client
                        .get::<NetworkInspect>(&format!("/networks/{name}"))
                        .await?,
                );
            }
            print_json(&out)?;
        }
        NetworkCommand::Rm { names } => {
            for name in &names {
                client.delete(&format!("/networks/{name}")).await?;
                println!("{name}");
            }
        }
        NetworkCommand::Prune { force: _ } => {
            let pruned: NetworksPruned = client
                .post("/networks/prune", &serde_json::json!({}))
                .await?;
            if !pruned.networks_deleted.is_empty() {
                println!("Deleted Networks:");
                for name in pruned.networks_deleted {
                    println!("{name}");
                }
            }
        }
        NetworkCommand::Connect {
            network,
            container,
            ip,
            ip6,
            aliases,
            gw_priority,
            driver_opts,
        } => {
            let request = ConnectRequest {
                container,
                endpoint_config: EndpointConfig {
                    ipam_config: ipam_config(ip, ip6),
                    aliases,
                    gw_priority,
                    driver_opts: key_values(&driver_opts, "driver option")?,
                },
            };
            client
                .post_empty(&format!("/networks/{network}/connect"), &request)
                .await?;
        }
        NetworkCommand::Disconnect {
            network,
            container,
            force,
        } => {
            let request = DisconnectRequest { container, force };
            client
                .post_empty(&format!("/networks/{network}/disconnect"), &request)
                .await?;
        }
    }
    Ok(())
}

async fn container_command(client: &Client, command: ContainerCommand) -> anyhow::Result<()> {
    match command {
        ContainerCommand::Create(args) => {
            let request = args.request()?;
            let created: ContainerInspect = client.post("/containers", &request).await?;
            for warning in &created.warnings {
                eprintln!("WARNING: {warning}");
            }
            print_json(&created)?;
        }
        ContainerCommand::Rm { names } => {
            for name in &names {
                client.delete(&format!("/containers/{name}")).await?;
                println!("{name}");
            }
        }
        ContainerCommand::Ls { format } => {
            let containers: Vec<ContainerInspect> = client.get("/containers").await?;
            if format.as_deref() == Some("json") {
                for c in containers {
                    println!("{}", serde_json::to_string(&c)?);
                }
                return Ok(());
            }
            let rows = containers.into_iter().map(|c| {
                let addresses: Vec<String> = c
                    .network_settings
                    .networks
                    .iter()
                    .filter_map(|(n, e)| {
                        // The IPv6 address where there is no IPv4 one (an IPv6-only network).
                        [&e.addressing.ip_address, &e.addressing.global_ipv6_address]
                            .into_iter()
                            .find(|ip| !ip.is_empty())
                            .map(|ip| format!("{n}={ip}"))
                    })
                    .collect();
                let ports: Vec<String> = c
                    .network_settings
                    .ports
                    .iter()
                    .flat_map(|(ctr, hosts)| {
                        hosts
                            .iter()
                            .map(move |h| format!("{}:{}->{}", h.host_ip, h.host_port, ctr))
                    })
                    .collect();
                [
                    short_id(&c.id).to_string(),
                    c.name.trim_start_matches('/').to_string(),
                    c.host_config.network_mode,
                    addresses.join(","),
                    ports.join(", "),
                ]
            });
            print_table(
                &[
                    left("CONTAINER ID", 14),
                    left("NAME", 20),
                    left("NETWORK MODE", 16),
                    left("ADDRESSES", 32),
                    left("PORTS", 0),
                ],
                rows,
            );
        }
        ContainerCommand::Inspect { names } => {
            let mut out = Vec::new();
            for name in &names {
                out.push(
                    client
                        .get::<ContainerInspect>(&format!("/containers/{name}"))
                        .await?,
                );
            }
            print_json(&out)?;
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = Client::new(&cli.socket);
    match cli.command {
        Command::Agent(args) => {
            init_logging();
            if let Some(at) = args.crash_at {
                bpfbridge::faults::arm(at)?;
            }
            daemon::run(args.settings()?, cli.socket).await?;
        }
        // Run by `main` without a runtime.
        Command::DnsKeeper { .. } => {}
        Command::Container(command) => container_command(&client, command).await?,
        Command::Network(command) => network_command(&client, command).await?,
        Command::Port { container, port } => {
            let c: ContainerInspect = client.get(&format!("/containers/{container}")).await?;
            let only = port.as_deref().map(parse_port_proto).transpose()?;
            let bindings = bindings_from_port_map(&c.network_settings.ports)?;
            let lines = port_lines(&bindings, only);
            if let (Some(p), true) = (&port, lines.is_empty()) {
                let key = if p.contains('/') {
                    p.clone()
                } else {
                    format!("{p}/tcp")
                };
                bail!("No public port '{key}' published for {container}");
            }
            for line in lines {
                println!("{line}");
            }
        }
        Command::Filter(FilterCommand::Add {
            source,
            port,
            action,
        }) => {
            let rule: FilterInfo = client
                .post(
                    "/filters",
                    &CreateFilter {
                        source,
                        port,
                        action,
                    },
                )
                .await?;
            println!("{}", rule.id);
        }
        Command::Filter(FilterCommand::Rm { id }) => {
            client.delete(&format!("/filters/{id}")).await?;
            println!("{id}");
        }
        Command::Filter(FilterCommand::Ls) => {
            let rules: Vec<FilterInfo> = client.get("/filters").await?;
            let mut rows = Vec::new();
            for r in rules {
                let action = serde_json::to_value(r.action)?
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                rows.push([
                    r.id.to_string(),
                    r.source,
                    r.port,
                    action,
                    r.packets.to_string(),
                    r.bytes.to_string(),
                ]);
            }
            print_table(
                &[
                    left("ID", 5),
                    left("SOURCE", 20),
                    left("PORT", 12),
                    left("ACTION", 7),
                    right("PACKETS", 10),
                    right("BYTES", 12),
                ],
                rows,
            );
        }
        Command::Conntrack(ConntrackCommand::Ls) => {
            let flows: Vec<FlowInfo> = client.get("/conntrack").await?;
            for f in &flows {
                // conntrack -L's accounting fields, where the flow's table counts.
                let counted = match (f.packets, f.bytes) {
                    (Some(packets), Some(bytes)) => format!(" packets={packets} bytes={bytes}"),
                    _ => String::new(),
                };
                println!(
                    "{} {} src={} dst={} backend={} seen-as={} idle={}s{counted}",
                    f.kind, f.proto, f.client, f.frontend, f.backend, f.seen_as, f.idle_seconds
                );
            }
            eprintln!(
                "bpfbridge conntrack: {} flow entries have been shown.",
                flows.len()
            );
        }
        Command::Conntrack(ConntrackCommand::Flush) => {
            let flushed: serde_json::Value = client.delete_json("/conntrack").await?;
            eprintln!(
                "bpfbridge conntrack: {} flow entries have been deleted.",
                flushed["Flushed"]
            );
        }
        Command::Monitor { count } => {
            let mut seen = 0;
            client
                .stream_lines("/monitor", |line| {
                    println!("{line}");
                    seen += 1;
                    count.is_none_or(|c| seen < c)
                })
                .await?;
        }
        Command::Ports => {
            let ports: Vec<PublishedPort> = client.get("/ports").await?;
            print_json(&ports)?;
        }
        Command::Stats => {
            let stats: Vec<StatCounter> = client.get("/stats").await?;
            print_table(
                &[
                    left("COUNTER", 52),
                    right("PACKETS", 12),
                    right("BYTES", 14),
                ],
                stats
                    .into_iter()
                    .map(|s| [s.name, s.packets.to_string(), s.bytes.to_string()]),
            );
        }
        Command::Info => {
            let info: Info = client.get("/info").await?;
            print_json(&info)?;
        }
        Command::Debug(DebugCommand::CrashPoints) => {
            for point in CrashPoint::ALL {
                println!("{point}");
            }
        }
    }
    Ok(())
}

/// The agent's and the DNS keeper's log: stderr, `RUST_LOG` or info.
fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = if let Command::DnsKeeper {
        listen,
        grace_seconds,
    } = &cli.command
    {
        // A small single-threaded process: no runtime.
        init_logging();
        let grace = std::time::Duration::from_secs(*grace_seconds);
        bpfbridge::dns::keeper::run(listen, grace).context("DNS keeper")
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the runtime")
            .and_then(|rt| rt.block_on(run(cli)))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
