//! A bounds-checked, IHL-aware parser for Ethernet + IPv4 + TCP/UDP headers.
//!
//! The parser only reads through [`Frame::load`], which checks every access against the end
//! of the frame. In the eBPF programs `Frame` is backed by the packet pointers (so the
//! verifier sees the checks), in userspace by a byte slice.

use core::mem::size_of;

use crate::maps::{IPPROTO_TCP, IPPROTO_UDP};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const IPV4_MIN_HLEN: usize = 20;
pub const TCP_MIN_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;

/// Offsets inside the IPv4 header.
pub const IPV4_TTL_OFF: usize = 8;
pub const IPV4_CHECK_OFF: usize = 10;
pub const IPV4_SRC_OFF: usize = 12;
pub const IPV4_DST_OFF: usize = 16;
/// Offsets inside the TCP and UDP headers.
pub const L4_SPORT_OFF: usize = 0;
pub const L4_DPORT_OFF: usize = 2;
pub const TCP_CHECK_OFF: usize = 16;
pub const UDP_CHECK_OFF: usize = 6;

const IPV4_MF_OR_OFFSET: u16 = 0x3fff;

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
    /// IPv4, but a fragment: only the first one carries ports, so none is translated.
    Fragment(Ipv4),
    /// A well-formed IPv4 packet that is neither TCP nor UDP.
    OtherProtocol(Ipv4),
    /// TCP or UDP with a complete transport header.
    Transport(Ipv4, L4),
}

/// Why a frame cannot be parsed; such a frame is dropped and counted as malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// The frame ends inside the Ethernet, IPv4 or transport header.
    Truncated,
    /// The IPv4 version nibble is not 4.
    BadVersion,
    /// IHL below 5 words.
    BadHeaderLength,
    /// Total length shorter than the header, or longer than the frame.
    BadTotalLength,
    /// TCP data offset below 5 words or past the packet.
    BadTransportHeader,
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
}

impl Ipv4 {
    /// Offset of the transport header in the frame.
    #[inline(always)]
    pub fn l4_offset(&self) -> usize {
        ETH_HLEN + self.header_len
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
    let ip = Ipv4 {
        header_len,
        total_len,
        ttl: fixed[IPV4_TTL_OFF],
        protocol: fixed[9],
        src_be: u32::from_ne_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]),
        dst_be: u32::from_ne_bytes([fixed[16], fixed[17], fixed[18], fixed[19]]),
    };
    let frag = u16::from_be_bytes([fixed[6], fixed[7]]);
    if frag & IPV4_MF_OR_OFFSET != 0 {
        return Ok(Parsed::Fragment(ip));
    }
    let l4 = ip.l4_offset();
    let payload_len = usize::from(total_len) - header_len;
    let mut tcp_flags = 0;
    let check_offset = match ip.protocol {
        IPPROTO_TCP => {
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
        _ => return Ok(Parsed::OtherProtocol(ip)),
    };
    let ports: [u8; 4] = frame.load(l4).ok_or(Malformed::Truncated)?;
    let check: [u8; 2] = frame.load(check_offset).ok_or(Malformed::Truncated)?;
    Ok(Parsed::Transport(
        ip,
        L4 {
            sport_be: u16::from_ne_bytes([ports[0], ports[1]]),
            dport_be: u16::from_ne_bytes([ports[2], ports[3]]),
            check_offset,
            check: u16::from_ne_bytes(check),
            tcp_flags,
        },
    ))
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
        f[ETH_HLEN + 6] = 0x20; // more fragments
        assert!(matches!(parse(&f[..], f.len()), Ok(Parsed::Fragment(_))));
        let mut f = tcp_syn(0);
        f[ETH_HLEN + 7] = 0x10; // offset 16 × 8
        assert!(matches!(parse(&f[..], f.len()), Ok(Parsed::Fragment(_))));
        let mut f = tcp_syn(0);
        f[ETH_HLEN + 9] = 1; // ICMP
        assert!(matches!(
            parse(&f[..], f.len()),
            Ok(Parsed::OtherProtocol(_))
        ));
    }

    #[test]
    fn ethernet_padding_is_allowed() {
        let mut f = tcp_syn(0);
        f.extend_from_slice(&[0; 6]);
        assert!(matches!(parse(&f[..], f.len()), Ok(Parsed::Transport(..))));
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
        if let Ok(Parsed::Transport(ip, l4)) = parse(bytes, bytes.len()) {
            assert!(ip.header_len >= IPV4_MIN_HLEN);
            assert!(ETH_HLEN + usize::from(ip.total_len) <= bytes.len());
            assert!(l4.check_offset + 2 <= ETH_HLEN + usize::from(ip.total_len));
        }
    }
}
