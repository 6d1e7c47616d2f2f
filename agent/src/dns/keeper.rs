//! The DNS keeper: a small process that holds a duplicate of every container's DNS sockets
//! (the UDP socket and the TCP listener on 127.0.0.11:53), so that they outlive the agent.
//!
//! While no agent runs, nobody reads those sockets, but they stay bound: queries wait in the
//! UDP socket's receive buffer and connections in the listener's backlog, and the next agent
//! answers them once it takes the sockets back. Without the keeper the sockets would close
//! with the agent, and every lookup in between would fail at once (ICMP port unreachable).
//!
//! The agent starts the keeper when none answers (`bpfbridge dns-keeper`, detached in a
//! session of its own) and talks to it over a unix `SOCK_SEQPACKET` socket in its state
//! directory, one message per packet, sockets passed with `SCM_RIGHTS`:
//!
//! - `hello VERSION`: the agent's first message; the keeper answers `hello VERSION`, then
//!   `held CONTAINER_ID` with the two sockets of each container, then `end`. The keeper
//!   goes on holding them: a new agent killed during its start loses nothing.
//! - `keep CONTAINER_ID` with the UDP socket and the TCP listener: hold these (replacing
//!   what was held for that container).
//! - `release CONTAINER_ID`: close them (the container was removed).
//! - `quit`: close everything and exit (an agent that cannot speak this keeper's version).
//!
//! The keeper exits when the agent leaves and it holds nothing, and when no agent has come
//! back within its grace period (the agent was stopped for good: clients then get an
//! immediate error again rather than a query that waits). Only one agent is served at a
//! time: a newly connected one replaces the previous one.

use std::{
    collections::BTreeMap,
    fs, io,
    io::{IoSlice, IoSliceMut},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::{fs::MetadataExt as _, fs::PermissionsExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::{
        signal::{Signal, kill},
        socket::{
            AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
            SockType, UnixAddr, accept4, bind, connect, getsockopt, listen, recvmsg, sendmsg,
            socket, sockopt,
        },
        time::TimeVal,
    },
    unistd::{Pid, setsid},
};
use tracing::{info, warn};

use crate::{Error, Result};

/// The messages' version; a keeper and an agent of different versions do not exchange
/// sockets (the agent asks the keeper to quit and starts its own).
pub const PROTOCOL: u32 = 1;
/// The keeper's socket, in the agent's state directory.
pub const SOCKET_NAME: &str = "dns-keeper.sock";
/// How long the keeper waits for an agent to come back before it closes everything.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// The longest message ("release " and a container id, with room to spare).
const MAX_MESSAGE: usize = 512;
/// How long the agent waits for the keeper's answers (it answers at once unless hung).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the agent waits for a keeper it started to listen.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// One message (without the sockets it carries).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Message {
    Hello(u32),
    Held(String),
    End,
    Keep(String),
    Release(String),
    Quit,
}

impl Message {
    fn encode(&self) -> String {
        match self {
            Message::Hello(version) => format!("hello {version}"),
            Message::Held(id) => format!("held {id}"),
            Message::End => "end".into(),
            Message::Keep(id) => format!("keep {id}"),
            Message::Release(id) => format!("release {id}"),
            Message::Quit => "quit".into(),
        }
    }

    fn decode(text: &str) -> Option<Self> {
        let (verb, argument) = text.split_once(' ').unwrap_or((text, ""));
        let id = || (!argument.is_empty()).then(|| argument.to_string());
        Some(match verb {
            "hello" => Message::Hello(argument.parse().ok()?),
            "held" => Message::Held(id()?),
            "end" => Message::End,
            "keep" => Message::Keep(id()?),
            "release" => Message::Release(id()?),
            "quit" => Message::Quit,
            _ => return None,
        })
    }
}

fn send(connection: BorrowedFd, message: &Message, fds: &[RawFd]) -> nix::Result<()> {
    let text = message.encode();
    let rights = [ControlMessage::ScmRights(fds)];
    let control: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(
        connection.as_raw_fd(),
        &[IoSlice::new(text.as_bytes())],
        control,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// What one `receive` got.
enum Received {
    Message(Message, Vec<OwnedFd>),
    /// Not a message of this protocol (its sockets, if any, are closed).
    Garbled(String),
    /// The other side closed the connection.
    Closed,
}

fn receive(connection: BorrowedFd) -> nix::Result<Received> {
    let mut buf = [0u8; MAX_MESSAGE];
    let mut control = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let received = recvmsg::<()>(
        connection.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    // Taken first so that whatever happens next, every received socket gets closed.
    if let Ok(messages) = received.cmsgs() {
        for message in messages {
            if let ControlMessageOwned::ScmRights(raw) = message {
                // SAFETY: SCM_RIGHTS installed these descriptors in this process for us.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
    }
    let (len, flags) = (received.bytes, received.flags);
    if len == 0 && fds.is_empty() {
        return Ok(Received::Closed);
    }
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        return Ok(Received::Garbled("a message too long".into()));
    }
    let text = String::from_utf8_lossy(&buf[..len]).into_owned();
    Ok(match Message::decode(&text) {
        Some(message) => Received::Message(message, fds),
        None => Received::Garbled(format!("{text:?}")),
    })
}

fn seqpacket() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

fn connect_to(path: &Path) -> nix::Result<OwnedFd> {
    let connection = seqpacket()?;
    connect(connection.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(connection)
}

/// The two sockets of one container's DNS server.
pub struct HeldSockets {
    pub container_id: String,
    pub udp: OwnedFd,
    pub tcp: OwnedFd,
}

/// The agent's connection to its keeper.
pub struct Keeper {
    connection: OwnedFd,
    path: PathBuf,
}

/// How a handshake went.
enum Handshake {
    Ready(Vec<HeldSockets>),
    /// The keeper speaks another version (left by an older or newer agent).
    OtherVersion(u32),
}

impl Keeper {
    /// Connects to the keeper listening at `path`, or starts one (`program dns-keeper`) if
    /// none answers; returns the sockets it holds, for the agent to adopt.
    pub fn connect_or_start(
        path: &Path,
        program: &Path,
        grace: Duration,
    ) -> Result<(Keeper, Vec<HeldSockets>)> {
        if let Ok(connection) = connect_to(path) {
            let keeper = Keeper {
                connection,
                path: path.to_path_buf(),
            };
            match keeper.handshake() {
                Ok(Handshake::Ready(held)) => return Ok((keeper, held)),
                Ok(Handshake::OtherVersion(version)) => {
                    warn!(
                        keeper = %path.display(),
                        "the DNS keeper speaks protocol version {version}, this agent {PROTOCOL} (it was started by another build of the agent): its sockets are not adopted; replacing it"
                    );
                    keeper.retire(Message::Quit);
                }
                Err(e) => {
                    warn!(keeper = %path.display(), "the DNS keeper did not answer ({e}); replacing it");
                    keeper.retire(Message::Quit);
                }
            }
        }
        start(path, program, grace)?;
        let deadline = Instant::now() + START_TIMEOUT;
        let connection = loop {
            match connect_to(path) {
                Ok(connection) => break connection,
                Err(e) if Instant::now() > deadline => {
                    return Err(Error::sys(format!(
                        "connecting to the DNS keeper at {}",
                        path.display()
                    ))(e));
                }
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        };
        let keeper = Keeper {
            connection,
            path: path.to_path_buf(),
        };
        match keeper.handshake()? {
            Handshake::Ready(held) => Ok((keeper, held)),
            Handshake::OtherVersion(version) => Err(Error::Internal(format!(
                "the DNS keeper this agent started speaks protocol version {version}, not {PROTOCOL}"
            ))),
        }
    }

    fn handshake(&self) -> Result<Handshake> {
        let context = || format!("talking to the DNS keeper at {}", self.path.display());
        let timeout = TimeVal::new(ANSWER_TIMEOUT.as_secs() as _, 0);
        nix::sys::socket::setsockopt(&self.connection, sockopt::ReceiveTimeout, &timeout)
            .map_err(Error::sys(context()))?;
        send(self.connection.as_fd(), &Message::Hello(PROTOCOL), &[])
            .map_err(Error::sys(context()))?;
        let unexpected = |what: String| Error::Io {
            context: context(),
            source: io::Error::new(io::ErrorKind::InvalidData, what),
        };
        match receive(self.connection.as_fd()).map_err(Error::sys(context()))? {
            Received::Message(Message::Hello(version), _) if version == PROTOCOL => {}
            Received::Message(Message::Hello(version), _) => {
                return Ok(Handshake::OtherVersion(version));
            }
            Received::Message(other, _) => {
                return Err(unexpected(format!("answered {:?}", other.encode())));
            }
            Received::Garbled(what) => return Err(unexpected(format!("answered {what}"))),
            Received::Closed => return Err(unexpected("closed the connection".into())),
        }
        let mut held = Vec::new();
        loop {
            match receive(self.connection.as_fd()).map_err(Error::sys(context()))? {
                Received::Message(Message::Held(container_id), fds) => {
                    match <[OwnedFd; 2]>::try_from(fds) {
                        Ok([udp, tcp]) => held.push(HeldSockets {
                            container_id,
                            udp,
                            tcp,
                        }),
                        Err(fds) => warn!(
                            container_id,
                            "the DNS keeper handed over {} sockets instead of 2; ignoring them",
                            fds.len()
                        ),
                    }
                }
                Received::Message(Message::End, _) => return Ok(Handshake::Ready(held)),
                Received::Message(other, _) => {
                    return Err(unexpected(format!("answered {:?}", other.encode())));
                }
                Received::Garbled(what) => return Err(unexpected(format!("answered {what}"))),
                Received::Closed => return Err(unexpected("closed the connection".into())),
            }
        }
    }

    /// Asks a keeper this agent will not use to quit, kills it if it does not within the
    /// answer timeout (it may be hung), and waits until it no longer listens: its sockets
    /// must be closed before new ones are bound at the same addresses.
    fn retire(self, message: Message) {
        let pid = getsockopt(&self.connection, sockopt::PeerCredentials)
            .ok()
            .map(|credentials| Pid::from_raw(credentials.pid()));
        let _ = send(self.connection.as_fd(), &message, &[]);
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        while connect_to(&self.path).is_ok() {
            if Instant::now() > deadline {
                if let Some(pid) = pid {
                    warn!(%pid, "the DNS keeper did not quit; killing it");
                    let _ = kill(pid, Signal::SIGKILL);
                }
                let until = Instant::now() + ANSWER_TIMEOUT;
                while pid.is_some_and(|pid| kill(pid, None).is_ok()) && Instant::now() < until {
                    thread::sleep(Duration::from_millis(10));
                }
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Hands the keeper a duplicate of a container's sockets.
    pub fn keep(&self, container_id: &str, udp: BorrowedFd, tcp: BorrowedFd) -> Result<()> {
        send(
            self.connection.as_fd(),
            &Message::Keep(container_id.into()),
            &[udp.as_raw_fd(), tcp.as_raw_fd()],
        )
        .map_err(Error::sys(format!(
            "handing the DNS sockets of {container_id} to the keeper"
        )))
    }

    /// Tells the keeper to close a container's sockets.
    pub fn release(&self, container_id: &str) -> Result<()> {
        send(
            self.connection.as_fd(),
            &Message::Release(container_id.into()),
            &[],
        )
        .map_err(Error::sys(format!(
            "telling the DNS keeper to close the sockets of {container_id}"
        )))
    }
}

/// Starts a keeper (`program dns-keeper`) detached from the agent: a session of its own, so
/// that a signal to the agent's process group or terminal does not reach it; its log goes
/// where the agent's goes.
fn start(path: &Path, program: &Path, grace: Duration) -> Result<()> {
    let mut command = Command::new(program);
    command
        .arg("dns-keeper")
        .arg("--listen")
        .arg(path)
        .arg("--grace-seconds")
        .arg(grace.as_secs().to_string())
        .stdin(Stdio::null());
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| setsid().map(drop).map_err(io::Error::from));
    }
    let mut child = command.spawn().map_err(Error::io(format!(
        "starting the DNS keeper ({} dns-keeper)",
        program.display()
    )))?;
    info!(pid = child.id(), keeper = %path.display(), "started a DNS keeper");
    // Reaped by a thread of ours should it exit while this agent runs; once the agent is
    // gone, init reaps it.
    thread::Builder::new()
        .name("dns-keeper-reaper".into())
        .spawn(move || {
            let _ = child.wait();
        })
        .map_err(Error::io("spawning the DNS keeper's reaper thread"))?;
    Ok(())
}

/// The keeper's listening socket, and the inode of its path (removed on exit only if it is
/// still ours).
struct Listener {
    socket: OwnedFd,
    path: PathBuf,
    inode: u64,
}

impl Listener {
    fn bind(path: &Path) -> Result<Option<Listener>> {
        let context = || format!("listening at {}", path.display());
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        }
        let socket = seqpacket().map_err(Error::sys(context()))?;
        let address = UnixAddr::new(path).map_err(Error::sys(context()))?;
        match bind(socket.as_raw_fd(), &address) {
            Ok(()) => {}
            Err(Errno::EADDRINUSE) => {
                if connect_to(path).is_ok() {
                    // Another keeper answers there (two agents starting at once).
                    return Ok(None);
                }
                fs::remove_file(path).map_err(Error::io(format!(
                    "removing the stale socket {}",
                    path.display()
                )))?;
                bind(socket.as_raw_fd(), &address).map_err(Error::sys(context()))?;
            }
            Err(e) => return Err(Error::sys(context())(e)),
        }
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(Error::io(context()))?;
        listen(&socket, Backlog::new(8).map_err(Error::sys(context()))?)
            .map_err(Error::sys(context()))?;
        let inode = fs::metadata(path).map_err(Error::io(context()))?.ino();
        Ok(Some(Listener {
            socket,
            path: path.to_path_buf(),
            inode,
        }))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Waits until one of `fds` is readable (or closed), or `timeout` passes; which are.
fn wait(fds: &[BorrowedFd], timeout: Option<Duration>) -> Vec<bool> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let timeout = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    // SAFETY: `polled` is a valid array of `polled.len()` pollfd structures for the call.
    let ready = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, timeout) };
    // On a timeout or EINTR, none: the caller looks at the clock and waits again.
    polled
        .iter()
        .map(|fd| ready > 0 && fd.revents != 0)
        .collect()
}

/// The keeper process (`bpfbridge dns-keeper`): serves agents at `path` until it has
/// nothing left to keep, or no agent came back within `grace`.
pub fn run(path: &Path, grace: Duration) -> Result<()> {
    // Named in `ps` and `top` for what it is, not after the `/proc/self/exe` it was started
    // as.
    if let Err(e) = nix::sys::prctl::set_name(c"bpfbridge-dns") {
        warn!("naming the DNS keeper's process: {e}");
    }
    let Some(listener) = Listener::bind(path)? else {
        info!(keeper = %path.display(), "another DNS keeper is listening there; exiting");
        return Ok(());
    };
    info!(keeper = %path.display(), pid = std::process::id(), "DNS keeper listening");
    let mut held: BTreeMap<String, [OwnedFd; 2]> = BTreeMap::new();
    // The agent: the last connection that said hello.
    let mut agent: Option<OwnedFd> = None;
    // Connections that have not said hello yet (a keeper starting beside this one checks
    // whether this one answers, say): they count as agents only once they do.
    let mut newcomers: Vec<OwnedFd> = Vec::new();
    let mut alone_since = Instant::now();
    let mut served_an_agent = false;
    loop {
        if agent.is_none() && newcomers.is_empty() && held.is_empty() && served_an_agent {
            info!("the agent left and no DNS socket is held; exiting");
            return Ok(());
        }
        if agent.is_none() && alone_since.elapsed() >= grace {
            if !held.is_empty() {
                info!(
                    containers = held.len(),
                    "no agent came back within {} s: closing the DNS sockets and exiting",
                    grace.as_secs()
                );
            }
            return Ok(());
        }
        let timeout = agent
            .is_none()
            .then(|| grace.saturating_sub(alone_since.elapsed()));
        let mut fds = vec![listener.socket.as_fd()];
        fds.extend(agent.as_ref().map(|a| a.as_fd()));
        fds.extend(newcomers.iter().map(|n| n.as_fd()));
        let ready = wait(&fds, timeout);
        let (new_connection, rest) = ready.split_first().unwrap_or((&false, &[]));
        let (agent_ready, newcomers_ready) = match agent {
            Some(_) => rest.split_first().map_or((false, rest), |(a, n)| (*a, n)),
            None => (false, rest),
        };
        let after = match (&agent, agent_ready) {
            (Some(connection), true) => serve_message(connection.as_fd(), &mut held, false),
            _ => After::Continue,
        };
        if after == After::Quit {
            return Ok(());
        }
        if after == After::Closed {
            agent = None;
            alone_since = Instant::now();
            info!(
                containers = held.len(),
                "the agent left; holding its DNS sockets for the next one (up to {} s)",
                grace.as_secs()
            );
        }
        let spoke: Vec<usize> = (0..newcomers_ready.len())
            .filter(|&i| newcomers_ready[i])
            .collect();
        for index in spoke.into_iter().rev() {
            let connection = newcomers.swap_remove(index);
            // What the current agent sent before it died (or before this one came) counts:
            // handled before this one is answered.
            if drain(&mut agent, &mut held) == After::Quit {
                return Ok(());
            }
            match serve_message(connection.as_fd(), &mut held, true) {
                After::Quit => return Ok(()),
                After::Closed => {}
                After::Continue => {
                    served_an_agent = true;
                    if agent.replace(connection).is_some() {
                        info!("a new agent connected; closing the previous agent's connection");
                    }
                }
            }
        }
        if *new_connection {
            match accept4(listener.socket.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 returned a new descriptor that nothing else owns.
                Ok(fd) => newcomers.push(unsafe { OwnedFd::from_raw_fd(fd) }),
                Err(e) => warn!("accepting an agent's connection: {e}"),
            }
        }
    }
}

/// Handles the messages waiting on the agent's connection; forgets it once closed.
fn drain(agent: &mut Option<OwnedFd>, held: &mut BTreeMap<String, [OwnedFd; 2]>) -> After {
    while let Some(connection) = agent {
        if !wait(&[connection.as_fd()], Some(Duration::ZERO))[0] {
            break;
        }
        match serve_message(connection.as_fd(), held, false) {
            After::Continue => {}
            After::Closed => *agent = None,
            After::Quit => return After::Quit,
        }
    }
    After::Continue
}

/// What the keeper does after a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum After {
    Continue,
    /// The agent's connection is over.
    Closed,
    /// Exit, closing everything.
    Quit,
}

/// Handles one message from the agent, or (`newcomer`) from a connection that has not said
/// hello yet, which must.
fn serve_message(
    connection: BorrowedFd,
    held: &mut BTreeMap<String, [OwnedFd; 2]>,
    newcomer: bool,
) -> After {
    let (message, fds) = match receive(connection) {
        Ok(Received::Message(message, _)) if newcomer && !matches!(message, Message::Hello(_)) => {
            warn!(
                "a connection began with {:?} instead of hello; closing it",
                message.encode()
            );
            return After::Closed;
        }
        Ok(Received::Message(message, fds)) => (message, fds),
        Ok(Received::Closed) => return After::Closed,
        Ok(Received::Garbled(what)) => {
            warn!("the agent sent {what}, which is not a keeper message; ignoring it");
            return After::Continue;
        }
        Err(e) => {
            warn!("reading from the agent: {e}; dropping its connection");
            return After::Closed;
        }
    };
    match message {
        Message::Hello(version) => {
            let answered = send(connection, &Message::Hello(PROTOCOL), &[]);
            if version != PROTOCOL {
                warn!(
                    "an agent speaking protocol version {version} connected, this keeper speaks {PROTOCOL}"
                );
                return if answered.is_ok() {
                    After::Continue
                } else {
                    After::Closed
                };
            }
            let handed = held.iter().try_for_each(|(id, [udp, tcp])| {
                send(
                    connection,
                    &Message::Held(id.clone()),
                    &[udp.as_raw_fd(), tcp.as_raw_fd()],
                )
            });
            let ended = answered
                .and(handed)
                .and_then(|()| send(connection, &Message::End, &[]));
            if let Err(e) = ended {
                warn!("handing the DNS sockets to the agent: {e}; dropping its connection");
                return After::Closed;
            }
        }
        Message::Keep(container_id) => match <[OwnedFd; 2]>::try_from(fds) {
            Ok(sockets) => {
                held.insert(container_id, sockets);
            }
            Err(fds) => warn!(
                container_id,
                "the agent handed {} sockets instead of 2; ignoring them",
                fds.len()
            ),
        },
        Message::Release(container_id) => {
            held.remove(&container_id);
        }
        Message::Quit => {
            info!(
                containers = held.len(),
                "the agent asked this keeper to quit: closing its DNS sockets"
            );
            return After::Quit;
        }
        Message::Held(_) | Message::End => {
            warn!(
                "the agent sent {:?}, which only a keeper sends",
                message.encode()
            );
        }
    }
    After::Continue
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener, UdpSocket};

    use super::*;

    /// A keeper in a thread, at a fresh path; `connect_or_start` finds it there and never
    /// starts a process (the program it would start does not exist).
    fn keeper_thread(dir: &Path, grace: Duration) -> (PathBuf, thread::JoinHandle<Result<()>>) {
        let path = dir.join(SOCKET_NAME);
        let listening = path.clone();
        let thread = thread::spawn(move || run(&listening, grace));
        let deadline = Instant::now() + START_TIMEOUT;
        while connect_to(&path).is_err() {
            assert!(Instant::now() < deadline, "the keeper does not listen");
            thread::sleep(Duration::from_millis(5));
        }
        (path, thread)
    }

    fn connect(path: &Path) -> (Keeper, Vec<HeldSockets>) {
        Keeper::connect_or_start(path, Path::new("/nonexistent"), DEFAULT_GRACE).unwrap()
    }

    fn local_port(fd: &OwnedFd) -> u16 {
        let address: nix::sys::socket::SockaddrIn =
            nix::sys::socket::getsockname(fd.as_raw_fd()).unwrap();
        address.port()
    }

    #[test]
    fn sockets_are_held_across_agents_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let (path, keeper) = keeper_thread(dir.path(), DEFAULT_GRACE);
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let ports = (
            udp.local_addr().unwrap().port(),
            tcp.local_addr().unwrap().port(),
        );
        {
            let (agent, held) = connect(&path);
            assert!(held.is_empty());
            agent.keep("c1", udp.as_fd(), tcp.as_fd()).unwrap();
            agent.keep("c2", udp.as_fd(), tcp.as_fd()).unwrap();
            agent.release("c2").unwrap();
        }
        // The agent is gone, and so are its sockets: the keeper's duplicates remain.
        drop((udp, tcp));
        let (agent, held) = connect(&path);
        let [held] = <[HeldSockets; 1]>::try_from(held).ok().unwrap();
        assert_eq!(held.container_id, "c1");
        assert_eq!((local_port(&held.udp), local_port(&held.tcp)), ports);
        // Still held after the handover: a new agent killed at once loses nothing.
        drop(agent);
        let (agent, held) = connect(&path);
        assert_eq!(held.len(), 1);
        // Released, then left: nothing to keep, so the keeper exits.
        agent.release("c1").unwrap();
        drop(agent);
        keeper.join().unwrap().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn a_keeper_without_agent_gives_up_after_its_grace() {
        let dir = tempfile::tempdir().unwrap();
        let (path, keeper) = keeper_thread(dir.path(), Duration::from_millis(300));
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let (agent, _) = connect(&path);
        agent.keep("c1", udp.as_fd(), tcp.as_fd()).unwrap();
        drop(agent);
        let started = Instant::now();
        keeper.join().unwrap().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(250));
    }

    #[test]
    fn an_agent_of_another_version_makes_the_keeper_quit() {
        let dir = tempfile::tempdir().unwrap();
        let (path, keeper) = keeper_thread(dir.path(), DEFAULT_GRACE);
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let (agent, _) = connect(&path);
        agent.keep("c1", udp.as_fd(), tcp.as_fd()).unwrap();
        drop(agent);
        // What a newer agent does on meeting this keeper.
        let connection = connect_to(&path).unwrap();
        send(connection.as_fd(), &Message::Hello(PROTOCOL + 1), &[]).unwrap();
        assert!(matches!(
            receive(connection.as_fd()).unwrap(),
            Received::Message(Message::Hello(PROTOCOL), _)
        ));
        send(connection.as_fd(), &Message::Quit, &[]).unwrap();
        keeper.join().unwrap().unwrap();
    }

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        for message in [
            Message::Hello(PROTOCOL),
            Message::Held("abc".into()),
            Message::End,
            Message::Keep("abc".into()),
            Message::Release("abc".into()),
            Message::Quit,
        ] {
            assert_eq!(Message::decode(&message.encode()), Some(message));
        }
        for garbage in ["", "hello", "hello x", "keep", "keep ", "held", "bye"] {
            assert_eq!(Message::decode(garbage), None, "{garbage:?}");
        }
    }
}
