//! Address management for one network: the gateway, network and broadcast addresses (for
//! IPv6, the subnet-router anycast and the last address) are never handed out, nor is an
//! address in use; allocation continues after the last one handed out (like Docker), so a
//! just-released address is not reused at once.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::{Error, Result, config::AddressPool};

/// Every IPv4 subnet the pools offer, in order: each IPv4 pool's base split into `/size`
/// blocks.
pub fn pool_candidates(pools: &[AddressPool]) -> impl Iterator<Item = Ipv4Net> + '_ {
    pools.iter().flat_map(|pool| match pool.base {
        IpNet::V4(base) => base.subnets(pool.size).into_iter().flatten().collect(),
        IpNet::V6(_) => Vec::new(),
    })
}

/// The IPv6 pools among `pools`, or else the automatic unique local one of `ula_global_id`
/// (Docker 27's: a /48 split into /64s).
pub fn ipv6_pools(pools: &[AddressPool], ula_global_id: u64) -> Vec<(Ipv6Net, u8)> {
    let given: Vec<(Ipv6Net, u8)> = pools
        .iter()
        .filter_map(|pool| match pool.base {
            IpNet::V6(base) => Some((base, pool.size)),
            IpNet::V4(_) => None,
        })
        .collect();
    match given.is_empty() {
        true => match AddressPool::ula(ula_global_id).base {
            IpNet::V6(base) => vec![(base, 64)],
            IpNet::V4(_) => unreachable!("a ULA pool is IPv6"),
        },
        false => given,
    }
}

/// Whether two IPv6 subnets share any address.
pub fn overlaps_v6(a: &Ipv6Net, b: &Ipv6Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first subnet of `pools` (see [`ipv6_pools`]) that overlaps none of `taken`.
pub fn first_free_subnet_v6(pools: &[(Ipv6Net, u8)], taken: &[Ipv6Net]) -> Option<Ipv6Net> {
    pools.iter().find_map(|(base, size)| {
        base.subnets(*size).ok()?.find(|candidate| {
            !taken
                .iter()
                .any(|t| t.prefix_len() > 0 && overlaps_v6(t, candidate))
        })
    })
}

/// The IPv6 gateway Docker picks: the subnet's first address after the subnet-router
/// anycast one (`::1`).
pub fn default_gateway_v6(subnet: Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet.network()) + 1)
}

/// Parses an IPv6 subnet that must be a network address with room for containers.
pub fn parse_subnet_v6(what: &str, s: &str) -> Result<Ipv6Net> {
    let net: Ipv6Net = s
        .parse()
        .map_err(|_| Error::InvalidArgument(format!("invalid {what} {s:?}")))?;
    if net.trunc() != net {
        return Err(Error::InvalidArgument(format!(
            "invalid {what} {s}: host bits set; did you mean {}?",
            net.trunc()
        )));
    }
    if net.prefix_len() > 124 {
        return Err(Error::InvalidArgument(format!(
            "invalid {what} {s}: a /{} has no room for containers",
            net.prefix_len()
        )));
    }
    Ok(net)
}

/// [`allocate`] for IPv6: an address of `range` inside `subnet`, neither its first nor its
/// last address, nor `gateway` nor one `in_use`, starting after `last`.
pub fn allocate_v6(
    network: &str,
    subnet: Ipv6Net,
    range: Ipv6Net,
    gateway: Ipv6Addr,
    in_use: &BTreeSet<Ipv6Addr>,
    last: Option<Ipv6Addr>,
) -> Result<Ipv6Addr> {
    let first = u128::from(range.network()).max(u128::from(subnet.network()) + 1);
    // Exclusive; the subnet's last address is left out, as an IPv4 broadcast.
    let end = u128::from(range.broadcast())
        .saturating_add(1)
        .min(u128::from(subnet.broadcast()));
    if first >= end {
        return Err(Error::PoolExhausted {
            network: network.to_string(),
        });
    }
    let span = end - first;
    let start = match last.map(u128::from) {
        Some(l) if l >= first && l < end => l + 1 - first,
        _ => 0,
    };
    // Every address taken is skipped once at most: at most in_use.len() + 2 candidates.
    let tries = span.min(in_use.len() as u128 + 2);
    for step in 0..tries {
        let candidate = Ipv6Addr::from(first + (start + step) % span);
        if candidate != gateway && !in_use.contains(&candidate) {
            return Ok(candidate);
        }
    }
    Err(Error::PoolExhausted {
        network: network.to_string(),
    })
}

/// [`check_requested`] for an `--ip6`.
pub fn check_requested_v6(
    network: &str,
    subnet: Ipv6Net,
    gateway: Ipv6Addr,
    in_use: &BTreeSet<Ipv6Addr>,
    ip: Ipv6Addr,
) -> Result<()> {
    if !subnet.contains(&ip) || ip == subnet.network() {
        return Err(Error::InvalidArgument(format!(
            "IPv6 address {ip} is not a usable address of network {network} ({subnet})"
        )));
    }
    if ip == gateway || in_use.contains(&ip) {
        return Err(Error::Conflict(format!(
            "IPv6 address {ip} is already in use on network {network}"
        )));
    }
    Ok(())
}

/// Whether two subnets share any address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first pool subnet that overlaps none of `taken` (routes on the node and existing
/// networks). A default route overlaps everything but takes nothing.
pub fn first_free_subnet(pools: &[AddressPool], taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    pool_candidates(pools).find(|candidate| {
        !taken
            .iter()
            .any(|t| t.prefix_len() > 0 && overlaps(t, candidate))
    })
}

/// The gateway Docker picks: the first host address.
pub fn default_gateway(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// Allocates an address in `range` (a network's `--ip-range`, else its subnet) inside
/// `subnet`, skipping the network and broadcast addresses, `gateway` and `in_use`, starting
/// after `last`.
pub fn allocate(
    network: &str,
    subnet: Ipv4Net,
    range: Ipv4Net,
    gateway: Ipv4Addr,
    in_use: &BTreeSet<Ipv4Addr>,
    last: Option<Ipv4Addr>,
) -> Result<Ipv4Addr> {
    let first = u32::from(range.network()).max(u32::from(subnet.network()) + 1);
    let end = (u32::from(range.broadcast()) + 1).min(u32::from(subnet.broadcast())); // exclusive
    if first >= end {
        return Err(Error::PoolExhausted {
            network: network.to_string(),
        });
    }
    let span = end - first;
    let start = match last.map(u32::from) {
        Some(l) if l >= first && l < end => l + 1 - first,
        _ => 0,
    };
    for step in 0..span {
        let candidate = Ipv4Addr::from(first + (start + step) % span);
        if candidate != gateway && !in_use.contains(&candidate) {
            return Ok(candidate);
        }
    }
    Err(Error::PoolExhausted {
        network: network.to_string(),
    })
}

/// Checks that a requested `--ip` can be given.
pub fn check_requested(
    network: &str,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    in_use: &BTreeSet<Ipv4Addr>,
    ip: Ipv4Addr,
) -> Result<()> {
    if !subnet.contains(&ip) || ip == subnet.network() || ip == subnet.broadcast() {
        return Err(Error::InvalidArgument(format!(
            "IP address {ip} is not a usable address of network {network} ({subnet})"
        )));
    }
    if ip == gateway || in_use.contains(&ip) {
        return Err(Error::Conflict(format!(
            "IP address {ip} is already in use on network {network}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn picks_the_first_unrouted_pool() {
        let pools = AddressPool::docker_defaults();
        assert_eq!(first_free_subnet(&pools, &[]), Some(net("172.17.0.0/16")));
        let routed = [net("0.0.0.0/0"), net("172.17.5.0/24")];
        assert_eq!(
            first_free_subnet(&pools, &routed),
            Some(net("172.18.0.0/16"))
        );
        assert_eq!(
            first_free_subnet(&pools, &[net("172.16.0.0/12")]),
            Some(net("192.168.0.0/20"))
        );
        let all: Vec<_> = pool_candidates(&pools).collect();
        assert_eq!(all.len(), 15 + 16);
        assert_eq!(all[15], net("192.168.0.0/20"));
        assert_eq!(first_free_subnet(&pools, &all), None);
        let custom: Vec<AddressPool> = vec!["base=10.10.0.0/16,size=24".parse().unwrap()];
        assert_eq!(
            first_free_subnet(&custom, &[net("10.10.0.0/24")]),
            Some(net("10.10.1.0/24"))
        );
    }

    #[test]
    fn ip_range_and_requested_addresses() {
        let subnet = net("10.0.0.0/24");
        let gw = default_gateway(subnet);
        let used = BTreeSet::new();
        let range = net("10.0.0.128/25");
        let ip = allocate("n", subnet, range, gw, &used, None).unwrap();
        assert_eq!(ip, Ipv4Addr::new(10, 0, 0, 128));
        let last = allocate(
            "n",
            subnet,
            range,
            gw,
            &used,
            Some(Ipv4Addr::new(10, 0, 0, 253)),
        )
        .unwrap();
        assert_eq!(
            last,
            Ipv4Addr::new(10, 0, 0, 254),
            "never the broadcast address"
        );
        assert!(check_requested("n", subnet, gw, &used, Ipv4Addr::new(10, 0, 0, 9)).is_ok());
        assert!(check_requested("n", subnet, gw, &used, gw).is_err());
        assert!(check_requested("n", subnet, gw, &used, Ipv4Addr::new(10, 0, 1, 9)).is_err());
        assert!(check_requested("n", subnet, gw, &used, Ipv4Addr::new(10, 0, 0, 255)).is_err());
    }

    #[test]
    fn skips_reserved_and_used_addresses() {
        let subnet = net("10.0.0.0/29"); // .1 .. .6 usable
        let gw = default_gateway(subnet);
        assert_eq!(gw, Ipv4Addr::new(10, 0, 0, 1));
        let mut used = BTreeSet::new();
        let mut last = None;
        for expected in 2..=6 {
            let ip = allocate("n", subnet, subnet, gw, &used, last).unwrap();
            assert_eq!(ip, Ipv4Addr::new(10, 0, 0, expected));
            used.insert(ip);
            last = Some(ip);
        }
        assert!(matches!(
            allocate("n", subnet, subnet, gw, &used, last),
            Err(Error::PoolExhausted { .. })
        ));
    }

    #[test]
    fn released_address_is_not_reused_at_once() {
        let subnet = net("10.0.0.0/24");
        let gw = default_gateway(subnet);
        let mut used = BTreeSet::from([Ipv4Addr::new(10, 0, 0, 2)]);
        let second = allocate(
            "n",
            subnet,
            subnet,
            gw,
            &used,
            Some(Ipv4Addr::new(10, 0, 0, 2)),
        )
        .unwrap();
        assert_eq!(second, Ipv4Addr::new(10, 0, 0, 3));
        used.remove(&Ipv4Addr::new(10, 0, 0, 2));
        used.insert(second);
        let third = allocate("n", subnet, subnet, gw, &used, Some(second)).unwrap();
        assert_eq!(third, Ipv4Addr::new(10, 0, 0, 4));
        // Wraps around past the end, still skipping the gateway.
        let wrapped = allocate(
            "n",
            subnet,
            subnet,
            gw,
            &used,
            Some(Ipv4Addr::new(10, 0, 0, 254)),
        )
        .unwrap();
        assert_eq!(wrapped, Ipv4Addr::new(10, 0, 0, 2));
    }

    #[test]
    fn ipv6_subnets_and_addresses() {
        let v6 = |s: &str| s.parse::<Ipv6Net>().unwrap();
        let ula = ipv6_pools(&AddressPool::docker_defaults(), 0x12_3456_789a);
        assert_eq!(ula, vec![(v6("fd12:3456:789a::/48"), 64)]);
        assert_eq!(
            first_free_subnet_v6(&ula, &[v6("fd12:3456:789a::/64"), v6("::/0")]),
            Some(v6("fd12:3456:789a:1::/64"))
        );
        let given: Vec<AddressPool> = vec!["base=2001:db8::/56,size=64".parse().unwrap()];
        assert_eq!(ipv6_pools(&given, 1), vec![(v6("2001:db8::/56"), 64)]);
        let subnet = v6("2001:db8::/64");
        let gateway = default_gateway_v6(subnet);
        assert_eq!(gateway, "2001:db8::1".parse::<Ipv6Addr>().unwrap());
        let mut used = BTreeSet::new();
        let first = allocate_v6("n", subnet, subnet, gateway, &used, None).unwrap();
        assert_eq!(first, "2001:db8::2".parse::<Ipv6Addr>().unwrap());
        used.insert(first);
        let second = allocate_v6("n", subnet, subnet, gateway, &used, Some(first)).unwrap();
        assert_eq!(second, "2001:db8::3".parse::<Ipv6Addr>().unwrap());
        let small = v6("2001:db8::/126"); // ::1 gateway, ::2 the only one left
        used.insert("2001:db8::2".parse().unwrap());
        assert!(allocate_v6("n", small, small, gateway, &used, None).is_err());
        assert!(check_requested_v6("n", subnet, gateway, &used, gateway).is_err());
        assert!(
            check_requested_v6("n", subnet, gateway, &used, "2001:db8::9".parse().unwrap()).is_ok()
        );
        assert!(parse_subnet_v6("subnet", "2001:db8::1/64").is_err());
    }
}
