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
