//! The userland proxy of the iptables dataplane, like docker-proxy: one listener per
//! published TCP port on the host address, forwarding each connection to the container.
//! It serves what the DNAT rules do not: the node's own processes through 127.0.0.1 (the
//! nat OUTPUT rule skips 127.0.0.0/8) and containers of the bridge reaching a published
//! port through the node's address (the DNAT rules carry `! -i BRIDGE`). Traffic from the
//! wire is translated in PREROUTING and never reaches the listener.
//!
//! Threads, not tasks: a listener thread per port and two copy threads per connection, all
//! ended when the port is unpublished (shutting the listening socket down wakes `accept`).

use std::{
    io,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

/// A running proxy; stopped on drop.
pub struct Proxy {
    listener: Arc<TcpListener>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    /// Listens on `listen` (in the agent's namespace) and forwards to `target`.
    pub fn start(listen: SocketAddr, target: SocketAddr) -> io::Result<Self> {
        let listener = Arc::new(crate::sockets::tcp_listener(listen)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (listener.clone(), stop.clone());
        let thread = thread::Builder::new()
            .name(format!("proxy-{}", listen.port()))
            .spawn(move || {
                while !s.load(Ordering::SeqCst) {
                    match l.accept() {
                        Ok((client, _)) => {
                            let _ = forward(client, target);
                        }
                        Err(_) if s.load(Ordering::SeqCst) => break,
                        Err(_) => thread::sleep(Duration::from_millis(10)),
                    }
                }
            })?;
        Ok(Proxy {
            listener,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: a valid socket; shutting a listening socket down makes a blocked accept
        // return (EINVAL) on Linux.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects to the container and copies both ways on two threads.
fn forward(client: TcpStream, target: SocketAddr) -> io::Result<()> {
    let server = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (c2, s2) = (client.try_clone()?, server.try_clone()?);
    thread::Builder::new().spawn(move || copy(client, server))?;
    thread::Builder::new().spawn(move || copy(s2, c2))?;
    Ok(())
}

/// Copies `from` into `to` until the end, then passes the end on.
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
