//! Host ports: what is free on the node (the kernel's answer and the recorded mappings) for
//! [`PortSpace::plan`] to choose from, and recording what a plan chose.

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr},
};

use super::{
    Service,
    plan::{PortPlan, PortSpace},
};
use crate::{
    Error, Result,
    model::{PortRequest, Proto},
};

const LAST_DYNAMIC_PORT: &str = "last-dynamic-port";

/// Whether `ip:port` can be bound on the node for `proto`: the kernel's own answer, so a
/// listening socket, or an address that is not the node's, are both caught.
fn bindable(ip: IpAddr, port: u16, proto: Proto) -> Result<bool> {
    let addr = SocketAddr::new(ip, port);
    let result = match proto {
        Proto::Tcp => crate::sockets::tcp_listener(addr).map(drop),
        Proto::Udp => crate::sockets::udp_socket(addr).map(drop),
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
    /// Plans host ports for `requests` against what is published and bound now. Nothing is
    /// reserved until the plan is applied with the container record
    /// ([`Self::record_port_plan`]).
    pub(super) fn plan_ports(&self, requests: &[PortRequest]) -> Result<PortPlan> {
        let space = PortSpace {
            published: self
                .state
                .containers
                .values()
                .flat_map(|c| c.ports.iter().map(|p| (c.name.as_str(), *p)))
                .collect(),
            dynamic: self.settings.port_range,
            last_dynamic: self
                .state
                .meta
                .get(LAST_DYNAMIC_PORT)
                .and_then(|p| p.parse().ok()),
            bindable,
        };
        space.plan(requests)
    }

    /// Records where the plan left the dynamic-port cursor, so the next plan goes on from it.
    pub(super) fn record_port_plan(&mut self, plan: &PortPlan) -> Result<()> {
        if let Some(port) = plan.last_dynamic {
            self.store.put_meta(LAST_DYNAMIC_PORT, &port.to_string())?;
            self.state
                .meta
                .insert(LAST_DYNAMIC_PORT.into(), port.to_string());
        }
        Ok(())
    }
}
