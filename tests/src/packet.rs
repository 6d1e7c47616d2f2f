//! Frames for BPF_PROG_TEST_RUN cases, and checks of what the programs wrote.

use std::net::Ipv4Addr;

pub const ETH_HLEN: usize = 14;

/// One's complement sum of 16-bit big-endian words.
fn sum_words(data: &[u8], mut sum: u32) -> u32 {
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Whether the IPv4 header checksum of `frame` is valid.
pub fn ipv4_checksum_ok(frame: &[u8]) -> bool {
    let ihl = usize::from(frame[ETH_HLEN] & 0x0f) * 4;
    fold(sum_words(&frame[ETH_HLEN..ETH_HLEN + ihl], 0)) == 0xffff
}

/// Whether the TCP/UDP checksum (pseudo-header included) of `frame` is valid.
pub fn l4_checksum_ok(frame: &[u8]) -> bool {
    let ip = &frame[ETH_HLEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4 = &ip[ihl..total];
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, ip[9]]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    fold(sum_words(l4, sum_words(&pseudo, 0))) == 0xffff
}

/// A TCP or UDP packet over IPv4 over Ethernet, with valid checksums.
#[derive(Clone, Debug)]
pub struct Packet {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
    pub protocol: u8,
    /// IPv4 option bytes (a multiple of 4, at most 40).
    pub ip_options: usize,
    /// TCP flags (SYN by default).
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
}

impl Packet {
    pub fn tcp_syn(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Self {
        Packet {
            src_mac: [0x02, 0, 0, 0, 0, 0x02],
            dst_mac: [0x02, 0, 0, 0, 0, 0x01],
            src,
            dst,
            sport,
            dport,
            ttl: 64,
            protocol: 6,
            ip_options: 0,
            tcp_flags: 0x02,
            payload: Vec::new(),
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let ihl = 20 + self.ip_options;
        let l4_len = if self.protocol == 6 { 20 } else { 8 } + self.payload.len();
        let total = ihl + l4_len;
        let mut f = vec![0u8; ETH_HLEN + total];
        f[0..6].copy_from_slice(&self.dst_mac);
        f[6..12].copy_from_slice(&self.src_mac);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        {
            let ip = &mut f[ETH_HLEN..ETH_HLEN + ihl];
            ip[0] = 0x40 | (ihl / 4) as u8;
            ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
            ip[6] = 0x40; // DF
            ip[8] = self.ttl;
            ip[9] = self.protocol;
            ip[12..16].copy_from_slice(&self.src.octets());
            ip[16..20].copy_from_slice(&self.dst.octets());
            for b in &mut ip[20..] {
                *b = 1; // NOP
            }
            let check = !fold(sum_words(ip, 0));
            ip[10..12].copy_from_slice(&check.to_be_bytes());
        }
        let l4_start = ETH_HLEN + ihl;
        {
            let l4 = &mut f[l4_start..];
            l4[0..2].copy_from_slice(&self.sport.to_be_bytes());
            l4[2..4].copy_from_slice(&self.dport.to_be_bytes());
            if self.protocol == 6 {
                l4[4..8].copy_from_slice(&1000u32.to_be_bytes());
                l4[12] = 5 << 4;
                l4[13] = self.tcp_flags;
                l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
                l4[20..].copy_from_slice(&self.payload);
            } else {
                l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
                l4[8..].copy_from_slice(&self.payload);
            }
        }
        let check_at = l4_start + if self.protocol == 6 { 16 } else { 6 };
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&self.src.octets());
        pseudo.extend_from_slice(&self.dst.octets());
        pseudo.extend_from_slice(&[0, self.protocol]);
        pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
        let check = !fold(sum_words(&f[l4_start..], sum_words(&pseudo, 0)));
        f[check_at..check_at + 2].copy_from_slice(&check.to_be_bytes());
        f
    }
}

/// Fields of a built frame, for assertions.
pub struct View<'a>(pub &'a [u8]);

impl View<'_> {
    fn ihl(&self) -> usize {
        usize::from(self.0[ETH_HLEN] & 0x0f) * 4
    }
    pub fn dst_mac(&self) -> [u8; 6] {
        self.0[0..6].try_into().unwrap()
    }
    pub fn src_mac(&self) -> [u8; 6] {
        self.0[6..12].try_into().unwrap()
    }
    pub fn ttl(&self) -> u8 {
        self.0[ETH_HLEN + 8]
    }
    pub fn src(&self) -> Ipv4Addr {
        <[u8; 4]>::try_from(&self.0[ETH_HLEN + 12..ETH_HLEN + 16])
            .unwrap()
            .into()
    }
    pub fn dst(&self) -> Ipv4Addr {
        <[u8; 4]>::try_from(&self.0[ETH_HLEN + 16..ETH_HLEN + 20])
            .unwrap()
            .into()
    }
    pub fn sport(&self) -> u16 {
        let at = ETH_HLEN + self.ihl();
        u16::from_be_bytes([self.0[at], self.0[at + 1]])
    }
    pub fn dport(&self) -> u16 {
        let at = ETH_HLEN + self.ihl() + 2;
        u16::from_be_bytes([self.0[at], self.0[at + 1]])
    }
}

/// Recomputes the IPv4 header checksum of the header at `at`.
fn fix_ipv4_checksum(frame: &mut [u8], at: usize) {
    let ihl = usize::from(frame[at] & 0x0f) * 4;
    frame[at + 10..at + 12].copy_from_slice(&[0, 0]);
    let check = !fold(sum_words(&frame[at..at + ihl], 0));
    frame[at + 10..at + 12].copy_from_slice(&check.to_be_bytes());
}

/// Sets the IPv4 identification of a built frame (checksum fixed).
pub fn with_ip_id(mut frame: Vec<u8>, id: u16) -> Vec<u8> {
    frame[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&id.to_be_bytes());
    fix_ipv4_checksum(&mut frame, ETH_HLEN);
    frame
}

/// Sets the TTL of a built frame (checksum fixed).
pub fn with_ttl(mut frame: Vec<u8>, ttl: u8) -> Vec<u8> {
    frame[ETH_HLEN + 8] = ttl;
    fix_ipv4_checksum(&mut frame, ETH_HLEN);
    frame
}

/// An ICMP echo request from `src` to `dst` with identifier `id` and 8 bytes of data.
pub fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Vec<u8> {
    let mut f = Packet {
        protocol: 17,
        ..Packet::tcp_syn(src, 0, dst, 0)
    }
    .build();
    f[ETH_HLEN + 9] = 1;
    fix_ipv4_checksum(&mut f, ETH_HLEN);
    let icmp = &mut f[ETH_HLEN + 20..];
    icmp.copy_from_slice(&[8, 0, 0, 0, 0, 0, 0, 1]);
    icmp[4..6].copy_from_slice(&id.to_be_bytes());
    let check = !fold(sum_words(icmp, 0));
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    f
}

/// Splits a whole packet into IPv4 fragments of at most `chunk` payload bytes (a multiple
/// of 8), as a sender's stack does: the header copied, DF cleared, MF and offsets set.
pub fn fragments(frame: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    assert!(chunk.is_multiple_of(8) && chunk > 0);
    let ihl = usize::from(frame[ETH_HLEN] & 0x0f) * 4;
    let header = &frame[..ETH_HLEN + ihl];
    let payload = &frame[ETH_HLEN + ihl..];
    let count = payload.len().div_ceil(chunk);
    payload
        .chunks(chunk)
        .enumerate()
        .map(|(i, data)| {
            let mut f = header.to_vec();
            f.extend_from_slice(data);
            let total = (ihl + data.len()) as u16;
            f[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&total.to_be_bytes());
            let more = if i + 1 < count { 0x2000 } else { 0 };
            let word = more | (i * chunk / 8) as u16;
            f[ETH_HLEN + 6..ETH_HLEN + 8].copy_from_slice(&word.to_be_bytes());
            fix_ipv4_checksum(&mut f, ETH_HLEN);
            f
        })
        .collect()
}

/// Puts fragments (in any order) back together, as a receiver's stack does; the header is
/// the first fragment's. Panics when they do not make one whole datagram.
pub fn reassemble(frames: &[Vec<u8>]) -> Vec<u8> {
    let offset = |f: &Vec<u8>| {
        usize::from(u16::from_be_bytes([f[ETH_HLEN + 6], f[ETH_HLEN + 7]]) & 0x1fff) * 8
    };
    let mut sorted: Vec<&Vec<u8>> = frames.iter().collect();
    sorted.sort_by_key(|f| offset(f));
    let first = sorted[0];
    let ihl = usize::from(first[ETH_HLEN] & 0x0f) * 4;
    let mut whole = first[..ETH_HLEN + ihl].to_vec();
    for f in &sorted {
        assert_eq!(
            offset(f),
            whole.len() - ETH_HLEN - ihl,
            "a gap or an overlap"
        );
        let f_ihl = usize::from(f[ETH_HLEN] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([f[ETH_HLEN + 2], f[ETH_HLEN + 3]]));
        whole.extend_from_slice(&f[ETH_HLEN + f_ihl..ETH_HLEN + total]);
    }
    let last = sorted[sorted.len() - 1];
    assert_eq!(last[ETH_HLEN + 6] & 0x20, 0, "the last fragment is missing");
    let total = (whole.len() - ETH_HLEN) as u16;
    whole[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&total.to_be_bytes());
    whole[ETH_HLEN + 6..ETH_HLEN + 8].copy_from_slice(&[0, 0]);
    fix_ipv4_checksum(&mut whole, ETH_HLEN);
    whole
}

/// An ICMP error (`icmp_type`, `code`, 4 type-specific bytes `rest`) from `src` to `dst`
/// quoting the IPv4 header and the first `quote_l4` payload bytes of `quoted` (a frame),
/// checksums valid.
pub fn icmp_error(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    (icmp_type, code, rest): (u8, u8, [u8; 4]),
    quoted: &[u8],
    quote_l4: usize,
) -> Vec<u8> {
    let inner = &quoted[ETH_HLEN..];
    let inner_ihl = usize::from(inner[0] & 0x0f) * 4;
    let quote = &inner[..inner_ihl + quote_l4];
    let total = 20 + 8 + quote.len();
    let mut f = vec![0u8; ETH_HLEN + total];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    {
        let ip = &mut f[ETH_HLEN..ETH_HLEN + 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = 1;
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&dst.octets());
    }
    fix_ipv4_checksum(&mut f, ETH_HLEN);
    let icmp = &mut f[ETH_HLEN + 20..];
    icmp[0] = icmp_type;
    icmp[1] = code;
    icmp[4..8].copy_from_slice(&rest);
    icmp[8..].copy_from_slice(quote);
    let check = !fold(sum_words(icmp, 0));
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    f
}

/// Whether the ICMP checksum (over the whole message, quote included) of `frame` is valid.
pub fn icmp_checksum_ok(frame: &[u8]) -> bool {
    let ip = &frame[ETH_HLEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    fold(sum_words(&ip[ihl..total], 0)) == 0xffff
}

/// The packet an ICMP error quotes, as a frame of its own (Ethernet header zeroed), for
/// [`View`] and the checksum checks.
pub fn quoted(frame: &[u8]) -> Vec<u8> {
    let ihl = usize::from(frame[ETH_HLEN] & 0x0f) * 4;
    let mut f = vec![0u8; ETH_HLEN];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&frame[ETH_HLEN + ihl + 8..]);
    f
}
