//! The uplink program of layer-3 devices (ipip, GRE, WireGuard, tun): frames that start at
//! the IP header go in; a packet for a container comes out with an Ethernet header in front
//! (the container's and its veth's MACs, IPv4's type), anything for the node comes out as
//! it went in.
//!
//! BPF_PROG_TEST_RUN takes a TC program's input as an Ethernet frame whatever the program
//! is for: it sets the skb's protocol from the input's bytes 12-13 and hands the program
//! the whole input. A bare IPv4 packet from a source in 8.0.0.0/16 has 0x0800 (IPv4's
//! Ethernet type) there, so the program sees what it sees on a tunnel: an IPv4 packet at
//! offset 0 with the skb's protocol IPv4. The clients of these cases are there.

use dataplane_common::CT_REPLY;

use super::*;

/// A client behind the tunnel (see the module's note on 8.0.0.0/16).
pub(super) const TUNNEL_CLIENT: Ipv4Addr = Ipv4Addr::new(8, 0, 0, 1);

/// `frame` (an Ethernet frame as the tests build them) as a layer-3 device receives it.
fn bare_ip(frame: &[u8]) -> Vec<u8> {
    frame[ETH_HLEN..].to_vec()
}

/// The frame left with an Ethernet header for the container's veth: IPv4 behind it.
fn assert_ethernet_pushed(out: &[u8], name: &str) {
    assert_eq!(
        &out[12..14],
        &0x0800u16.to_be_bytes(),
        "{name}: pushed header's type"
    );
}

#[test]
fn layer3_uplink_table() -> Result<()> {
    let mut fx = Fixture::new()?;
    let from_tunnel = |dport: u16| Packet::tcp_syn(TUNNEL_CLIENT, 40000, NODE_IP, dport).build();
    // The test run wants a whole IPv4 header after the 14 bytes it takes for Ethernet.
    let mut truncated = bare_ip(&from_tunnel(8080));
    truncated.truncate(ETH_HLEN + 20);
    // Bytes 12-13 of a packet from 198.51.100.2 are not IPv4's type: the skb's protocol is
    // something else, which the program leaves to the node as it leaves ARP or IPv6.
    let other_protocol = bare_ip(&Packet::tcp_syn(WORLD_IP, 40000, NODE_IP, 8080).build());
    // (name, bare IP packet in, verdict, counter, translated to the container)
    let cases: Vec<(&str, Vec<u8>, u32, Stat, bool)> = vec![
        (
            "published on 0.0.0.0: to the container, Ethernet header pushed",
            bare_ip(&from_tunnel(8080)),
            TC_ACT_REDIRECT,
            Stat::UplinkRedirectDnat,
            true,
        ),
        (
            "not published: the node's, untouched",
            bare_ip(&from_tunnel(22)),
            TC_ACT_OK,
            Stat::UplinkPassNotPublished,
            false,
        ),
        (
            "filtered port, source not allowed: dropped",
            bare_ip(&from_tunnel(8090)),
            TC_ACT_SHOT,
            Stat::UplinkDropFilter,
            false,
        ),
        (
            "cut inside the TCP header: dropped",
            truncated,
            TC_ACT_SHOT,
            Stat::UplinkDropMalformed,
            false,
        ),
        (
            "not IPv4 by the skb's protocol: the node's, untouched",
            other_protocol,
            TC_ACT_OK,
            Stat::UplinkPassNotIpv4,
            false,
        ),
    ];
    for (name, packet, verdict, stat, translated) in &cases {
        let (got, out, moved) = fx.run(UPLINK_L3_PROGRAM, packet).context(*name)?;
        assert_eq!((got, moved), (*verdict, *stat), "{name}");
        if *translated {
            // Compared with the Ethernet frame the packet came from: the same translation
            // as on an Ethernet uplink, with the header the program pushed.
            let mut ethernet = vec![0u8; ETH_HLEN];
            ethernet.extend_from_slice(packet);
            assert_dnat(&out, &ethernet, name);
            assert_ethernet_pushed(&out, name);
        } else {
            assert_eq!(&out, packet, "{name}: packet must pass untouched");
        }
    }
    Ok(())
}

#[test]
fn layer3_uplink_takes_masquerade_replies_to_their_container() -> Result<()> {
    let mut fx = Fixture::new()?;
    // What the container program recorded when 172.17.0.2:45000 reached the tunnel's far
    // end at 8.0.0.1:80, masqueraded to the node's address, port 61000.
    let reply_key = CtKey {
        src_ip_be: u32::from(TUNNEL_CLIENT).to_be(),
        dst_ip_be: u32::from(NODE_IP).to_be(),
        sport_be: 80u16.to_be(),
        dport_be: 61000u16.to_be(),
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    };
    let reply_entry = CtEntry {
        nat_ip_be: u32::from(CONTAINER_IP).to_be(),
        nat_port_be: 45000u16.to_be(),
        direction: CT_REPLY,
        state: CT_NEW,
        last_seen_ns: 0,
        host_veth_ifindex: HOST_VETH_IFINDEX,
        container_mac: CONTAINER_MAC,
        host_veth_mac: HOST_VETH_MAC,
    };
    let mut ct: HashMap<&mut MapData, CtKey, CtEntry> =
        HashMap::try_from(fx.ebpf.map_mut(CONNTRACK).unwrap())?;
    ct.insert(reply_key, reply_entry, 0)?;

    let reply = Packet {
        tcp_flags: 0x12, // SYN-ACK
        ..Packet::tcp_syn(TUNNEL_CLIENT, 80, NODE_IP, 61000)
    }
    .build();
    let (verdict, out, stat) = fx.run(UPLINK_L3_PROGRAM, &bare_ip(&reply))?;
    let name = "masquerade reply";
    assert_eq!(
        (verdict, stat),
        (TC_ACT_REDIRECT, Stat::UplinkRedirectMasqueradeReply),
        "{name}"
    );
    let (o, i) = (View(&out), View(&reply));
    assert_eq!(out.len(), reply.len(), "{name}: one Ethernet header more");
    assert_eq!(
        (o.dst(), o.dport(), o.src(), o.sport()),
        (CONTAINER_IP, 45000, i.src(), i.sport()),
        "{name}"
    );
    assert_eq!(o.ttl(), i.ttl() - 1, "{name}");
    assert_eq!(
        (o.dst_mac(), o.src_mac()),
        (CONTAINER_MAC, HOST_VETH_MAC),
        "{name}"
    );
    assert_ethernet_pushed(&out, name);
    assert!(ipv4_checksum_ok(&out), "{name}: IPv4 checksum");
    assert!(l4_checksum_ok(&out), "{name}: TCP checksum");
    Ok(())
}
