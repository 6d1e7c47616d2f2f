//! IPv6 through the packet programs: crafted frames (extension header chains, fragments,
//! ICMPv6, neighbour discovery, malformed headers) in, verdict, output frame and counter
//! out. What the programs do not translate passes untouched, never dropped; a malformed
//! frame is a counted drop.

use std::net::Ipv6Addr;

use aya::maps::ProgramArray;
use bpfbridge::dataplane::ebpf::CONTAINER6_PROGRAM;
use dataplane_common::{
    BackendKey6, CONTAINER_IPV6_SLOT, CONTAINER_PROGRAMS, FILTER_RULES6, FilterKey6, FlowKey6,
    NAT_FLOWS6, NETWORKS6, NODE_ADDRS6, NatFlow6, NetworkKey6, NodeAddrKey6, PUBLISHED_BACKENDS6,
    PUBLISHED_PORTS6, PortKey6, PortTarget6,
    parse::ipv6::{Parsed6, parse_ipv6},
};

use super::*;

pub(crate) const WORLD_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub(crate) const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub(crate) const CONTAINER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

const ETH_P_IPV6: u16 = 0x86dd;
pub(crate) const IPPROTO_ICMPV6: u8 = 58;
pub(crate) const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
pub(crate) const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_ESP: u8 = 50;
const NEXTHDR_AUTH: u8 = 51;
pub(crate) const NEXTHDR_DEST: u8 = 60;

/// An IPv6 packet to build: addresses, extension headers (kind, bytes; each one's next
/// header is filled in), the upper-layer protocol and its bytes (whose checksum, for TCP,
/// UDP and ICMPv6, is computed over the pseudo-header unless `keep_checksum`).
#[derive(Clone)]
pub(crate) struct Packet6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    pub extensions: Vec<(u8, Vec<u8>)>,
    pub protocol: u8,
    pub upper: Vec<u8>,
    pub keep_checksum: bool,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

impl Packet6 {
    /// A TCP segment with `flags` from `src`:`sport` to `dst`:`dport`, world to node MACs.
    pub fn tcp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, flags: u8) -> Self {
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&dport.to_be_bytes());
        tcp[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
        Self::upper(src, dst, IPPROTO_TCP, tcp)
    }

    /// A UDP datagram with `payload` bytes of data.
    pub fn udp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, payload: usize) -> Self {
        let mut udp = vec![0u8; 8];
        udp[0..2].copy_from_slice(&sport.to_be_bytes());
        udp[2..4].copy_from_slice(&dport.to_be_bytes());
        udp[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        udp.extend((0..payload).map(|i| i as u8));
        Self::upper(src, dst, IPPROTO_UDP, udp)
    }

    /// An ICMPv6 message of `icmp_type` whose body (after the checksum) is `body`.
    pub fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, icmp_type: u8, body: &[u8]) -> Self {
        let mut message = vec![icmp_type, 0, 0, 0];
        message.extend_from_slice(body);
        Self::upper(src, dst, IPPROTO_ICMPV6, message)
    }

    fn upper(src: Ipv6Addr, dst: Ipv6Addr, protocol: u8, upper: Vec<u8>) -> Self {
        Packet6 {
            src,
            dst,
            hop_limit: 64,
            extensions: Vec::new(),
            protocol,
            upper,
            keep_checksum: false,
            src_mac: [0x0a, 0, 0, 0, 0, 0x02],
            dst_mac: [0x0a, 0, 0, 0, 0, 0x01],
        }
    }

    pub fn with_extensions(mut self, extensions: &[(u8, Vec<u8>)]) -> Self {
        self.extensions = extensions.to_vec();
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = self.dst_mac.to_vec();
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 0, 0, self.hop_limit]);
        f.extend_from_slice(&self.src.octets());
        f.extend_from_slice(&self.dst.octets());
        let mut next_at = ETH_HLEN + 6;
        for (kind, header) in &self.extensions {
            f[next_at] = *kind;
            next_at = f.len();
            f.extend_from_slice(header);
        }
        f[next_at] = self.protocol;
        let l4 = f.len();
        f.extend_from_slice(&self.upper);
        let payload_len = (f.len() - ETH_HLEN - 40) as u16;
        f[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&payload_len.to_be_bytes());
        if let Some(at) = checksum_offset(self.protocol).filter(|_| !self.keep_checksum) {
            f[l4 + at..l4 + at + 2].fill(0);
            let check = pseudo_checksum(&self.src, &self.dst, self.protocol, &f[l4..]);
            f[l4 + at..l4 + at + 2].copy_from_slice(&check.to_be_bytes());
        }
        f
    }
}

/// An extension header of `kind` and `len` bytes (a multiple of 8; a fragment header is
/// 8 and takes `frag` as its offset word).
pub(crate) fn extension(kind: u8, len: usize, frag: u16) -> (u8, Vec<u8>) {
    let mut header = vec![0u8; len];
    if kind == NEXTHDR_FRAGMENT {
        header[2..4].copy_from_slice(&frag.to_be_bytes());
        header[4..8].copy_from_slice(&0x0bad_cafeu32.to_be_bytes());
    } else {
        header[1] = (len / 8 - 1) as u8;
        // PadN filling the options, so the kernel would accept them.
        if kind != NEXTHDR_ROUTING && len > 2 {
            header[2] = 1;
            header[3] = (len - 4) as u8;
        }
    }
    (kind, header)
}

fn checksum_offset(protocol: u8) -> Option<usize> {
    match protocol {
        IPPROTO_TCP => Some(16),
        IPPROTO_UDP => Some(6),
        IPPROTO_ICMPV6 => Some(2),
        _ => None,
    }
}

/// The transport checksum over IPv6's pseudo-header and `upper` (big-endian).
pub(crate) fn pseudo_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, protocol: u8, upper: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        for chunk in bytes.chunks(2) {
            sum += u64::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(upper.len() as u32).to_be_bytes());
    add(&[0, 0, 0, protocol]);
    add(upper);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let check = !(sum as u16);
    // UDP sends a computed zero as all ones.
    if protocol == IPPROTO_UDP && check == 0 {
        0xffff
    } else {
        check
    }
}

/// A neighbour solicitation for `target` from the world, to its solicited-node group.
pub(crate) fn neighbour_solicitation(target: Ipv6Addr) -> Packet6 {
    let mut body = vec![0u8; 4];
    body.extend_from_slice(&target.octets());
    body.extend_from_slice(&[1, 1, 0x0a, 0, 0, 0, 0, 0x02]);
    let t = target.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    Packet6 {
        hop_limit: 255,
        dst_mac: [0x33, 0x33, 0xff, t[13], t[14], t[15]],
        ..Packet6::icmp6(
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2),
            group,
            135,
            &body,
        )
    }
}

/// Frames every program passes untouched, with the counter each program gives them.
fn passed_untouched() -> Vec<(&'static str, Vec<u8>, Stat, Stat)> {
    let syn = Packet6::tcp(WORLD_IP6, 40000, NODE_IP6, 8081, SYN);
    let echo = Packet6::icmp6(WORLD_IP6, NODE_IP6, 128, &[0x12, 0x34, 0, 1, 1, 2, 3, 4]);
    let long_chain: Vec<_> = (0..6).map(|_| extension(NEXTHDR_DEST, 8, 0)).collect();
    let passed = |name, frame, uplink, container| (name, frame, uplink, container);
    vec![
        passed(
            "neighbour solicitation",
            neighbour_solicitation(NODE_IP6).build(),
            Stat::UplinkPassNotTcpUdp,
            Stat::ContainerPassIpv6,
        ),
        passed(
            "neighbour advertisement",
            Packet6 {
                hop_limit: 255,
                ..Packet6::icmp6(WORLD_IP6, NODE_IP6, 136, &[0x60, 0, 0, 0])
            }
            .build(),
            Stat::UplinkPassNotTcpUdp,
            Stat::ContainerPassIpv6,
        ),
        passed(
            "router solicitation",
            Packet6::icmp6(WORLD_IP6, "ff02::2".parse().unwrap(), 133, &[0; 4]).build(),
            Stat::UplinkPassNotTcpUdp,
            Stat::ContainerPassIpv6,
        ),
        passed(
            "echo request",
            echo.build(),
            Stat::UplinkPassNotTcpUdp,
            Stat::ContainerPassIpv6,
        ),
        passed(
            "tcp to an unpublished port",
            syn.build(),
            Stat::UplinkPassNotPublished,
            Stat::ContainerPassIpv6,
        ),
        passed(
            "tcp behind hop-by-hop, routing and destination options",
            syn.clone()
                .with_extensions(&[
                    extension(NEXTHDR_HOP, 8, 0),
                    extension(NEXTHDR_ROUTING, 24, 0),
                    extension(NEXTHDR_DEST, 16, 0),
                ])
                .build(),
            Stat::UplinkPassNotPublished,
            Stat::ContainerPassIpv6,
        ),
        passed(
            "a chain longer than the parser walks",
            syn.clone().with_extensions(&long_chain).build(),
            Stat::UplinkPassNotTcpUdp,
            Stat::ContainerPassIpv6,
        ),
        passed(
            "ah",
            Packet6 {
                protocol: NEXTHDR_AUTH,
                ..syn.clone()
            }
            .build(),
            Stat::UplinkPassNotTcpUdp,
            Stat::ContainerPassIpv6,
        ),
        passed(
            "esp",
            Packet6 {
                protocol: NEXTHDR_ESP,
                ..syn.clone()
            }
            .build(),
            Stat::UplinkPassNotTcpUdp,
            Stat::ContainerPassIpv6,
        ),
        passed(
            "later fragment",
            Packet6 {
                keep_checksum: true,
                ..Packet6::udp(WORLD_IP6, 40000, NODE_IP6, 5353, 16)
            }
            .with_extensions(&[extension(NEXTHDR_FRAGMENT, 8, 185 << 3)])
            .build(),
            Stat::UplinkPassFragment,
            Stat::ContainerPassIpv6,
        ),
    ]
}

/// The same frames with their headers broken.
fn malformed() -> Vec<(&'static str, Vec<u8>)> {
    let syn = Packet6::tcp(WORLD_IP6, 40000, NODE_IP6, 8081, SYN)
        .with_extensions(&[extension(NEXTHDR_HOP, 8, 0)])
        .build();
    let mut payload_too_long = syn.clone();
    payload_too_long[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&1400u16.to_be_bytes());
    let mut extension_past_the_end = syn.clone();
    extension_past_the_end[ETH_HLEN + 41] = 100;
    let mut short_tcp = syn.clone();
    short_tcp[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&(8u16 + 12).to_be_bytes());
    let mut version = syn.clone();
    version[ETH_HLEN] = 0x45;
    vec![
        ("payload length past the frame", payload_too_long),
        ("extension header past the payload", extension_past_the_end),
        ("payload too short for tcp", short_tcp),
        ("ip version 4 in an ipv6 frame", version),
    ]
}

#[test]
fn ipv6_not_ours_passes_untouched_and_malformed_is_a_counted_drop() -> Result<()> {
    for program in [UPLINK_PROGRAM, UPLINK_TC_PROGRAM, CONTAINER_PROGRAM] {
        let mut fx = Fixture::new()?;
        for (name, frame, uplink, container) in passed_untouched() {
            let name = format!("{program}: {name}");
            let (verdict, out, stat) = fx.run(program, &frame).context(name.clone())?;
            let expected = match program {
                CONTAINER_PROGRAM => (TC_ACT_OK, container),
                _ => (at_hook(program, XDP_PASS), uplink),
            };
            assert_eq!((verdict, stat), expected, "{name}");
            assert_eq!(out, frame, "{name}: untouched");
        }
        for (name, frame) in malformed() {
            let name = format!("{program}: {name}");
            let (verdict, _, stat) = fx.run(program, &frame).context(name.clone())?;
            let expected = match program {
                CONTAINER_PROGRAM => (TC_ACT_SHOT, Stat::ContainerDropMalformed),
                _ => (at_hook(program, XDP_DROP), Stat::UplinkDropMalformed),
            };
            assert_eq!((verdict, stat), expected, "{name}");
        }
    }
    Ok(())
}

const EXACT_BOUND_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);

impl Fixture {
    /// [`Fixture::new`] with [`Fixture::publish_ipv6_ports`].
    fn with_ipv6_ports() -> Result<Self> {
        let mut fx = Fixture::new()?;
        fx.publish_ipv6_ports()?;
        Ok(fx)
    }

    /// IPv6 published ports: 8080/tcp and 5353/udp on every node address (2001:db8::1),
    /// 9090/tcp on 2001:db8::7 only, 8081/tcp on [::1], all to [fd00::2]:80 (UDP: 53);
    /// source filters on 8080/tcp.
    pub(crate) fn publish_ipv6_ports(&mut self) -> Result<()> {
        let fx = self;
        let mut addrs: HashMap<&mut MapData, NodeAddrKey6, NodeAddr> =
            HashMap::try_from(fx.ebpf.map_mut(NODE_ADDRS6).unwrap())?;
        addrs.insert(
            NodeAddrKey6 {
                addr: NODE_IP6.octets(),
            },
            NodeAddr { ifindex: 2 },
            0,
        )?;
        let mut ports: HashMap<&mut MapData, PortKey6, PortTarget6> =
            HashMap::try_from(fx.ebpf.map_mut(PUBLISHED_PORTS6).unwrap())?;
        for (host_ip, host_port, proto, container_port) in [
            (Ipv6Addr::UNSPECIFIED, 8080u16, IPPROTO_TCP, 80u16),
            (Ipv6Addr::UNSPECIFIED, 5353, IPPROTO_UDP, 53),
            (EXACT_BOUND_IP6, 9090, IPPROTO_TCP, 80),
            (Ipv6Addr::LOCALHOST, 8081, IPPROTO_TCP, 80),
        ] {
            ports.insert(
                PortKey6 {
                    host_ip: host_ip.octets(),
                    host_port_be: host_port.to_be(),
                    proto,
                    _pad: 0,
                },
                PortTarget6 {
                    container_ip: CONTAINER_IP6.octets(),
                    container_port_be: container_port.to_be(),
                    _pad0: 0,
                    host_veth_ifindex: HOST_VETH_IFINDEX,
                    container_mac: CONTAINER_MAC,
                    host_veth_mac: HOST_VETH_MAC,
                },
                0,
            )?;
        }
        // On 8080/tcp only: 2001:db8::/32 allowed but not 2001:db8::66, the rest denied.
        let mut filters: LpmTrie<&mut MapData, FilterKey6, FilterRule> =
            LpmTrie::try_from(fx.ebpf.map_mut(FILTER_RULES6).unwrap())?;
        for (id, (src, len, action)) in [
            ("2001:db8::", 32, FILTER_ALLOW),
            ("2001:db8::66", 128, FILTER_DENY),
            ("::", 0, FILTER_DENY),
        ]
        .into_iter()
        .enumerate()
        {
            let src: Ipv6Addr = src.parse()?;
            let key = FilterKey6 {
                host_port_be: 8080u16.to_be(),
                proto: IPPROTO_TCP,
                _pad: 0,
                src_ip: src.octets(),
            };
            let rule = FilterRule {
                rule_id: 10 + id as u32,
                action,
            };
            filters.insert(&Key::new(FILTER_SCOPE_BITS + len, key), rule, 0)?;
        }
        Ok(())
    }

    pub(crate) fn flows6(&self) -> Result<Vec<(FlowKey6, NatFlow6)>> {
        let flows: HashMap<&MapData, FlowKey6, NatFlow6> =
            HashMap::try_from(self.ebpf.map(NAT_FLOWS6).unwrap())?;
        Ok(flows.iter().collect::<Result<_, _>>()?)
    }
}

/// A parsed view of an IPv6 frame for the assertions: addresses, ports, hop limit, MACs,
/// and whether its transport checksum is right.
pub(crate) struct View6<'a>(pub &'a [u8]);

impl View6<'_> {
    fn addr(&self, at: usize) -> Ipv6Addr {
        let bytes: [u8; 16] = self.0[ETH_HLEN + at..ETH_HLEN + at + 16]
            .try_into()
            .unwrap();
        bytes.into()
    }
    pub(crate) fn src(&self) -> Ipv6Addr {
        self.addr(8)
    }
    pub(crate) fn dst(&self) -> Ipv6Addr {
        self.addr(24)
    }
    pub(crate) fn hop_limit(&self) -> u8 {
        self.0[ETH_HLEN + 7]
    }
    /// Where the transport header starts, past the extension headers (as the parser
    /// walks them).
    fn l4(&self) -> (u8, usize) {
        match parse_ipv6(self.0, self.0.len()) {
            Ok(Parsed6::Transport(ip, _) | Parsed6::OtherProtocol(ip)) => {
                (ip.protocol, ip.l4_offset())
            }
            other => panic!("not an IPv6 packet: {other:?}"),
        }
    }
    pub(crate) fn port(&self, at: usize) -> u16 {
        let l4 = self.l4().1;
        u16::from_be_bytes([self.0[l4 + at], self.0[l4 + at + 1]])
    }
    pub(crate) fn checksum_ok(&self) -> bool {
        let (protocol, l4) = self.l4();
        let upper = &self.0[l4..];
        let mut zeroed = upper.to_vec();
        let at = checksum_offset(protocol).expect("a checksummed protocol");
        zeroed[at..at + 2].fill(0);
        let expected = pseudo_checksum(&self.src(), &self.dst(), protocol, &zeroed);
        upper[at..at + 2] == expected.to_be_bytes()
    }
}

/// The frame was rewritten to [fd00::2]:`port` for the container's veth, and nothing else.
fn assert_dnat6(out: &[u8], input: &[u8], port: u16, name: &str) {
    let (o, i) = (View6(out), View6(input));
    assert_eq!(out.len(), input.len(), "{name}");
    assert_eq!((o.dst(), o.port(2)), (CONTAINER_IP6, port), "{name}");
    assert_eq!(
        (o.src(), o.port(0)),
        (i.src(), i.port(0)),
        "{name}: the container sees the client's real address"
    );
    assert_eq!(o.hop_limit(), i.hop_limit() - 1, "{name}");
    assert_eq!(
        (&out[0..6], &out[6..12]),
        (&CONTAINER_MAC[..], &HOST_VETH_MAC[..]),
        "{name}"
    );
    assert!(o.checksum_ok(), "{name}: transport checksum");
    // Everything between the addresses and the ports is as it was (extension headers).
    let (_, l4) = i.l4();
    assert_eq!(out[ETH_HLEN + 40..l4], input[ETH_HLEN + 40..l4], "{name}");
}

/// A table row: name, frame, XDP verdict, counter, and the container port it is translated
/// to (`None`: untouched).
type Case6 = (&'static str, Vec<u8>, u32, Stat, Option<u16>);

#[test]
fn ipv6_published_ports_table() -> Result<()> {
    let syn = |dst, dport| Packet6::tcp(WORLD_IP6, 40000, dst, dport, SYN);
    let mut zero_checksum = Packet6::udp(WORLD_IP6, 40001, NODE_IP6, 5353, 12).build();
    let udp_l4 = ETH_HLEN + 40;
    zero_checksum[udp_l4 + 6..udp_l4 + 8].fill(0);
    let cases: Vec<Case6> = vec![
        (
            "tcp to a port published on every node address",
            syn(NODE_IP6, 8080).build(),
            XDP_REDIRECT,
            Stat::UplinkRedirectDnat,
            Some(80),
        ),
        (
            "behind hop-by-hop and destination options",
            syn(NODE_IP6, 8080)
                .with_extensions(&[extension(NEXTHDR_HOP, 8, 0), extension(NEXTHDR_DEST, 24, 0)])
                .build(),
            XDP_REDIRECT,
            Stat::UplinkRedirectDnat,
            Some(80),
        ),
        (
            "udp",
            Packet6::udp(WORLD_IP6, 40001, NODE_IP6, 5353, 12).build(),
            XDP_REDIRECT,
            Stat::UplinkRedirectDnat,
            Some(53),
        ),
        (
            "bound to its exact address",
            syn(EXACT_BOUND_IP6, 9090).build(),
            XDP_REDIRECT,
            Stat::UplinkRedirectDnat,
            Some(80),
        ),
        (
            "exact-bound port at another node address",
            syn(NODE_IP6, 9090).build(),
            XDP_PASS,
            Stat::UplinkPassNotPublished,
            None,
        ),
        (
            "a foreign address",
            syn("2001:db8::99".parse()?, 8080).build(),
            XDP_PASS,
            Stat::UplinkPassNotPublished,
            None,
        ),
        (
            "udp to a tcp-only port",
            Packet6::udp(WORLD_IP6, 40001, NODE_IP6, 8080, 12).build(),
            XDP_PASS,
            Stat::UplinkPassNotPublished,
            None,
        ),
        (
            "[::1] from the wire",
            syn(Ipv6Addr::LOCALHOST, 8081).build(),
            XDP_PASS,
            Stat::UplinkPassLoopbackDestination,
            None,
        ),
        (
            "filter: the denied /128",
            Packet6::tcp("2001:db8::66".parse()?, 40000, NODE_IP6, 8080, SYN).build(),
            XDP_DROP,
            Stat::UplinkDropFilter,
            None,
        ),
        (
            "filter: the ::/0 default",
            Packet6::tcp("2001:db9::5".parse()?, 40000, NODE_IP6, 8080, SYN).build(),
            XDP_DROP,
            Stat::UplinkDropFilter,
            None,
        ),
        (
            "filter: other ports unfiltered",
            Packet6::udp("2001:db9::5".parse()?, 40001, NODE_IP6, 5353, 12).build(),
            XDP_REDIRECT,
            Stat::UplinkRedirectDnat,
            Some(53),
        ),
        (
            "udp without a checksum",
            zero_checksum,
            XDP_DROP,
            Stat::UplinkDropUdpZeroChecksum,
            None,
        ),
        (
            "hop limit 1",
            Packet6 {
                hop_limit: 1,
                ..syn(NODE_IP6, 8080)
            }
            .build(),
            XDP_DROP,
            Stat::UplinkDropTtlExpired,
            None,
        ),
    ];
    for program in [UPLINK_PROGRAM, UPLINK_TC_PROGRAM] {
        let mut fx = Fixture::with_ipv6_ports()?;
        for (name, frame, verdict, stat, translated) in &cases {
            let name = format!("{program}: {name}");
            let (got, out, moved) = fx.run(program, frame).context(name.clone())?;
            assert_eq!((got, moved), (at_hook(program, *verdict), *stat), "{name}");
            match translated {
                Some(port) => assert_dnat6(&out, frame, *port, &name),
                None => assert_eq!(&out, frame, "{name}: untouched"),
            }
        }
        // One flow per client port and protocol, keyed as the container sees it, the
        // client's address kept, not yet answered.
        let mut flows = fx.flows6()?;
        flows.sort_by_key(|(key, _)| (key.proto, key.container_port_be, key.remote_ip));
        let seen: Vec<_> = flows
            .iter()
            .map(|(k, f)| {
                (
                    Ipv6Addr::from(k.container_ip),
                    u16::from_be(k.container_port_be),
                    Ipv6Addr::from(k.remote_ip),
                    u16::from_be(k.remote_port_be),
                    k.proto,
                    Ipv6Addr::from(f.frontend_ip),
                    f.state,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (
                    CONTAINER_IP6,
                    80,
                    WORLD_IP6,
                    40000,
                    IPPROTO_TCP,
                    EXACT_BOUND_IP6,
                    CT_NEW
                ),
                (
                    CONTAINER_IP6,
                    53,
                    WORLD_IP6,
                    40001,
                    IPPROTO_UDP,
                    NODE_IP6,
                    CT_NEW
                ),
                (
                    CONTAINER_IP6,
                    53,
                    "2001:db9::5".parse()?,
                    40001,
                    IPPROTO_UDP,
                    NODE_IP6,
                    CT_NEW
                ),
            ],
            "{program}: the last SYN's frontend is the exact-bound address"
        );
        assert_eq!(
            flows[0].1.packets, 3,
            "{program}: three SYNs of the same flow"
        );
    }
    Ok(())
}

/// [`forwarding_namespace`] with IPv6: 2001:db8::1/64 on `up0`, the world 2001:db8::2 a
/// known neighbour, forwarding on.
pub(crate) fn forwarding_namespace6() -> Result<Netns> {
    let ns = forwarding_namespace()?;
    ns.exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])?;
    ns.ip(&["addr", "add", "2001:db8::1/64", "dev", "up0", "nodad"])?;
    ns.ip(&[
        "neigh",
        "add",
        "2001:db8::2",
        "lladdr",
        "0a:00:00:00:00:02",
        "dev",
        "up0",
        "nud",
        "permanent",
    ])?;
    Ok(ns)
}

#[test]
fn ipv6_replies_leave_from_the_published_address() -> Result<()> {
    let ns = forwarding_namespace6()?;
    ns.run(|| -> Result<()> {
        let mut fx = Fixture::with_ipv6_ports()?;
        for (protocol, published, container_port) in
            [(IPPROTO_TCP, 8080u16, 80u16), (IPPROTO_UDP, 5353, 53)]
        {
            let opening = match protocol {
                IPPROTO_TCP => Packet6::tcp(WORLD_IP6, 40000, NODE_IP6, published, SYN),
                _ => Packet6::udp(WORLD_IP6, 40000, NODE_IP6, published, 12),
            };
            let (verdict, _, stat) = fx.run(UPLINK_PROGRAM, &opening.build())?;
            assert_eq!((verdict, stat), (XDP_REDIRECT, Stat::UplinkRedirectDnat));
            let answer = match protocol {
                IPPROTO_TCP => {
                    Packet6::tcp(CONTAINER_IP6, container_port, WORLD_IP6, 40000, SYN_ACK)
                }
                _ => Packet6::udp(CONTAINER_IP6, container_port, WORLD_IP6, 40000, 30),
            };
            let reply = Packet6 {
                src_mac: CONTAINER_MAC,
                dst_mac: HOST_VETH_MAC,
                ..answer
            }
            .build();
            let (verdict, out, stat) = fx.run(CONTAINER_PROGRAM, &reply)?;
            let name = format!("protocol {protocol}");
            assert_eq!(
                (verdict, stat),
                (TC_ACT_REDIRECT, Stat::ContainerRedirectReply),
                "{name}"
            );
            let o = View6(&out);
            assert_eq!((o.src(), o.port(0)), (NODE_IP6, published), "{name}");
            assert_eq!((o.dst(), o.port(2)), (WORLD_IP6, 40000), "{name}");
            assert_eq!(o.hop_limit(), 63, "{name}");
            assert_eq!(
                &out[0..6],
                &[0x0a, 0, 0, 0, 0, 0x02],
                "{name}: the neighbour's MAC"
            );
            assert_eq!(&out[6..12], &[0x0a, 0, 0, 0, 0, 0x01], "{name}");
            assert!(o.checksum_ok(), "{name}: transport checksum");
        }
        let states: Vec<_> = fx
            .flows6()?
            .iter()
            .map(|(k, f)| (k.proto, f.state))
            .collect();
        assert!(
            states.contains(&(IPPROTO_TCP, CT_REPLIED))
                && states.contains(&(IPPROTO_UDP, CT_ESTABLISHED)),
            "answered: {states:?}"
        );
        // A container's own traffic that is no reply passes untouched.
        let other = Packet6 {
            src_mac: CONTAINER_MAC,
            dst_mac: HOST_VETH_MAC,
            ..Packet6::tcp(CONTAINER_IP6, 5000, WORLD_IP6, 443, SYN)
        }
        .build();
        let (verdict, out, stat) = fx.run(CONTAINER_PROGRAM, &other)?;
        assert_eq!(
            (verdict, stat, out),
            (TC_ACT_OK, Stat::ContainerPassIpv6, other)
        );
        Ok(())
    })
}

#[test]
fn ipv6_policy_table() -> Result<()> {
    let mut fx = Fixture::with_ipv6_ports()?;
    let mut trie: LpmTrie<&mut MapData, NetworkKey6, NetworkInfo> =
        LpmTrie::try_from(fx.ebpf.map_mut(NETWORKS6).unwrap())?;
    for (index, (subnet, flags)) in [
        ("fd00::", NETWORK_ICC | NETWORK_MASQUERADE),
        ("fd01::", NETWORK_MASQUERADE),
        ("fd02::", NETWORK_ICC | NETWORK_INTERNAL),
        ("fd03::", NETWORK_ICC),
    ]
    .into_iter()
    .enumerate()
    {
        let addr: Ipv6Addr = subnet.parse()?;
        let info = NetworkInfo {
            index: index as u32 + 1,
            flags,
        };
        trie.insert(
            &Key::new(
                64,
                NetworkKey6 {
                    addr: addr.octets(),
                },
            ),
            info,
            0,
        )?;
    }
    let from = |src: &str, dst: &str| -> Result<Vec<u8>> {
        Ok(Packet6 {
            src_mac: CONTAINER_MAC,
            dst_mac: HOST_VETH_MAC,
            ..Packet6::tcp(src.parse()?, 5000, dst.parse()?, 80, SYN)
        }
        .build())
    };
    let solicitation = Packet6 {
        src: "fd01::2".parse()?,
        src_mac: CONTAINER_MAC,
        ..neighbour_solicitation("fd01::3".parse()?)
    }
    .build();
    let cases = [
        (
            "same network, icc",
            from("fd00::2", "fd00::3")?,
            TC_ACT_OK,
            Stat::ContainerPassSameNetwork,
        ),
        (
            "another network",
            from("fd00::2", "fd01::3")?,
            TC_ACT_SHOT,
            Stat::ContainerDropIsolation,
        ),
        (
            "same network, icc=false",
            from("fd01::2", "fd01::3")?,
            TC_ACT_SHOT,
            Stat::ContainerDropPolicyIcc,
        ),
        (
            "link-local, icc=false",
            from("fd01::2", "fe80::3")?,
            TC_ACT_SHOT,
            Stat::ContainerDropPolicyIcc,
        ),
        (
            "neighbour solicitation, icc=false",
            solicitation,
            TC_ACT_OK,
            Stat::ContainerPassToNode,
        ),
        (
            "a node address",
            from("fd01::2", "2001:db8::1")?,
            TC_ACT_OK,
            Stat::ContainerPassToNode,
        ),
        (
            "internal network to the outside",
            from("fd02::2", "2001:db8::2")?,
            TC_ACT_SHOT,
            Stat::ContainerDropInternal,
        ),
        (
            "to the outside, routed",
            from("fd03::2", "2001:db8::2")?,
            TC_ACT_OK,
            Stat::ContainerPassOutside,
        ),
        (
            "a sender on no network",
            from("2001:db8::99", "fd00::3")?,
            TC_ACT_OK,
            Stat::ContainerPassIpv6,
        ),
    ];
    for (name, frame, verdict, stat) in cases {
        let (got, out, moved) = fx.run(CONTAINER_PROGRAM, &frame).context(name)?;
        assert_eq!((got, moved), (verdict, stat), "{name}");
        assert_eq!(out, frame, "{name}: untouched");
    }
    Ok(())
}

/// `container_ingress` hands IPv6 to `container_ingress6` by tail call; a frame of
/// another type stays with it; with the program array's slot empty, IPv6 is a counted
/// drop, never passed without the IPv6 policy.
#[test]
fn ipv6_reaches_its_program_by_tail_call_or_is_a_counted_drop() -> Result<()> {
    let mut fx = Fixture::new()?;
    let solicitation = neighbour_solicitation(CONTAINER_IP6).build();
    let (verdict, out, stat) = fx.run(CONTAINER_PROGRAM, &solicitation)?;
    assert_eq!(
        (verdict, stat),
        (TC_ACT_OK, Stat::ContainerPassIpv6),
        "counted by container_ingress6's parser"
    );
    assert_eq!(out, solicitation);
    let (verdict, _, stat) = fx.run(CONTAINER6_PROGRAM, &solicitation)?;
    assert_eq!((verdict, stat), (TC_ACT_OK, Stat::ContainerPassIpv6));
    let mut arp = solicitation.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let (verdict, _, stat) = fx.run(CONTAINER_PROGRAM, &arp)?;
    assert_eq!((verdict, stat), (TC_ACT_OK, Stat::ContainerPassNotIpv4));

    let mut slots: ProgramArray<&mut MapData> =
        ProgramArray::try_from(fx.ebpf.map_mut(CONTAINER_PROGRAMS).unwrap())?;
    slots.clear_index(&CONTAINER_IPV6_SLOT)?;
    let (verdict, _, stat) = fx.run(CONTAINER_PROGRAM, &solicitation)?;
    assert_eq!(
        (verdict, stat),
        (TC_ACT_SHOT, Stat::ContainerDropIpv6ProgramMissing)
    );
    let (verdict, _, stat) = fx.run(CONTAINER_PROGRAM, &arp)?;
    assert_eq!((verdict, stat), (TC_ACT_OK, Stat::ContainerPassNotIpv4));
    Ok(())
}

/// Docker 28's direct access for IPv6 on the uplink, as ip6tables' raw-table drop and
/// Docker's FORWARD rules decide: on a `nat` network nothing from the outside reaches a
/// container's own address (a published container port, ICMPv6 or an echo reply included:
/// handed to the masquerade program, which finds no flow), counted; in `routed` mode the
/// published container ports, ICMPv6 and the replies of the container's own flows do, an
/// unpublished port does not; from a trusted interface the published container ports do,
/// and the container's answers leave untranslated though its network masquerades;
/// `nat-unprotected`, the gateway and addresses on no network pass; the published port
/// through the node's address is translated as ever.
#[test]
fn ipv6_direct_access_table() -> Result<()> {
    const ICMPV6_ECHO_REQUEST: u8 = 128;
    const ICMPV6_ECHO_REPLY: u8 = 129;
    let gateway: Ipv6Addr = "fd00::1".parse()?;
    let address = |subnet: u16| Ipv6Addr::new(0xfd00, subnet, 0, 0, 0, 0, 0, 2);
    let (routed, unprotected, trusted) = (address(1), address(2), address(4));
    let syn = |dst, dport| Packet6::tcp(WORLD_IP6, 40000, dst, dport, SYN).build();
    let echo = |dst, icmp_type| Packet6::icmp6(WORLD_IP6, dst, icmp_type, &[0, 7, 0, 1]).build();
    let from_container = |src, sport, flags| Packet6 {
        src_mac: CONTAINER_MAC,
        dst_mac: HOST_VETH_MAC,
        ..Packet6::tcp(src, sport, WORLD_IP6, 40000, flags)
    };
    let drop = (XDP_DROP, Stat::UplinkDropDirectAccess);
    let pass = (XDP_PASS, Stat::UplinkPassNotPublished);
    let pass_icmp = (XDP_PASS, Stat::UplinkPassNotTcpUdp);
    // (name, program, frame, expected), in order: a container's packet first where the
    // uplink's verdict depends on the flow it opens.
    type Case = (&'static str, &'static str, Vec<u8>, (u32, Stat));
    let cases: Vec<Case> = vec![
        (
            "nat: a published container port",
            UPLINK_PROGRAM,
            syn(CONTAINER_IP6, 80),
            drop,
        ),
        (
            "nat: an unpublished port",
            UPLINK_PROGRAM,
            syn(CONTAINER_IP6, 22),
            drop,
        ),
        (
            "nat: udp",
            UPLINK_PROGRAM,
            Packet6::udp(WORLD_IP6, 40001, CONTAINER_IP6, 53, 12).build(),
            drop,
        ),
        (
            "nat: an echo request",
            UPLINK_PROGRAM,
            echo(CONTAINER_IP6, ICMPV6_ECHO_REQUEST),
            drop,
        ),
        (
            "nat: a stray echo reply",
            UPLINK_PROGRAM,
            echo(CONTAINER_IP6, ICMPV6_ECHO_REPLY),
            drop,
        ),
        (
            "nat: the gateway, a node address",
            UPLINK_PROGRAM,
            syn(gateway, 22),
            pass,
        ),
        ("internal", UPLINK_PROGRAM, syn(address(3), 80), drop),
        (
            "routed: a published container port",
            UPLINK_PROGRAM,
            syn(routed, 80),
            pass,
        ),
        (
            "routed: an unpublished port",
            UPLINK_PROGRAM,
            syn(routed, 22),
            drop,
        ),
        (
            "routed: an echo request",
            UPLINK_PROGRAM,
            echo(routed, ICMPV6_ECHO_REQUEST),
            pass_icmp,
        ),
        (
            "routed: the echo reply of the container's ping",
            UPLINK_PROGRAM,
            echo(routed, ICMPV6_ECHO_REPLY),
            pass_icmp,
        ),
        (
            "routed: the container opens a flow, with its own address",
            CONTAINER_PROGRAM,
            from_container(routed, 5555, SYN).build(),
            (TC_ACT_OK, Stat::ContainerPassOutside),
        ),
        (
            "routed: the reply of the flow the container opened",
            UPLINK_PROGRAM,
            Packet6::tcp(WORLD_IP6, 40000, routed, 5555, SYN_ACK).build(),
            pass,
        ),
        (
            "routed: the same port from another remote port",
            UPLINK_PROGRAM,
            Packet6::tcp(WORLD_IP6, 40001, routed, 5555, SYN).build(),
            drop,
        ),
        (
            "nat-unprotected: any port",
            UPLINK_PROGRAM,
            syn(unprotected, 22),
            pass,
        ),
        (
            "nat-unprotected: an echo request",
            UPLINK_PROGRAM,
            echo(unprotected, ICMPV6_ECHO_REQUEST),
            pass_icmp,
        ),
        (
            "nat, from a trusted interface: a published container port",
            UPLINK_PROGRAM,
            syn(trusted, 80),
            pass,
        ),
        (
            "nat, from a trusted interface: the container's answer leaves untranslated",
            CONTAINER_PROGRAM,
            from_container(trusted, 80, SYN_ACK).build(),
            (TC_ACT_OK, Stat::ContainerPassOutside),
        ),
        (
            "nat, from a trusted interface: an unpublished port",
            UPLINK_PROGRAM,
            syn(trusted, 22),
            drop,
        ),
        (
            "on no network",
            UPLINK_PROGRAM,
            syn("2001:db8::99".parse()?, 22),
            pass,
        ),
        (
            "the published port through the node",
            UPLINK_PROGRAM,
            syn(NODE_IP6, 8080),
            (XDP_REDIRECT, Stat::UplinkRedirectDnat),
        ),
    ];
    let mut fx = Fixture::with_ipv6_ports()?;
    {
        let mut trie: LpmTrie<&mut MapData, NetworkKey6, NetworkInfo> =
            LpmTrie::try_from(fx.ebpf.map_mut(NETWORKS6).unwrap())?;
        for (subnet, flags) in [
            (0, NETWORK_ICC | NETWORK_MASQUERADE),
            (
                1,
                NETWORK_ICC | NETWORK_DIRECT_PUBLISHED | NETWORK_DIRECT_ICMP,
            ),
            (2, NETWORK_ICC | NETWORK_MASQUERADE | NETWORK_DIRECT_ANY),
            (3, NETWORK_ICC | NETWORK_INTERNAL),
            (4, NETWORK_ICC | NETWORK_MASQUERADE),
        ] {
            let addr = Ipv6Addr::new(0xfd00, subnet, 0, 0, 0, 0, 0, 0).octets();
            let info = NetworkInfo {
                index: u32::from(subnet) + 1,
                flags,
            };
            trie.insert(&Key::new(64, NetworkKey6 { addr }), info, 0)?;
        }
        let mut addrs: HashMap<&mut MapData, NodeAddrKey6, NodeAddr> =
            HashMap::try_from(fx.ebpf.map_mut(NODE_ADDRS6).unwrap())?;
        let key = NodeAddrKey6 {
            addr: gateway.octets(),
        };
        addrs.insert(key, NodeAddr { ifindex: 3 }, 0)?;
        // Port 80/tcp of every container is published (the agent records it so); 22 is not.
        let mut backends: HashMap<&mut MapData, BackendKey6, u32> =
            HashMap::try_from(fx.ebpf.map_mut(PUBLISHED_BACKENDS6).unwrap())?;
        for ip in [CONTAINER_IP6, routed, unprotected, trusted] {
            let key = BackendKey6 {
                container_ip: ip.octets(),
                container_port_be: 80u16.to_be(),
                proto: IPPROTO_TCP,
                _pad: 0,
            };
            backends.insert(key, 1, 0)?;
        }
        // BPF_PROG_TEST_RUN hands an XDP program its frame from loopback (ifindex 1):
        // trusted for the fifth network.
        let mut trusted: HashMap<&mut MapData, TrustedIfaceKey, u32> =
            HashMap::try_from(fx.ebpf.map_mut(TRUSTED_IFACES).unwrap())?;
        let key = TrustedIfaceKey {
            network_index: 5,
            ifindex: 1,
        };
        trusted.insert(key, 1, 0)?;
    }
    let before = fx.counters()?[Stat::UplinkDropDirectAccess as usize];
    for (name, program, frame, expected) in &cases {
        let (got, out, moved) = fx.run(program, frame).context(*name)?;
        assert_eq!((got, moved), *expected, "{name}");
        if got != XDP_REDIRECT {
            assert_eq!(&out, frame, "{name}: untouched");
        }
    }
    let dropped = fx.counters()?[Stat::UplinkDropDirectAccess as usize] - before;
    let drops = cases.iter().filter(|case| case.3 == drop).count();
    assert_eq!(dropped, drops as u64, "every drop counted");
    Ok(())
}
