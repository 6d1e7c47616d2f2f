//! A malformed-frame corpus through both packet programs: every frame gets a verdict the
//! program may give (never XDP_ABORTED), exactly one of the program's counters names it
//! (so every drop is counted under a reason), and no frame that is not a well-formed
//! first packet leaves a flow entry behind.
//!
//! The corpus is generated from a few valid frames per program: truncations at every
//! length the kernel accepts, every IHL, total lengths around the real one, every TCP data
//! offset, fragment offsets at and past the end, and random byte flips from a fixed seed,
//! so that every run sees the same frames. The layer-3 uplink program gets the same
//! mutants of its own seeds (from a client behind a tunnel) without their Ethernet header.

use super::*;

/// XDP's "the program failed" verdict, and TC's "no verdict".
const XDP_ABORTED: u32 = 0;
const IPPROTO_ICMP: u8 = 1;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// Random mutants per seed frame.
const FLIPS_PER_SEED: usize = 150;

/// A valid frame to mutate, named for the failure messages.
struct Seed {
    name: &'static str,
    frame: Vec<u8>,
}

/// xorshift64: fixed seed, so the corpus is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// Recomputes the IPv4 header checksum over the header length the frame claims, as far as
/// the frame has bytes: a malformed header still gets past a checksum check.
fn refresh_ipv4_checksum(frame: &mut [u8]) {
    let claimed = usize::from(frame[ETH_HLEN] & 0x0f) * 4;
    let end = (ETH_HLEN + claimed.max(20)).min(frame.len());
    frame[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&[0, 0]);
    let mut sum: u32 = frame[ETH_HLEN..end]
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

fn ihl_of(frame: &[u8]) -> usize {
    usize::from(frame[ETH_HLEN] & 0x0f) * 4
}

fn is_ipv4(frame: &[u8]) -> bool {
    frame.len() >= ETH_HLEN + 20 && u16::from_be_bytes([frame[12], frame[13]]) == ETH_P_IP
}

fn is_ipv6(frame: &[u8]) -> bool {
    frame.len() >= ETH_HLEN + 40 && u16::from_be_bytes([frame[12], frame[13]]) == ETH_P_IPV6
}

/// IPv6 mutants: versions, payload lengths around the real one, padding, every next
/// header value at the head of the chain, every length byte of the first extension header.
fn ipv6_mutants(seed: &[u8], out: &mut Vec<(String, Vec<u8>)>) {
    let payload = seed.len() - ETH_HLEN - 40;
    for version in [0u8, 4, 5, 7, 15] {
        let mut f = seed.to_vec();
        f[ETH_HLEN] = (version << 4) | (f[ETH_HLEN] & 0x0f);
        out.push((format!("ip version {version}"), f));
    }
    for claimed in [0, 1, 7, 8, 9, 19, 20, 27, 28, payload - 1]
        .into_iter()
        .chain([payload + 1, payload + 64, 0xffff])
    {
        let mut f = seed.to_vec();
        f[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&(claimed as u16).to_be_bytes());
        out.push((format!("payload length {claimed} of {payload}"), f));
    }
    for pad in [1, 6, 46] {
        let mut f = seed.to_vec();
        f.extend((0..pad).map(|i| i as u8 ^ 0xa5));
        out.push((format!("{pad} bytes past the packet"), f));
    }
    for next in [0u8, 6, 17, 43, 44, 50, 51, 58, 59, 60, 135, 255] {
        let mut f = seed.to_vec();
        f[ETH_HLEN + 6] = next;
        out.push((format!("next header {next}"), f));
    }
    if matches!(seed[ETH_HLEN + 6], 0 | 43 | 60) {
        for units in [0u8, 1, 2, 3, 7, 64, 255] {
            let mut f = seed.to_vec();
            f[ETH_HLEN + 41] = units;
            out.push((format!("extension header length {units}"), f));
        }
    }
}

/// Every mutant of `seed` the corpus holds.
fn mutants(seed: &[u8], rng: &mut Rng) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    // The kernel refuses test runs on less than an Ethernet header; the wire has none.
    for len in ETH_HLEN..seed.len() {
        out.push((format!("truncated to {len}"), seed[..len].to_vec()));
    }
    if is_ipv6(seed) {
        ipv6_mutants(seed, &mut out);
    }
    if is_ipv4(seed) {
        let ihl = ihl_of(seed);
        let total = seed.len() - ETH_HLEN;
        for value in 0..16u8 {
            let mut f = seed.to_vec();
            f[ETH_HLEN] = 0x40 | value;
            refresh_ipv4_checksum(&mut f);
            out.push((format!("ihl {value}"), f));
        }
        for version in [0u8, 5, 6, 15] {
            let mut f = seed.to_vec();
            f[ETH_HLEN] = (version << 4) | (f[ETH_HLEN] & 0x0f);
            refresh_ipv4_checksum(&mut f);
            out.push((format!("ip version {version}"), f));
        }
        for claimed in [0, 1, 19, 20, ihl - 1, ihl, ihl + 1, ihl + 7, total - 1]
            .into_iter()
            .chain([total + 1, total + 64, 0xffff])
        {
            let mut f = seed.to_vec();
            f[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&(claimed as u16).to_be_bytes());
            refresh_ipv4_checksum(&mut f);
            out.push((format!("total length {claimed} of {total}"), f));
        }
        // Frames longer than their datagram (Ethernet padding, or junk after it).
        for pad in [1, 6, 46] {
            let mut f = seed.to_vec();
            f.extend((0..pad).map(|i| i as u8 ^ 0xa5));
            out.push((format!("{pad} bytes past the datagram"), f));
        }
        let end_in_units = (total - ihl).div_ceil(8) as u16;
        for (what, word) in [
            ("last fragment at the maximum offset", 0x1fff),
            ("more fragments at the maximum offset", 0x3fff),
            ("last fragment at the datagram's end", end_in_units),
            (
                "more fragments at the datagram's end",
                0x2000 | end_in_units,
            ),
            ("later fragment at offset 8", 0x0001),
            ("first fragment of a datagram", 0x2000),
            ("don't-fragment and more-fragments", 0x6000),
            ("reserved flag", 0x8000),
        ] {
            let mut f = seed.to_vec();
            f[ETH_HLEN + 6..ETH_HLEN + 8].copy_from_slice(&word.to_be_bytes());
            refresh_ipv4_checksum(&mut f);
            out.push((what.to_string(), f));
        }
        if seed[ETH_HLEN + 9] == IPPROTO_TCP && seed.len() >= ETH_HLEN + ihl + 20 {
            for offset in 0..16u8 {
                let mut f = seed.to_vec();
                f[ETH_HLEN + ihl + 12] = offset << 4;
                out.push((format!("tcp data offset {offset}"), f));
            }
        }
        if seed[ETH_HLEN + 9] == IPPROTO_UDP && seed.len() >= ETH_HLEN + ihl + 8 {
            for claimed in [0u16, 7, 8, 0xffff] {
                let mut f = seed.to_vec();
                f[ETH_HLEN + ihl + 4..ETH_HLEN + ihl + 6].copy_from_slice(&claimed.to_be_bytes());
                out.push((format!("udp length {claimed}"), f));
            }
        }
    }
    // Flips in the headers, where the parser looks: 1 to 3 random bytes each.
    let span = seed.len().min(ETH_HLEN + 80);
    for i in 0..FLIPS_PER_SEED {
        let mut f = seed.to_vec();
        let mut flipped = Vec::new();
        for _ in 0..=rng.below(3) {
            let at = rng.below(span);
            f[at] ^= (rng.below(255) + 1) as u8;
            flipped.push(at);
        }
        out.push((format!("flip {i} at {flipped:?}"), f));
    }
    out
}

/// Whether `frame` could be the first packet of a flow: an IPv4 datagram whose header and
/// transport header are whole and consistent, at fragment offset 0, or the same in IPv6.
/// Only such frames may create flow entries.
fn well_formed_first_packet(frame: &[u8]) -> bool {
    if is_ipv6(frame) {
        // The parser is checked against an independent decoder by its fuzz.
        use dataplane_common::parse::ipv6::{Parsed6, parse_ipv6};
        return matches!(parse_ipv6(frame, frame.len()), Ok(Parsed6::Transport(..)));
    }
    if !is_ipv4(frame) || frame[ETH_HLEN] >> 4 != 4 {
        return false;
    }
    let ihl = ihl_of(frame);
    let total = usize::from(u16::from_be_bytes([
        frame[ETH_HLEN + 2],
        frame[ETH_HLEN + 3],
    ]));
    let fragment = u16::from_be_bytes([frame[ETH_HLEN + 6], frame[ETH_HLEN + 7]]);
    if ihl < 20 || total < ihl || ETH_HLEN + total > frame.len() || fragment & 0x1fff != 0 {
        return false;
    }
    let l4 = &frame[ETH_HLEN + ihl..ETH_HLEN + total];
    match frame[ETH_HLEN + 9] {
        IPPROTO_TCP => l4.len() >= 20 && (20..=l4.len()).contains(&(usize::from(l4[12] >> 4) * 4)),
        IPPROTO_UDP => l4.len() >= 8,
        IPPROTO_ICMP => l4.len() >= 8,
        _ => false,
    }
}

/// What the corpus did to one program.
#[derive(Debug, Default)]
struct Tally {
    runs: usize,
    /// Frames the kernel would not make an skb of for the run (too short for their
    /// network header).
    refused: usize,
    drops: usize,
    counted_drops: u64,
    flows_created: usize,
}

/// Whether the test run failed because the kernel refused the input (EINVAL).
fn refused_by_test_run(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(22))
    })
}

/// The verb (`pass`, `redirect`, `drop`) of a verdict of `program`; None for a verdict it
/// must never give.
fn verb(program: &str, verdict: u32) -> Option<&'static str> {
    match (program == UPLINK_PROGRAM, verdict) {
        (true, XDP_PASS) | (false, TC_ACT_OK) => Some("pass"),
        (true, XDP_REDIRECT) | (false, TC_ACT_REDIRECT) => Some("redirect"),
        (true, XDP_DROP) | (false, TC_ACT_SHOT) => Some("drop"),
        _ => None,
    }
}

impl Fixture {
    /// Entries of both flow tables.
    fn flow_entries(&self) -> Result<usize> {
        let nat: HashMap<&MapData, FlowKey, NatFlow> =
            HashMap::try_from(self.ebpf.map(NAT_FLOWS).unwrap())?;
        let ct: HashMap<&MapData, CtKey, CtEntry> =
            HashMap::try_from(self.ebpf.map(CONNTRACK).unwrap())?;
        Ok(nat.keys().count() + ct.keys().count() + self.flows6()?.len())
    }

    /// Runs every mutant of every seed through `program`, asserting the corpus's
    /// invariants frame by frame.
    fn run_corpus(&mut self, program: &str, seeds: &[Seed], rng: &mut Rng) -> Result<Tally> {
        let mut tally = Tally::default();
        // Every uplink program counts as `uplink_ingress`.
        let counted_as = match program {
            UPLINK_TC_PROGRAM | UPLINK_L3_PROGRAM => UPLINK_PROGRAM,
            other => other,
        };
        // What a layer-3 device receives of a frame: no Ethernet header.
        let received_from = |frame: &[u8]| match program {
            UPLINK_L3_PROGRAM => frame[ETH_HLEN..].to_vec(),
            _ => frame.to_vec(),
        };
        let prefix = format!("{counted_as}.");
        for seed in seeds {
            for (what, mut frame) in mutants(&seed.frame, rng) {
                if program == UPLINK_L3_PROGRAM {
                    as_the_tunnel_program_sees_it(&mut frame);
                }
                let case = format!("{program}: {} {what}", seed.name);
                let flows_before = self.flow_entries()?;
                let (verdict, _, moved) = match self.run_counting(program, &received_from(&frame)) {
                    Ok(ran) => ran,
                    Err(e) if refused_by_test_run(&e) => {
                        // The kernel builds an skb from the frame before the run and wants
                        // the network header whole; such a frame never reaches TC.
                        assert!(
                            program != UPLINK_PROGRAM && frame.len() < ETH_HLEN + 40,
                            "{case}: refused"
                        );
                        tally.refused += 1;
                        continue;
                    }
                    Err(e) => return Err(e.context(case)),
                };
                let flows_created = self.flow_entries()?.saturating_sub(flows_before);
                tally.runs += 1;

                assert_ne!(
                    (program == UPLINK_PROGRAM, verdict),
                    (true, XDP_ABORTED),
                    "{case}: aborted"
                );
                let verb = verb(program, verdict)
                    .unwrap_or_else(|| panic!("{case}: unexpected verdict {verdict}"));
                let (own, others): (Vec<_>, Vec<_>) = moved
                    .iter()
                    .partition(|(stat, _)| stat.name().starts_with(&prefix));
                assert!(
                    matches!(own.as_slice(), [(stat, 1)]
                        if stat.name()[prefix.len()..].starts_with(&format!("{verb}."))),
                    "{case}: verdict {verb} must be counted once under a {verb} reason, \
                     moved {moved:?}"
                );
                assert!(
                    others.iter().all(|(stat, _)| *stat == Stat::FlowEarlyDrop),
                    "{case}: another program's counter moved: {moved:?}"
                );
                if verb == "drop" {
                    tally.drops += 1;
                    tally.counted_drops += own[0].1;
                }
                if flows_created > 0 {
                    assert!(
                        well_formed_first_packet(&frame),
                        "{case}: created {flows_created} flow entries from {frame:02x?}"
                    );
                    tally.flows_created += flows_created;
                }
            }
        }
        Ok(tally)
    }
}

fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f.extend_from_slice(&WORLD_IP.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&NODE_IP.octets());
    f
}

/// IPv6 seeds from `src` to `dst` (MACs `src_mac` → `dst_mac`): a SYN to `dport` behind
/// hop-by-hop and destination options, a UDP first fragment, an echo request, and a
/// neighbour solicitation.
fn ipv6_seeds(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    dport: u16,
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
) -> Vec<Seed> {
    use ipv6::{NEXTHDR_DEST, NEXTHDR_FRAGMENT, NEXTHDR_HOP, Packet6, extension};
    let macs = |p: Packet6| Packet6 {
        src_mac,
        dst_mac,
        ..p
    };
    vec![
        Seed {
            name: "ipv6 syn behind extension headers",
            frame: macs(Packet6::tcp(src, 40000, dst, dport, SYN))
                .with_extensions(&[extension(NEXTHDR_HOP, 8, 0), extension(NEXTHDR_DEST, 16, 0)])
                .build(),
        },
        Seed {
            name: "ipv6 udp first fragment",
            frame: macs(Packet6::udp(src, 40001, dst, 5353, 24))
                .with_extensions(&[extension(NEXTHDR_FRAGMENT, 8, 1)])
                .build(),
        },
        Seed {
            name: "ipv6 echo request",
            frame: macs(Packet6::icmp6(src, dst, 128, &[0, 7, 0, 1, 9, 9, 9, 9])).build(),
        },
        Seed {
            name: "neighbour solicitation",
            frame: Packet6 {
                src_mac,
                ..ipv6::neighbour_solicitation(dst)
            }
            .build(),
        },
    ]
}

/// The first fragment of a UDP datagram to `dst`:`dport` too long for one frame.
fn first_fragment(packet: Packet) -> Vec<u8> {
    fragments(&packet.build(), 48).swap_remove(0)
}

fn uplink_seeds() -> Vec<Seed> {
    let mut fragment_tail = fragments(&udp(WORLD_IP, 40001, NODE_IP, 5353, 100).build(), 48);
    vec![
        Seed {
            name: "syn to a published port",
            frame: syn_to(NODE_IP, 8080).build(),
        },
        Seed {
            name: "udp to a published port",
            frame: udp(WORLD_IP, 40000, NODE_IP, 5353, 16).build(),
        },
        Seed {
            name: "echo request",
            frame: echo_request(WORLD_IP, NODE_IP, 7),
        },
        Seed {
            name: "first fragment",
            frame: first_fragment(udp(WORLD_IP, 40001, NODE_IP, 5353, 100)),
        },
        Seed {
            name: "last fragment",
            frame: fragment_tail.pop().unwrap(),
        },
        Seed {
            name: "syn with ip options",
            frame: Packet {
                ip_options: 8,
                ..syn_to(NODE_IP, 8080)
            }
            .build(),
        },
        Seed {
            name: "syn to the loopback-published port",
            frame: syn_to(Ipv4Addr::LOCALHOST, 8081).build(),
        },
        Seed {
            name: "arp",
            frame: arp_request(),
        },
    ]
    .into_iter()
    .chain(ipv6_seeds(
        ipv6::WORLD_IP6,
        ipv6::NODE_IP6,
        8080,
        ([0x02, 0, 0, 0, 0, 0x02], [0x02, 0, 0, 0, 0, 0x01]),
    ))
    .collect()
}

/// The test run takes the skb's protocol of a bare packet from its bytes 12-13 (see the
/// layer3 module): the mutant's Ethernet type becomes those bytes, so that the frame judged
/// well-formed or not is the one the program saw.
fn as_the_tunnel_program_sees_it(frame: &mut [u8]) {
    if frame.len() >= 2 * ETH_HLEN {
        frame.copy_within(ETH_HLEN + 12..2 * ETH_HLEN, 12);
    }
}

/// Seeds from a client behind a layer-3 tunnel, built as Ethernet frames for the mutants
/// (the corpus strips the header): their source address makes the test run take them for
/// IPv4 (see the layer3 module).
fn layer3_uplink_seeds() -> Vec<Seed> {
    let client = super::layer3::TUNNEL_CLIENT;
    vec![
        Seed {
            name: "syn to a published port through a tunnel",
            frame: Packet::tcp_syn(client, 40000, NODE_IP, 8080).build(),
        },
        Seed {
            name: "udp to a published port through a tunnel",
            frame: udp(client, 40000, NODE_IP, 5353, 16).build(),
        },
        Seed {
            name: "echo request through a tunnel",
            frame: echo_request(client, NODE_IP, 7),
        },
        Seed {
            name: "first fragment through a tunnel",
            frame: first_fragment(udp(client, 40001, NODE_IP, 5353, 100)),
        },
        Seed {
            name: "syn with ip options through a tunnel",
            frame: Packet {
                ip_options: 8,
                ..Packet::tcp_syn(client, 40000, NODE_IP, 8080)
            }
            .build(),
        },
    ]
}

fn container_seeds() -> Vec<Seed> {
    let mut fragment_tail = fragments(
        &sent_by_container(udp(CONTAINER_IP, 5001, WORLD_IP, 53, 100)).build(),
        48,
    );
    vec![
        Seed {
            name: "syn out",
            frame: from_container(CONTAINER_IP, 5000, 80, IPPROTO_TCP, SYN),
        },
        Seed {
            name: "udp out",
            frame: from_container(CONTAINER_IP, 5000, 53, IPPROTO_UDP, 0),
        },
        Seed {
            name: "reply of a published port",
            frame: sent_by_container(Packet {
                tcp_flags: SYN_ACK,
                ..Packet::tcp_syn(CONTAINER_IP, 80, WORLD_IP, 40000)
            })
            .build(),
        },
        Seed {
            name: "syn to the other container",
            frame: sent_by_container(Packet::tcp_syn(CONTAINER_IP, 5000, OTHER_CONTAINER_IP, 80))
                .build(),
        },
        Seed {
            name: "echo request out",
            frame: {
                let mut f = echo_request(CONTAINER_IP, WORLD_IP, 9);
                f[0..6].copy_from_slice(&HOST_VETH_MAC);
                f[6..12].copy_from_slice(&CONTAINER_MAC);
                f
            },
        },
        Seed {
            name: "first fragment out",
            frame: first_fragment(sent_by_container(udp(
                CONTAINER_IP,
                5001,
                WORLD_IP,
                53,
                100,
            ))),
        },
        Seed {
            name: "last fragment out",
            frame: fragment_tail.pop().unwrap(),
        },
        Seed {
            name: "syn out with ip options",
            frame: sent_by_container(Packet {
                ip_options: 40,
                ..Packet::tcp_syn(CONTAINER_IP, 5002, WORLD_IP, 80)
            })
            .build(),
        },
        Seed {
            name: "arp",
            frame: arp_request(),
        },
    ]
    .into_iter()
    .chain(ipv6_seeds(
        ipv6::CONTAINER_IP6,
        ipv6::WORLD_IP6,
        80,
        (CONTAINER_MAC, HOST_VETH_MAC),
    ))
    .collect()
}

#[test]
fn malformed_frame_corpus_is_counted_and_creates_no_flows() -> Result<()> {
    let ns = forwarding_namespace()?;
    ns.run(|| -> Result<()> {
        let mut fx = Fixture::masquerading(CONNTRACK_MAX)?;
        fx.publish_ipv6_ports()?;
        let mut rng = Rng(0x5eed_cafe_f00d_0017);
        let uplink = fx.run_corpus(UPLINK_PROGRAM, &uplink_seeds(), &mut rng)?;
        let uplink_tc = fx.run_corpus(UPLINK_TC_PROGRAM, &uplink_seeds(), &mut rng)?;
        let uplink_l3 = fx.run_corpus(UPLINK_L3_PROGRAM, &layer3_uplink_seeds(), &mut rng)?;
        let container = fx.run_corpus(CONTAINER_PROGRAM, &container_seeds(), &mut rng)?;
        let mut figures = serde_json::Map::new();
        for (program, tally) in [
            (UPLINK_PROGRAM, &uplink),
            (UPLINK_TC_PROGRAM, &uplink_tc),
            (UPLINK_L3_PROGRAM, &uplink_l3),
            (CONTAINER_PROGRAM, &container),
        ] {
            assert_eq!(tally.counted_drops, tally.drops as u64, "{program}");
            // Picked up by docs/reliability.md's "malformed frames" row.
            eprintln!(
                "malformed-frame corpus: {program}: {} runs, {} refused by the kernel, {} drops, {} counted, 0 aborted, \
                 {} flow entries (all from well-formed first packets)",
                tally.runs, tally.refused, tally.drops, tally.counted_drops, tally.flows_created
            );
            figures.insert(
                program.to_string(),
                serde_json::json!({
                    "runs": tally.runs, "refused_by_the_kernel": tally.refused,
                    "drops": tally.drops, "counted": tally.counted_drops, "aborted": 0,
                    "flow_entries_from_well_formed_first_packets": tally.flows_created,
                }),
            );
        }
        bpfbridge_tests::figures::record("malformed_frames", figures.into())
    })
}
