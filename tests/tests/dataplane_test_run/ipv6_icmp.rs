//! ICMPv6 errors and fragments of IPv6 published-port flows on the uplink (its IPv6
//! programs, reached by tail call): an error quoting a flow's reply goes to the container
//! with the quote as the container sent it; the fragments after the first follow their
//! first fragment's translation. What matches no flow passes untouched; a malformed frame
//! is a counted drop. At the container's veth (`container_reply6`, reached from
//! `container_ingress6` by tail call) the same the other way: a container's error about a
//! flow's packet leaves from the published address with the quote as the client sent it,
//! and the fragments of a container's reply follow its first fragment out.

use std::net::Ipv6Addr;

use aya::maps::ProgramArray;
use dataplane_common::{CONTAINER6_PROGRAMS, CONTAINER6_REPLY_SLOT};

use super::{
    ipv6::{
        CONTAINER_IP6, IPPROTO_ICMPV6, NEXTHDR_DEST, NEXTHDR_FRAGMENT, NODE_IP6, Packet6, View6,
        WORLD_IP6, extension, forwarding_namespace6, pseudo_checksum,
    },
    *,
};

/// A router on the way to the world, which sends the errors.
pub(crate) const ROUTER_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);
pub(crate) const ICMPV6_DEST_UNREACH: u8 = 1;
pub(crate) const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub(crate) const ICMPV6_TIME_EXCEEDED: u8 = 3;
/// Bytes of the offending packet an error quotes here (RFC 4443: as much as fits in the
/// minimum MTU; a router may send fewer).
pub(crate) const QUOTE: usize = 48;

/// An ICMPv6 error of `icmp_type` from the router to the node quoting the first `len`
/// bytes of the IPv6 packet in `quoted` (a frame).
pub(crate) fn error_about(icmp_type: u8, quoted: &[u8], len: usize) -> Packet6 {
    let mut body = 1280u32.to_be_bytes().to_vec();
    body.extend_from_slice(&quoted[ETH_HLEN..ETH_HLEN + len]);
    Packet6::icmp6(ROUTER_IP6, NODE_IP6, icmp_type, &body)
}

/// A packet of a container's published-port flow as it leaves the node (`published`) and
/// as the container sent it, one hop earlier.
fn reply_both_ways(published: Packet6, container_port: u16) -> (Vec<u8>, Vec<u8>) {
    let sent = Packet6 {
        hop_limit: 63,
        ..published.clone()
    };
    let mut at_container = Packet6 {
        src: CONTAINER_IP6,
        ..sent.clone()
    };
    at_container.upper[0..2].copy_from_slice(&container_port.to_be_bytes());
    (sent.build(), at_container.build())
}

/// Whether the ICMPv6 checksum of `frame` (no extension headers) is right.
pub(crate) fn icmp6_checksum_ok(frame: &[u8]) -> bool {
    let src: [u8; 16] = frame[ETH_HLEN + 8..ETH_HLEN + 24].try_into().unwrap();
    let dst: [u8; 16] = frame[ETH_HLEN + 24..ETH_HLEN + 40].try_into().unwrap();
    let mut upper = frame[ETH_HLEN + 40..].to_vec();
    let stored = [upper[2], upper[3]];
    upper[2..4].fill(0);
    let expected = pseudo_checksum(&src.into(), &dst.into(), IPPROTO_ICMPV6, &upper);
    stored == expected.to_be_bytes()
}

fn address(frame: &[u8], at: usize) -> Ipv6Addr {
    let bytes: [u8; 16] = frame[ETH_HLEN + at..ETH_HLEN + at + 16].try_into().unwrap();
    bytes.into()
}

/// The error was readdressed to the container, its quote is the packet the container sent
/// (address, port, quoted checksum), and its checksum is right.
pub(crate) fn assert_error_to_container(out: &[u8], input: &[u8], original: &[u8], name: &str) {
    assert_eq!(out.len(), input.len(), "{name}");
    assert_eq!(address(out, 24), CONTAINER_IP6, "{name}: outer destination");
    assert_eq!(
        address(out, 8),
        ROUTER_IP6,
        "{name}: the router stays the source"
    );
    assert_eq!(
        out[ETH_HLEN + 7],
        input[ETH_HLEN + 7] - 1,
        "{name}: hop limit"
    );
    assert_eq!(
        (&out[0..6], &out[6..12]),
        (&CONTAINER_MAC[..], &HOST_VETH_MAC[..]),
        "{name}"
    );
    let quote = ETH_HLEN + 48;
    let quoted = out.len() - quote;
    assert_eq!(
        out[quote..],
        original[ETH_HLEN..ETH_HLEN + quoted],
        "{name}: the quote is what the container sent"
    );
    assert!(icmp6_checksum_ok(out), "{name}: ICMPv6 checksum");
}

#[test]
fn icmpv6_errors_about_published_port_flows() -> Result<()> {
    let tcp_reply = Packet6::tcp(NODE_IP6, 8080, WORLD_IP6, 40000, SYN_ACK);
    let (tcp_sent, tcp_original) = reply_both_ways(tcp_reply.clone(), 80);
    let udp_reply = Packet6::udp(NODE_IP6, 5353, WORLD_IP6, 40001, 200);
    let (udp_sent, udp_original) = reply_both_ways(udp_reply, 53);
    let (options_sent, options_original) = reply_both_ways(
        tcp_reply
            .clone()
            .with_extensions(&[extension(NEXTHDR_DEST, 16, 0)]),
        80,
    );
    // Another client port than the flow's, and a port with no flow at all.
    let (stranger, _) =
        reply_both_ways(Packet6::tcp(NODE_IP6, 8080, WORLD_IP6, 40999, SYN_ACK), 80);
    let (unpublished, _) =
        reply_both_ways(Packet6::tcp(NODE_IP6, 8081, WORLD_IP6, 40000, SYN_ACK), 80);
    // (name, error, the packet the container sent: Some when the error is translated,
    // XDP verdict, counter)
    type Case = (&'static str, Vec<u8>, Option<Vec<u8>>, u32, Stat);
    let cases: Vec<Case> = vec![
        (
            "packet too big about a tcp reply",
            error_about(ICMPV6_PACKET_TOO_BIG, &tcp_sent, QUOTE).build(),
            Some(tcp_original.clone()),
            XDP_REDIRECT,
            Stat::UplinkRedirectIcmpError,
        ),
        (
            "port unreachable about a udp reply (quoted checksum)",
            error_about(ICMPV6_DEST_UNREACH, &udp_sent, QUOTE).build(),
            Some(udp_original),
            XDP_REDIRECT,
            Stat::UplinkRedirectIcmpError,
        ),
        (
            "time exceeded, the quote behind destination options",
            error_about(ICMPV6_TIME_EXCEEDED, &options_sent, QUOTE + 16).build(),
            Some(options_original),
            XDP_REDIRECT,
            Stat::UplinkRedirectIcmpError,
        ),
        (
            "about another flow of the published port",
            error_about(ICMPV6_PACKET_TOO_BIG, &stranger, QUOTE).build(),
            None,
            XDP_PASS,
            Stat::UplinkPassNotTcpUdp,
        ),
        (
            "about a port that is not published",
            error_about(ICMPV6_DEST_UNREACH, &unpublished, QUOTE).build(),
            None,
            XDP_PASS,
            Stat::UplinkPassNotTcpUdp,
        ),
        (
            "a quote too short for the ports",
            error_about(ICMPV6_PACKET_TOO_BIG, &tcp_sent, 40 + 6).build(),
            None,
            XDP_PASS,
            Stat::UplinkPassNotTcpUdp,
        ),
        (
            "hop limit 1",
            Packet6 {
                hop_limit: 1,
                ..error_about(ICMPV6_PACKET_TOO_BIG, &tcp_sent, QUOTE)
            }
            .build(),
            None,
            XDP_DROP,
            Stat::UplinkDropTtlExpired,
        ),
    ];
    for program in [UPLINK_PROGRAM, UPLINK_TC_PROGRAM] {
        let mut fx = Fixture::new()?;
        fx.publish_ipv6_ports()?;
        for (client_port, published) in [(40000, 8080u16), (40001, 5353)] {
            let opening = match published {
                8080 => Packet6::tcp(WORLD_IP6, client_port, NODE_IP6, published, SYN),
                _ => Packet6::udp(WORLD_IP6, client_port, NODE_IP6, published, 12),
            };
            let (_, _, stat) = fx.run(UPLINK_PROGRAM, &opening.build())?;
            assert_eq!(stat, Stat::UplinkRedirectDnat);
        }
        for (name, frame, original, verdict, stat) in &cases {
            let name = format!("{program}: {name}");
            let (got, out, moved) = fx.run(program, frame).context(name.clone())?;
            assert_eq!((got, moved), (at_hook(program, *verdict), *stat), "{name}");
            match original {
                Some(original) => assert_error_to_container(&out, frame, original, &name),
                None if *verdict == XDP_PASS => assert_eq!(&out, frame, "{name}: untouched"),
                None => {}
            }
        }
    }
    Ok(())
}

/// The fragments of a UDP datagram from the world to [2001:db8::1]:5353 with `len` bytes
/// of data, split after `first` bytes of the UDP datagram (a multiple of 8), each in an
/// IPv6 packet with a fragment header of identification 0x0badcafe.
fn udp_fragments(len: usize, first: usize) -> Vec<Vec<u8>> {
    fragmented(Packet6::udp(WORLD_IP6, 40002, NODE_IP6, 5353, len), first)
}

/// `datagram` in three fragments as [`udp_fragments`] splits it: after `first` bytes of
/// its upper layer, then 96 more.
pub(crate) fn fragmented(datagram: Packet6, first: usize) -> Vec<Vec<u8>> {
    let whole = datagram.build();
    let udp = &whole[ETH_HLEN + 40..];
    let fragment = |data: &[u8], offset: usize, more: bool| {
        Packet6 {
            keep_checksum: true,
            upper: data.to_vec(),
            ..datagram.clone()
        }
        .with_extensions(&[extension(
            NEXTHDR_FRAGMENT,
            8,
            offset as u16 | u16::from(more),
        )])
        .build()
    };
    vec![
        fragment(&udp[..first], 0, true),
        fragment(&udp[first..first + 96], first, true),
        fragment(&udp[first + 96..], first + 96, false),
    ]
}

/// The translated fragments make up the datagram to [fd00::2]:53 with a right checksum.
fn assert_reassembles_to_container(outs: &[Vec<u8>], name: &str) {
    let data_at = ETH_HLEN + 48;
    let mut udp = Vec::new();
    for out in outs {
        assert_eq!(
            address(out, 8),
            WORLD_IP6,
            "{name}: the client's address kept"
        );
        assert_eq!(address(out, 24), CONTAINER_IP6, "{name}");
        assert_eq!(out[ETH_HLEN + 7], 63, "{name}: hop limit");
        assert_eq!(
            (&out[0..6], &out[6..12]),
            (&CONTAINER_MAC[..], &HOST_VETH_MAC[..]),
            "{name}"
        );
        udp.extend_from_slice(&out[data_at..]);
    }
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 53, "{name}: port");
    let stored = [udp[6], udp[7]];
    udp[6..8].fill(0);
    let expected = pseudo_checksum(&WORLD_IP6, &CONTAINER_IP6, IPPROTO_UDP, &udp);
    assert_eq!(stored, expected.to_be_bytes(), "{name}: UDP checksum");
}

#[test]
fn ipv6_fragments_follow_their_first_fragment() -> Result<()> {
    for program in [UPLINK_PROGRAM, UPLINK_TC_PROGRAM] {
        let mut fx = Fixture::new()?;
        fx.publish_ipv6_ports()?;
        let fragments = udp_fragments(300, 104);
        let mut outs = Vec::new();
        for (i, fragment) in fragments.iter().enumerate() {
            let name = format!("{program}: fragment {i}");
            let (verdict, out, stat) = fx.run(program, fragment).context(name.clone())?;
            let expected = match i {
                0 => Stat::UplinkRedirectDnat,
                _ => Stat::UplinkRedirectFragment,
            };
            assert_eq!(
                (verdict, stat),
                (at_hook(program, XDP_REDIRECT), expected),
                "{name}"
            );
            outs.push(out);
        }
        assert_reassembles_to_container(&outs, program);
        // A later fragment of a datagram whose first fragment was never seen: the node's.
        let mut stranger = fragments[1].clone();
        stranger[ETH_HLEN + 40 + 4..ETH_HLEN + 40 + 8].copy_from_slice(&[1, 2, 3, 4]);
        let (verdict, out, stat) = fx.run(program, &stranger)?;
        assert_eq!(
            (verdict, stat),
            (at_hook(program, XDP_PASS), Stat::UplinkPassFragment),
            "{program}: another datagram"
        );
        assert_eq!(out, stranger, "{program}: untouched");
        // A following fragment whose hop limit runs out here.
        let mut last_hop = fragments[2].clone();
        last_hop[ETH_HLEN + 7] = 1;
        let (verdict, _, stat) = fx.run(program, &last_hop)?;
        assert_eq!(
            (verdict, stat),
            (at_hook(program, XDP_DROP), Stat::UplinkDropTtlExpired),
            "{program}: hop limit 1"
        );
        // A fragment header cut short by the payload length: malformed, a counted drop.
        let mut cut = fragments[1].clone();
        cut[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&4u16.to_be_bytes());
        let (verdict, _, stat) = fx.run(program, &cut)?;
        assert_eq!(
            (verdict, stat),
            (at_hook(program, XDP_DROP), Stat::UplinkDropMalformed),
            "{program}: a cut fragment header"
        );
    }
    Ok(())
}

/// ICMPv6 errors and fragments with broken headers: counted drops or untouched passes,
/// never an aborted program, at every truncation of the frame.
#[test]
fn truncated_icmpv6_errors_and_fragments_are_never_aborted() -> Result<()> {
    let (sent, _) = reply_both_ways(Packet6::tcp(NODE_IP6, 8080, WORLD_IP6, 40000, SYN_ACK), 80);
    let frames = [
        error_about(ICMPV6_PACKET_TOO_BIG, &sent, QUOTE).build(),
        udp_fragments(300, 104).remove(1),
    ];
    let mut fx = Fixture::new()?;
    fx.publish_ipv6_ports()?;
    let opening = Packet6::tcp(WORLD_IP6, 40000, NODE_IP6, 8080, SYN).build();
    fx.run(UPLINK_PROGRAM, &opening)?;
    for frame in frames {
        for len in ETH_HLEN..frame.len() {
            let (verdict, _, stat) = fx.run(UPLINK_PROGRAM, &frame[..len])?;
            assert_eq!(
                (verdict, stat),
                (XDP_DROP, Stat::UplinkDropMalformed),
                "{len} of {} bytes",
                frame.len()
            );
        }
    }
    Ok(())
}

/// A container's ICMPv6 error of `icmp_type` to the world quoting the first `len` bytes of
/// the packet it received (`received`, a frame), sent into its veth.
fn container_error_about(icmp_type: u8, received: &[u8], len: usize) -> Vec<u8> {
    let mut body = 1280u32.to_be_bytes().to_vec();
    body.extend_from_slice(&received[ETH_HLEN..ETH_HLEN + len]);
    Packet6 {
        src_mac: CONTAINER_MAC,
        dst_mac: HOST_VETH_MAC,
        ..Packet6::icmp6(CONTAINER_IP6, WORLD_IP6, icmp_type, &body)
    }
    .build()
}

/// A packet of a published-port flow as the client sent it, one hop on (the hop limit an
/// error's quote keeps), and as the container received it (translated to
/// `container_port`).
fn request_both_ways(sent: Packet6, container_port: u16) -> (Vec<u8>, Vec<u8>) {
    let forwarded = Packet6 {
        hop_limit: 63,
        ..sent
    };
    let mut received = Packet6 {
        dst: CONTAINER_IP6,
        ..forwarded.clone()
    };
    received.upper[2..4].copy_from_slice(&container_port.to_be_bytes());
    (forwarded.build(), received.build())
}

/// The error leaves from the published address to the world's neighbour, its quote is the
/// packet as the client sent it (address, port, quoted checksum), its checksum is right.
fn assert_error_to_client(out: &[u8], input: &[u8], sent: &[u8], name: &str) {
    assert_eq!(out.len(), input.len(), "{name}");
    assert_eq!(address(out, 8), NODE_IP6, "{name}: outer source");
    assert_eq!(address(out, 24), WORLD_IP6, "{name}: outer destination");
    assert_eq!(out[ETH_HLEN + 7], 63, "{name}: hop limit");
    assert_eq!(
        (&out[0..6], &out[6..12]),
        (&[0x0a, 0, 0, 0, 0, 0x02][..], &[0x0a, 0, 0, 0, 0, 0x01][..]),
        "{name}: the neighbour's MACs"
    );
    let quote = ETH_HLEN + 48;
    let quoted = out.len() - quote;
    assert_eq!(
        out[quote..],
        sent[ETH_HLEN..ETH_HLEN + quoted],
        "{name}: the quote is what the client sent"
    );
    assert!(icmp6_checksum_ok(out), "{name}: ICMPv6 checksum");
}

#[test]
fn a_containers_icmpv6_errors_leave_from_the_published_address() -> Result<()> {
    let ns = forwarding_namespace6()?;
    ns.run(|| -> Result<()> {
        let mut fx = Fixture::new()?;
        fx.publish_ipv6_ports()?;
        let udp = Packet6::udp(WORLD_IP6, 40001, NODE_IP6, 5353, 12);
        let tcp = Packet6::tcp(WORLD_IP6, 40000, NODE_IP6, 8080, SYN);
        for opening in [&udp, &tcp] {
            let (_, _, stat) = fx.run(UPLINK_PROGRAM, &opening.build())?;
            assert_eq!(stat, Stat::UplinkRedirectDnat);
        }
        let (udp_sent, udp_received) = request_both_ways(udp, 53);
        let (tcp_sent, tcp_received) = request_both_ways(tcp, 80);
        let (_, stranger) =
            request_both_ways(Packet6::udp(WORLD_IP6, 40999, NODE_IP6, 5353, 12), 53);
        // (name, error, the packet as the client sent it: Some when translated, verdict,
        // counter)
        type Case = (&'static str, Vec<u8>, Option<Vec<u8>>, u32, Stat);
        let cases: Vec<Case> = vec![
            (
                "port unreachable about a udp request (quoted checksum)",
                container_error_about(
                    ICMPV6_DEST_UNREACH,
                    &udp_received,
                    udp_received.len() - ETH_HLEN,
                ),
                Some(udp_sent),
                TC_ACT_REDIRECT,
                Stat::ContainerRedirectIcmpError,
            ),
            (
                "packet too big about a tcp segment",
                container_error_about(ICMPV6_PACKET_TOO_BIG, &tcp_received, QUOTE),
                Some(tcp_sent.clone()),
                TC_ACT_REDIRECT,
                Stat::ContainerRedirectIcmpError,
            ),
            (
                "about a packet of no flow",
                container_error_about(ICMPV6_DEST_UNREACH, &stranger, QUOTE),
                None,
                TC_ACT_OK,
                Stat::ContainerPassIpv6,
            ),
            (
                "a quote too short for the ports",
                container_error_about(ICMPV6_DEST_UNREACH, &tcp_received, 40 + 6),
                None,
                TC_ACT_OK,
                Stat::ContainerPassIpv6,
            ),
        ];
        for (name, frame, sent, verdict, stat) in &cases {
            let (got, out, moved) = fx.run(CONTAINER_PROGRAM, frame).context(*name)?;
            assert_eq!((got, moved), (*verdict, *stat), "{name}");
            match sent {
                Some(sent) => assert_error_to_client(&out, frame, sent, name),
                None => assert_eq!(&out, frame, "{name}: untouched"),
            }
        }
        let mut last_hop = container_error_about(ICMPV6_PACKET_TOO_BIG, &tcp_received, QUOTE);
        last_hop[ETH_HLEN + 7] = 1;
        let (verdict, _, stat) = fx.run(CONTAINER_PROGRAM, &last_hop)?;
        assert_eq!(
            (verdict, stat),
            (TC_ACT_SHOT, Stat::ContainerDropTtlExpired),
            "hop limit 1"
        );
        Ok(())
    })
}

#[test]
fn a_containers_fragmented_reply_follows_its_first_fragment() -> Result<()> {
    let ns = forwarding_namespace6()?;
    ns.run(|| -> Result<()> {
        let mut fx = Fixture::new()?;
        fx.publish_ipv6_ports()?;
        let request = Packet6::udp(WORLD_IP6, 40002, NODE_IP6, 5353, 12).build();
        let (_, _, stat) = fx.run(UPLINK_PROGRAM, &request)?;
        assert_eq!(stat, Stat::UplinkRedirectDnat);
        let reply = Packet6 {
            src_mac: CONTAINER_MAC,
            dst_mac: HOST_VETH_MAC,
            ..Packet6::udp(CONTAINER_IP6, 53, WORLD_IP6, 40002, 300)
        };
        let fragments = fragmented(reply, 104);
        let mut udp = Vec::new();
        for (i, fragment) in fragments.iter().enumerate() {
            let name = format!("fragment {i}");
            let (verdict, out, stat) = fx.run(CONTAINER_PROGRAM, fragment).context(name.clone())?;
            let expected = match i {
                0 => Stat::ContainerRedirectReply,
                _ => Stat::ContainerRedirectFragment,
            };
            assert_eq!((verdict, stat), (TC_ACT_REDIRECT, expected), "{name}");
            let o = View6(&out);
            assert_eq!((o.src(), o.dst()), (NODE_IP6, WORLD_IP6), "{name}");
            assert_eq!(o.hop_limit(), 63, "{name}");
            assert_eq!(
                (&out[0..6], &out[6..12]),
                (&[0x0a, 0, 0, 0, 0, 0x02][..], &[0x0a, 0, 0, 0, 0, 0x01][..]),
                "{name}: the neighbour's MACs"
            );
            udp.extend_from_slice(&out[ETH_HLEN + 48..]);
        }
        // Reassembled: from the published port, its checksum right for the new addresses.
        assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 5353, "source port");
        let stored = [udp[6], udp[7]];
        udp[6..8].fill(0);
        let expected = pseudo_checksum(&NODE_IP6, &WORLD_IP6, IPPROTO_UDP, &udp);
        assert_eq!(stored, expected.to_be_bytes(), "UDP checksum");

        // A later fragment of another datagram, whose first fragment was not translated:
        // the networks' policy decides, untouched.
        let mut stranger = fragments[1].clone();
        stranger[ETH_HLEN + 40 + 4..ETH_HLEN + 40 + 8].copy_from_slice(&[1, 2, 3, 4]);
        let (verdict, out, stat) = fx.run(CONTAINER_PROGRAM, &stranger)?;
        assert_eq!((verdict, stat), (TC_ACT_OK, Stat::ContainerPassIpv6));
        assert_eq!(out, stranger, "untouched");
        let mut last_hop = fragments[2].clone();
        last_hop[ETH_HLEN + 7] = 1;
        let (verdict, _, stat) = fx.run(CONTAINER_PROGRAM, &last_hop)?;
        assert_eq!(
            (verdict, stat),
            (TC_ACT_SHOT, Stat::ContainerDropTtlExpired),
            "hop limit 1"
        );

        // With `container_reply6`'s slot empty, a fragment or an error is a counted drop,
        // never sent with the container's own address.
        let mut slots: ProgramArray<&mut MapData> =
            ProgramArray::try_from(fx.ebpf.map_mut(CONTAINER6_PROGRAMS).unwrap())?;
        slots.clear_index(&CONTAINER6_REPLY_SLOT)?;
        let (verdict, _, stat) = fx.run(CONTAINER_PROGRAM, &fragments[1])?;
        assert_eq!(
            (verdict, stat),
            (TC_ACT_SHOT, Stat::ContainerDropIpv6ProgramMissing)
        );
        Ok(())
    })
}
