//! The IPv6 half of the parser: the fixed header, the extension headers (hop-by-hop,
//! routing, destination options, fragment) walked in a bounded loop, TCP/UDP through the
//! transport code IPv4 uses, ICMPv6 echoes and errors with the packet they quote.
//!
//! What the parser does not walk it does not reject: an AH or ESP header, a chain longer
//! than [`MAX_EXTENSION_HEADERS`], a payload length of 0 (a jumbogram, or a BIG TCP packet
//! the stack built), neighbour discovery and every other ICMPv6 message come back as
//! [`Parsed6::OtherProtocol`], which the programs pass untouched. Only a packet whose own
//! lengths contradict each other is [`Malformed`].

use super::{
    ETH_HLEN, Frame, ICMP_CHECK_OFF, ICMP_HLEN, ICMP_QUOTED_L4, IcmpError, L4, Malformed, Quoted,
    echo_flow, quoted_ports, transport,
};
use crate::maps::IPPROTO_ICMPV6;

pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPV6_HLEN: usize = 40;
/// Offsets inside the IPv6 header.
pub const IPV6_PAYLOAD_LEN_OFF: usize = 4;
pub const IPV6_NEXT_HEADER_OFF: usize = 6;
pub const IPV6_HOP_LIMIT_OFF: usize = 7;
pub const IPV6_SRC_OFF: usize = 8;
pub const IPV6_DST_OFF: usize = 24;

/// Extension headers the parser walks (RFC 8200's order puts the transport header after
/// at most hop-by-hop, destination options, routing, fragment and destination options
/// again; more is passed unparsed). A bound the BPF verifier can see.
pub const MAX_EXTENSION_HEADERS: usize = 5;

/// Next-header values.
pub const NEXTHDR_HOP: u8 = 0;
pub const NEXTHDR_ROUTING: u8 = 43;
pub const NEXTHDR_FRAGMENT: u8 = 44;
pub const NEXTHDR_ESP: u8 = 50;
pub const NEXTHDR_AUTH: u8 = 51;
pub const NEXTHDR_NONE: u8 = 59;
pub const NEXTHDR_DEST: u8 = 60;
/// The fragment header's length; the other extension headers give theirs in 8-byte units.
pub const FRAGMENT_HLEN: usize = 8;

/// ICMPv6 types the programs act on (RFC 4443).
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
pub const ICMPV6_PARAMETER_PROBLEM: u8 = 4;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// In the fragment header's offset word (host order): "more fragments", and the offset,
/// already in bytes (8-byte units shifted left by 3).
const FRAGMENT_MORE: u16 = 0x0001;
const FRAGMENT_OFFSET_MASK: u16 = 0xfff8;

/// What the parser found in an IPv6 frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed6 {
    /// Not an IPv6 frame: for [`super::parse`] to look at.
    NotIpv6,
    /// A fragment after the first: no transport header (the first fragment is parsed like
    /// a whole packet, its [`Ipv6::is_first_fragment`] set).
    Fragment(Ipv6),
    /// A well-formed packet that is not TCP or UDP, or one the parser does not walk into
    /// (AH, ESP, a long extension chain, a jumbogram): ICMPv6, neighbour discovery
    /// included, is here.
    OtherProtocol(Ipv6),
    /// TCP or UDP with a complete transport header.
    Transport(Ipv6, L4),
}

/// The IPv6 facts the programs need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6 {
    /// From the IPv6 header to the transport header: 40 bytes and the extension headers.
    pub header_len: usize,
    /// The payload length field: the packet is 40 bytes longer.
    pub payload_len: u16,
    pub hop_limit: u8,
    /// The transport protocol; where the walk stopped, the next header it stopped at.
    pub protocol: u8,
    /// The addresses in memory order.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// The fragment header's identification in memory order (0 without one): with the
    /// addresses, it names the datagram a fragment belongs to.
    pub id_be: u32,
    /// The fragment header's offset word in host order (0 without one).
    pub frag: u16,
}

impl Ipv6 {
    /// Offset of the transport header in the frame.
    #[inline(always)]
    pub fn l4_offset(&self) -> usize {
        ETH_HLEN + self.header_len
    }

    /// Where the packet ends in the frame (Ethernet padding may follow).
    #[inline(always)]
    pub fn end(&self) -> usize {
        ETH_HLEN + IPV6_HLEN + usize::from(self.payload_len)
    }

    /// More fragments of this datagram follow.
    #[inline(always)]
    pub fn more_fragments(&self) -> bool {
        self.frag & FRAGMENT_MORE != 0
    }

    /// Where this fragment's data starts in the datagram, in bytes.
    #[inline(always)]
    pub fn fragment_offset(&self) -> usize {
        usize::from(self.frag & FRAGMENT_OFFSET_MASK)
    }

    /// Part of a fragmented datagram (the first fragment included; an atomic fragment,
    /// RFC 6946, is a whole packet).
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.more_fragments() || self.fragment_offset() != 0
    }

    /// The first fragment of a fragmented datagram: the one with the transport header.
    #[inline(always)]
    pub fn is_first_fragment(&self) -> bool {
        self.more_fragments() && self.fragment_offset() == 0
    }
}

/// Where a walk of extension headers ended.
struct Walked {
    /// Offset in the frame of the header after the extension headers walked.
    offset: usize,
    /// The next-header value that names it.
    next: u8,
    id_be: u32,
    frag: u16,
}

/// Walks the extension headers from `offset` (named by `next`) in a packet that ends at
/// `end`, at most [`MAX_EXTENSION_HEADERS`] of them. Stops at the first header that is
/// not hop-by-hop, routing, destination options or fragment, and after the fragment header
/// of a fragment other than the first (what follows it is data).
#[inline(always)]
fn walk<F: Frame + ?Sized>(
    frame: &F,
    mut offset: usize,
    mut next: u8,
    end: usize,
) -> Result<Walked, Malformed> {
    let mut id_be = 0;
    let mut frag = 0;
    for _ in 0..MAX_EXTENSION_HEADERS {
        let len = match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                if offset + 2 > end {
                    return Err(Malformed::BadExtensionHeader);
                }
                let header: [u8; 2] = frame.load(offset).ok_or(Malformed::Truncated)?;
                next = header[0];
                (usize::from(header[1]) + 1) * 8
            }
            NEXTHDR_FRAGMENT => {
                if offset + FRAGMENT_HLEN > end {
                    return Err(Malformed::BadExtensionHeader);
                }
                let header: [u8; FRAGMENT_HLEN] = frame.load(offset).ok_or(Malformed::Truncated)?;
                next = header[0];
                frag = u16::from_be_bytes([header[2], header[3]]);
                id_be = u32::from_ne_bytes([header[4], header[5], header[6], header[7]]);
                FRAGMENT_HLEN
            }
            _ => break,
        };
        if offset + len > end {
            return Err(Malformed::BadExtensionHeader);
        }
        // The whole header must be inside the frame too, as IPv4's options must.
        frame
            .load::<u8>(offset + len - 1)
            .ok_or(Malformed::Truncated)?;
        offset += len;
        if frag & FRAGMENT_OFFSET_MASK != 0 {
            break;
        }
    }
    Ok(Walked {
        offset,
        next,
        id_be,
        frag,
    })
}

/// Parses the Ethernet, IPv6, extension and TCP/UDP headers of `frame`, whose length is
/// `frame_len`.
#[inline(always)]
pub fn parse_ipv6<F: Frame + ?Sized>(frame: &F, frame_len: usize) -> Result<Parsed6, Malformed> {
    let ethertype: u16 = frame
        .load::<[u8; 2]>(12)
        .map(u16::from_be_bytes)
        .ok_or(Malformed::Truncated)?;
    if ethertype != ETH_P_IPV6 {
        return Ok(Parsed6::NotIpv6);
    }
    let fixed: [u8; IPV6_HLEN] = frame.load(ETH_HLEN).ok_or(Malformed::Truncated)?;
    if fixed[0] >> 4 != 6 {
        return Err(Malformed::BadVersion);
    }
    let payload_len =
        u16::from_be_bytes([fixed[IPV6_PAYLOAD_LEN_OFF], fixed[IPV6_PAYLOAD_LEN_OFF + 1]]);
    if IPV6_HLEN + usize::from(payload_len) > frame_len.saturating_sub(ETH_HLEN) {
        return Err(Malformed::BadTotalLength);
    }
    let mut ip = ipv6_of(&fixed);
    // A jumbogram's length is in a hop-by-hop option: not ours to walk.
    if payload_len == 0 {
        return Ok(Parsed6::OtherProtocol(ip));
    }
    let walked = walk(frame, ETH_HLEN + IPV6_HLEN, ip.protocol, ip.end())?;
    ip.header_len = walked.offset - ETH_HLEN;
    ip.protocol = walked.next;
    ip.id_be = walked.id_be;
    ip.frag = walked.frag;
    if ip.fragment_offset() != 0 {
        return Ok(Parsed6::Fragment(ip));
    }
    let payload = ip.end() - walked.offset;
    Ok(
        match transport(frame, ip.l4_offset(), payload, ip.protocol)? {
            Some(l4) => Parsed6::Transport(ip, l4),
            None => Parsed6::OtherProtocol(ip),
        },
    )
}

/// The address at `at` (source or destination offset) of a fixed IPv6 header.
#[inline(always)]
fn address_at(fixed: &[u8; IPV6_HLEN], at: usize) -> [u8; 16] {
    let mut address = [0u8; 16];
    address.copy_from_slice(&fixed[at..at + 16]);
    address
}

/// The facts of a fixed IPv6 header, before its extension headers are walked.
#[inline(always)]
fn ipv6_of(fixed: &[u8; IPV6_HLEN]) -> Ipv6 {
    let src = address_at(fixed, IPV6_SRC_OFF);
    let dst = address_at(fixed, IPV6_DST_OFF);
    Ipv6 {
        header_len: IPV6_HLEN,
        payload_len: u16::from_be_bytes([
            fixed[IPV6_PAYLOAD_LEN_OFF],
            fixed[IPV6_PAYLOAD_LEN_OFF + 1],
        ]),
        hop_limit: fixed[IPV6_HOP_LIMIT_OFF],
        protocol: fixed[IPV6_NEXT_HEADER_OFF],
        src,
        dst,
        id_be: 0,
        frag: 0,
    }
}

/// An ICMPv6 echo request (`request`) or reply seen as a flow, as [`super::icmp_echo`]
/// sees ICMP's. ICMPv6's checksum covers a pseudo-header: address changes update it.
#[inline(always)]
pub fn icmp6_echo<F: Frame + ?Sized>(frame: &F, ip: &Ipv6, request: bool) -> Option<L4> {
    // A fragment after the first starts with data, not with an ICMPv6 header.
    if ip.protocol != IPPROTO_ICMPV6
        || ip.fragment_offset() != 0
        || ip.l4_offset() + ICMP_HLEN > ip.end()
    {
        return None;
    }
    let wanted = if request {
        ICMPV6_ECHO_REQUEST
    } else {
        ICMPV6_ECHO_REPLY
    };
    echo_flow(frame, ip.l4_offset(), wanted, request)
}

/// Parses an ICMPv6 error (destination unreachable, packet too big, time exceeded,
/// parameter problem) and the packet it quotes, whose extension headers are walked as a
/// packet's are. `None`: not such an error, or one whose quote is too short, malformed, or
/// not a TCP, UDP or ICMPv6 echo packet with ports (a fragment after the first has none).
#[inline(always)]
pub fn icmp6_error<F: Frame + ?Sized>(frame: &F, ip: &Ipv6) -> Option<IcmpError<[u8; 16]>> {
    if ip.protocol != IPPROTO_ICMPV6 || ip.is_fragment() {
        return None;
    }
    let icmp = ip.l4_offset();
    let header: [u8; ICMP_HLEN] = frame.load(icmp)?;
    let icmp_type = header[0];
    if !(ICMPV6_DEST_UNREACH..=ICMPV6_PARAMETER_PROBLEM).contains(&icmp_type) {
        return None;
    }
    let offset = icmp + ICMP_HLEN;
    // All of the quote must lie inside the ICMPv6 message, not only inside the frame.
    if offset + IPV6_HLEN > ip.end() {
        return None;
    }
    let fixed: [u8; IPV6_HLEN] = frame.load(offset)?;
    if fixed[0] >> 4 != 6 {
        return None;
    }
    let walked = walk(
        frame,
        offset + IPV6_HLEN,
        fixed[IPV6_NEXT_HEADER_OFF],
        ip.end(),
    )
    .ok()?;
    if walked.frag & FRAGMENT_OFFSET_MASK != 0 || walked.offset + ICMP_QUOTED_L4 > ip.end() {
        return None;
    }
    let (sport_be, dport_be, l4_check) = quoted_ports(
        frame,
        walked.offset,
        walked.next,
        IPPROTO_ICMPV6,
        ICMPV6_ECHO_REQUEST,
    )?;
    Some(IcmpError {
        icmp_type,
        code: header[1],
        check: u16::from_ne_bytes([header[ICMP_CHECK_OFF], header[ICMP_CHECK_OFF + 1]]),
        check_offset: icmp + ICMP_CHECK_OFF,
        quoted: Quoted {
            offset,
            header_len: walked.offset - offset,
            protocol: walked.next,
            src_be: address_at(&fixed, IPV6_SRC_OFF),
            dst_be: address_at(&fixed, IPV6_DST_OFF),
            ip_check: 0,
            sport_be,
            dport_be,
            l4_check,
        },
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        maps::{IPPROTO_TCP, IPPROTO_UDP},
        parse::{L4_DPORT_OFF, TCP_CHECK_OFF, UDP_CHECK_OFF},
    };

    pub(crate) const CLIENT: [u8; 16] =
        [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    pub(crate) const NODE: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

    /// An extension header of kind `next_header` (whose own next header is filled in by
    /// [`packet`]) with `len` bytes in all; a fragment header takes `frag` as its offset word.
    pub(crate) fn extension(kind: u8, len: usize, frag: u16) -> (u8, Vec<u8>) {
        let mut header = vec![0u8; len];
        if kind == NEXTHDR_FRAGMENT {
            header[2..4].copy_from_slice(&frag.to_be_bytes());
            header[4..8].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        } else {
            header[1] = (len / 8 - 1) as u8;
        }
        (kind, header)
    }

    /// An IPv6 packet in an Ethernet frame from [`CLIENT`] to [`NODE`]: `extensions`, then
    /// `payload` of `protocol`.
    pub(crate) fn packet(extensions: &[(u8, Vec<u8>)], protocol: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; ETH_HLEN + IPV6_HLEN];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        let ip = &mut f[ETH_HLEN..];
        ip[0] = 0x60;
        ip[IPV6_HOP_LIMIT_OFF] = 64;
        ip[IPV6_SRC_OFF..IPV6_SRC_OFF + 16].copy_from_slice(&CLIENT);
        ip[IPV6_DST_OFF..IPV6_DST_OFF + 16].copy_from_slice(&NODE);
        let mut next_at = ETH_HLEN + IPV6_NEXT_HEADER_OFF;
        for (kind, header) in extensions {
            f[next_at] = *kind;
            next_at = f.len();
            f.extend_from_slice(header);
        }
        f[next_at] = protocol;
        f.extend_from_slice(payload);
        let payload_len = (f.len() - ETH_HLEN - IPV6_HLEN) as u16;
        f[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&payload_len.to_be_bytes());
        f
    }

    /// A TCP SYN header from port 40000 to 8080.
    pub(crate) fn tcp_syn() -> Vec<u8> {
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&8080u16.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x02;
        tcp
    }

    fn parsed(f: &[u8]) -> Result<Parsed6, Malformed> {
        parse_ipv6(f, f.len())
    }

    #[test]
    fn parses_tcp_behind_every_walked_extension_header() {
        let chains: [&[(u8, usize)]; 5] = [
            &[],
            &[(NEXTHDR_HOP, 8)],
            &[(NEXTHDR_HOP, 8), (NEXTHDR_DEST, 16), (NEXTHDR_ROUTING, 24)],
            &[(NEXTHDR_DEST, 8), (NEXTHDR_ROUTING, 8), (NEXTHDR_DEST, 8)],
            &[
                (NEXTHDR_HOP, 8),
                (NEXTHDR_ROUTING, 8),
                (NEXTHDR_FRAGMENT, 8),
            ],
        ];
        for chain in chains {
            let extensions: Vec<_> = chain
                .iter()
                .map(|&(kind, len)| extension(kind, len, 0))
                .collect();
            let f = packet(&extensions, IPPROTO_TCP, &tcp_syn());
            let Ok(Parsed6::Transport(ip, l4)) = parsed(&f) else {
                panic!("{chain:?}: {:?}", parsed(&f));
            };
            let ext_len: usize = chain.iter().map(|&(_, len)| len).sum();
            assert_eq!(ip.header_len, IPV6_HLEN + ext_len, "{chain:?}");
            assert_eq!((ip.src, ip.dst, ip.hop_limit), (CLIENT, NODE, 64));
            assert_eq!(ip.protocol, IPPROTO_TCP);
            assert!(!ip.is_fragment(), "an atomic fragment is a whole packet");
            assert_eq!(u16::from_be(l4.dport_be), 8080);
            assert_eq!(u16::from_be(l4.sport_be), 40000);
            assert_eq!(l4.check_offset, ip.l4_offset() + TCP_CHECK_OFF);
            assert!(l4.is_tcp_syn());
        }
    }

    #[test]
    fn fragments_first_with_ports_later_without() {
        let first = packet(
            &[extension(NEXTHDR_FRAGMENT, 8, FRAGMENT_MORE)],
            IPPROTO_UDP,
            &[
                0x9c, 0x40, 0x00, 0x35, 0, 16, 0x12, 0x34, 1, 2, 3, 4, 5, 6, 7, 8,
            ],
        );
        let Ok(Parsed6::Transport(ip, l4)) = parsed(&first) else {
            panic!("a first fragment has ports: {:?}", parsed(&first));
        };
        assert!(ip.is_fragment() && ip.is_first_fragment() && ip.more_fragments());
        assert_eq!(u32::from_be(ip.id_be), 0xdead_beef);
        assert_eq!(u16::from_be(l4.dport_be), 53);
        assert_eq!(l4.check_offset, ip.l4_offset() + UDP_CHECK_OFF);
        // Offset 1448 (181 × 8), the last fragment: its data only looks like a UDP header.
        let later = packet(
            &[
                extension(NEXTHDR_HOP, 8, 0),
                extension(NEXTHDR_FRAGMENT, 8, 181 << 3),
            ],
            IPPROTO_UDP,
            &[0; 4],
        );
        let Ok(Parsed6::Fragment(ip)) = parsed(&later) else {
            panic!("a later fragment: {:?}", parsed(&later));
        };
        assert_eq!((ip.fragment_offset(), ip.protocol), (1448, IPPROTO_UDP));
        assert!(ip.is_fragment() && !ip.is_first_fragment() && !ip.more_fragments());
        assert_eq!(ip.header_len, IPV6_HLEN + 16);
        assert_eq!(icmp6_echo(&later[..], &ip, true), None);
    }

    #[test]
    fn what_is_not_walked_passes_as_another_protocol() {
        let tcp = tcp_syn();
        // AH and ESP protect what follows: not ours to parse or rewrite.
        for protected in [NEXTHDR_AUTH, NEXTHDR_ESP, NEXTHDR_NONE] {
            let f = packet(&[], protected, &tcp);
            let Ok(Parsed6::OtherProtocol(ip)) = parsed(&f) else {
                panic!("{protected}: {:?}", parsed(&f));
            };
            assert_eq!(ip.protocol, protected);
        }
        // A chain longer than the walk: its last header is where the walk stopped.
        let long: Vec<_> = (0..=MAX_EXTENSION_HEADERS)
            .map(|_| extension(NEXTHDR_DEST, 8, 0))
            .collect();
        let Ok(Parsed6::OtherProtocol(ip)) = parsed(&packet(&long, IPPROTO_TCP, &tcp)) else {
            panic!("a long chain");
        };
        assert_eq!(ip.protocol, NEXTHDR_DEST);
        // A jumbogram's payload length is 0.
        let mut jumbo = packet(&[extension(NEXTHDR_HOP, 8, 0)], IPPROTO_TCP, &tcp);
        jumbo[ETH_HLEN + 4..ETH_HLEN + 6].fill(0);
        assert!(matches!(parsed(&jumbo), Ok(Parsed6::OtherProtocol(_))));
        // Neighbour solicitation: ICMPv6, neither an echo nor an error.
        let ns = packet(&[], IPPROTO_ICMPV6, &[135, 0, 0x12, 0x34, 0, 0, 0, 0]);
        let Ok(Parsed6::OtherProtocol(ip)) = parsed(&ns) else {
            panic!("neighbour solicitation");
        };
        assert_eq!(icmp6_echo(&ns[..], &ip, true), None);
        assert_eq!(icmp6_echo(&ns[..], &ip, false), None);
        assert_eq!(icmp6_error(&ns[..], &ip), None);
        // IPv4 and ARP are not IPv6.
        let mut arp = ns.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parsed(&arp), Ok(Parsed6::NotIpv6));
    }

    #[test]
    fn rejects_inconsistent_lengths() {
        let f = packet(&[extension(NEXTHDR_HOP, 8, 0)], IPPROTO_TCP, &tcp_syn());
        let mut v = f.clone();
        v[ETH_HLEN] = 0x45;
        assert_eq!(parsed(&v), Err(Malformed::BadVersion));
        let mut long = f.clone();
        long[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&500u16.to_be_bytes());
        assert_eq!(parsed(&long), Err(Malformed::BadTotalLength));
        // An extension header longer than the payload, and a payload ending inside one.
        let mut ext = f.clone();
        ext[ETH_HLEN + IPV6_HLEN + 1] = 200;
        assert_eq!(parsed(&ext), Err(Malformed::BadExtensionHeader));
        let mut short = f.clone();
        short[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(parsed(&short), Err(Malformed::BadExtensionHeader));
        // A payload too short for TCP, then a TCP data offset below 5 words.
        let mut tcp = f.clone();
        tcp[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&20u16.to_be_bytes());
        assert_eq!(parsed(&tcp), Err(Malformed::BadTransportHeader));
        let mut offset = f.clone();
        offset[ETH_HLEN + IPV6_HLEN + 8 + 12] = 4 << 4;
        assert_eq!(parsed(&offset), Err(Malformed::BadTransportHeader));
        // Ethernet padding after the packet is allowed.
        let mut padded = f.clone();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(parsed(&padded), parsed(&f));
    }

    #[test]
    fn truncation_at_every_byte_is_malformed_never_a_panic() {
        let f = packet(
            &[
                extension(NEXTHDR_HOP, 8, 0),
                extension(NEXTHDR_FRAGMENT, 8, 1),
            ],
            IPPROTO_TCP,
            &tcp_syn(),
        );
        for len in 0..f.len() {
            let r = parsed(&f[..len]);
            assert!(r.is_err(), "len={len}: {r:?}");
            // TC's view: the frame's length is the whole, the linear area shorter.
            assert_eq!(parse_ipv6(&f[..len], f.len()), Err(Malformed::Truncated));
        }
    }

    #[test]
    fn icmp6_echo_gives_the_identifier_as_a_port() {
        let mut f = packet(
            &[],
            IPPROTO_ICMPV6,
            &[ICMPV6_ECHO_REQUEST, 0, 0x12, 0x34, 0xab, 0xcd, 0, 1],
        );
        let Ok(Parsed6::OtherProtocol(ip)) = parsed(&f) else {
            panic!("icmpv6");
        };
        let l4 = icmp6_echo(&f[..], &ip, true).expect("an echo request");
        assert_eq!((l4.sport_be, l4.dport_be), (0xabcdu16.to_be(), 0));
        assert_eq!(l4.check_offset, ETH_HLEN + IPV6_HLEN + ICMP_CHECK_OFF);
        assert_eq!(icmp6_echo(&f[..], &ip, false), None, "not a reply");
        f[ETH_HLEN + IPV6_HLEN] = ICMPV6_ECHO_REPLY;
        let l4 = icmp6_echo(&f[..], &ip, false).expect("an echo reply");
        assert_eq!((l4.sport_be, l4.dport_be), (0, 0xabcdu16.to_be()));
        // ICMP's (v4) echo request type is no ICMPv6 echo.
        f[ETH_HLEN + IPV6_HLEN] = 8;
        assert_eq!(icmp6_echo(&f[..], &ip, true), None);
    }

    /// An ICMPv6 error of `icmp_type` from 2001:db8::ff quoting the first `quote_len`
    /// bytes of the IPv6 packet in `quoted` (a frame).
    pub(crate) fn icmp6_error_frame(icmp_type: u8, quoted: &[u8], quote_len: usize) -> Vec<u8> {
        let mut message = vec![icmp_type, 0, 0, 0, 0, 0, 0x05, 0x00];
        message.extend_from_slice(&quoted[ETH_HLEN..ETH_HLEN + quote_len]);
        let mut f = packet(&[], IPPROTO_ICMPV6, &message);
        f[ETH_HLEN + IPV6_SRC_OFF + 15] = 0xff;
        f
    }

    fn parse_error(f: &[u8]) -> Option<IcmpError<[u8; 16]>> {
        let Ok(Parsed6::OtherProtocol(ip)) = parsed(f) else {
            panic!("not icmpv6: {:?}", parsed(f));
        };
        icmp6_error(f, &ip)
    }

    #[test]
    fn icmp6_errors_give_the_quoted_flow() {
        // The container's reply as it left, quoted by a router on the way: TCP behind a
        // destination options header.
        let mut quoted = packet(&[extension(NEXTHDR_DEST, 8, 0)], IPPROTO_TCP, &tcp_syn());
        quoted.swap(ETH_HLEN + IPV6_SRC_OFF + 15, ETH_HLEN + IPV6_DST_OFF + 15);
        for icmp_type in [
            ICMPV6_DEST_UNREACH,
            ICMPV6_PACKET_TOO_BIG,
            ICMPV6_TIME_EXCEEDED,
            ICMPV6_PARAMETER_PROBLEM,
        ] {
            let f = icmp6_error_frame(icmp_type, &quoted, IPV6_HLEN + 8 + 8);
            let e = parse_error(&f).expect("an ICMPv6 error");
            let q = e.quoted;
            assert_eq!(e.icmp_type, icmp_type);
            assert_eq!(e.check_offset, ETH_HLEN + IPV6_HLEN + ICMP_CHECK_OFF);
            assert_eq!(q.offset, ETH_HLEN + IPV6_HLEN + ICMP_HLEN);
            assert_eq!((q.header_len, q.protocol), (IPV6_HLEN + 8, IPPROTO_TCP));
            assert_eq!((q.src_be, q.dst_be), (NODE, CLIENT));
            assert_eq!(
                (u16::from_be(q.sport_be), u16::from_be(q.dport_be)),
                (40000, 8080)
            );
            assert_eq!(q.port_offset(false), q.l4_offset() + L4_DPORT_OFF);
            assert_eq!(q.l4_check.get(), None);
        }
        // A quote that stops inside its transport header, or inside its extension header.
        for short in [IPV6_HLEN + 8 + 7, IPV6_HLEN + 4, IPV6_HLEN - 1] {
            let f = icmp6_error_frame(ICMPV6_PACKET_TOO_BIG, &quoted, short);
            assert_eq!(parse_error(&f), None, "quote of {short} bytes");
        }
        // An echo request: its identifier is the source "port", its checksum quoted.
        let echo = packet(
            &[],
            IPPROTO_ICMPV6,
            &[ICMPV6_ECHO_REQUEST, 0, 0x12, 0x34, 0xab, 0xcd, 0, 1],
        );
        let q = parse_error(&icmp6_error_frame(
            ICMPV6_TIME_EXCEEDED,
            &echo,
            IPV6_HLEN + 8,
        ))
        .expect("echo")
        .quoted;
        assert_eq!((q.sport_be, q.dport_be), (0xabcdu16.to_be(), 0));
        assert_eq!(
            q.l4_check.get(),
            Some((q.l4_offset() + ICMP_CHECK_OFF, 0x3412))
        );
        // A quoted later fragment has no ports; other ICMPv6 types are no errors.
        let later = packet(
            &[extension(NEXTHDR_FRAGMENT, 8, 8 << 3)],
            IPPROTO_UDP,
            &[0; 8],
        );
        assert_eq!(
            parse_error(&icmp6_error_frame(
                ICMPV6_DEST_UNREACH,
                &later,
                IPV6_HLEN + 16
            )),
            None
        );
        for other in [ICMPV6_ECHO_REPLY, 133, 136, 0, 5] {
            assert_eq!(
                parse_error(&icmp6_error_frame(other, &quoted, IPV6_HLEN + 16)),
                None
            );
        }
    }
}
