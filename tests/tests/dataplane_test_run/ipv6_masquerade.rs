//! IPv6 masquerade through the packet programs: a container's TCP and UDP to the outside
//! of a masquerading network leave with the node's IPv6 address (`container_masquerade6`,
//! by tail call from `container_ingress6`), their replies come back to the container's
//! veth on the uplink (`uplink_masquerade6` and its TC twins, by tail call from the
//! uplinks' IPv6 programs), and what is no flow of theirs is refused or passes as before.
//! ICMPv6 echo requests are masqueraded by identifier, their replies translated back, and
//! the ICMPv6 errors about masqueraded flows go to the container, their quotes translated.
//! The fragments after the first of a masqueraded datagram follow their first fragment,
//! both ways.

use std::net::Ipv6Addr;

use aya::maps::ProgramArray;
use dataplane_common::{
    CONNTRACK6, CONTAINER6_MASQUERADE_SLOT, CONTAINER6_PROGRAMS, CtEntry6, CtKey6,
    MASQUERADE_SOURCES6, NETWORKS6, NetworkKey6,
};

use super::{
    ipv6::{
        CONTAINER_IP6, IPPROTO_ICMPV6, NODE_IP6, Packet6, View6, WORLD_IP6, forwarding_namespace6,
        pseudo_checksum,
    },
    ipv6_icmp::{
        ICMPV6_DEST_UNREACH, ICMPV6_PACKET_TOO_BIG, ICMPV6_TIME_EXCEEDED, QUOTE,
        assert_error_to_container, error_about, fragmented,
    },
    *,
};

impl Fixture {
    /// fd00::/64, masquerading, and up0's IPv6 source (in the forwarding namespace, this
    /// thread's) as the agent writes it.
    pub(crate) fn masquerading6(&mut self) -> Result<()> {
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

    pub(crate) fn masquerade6_via_up0(&mut self) -> Result<()> {
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
fn from_container(packet: Packet6) -> Packet6 {
    Packet6 {
        src_mac: CONTAINER_MAC,
        dst_mac: HOST_VETH_MAC,
        ..packet
    }
}

/// [`from_container`], built.
fn sent6(packet: Packet6) -> Vec<u8> {
    from_container(packet).build()
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

const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// An echo request (`reply`: an echo reply) with identifier `id`, sequence 1, 16 bytes of
/// data.
fn echo(src: Ipv6Addr, dst: Ipv6Addr, reply: bool, id: u16) -> Packet6 {
    let mut body = id.to_be_bytes().to_vec();
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend((0..16).map(|i| i as u8));
    let icmp_type = match reply {
        true => ICMPV6_ECHO_REPLY,
        false => ICMPV6_ECHO_REQUEST,
    };
    Packet6::icmp6(src, dst, icmp_type, &body)
}

/// A container's ping leaves from the node's address with its identifier, or another one
/// when a ping of another container holds it (as IPv4's echo masquerade picks it), the
/// ICMPv6 checksum right; the echo replies come back to each container's veth, their
/// identifiers translated back, on each uplink hook; both flows answered in CONNTRACK6.
#[test]
fn ipv6_echo_masquerade_out_and_replies_in() -> Result<()> {
    let ns = forwarding_namespace6()?;
    ns.run(|| -> Result<()> {
        let mut fx = Fixture::new()?;
        fx.masquerading6()?;
        fx.masquerade6_via_up0()?;
        let other: Ipv6Addr = "fd00::3".parse()?;
        let mut ids = Vec::new();
        for container in [CONTAINER_IP6, other] {
            let name = format!("ping from {container}");
            let request = sent6(echo(container, WORLD_IP6, false, 0x4242));
            let (verdict, out, stat) = fx.run(CONTAINER_PROGRAM, &request)?;
            assert_eq!(
                (verdict, stat),
                (TC_ACT_REDIRECT, Stat::ContainerRedirectMasquerade),
                "{name}"
            );
            let o = View6(&out);
            assert_eq!((o.src(), o.dst()), (NODE_IP6, WORLD_IP6), "{name}");
            assert_eq!(o.hop_limit(), 63, "{name}");
            assert!(o.checksum_ok(), "{name}: ICMPv6 checksum");
            assert_eq!(out[ETH_HLEN + 40], ICMPV6_ECHO_REQUEST, "{name}");
            let sequence_and_data = |frame: &[u8]| frame[frame.len() - 18..].to_vec();
            assert_eq!(
                sequence_and_data(&out),
                sequence_and_data(&request),
                "{name}: the rest as sent"
            );
            ids.push(o.port(4));
        }
        assert_eq!(ids[0], 0x4242, "the first ping keeps its identifier");
        assert_ne!(ids[1], 0x4242, "the second gets another");

        for (program, redirected) in [
            (UPLINK_PROGRAM, XDP_REDIRECT),
            (UPLINK_TC_PROGRAM, TC_ACT_REDIRECT),
        ] {
            for (container, id) in [(CONTAINER_IP6, ids[0]), (other, ids[1])] {
                let name = format!("{program}: echo reply to {container}");
                let reply = echo(WORLD_IP6, NODE_IP6, true, id).build();
                let (verdict, out, stat) = fx.run(program, &reply)?;
                assert_eq!(
                    (verdict, stat),
                    (redirected, Stat::UplinkRedirectMasqueradeReply),
                    "{name}"
                );
                let o = View6(&out);
                assert_eq!((o.src(), o.dst()), (WORLD_IP6, container), "{name}");
                assert_eq!(o.port(4), 0x4242, "{name}: the identifier it sent");
                assert_eq!(o.hop_limit(), 63, "{name}");
                assert_eq!(&out[0..6], &CONTAINER_MAC, "{name}: to the container");
                assert!(o.checksum_ok(), "{name}: ICMPv6 checksum");
            }
        }
        // An echo reply to the node's own ping (an identifier no container used) and an
        // echo request from the world are the node's.
        for (name, frame) in [
            (
                "a reply to the node",
                echo(WORLD_IP6, NODE_IP6, true, 0x7777),
            ),
            (
                "a request to the node",
                echo(WORLD_IP6, NODE_IP6, false, ids[0]),
            ),
        ] {
            let frame = frame.build();
            let (verdict, out, stat) = fx.run(UPLINK_PROGRAM, &frame)?;
            assert_eq!(
                (verdict, stat),
                (XDP_PASS, Stat::UplinkPassNotTcpUdp),
                "{name}"
            );
            assert_eq!(out, frame, "{name}: untouched");
        }
        let echoes: Vec<_> = fx
            .conntrack6()?
            .into_iter()
            .filter(|(k, _)| k.proto == IPPROTO_ICMPV6)
            .map(|(_, e)| e.state)
            .collect();
        assert_eq!(echoes, [CT_ESTABLISHED; 4], "two answered flows");
        Ok(())
    })
}

/// ICMPv6 errors about masqueraded flows (a TCP segment, a UDP datagram, a ping, as they
/// left the node) go to the container that sent them, outer destination and quote
/// translated back, on each uplink hook; one about no flow passes untouched.
#[test]
fn icmpv6_errors_about_masqueraded_flows() -> Result<()> {
    let ns = forwarding_namespace6()?;
    ns.run(|| -> Result<()> {
        let mut fx = Fixture::new()?;
        fx.masquerading6()?;
        fx.masquerade6_via_up0()?;
        let sent = [
            (
                "packet too big about tcp",
                ICMPV6_PACKET_TOO_BIG,
                opening(IPPROTO_TCP, 5000),
            ),
            (
                "port unreachable about udp (quoted checksum)",
                ICMPV6_DEST_UNREACH,
                opening(IPPROTO_UDP, 5001),
            ),
            (
                "time exceeded about a ping",
                ICMPV6_TIME_EXCEEDED,
                echo(CONTAINER_IP6, WORLD_IP6, false, 0x4243),
            ),
        ];
        let mut cases = Vec::new();
        for (name, icmp_type, packet) in sent {
            let (verdict, left, _) = fx.run(CONTAINER_PROGRAM, &sent6(packet.clone()))?;
            assert_eq!(verdict, TC_ACT_REDIRECT, "{name}: masqueraded");
            // The quote is the packet as it left; translated back, as the container sent
            // it one hop earlier.
            let original = Packet6 {
                hop_limit: 63,
                ..packet
            }
            .build();
            cases.push((name, error_about(icmp_type, &left, QUOTE).build(), original));
        }
        for program in [UPLINK_PROGRAM, UPLINK_TC_PROGRAM] {
            for (name, frame, original) in &cases {
                let name = format!("{program}: {name}");
                let (verdict, out, stat) = fx.run(program, frame).context(name.clone())?;
                assert_eq!(
                    (verdict, stat),
                    (
                        at_hook(program, XDP_REDIRECT),
                        Stat::UplinkRedirectIcmpError
                    ),
                    "{name}"
                );
                assert_error_to_container(&out, frame, original, &name);
            }
        }
        let no_flow = Packet6::tcp(NODE_IP6, 5999, WORLD_IP6, 443, SYN).build();
        let stranger = error_about(ICMPV6_DEST_UNREACH, &no_flow, QUOTE).build();
        let (verdict, out, stat) = fx.run(UPLINK_PROGRAM, &stranger)?;
        assert_eq!((verdict, stat), (XDP_PASS, Stat::UplinkPassNotTcpUdp));
        assert_eq!(out, stranger, "about no flow: untouched");
        Ok(())
    })
}

/// The upper layer of the datagram that `fragments` (frames with a fragment header alone)
/// make up from `src` to `dst`, its checksum checked over the pseudo-header.
fn reassembled(fragments: &[Vec<u8>], src: Ipv6Addr, dst: Ipv6Addr, protocol: u8) -> Vec<u8> {
    let mut upper: Vec<u8> = fragments
        .iter()
        .flat_map(|f| f[ETH_HLEN + 48..].to_vec())
        .collect();
    let check_at = if protocol == IPPROTO_UDP { 6 } else { 2 };
    let stored = [upper[check_at], upper[check_at + 1]];
    upper[check_at..check_at + 2].fill(0);
    let expected = pseudo_checksum(&src, &dst, protocol, &upper);
    assert_eq!(stored, expected.to_be_bytes(), "the reassembled checksum");
    upper
}

/// Where the field that names a masqueraded flow's container end sits in its upper layer:
/// a UDP source or destination port (`reply`), an echo's identifier.
fn port_at(protocol: u8, reply: bool) -> usize {
    match (protocol, reply) {
        (IPPROTO_ICMPV6, _) => 4,
        (_, false) => 0,
        (_, true) => 2,
    }
}

/// A container's fragmented UDP datagram and ping leave from the node's address, every
/// fragment after the first routed after it; the world's fragmented answers go back to the
/// container's veth, every fragment, on each uplink hook. A later fragment whose first
/// fragment was not masqueraded is dropped, never sent with the container's own address.
#[test]
fn ipv6_fragments_through_masquerade_both_ways() -> Result<()> {
    let ns = forwarding_namespace6()?;
    ns.run(|| -> Result<()> {
        let mut fx = Fixture::new()?;
        fx.masquerading6()?;
        fx.masquerade6_via_up0()?;
        let mut echo_body = 0x4244u16.to_be_bytes().to_vec();
        echo_body.extend_from_slice(&1u16.to_be_bytes());
        echo_body.extend((0..300).map(|i| i as u8));
        let echo_of = |src, dst, icmp_type, id: u16| {
            let mut body = echo_body.clone();
            body[0..2].copy_from_slice(&id.to_be_bytes());
            Packet6::icmp6(src, dst, icmp_type, &body)
        };
        let sent = [
            Packet6::udp(CONTAINER_IP6, 5002, WORLD_IP6, 53, 300),
            echo_of(CONTAINER_IP6, WORLD_IP6, ICMPV6_ECHO_REQUEST, 0x4244),
        ];
        for datagram in sent {
            let protocol = datagram.protocol;
            let original = datagram.build()[ETH_HLEN + 40..].to_vec();
            let fragments = fragmented(from_container(datagram), 104);
            let mut outs = Vec::new();
            for (i, fragment) in fragments.iter().enumerate() {
                let name = format!("protocol {protocol} out: fragment {i}");
                let (verdict, out, stat) =
                    fx.run(CONTAINER_PROGRAM, fragment).context(name.clone())?;
                let expected = match i {
                    0 => Stat::ContainerRedirectMasquerade,
                    _ => Stat::ContainerRedirectFragment,
                };
                assert_eq!((verdict, stat), (TC_ACT_REDIRECT, expected), "{name}");
                let o = View6(&out);
                assert_eq!((o.src(), o.dst()), (NODE_IP6, WORLD_IP6), "{name}");
                assert_eq!(o.hop_limit(), 63, "{name}");
                assert_eq!(&out[0..6], &[0x0a, 0, 0, 0, 0, 0x02], "{name}: next hop");
                outs.push(out);
            }
            let mut upper = reassembled(&outs, NODE_IP6, WORLD_IP6, protocol);
            let at = port_at(protocol, false);
            let port = u16::from_be_bytes([upper[at], upper[at + 1]]);
            upper[at..at + 2].copy_from_slice(&original[at..at + 2]);
            let check_at = if protocol == IPPROTO_UDP { 6 } else { 2 };
            upper[check_at..check_at + 2].copy_from_slice(&original[check_at..check_at + 2]);
            assert_eq!(upper, original, "protocol {protocol}: the data as sent");

            // The world's answer, as large, fragmented on its way to the node.
            let answer = match protocol {
                IPPROTO_UDP => Packet6::udp(WORLD_IP6, 53, NODE_IP6, port, 300),
                _ => echo_of(WORLD_IP6, NODE_IP6, ICMPV6_ECHO_REPLY, port),
            };
            let answer = fragmented(answer, 104);
            for program in [UPLINK_PROGRAM, UPLINK_TC_PROGRAM] {
                let mut outs = Vec::new();
                for (i, fragment) in answer.iter().enumerate() {
                    let name = format!("protocol {protocol} in on {program}: fragment {i}");
                    let (verdict, out, stat) = fx.run(program, fragment).context(name.clone())?;
                    let expected = match i {
                        0 => Stat::UplinkRedirectMasqueradeReply,
                        _ => Stat::UplinkRedirectFragment,
                    };
                    assert_eq!(
                        (verdict, stat),
                        (at_hook(program, XDP_REDIRECT), expected),
                        "{name}"
                    );
                    let o = View6(&out);
                    assert_eq!((o.src(), o.dst()), (WORLD_IP6, CONTAINER_IP6), "{name}");
                    assert_eq!(o.hop_limit(), 63, "{name}");
                    assert_eq!(
                        (&out[0..6], &out[6..12]),
                        (&CONTAINER_MAC[..], &HOST_VETH_MAC[..]),
                        "{name}: to the container's veth"
                    );
                    outs.push(out);
                }
                let upper = reassembled(&outs, WORLD_IP6, CONTAINER_IP6, protocol);
                let at = port_at(protocol, true);
                assert_eq!(
                    upper[at..at + 2],
                    original[port_at(protocol, false)..][..2],
                    "protocol {protocol} on {program}: the container's own port"
                );
            }

            // A later fragment of another datagram, whose first fragment was not
            // masqueraded (refused): it would leave with the container's own address.
            let mut lone = fragments[1].clone();
            lone[ETH_HLEN + 40 + 4..ETH_HLEN + 40 + 8].copy_from_slice(&[1, 2, 3, 4]);
            let (verdict, _, stat) = fx.run(CONTAINER_PROGRAM, &lone)?;
            assert_eq!(
                (verdict, stat),
                (TC_ACT_SHOT, Stat::ContainerDropFragmentUntracked),
                "protocol {protocol}: a lone later fragment"
            );
        }
        Ok(())
    })
}
