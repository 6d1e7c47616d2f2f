//! `bpfbridge agent`: set the node up, serve the API, and leave the dataplane in place on
//! exit so that a restarted agent re-adopts it without dropping published ports.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::{
    net::{TcpListener, UnixListener},
    signal::unix::SignalKind,
    sync::Mutex,
};

use crate::{
    Error, Result, api,
    config::{DataplaneKind, Settings},
    dataplane::{Dataplane, ebpf::EbpfDataplane, iptables::IptablesDataplane},
    docker_plugin,
    metrics::{self, Metrics},
    netlink,
    service::{self, Service, repair_drift},
};

/// Binds the API socket, refusing to steal it from a live agent.
async fn bind(socket: &Path) -> Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    }
    if socket.exists() {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Err(Error::Conflict(format!(
                "another agent is serving {}",
                socket.display()
            )));
        }
        std::fs::remove_file(socket).map_err(Error::io(format!(
            "removing stale socket {}",
            socket.display()
        )))?;
    }
    let listener =
        UnixListener::bind(socket).map_err(Error::io(format!("binding {}", socket.display())))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660)).map_err(Error::io(
        format!("setting the mode of {}", socket.display()),
    ))?;
    Ok(listener)
}

pub async fn run(settings: Settings, socket: PathBuf) -> Result<()> {
    // Checked again when the socket is bound; refused here already, before the start takes
    // over what the live agent serves (its containers' DNS sockets among them).
    if tokio::net::UnixStream::connect(&socket).await.is_ok() {
        return Err(Error::Conflict(format!(
            "another agent is serving {}",
            socket.display()
        )));
    }
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(Error::io("opening a netlink socket"))?;
    tokio::spawn(connection);
    // Bound before the node is touched: a bad or taken address stops the start here.
    let metrics_listener = match settings.metrics_addr {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(Error::io(format!(
            "binding --metrics-addr {addr} for the metrics endpoint"
        )))?),
        None => None,
    };
    let pin_dir = settings.pin_dir.clone();
    let table_sizes = settings.flow_table_sizes(node_memory()?);
    let timeouts = settings.flow_timeouts();
    let cgroup = match &settings.cgroup {
        Some(path) => path.clone(),
        None => crate::netns::cgroup2_mount()?,
    };
    let dataplane = settings.dataplane;
    let docker_plugin = settings
        .docker_plugin()
        .map(|(name, socket)| (name.to_string(), socket));
    let userland_proxy = settings.userland_proxy;
    let ip6tables = settings.ip6tables;
    // Subscribed before the start reads the interfaces and addresses, so that no change in
    // between is lost.
    let interface_changes = netlink::interface_changes()?;
    let uplink_hook = settings.uplink_hook;
    let service = Service::start(handle, settings, move |uplink| {
        Ok(match dataplane {
            DataplaneKind::Iptables => {
                Box::new(IptablesDataplane::start(uplink, userland_proxy, ip6tables)?)
                    as Box<dyn Dataplane>
            }
            DataplaneKind::Ebpf => Box::new(EbpfDataplane::start(
                &pin_dir,
                uplink_hook,
                &cgroup,
                table_sizes,
                timeouts,
            )?),
        })
    })
    .await?;
    let info = service.info()?;
    let listener = bind(&socket).await?;
    tracing::info!(
        uplink = %info.uplink, networks = info.networks, containers = info.containers,
        socket = %socket.display(), "bpfbridge agent ready"
    );
    let service = Arc::new(Mutex::new(service));
    // Address changes too: a bridge's gateway address removed is repaired at once.
    let node_changes =
        futures::stream::select(netlink::link_changes()?, netlink::address_changes()?);
    let repairs = tokio::spawn(repair_drift(service.clone(), node_changes));
    let addresses_task = tokio::spawn(service::follow_node_addresses(
        service.clone(),
        interface_changes,
    ));
    let metrics = Arc::new(Metrics::new());
    let app = api::router(service.clone(), metrics.clone());
    let metrics_task = metrics_listener.map(|listener| {
        tracing::info!(address = ?listener.local_addr().ok(), "serving Prometheus metrics at /metrics");
        let router = metrics::router(service.clone(), metrics);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!("serving metrics: {e}");
            }
        })
    });
    let plugin = match &docker_plugin {
        Some((name, socket)) => {
            let listener = bind(socket).await?;
            tracing::info!(plugin = %name, socket = %socket.display(), "serving the Docker network and IPAM driver");
            let router = docker_plugin::router(service.clone());
            Some(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    tracing::error!("serving the Docker plugin: {e}");
                }
            }))
        }
        None => None,
    };
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())
        .map_err(Error::io("SIGTERM handler"))?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down; the dataplane stays in place for the next agent");
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::io("serving the API"))?;
    let _ = std::fs::remove_file(&socket);
    if let Some(task) = metrics_task {
        task.abort();
    }
    if let (Some(task), Some((_, plugin_socket))) = (plugin, &docker_plugin) {
        task.abort();
        let _ = std::fs::remove_file(plugin_socket);
    }
    // The idle-flow cleanup may be in a pass: wait for it off the runtime's threads.
    let mut service = service.lock().await;
    // Between passes now, as the lock is ours: no repair or address update is cut short.
    repairs.abort();
    addresses_task.abort();
    tokio::task::block_in_place(|| service.shutdown());
    Ok(())
}

/// The node's memory (MemTotal), which the flow tables' default sizes follow.
fn node_memory() -> Result<u64> {
    let meminfo =
        std::fs::read_to_string("/proc/meminfo").map_err(Error::io("reading /proc/meminfo"))?;
    crate::config::parse_mem_total(&meminfo).ok_or_else(|| Error::Io {
        context: "reading /proc/meminfo".into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no MemTotal line in kB"),
    })
}
