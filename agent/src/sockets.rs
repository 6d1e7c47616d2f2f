//! Sockets bound to one address family only. An IPv6 socket on `::` also takes the IPv4
//! port unless `IPV6_V6ONLY` is set (Linux's `bindv6only` is 0 by default), so a port
//! published on `0.0.0.0` and on `::` would clash with itself: each family is bound apart,
//! as docker-proxy binds them.

use std::{
    io,
    net::{SocketAddr, TcpListener, UdpSocket},
    os::fd::OwnedFd,
};

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt, socket,
    sockopt,
};

fn bound(addr: SocketAddr, kind: SockType) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(family, kind, SockFlag::SOCK_CLOEXEC, None)?;
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    if kind == SockType::Stream {
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    Ok(fd)
}

/// A TCP listener on `addr`, of its family only.
pub fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let fd = bound(addr, SockType::Stream)?;
    listen(&fd, Backlog::new(128).expect("a valid backlog"))?;
    Ok(TcpListener::from(fd))
}

/// A UDP socket on `addr`, of its family only.
pub fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    Ok(UdpSocket::from(bound(addr, SockType::Datagram)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_binds_its_own_port() {
        let v4 = tcp_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = v4.local_addr().unwrap().port();
        // Without IPV6_V6ONLY, [::]:port would clash with 0.0.0.0:port's family.
        let v6 = tcp_listener(SocketAddr::new("::".parse().unwrap(), port));
        if let Err(e) = &v6 {
            // A kernel without IPv6 in this namespace.
            assert_eq!(e.kind(), io::ErrorKind::AddrNotAvailable, "{e}");
        }
        assert!(udp_socket("127.0.0.1:0".parse().unwrap()).is_ok());
    }
}
