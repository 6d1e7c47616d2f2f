//! A bounds-checked, IHL-aware parser for Ethernet + IPv4 + TCP/UDP headers, IPv4
//! fragments, ICMP echo and ICMP errors with the packet they quote; [`ipv6`] does the same
//! for IPv6 (extension headers, fragments, ICMPv6), sharing the transport and quote code.
//!
//! The parser only reads through [`Frame::load`], which checks every access against the end
//! of the frame. In the eBPF programs `Frame` is backed by the packet pointers (so the
//! verifier sees the checks), in userspace by a byte slice.

use core::mem::size_of;

pub mod ipv6;

use crate::maps::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const IPV4_MIN_HLEN: usize = 20;
pub const TCP_MIN_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;

/// Offsets inside the IPv4 header.
pub const IPV4_ID_OFF: usize = 4;
pub const IPV4_FRAG_OFF: usize = 6;
pub const IPV4_TTL_OFF: usize = 8;
pub const IPV4_CHECK_OFF: usize = 10;
pub const IPV4_SRC_OFF: usize = 12;
pub const IPV4_DST_OFF: usize = 16;
/// Offsets inside the TCP and UDP headers.
pub const L4_SPORT_OFF: usize = 0;
pub const L4_DPORT_OFF: usize = 2;
pub const TCP_CHECK_OFF: usize = 16;
pub const UDP_CHECK_OFF: usize = 6;

/// In the flags/offset word (host order): "more fragments", and the offset in 8-byte units.
const IPV4_MF: u16 = 0x2000;
const IPV4_OFFSET_MASK: u16 = 0x1fff;
const IPV4_MF_OR_OFFSET: u16 = IPV4_MF | IPV4_OFFSET_MASK;

/// ICMP types the programs act on.
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;
/// Destination unreachable, code "fragmentation needed and DF set" (path MTU discovery).
pub const ICMP_FRAG_NEEDED: u8 = 4;
/// The ICMP header: type, code, checksum and four bytes that depend on the type.
pub const ICMP_HLEN: usize = 8;
/// Offsets inside the ICMP header.
pub const ICMP_CHECK_OFF: usize = 2;
pub const ICMP_ID_OFF: usize = 4;
/// What an ICMP error must quote of the offending packet's payload (RFC 792): enough for
/// the ports of TCP and UDP, and the identifier of an ICMP echo.
pub const ICMP_QUOTED_L4: usize = 8;

/// Bounds-checked access to a frame's bytes.
pub trait Frame {
    /// Reads a `T` at `offset`, or `None` when any of its bytes lies past the end.
    fn load<T: Copy>(&self, offset: usize) -> Option<T>;
}

impl Frame for [u8] {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        let end = offset.checked_add(size_of::<T>())?;
        if end > self.len() {
            return None;
        }
        // SAFETY: `offset..end` is inside the slice; `T: Copy` is read unaligned.
        Some(unsafe { core::ptr::read_unaligned(self.as_ptr().add(offset).cast::<T>()) })
    }
}

/// What the parser found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not an IPv4 frame (ARP, IPv6, VLAN-tagged, ...): not ours to touch.
    NotIpv4,
    /// An IPv4 fragment after the first: it has no transport header (the first fragment
    /// is parsed like a whole packet, its [`Ipv4::is_first_fragment`] set).
    Fragment(Ipv4),
    /// A well-formed IPv4 packet that is neither TCP nor UDP.
    OtherProtocol(Ipv4),
    /// TCP or UDP with a complete transport header.
    Transport(Ipv4, L4),
}

/// Why a frame cannot be parsed; such a frame is dropped and counted as malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// The frame ends inside the Ethernet, IP (IPv6: extension) or transport header.
    Truncated,
    /// The version nibble is not 4 (IPv6: 6).
    BadVersion,
    /// IHL below 5 words.
    BadHeaderLength,
    /// Total length shorter than the header, or longer than the frame (IPv6: the payload
    /// length longer than the frame).
    BadTotalLength,
    /// A packet too short for its TCP or UDP header, or a TCP data offset below 5 words or
    /// past the packet.
    BadTransportHeader,
    /// IPv6: an extension header that reaches past the packet's payload length.
    BadExtensionHeader,
}

/// The IPv4 facts the programs need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4 {
    /// Header length in bytes, options included (IHL × 4).
    pub header_len: usize,
    pub total_len: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub src_be: u32,
    pub dst_be: u32,
    /// The identification field: with the addresses and the protocol, it names the
    /// datagram a fragment belongs to.
    pub id_be: u16,
    /// The flags and fragment offset word, in host order.
    pub frag: u16,
}

impl Ipv4 {
    /// Offset of the transport header in the frame.
    #[inline(always)]
    pub fn l4_offset(&self) -> usize {
        ETH_HLEN + self.header_len
    }

    /// More fragments of this datagram follow.
    #[inline(always)]
    pub fn more_fragments(&self) -> bool {
        self.frag & IPV4_MF != 0
    }

    /// Where this fragment's data starts in the datagram, in bytes.
    #[inline(always)]
    pub fn fragment_offset(&self) -> usize {
        usize::from(self.frag & IPV4_OFFSET_MASK) * 8
    }

    /// Part of a fragmented datagram (the first fragment included).
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.frag & IPV4_MF_OR_OFFSET != 0
    }

    /// The first fragment of a fragmented datagram: the one with the transport header.
    #[inline(always)]
    pub fn is_first_fragment(&self) -> bool {
        self.more_fragments() && self.fragment_offset() == 0
    }
}

/// The transport facts the programs need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4 {
    pub sport_be: u16,
    pub dport_be: u16,
    /// Offset of the checksum field in the frame.
    pub check_offset: usize,
    pub check: u16,
    /// The TCP flags byte (CWR..FIN); zero for UDP.
    pub tcp_flags: u8,
}

pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_ACK: u8 = 0x10;

impl L4 {
    /// A TCP segment that opens a connection (SYN without ACK).
    #[inline(always)]
    pub fn is_tcp_syn(&self) -> bool {
        self.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
    }
}

/// Parses the Ethernet, IPv4 and TCP/UDP headers of `frame`, whose length is `frame_len`.
#[inline(always)]
pub fn parse<F: Frame + ?Sized>(frame: &F, frame_len: usize) -> Result<Parsed, Malformed> {
    let ethertype: u16 = frame
        .load::<[u8; 2]>(12)
        .map(u16::from_be_bytes)
        .ok_or(Malformed::Truncated)?;
    if ethertype != ETH_P_IPV4 {
        return Ok(Parsed::NotIpv4);
    }
    let version_ihl: u8 = frame.load(ETH_HLEN).ok_or(Malformed::Truncated)?;
    let fixed: [u8; IPV4_MIN_HLEN] = frame.load(ETH_HLEN).ok_or(Malformed::Truncated)?;
    if version_ihl >> 4 != 4 {
        return Err(Malformed::BadVersion);
    }
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if header_len < IPV4_MIN_HLEN {
        return Err(Malformed::BadHeaderLength);
    }
    // The options, if any, must be inside the frame too.
    frame
        .load::<u8>(ETH_HLEN + header_len - 1)
        .ok_or(Malformed::Truncated)?;
    let total_len = u16::from_be_bytes([fixed[2], fixed[3]]);
    if usize::from(total_len) < header_len
        || usize::from(total_len) > frame_len.saturating_sub(ETH_HLEN)
    {
        return Err(Malformed::BadTotalLength);
    }
    let ip = ipv4_of(&fixed, header_len, total_len);
    // Only the first fragment has a transport header; it is parsed like a whole packet.
    if ip.fragment_offset() != 0 {
        return Ok(Parsed::Fragment(ip));
    }
    let payload_len = usize::from(total_len) - header_len;
    Ok(
        match transport(frame, ip.l4_offset(), payload_len, ip.protocol)? {
            Some(l4) => Parsed::Transport(ip, l4),
            None => Parsed::OtherProtocol(ip),
        },
    )
}

/// The TCP or UDP header at `l4` (`None` for another `protocol`), whose packet has
/// `payload_len` bytes from there on. Shared by both families.
#[inline(always)]
pub(crate) fn transport<F: Frame + ?Sized>(
    frame: &F,
    l4: usize,
    payload_len: usize,
    protocol: u8,
) -> Result<Option<L4>, Malformed> {
    let mut tcp_flags = 0;
    let check_offset = match protocol {
        IPPROTO_TCP => {
            // A packet too short for any TCP header is bad whether or not Ethernet padding
            // follows it (NICs pad frames to 60 bytes): without this check, the data offset
            // below would be read from the padding, or be missing, and the same packet
            // would be rejected for one reason or the other depending on the padding.
            if payload_len < TCP_MIN_HLEN {
                return Err(Malformed::BadTransportHeader);
            }
            let data_offset: u8 = frame.load(l4 + 12).ok_or(Malformed::Truncated)?;
            let tcp_len = usize::from(data_offset >> 4) * 4;
            if tcp_len < TCP_MIN_HLEN || tcp_len > payload_len {
                return Err(Malformed::BadTransportHeader);
            }
            let header: [u8; TCP_MIN_HLEN] = frame.load(l4).ok_or(Malformed::Truncated)?;
            tcp_flags = header[13];
            l4 + TCP_CHECK_OFF
        }
        IPPROTO_UDP => {
            if payload_len < UDP_HLEN {
                return Err(Malformed::BadTransportHeader);
            }
            l4 + UDP_CHECK_OFF
        }
        _ => return Ok(None),
    };
    let ports: [u8; 4] = frame.load(l4).ok_or(Malformed::Truncated)?;
    let check: [u8; 2] = frame.load(check_offset).ok_or(Malformed::Truncated)?;
    Ok(Some(L4 {
        sport_be: u16::from_ne_bytes([ports[0], ports[1]]),
        dport_be: u16::from_ne_bytes([ports[2], ports[3]]),
        check_offset,
        check: u16::from_ne_bytes(check),
        tcp_flags,
    }))
}

/// The facts of a fixed IPv4 header.
#[inline(always)]
fn ipv4_of(fixed: &[u8; IPV4_MIN_HLEN], header_len: usize, total_len: u16) -> Ipv4 {
    Ipv4 {
        header_len,
        total_len,
        ttl: fixed[IPV4_TTL_OFF],
        protocol: fixed[9],
        src_be: u32::from_ne_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]),
        dst_be: u32::from_ne_bytes([fixed[16], fixed[17], fixed[18], fixed[19]]),
        id_be: u16::from_ne_bytes([fixed[IPV4_ID_OFF], fixed[IPV4_ID_OFF + 1]]),
        frag: u16::from_be_bytes([fixed[IPV4_FRAG_OFF], fixed[IPV4_FRAG_OFF + 1]]),
    }
}

/// An ICMP echo request (`request`) or reply, seen as a flow: its identifier takes the
/// place of the source port (request) or the destination port (reply), so that the same
/// tracking and translation serve pings. `check_offset` is the ICMP checksum's.
#[inline(always)]
pub fn icmp_echo<F: Frame + ?Sized>(frame: &F, ip: &Ipv4, request: bool) -> Option<L4> {
    // A fragment after the first starts with data, not with an ICMP header.
    if ip.protocol != IPPROTO_ICMP
        || ip.fragment_offset() != 0
        || usize::from(ip.total_len) < ip.header_len + ICMP_HLEN
    {
        return None;
    }
    let wanted = if request {
        ICMP_ECHO_REQUEST
    } else {
        ICMP_ECHO_REPLY
    };
    echo_flow(frame, ip.l4_offset(), wanted, request)
}

/// The flow of an ICMP or ICMPv6 echo (the two share the header's layout) at `l4_offset`,
/// if its type is `wanted` and its code 0: the identifier is the source port of a request
/// and the destination port of a reply.
#[inline(always)]
fn echo_flow<F: Frame + ?Sized>(
    frame: &F,
    l4_offset: usize,
    wanted: u8,
    request: bool,
) -> Option<L4> {
    let header: [u8; ICMP_HLEN] = frame.load(l4_offset)?;
    if header[0] != wanted || header[1] != 0 {
        return None;
    }
    let id_be = u16::from_ne_bytes([header[ICMP_ID_OFF], header[ICMP_ID_OFF + 1]]);
    Some(L4 {
        sport_be: if request { id_be } else { 0 },
        dport_be: if request { 0 } else { id_be },
        check_offset: l4_offset + ICMP_CHECK_OFF,
        check: u16::from_ne_bytes([header[ICMP_CHECK_OFF], header[ICMP_CHECK_OFF + 1]]),
        tcp_flags: 0,
    })
}

/// An ICMP error (destination unreachable, time exceeded, parameter problem; for ICMPv6
/// packet too big too) and what it quotes of the packet that caused it. `Addr` is the
/// quoted packet's address: `u32` for IPv4, `[u8; 16]` for IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpError<Addr = u32> {
    pub icmp_type: u8,
    pub code: u8,
    /// The ICMP checksum; it covers the quote, so every change to the quote updates it.
    pub check: u16,
    pub check_offset: usize,
    pub quoted: Quoted<Addr>,
}

/// The start of the packet an ICMP error quotes: its IP header (for IPv6 with the
/// extension headers) and the first 8 bytes of its payload (all RFC 792 promises), so
/// ports and echo identifiers, no more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quoted<Addr = u32> {
    /// Offset of the quoted IP header in the frame.
    pub offset: usize,
    /// From the quoted IP header to its transport header (IPv6: extension headers included).
    pub header_len: usize,
    pub protocol: u8,
    /// The addresses in memory order.
    pub src_be: Addr,
    pub dst_be: Addr,
    /// The quoted IPv4 header's checksum (IPv6 has none: 0).
    pub ip_check: u16,
    /// TCP/UDP ports; for an ICMP echo, its identifier in the place [`icmp_echo`] gives it.
    pub sport_be: u16,
    pub dport_be: u16,
    /// The quoted transport checksum when it lies within the 8 quoted bytes and is in use
    /// (UDP with a checksum, ICMP echo). TCP's lies past them and is left alone, as
    /// netfilter does with a short quote.
    pub l4_check: QuotedCheck,
}

/// Where a quoted transport checksum is and its value, if [`QuotedCheck::get`] finds one.
/// Not an `Option`: a `None` kept in a struct leaves its payload undefined, which the BPF
/// compiler may fill from any register, a packet pointer too, and the verifier refuses a
/// pointer stored in part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotedCheck {
    /// Offset in the frame; 0 (inside the Ethernet header, never a checksum's) for none.
    offset: usize,
    value: u16,
}

impl QuotedCheck {
    pub const NONE: Self = Self {
        offset: 0,
        value: 0,
    };

    #[inline(always)]
    fn at(offset: usize, value: u16) -> Self {
        Self { offset, value }
    }

    /// The checksum's offset in the frame and its value, when it is in use.
    #[inline(always)]
    pub fn get(&self) -> Option<(usize, u16)> {
        (self.offset != 0).then_some((self.offset, self.value))
    }
}

/// For userspace models of the parser (its fuzz tests), which think in `Option`s.
impl From<Option<(usize, u16)>> for QuotedCheck {
    fn from(check: Option<(usize, u16)>) -> Self {
        check.map_or(Self::NONE, |(offset, value)| Self::at(offset, value))
    }
}

impl<Addr> Quoted<Addr> {
    /// Offset of the quoted transport header in the frame.
    #[inline(always)]
    pub fn l4_offset(&self) -> usize {
        self.offset + self.header_len
    }

    /// Offset in the frame of the quoted source port (`source`) or destination port; for
    /// an ICMP echo, of its identifier.
    #[inline(always)]
    pub fn port_offset(&self, source: bool) -> usize {
        let field = match (self.protocol, source) {
            (IPPROTO_ICMP | IPPROTO_ICMPV6, _) => ICMP_ID_OFF,
            (_, true) => L4_SPORT_OFF,
            (_, false) => L4_DPORT_OFF,
        };
        self.l4_offset() + field
    }
}

/// Parses an ICMP error and the packet it quotes. `None`: not an ICMP error, or one whose
/// quote is too short or not a TCP, UDP or ICMP echo packet that could belong to a flow
/// (a fragment after the first has no ports).
#[inline(always)]
pub fn icmp_error<F: Frame + ?Sized>(frame: &F, ip: &Ipv4) -> Option<IcmpError> {
    if ip.protocol != IPPROTO_ICMP || ip.is_fragment() {
        return None;
    }
    let icmp = ip.l4_offset();
    let header: [u8; ICMP_HLEN] = frame.load(icmp)?;
    let icmp_type = header[0];
    if icmp_type != ICMP_DEST_UNREACH
        && icmp_type != ICMP_TIME_EXCEEDED
        && icmp_type != ICMP_PARAMETER_PROBLEM
    {
        return None;
    }
    let offset = icmp + ICMP_HLEN;
    let fixed: [u8; IPV4_MIN_HLEN] = frame.load(offset)?;
    let header_len = usize::from(fixed[0] & 0x0f) * 4;
    if fixed[0] >> 4 != 4 || header_len < IPV4_MIN_HLEN {
        return None;
    }
    let inner = ipv4_of(&fixed, header_len, 0);
    if inner.fragment_offset() != 0 {
        return None;
    }
    // All of the quote must lie inside the ICMP message, not only inside the frame.
    if usize::from(ip.total_len) < ip.header_len + ICMP_HLEN + header_len + ICMP_QUOTED_L4 {
        return None;
    }
    let l4_offset = offset + header_len;
    let (sport_be, dport_be, l4_check) = quoted_ports(
        frame,
        l4_offset,
        inner.protocol,
        IPPROTO_ICMP,
        ICMP_ECHO_REQUEST,
    )?;
    Some(IcmpError {
        icmp_type,
        code: header[1],
        check: u16::from_ne_bytes([header[ICMP_CHECK_OFF], header[ICMP_CHECK_OFF + 1]]),
        check_offset: icmp + ICMP_CHECK_OFF,
        quoted: Quoted {
            offset,
            header_len,
            protocol: inner.protocol,
            src_be: inner.src_be,
            dst_be: inner.dst_be,
            ip_check: u16::from_ne_bytes([fixed[IPV4_CHECK_OFF], fixed[IPV4_CHECK_OFF + 1]]),
            sport_be,
            dport_be,
            l4_check,
        },
    })
}

/// What [`quoted_ports`] finds: source and destination port (or echo identifier) and the
/// quoted checksum's offset and value when it is in use.
pub(crate) type QuotedPorts = (u16, u16, QuotedCheck);

/// The ports of a quoted packet whose transport header is at `l4_offset`, or the echo
/// identifier in their place as [`icmp_echo`] puts it, and its checksum when it lies within
/// the 8 quoted bytes and is in use. `icmp`/`echo_request` are the family's ICMP protocol
/// and echo request type (the reply is the type [`echo_reply_of`] gives).
#[inline(always)]
pub(crate) fn quoted_ports<F: Frame + ?Sized>(
    frame: &F,
    l4_offset: usize,
    protocol: u8,
    icmp: u8,
    echo_request: u8,
) -> Option<QuotedPorts> {
    let l4: [u8; ICMP_QUOTED_L4] = frame.load(l4_offset)?;
    let word = |at: usize| u16::from_ne_bytes([l4[at], l4[at + 1]]);
    match protocol {
        IPPROTO_TCP => Some((word(L4_SPORT_OFF), word(L4_DPORT_OFF), QuotedCheck::NONE)),
        IPPROTO_UDP => {
            let check = word(UDP_CHECK_OFF);
            let l4_check = match check {
                0 => QuotedCheck::NONE,
                _ => QuotedCheck::at(l4_offset + UDP_CHECK_OFF, check),
            };
            Some((word(L4_SPORT_OFF), word(L4_DPORT_OFF), l4_check))
        }
        _ if protocol == icmp
            && l4[1] == 0
            && (l4[0] == echo_request || l4[0] == echo_reply_of(echo_request)) =>
        {
            let id = word(ICMP_ID_OFF);
            let l4_check = QuotedCheck::at(l4_offset + ICMP_CHECK_OFF, word(ICMP_CHECK_OFF));
            match l4[0] == echo_request {
                true => Some((id, 0, l4_check)),
                false => Some((0, id, l4_check)),
            }
        }
        _ => None,
    }
}

/// The echo reply type that answers `echo_request`: ICMP's 8 → 0, ICMPv6's 128 → 129.
#[inline(always)]
pub(crate) fn echo_reply_of(echo_request: u8) -> u8 {
    match echo_request {
        ICMP_ECHO_REQUEST => ICMP_ECHO_REPLY,
        _ => echo_request + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csum::tests::full;

    /// A TCP SYN from 198.51.100.2:40000 to 198.51.100.1:8080 with `options` IPv4 option
    /// bytes (a multiple of 4), checksums valid.
    pub(crate) fn tcp_syn(options: usize) -> Vec<u8> {
        let ihl = 5 + options / 4;
        let tcp_len = 20;
        let total = ihl * 4 + tcp_len;
        let mut f = vec![0u8; ETH_HLEN + total];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
        let ip = &mut f[ETH_HLEN..];
        ip[0] = 0x40 | ihl as u8;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = IPPROTO_TCP;
        ip[12..16].copy_from_slice(&[198, 51, 100, 2]);
        ip[16..20].copy_from_slice(&[198, 51, 100, 1]);
        for b in &mut ip[20..ihl * 4] {
            *b = 1; // NOP options
        }
        let check = full(&ip[..ihl * 4]);
        ip[10..12].copy_from_slice(&check.to_ne_bytes());
        let tcp = &mut f[ETH_HLEN + ihl * 4..];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&8080u16.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x02;
        f
    }

    #[test]
    fn parses_tcp_with_and_without_options() {
        for options in [0, 4, 40] {
            let f = tcp_syn(options);
            let Ok(Parsed::Transport(ip, l4)) = parse(&f[..], f.len()) else {
                panic!("options={options}: {:?}", parse(&f[..], f.len()));
            };
            assert_eq!(ip.header_len, 20 + options);
            assert_eq!(ip.src_be, u32::from_ne_bytes([198, 51, 100, 2]));
            assert_eq!(u16::from_be(l4.dport_be), 8080);
            assert_eq!(u16::from_be(l4.sport_be), 40000);
            assert_eq!(l4.check_offset, ETH_HLEN + 20 + options + TCP_CHECK_OFF);
            assert!(l4.is_tcp_syn());
        }
    }

    #[test]
    fn truncation_at_every_byte_is_malformed_never_a_panic() {
        let f = tcp_syn(8);
        for len in 0..f.len() {
            let r = parse(&f[..len], len);
            assert!(r.is_err(), "len={len}: {r:?}");
        }
    }

    #[test]
    fn rejects_bad_headers() {
        let mut f = tcp_syn(0);
        f[ETH_HLEN] = 0x44;
        assert_eq!(parse(&f[..], f.len()), Err(Malformed::BadHeaderLength));
        f[ETH_HLEN] = 0x65;
        assert_eq!(parse(&f[..], f.len()), Err(Malformed::BadVersion));
        let mut f = tcp_syn(0);
        f[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&500u16.to_be_bytes());
        assert_eq!(parse(&f[..], f.len()), Err(Malformed::BadTotalLength));
        let mut f = tcp_syn(0);
        f[ETH_HLEN + 20 + 12] = 4 << 4;
        assert_eq!(parse(&f[..], f.len()), Err(Malformed::BadTransportHeader));
    }

    #[test]
    fn classifies_non_ipv4_fragments_and_other_protocols() {
        let mut f = tcp_syn(0);
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert_eq!(parse(&f[..], f.len()), Ok(Parsed::NotIpv4));
        let mut f = tcp_syn(0);
        f[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&0xbeefu16.to_be_bytes());
        f[ETH_HLEN + 6] = 0x20; // more fragments, offset 0: the first fragment
        let Ok(Parsed::Transport(ip, l4)) = parse(&f[..], f.len()) else {
            panic!("a first fragment has ports: {:?}", parse(&f[..], f.len()));
        };
        assert!(ip.is_fragment() && ip.is_first_fragment() && ip.more_fragments());
        assert_eq!(
            (u16::from_be(ip.id_be), u16::from_be(l4.dport_be)),
            (0xbeef, 8080)
        );
        let mut f = tcp_syn(0);
        f[ETH_HLEN + 7] = 0x10; // offset 16 × 8, the last fragment
        let Ok(Parsed::Fragment(ip)) = parse(&f[..], f.len()) else {
            panic!("a later fragment: {:?}", parse(&f[..], f.len()));
        };
        assert!(ip.is_fragment() && !ip.is_first_fragment() && !ip.more_fragments());
        assert_eq!(ip.fragment_offset(), 128);
        let f = tcp_syn(0);
        let Ok(Parsed::Transport(ip, _)) = parse(&f[..], f.len()) else {
            panic!("whole packet");
        };
        assert!(!ip.is_fragment() && !ip.is_first_fragment());
        let mut f = tcp_syn(0);
        f[ETH_HLEN + 9] = 1; // ICMP
        assert!(matches!(
            parse(&f[..], f.len()),
            Ok(Parsed::OtherProtocol(_))
        ));
    }

    #[test]
    fn a_packet_too_short_for_tcp_is_rejected_the_same_with_or_without_padding() {
        // Found by the parser fuzz: 4 bytes of TCP, the frame ending there (Truncated) or
        // padded to 60 bytes (BadTransportHeader, the data offset read from the padding).
        let mut f = tcp_syn(0);
        f.truncate(ETH_HLEN + 24);
        f[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&24u16.to_be_bytes());
        assert_eq!(parse(&f[..], f.len()), Err(Malformed::BadTransportHeader));
        f.resize(60, 0x50);
        assert_eq!(parse(&f[..], f.len()), Err(Malformed::BadTransportHeader));
    }

    #[test]
    fn ethernet_padding_is_allowed() {
        let mut f = tcp_syn(0);
        f.extend_from_slice(&[0; 6]);
        assert!(matches!(parse(&f[..], f.len()), Ok(Parsed::Transport(..))));
    }

    /// An ICMP error of `icmp_type`/`code` from 203.0.113.1 to 198.51.100.2, quoting the
    /// first `quote_l4` transport bytes of `quoted` (a frame), checksums valid.
    pub(crate) fn icmp_error_frame(
        icmp_type: u8,
        code: u8,
        quoted: &[u8],
        quote_l4: usize,
    ) -> Vec<u8> {
        let inner = &quoted[ETH_HLEN..];
        let inner_ihl = usize::from(inner[0] & 0x0f) * 4;
        let quote = &inner[..inner_ihl + quote_l4];
        let total = IPV4_MIN_HLEN + ICMP_HLEN + quote.len();
        let mut f = vec![0u8; ETH_HLEN + total];
        f[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
        let ip = &mut f[ETH_HLEN..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = IPPROTO_ICMP;
        ip[12..16].copy_from_slice(&[203, 0, 113, 1]);
        ip[16..20].copy_from_slice(&[198, 51, 100, 2]);
        let check = full(&ip[..IPV4_MIN_HLEN]);
        ip[10..12].copy_from_slice(&check.to_ne_bytes());
        let icmp = &mut ip[IPV4_MIN_HLEN..];
        icmp[0] = icmp_type;
        icmp[1] = code;
        icmp[6..8].copy_from_slice(&1280u16.to_be_bytes());
        icmp[ICMP_HLEN..].copy_from_slice(quote);
        let check = full(icmp);
        icmp[2..4].copy_from_slice(&check.to_ne_bytes());
        f
    }

    /// `tcp_syn(options)` turned into UDP (checksum field `check`) or an ICMP echo request.
    fn quotable(options: usize, protocol: u8, check: u16) -> Vec<u8> {
        let mut f = tcp_syn(options);
        let l4 = ETH_HLEN + 20 + options;
        f[ETH_HLEN + 9] = protocol;
        match protocol {
            IPPROTO_UDP => f[l4 + 6..l4 + 8].copy_from_slice(&check.to_ne_bytes()),
            IPPROTO_ICMP => {
                f[l4..l4 + 8].copy_from_slice(&[ICMP_ECHO_REQUEST, 0, 0x12, 0x34, 0xab, 0xcd, 0, 1])
            }
            _ => {}
        }
        f
    }

    #[test]
    fn icmp_echo_gives_the_identifier_as_a_port() {
        let mut f = quotable(0, IPPROTO_ICMP, 0);
        let Ok(Parsed::OtherProtocol(ip)) = parse(&f[..], f.len()) else {
            panic!("icmp");
        };
        let l4 = icmp_echo(&f[..], &ip, true).expect("an echo request");
        assert_eq!((l4.sport_be, l4.dport_be), (0xabcdu16.to_be(), 0));
        assert_eq!(l4.check_offset, ETH_HLEN + 20 + ICMP_CHECK_OFF);
        assert_eq!(icmp_echo(&f[..], &ip, false), None, "not a reply");
        f[ETH_HLEN + 20] = ICMP_ECHO_REPLY;
        let l4 = icmp_echo(&f[..], &ip, false).expect("an echo reply");
        assert_eq!((l4.sport_be, l4.dport_be), (0, 0xabcdu16.to_be()));
        f[ETH_HLEN + 20 + 1] = 1; // a code other than 0
        assert_eq!(icmp_echo(&f[..], &ip, false), None);
        f[ETH_HLEN + 20 + 1] = 0;
        f[ETH_HLEN + 7] = 0x10; // a later fragment: its data only looks like an echo
        let Ok(Parsed::Fragment(ip)) = parse(&f[..], f.len()) else {
            panic!("a later fragment");
        };
        assert_eq!(icmp_echo(&f[..], &ip, false), None);
    }

    fn parse_icmp_error(f: &[u8]) -> Option<IcmpError> {
        let Ok(Parsed::OtherProtocol(ip)) = parse(f, f.len()) else {
            panic!("not icmp: {:?}", parse(f, f.len()));
        };
        icmp_error(f, &ip)
    }

    #[test]
    fn icmp_errors_give_the_quoted_flow() {
        for options in [0, 4, 40] {
            for (icmp_type, code) in [
                (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED),
                (ICMP_DEST_UNREACH, 3),
                (ICMP_TIME_EXCEEDED, 0),
                (ICMP_PARAMETER_PROBLEM, 0),
            ] {
                let quoted = tcp_syn(options);
                let f = icmp_error_frame(icmp_type, code, &quoted, 8);
                let e = parse_icmp_error(&f).expect("an ICMP error");
                let q = e.quoted;
                assert_eq!((e.icmp_type, e.code), (icmp_type, code));
                assert_eq!(e.check_offset, ETH_HLEN + 20 + ICMP_CHECK_OFF);
                assert_eq!((q.offset, q.header_len), (ETH_HLEN + 28, 20 + options));
                assert_eq!((q.protocol, q.l4_check.get()), (IPPROTO_TCP, None));
                assert_eq!(q.src_be, u32::from_ne_bytes([198, 51, 100, 2]));
                assert_eq!(q.dst_be, u32::from_ne_bytes([198, 51, 100, 1]));
                assert_eq!(
                    (u16::from_be(q.sport_be), u16::from_be(q.dport_be)),
                    (40000, 8080)
                );
                assert_eq!(q.port_offset(true), ETH_HLEN + 28 + 20 + options);
                assert_eq!(q.port_offset(false), q.port_offset(true) + 2);
                let at = q.offset + IPV4_CHECK_OFF;
                assert_eq!(q.ip_check, u16::from_ne_bytes([f[at], f[at + 1]]));
            }
        }
        // UDP: its checksum is within the quote, unless it is unused.
        let f = icmp_error_frame(ICMP_DEST_UNREACH, 3, &quotable(0, IPPROTO_UDP, 0x5555), 8);
        let q = parse_icmp_error(&f).expect("udp").quoted;
        assert_eq!(
            q.l4_check.get(),
            Some((ETH_HLEN + 28 + 20 + UDP_CHECK_OFF, 0x5555))
        );
        let f = icmp_error_frame(ICMP_DEST_UNREACH, 3, &quotable(0, IPPROTO_UDP, 0), 8);
        assert_eq!(
            parse_icmp_error(&f).expect("udp").quoted.l4_check.get(),
            None
        );
        // An echo request: the identifier is the source "port".
        let f = icmp_error_frame(ICMP_TIME_EXCEEDED, 0, &quotable(0, IPPROTO_ICMP, 0), 8);
        let q = parse_icmp_error(&f).expect("echo").quoted;
        assert_eq!((q.sport_be, q.dport_be), (0xabcdu16.to_be(), 0));
        assert_eq!(q.port_offset(true), ETH_HLEN + 28 + 20 + ICMP_ID_OFF);
        assert_eq!(
            q.l4_check.get(),
            Some((ETH_HLEN + 28 + 20 + ICMP_CHECK_OFF, 0x3412))
        );
    }

    #[test]
    fn icmp_errors_without_a_usable_quote_are_none() {
        let quoted = tcp_syn(0);
        // Other ICMP types, and the echo itself.
        for icmp_type in [ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, 5, 4] {
            let f = icmp_error_frame(icmp_type, 0, &quoted, 8);
            assert_eq!(parse_icmp_error(&f), None, "type {icmp_type}");
        }
        // A quote shorter than 8 transport bytes, at every length.
        let f = icmp_error_frame(ICMP_DEST_UNREACH, 3, &quoted, 8);
        for len in ETH_HLEN + 20..f.len() {
            let mut short = f[..len].to_vec();
            let total = (len - ETH_HLEN) as u16;
            short[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&total.to_be_bytes());
            if let Ok(Parsed::OtherProtocol(ip)) = parse(&short[..], short.len()) {
                assert_eq!(icmp_error(&short[..], &ip), None, "len={len}");
            }
        }
        // A quote past the ICMP message's end (total length) is not read.
        let mut padded = f.clone();
        let total = (f.len() - ETH_HLEN - 1) as u16;
        padded[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&total.to_be_bytes());
        let Ok(Parsed::OtherProtocol(ip)) = parse(&padded[..], padded.len()) else {
            panic!("icmp");
        };
        assert_eq!(icmp_error(&padded[..], &ip), None);
        // A quoted fragment after the first has no ports; a bad version is no packet.
        let mut later = quoted.clone();
        later[ETH_HLEN + 7] = 0x10;
        assert_eq!(parse_icmp_error(&icmp_error_frame(3, 3, &later, 8)), None);
        let mut first = quoted.clone();
        first[ETH_HLEN + 6] = 0x20;
        assert!(parse_icmp_error(&icmp_error_frame(3, 3, &first, 8)).is_some());
        let mut v6 = icmp_error_frame(3, 3, &quoted, 8);
        v6[ETH_HLEN + 28] = 0x65;
        assert_eq!(parse_icmp_error(&v6), None);
        // Another protocol (here GRE) in the quote.
        let mut gre = quoted.clone();
        gre[ETH_HLEN + 9] = 47;
        assert_eq!(parse_icmp_error(&icmp_error_frame(3, 3, &gre, 8)), None);
        // An ICMP error that is itself a fragment.
        let mut fragment = icmp_error_frame(3, 3, &quoted, 8);
        fragment[ETH_HLEN + 6] = 0x20;
        let Ok(Parsed::OtherProtocol(ip)) = parse(&fragment[..], fragment.len()) else {
            panic!("icmp");
        };
        assert_eq!(icmp_error(&fragment[..], &ip), None);
    }

    proptest::proptest! {
        /// Fuzzing: arbitrary bytes, and mutations of a valid frame, never panic, and a
        /// `Transport` result always has its headers inside the frame.
        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128)) {
            check_invariants(&bytes);
        }

        #[test]
        fn mutated_frames_never_panic(
            options in 0usize..11,
            flips in proptest::collection::vec((0usize..120, proptest::prelude::any::<u8>()), 1..6),
            cut in 0usize..140,
        ) {
            let mut f = tcp_syn(options * 4);
            for (at, value) in flips {
                if let Some(b) = f.get_mut(at) { *b = value; }
            }
            f.truncate(cut.max(1));
            check_invariants(&f);
        }
    }

    fn check_invariants(bytes: &[u8]) {
        match parse(bytes, bytes.len()) {
            Ok(Parsed::Transport(ip, l4)) => {
                assert!(ip.header_len >= IPV4_MIN_HLEN);
                assert!(ETH_HLEN + usize::from(ip.total_len) <= bytes.len());
                assert!(l4.check_offset + 2 <= ETH_HLEN + usize::from(ip.total_len));
                assert_eq!(ip.fragment_offset(), 0);
            }
            Ok(Parsed::Fragment(ip)) => assert!(ip.fragment_offset() > 0),
            Ok(Parsed::OtherProtocol(ip)) => {
                let end = ETH_HLEN + usize::from(ip.total_len);
                for request in [true, false] {
                    if let Some(echo) = icmp_echo(bytes, &ip, request) {
                        assert!(echo.check_offset + 2 <= end);
                    }
                }
                if let Some(e) = icmp_error(bytes, &ip) {
                    let q = e.quoted;
                    assert!(q.header_len >= IPV4_MIN_HLEN);
                    assert!(q.l4_offset() + ICMP_QUOTED_L4 <= end);
                    assert!(q.port_offset(true) + 2 <= end && q.port_offset(false) + 2 <= end);
                    if let Some((at, _)) = q.l4_check.get() {
                        assert!(at + 2 <= end);
                    }
                }
            }
            _ => {}
        }
    }

    proptest::proptest! {
        /// ICMP errors with arbitrary mutations of the outer packet and the quote.
        #[test]
        fn mutated_icmp_errors_never_panic(
            options in 0usize..11,
            protocol in proptest::prop_oneof![proptest::strategy::Just(IPPROTO_TCP), proptest::strategy::Just(IPPROTO_UDP), proptest::strategy::Just(IPPROTO_ICMP)],
            flips in proptest::collection::vec((0usize..120, proptest::prelude::any::<u8>()), 0..6),
            cut in 0usize..140,
        ) {
            let mut f = icmp_error_frame(ICMP_DEST_UNREACH, 4, &quotable(options * 4, protocol, 7), 8);
            for (at, value) in flips {
                if let Some(b) = f.get_mut(at) { *b = value; }
            }
            f.truncate(cut.max(1));
            check_invariants(&f);
        }
    }
}
