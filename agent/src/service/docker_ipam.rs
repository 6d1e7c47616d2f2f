//! Docker's remote IPAM driver (`--ipam-driver NAME`): bpfbridge's address pools and
//! sequential allocation hand out Docker's subnets and addresses, IPv4 and, for `--ipv6`
//! (`RequestPool` with `V6`), IPv6: a /64 of the same IPv6 pools `network create --ipv6`
//! takes one from. Pools are recorded, so that a subnet given to Docker is never given to a
//! bpfbridge network, and the reverse.
//!
//! dockerd replays `RequestPool` and the gateway's `RequestAddress` for its networks when it
//! starts, so both succeed again for what is already reserved.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;

use super::{Service, docker::parse_cidr_address, networks::parse_subnet};
use crate::{
    Error, Result, ipam,
    model::{
        IpamPoolRecord,
        docker::{
            ADDRESS_TYPE_GATEWAY, AddressSpaces, OPT_REQUEST_ADDRESS_TYPE, RequestAddressReply,
            RequestAddressRequest, RequestPoolReply, RequestPoolRequest,
        },
    },
};

pub const ADDRESS_SPACES: AddressSpaces = AddressSpaces {
    local_default_address_space: "bpfbridge-local",
    global_default_address_space: "bpfbridge-global",
};

fn pool_reply(pool: &IpamPoolRecord) -> RequestPoolReply {
    RequestPoolReply {
        pool_id: pool.pool_id.clone(),
        pool: pool.pool.to_string(),
        data: BTreeMap::new(),
    }
}

/// A subnet (`--subnet`, `--ip-range`) of the family the pool request is for.
fn parse_pool_subnet(what: &str, s: &str, v6: bool) -> Result<IpNet> {
    if v6 {
        ipam::parse_subnet_v6(what, s).map(IpNet::V6)
    } else {
        parse_subnet(what, s).map(IpNet::V4)
    }
}

/// The gateway Docker gets when it asks for one without naming it: the subnet's first
/// address after the network address, as for bpfbridge's own networks.
fn default_gateway(pool: IpNet) -> IpAddr {
    match pool {
        IpNet::V4(pool) => ipam::default_gateway(pool).into(),
        IpNet::V6(pool) => ipam::default_gateway_v6(pool).into(),
    }
}

/// Whether `ip` may be given out of `pool`: inside it, not its network address and, for
/// IPv4, not its broadcast address (IPv6 has none).
fn usable(pool: IpNet, ip: IpAddr) -> bool {
    pool.contains(&ip)
        && ip != pool.network()
        && (matches!(pool, IpNet::V6(_)) || ip != pool.broadcast())
}

/// The addresses of one family out of a pool's record.
fn of_family<T: Ord>(ips: &BTreeSet<IpAddr>, pick: impl Fn(IpAddr) -> Option<T>) -> BTreeSet<T> {
    ips.iter().copied().filter_map(pick).collect()
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    }
}

fn v6(ip: IpAddr) -> Option<Ipv6Addr> {
    match ip {
        IpAddr::V6(ip) => Some(ip),
        IpAddr::V4(_) => None,
    }
}

/// The next free address of `pool`'s range, after the last one handed out. The gateway is
/// among the allocated addresses (Docker asks for it first), so none is passed as such.
fn allocate(pool: &IpamPoolRecord) -> Result<IpAddr> {
    let range = pool.sub_pool.unwrap_or(pool.pool);
    match (pool.pool, range) {
        (IpNet::V4(subnet), IpNet::V4(range)) => ipam::allocate(
            &pool.pool_id,
            subnet,
            range,
            subnet.network(),
            &of_family(&pool.allocated, v4),
            pool.last_allocated.and_then(v4),
        )
        .map(IpAddr::V4),
        (IpNet::V6(subnet), IpNet::V6(range)) => ipam::allocate_v6(
            &pool.pool_id,
            subnet,
            range,
            subnet.network(),
            &of_family(&pool.allocated, v6),
            pool.last_allocated.and_then(v6),
        )
        .map(IpAddr::V6),
        _ => Err(Error::Internal(format!(
            "address pool {} has an ip-range of the other family",
            pool.pool_id
        ))),
    }
}

impl Service {
    fn ipam_pool(&self, pool_id: &str) -> Result<&IpamPoolRecord> {
        self.state
            .ipam_pools
            .get(pool_id)
            .ok_or_else(|| Error::NotFound(format!("address pool {pool_id} not found")))
    }

    fn save_ipam_pool(&mut self, pool: IpamPoolRecord) -> Result<()> {
        self.store.put_ipam_pool(&pool)?;
        self.state.ipam_pools.insert(pool.pool_id.clone(), pool);
        Ok(())
    }

    pub async fn ipam_request_pool(
        &mut self,
        request: RequestPoolRequest,
    ) -> Result<RequestPoolReply> {
        if let Some(option) = request.options.keys().next() {
            return Err(Error::InvalidArgument(format!(
                "IPAM option {option:?} is not supported by bpfbridge (--ipam-opt takes none)"
            )));
        }
        let sub_pool = match request.sub_pool.as_str() {
            "" => None,
            s => Some(parse_pool_subnet("ip-range", s, request.v6)?),
        };
        let pool = match request.pool.as_str() {
            "" if sub_pool.is_some() => {
                return Err(Error::InvalidArgument("--ip-range needs --subnet".into()));
            }
            "" => self.free_pool(request.v6).await?,
            s => parse_pool_subnet("subnet", s, request.v6)?,
        };
        if let Some(range) = sub_pool
            && !pool.contains(&range)
        {
            return Err(Error::InvalidArgument(format!(
                "ip-range {range} is not inside subnet {pool}"
            )));
        }
        let pool_id = pool.to_string();
        if let Some(existing) = self.state.ipam_pools.get(&pool_id) {
            // dockerd replays its pools when it starts.
            return if existing.sub_pool == sub_pool {
                Ok(pool_reply(existing))
            } else {
                Err(Error::Conflict(format!(
                    "subnet {pool} is already reserved with another ip-range"
                )))
            };
        }
        if let Some(owner) = self.owner_of_overlap(pool).await? {
            return Err(Error::Conflict(format!(
                "subnet {pool} overlaps with {owner}"
            )));
        }
        let record = IpamPoolRecord {
            pool_id,
            pool,
            sub_pool,
            allocated: Default::default(),
            last_allocated: None,
        };
        let reply = pool_reply(&record);
        self.save_ipam_pool(record)?;
        Ok(reply)
    }

    /// A pool for a request without a subnet: the first free subnet of the default address
    /// pools, or for IPv6 a free /64 of the IPv6 pools, chosen as `network create` chooses.
    async fn free_pool(&self, v6: bool) -> Result<IpNet> {
        const OWNER: &str = "(Docker IPAM)";
        if v6 {
            let taken = self.taken_subnets_v6(&[]).await?;
            return self.free_subnet_v6(OWNER, &taken).map(IpNet::V6);
        }
        let taken: Vec<_> = self
            .taken_subnets(&[])
            .await?
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        ipam::first_free_subnet(&self.settings.default_address_pools, &taken)
            .map(IpNet::V4)
            .ok_or_else(|| Error::PoolExhausted {
                network: OWNER.into(),
            })
    }

    /// What a requested pool overlaps (a network, another pool, a route or an address of
    /// the node), if anything.
    async fn owner_of_overlap(&self, pool: IpNet) -> Result<Option<String>> {
        Ok(match pool {
            IpNet::V4(pool) => self
                .taken_subnets(&[])
                .await?
                .into_iter()
                .find(|(t, _)| t.prefix_len() > 0 && ipam::overlaps(t, &pool))
                .map(|(_, owner)| owner),
            IpNet::V6(pool) => self
                .taken_subnets_v6(&[])
                .await?
                .into_iter()
                .find(|(t, _)| t.prefix_len() > 0 && ipam::overlaps_v6(t, &pool))
                .map(|(_, owner)| owner),
        })
    }

    pub fn ipam_release_pool(&mut self, pool_id: &str) -> Result<()> {
        if self.state.ipam_pools.remove(pool_id).is_some() {
            self.store.delete_ipam_pool(pool_id)?;
        }
        Ok(())
    }

    pub fn ipam_request_address(
        &mut self,
        request: RequestAddressRequest,
    ) -> Result<RequestAddressReply> {
        let mut pool = self.ipam_pool(&request.pool_id)?.clone();
        let subnet = pool.pool;
        let is_gateway = request
            .options
            .get(OPT_REQUEST_ADDRESS_TYPE)
            .map(String::as_str)
            == Some(ADDRESS_TYPE_GATEWAY);
        let wanted: Option<IpAddr> = match request.address.as_str() {
            "" => None,
            s => Some(parse_cidr_address("address", s)?),
        };
        let ip = match (wanted, is_gateway) {
            (Some(_), _) | (None, true) => {
                let ip = wanted.unwrap_or_else(|| default_gateway(subnet));
                if !usable(subnet, ip) {
                    return Err(Error::InvalidArgument(format!(
                        "IP address {ip} is not a usable address of subnet {subnet}"
                    )));
                }
                // A gateway is asked for again when dockerd starts; a container's address
                // is handed out once.
                if pool.allocated.contains(&ip) && !is_gateway {
                    return Err(Error::Conflict(format!(
                        "IP address {ip} is already in use in subnet {subnet}"
                    )));
                }
                ip
            }
            (None, false) => {
                let ip = allocate(&pool)?;
                pool.last_allocated = Some(ip);
                ip
            }
        };
        pool.allocated.insert(ip);
        self.save_ipam_pool(pool)?;
        Ok(RequestAddressReply {
            address: format!("{ip}/{}", subnet.prefix_len()),
            data: BTreeMap::new(),
        })
    }

    pub fn ipam_release_address(&mut self, pool_id: &str, address: &str) -> Result<()> {
        let ip: IpAddr = parse_cidr_address("address", address)?;
        let Some(mut pool) = self.state.ipam_pools.get(pool_id).cloned() else {
            return Ok(());
        };
        if pool.allocated.remove(&ip) {
            self.save_ipam_pool(pool)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(subnet: &str, sub_pool: Option<&str>, allocated: &[&str]) -> IpamPoolRecord {
        IpamPoolRecord {
            pool_id: subnet.into(),
            pool: subnet.parse().unwrap(),
            sub_pool: sub_pool.map(|s| s.parse().unwrap()),
            allocated: allocated.iter().map(|a| a.parse().unwrap()).collect(),
            last_allocated: None,
        }
    }

    #[test]
    fn pools_of_either_family_hand_out_addresses_after_the_gateway() {
        let v6 = pool("fd00:42::/64", None, &["fd00:42::1"]);
        assert_eq!(
            default_gateway(v6.pool),
            "fd00:42::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            allocate(&v6).unwrap(),
            "fd00:42::2".parse::<IpAddr>().unwrap()
        );
        let ranged = pool("10.43.0.0/24", Some("10.43.0.128/25"), &["10.43.0.1"]);
        assert_eq!(
            allocate(&ranged).unwrap(),
            "10.43.0.128".parse::<IpAddr>().unwrap()
        );
        let mixed = pool("10.43.0.0/24", Some("fd00:42::/64"), &[]);
        assert!(allocate(&mixed).is_err());

        let (v4_pool, v6_pool) = (ranged.pool, v6.pool);
        assert!(usable(
            v6_pool,
            "fd00:42::ffff:ffff:ffff:ffff".parse().unwrap()
        ));
        assert!(!usable(v6_pool, "fd00:42::".parse().unwrap()));
        assert!(!usable(v4_pool, "10.43.0.255".parse().unwrap()));
        assert!(!usable(v4_pool, "fd00:42::5".parse().unwrap()));
        assert!(parse_pool_subnet("subnet", "fd00:42::/64", false).is_err());
        assert!(parse_pool_subnet("subnet", "10.43.0.0/24", true).is_err());
    }

    #[test]
    fn pool_records_from_before_ipv6_pools_load() {
        let old = r#"{"pool_id":"10.43.0.0/24","pool":"10.43.0.0/24","sub_pool":null,
                      "allocated":["10.43.0.1","10.43.0.2"],"last_allocated":"10.43.0.2"}"#;
        let record: IpamPoolRecord = serde_json::from_str(old).unwrap();
        assert_eq!(record, {
            let mut expected = pool("10.43.0.0/24", None, &["10.43.0.1", "10.43.0.2"]);
            expected.last_allocated = Some("10.43.0.2".parse().unwrap());
            expected
        });
    }
}
