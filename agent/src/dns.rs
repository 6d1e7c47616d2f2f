//! The embedded DNS server that Docker runs at 127.0.0.11 inside containers on user-defined
//! networks: containers find each other by name, alias and short id, but only on the
//! networks they share; every other name goes to the node's resolvers.
//!
//! One [`Resolver`] holds the records of the whole node; each container gets its own server
//! (a UDP socket and a TCP listener on its loopback) whose tasks run on the agent's runtime.
//! Only those listening sockets live in the container's namespace: the sockets that forward
//! to the upstreams are created by the tasks, in the agent's namespace, from where the node's
//! resolvers are reachable.
//!
//! The listening sockets outlive the agent: the [`keeper`] process holds a duplicate of each,
//! and the next agent takes them back ([`Resolver::keep_sockets_in`]), so that queries sent
//! while no agent runs wait in the sockets' buffers instead of failing.

pub mod keeper;

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};

use hickory_proto::{
    op::{
        DEFAULT_MAX_PAYLOAD_LEN, Edns, Header, Message, MessageType, Metadata, OpCode, ResponseCode,
    },
    rr::{
        DNSClass, RData, Record as DnsRecord, RecordType,
        rdata::{A, AAAA},
    },
    serialize::binary::BinDecodable as _,
};
use nix::{
    sched::{CloneFlags, setns},
    sys::socket::{SockType, SockaddrIn, getsockname, getsockopt, setsockopt, sockopt},
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    task::{AbortHandle, JoinSet},
    time::timeout,
};
use tracing::{debug, info, warn};

use self::keeper::{HeldSockets, Keeper};

use crate::{Error, Result};

/// Where Docker's embedded server listens inside a container.
const LISTEN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 11), 53);
/// Docker's TTL for container names.
const TTL: u32 = 600;
/// How long one upstream gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP connection may stay silent (or stall a read or write) before it is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Bounds what one container can make its server hold: beyond these, queries are dropped
/// (UDP clients retry) and connections refused.
const MAX_UDP_IN_FLIGHT: usize = 256;
const MAX_TCP_CONNECTIONS: usize = 64;
/// The largest DNS message (the TCP length prefix is 16 bits); also the receive buffer, so
/// that no datagram is silently cut.
const MAX_MESSAGE: usize = u16::MAX as usize;
/// The UDP socket's receive buffer (the kernel doubles it for its bookkeeping): room for the
/// queries that arrive while no agent reads, some ten seconds of 100 queries/s.
const UDP_RECEIVE_BUFFER: usize = 1 << 20;
/// Where the records are saved for the next agent, in the state directory.
const RECORDS_FILE: &str = "dns-records.json";

/// One name record: a container's address on one network, under all its names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Full id of the container owning the address.
    pub container_id: String,
    /// Network name.
    pub network: String,
    /// Container name, network aliases, short id (12 hex).
    pub names: Vec<String>,
    /// The IPv4 address (A answers); none on an IPv6-only network.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// The IPv6 address on a network with IPv6 (AAAA answers); records saved before IPv6
    /// have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
}

/// The resolver shared by all containers' DNS servers. Cheap to clone (Arc inside); when the
/// last clone is dropped, all servers stop.
#[derive(Clone)]
pub struct Resolver {
    shared: Arc<Shared>,
    servers: Arc<Mutex<HashMap<String, Server>>>,
    /// Locked after `servers` when both are.
    handover: Arc<Mutex<Handover>>,
}

/// The servers' life beyond this agent.
#[derive(Default)]
struct Handover {
    /// `None` when sockets are not kept (no keeper asked for, or it could not be reached).
    keeper: Option<Keeper>,
    /// Where the records are saved for the next agent, which answers with them from its
    /// first moment, before it knows its containers again.
    records_file: Option<PathBuf>,
    /// Servers started at once on the keeper's sockets and the saved records, which no
    /// [`Resolver::serve`] has confirmed yet.
    unconfirmed: HashSet<String>,
    /// What the keeper held that is not served yet (there were no saved records to answer
    /// with), by container id.
    unclaimed: HashMap<String, HeldSockets>,
}

/// What the serving tasks read.
struct Shared {
    upstreams: Vec<SocketAddr>,
    /// Swapped whole by `set_records`, so a query works on one consistent snapshot.
    records: RwLock<Arc<[Record]>>,
}

impl Shared {
    fn records(&self) -> Arc<[Record]> {
        // A panic elsewhere cannot leave a half-written Arc behind: the data is still good.
        self.records
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// One container's server; dropping it stops it.
struct Server {
    /// (device, inode) of the network namespace the sockets are bound in.
    netns: (u64, u64),
    udp: Arc<UdpSocket>,
    tcp: Arc<TcpListener>,
    tasks: [AbortHandle; 2],
}

impl Drop for Server {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Resolver {
    /// `upstreams`: the node's resolvers, where names that are not containers' go.
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Resolver {
            shared: Arc::new(Shared {
                upstreams,
                records: RwLock::new(Arc::new([])),
            }),
            servers: Arc::default(),
            handover: Arc::default(),
        }
    }

    /// Keeps the servers beyond this process: connects to the keeper of `state_dir`
    /// (starting one, this program's `dns-keeper` subcommand, if none answers), takes the
    /// sockets it holds and serves them at once with the records the previous agent saved
    /// in `state_dir`. Call first (the sooner, the shorter the wait of the queries sent
    /// while no agent ran), then [`Resolver::serve`] for every container the agent has, then
    /// [`Resolver::release_unclaimed`]. Without a keeper the servers work as well, but
    /// close with the agent. Must be called within a tokio runtime, as `serve`.
    pub fn keep_sockets_in(&self, state_dir: &Path) {
        let path = state_dir.join(keeper::SOCKET_NAME);
        let program = PathBuf::from("/proc/self/exe");
        let (keeper, held) = match Keeper::connect_or_start(&path, &program, keeper::DEFAULT_GRACE)
        {
            Ok(connected) => connected,
            Err(e) => {
                warn!(
                    keeper = %path.display(),
                    "no DNS keeper ({e}): containers' DNS servers will stop while the agent restarts"
                );
                return;
            }
        };
        let records_file = state_dir.join(RECORDS_FILE);
        let saved = match fs::read(&records_file) {
            Ok(bytes) => serde_json::from_slice::<Vec<Record>>(&bytes)
                .inspect_err(|e| {
                    warn!(
                        file = %records_file.display(),
                        "the saved DNS records are unreadable ({e}); serving the kept sockets once the containers are restored"
                    )
                })
                .ok(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                warn!(file = %records_file.display(), "reading the saved DNS records: {e}");
                None
            }
        };
        let mut servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut handover = self.handover();
        handover.keeper = Some(keeper);
        handover.records_file = Some(records_file);
        let Some(records) = saved else {
            info!(
                keeper = %path.display(),
                containers = held.len(),
                "DNS keeper ready; its sockets are adopted as containers' servers start"
            );
            handover.unclaimed = held
                .into_iter()
                .map(|h| (h.container_id.clone(), h))
                .collect();
            return;
        };
        self.set_shared_records(records);
        let held_count = held.len();
        for held in held {
            let id = held.container_id.clone();
            match self.serve_held(&mut servers, held) {
                Ok(()) => {
                    handover.unconfirmed.insert(id);
                }
                Err(why) => {
                    warn!(
                        container_id = id,
                        "closing the DNS sockets the keeper held: {why}"
                    );
                    handover.tell_keeper(|keeper| keeper.release(&id));
                }
            }
        }
        info!(
            keeper = %path.display(),
            containers = held_count,
            serving = handover.unconfirmed.len(),
            "DNS keeper ready; its sockets are served with the saved records until the containers are restored"
        );
    }

    /// Serves sockets handed back by the keeper, in whatever namespace they are.
    fn serve_held(
        &self,
        servers: &mut HashMap<String, Server>,
        held: HeldSockets,
    ) -> std::result::Result<(), String> {
        let identity =
            socket_netns(held.udp.as_fd()).map_err(|e| format!("its UDP socket: {e}"))?;
        check_held(&held, identity)?;
        let (udp, tcp) = register(held.udp.into(), held.tcp.into()).map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
        self.start_server(servers, &runtime, &held.container_id, identity, udp, tcp);
        Ok(())
    }

    /// Stops the servers started from the keeper's sockets that no [`Resolver::serve`]
    /// confirmed, and closes the sockets the keeper held that no server took: containers
    /// removed while no agent ran, or whose namespace is gone.
    pub fn release_unclaimed(&self) {
        let mut servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut handover = self.handover();
        let unconfirmed = std::mem::take(&mut handover.unconfirmed);
        let unclaimed = std::mem::take(&mut handover.unclaimed);
        for container_id in unconfirmed.into_iter().chain(unclaimed.into_keys()) {
            info!(
                container_id,
                "closing the DNS sockets the keeper held for a container this agent does not serve (removed, or its namespace is gone)"
            );
            servers.remove(&container_id);
            handover.tell_keeper(|keeper| keeper.release(&container_id));
        }
    }

    fn handover(&self) -> std::sync::MutexGuard<'_, Handover> {
        self.handover.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sockets the keeper held for `container_id`, if they are still good for its
    /// server in the namespace `identity`; otherwise the keeper is told to close them.
    fn adopt(
        &self,
        container_id: &str,
        identity: (u64, u64),
    ) -> Option<(std::net::UdpSocket, std::net::TcpListener)> {
        let mut handover = self.handover();
        let held = handover.unclaimed.remove(container_id)?;
        match check_held(&held, identity) {
            Ok(()) => {
                debug!(container_id, "adopted the DNS sockets the keeper held");
                Some((held.udp.into(), held.tcp.into()))
            }
            Err(why) => {
                warn!(
                    container_id,
                    "not adopting the DNS sockets the keeper held: {why}; binding new ones"
                );
                // Closed everywhere before new ones are bound: they might hold the address.
                handover.tell_keeper(|keeper| keeper.release(container_id));
                None
            }
        }
    }

    /// Replaces the whole record set (called after every change), and saves it for the
    /// next agent if the sockets are kept.
    pub fn set_records(&self, records: Vec<Record>) {
        if let Some(file) = &self.handover().records_file
            && let Err(e) = save_records(file, &records)
        {
            warn!(file = %file.display(), "saving the DNS records for the next agent: {e}");
        }
        self.set_shared_records(records);
    }

    fn set_shared_records(&self, records: Vec<Record>) {
        *self
            .shared
            .records
            .write()
            .unwrap_or_else(PoisonError::into_inner) = records.into();
    }

    /// Starts a DNS server (UDP and TCP, 127.0.0.11:53) inside the network namespace at
    /// `netns`, answering for container `container_id`. Idempotent: a second call for the
    /// same id and namespace keeps the server; for another namespace it replaces it. Must
    /// be called within a tokio runtime, whose threads are in the namespace the upstreams
    /// are reached from.
    pub fn serve(&self, container_id: &str, netns: &Path) -> Result<()> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| Error::Io {
            context: format!("starting the DNS server of container {container_id}"),
            source: io::Error::other(e),
        })?;
        let metadata =
            fs::metadata(netns).map_err(Error::io(format!("stat {}", netns.display())))?;
        let identity = (metadata.dev(), metadata.ino());
        let mut servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        let confirmed = self.handover().unconfirmed.remove(container_id);
        let (udp, tcp) = match servers.get(container_id) {
            // Already served there. Its tasks go on: new ones beside them would read the same
            // sockets until the old ones end, and a query peeked by one and taken by the
            // other would be lost.
            Some(old) if old.netns == identity && old.tasks.iter().all(|t| !t.is_finished()) => {
                return Ok(());
            }
            // Tasks that ended (a panic) are replaced on the same sockets: binding again would
            // fail while the old server holds them.
            Some(old) if old.netns == identity => (old.udp.clone(), old.tcp.clone()),
            old => {
                if confirmed && let Some(old) = old {
                    warn!(
                        container_id,
                        "the DNS sockets the keeper held are in another network namespace (inode {}) than the container's (inode {}): its namespace was replaced; binding new ones",
                        old.netns.1,
                        identity.1
                    );
                }
                let (udp, tcp) = match self.adopt(container_id, identity) {
                    Some(adopted) => adopted,
                    None => {
                        let (udp, tcp) = bind_in(netns)?;
                        self.handover().tell_keeper(|keeper| {
                            keeper.keep(container_id, udp.as_fd(), tcp.as_fd())
                        });
                        (udp, tcp)
                    }
                };
                register(udp, tcp)?
            }
        };
        self.start_server(&mut servers, &runtime, container_id, identity, udp, tcp);
        debug!(container_id, netns = %netns.display(), "DNS server started");
        Ok(())
    }

    /// Starts serving `udp` and `tcp` (bound in the namespace `identity`) for container
    /// `container_id`, replacing its server if any.
    fn start_server(
        &self,
        servers: &mut HashMap<String, Server>,
        runtime: &tokio::runtime::Handle,
        container_id: &str,
        identity: (u64, u64),
        udp: Arc<UdpSocket>,
        tcp: Arc<TcpListener>,
    ) {
        let client: Arc<str> = container_id.into();
        let tasks = [
            runtime
                .spawn(serve_udp(self.shared.clone(), client.clone(), udp.clone()))
                .abort_handle(),
            runtime
                .spawn(serve_tcp(self.shared.clone(), client, tcp.clone()))
                .abort_handle(),
        ];
        // Dropping the replaced server (if any) aborts its tasks.
        servers.insert(
            container_id.to_string(),
            Server {
                netns: identity,
                udp,
                tcp,
                tasks,
            },
        );
    }

    /// Stops that container's server (no-op if none).
    pub fn stop(&self, container_id: &str) {
        let removed = self
            .servers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(container_id);
        if removed.is_some() {
            self.handover()
                .tell_keeper(|keeper| keeper.release(container_id));
            debug!(container_id, "DNS server stopped");
        }
    }

    /// The upstreams from a resolv.conf file: its nameserver lines (IPv4 and IPv6, port 53),
    /// in order and without duplicates. Loopback ones are returned too: the agent decides.
    pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
        let mut upstreams = Vec::new();
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            if fields.next() != Some("nameserver") {
                continue;
            }
            let Some(address) = fields.next() else {
                continue;
            };
            match parse_nameserver(address) {
                Some(upstream) if !upstreams.contains(&upstream) => upstreams.push(upstream),
                Some(_) => {}
                None => warn!(address, "ignoring an unparsable nameserver in resolv.conf"),
            }
        }
        upstreams
    }
}

impl Handover {
    /// Sends the keeper a message; a keeper that cannot be reached is let go (and said so
    /// once): the servers go on, but no longer outlive the agent.
    fn tell_keeper(&mut self, message: impl FnOnce(&Keeper) -> Result<()>) {
        let Some(keeper) = &self.keeper else {
            return;
        };
        if let Err(e) = message(keeper) {
            warn!(
                "{e}; without the DNS keeper, containers' DNS servers will stop while the agent restarts (the next agent starts a new keeper)"
            );
            self.keeper = None;
        }
    }
}

/// Hands bound sockets to the runtime.
fn register(
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
) -> Result<(Arc<UdpSocket>, Arc<TcpListener>)> {
    let context = "registering DNS sockets with the runtime";
    udp.set_nonblocking(true).map_err(Error::io(context))?;
    tcp.set_nonblocking(true).map_err(Error::io(context))?;
    Ok((
        Arc::new(UdpSocket::from_std(udp).map_err(Error::io(context))?),
        Arc::new(TcpListener::from_std(tcp).map_err(Error::io(context))?),
    ))
}

/// Writes `records` to `file` whole (a new file renamed over the old one), so that the next
/// agent never reads half of it.
fn save_records(file: &Path, records: &[Record]) -> io::Result<()> {
    let mut temporary = file.as_os_str().to_owned();
    temporary.push(".new");
    fs::write(&temporary, serde_json::to_vec(records)?)?;
    fs::rename(&temporary, file)
}

/// Whether sockets handed over by the keeper are a DNS server's, bound in the namespace
/// `identity`; why not otherwise.
fn check_held(held: &HeldSockets, identity: (u64, u64)) -> std::result::Result<(), String> {
    for (socket, expected, what) in [
        (held.udp.as_fd(), SockType::Datagram, "UDP socket"),
        (held.tcp.as_fd(), SockType::Stream, "TCP listener"),
    ] {
        if getsockopt(&socket, sockopt::SockType).map_err(|e| format!("its {what}: {e}"))?
            != expected
        {
            return Err(format!("its {what} is of another type"));
        }
        let local = getsockname::<SockaddrIn>(socket.as_raw_fd())
            .map_err(|e| format!("its {what}: {e}"))?;
        if SocketAddrV4::from(local) != LISTEN {
            return Err(format!("its {what} is bound to {local}, not {LISTEN}"));
        }
        let namespace = socket_netns(socket).map_err(|e| format!("its {what}: {e}"))?;
        if namespace != identity {
            return Err(format!(
                "its {what} is bound in another network namespace (inode {}) than the container's (inode {}): the container's namespace was replaced",
                namespace.1, identity.1
            ));
        }
    }
    if !getsockopt(&held.tcp, sockopt::AcceptConn).map_err(|e| format!("its TCP listener: {e}"))? {
        return Err("its TCP socket does not listen".into());
    }
    Ok(())
}

/// (device, inode) of the network namespace a socket lives in.
fn socket_netns(socket: BorrowedFd) -> io::Result<(u64, u64)> {
    /// SIOCGSKNS (linux/sockios.h): a descriptor of the socket's network namespace.
    const SIOCGSKNS: libc::c_ulong = 0x894C;
    // SAFETY: SIOCGSKNS takes no argument and returns a new descriptor (or -1).
    let fd = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCGSKNS as _) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just installed `fd` for us; nothing else owns it.
    let namespace = fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let metadata = namespace.metadata()?;
    Ok((metadata.dev(), metadata.ino()))
}

fn parse_nameserver(text: &str) -> Option<SocketAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    // A link-local IPv6 server names its interface: fe80::1%eth0 (or %2).
    let (ip, zone) = text.split_once('%')?;
    let ip: Ipv6Addr = ip.parse().ok()?;
    let scope = zone
        .parse()
        .ok()
        .or_else(|| nix::net::if_::if_nametoindex(zone).ok())?;
    Some(SocketAddrV6::new(ip, 53, 0, scope).into())
}

/// Binds the listening sockets inside the namespace at `netns`.
fn bind_in(netns: &Path) -> Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let netns = netns.to_path_buf();
    let name = netns.display().to_string();
    // setns moves only the calling thread, and for good: a throwaway thread binds the
    // sockets, which keep the namespace they were created in once handed back.
    let thread = std::thread::Builder::new()
        .name("dns-bind".into())
        .spawn(move || -> Result<_> {
            let file = fs::File::open(&netns)
                .map_err(Error::io(format!("opening {}", netns.display())))?;
            setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(Error::sys(format!("entering {}", netns.display())))?;
            let bound = |what| format!("binding {what} {LISTEN} in {}", netns.display());
            let udp = std::net::UdpSocket::bind(LISTEN).map_err(Error::io(bound("UDP")))?;
            // Beyond net.core.rmem_max if need be (the agent has CAP_NET_ADMIN); else the
            // namespace's maximum.
            if setsockopt(&udp, sockopt::RcvBufForce, &UDP_RECEIVE_BUFFER).is_err() {
                let _ = setsockopt(&udp, sockopt::RcvBuf, &UDP_RECEIVE_BUFFER);
            }
            let tcp = std::net::TcpListener::bind(LISTEN).map_err(Error::io(bound("TCP")))?;
            Ok((udp, tcp))
        })
        .map_err(Error::io(format!("spawning a thread to enter {name}")))?;
    thread.join().map_err(|_| Error::Io {
        context: format!("binding the DNS sockets in {name}"),
        source: io::Error::other("thread panicked"),
    })?
}

async fn serve_udp(shared: Arc<Shared>, client: Arc<str>, socket: Arc<UdpSocket>) {
    // Owned here so that aborting this task also aborts the queries in flight.
    let mut in_flight = JoinSet::new();
    let mut buf = vec![0; MAX_MESSAGE];
    loop {
        // Peeked, and taken from the socket only once answered (or handed to a task that
        // forwards it): a query read by an agent that is killed before it answers stays for
        // the next agent (the client may then get two answers; it takes the first).
        let (len, peer) = match socket.peek_from(&mut buf).await {
            Ok(peeked) => peeked,
            Err(e) => {
                // Errors here concern one datagram, but a pause keeps a persistent one from
                // spinning the loop.
                debug!(client = &*client, "DNS UDP receive: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let query = buf[..len].to_vec();
        let action = decide(&shared.records(), &client, &query, Transport::Udp);
        if let Action::Reply(answer) = &action
            && let Err(e) = socket.send_to(answer, peer).await
        {
            debug!(client = &*client, %peer, "DNS UDP answer: {e}");
        }
        // The peeked datagram: this task is its socket's only reader.
        if let Err(e) = socket.recv_from(&mut buf).await {
            debug!(client = &*client, "DNS UDP receive: {e}");
        }
        let Action::Forward(request) = action else {
            continue;
        };
        while in_flight.try_join_next().is_some() {}
        if in_flight.len() >= MAX_UDP_IN_FLIGHT {
            debug!(client = &*client, "DNS query dropped: too many in flight");
            continue;
        }
        let (shared, client, socket) = (shared.clone(), client.clone(), socket.clone());
        in_flight.spawn(async move {
            let Some(answer) = forward_or_fail(&shared, &query, &request, Transport::Udp).await
            else {
                return;
            };
            if let Err(e) = socket.send_to(&answer, peer).await {
                debug!(client = &*client, %peer, "DNS UDP answer: {e}");
            }
        });
    }
}

async fn serve_tcp(shared: Arc<Shared>, client: Arc<str>, listener: Arc<TcpListener>) {
    // Owned here so that aborting this task also closes the connections.
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // As for UDP: e.g. out of file descriptors, which may pass.
                debug!(client = &*client, "DNS TCP accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_TCP_CONNECTIONS {
            debug!(client = &*client, "DNS connection refused: too many open");
            continue;
        }
        connections.spawn(serve_connection(shared.clone(), client.clone(), stream));
    }
}

/// Answers the queries of one TCP connection, in order, until it closes or idles.
async fn serve_connection(shared: Arc<Shared>, client: Arc<str>, mut stream: TcpStream) {
    loop {
        let query = match timeout(TCP_IDLE, read_framed(&mut stream)).await {
            Ok(Ok(query)) => query,
            // Closed by the client, broken, or idle.
            Ok(Err(_)) | Err(_) => return,
        };
        // Whoever sends non-DNS data over a DNS connection gets it closed.
        let Some(answer) = handle(&shared, &client, &query, Transport::Tcp).await else {
            return;
        };
        if !matches!(
            timeout(TCP_IDLE, write_framed(&mut stream, &answer)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}

/// Reads one message with its 2-byte length prefix.
async fn read_framed(stream: &mut (impl AsyncRead + Unpin)) -> io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut message = vec![0; usize::from(len)];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

/// Writes one message with its 2-byte length prefix.
async fn write_framed(stream: &mut (impl AsyncWrite + Unpin), message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "DNS message over 64 KiB"))?;
    let mut framed = Vec::with_capacity(2 + message.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// The answer to one query from container `client`, if it deserves one.
async fn handle(
    shared: &Shared,
    client: &str,
    query: &[u8],
    transport: Transport,
) -> Option<Vec<u8>> {
    match decide(&shared.records(), client, query, transport) {
        Action::Ignore => None,
        Action::Reply(answer) => Some(answer),
        Action::Forward(request) => forward_or_fail(shared, query, &request, transport).await,
    }
}

/// The upstreams' answer to `query` (decoded as `request`), or SERVFAIL.
async fn forward_or_fail(
    shared: &Shared,
    query: &[u8],
    request: &Message,
    transport: Transport,
) -> Option<Vec<u8>> {
    if let Some(answer) = forward(&shared.upstreams, query, request.metadata.id, transport).await {
        return Some(answer);
    }
    encode(&response_to(request, ResponseCode::ServFail), None)
}

#[derive(Debug)]
enum Action {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not a name of ours: the upstreams answer; the request is kept to answer SERVFAIL if
    /// they do not.
    Forward(Message),
    /// Not a DNS query: answering could feed a loop (a response) or answer noise.
    Ignore,
}

/// What to do with `query` from container `client`, given the node's `records`.
fn decide(records: &[Record], client: &str, query: &[u8], transport: Transport) -> Action {
    let Ok(header) = Header::from_bytes(query) else {
        return Action::Ignore;
    };
    if header.metadata.message_type != MessageType::Query {
        return Action::Ignore;
    }
    let request = match Message::from_vec(query) {
        Ok(request) => request,
        Err(e) => {
            debug!(client, "malformed DNS query: {e}");
            let mut response = Message::new(0, MessageType::Response, OpCode::Query);
            response.metadata = response_metadata(&header.metadata, ResponseCode::FormErr);
            return reply(&response, None);
        }
    };
    if request.metadata.op_code != OpCode::Query {
        return reply(&response_to(&request, ResponseCode::NotImp), None);
    }
    // Every server in practice rejects several questions in one query: their answers
    // could not be told apart.
    let [question] = request.queries.as_slice() else {
        return reply(&response_to(&request, ResponseCode::FormErr), None);
    };
    if question.query_class() != DNSClass::IN {
        return Action::Forward(request);
    }
    let ips = lookup(records, client, &question.name().to_ascii());
    if ips.is_empty() {
        return Action::Forward(request);
    }
    let mut response = response_to(&request, ResponseCode::NoError);
    // A and AAAA get the addresses of their family; any other type (and AAAA for a
    // container without IPv6) is an empty answer for a name that exists (NOERROR, not
    // NXDOMAIN, so that clients go on to the other family's answer).
    for ip in ips {
        let data = match (question.query_type(), ip) {
            (RecordType::A, IpAddr::V4(ip)) => RData::A(A(ip)),
            (RecordType::AAAA, IpAddr::V6(ip)) => RData::AAAA(AAAA(ip)),
            _ => continue,
        };
        response.add_answer(DnsRecord::from_rdata(question.name().clone(), TTL, data));
    }
    let limit = (transport == Transport::Udp).then(|| usize::from(request.max_payload()));
    reply(&response, limit)
}

fn reply(response: &Message, limit: Option<usize>) -> Action {
    encode(response, limit).map_or(Action::Ignore, Action::Reply)
}

/// Encodes `response`, or its truncated form (TC set, so the client retries over TCP) if it
/// exceeds `limit` bytes.
fn encode(response: &Message, limit: Option<usize>) -> Option<Vec<u8>> {
    let encoded = match response.to_vec() {
        Ok(bytes) => match limit {
            Some(limit) if bytes.len() > limit => response.truncate().to_vec(),
            _ => Ok(bytes),
        },
        Err(e) => Err(e),
    };
    encoded
        .inspect_err(|e| warn!("encoding a DNS response: {e}"))
        .ok()
}

/// A response to `request` with code `code`, its question and no records yet.
fn response_to(request: &Message, code: ResponseCode) -> Message {
    let mut response = Message::new(0, MessageType::Response, OpCode::Query);
    response.metadata = response_metadata(&request.metadata, code);
    response.add_queries(request.queries.iter().cloned());
    // RFC 6891: a request with OPT gets a response with OPT.
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(DEFAULT_MAX_PAYLOAD_LEN);
        response.set_edns(edns);
    }
    response
}

fn response_metadata(request: &Metadata, code: ResponseCode) -> Metadata {
    let mut metadata = Metadata::response_from_request(request);
    // Like Docker's: not authoritative for anything, but recursive on behalf of the client.
    metadata.recursion_available = true;
    metadata.response_code = code;
    metadata
}

/// The addresses `name` has for container `client`: those of the records with that name on
/// the networks `client` is on (IPv4 and IPv6), without duplicates.
fn lookup(records: &[Record], client: &str, name: &str) -> Vec<IpAddr> {
    let networks: HashSet<&str> = records
        .iter()
        .filter(|r| r.container_id == client)
        .map(|r| r.network.as_str())
        .collect();
    let mut ips = Vec::new();
    for record in records {
        if networks.contains(record.network.as_str())
            && record.names.iter().any(|n| same_name(n, name))
        {
            let addresses = (record.ip.map(IpAddr::V4).into_iter())
                .chain(record.ipv6.map(IpAddr::V6))
                .collect::<Vec<_>>();
            for ip in addresses {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
    }
    ips
}

/// DNS names compare case-insensitively, and "c2" is "c2." fully qualified.
fn same_name(a: &str, b: &str) -> bool {
    let a = a.strip_suffix('.').unwrap_or(a);
    let b = b.strip_suffix('.').unwrap_or(b);
    // The root (a query for ".") is nobody's name.
    !a.is_empty() && a.eq_ignore_ascii_case(b)
}

/// Tries the upstreams in order; the first answer wins.
async fn forward(
    upstreams: &[SocketAddr],
    query: &[u8],
    id: u16,
    transport: Transport,
) -> Option<Vec<u8>> {
    for &upstream in upstreams {
        let answer = match timeout(UPSTREAM_TIMEOUT, forward_udp(upstream, query, id)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                debug!(%upstream, "forwarding a DNS query: {e}");
                continue;
            }
            Err(_) => {
                debug!(%upstream, "forwarding a DNS query: no answer in time");
                continue;
            }
        };
        // A UDP client retries over TCP by itself when told the answer was truncated; a TCP
        // client cannot, so it gets the whole answer over TCP.
        if transport == Transport::Tcp && is_truncated(&answer) {
            match timeout(UPSTREAM_TIMEOUT, forward_tcp(upstream, query, id)).await {
                Ok(Ok(full)) => return Some(full),
                Ok(Err(e)) => debug!(%upstream, "forwarding a DNS query over TCP: {e}"),
                Err(_) => debug!(%upstream, "forwarding a DNS query over TCP: no answer in time"),
            }
        }
        return Some(answer);
    }
    None
}

async fn forward_udp(upstream: SocketAddr, query: &[u8], id: u16) -> io::Result<Vec<u8>> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    // A fresh socket per query gets a random source port, and connecting it makes the
    // kernel drop datagrams from anyone but the upstream: both against spoofed answers.
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0; MAX_MESSAGE];
    loop {
        let len = socket.recv(&mut buf).await?;
        // Anything else (e.g. a late answer to an earlier query) is skipped; the caller's
        // timeout bounds the wait.
        if answers(&buf[..len], id) {
            buf.truncate(len);
            return Ok(buf);
        }
    }
}

async fn forward_tcp(upstream: SocketAddr, query: &[u8], id: u16) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    write_framed(&mut stream, query).await?;
    let answer = read_framed(&mut stream).await?;
    if answers(&answer, id) {
        Ok(answer)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an answer to the query",
        ))
    }
}

/// Whether `message` is a response to the query with id `id`.
fn answers(message: &[u8], id: u16) -> bool {
    Header::from_bytes(message)
        .is_ok_and(|h| h.metadata.id == id && h.metadata.message_type == MessageType::Response)
}

fn is_truncated(message: &[u8]) -> bool {
    Header::from_bytes(message).is_ok_and(|h| h.metadata.truncation)
}

#[cfg(test)]
mod tests {
    use hickory_proto::{op::Query, rr::Name};

    use super::*;

    fn record(container_id: &str, network: &str, names: &[&str], ip: [u8; 4]) -> Record {
        Record {
            container_id: container_id.into(),
            network: network.into(),
            names: names.iter().map(|n| n.to_string()).collect(),
            ip: Some(ip.into()),
            ipv6: None,
        }
    }

    /// c1 and c2 on "a", c3 on "b", c4 on both.
    fn records() -> Vec<Record> {
        vec![
            record("id1", "a", &["c1", "111111111111"], [10, 0, 1, 1]),
            record("id2", "a", &["c2", "db", "222222222222"], [10, 0, 1, 2]),
            record("id3", "b", &["c3"], [10, 0, 2, 3]),
            record("id4", "a", &["c4"], [10, 0, 1, 4]),
            record("id4", "b", &["c4"], [10, 0, 2, 4]),
        ]
    }

    #[test]
    fn names_match_without_case_and_trailing_dot() {
        for (a, b, same) in [
            ("c2", "c2", true),
            ("c2", "C2.", true),
            ("C2.", "c2", true),
            ("web.local", "WEB.Local.", true),
            ("c2", "c20", false),
            ("c2", "c2.a", false),
            ("", "", false),
            ("", ".", false),
            ("c2", "", false),
        ] {
            assert_eq!(same_name(a, b), same, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn lookup_is_limited_to_shared_networks() {
        let records = records();
        let ip = |a, b, c, d| vec![IpAddr::V4(Ipv4Addr::new(a, b, c, d))];
        for (client, name, expected) in [
            ("id1", "c2", ip(10, 0, 1, 2)),
            ("id1", "DB.", ip(10, 0, 1, 2)),
            ("id1", "222222222222", ip(10, 0, 1, 2)),
            ("id1", "c1", ip(10, 0, 1, 1)),
            ("id1", "c3", vec![]),
            ("id1", "c4", ip(10, 0, 1, 4)),
            ("id3", "c4", ip(10, 0, 2, 4)),
            ("id3", "c2", vec![]),
            (
                "id4",
                "c4",
                vec![IpAddr::from([10, 0, 1, 4]), IpAddr::from([10, 0, 2, 4])],
            ),
            ("unknown", "c2", vec![]),
        ] {
            assert_eq!(lookup(&records, client, name), expected, "{client} {name}");
        }
    }

    fn query(name: &str, record_type: RecordType) -> Message {
        let mut message = Message::query();
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
        message
    }

    fn decided(records: &[Record], query: &[u8], transport: Transport) -> Option<Message> {
        match decide(records, "id1", query, transport) {
            Action::Reply(bytes) => Some(Message::from_vec(&bytes).unwrap()),
            Action::Forward(_) => None,
            Action::Ignore => panic!("ignored"),
        }
    }

    #[test]
    fn local_names_are_answered() {
        let request = query("C2.", RecordType::A);
        let response = decided(&records(), &request.to_vec().unwrap(), Transport::Udp).unwrap();
        assert_eq!(response.metadata.id, request.metadata.id);
        assert_eq!(response.metadata.message_type, MessageType::Response);
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert!(!response.metadata.authoritative);
        assert!(response.metadata.recursion_available);
        assert!(response.metadata.recursion_desired);
        assert_eq!(response.queries, request.queries);
        let answers: Vec<_> = response
            .answers
            .iter()
            .map(|r| (r.ttl, r.data.clone()))
            .collect();
        assert_eq!(answers, [(TTL, RData::A(A::new(10, 0, 1, 2)))]);

        let aaaa = query("c2", RecordType::AAAA).to_vec().unwrap();
        let response = decided(&records(), &aaaa, Transport::Udp).unwrap();
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert!(response.answers.is_empty());

        let mut dual = records();
        dual[1].ipv6 = Some("fd00:1::2".parse().unwrap());
        let response = decided(&dual, &aaaa, Transport::Udp).unwrap();
        let answers: Vec<_> = response.answers.iter().map(|r| r.data.clone()).collect();
        assert_eq!(answers, [RData::AAAA(AAAA("fd00:1::2".parse().unwrap()))]);
        let a = query("c2", RecordType::A).to_vec().unwrap();
        let response = decided(&dual, &a, Transport::Udp).unwrap();
        assert_eq!(response.answers.len(), 1, "A answers stay IPv4");
    }

    #[test]
    fn an_ipv6_only_container_answers_aaaa_and_an_empty_a() {
        let mut only6 = records();
        only6[1].ip = None;
        only6[1].ipv6 = Some("fd00:1::2".parse().unwrap());
        let aaaa = query("c2", RecordType::AAAA).to_vec().unwrap();
        let response = decided(&only6, &aaaa, Transport::Udp).unwrap();
        let answers: Vec<_> = response.answers.iter().map(|r| r.data.clone()).collect();
        assert_eq!(answers, [RData::AAAA(AAAA("fd00:1::2".parse().unwrap()))]);
        let a = query("c2", RecordType::A).to_vec().unwrap();
        let response = decided(&only6, &a, Transport::Udp).expect("answered, not forwarded");
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert!(response.answers.is_empty());
    }

    #[test]
    fn records_saved_before_ipv6_only_networks_load() {
        let saved = r#"[{"container_id":"id1","network":"a","names":["c1"],"ip":"10.0.1.1"}]"#;
        let loaded: Vec<Record> = serde_json::from_str(saved).unwrap();
        assert_eq!(loaded, [record("id1", "a", &["c1"], [10, 0, 1, 1])]);
    }

    #[test]
    fn other_names_are_forwarded() {
        for name in ["c3", "example.com", "."] {
            let request = query(name, RecordType::A).to_vec().unwrap();
            assert!(
                decided(&records(), &request, Transport::Udp).is_none(),
                "{name}"
            );
        }
    }

    #[test]
    fn large_answers_are_truncated_over_udp_only() {
        let many: Vec<Record> = (0..100)
            .map(|i| record(&format!("id{i}"), "a", &["svc"], [10, 0, 3, i]))
            .chain([record("id1", "a", &["c1"], [10, 0, 1, 1])])
            .collect();
        let request = query("svc", RecordType::A).to_vec().unwrap();
        let udp = decided(&many, &request, Transport::Udp).unwrap();
        assert!(udp.metadata.truncation);
        assert!(udp.answers.is_empty());
        let tcp = decided(&many, &request, Transport::Tcp).unwrap();
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 100);
    }

    #[test]
    fn bad_messages_get_formerr_or_nothing() {
        let records = records();
        // Not even a header.
        assert!(matches!(
            decide(&records, "id1", b"\x01\x02\x03", Transport::Udp),
            Action::Ignore
        ));
        // A header announcing a question that is not there.
        let truncated = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00";
        let response = decided(&records, truncated, Transport::Udp).unwrap();
        assert_eq!(response.metadata.id, 0x1234);
        assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
        // Two questions.
        let mut two = query("c2", RecordType::A);
        two.add_query(Query::query(Name::from_ascii("c1").unwrap(), RecordType::A));
        let response = decided(&records, &two.to_vec().unwrap(), Transport::Udp).unwrap();
        assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
        // Another opcode.
        let mut notify = query("c2", RecordType::SOA);
        notify.metadata.op_code = OpCode::Notify;
        let response = decided(&records, &notify.to_vec().unwrap(), Transport::Udp).unwrap();
        assert_eq!(response.metadata.response_code, ResponseCode::NotImp);
        // A response is never answered.
        let mut response = query("c2", RecordType::A);
        response.metadata.message_type = MessageType::Response;
        assert!(matches!(
            decide(&records, "id1", &response.to_vec().unwrap(), Transport::Udp),
            Action::Ignore
        ));
    }

    #[test]
    fn upstreams_come_from_nameserver_lines() {
        let text = "\
# Generated
; comment
search example.com
nameserver 192.0.2.1
nameserver   2001:db8::53   # trailing comment
nameserver 127.0.0.53
nameserver ::1
nameserver 192.0.2.1
nameserver fe80::1%7
nameserver not-an-address
nameserver
options edns0
";
        let expected: Vec<SocketAddr> = vec![
            "192.0.2.1:53".parse().unwrap(),
            "[2001:db8::53]:53".parse().unwrap(),
            "127.0.0.53:53".parse().unwrap(),
            "[::1]:53".parse().unwrap(),
            SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 7).into(),
        ];
        assert_eq!(Resolver::upstreams_from_resolv_conf(text), expected);
        assert!(Resolver::upstreams_from_resolv_conf("").is_empty());
    }
}
