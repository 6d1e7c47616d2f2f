//! `bpfbridge`: the node agent (`bpfbridge agent`) and a thin CLI client of its API.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use bpfbridge::{
    client::Client,
    daemon,
    model::{
        ContainerInspect, CreateContainer, Info, PortMap, PublishedPort, StatCounter,
        parse_publish_flag,
    },
};
use clap::{Parser, Subcommand};

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
    Agent {
        /// Interface facing the outside world (default: the default route's).
        #[arg(long)]
        uplink: Option<String>,
        #[arg(long, default_value = "/var/lib/bpfbridge")]
        state_dir: PathBuf,
        /// bpffs directory for the pinned maps and links.
        #[arg(long, default_value = "/sys/fs/bpf/bpfbridge")]
        pin_dir: PathBuf,
        /// Where namespaces that the agent creates for containers are pinned.
        #[arg(long, default_value = bpfbridge::netns::NETNS_RUN_DIR)]
        netns_dir: PathBuf,
        #[arg(long, default_value = "ebpf", value_parser = ["ebpf"])]
        dataplane: String,
    },
    /// Manage containers' network attachments.
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Show the published-port entries of the dataplane.
    Ports,
    /// Show the dataplane's packet and byte counters.
    Stats,
    /// Show the agent's settings.
    Info,
}

#[derive(Subcommand)]
enum ContainerCommand {
    /// Attach a container to the default bridge network.
    Create {
        #[arg(long)]
        name: String,
        /// An existing network namespace (default: the agent creates one).
        #[arg(long)]
        netns: Option<PathBuf>,
        /// Publish a port: HOSTPORT:CONTAINERPORT[/tcp].
        #[arg(
            short = 'p',
            long = "publish",
            value_name = "HOSTPORT:CONTAINERPORT[/tcp]"
        )]
        publish: Vec<String>,
    },
    /// Detach a container and remove everything made for it.
    Rm { name: String },
    /// List containers.
    Ls,
    /// Show a container's network settings (JSON).
    Inspect { name: String },
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = Client::new(&cli.socket);
    match cli.command {
        Command::Agent {
            uplink,
            state_dir,
            pin_dir,
            netns_dir,
            dataplane,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            daemon::run(daemon::Options {
                uplink,
                state_dir,
                pin_dir,
                socket: cli.socket,
                netns_dir,
                dataplane,
            })
            .await?;
        }
        Command::Container(ContainerCommand::Create {
            name,
            netns,
            publish,
        }) => {
            let mut port_bindings = PortMap::new();
            for spec in &publish {
                let (key, host) = parse_publish_flag(spec)?;
                port_bindings.entry(key).or_default().push(host);
            }
            let netns = netns.map(|p| p.display().to_string());
            let request = CreateContainer {
                name,
                netns,
                port_bindings,
            };
            let created: ContainerInspect = client.post("/containers", &request).await?;
            print_json(&created)?;
        }
        Command::Container(ContainerCommand::Rm { name }) => {
            client.delete(&format!("/containers/{name}")).await?;
            println!("{name}");
        }
        Command::Container(ContainerCommand::Ls) => {
            let containers: Vec<ContainerInspect> = client.get("/containers").await?;
            println!(
                "{:<14} {:<20} {:<16} {:<12} PORTS",
                "CONTAINER ID", "NAME", "IP ADDRESS", "VETH"
            );
            for c in containers {
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
                println!(
                    "{:<14} {:<20} {:<16} {:<12} {}",
                    &c.id[..12.min(c.id.len())],
                    c.name,
                    c.network_settings.primary.ip_address,
                    c.host_veth,
                    ports.join(", ")
                );
            }
        }
        Command::Container(ContainerCommand::Inspect { name }) => {
            let c: ContainerInspect = client.get(&format!("/containers/{name}")).await?;
            print_json(&c)?;
        }
        Command::Ports => {
            let ports: Vec<PublishedPort> = client.get("/ports").await?;
            print_json(&ports)?;
        }
        Command::Stats => {
            let stats: Vec<StatCounter> = client.get("/stats").await?;
            println!("{:<52} {:>12} {:>14}", "COUNTER", "PACKETS", "BYTES");
            for s in stats {
                println!("{:<52} {:>12} {:>14}", s.name, s.packets, s.bytes);
            }
        }
        Command::Info => {
            let info: Info = client.get("/info").await?;
            print_json(&info)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
