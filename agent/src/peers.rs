//! Routes to the pod CIDRs of other nodes (`--peer-node CIDR=VIA`): the host-gw model that
//! Kubernetes' per-node pod CIDRs allow, where every node routes each other node's pod CIDR
//! through that node's address on the shared uplink network. On a dual-stack cluster a node
//! has a pod CIDR of each family, each routed through the node's address of that family.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use ipnet::IpNet;
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::{Error, Result};

/// Another node's pod CIDR and the address it is reached at, of the same family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerNode {
    pub cidr: IpNet,
    pub via: IpAddr,
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
        let cidr: IpNet = cidr.parse().map_err(|_| bad("not a CIDR"))?;
        if cidr.trunc() != cidr {
            return Err(bad("host bits set in the CIDR"));
        }
        let via: IpAddr = via.parse().map_err(|_| bad("not an address after `=`"))?;
        if via.is_ipv4() != matches!(cidr, IpNet::V4(_)) {
            return Err(bad("the CIDR and the address are of different families"));
        }
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
        let route = match (peer.cidr, peer.via) {
            (IpNet::V4(cidr), IpAddr::V4(via)) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(cidr.addr(), cidr.prefix_len())
                .gateway(via)
                .build(),
            (IpNet::V6(cidr), IpAddr::V6(via)) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(cidr.addr(), cidr.prefix_len())
                .gateway(via)
                .build(),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "peer node {peer}: the CIDR and the address are of different families"
                )));
            }
        };
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
        assert_eq!(peer.cidr, "10.244.2.0/24".parse::<IpNet>().unwrap());
        assert_eq!(peer.via, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 12)));
        assert_eq!(peer.to_string(), "10.244.2.0/24=192.0.2.12");
        // A dual-stack node's IPv6 pod CIDR, through its IPv6 address.
        let peer: PeerNode = "fd00:10:244:2::/64=2001:db8::12".parse().unwrap();
        assert_eq!(peer.cidr, "fd00:10:244:2::/64".parse::<IpNet>().unwrap());
        assert_eq!(peer.via, "2001:db8::12".parse::<IpAddr>().unwrap());
        assert_eq!(peer.to_string(), "fd00:10:244:2::/64=2001:db8::12");
        for bad in [
            "10.244.2.0/24",
            "10.244.2.1/24=192.0.2.12",
            "10.244.2.0/24=node2",
            "x=192.0.2.12",
            "fd00:10:244:2::1/64=2001:db8::12",
            "10.244.2.0/24=2001:db8::12",
            "fd00:10:244:2::/64=192.0.2.12",
        ] {
            assert!(bad.parse::<PeerNode>().is_err(), "{bad}");
        }
    }
}
