//! `--link` through `icc=false` over IPv6 through the packet programs: a linked container's
//! new connection to the other's exposed port passes and is tracked in CONNTRACK6
//! (`container_link6`, by tail call from `container_ingress6`), its replies pass as part of
//! the flow, and what no link or tracked flow explains (an unlinked sender, the other
//! direction, a reply of no flow) is refused as `icc=false` refuses it. Neighbour
//! discovery between them passes, to their own addresses too: without it nothing would.

use std::net::Ipv6Addr;

use aya::maps::ProgramArray;
use dataplane_common::{
    CONNTRACK6, CONTAINER6_LINK_SLOT, CONTAINER6_PROGRAMS, CT_ORIGINAL, CT_REPLY, CtEntry6, CtKey6,
    LINKS6, LinkKey6, NETWORKS6, NetworkKey6,
};

use super::{ipv6::Packet6, *};

/// On fd01::/64, an `icc=false` network: the linking container, the linked one (which
/// exposes 80/tcp and 53/udp to it) and a third one.
const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd01, 0, 0, 0, 0, 0, 0, 2);
const SERVER: Ipv6Addr = Ipv6Addr::new(0xfd01, 0, 0, 0, 0, 0, 0, 3);
const STRANGER: Ipv6Addr = Ipv6Addr::new(0xfd01, 0, 0, 0, 0, 0, 0, 4);

impl Fixture {
    /// fd01::/64 with `icc=false`, and the links from [`CLIENT`] to [`SERVER`]'s 80/tcp
    /// and 53/udp as the agent writes them.
    fn linked6() -> Result<Self> {
        let mut fx = Fixture::new()?;
        let mut trie: LpmTrie<&mut MapData, NetworkKey6, NetworkInfo> =
            LpmTrie::try_from(fx.ebpf.map_mut(NETWORKS6).unwrap())?;
        let info = NetworkInfo {
            index: 1,
            flags: NETWORK_MASQUERADE,
        };
        let addr = Ipv6Addr::new(0xfd01, 0, 0, 0, 0, 0, 0, 0).octets();
        trie.insert(&Key::new(64, NetworkKey6 { addr }), info, 0)?;
        let mut links: HashMap<&mut MapData, LinkKey6, u32> =
            HashMap::try_from(fx.ebpf.map_mut(LINKS6).unwrap())?;
        for (port, proto) in [(80u16, IPPROTO_TCP), (53, IPPROTO_UDP)] {
            let key = LinkKey6 {
                src_ip: CLIENT.octets(),
                dst_ip: SERVER.octets(),
                dport_be: port.to_be(),
                proto,
                _pad: 0,
            };
            links.insert(key, 1, 0)?;
        }
        Ok(fx)
    }

    fn conntrack6_entries(&self) -> Result<Vec<(CtKey6, CtEntry6)>> {
        let table: HashMap<&MapData, CtKey6, CtEntry6> =
            HashMap::try_from(self.ebpf.map(CONNTRACK6).unwrap())?;
        Ok(table.iter().collect::<Result<_, _>>()?)
    }
}

/// A container's packet as its veth hands it over.
fn sent(packet: Packet6) -> Vec<u8> {
    Packet6 {
        src_mac: CONTAINER_MAC,
        dst_mac: HOST_VETH_MAC,
        ..packet
    }
    .build()
}

fn tcp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, flags: u8) -> Vec<u8> {
    sent(Packet6::tcp(src, sport, dst, dport, flags))
}

fn udp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    sent(Packet6::udp(src, sport, dst, dport, 12))
}

/// A linked connection passes untouched both ways, a TCP handshake to its end, and is
/// tracked in CONNTRACK6 (both entries, answered) until a reset ends it.
#[test]
fn ipv6_linked_flows_pass_both_ways_and_are_tracked() -> Result<()> {
    let mut fx = Fixture::linked6()?;
    let steps = [
        (
            "linked SYN",
            tcp(CLIENT, 5000, SERVER, 80, SYN),
            Stat::ContainerPassLink,
        ),
        (
            "its SYN-ACK",
            tcp(SERVER, 80, CLIENT, 5000, SYN_ACK),
            Stat::ContainerPassTracked,
        ),
        (
            "its ACK",
            tcp(CLIENT, 5000, SERVER, 80, ACK),
            Stat::ContainerPassTracked,
        ),
        (
            "linked UDP",
            udp(CLIENT, 5353, SERVER, 53),
            Stat::ContainerPassLink,
        ),
        (
            "its answer",
            udp(SERVER, 53, CLIENT, 5353),
            Stat::ContainerPassTracked,
        ),
    ];
    for (name, frame, stat) in steps {
        let (verdict, out, moved) = fx.run(CONTAINER_PROGRAM, &frame).context(name)?;
        assert_eq!((verdict, moved), (TC_ACT_OK, stat), "{name}");
        assert_eq!(out, frame, "{name}: untouched");
    }
    let mut flows: Vec<_> = fx
        .conntrack6_entries()?
        .iter()
        .map(|(k, e)| (k.proto, e.direction, e.state, e.nat_ip == CLIENT.octets()))
        .collect();
    flows.sort();
    assert_eq!(
        flows,
        [
            (IPPROTO_TCP, CT_ORIGINAL, CT_ESTABLISHED, true),
            (IPPROTO_TCP, CT_REPLY, CT_ESTABLISHED, true),
            (IPPROTO_UDP, CT_ORIGINAL, CT_ESTABLISHED, true),
            (IPPROTO_UDP, CT_REPLY, CT_ESTABLISHED, true),
        ],
        "two entries per flow, answered, untranslated"
    );

    let reset = tcp(SERVER, 80, CLIENT, 5000, RST);
    let (verdict, _, stat) = fx.run(CONTAINER_PROGRAM, &reset)?;
    assert_eq!((verdict, stat), (TC_ACT_OK, Stat::ContainerPassTracked));
    let left: Vec<_> = fx
        .conntrack6_entries()?
        .iter()
        .map(|(k, _)| k.proto)
        .collect();
    assert_eq!(
        left,
        [IPPROTO_UDP, IPPROTO_UDP],
        "the reset ended the TCP flow"
    );
    let after = tcp(SERVER, 80, CLIENT, 5000, ACK);
    let (verdict, _, stat) = fx.run(CONTAINER_PROGRAM, &after)?;
    assert_eq!(
        (verdict, stat),
        (TC_ACT_SHOT, Stat::ContainerDropPolicyIcc),
        "nothing of the ended flow passes"
    );
    Ok(())
}

/// What no link allows and no tracked flow explains is refused, as `icc=false` refuses
/// it, and tracks nothing.
#[test]
fn ipv6_unlinked_traffic_is_refused_by_icc() -> Result<()> {
    let mut fx = Fixture::linked6()?;
    let cases = [
        ("an unlinked sender", tcp(STRANGER, 5000, SERVER, 80, SYN)),
        (
            "a new connection the other way",
            tcp(SERVER, 6000, CLIENT, 80, SYN),
        ),
        ("a reply of no flow", tcp(SERVER, 80, CLIENT, 5000, SYN_ACK)),
        ("a UDP answer of no flow", udp(SERVER, 53, CLIENT, 5353)),
        (
            "a port the link does not open",
            tcp(CLIENT, 5000, SERVER, 81, SYN),
        ),
        (
            "the linked port over another protocol",
            udp(CLIENT, 5000, SERVER, 80),
        ),
        (
            "a linked segment of no flow",
            tcp(CLIENT, 5001, SERVER, 80, ACK),
        ),
    ];
    for (name, frame) in cases {
        let (verdict, _, stat) = fx.run(CONTAINER_PROGRAM, &frame).context(name)?;
        assert_eq!(
            (verdict, stat),
            (TC_ACT_SHOT, Stat::ContainerDropPolicyIcc),
            "{name}"
        );
    }
    assert!(fx.conntrack6_entries()?.is_empty(), "nothing tracked");
    Ok(())
}

/// Neighbour solicitations and advertisements between containers of an `icc=false`
/// network pass, to a container's own address too (an advertisement answers a solicitation
/// at its source), as on the iptables dataplane; other ICMPv6 between them does not.
#[test]
fn ipv6_neighbour_discovery_passes_icc_false() -> Result<()> {
    let mut fx = Fixture::linked6()?;
    let icmp6 = |kind: u8, hop_limit: u8| {
        let mut body = vec![0u8; 4];
        body.extend_from_slice(&CLIENT.octets());
        sent(Packet6 {
            hop_limit,
            ..Packet6::icmp6(SERVER, CLIENT, kind, &body)
        })
    };
    let cases = [
        (
            "advertisement",
            icmp6(136, 255),
            TC_ACT_OK,
            Stat::ContainerPassToNode,
        ),
        (
            "unicast solicitation",
            icmp6(135, 255),
            TC_ACT_OK,
            Stat::ContainerPassToNode,
        ),
        (
            "advertisement that crossed a router",
            icmp6(136, 64),
            TC_ACT_SHOT,
            Stat::ContainerDropPolicyIcc,
        ),
        (
            "echo request",
            icmp6(128, 255),
            TC_ACT_SHOT,
            Stat::ContainerDropPolicyIcc,
        ),
    ];
    for (name, frame, verdict, stat) in cases {
        let (got, out, moved) = fx.run(CONTAINER_PROGRAM, &frame).context(name)?;
        assert_eq!((got, moved), (verdict, stat), "{name}");
        if verdict == TC_ACT_OK {
            assert_eq!(out, frame, "{name}: untouched");
        }
    }
    Ok(())
}

/// With `container_link6`'s slot empty, a linked packet is a counted drop, as `icc=false`
/// alone would drop it.
#[test]
fn ipv6_links_without_their_program_are_a_counted_drop() -> Result<()> {
    let mut fx = Fixture::linked6()?;
    let mut slots: ProgramArray<&mut MapData> =
        ProgramArray::try_from(fx.ebpf.map_mut(CONTAINER6_PROGRAMS).unwrap())?;
    slots.clear_index(&CONTAINER6_LINK_SLOT)?;
    let syn = tcp(CLIENT, 5000, SERVER, 80, SYN);
    let (verdict, _, stat) = fx.run(CONTAINER_PROGRAM, &syn)?;
    assert_eq!(
        (verdict, stat),
        (TC_ACT_SHOT, Stat::ContainerDropIpv6ProgramMissing)
    );
    Ok(())
}
