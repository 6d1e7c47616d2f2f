//! Choosing host ports: fixed ones are checked, ranges and dynamic ones are picked; none
//! may clash with another mapping or with a socket already bound on the node.

use std::{
    collections::BTreeSet,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket},
};

use super::Service;
use crate::{
    Error, Result,
    config::PortRange,
    model::{HostPort, PortBinding, PortRequest, Proto},
};

const LAST_DYNAMIC_PORT: &str = "last-dynamic-port";

/// Whether `ip:port` can be bound on the node for `proto`: the kernel's own answer, so a
/// listening socket, or an address that is not the node's, are both caught.
fn bindable(ip: Ipv4Addr, port: u16, proto: Proto) -> Result<bool> {
    let addr = SocketAddrV4::new(ip, port);
    let result = match proto {
        Proto::Tcp => TcpListener::bind(addr).map(drop),
        Proto::Udp => UdpSocket::bind(addr).map(drop),
    };
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AddrInUse => Ok(false),
        Err(e) if e.kind() == ErrorKind::AddrNotAvailable => Err(Error::InvalidArgument(format!(
            "host IP {ip} is not an address of the node"
        ))),
        Err(e) => Err(Error::io(format!(
            "checking host port {ip}:{port}/{}",
            proto.as_str()
        ))(e)),
    }
}

impl Service {
    /// The mapping of another container that `binding` would clash with.
    fn clash(&self, binding: &PortBinding, chosen: &[PortBinding]) -> Option<String> {
        if chosen.iter().any(|c| c.overlaps(binding)) {
            return Some("this request".into());
        }
        self.state
            .containers
            .values()
            .find(|c| c.ports.iter().any(|p| p.overlaps(binding)))
            .map(|c| format!("container {}", c.name))
    }

    fn free(&self, binding: &PortBinding, chosen: &[PortBinding]) -> Result<bool> {
        Ok(self.clash(binding, chosen).is_none()
            && bindable(binding.host_ip, binding.host_port, binding.proto)?)
    }

    /// Turns requests into bindings, picking ranges' and dynamic ports. Nothing is reserved
    /// until the container record is saved.
    pub(super) fn resolve_ports(&mut self, requests: &[PortRequest]) -> Result<Vec<PortBinding>> {
        let mut chosen: Vec<PortBinding> = Vec::new();
        let PortRange {
            start: dyn_start,
            end: dyn_end,
        } = self.settings.port_range;
        let mut last_dynamic: Option<u16> = self
            .state
            .meta
            .get(LAST_DYNAMIC_PORT)
            .and_then(|p| p.parse().ok());
        for request in requests {
            let binding = |host_port| PortBinding {
                proto: request.proto,
                container_port: request.container_port,
                host_ip: request.host_ip,
                host_port,
            };
            let spec = format!(
                "{}:{}->{}/{}",
                request.host_ip,
                match request.host_port {
                    HostPort::Fixed(p) => p.to_string(),
                    HostPort::Range(a, b) => format!("{a}-{b}"),
                    HostPort::Dynamic => String::new(),
                },
                request.container_port,
                request.proto.as_str()
            );
            let picked = match request.host_port {
                HostPort::Fixed(port) => {
                    let b = binding(port);
                    if let Some(owner) = self.clash(&b, &chosen) {
                        return Err(Error::Conflict(format!(
                            "host port {}:{}/{} is already published by {owner}",
                            b.host_ip,
                            b.host_port,
                            b.proto.as_str()
                        )));
                    }
                    if !bindable(b.host_ip, port, b.proto)? {
                        return Err(Error::Conflict(format!(
                            "port mapping {spec}: host port {port}/{} is already in use on the node",
                            b.proto.as_str()
                        )));
                    }
                    b
                }
                HostPort::Range(start, end) => {
                    let mut found = None;
                    for port in start..=end {
                        if self.free(&binding(port), &chosen)? {
                            found = Some(binding(port));
                            break;
                        }
                    }
                    found.ok_or_else(|| {
                        Error::Conflict(format!(
                            "port mapping {spec}: no free host port in {start}-{end}"
                        ))
                    })?
                }
                HostPort::Dynamic => {
                    // Sequential from the last one handed out, like Docker, so a port freed
                    // by a removed container is not reused at once.
                    let span = u32::from(dyn_end - dyn_start) + 1;
                    let first = match last_dynamic {
                        Some(p) if (dyn_start..=dyn_end).contains(&p) => {
                            u32::from(p - dyn_start) + 1
                        }
                        _ => 0,
                    };
                    let mut found = None;
                    for step in 0..span {
                        let port = dyn_start + ((first + step) % span) as u16;
                        if self.free(&binding(port), &chosen)? {
                            found = Some(binding(port));
                            break;
                        }
                    }
                    let b = found.ok_or_else(|| {
                        Error::Conflict(format!(
                            "port mapping {spec}: no free host port in {dyn_start}-{dyn_end}"
                        ))
                    })?;
                    last_dynamic = Some(b.host_port);
                    b
                }
            };
            chosen.push(picked);
        }
        if let Some(port) = last_dynamic {
            self.store.put_meta(LAST_DYNAMIC_PORT, &port.to_string())?;
            self.state
                .meta
                .insert(LAST_DYNAMIC_PORT.into(), port.to_string());
        }
        let unique: BTreeSet<_> = chosen.iter().collect();
        debug_assert_eq!(unique.len(), chosen.len());
        Ok(chosen)
    }
}
