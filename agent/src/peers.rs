//! Routes to the pod CIDRs of other nodes (`--peer-node CIDR=VIA`): the host-gw model that
//! Kubernetes' per-node pod CIDRs allow, where every node routes each other node's pod CIDR
//! through that node's address on the shared uplink network.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use ipnet::Ipv4Net;
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::{Error, Result};

/// Another node's pod CIDR and the address it is reached at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerNode {
    pub cidr: Ipv4Net,
    pub via: Ipv4Addr,
}

impl FromStr for PeerNode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "invalid peer node {s:?}: {why} (expected CIDR=VIA)"
            ))
        };
        let (cidr, via) = s.split_once('=').ok_or_else(|| bad("no `=`"))?;
        let cidr: Ipv4Net = cidr.parse().map_err(|_| bad("not an IPv4 CIDR"))?;
        if cidr.trunc() != cidr {
            return Err(bad("host bits set in the CIDR"));
        }
        let via = via
            .parse()
            .map_err(|_| bad("not an IPv4 address after `=`"))?;
        Ok(PeerNode { cidr, via })
    }
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.cidr, self.via)
    }
}

serde_as_string!(PeerNode);

/// Adds (or replaces) the route to each peer's pod CIDR through its address; the kernel
/// picks the interface that reaches it.
pub async fn route_peers(h: &Handle, peers: &[PeerNode]) -> Result<()> {
    for peer in peers {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(peer.cidr.addr(), peer.cidr.prefix_len())
            .gateway(peer.via)
            .build();
        h.route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(Error::netlink(format!(
                "routing peer node {} via {}",
                peer.cidr, peer.via
            )))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_cidr_equals_address() {
        let peer: PeerNode = "10.244.2.0/24=192.0.2.12".parse().unwrap();
        assert_eq!(peer.cidr, "10.244.2.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(peer.via, Ipv4Addr::new(192, 0, 2, 12));
        assert_eq!(peer.to_string(), "10.244.2.0/24=192.0.2.12");
        for bad in [
            "10.244.2.0/24",
            "10.244.2.1/24=192.0.2.12",
            "10.244.2.0/24=node2",
            "x=192.0.2.12",
        ] {
            assert!(bad.parse::<PeerNode>().is_err(), "{bad}");
        }
    }
}
