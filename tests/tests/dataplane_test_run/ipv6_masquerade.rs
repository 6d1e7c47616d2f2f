//! IPv6 masquerade through the packet programs: a container's TCP and UDP to the outside
//! of a masquerading network leave with the node's IPv6 address (`container_masquerade6`,
//! by tail call from `container_ingress6`), their replies come back to the container's
//! veth on the uplink (`uplink_masquerade6` and its TC twins, by tail call from the
//! uplinks' IPv6 programs), and what is no flow of theirs is refused or passes as before.

use std::net::Ipv6Addr;

use aya::maps::ProgramArray;
use dataplane_common::{
    CONNTRACK6, CONTAINER6_MASQUERADE_SLOT, CONTAINER6_PROGRAMS, CtEntry6, CtKey6,
    MASQUERADE_SOURCES6, NETWORKS6, NetworkKey6,
};

use super::{
    ipv6::{CONTAINER_IP6, NODE_IP6, Packet6, View6, WORLD_IP6, forwarding_namespace6},
    *,
};

impl Fixture {
    /// fd00::/64, masquerading, and up0's IPv6 source (in the forwarding namespace, this
    /// thread's) as the agent writes it.
    fn masquerading6(&mut self) -> Result<()> {
        let mut trie: LpmTrie<&mut MapData, NetworkKey6, NetworkInfo> =
            LpmTrie::try_from(self.ebpf.map_mut(NETWORKS6).unwrap())?;
        let subnet: Ipv6Addr = "fd00::".parse()?;
        let info = NetworkInfo {
            index: 1,
            flags: NETWORK_ICC | NETWORK_MASQUERADE,
        };
        let addr = subnet.octets();
        trie.insert(&Key::new(64, NetworkKey6 { addr }), info, 0)?;
        Ok(())
    }

    fn masquerade6_via_up0(&mut self) -> Result<()> {
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(c"up0".as_ptr()) };
        anyhow::ensure!(index != 0, "no up0 here");
        let mut sources: HashMap<&mut MapData, u32, [u8; 16]> =
            HashMap::try_from(self.ebpf.map_mut(MASQUERADE_SOURCES6).unwrap())?;
        sources.insert(index, NODE_IP6.octets(), 0)?;
        Ok(())
    }

    fn conntrack6(&self) -> Result<Vec<(CtKey6, CtEntry6)>> {
        let table: HashMap<&MapData, CtKey6, CtEntry6> =
            HashMap::try_from(self.ebpf.map(CONNTRACK6).unwrap())?;
        Ok(table.iter().collect::<Result<_, _>>()?)
    }
}

/// A container's packet as its veth hands it over.
fn sent6(packet: Packet6) -> Vec<u8> {
    Packet6 {
        src_mac: CONTAINER_MAC,
        dst_mac: HOST_VETH_MAC,
        ..packet
    }
    .build()
}

fn opening(protocol: u8, sport: u16) -> Packet6 {
    match protocol {
        IPPROTO_TCP => Packet6::tcp(CONTAINER_IP6, sport, WORLD_IP6, 443, SYN),
        _ => Packet6::udp(CONTAINER_IP6, sport, WORLD_IP6, 53, 12),
    }
}

fn answer(protocol: u8, dport: u16) -> Vec<u8> {
    match protocol {
        IPPROTO_TCP => Packet6::tcp(WORLD_IP6, 443, NODE_IP6, dport, SYN_ACK),
        _ => Packet6::udp(WORLD_IP6, 53, NODE_IP6, dport, 30),
    }
    .build()
}

/// Out from the node's address (the container's port kept when free), back to the
/// container's veth on each uplink hook, the flow answered in CONNTRACK6.
#[test]
fn ipv6_masquerade_out_and_replies_in() -> Result<()> {
    let ns = forwarding_namespace6()?;
    ns.run(|| -> Result<()> {
        let mut fx = Fixture::new()?;
        fx.masquerading6()?;
        fx.masquerade6_via_up0()?;
        for (protocol, sport) in [(IPPROTO_TCP, 5000u16), (IPPROTO_UDP, 5001)] {
            let name = format!("protocol {protocol}");
            let (verdict, out, stat) =
                fx.run(CONTAINER_PROGRAM, &sent6(opening(protocol, sport)))?;
            assert_eq!(
                (verdict, stat),
                (TC_ACT_REDIRECT, Stat::ContainerRedirectMasquerade),
                "{name}"
            );
            let o = View6(&out);
            assert_eq!((o.src(), o.port(0)), (NODE_IP6, sport), "{name}: source");
            assert_eq!(o.dst(), WORLD_IP6, "{name}");
            assert_eq!(o.hop_limit(), 63, "{name}");
            assert_eq!(&out[0..6], &[0x0a, 0, 0, 0, 0, 0x02], "{name}: next hop");
            assert!(o.checksum_ok(), "{name}: transport checksum");

            for (program, redirected) in [
                (UPLINK_PROGRAM, XDP_REDIRECT),
                (UPLINK_TC_PROGRAM, TC_ACT_REDIRECT),
            ] {
                let name = format!("{name} on {program}");
                let reply = answer(protocol, sport);
                let (verdict, out, stat) = fx.run(program, &reply)?;
                assert_eq!(
                    (verdict, stat),
                    (redirected, Stat::UplinkRedirectMasqueradeReply),
                    "{name}"
                );
                let o = View6(&out);
                assert_eq!((o.dst(), o.port(2)), (CONTAINER_IP6, sport), "{name}");
                assert_eq!(o.src(), WORLD_IP6, "{name}");
                assert_eq!(o.hop_limit(), 63, "{name}");
                assert_eq!(&out[0..6], &CONTAINER_MAC, "{name}: to the container");
                assert_eq!(&out[6..12], &HOST_VETH_MAC, "{name}: from its gateway");
                assert!(o.checksum_ok(), "{name}: transport checksum");
            }
        }
        let states: Vec<_> = fx
            .conntrack6()?
            .iter()
            .map(|(k, e)| (k.proto, e.state))
            .collect();
        assert_eq!(states.len(), 4, "two entries per flow: {states:?}");
        assert!(
            states.contains(&(IPPROTO_TCP, CT_REPLIED))
                && states.contains(&(IPPROTO_UDP, CT_ESTABLISHED)),
            "answered: {states:?}"
        );
        Ok(())
    })
}

/// What is no masqueraded flow is refused at the veth, or passes on the uplink as before.
#[test]
fn ipv6_masquerade_refusals_and_strangers() -> Result<()> {
    let ns = forwarding_namespace6()?;
    ns.run(|| -> Result<()> {
        let mut fx = Fixture::new()?;
        fx.masquerading6()?;
        let syn = sent6(opening(IPPROTO_TCP, 5000));
        let (verdict, _, stat) = fx.run(CONTAINER_PROGRAM, &syn)?;
        assert_eq!(
            (verdict, stat),
            (TC_ACT_SHOT, Stat::ContainerDropNoMasqueradeSource),
            "no IPv6 address on the way out: nothing leaves with the container's own"
        );
        fx.masquerade6_via_up0()?;
        let mut zero = opening(IPPROTO_UDP, 5001);
        zero.keep_checksum = true;
        let cases = [
            (
                "a TCP segment of no flow",
                sent6(Packet6::tcp(CONTAINER_IP6, 5002, WORLD_IP6, 443, ACK)),
                TC_ACT_SHOT,
                Stat::ContainerDropUntracked,
            ),
            (
                "UDP without a checksum",
                sent6(zero),
                TC_ACT_SHOT,
                Stat::ContainerDropUdpZeroChecksum,
            ),
        ];
        for (name, frame, verdict, stat) in cases {
            let (got, _, moved) = fx.run(CONTAINER_PROGRAM, &frame)?;
            assert_eq!((got, moved), (verdict, stat), "{name}");
        }
        // No flow to the node's port 5000: the world's segment passes to the node.
        let stranger = answer(IPPROTO_TCP, 5000);
        let (verdict, out, stat) = fx.run(UPLINK_PROGRAM, &stranger)?;
        assert_eq!((verdict, stat), (XDP_PASS, Stat::UplinkPassNotPublished));
        assert_eq!(out, stranger);

        // With the masquerade program's slot empty, a packet to masquerade is a counted
        // drop, never sent with the container's own address.
        let mut slots: ProgramArray<&mut MapData> =
            ProgramArray::try_from(fx.ebpf.map_mut(CONTAINER6_PROGRAMS).unwrap())?;
        slots.clear_index(&CONTAINER6_MASQUERADE_SLOT)?;
        let (verdict, _, stat) = fx.run(CONTAINER_PROGRAM, &syn)?;
        assert_eq!(
            (verdict, stat),
            (TC_ACT_SHOT, Stat::ContainerDropIpv6ProgramMissing)
        );
        Ok(())
    })
}
