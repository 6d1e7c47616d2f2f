//! Docker's remote IPAM driver (`--ipam-driver NAME`): bpfbridge's address pools and
//! sequential allocation hand out Docker's subnets and addresses. Pools are recorded, so that
//! a subnet given to Docker is never given to a bpfbridge network, and the reverse.
//!
//! dockerd replays `RequestPool` and the gateway's `RequestAddress` for its networks when it
//! starts, so both succeed again for what is already reserved.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;

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
        if request.v6 {
            return Err(Error::InvalidArgument(
                "bpfbridge's IPAM driver hands out IPv4 pools only: for --ipv6, leave the IPv6 pool to Docker's default IPAM driver".into(),
            ));
        }
        if let Some(option) = request.options.keys().next() {
            return Err(Error::InvalidArgument(format!(
                "IPAM option {option:?} is not supported by bpfbridge (--ipam-opt takes none)"
            )));
        }
        let sub_pool = match request.sub_pool.as_str() {
            "" => None,
            s => Some(parse_subnet("ip-range", s)?),
        };
        let taken = self.taken_subnets(None).await?;
        let pool = match request.pool.as_str() {
            "" if sub_pool.is_some() => {
                return Err(Error::InvalidArgument("--ip-range needs --subnet".into()));
            }
            "" => {
                let taken: Vec<Ipv4Net> = taken.iter().map(|(t, _)| *t).collect();
                ipam::first_free_subnet(&self.settings.default_address_pools, &taken).ok_or_else(
                    || Error::PoolExhausted {
                        network: "(Docker IPAM)".into(),
                    },
                )?
            }
            s => parse_subnet("subnet", s)?,
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
        if let Some((_, owner)) = taken
            .iter()
            .find(|(t, _)| t.prefix_len() > 0 && ipam::overlaps(t, &pool))
        {
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
        let wanted = match request.address.as_str() {
            "" => None,
            s => Some(parse_cidr_address("address", s)?),
        };
        let ip = match (wanted, is_gateway) {
            (Some(_), _) | (None, true) => {
                let ip = wanted.unwrap_or_else(|| ipam::default_gateway(subnet));
                if !subnet.contains(&ip) || ip == subnet.network() || ip == subnet.broadcast() {
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
                let ip = ipam::allocate(
                    &pool.pool_id,
                    subnet,
                    pool.sub_pool.unwrap_or(subnet),
                    subnet.network(),
                    &pool.allocated,
                    pool.last_allocated,
                )?;
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
        let ip: Ipv4Addr = parse_cidr_address("address", address)?;
        let Some(mut pool) = self.state.ipam_pools.get(pool_id).cloned() else {
            return Ok(());
        };
        if pool.allocated.remove(&ip) {
            self.save_ipam_pool(pool)?;
        }
        Ok(())
    }
}
