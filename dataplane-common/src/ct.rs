//! Connection tracking's key and entry types seen through one pair of traits, so that the
//! flow tables' storage and early drop (dataplane-ebpf's flowtable.rs) are written once
//! for every address family: IPv4's [`CtKey`]/[`CtEntry`] and IPv6's [`CtKey6`]/[`CtEntry6`]
//! implement them here.

use crate::{CT_ORIGINAL, CtEntry, CtEntry6, CtKey, CtKey6};

/// A tracked packet's key: its 5-tuple as it is on the wire in one direction.
pub trait TrackedKey: Copy + Eq + 'static {
    /// An address as the maps hold it (network order).
    type Addr: Copy + Eq;
    type Entry: TrackedEntry<Addr = Self::Addr>;

    fn new(src: Self::Addr, dst: Self::Addr, sport_be: u16, dport_be: u16, proto: u8) -> Self;
    fn src(&self) -> Self::Addr;
    fn dst(&self) -> Self::Addr;
    fn sport_be(&self) -> u16;
    fn dport_be(&self) -> u16;
    fn proto(&self) -> u8;

    /// The key of the other direction's entry of the flow `entry` (at `self`) belongs to.
    /// An original entry's `nat` is the source the flow leaves with, a reply entry's is the
    /// original source, so either entry alone names its peer.
    #[inline(always)]
    fn peer(&self, entry: &Self::Entry) -> Self {
        if entry.direction() == CT_ORIGINAL {
            Self::new(
                self.dst(),
                entry.nat_ip(),
                self.dport_be(),
                entry.nat_port_be(),
                self.proto(),
            )
        } else {
            Self::new(
                entry.nat_ip(),
                self.src(),
                entry.nat_port_be(),
                self.sport_be(),
                self.proto(),
            )
        }
    }
}

/// A tracking entry: how its direction is translated, and the flow's state.
pub trait TrackedEntry: Copy + 'static {
    type Addr: Copy + Eq;

    /// The address and port that replace the source ([`CT_ORIGINAL`]) or the destination
    /// ([`crate::CT_REPLY`]).
    fn nat_ip(&self) -> Self::Addr;
    fn nat_port_be(&self) -> u16;
    fn direction(&self) -> u8;
    /// A `CT_*` state, the same in both entries of a flow.
    fn state(&self) -> u8;
    fn set_state(&mut self, state: u8);
    /// Records that a packet of this direction was seen at `ns` (`bpf_ktime_get_ns`).
    fn set_last_seen(&mut self, ns: u64);
}

impl TrackedKey for CtKey {
    type Addr = u32;
    type Entry = CtEntry;

    #[inline(always)]
    fn new(src: u32, dst: u32, sport_be: u16, dport_be: u16, proto: u8) -> Self {
        CtKey {
            src_ip_be: src,
            dst_ip_be: dst,
            sport_be,
            dport_be,
            proto,
            _pad: [0; 3],
        }
    }
    #[inline(always)]
    fn src(&self) -> u32 {
        self.src_ip_be
    }
    #[inline(always)]
    fn dst(&self) -> u32 {
        self.dst_ip_be
    }
    #[inline(always)]
    fn sport_be(&self) -> u16 {
        self.sport_be
    }
    #[inline(always)]
    fn dport_be(&self) -> u16 {
        self.dport_be
    }
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
}

impl TrackedEntry for CtEntry {
    type Addr = u32;

    #[inline(always)]
    fn nat_ip(&self) -> u32 {
        self.nat_ip_be
    }
    #[inline(always)]
    fn nat_port_be(&self) -> u16 {
        self.nat_port_be
    }
    #[inline(always)]
    fn direction(&self) -> u8 {
        self.direction
    }
    #[inline(always)]
    fn state(&self) -> u8 {
        self.state
    }
    #[inline(always)]
    fn set_state(&mut self, state: u8) {
        self.state = state;
    }
    #[inline(always)]
    fn set_last_seen(&mut self, ns: u64) {
        self.last_seen_ns = ns;
    }
}

impl TrackedKey for CtKey6 {
    type Addr = [u8; 16];
    type Entry = CtEntry6;

    #[inline(always)]
    fn new(src: [u8; 16], dst: [u8; 16], sport_be: u16, dport_be: u16, proto: u8) -> Self {
        CtKey6 {
            src_ip: src,
            dst_ip: dst,
            sport_be,
            dport_be,
            proto,
            _pad: [0; 3],
        }
    }
    #[inline(always)]
    fn src(&self) -> [u8; 16] {
        self.src_ip
    }
    #[inline(always)]
    fn dst(&self) -> [u8; 16] {
        self.dst_ip
    }
    #[inline(always)]
    fn sport_be(&self) -> u16 {
        self.sport_be
    }
    #[inline(always)]
    fn dport_be(&self) -> u16 {
        self.dport_be
    }
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
}

impl TrackedEntry for CtEntry6 {
    type Addr = [u8; 16];

    #[inline(always)]
    fn nat_ip(&self) -> [u8; 16] {
        self.nat_ip
    }
    #[inline(always)]
    fn nat_port_be(&self) -> u16 {
        self.nat_port_be
    }
    #[inline(always)]
    fn direction(&self) -> u8 {
        self.direction
    }
    #[inline(always)]
    fn state(&self) -> u8 {
        self.state
    }
    #[inline(always)]
    fn set_state(&mut self, state: u8) {
        self.state = state;
    }
    #[inline(always)]
    fn set_last_seen(&mut self, ns: u64) {
        self.last_seen_ns = ns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CT_REPLY, IPPROTO_TCP};

    #[test]
    fn either_entry_of_a_flow_names_the_other() {
        let (container, world, node) = (0x0a00_0002, 0xc633_6402, 0xc633_6401);
        let original_key = CtKey::new(
            container,
            world,
            5000u16.to_be(),
            443u16.to_be(),
            IPPROTO_TCP,
        );
        let original = CtEntry {
            nat_ip_be: node,
            nat_port_be: 6000u16.to_be(),
            direction: CT_ORIGINAL,
            ..CtEntry::default()
        };
        let reply_key = original_key.peer(&original);
        assert_eq!(
            reply_key,
            CtKey::new(world, node, 443u16.to_be(), 6000u16.to_be(), IPPROTO_TCP)
        );
        let reply = CtEntry {
            nat_ip_be: container,
            nat_port_be: 5000u16.to_be(),
            direction: CT_REPLY,
            ..CtEntry::default()
        };
        assert_eq!(reply_key.peer(&reply), original_key);
    }

    #[test]
    fn either_entry_of_an_ipv6_flow_names_the_other() {
        let (container, world, node) = ([0xfd; 16], [0x20; 16], [0x21; 16]);
        let original_key = CtKey6::new(
            container,
            world,
            5000u16.to_be(),
            443u16.to_be(),
            IPPROTO_TCP,
        );
        let original = CtEntry6 {
            nat_ip: node,
            nat_port_be: 6000u16.to_be(),
            direction: CT_ORIGINAL,
            ..CtEntry6::default()
        };
        let reply_key = original_key.peer(&original);
        assert_eq!(
            reply_key,
            CtKey6::new(world, node, 443u16.to_be(), 6000u16.to_be(), IPPROTO_TCP)
        );
        let reply = CtEntry6 {
            nat_ip: container,
            nat_port_be: 5000u16.to_be(),
            direction: CT_REPLY,
            ..CtEntry6::default()
        };
        assert_eq!(reply_key.peer(&reply), original_key);
    }
}
