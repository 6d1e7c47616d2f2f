//! Property fuzzing of the shared packet parser (`dataplane_common::parse`), which the BPF
//! programs run on every frame from the wire and from containers.
//!
//! Frames are generated from a structure (Ethernet, IPv4 with options and every kind of
//! fragment word, TCP/UDP/ICMP headers, ICMP errors quoting a packet, payload, Ethernet
//! padding), their total length set right, nearly right or anywhere, then a few bytes flipped.
//! Each frame is checked for properties, not only for the absence of a panic:
//!
//! - the parser agrees with [`reference`], a small decoder written independently here from
//!   the parser's documented rules, on every outcome: the rejection reason, every header
//!   field, every offset, and what `icmp_echo` and `icmp_error` find;
//! - every offset it returns, with the bytes read or written there, lies inside the frame
//!   and inside the IPv4 packet (never in the Ethernet padding);
//! - a frame re-parses identically without its padding and with other padding: the
//!   outcome depends on the packet alone;
//! - cut at every length (XDP's view: the frame is what there is), a frame is either
//!   rejected or, once the cut keeps the whole packet, parsed identically; no cut yields a
//!   `Transport` result that reads past it;
//! - seen through a linear area shorter than the frame (TC's view of a non-linear skb, the
//!   frame's length still the whole), the parser either says `Truncated` (the program then
//!   pulls the headers in and parses again) or gives the whole frame's result.
//!
//! Without settings the run is short and repeatable (a fixed seed, a fixed number of
//! frames): `cargo xtask test` and CI run it so. `cargo xtask fuzz --seconds N` runs it for N
//! seconds from a random seed (`BPFBRIDGE_FUZZ_SECONDS`, `BPFBRIDGE_FUZZ_SEED`); a failure
//! prints the smallest frame proptest shrank it to and the seed that replays it.

use std::{
    cell::RefCell,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use dataplane_common::{
    IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
    parse::{
        ETH_HLEN, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_PARAMETER_PROBLEM,
        ICMP_TIME_EXCEEDED, IcmpError, Ipv4, L4, Malformed, Parsed, icmp_echo, icmp_error, parse,
    },
};
use proptest::{
    prelude::*,
    sample::Index,
    test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner},
};

/// Frames per round; a short run is [`SHORT_ROUNDS`] rounds.
const FRAMES_PER_ROUND: u32 = 2_000;
const SHORT_ROUNDS: u64 = 2;
/// The short run's seed, so that CI checks the same frames every time.
const FIXED_SEED: u64 = 0x6270_6662_7269_6467;

#[test]
fn parser_properties() {
    let seconds = env_number("BPFBRIDGE_FUZZ_SECONDS");
    let seed = env_number("BPFBRIDGE_FUZZ_SEED").unwrap_or_else(|| match seconds {
        // A long run explores: a new seed each time, printed so a failure can be replayed.
        Some(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(FIXED_SEED, |d| d.as_nanos() as u64),
        None => FIXED_SEED,
    });
    let started = Instant::now();
    let deadline = seconds.map(|s| started + Duration::from_secs(s));
    let mut rounds = 0;
    let tally = RefCell::new(Tally::default());
    loop {
        // Each round has its own seed, so a failure replays with one round, not the run.
        let round_seed = seed.wrapping_add(rounds);
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&round_seed.to_le_bytes());
        let config = Config {
            cases: FRAMES_PER_ROUND,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner = TestRunner::new_with_rng(
            config,
            TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
        );
        let result = runner.run(&cases(), |(Bytes(frame), linear, Bytes(padding))| {
            tally.borrow_mut().count(&outcome(&frame, frame.len()));
            check(&frame, linear.index(frame.len() + 1), &padding)
        });
        if let Err(failure) = result {
            panic!(
                "{failure}\nreplay with BPFBRIDGE_FUZZ_SEED={round_seed} cargo test -p \
                 dataplane-common --test parser_fuzz"
            );
        }
        rounds += 1;
        let done = match deadline {
            Some(deadline) => Instant::now() >= deadline,
            // A replayed seed is one round; the short run a few.
            None => env_number("BPFBRIDGE_FUZZ_SEED").is_some() || rounds >= SHORT_ROUNDS,
        };
        if done {
            break;
        }
    }
    let frames = rounds * u64::from(FRAMES_PER_ROUND);
    let seconds = started.elapsed().as_secs_f64();
    let tally = tally.into_inner();
    eprintln!(
        "parser fuzz: {frames} frames in {seconds:.1} s, seed {seed}, no property broken; {tally}"
    );
    record_figures(serde_json::json!({
        "frames": frames, "seconds": (seconds * 10.0).round() / 10.0, "seed": seed.to_string(),
        "properties_broken": 0, "tcp_udp": tally.transport,
        "later_fragments": tally.fragments, "other_protocols": tally.other_protocols,
        "icmp_echoes": tally.icmp_echoes,
        "icmp_errors_with_a_usable_quote": tally.icmp_errors, "not_ipv4": tally.not_ipv4,
        "rejected": tally.rejected,
    }));
}

/// Writes the run's figures where the integration tests put theirs
/// (`bpfbridge_tests::figures`, which this crate cannot depend on: it is below the agent),
/// in the same format, for docs/reliability.md. The parser is the eBPF dataplane's.
fn record_figures(figures: serde_json::Value) {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("reliability");
    let commit = std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR")])
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string());
    let body = serde_json::json!({
        "name": "parser_fuzz",
        "dataplane": "ebpf",
        "figures": figures,
        "recorded_unix": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "commit": commit,
    });
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("parser_fuzz.ebpf.json"), body.to_string()));
    if let Err(err) = written {
        eprintln!(
            "parser fuzz: the figures were not recorded in {}: {err}",
            dir.display()
        );
    }
}

/// What the generated frames were, so that a run shows it reached every kind (shrinking's
/// attempts count too).
#[derive(Default)]
struct Tally {
    transport: u64,
    fragments: u64,
    other_protocols: u64,
    icmp_echoes: u64,
    icmp_errors: u64,
    not_ipv4: u64,
    rejected: u64,
}

impl Tally {
    fn count(&mut self, outcome: &Outcome) {
        let kind = match outcome.parsed {
            Ok(Parsed::Transport(..)) => &mut self.transport,
            Ok(Parsed::Fragment(_)) => &mut self.fragments,
            Ok(Parsed::OtherProtocol(_)) => &mut self.other_protocols,
            Ok(Parsed::NotIpv4) => &mut self.not_ipv4,
            Err(_) => &mut self.rejected,
        };
        *kind += 1;
        if outcome.echo_request.is_some() || outcome.echo_reply.is_some() {
            self.icmp_echoes += 1;
        }
        if outcome.error.is_some() {
            self.icmp_errors += 1;
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} TCP/UDP, {} later fragments, {} other protocols ({} ICMP echoes, {} ICMP \
             errors with a usable quote), {} not IPv4, {} rejected",
            self.transport,
            self.fragments,
            self.other_protocols,
            self.icmp_echoes,
            self.icmp_errors,
            self.not_ipv4,
            self.rejected
        )
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

// ---------------------------------------------------------------------------------------
// The properties.

/// Checks every property of one frame. `linear` is where TC's linear area ends; `padding`
/// is other Ethernet padding to put after the packet.
fn check(frame: &[u8], linear: usize, padding: &[u8]) -> Result<(), TestCaseError> {
    let whole = outcome(frame, frame.len());
    prop_assert_eq!(&whole, &reference(frame), "parser and reference disagree");
    check_offsets(frame, frame.len())?;

    let packet_end = match whole.parsed {
        Ok(Parsed::Fragment(ip) | Parsed::OtherProtocol(ip) | Parsed::Transport(ip, _)) => {
            Some(ETH_HLEN + usize::from(ip.total_len))
        }
        Err(Malformed::BadTransportHeader) => reference_packet_end(frame),
        _ => None,
    };
    if let Some(end) = packet_end {
        let bare = &frame[..end];
        prop_assert_eq!(&outcome(bare, bare.len()), &whole, "without its padding");
        let padded = [bare, padding].concat();
        prop_assert_eq!(
            &outcome(&padded, padded.len()),
            &whole,
            "with other padding"
        );
    }

    for cut in 0..frame.len() {
        let short = &frame[..cut];
        let seen = outcome(short, cut);
        prop_assert_eq!(&seen, &reference(short), "cut at {}", cut);
        check_offsets(short, cut)?;
        match packet_end {
            Some(end) if cut >= end => prop_assert_eq!(&seen, &whole, "cut at {} keeps it", cut),
            Some(_) => prop_assert!(seen.parsed.is_err(), "cut at {}: {:?}", cut, seen),
            None => {}
        }
    }

    // TC: the frame's length is the whole, the bytes the parser can load end at `linear`.
    let seen = outcome(&frame[..linear], frame.len());
    if seen.parsed != Err(Malformed::Truncated) {
        prop_assert_eq!(seen.parsed, whole.parsed, "linear area of {} bytes", linear);
        // The ICMP helpers have no `Truncated`: what they cannot load they do not see (the
        // program pulls an ICMP error's quote in before asking).
        for (partial, full) in [
            (seen.echo_request, whole.echo_request),
            (seen.echo_reply, whole.echo_reply),
        ] {
            prop_assert!(partial.is_none() || partial == full);
        }
        prop_assert!(seen.error.is_none() || seen.error == whole.error);
    }
    Ok(())
}

/// Where the reference says the IPv4 packet ends, when its lengths are consistent.
fn reference_packet_end(frame: &[u8]) -> Option<usize> {
    let ip = frame.get(ETH_HLEN..)?;
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    (total <= ip.len()).then_some(ETH_HLEN + total)
}

/// Every offset the parser returns, with the bytes used there, lies inside the packet,
/// and the packet inside the first `len` bytes of `frame`.
fn check_offsets(frame: &[u8], len: usize) -> Result<(), TestCaseError> {
    let Ok(Parsed::Fragment(ip) | Parsed::OtherProtocol(ip) | Parsed::Transport(ip, _)) =
        parse(frame, len)
    else {
        return Ok(());
    };
    let end = ETH_HLEN + usize::from(ip.total_len);
    prop_assert!(
        end <= len && end <= frame.len(),
        "packet end {} past the frame",
        end
    );
    prop_assert!(ip.l4_offset() <= end);
    let mut used: Vec<(&str, usize, usize)> = Vec::new();
    if let Ok(Parsed::Transport(_, l4)) = parse(frame, len) {
        used.push(("ports", ip.l4_offset(), 4));
        used.push(("transport checksum", l4.check_offset, 2));
    }
    for request in [true, false] {
        if let Some(echo) = icmp_echo(frame, &ip, request) {
            used.push(("echo header", ip.l4_offset(), 8));
            used.push(("echo checksum", echo.check_offset, 2));
        }
    }
    if let Some(error) = icmp_error(frame, &ip) {
        let q = error.quoted;
        used.push(("icmp checksum", error.check_offset, 2));
        used.push(("quoted header", q.offset, q.header_len));
        used.push(("quoted transport", q.l4_offset(), 8));
        used.push(("quoted source port", q.port_offset(true), 2));
        used.push(("quoted destination port", q.port_offset(false), 2));
        if let Some((at, _)) = q.l4_check {
            used.push(("quoted checksum", at, 2));
        }
    }
    for (what, at, size) in used {
        prop_assert!(
            at + size <= end,
            "{} at {}+{} past the packet end {}",
            what,
            at,
            size,
            end
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// One model of what a frame is, filled by the parser or by the reference decoder.

/// Everything the parser module says of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Outcome {
    parsed: Result<Parsed, Malformed>,
    echo_request: Option<L4>,
    echo_reply: Option<L4>,
    error: Option<IcmpError>,
}

/// What the parser module says of the first `len` bytes of `frame`... as the programs ask:
/// `parse`, then the ICMP helpers on the IPv4 header it found.
fn outcome(frame: &[u8], len: usize) -> Outcome {
    let parsed = parse(frame, len);
    let ip = match parsed {
        Ok(Parsed::Fragment(ip) | Parsed::OtherProtocol(ip) | Parsed::Transport(ip, _)) => Some(ip),
        _ => None,
    };
    Outcome {
        parsed,
        echo_request: ip.and_then(|ip| icmp_echo(frame, &ip, true)),
        echo_reply: ip.and_then(|ip| icmp_echo(frame, &ip, false)),
        error: ip.and_then(|ip| icmp_error(frame, &ip)),
    }
}

// ---------------------------------------------------------------------------------------
// The reference decoder: plain slices, the parser's documented rules, no shared code. The
// parser's types are only the shape its answer is given in.

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// A 16-bit field as the parser keeps it: the bytes in memory order ("_be" fields).
fn raw16(bytes: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([bytes[at], bytes[at + 1]])
}

fn raw32(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn rejected(reason: Malformed) -> Outcome {
    Outcome {
        parsed: Err(reason),
        echo_request: None,
        echo_reply: None,
        error: None,
    }
}

/// The reference decoding of a whole frame (its length is the slice's).
fn reference(frame: &[u8]) -> Outcome {
    if frame.len() < 14 {
        return rejected(Malformed::Truncated);
    }
    if be16(frame, 12) != 0x0800 {
        return Outcome {
            parsed: Ok(Parsed::NotIpv4),
            ..rejected(Malformed::Truncated)
        };
    }
    let ip = &frame[14..];
    if ip.len() < 20 {
        return rejected(Malformed::Truncated);
    }
    if ip[0] >> 4 != 4 {
        return rejected(Malformed::BadVersion);
    }
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    if header_len < 20 {
        return rejected(Malformed::BadHeaderLength);
    }
    if ip.len() < header_len {
        return rejected(Malformed::Truncated);
    }
    let total = usize::from(be16(ip, 2));
    if total < header_len || total > ip.len() {
        return rejected(Malformed::BadTotalLength);
    }
    // From here on only the packet counts: bytes past its total length are padding.
    let packet = &ip[..total];
    let header = Ipv4 {
        header_len,
        total_len: total as u16,
        ttl: packet[8],
        protocol: packet[9],
        src_be: raw32(packet, 12),
        dst_be: raw32(packet, 16),
        id_be: raw16(packet, 4),
        frag: be16(packet, 6),
    };
    let flags_and_offset = be16(packet, 6);
    let later_fragment = flags_and_offset & 0x1fff != 0;
    let segment = &packet[header_len..];
    let l4_offset = 14 + header_len;
    let parsed = if later_fragment {
        Ok(Parsed::Fragment(header))
    } else {
        match header.protocol {
            6 => {
                let data_offset = segment.get(12).map_or(0, |b| usize::from(b >> 4) * 4);
                if segment.len() < 20 || data_offset < 20 || data_offset > segment.len() {
                    Err(Malformed::BadTransportHeader)
                } else {
                    Ok(Parsed::Transport(
                        header,
                        L4 {
                            sport_be: raw16(segment, 0),
                            dport_be: raw16(segment, 2),
                            check_offset: l4_offset + 16,
                            check: raw16(segment, 16),
                            tcp_flags: segment[13],
                        },
                    ))
                }
            }
            17 if segment.len() < 8 => Err(Malformed::BadTransportHeader),
            17 => Ok(Parsed::Transport(
                header,
                L4 {
                    sport_be: raw16(segment, 0),
                    dport_be: raw16(segment, 2),
                    check_offset: l4_offset + 6,
                    check: raw16(segment, 6),
                    tcp_flags: 0,
                },
            )),
            _ => Ok(Parsed::OtherProtocol(header)),
        }
    };
    let Ok(_) = parsed else {
        return rejected(Malformed::BadTransportHeader);
    };
    let icmp = header.protocol == 1;
    Outcome {
        parsed,
        echo_request: reference_echo(icmp && !later_fragment, segment, l4_offset, true),
        echo_reply: reference_echo(icmp && !later_fragment, segment, l4_offset, false),
        // An ICMP error that is a fragment, even the first, is not looked into.
        error: (icmp && flags_and_offset & 0x3fff == 0)
            .then(|| reference_error(segment, l4_offset))
            .flatten(),
    }
}

/// An ICMP echo request or reply in `segment` (the ICMP message, at `l4_offset`).
fn reference_echo(icmp: bool, segment: &[u8], l4_offset: usize, request: bool) -> Option<L4> {
    let wanted = if request { 8 } else { 0 };
    if !icmp || segment.len() < 8 || segment[0] != wanted || segment[1] != 0 {
        return None;
    }
    let id = raw16(segment, 4);
    Some(L4 {
        sport_be: if request { id } else { 0 },
        dport_be: if request { 0 } else { id },
        check_offset: l4_offset + 2,
        check: raw16(segment, 2),
        tcp_flags: 0,
    })
}

/// An ICMP error in `segment` and the packet it quotes (its header and 8 bytes, all inside
/// the ICMP message).
fn reference_error(segment: &[u8], l4_offset: usize) -> Option<IcmpError> {
    if segment.len() < 8 || ![3, 11, 12].contains(&segment[0]) {
        return None;
    }
    let quote = &segment[8..];
    if quote.len() < 20 || quote[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(quote[0] & 0x0f) * 4;
    if header_len < 20 || be16(quote, 6) & 0x1fff != 0 || quote.len() < header_len + 8 {
        return None;
    }
    let transport = &quote[header_len..header_len + 8];
    let quote_offset = l4_offset + 8;
    let transport_offset = quote_offset + header_len;
    let (sport_be, dport_be, l4_check) = match quote[9] {
        6 => (raw16(transport, 0), raw16(transport, 2), None),
        17 => {
            let check = raw16(transport, 6);
            let used = check != 0;
            (
                raw16(transport, 0),
                raw16(transport, 2),
                used.then_some((transport_offset + 6, check)),
            )
        }
        1 if transport[1] == 0 && (transport[0] == 8 || transport[0] == 0) => {
            let id = raw16(transport, 4);
            let check = Some((transport_offset + 2, raw16(transport, 2)));
            if transport[0] == 8 {
                (id, 0, check)
            } else {
                (0, id, check)
            }
        }
        _ => return None,
    };
    Some(IcmpError {
        icmp_type: segment[0],
        code: segment[1],
        check: raw16(segment, 2),
        check_offset: l4_offset + 2,
        quoted: dataplane_common::parse::Quoted {
            offset: quote_offset,
            header_len,
            protocol: quote[9],
            src_be: raw32(quote, 12),
            dst_be: raw32(quote, 16),
            ip_check: raw16(quote, 10),
            sport_be,
            dport_be,
            l4_check,
        },
    })
}

// ---------------------------------------------------------------------------------------
// The frames.

/// A frame, where TC's linear area ends in it, and other padding.
fn cases() -> impl Strategy<Value = (Bytes, Index, Bytes)> {
    (
        frame().prop_map(Bytes),
        any::<Index>(),
        padding().prop_map(Bytes),
    )
}

/// Bytes that a failure prints as one line of hex, the way a frame is read.
#[derive(Clone)]
struct Bytes(Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            let gap = if i == 0 { "" } else { " " };
            write!(f, "{gap}{byte:02x}")?;
        }
        Ok(())
    }
}

fn padding() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => Just(Vec::new()),
        1 => prop::collection::vec(any::<u8>(), 1..24),
    ]
}

/// How the IPv4 total length is set.
#[derive(Clone, Debug)]
enum TotalLength {
    Exact,
    Off(i32),
    Any(u16),
}

fn frame() -> impl Strategy<Value = Vec<u8>> {
    let ethertype = prop_oneof![
        24 => Just(0x0800u16),
        1 => Just(0x86dd),
        1 => Just(0x0806),
        1 => any::<u16>(),
    ];
    let total_length = prop_oneof![
        6 => Just(TotalLength::Exact),
        2 => (-24i32..24).prop_map(TotalLength::Off),
        1 => any::<u16>().prop_map(TotalLength::Any),
    ];
    let flips = prop_oneof![
        3 => Just(Vec::new()),
        2 => prop::collection::vec((0usize..140, any::<u8>()), 1..4),
    ];
    (
        ethertype,
        ipv4_header(),
        transport(),
        prop::collection::vec(any::<u8>(), 0..40),
        total_length,
        padding(),
        flips,
    )
        .prop_map(
            |(ethertype, mut ip, transport, payload, total_length, padding, flips)| {
                let protocol = ip[9];
                let mut frame = vec![0u8; 12];
                frame[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
                frame[6..].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
                frame.extend_from_slice(&ethertype.to_be_bytes());
                let packet_len = ip.len() + transport.len_for(protocol) + payload.len();
                let total = match total_length {
                    TotalLength::Exact => packet_len as u16,
                    TotalLength::Off(by) => (packet_len as i32 + by).clamp(0, 0xffff) as u16,
                    TotalLength::Any(total) => total,
                };
                ip[2..4].copy_from_slice(&total.to_be_bytes());
                frame.extend_from_slice(&ip);
                transport.write(protocol, &mut frame);
                frame.extend_from_slice(&payload);
                frame.extend_from_slice(&padding);
                for (at, value) in flips {
                    if let Some(byte) = frame.get_mut(at) {
                        *byte = value;
                    }
                }
                frame
            },
        )
}

/// An IPv4 header with options as its IHL says (a bad IHL gets none), total length 0.
fn ipv4_header() -> impl Strategy<Value = Vec<u8>> {
    let version_ihl = prop_oneof![
        10 => Just(0x45u8),
        4 => (6u8..=15).prop_map(|ihl| 0x40 | ihl),
        1 => any::<u8>(),
    ];
    let flags_and_offset = prop_oneof![
        6 => Just(0u16),
        2 => Just(0x4000), // don't fragment
        2 => Just(0x2000), // the first fragment
        2 => (1u16..0x2000, any::<bool>()).prop_map(|(o, more)| o | if more { 0x2000 } else { 0 }),
        1 => any::<u16>(),
    ];
    let protocol = prop_oneof![
        3 => Just(IPPROTO_TCP),
        3 => Just(IPPROTO_UDP),
        3 => Just(IPPROTO_ICMP),
        1 => any::<u8>(),
    ];
    (
        version_ihl,
        flags_and_offset,
        protocol,
        any::<[u8; 20]>(),
        prop::collection::vec(any::<u8>(), 40),
    )
        .prop_map(|(version_ihl, frag, protocol, mut fixed, options)| {
            fixed[0] = version_ihl;
            fixed[2..4].fill(0);
            fixed[6..8].copy_from_slice(&frag.to_be_bytes());
            fixed[9] = protocol;
            let ihl = usize::from(version_ihl & 0x0f);
            let mut header = fixed.to_vec();
            if (5..=15).contains(&ihl) && version_ihl >> 4 == 4 {
                header.extend_from_slice(&options[..(ihl - 5) * 4]);
            }
            header
        })
}

/// The transport header for whichever protocol the IPv4 header names.
#[derive(Clone, Debug)]
struct Transport {
    /// A TCP header (its data offset is set from `tcp_data_offset`) or a UDP one (the
    /// first 8 bytes).
    fixed: [u8; 20],
    tcp_data_offset: u8,
    tcp_options: Vec<u8>,
    icmp_type: u8,
    icmp_code: u8,
    icmp_rest: [u8; 6],
    /// For an ICMP error: the quoted packet's header and the 8 bytes after it.
    quote: Vec<u8>,
}

impl Transport {
    fn bytes(&self, protocol: u8) -> Vec<u8> {
        match protocol {
            IPPROTO_TCP => {
                let mut header = self.fixed.to_vec();
                header[12] = self.tcp_data_offset << 4 | (header[12] & 0x0f);
                let options = usize::from(self.tcp_data_offset.saturating_sub(5)) * 4;
                header.extend_from_slice(&self.tcp_options[..options]);
                header
            }
            IPPROTO_UDP => self.fixed[..8].to_vec(),
            IPPROTO_ICMP => {
                let mut message = vec![self.icmp_type, self.icmp_code];
                message.extend_from_slice(&self.icmp_rest);
                if [
                    ICMP_DEST_UNREACH,
                    ICMP_TIME_EXCEEDED,
                    ICMP_PARAMETER_PROBLEM,
                ]
                .contains(&self.icmp_type)
                {
                    message.extend_from_slice(&self.quote);
                }
                message
            }
            _ => Vec::new(),
        }
    }

    fn len_for(&self, protocol: u8) -> usize {
        self.bytes(protocol).len()
    }

    fn write(&self, protocol: u8, frame: &mut Vec<u8>) {
        frame.extend_from_slice(&self.bytes(protocol));
    }
}

fn transport() -> impl Strategy<Value = Transport> {
    let tcp_data_offset = prop_oneof![6 => Just(5u8), 3 => 6u8..=15, 1 => 0u8..5];
    let icmp_type = prop_oneof![
        2 => Just(ICMP_ECHO_REQUEST),
        2 => Just(ICMP_ECHO_REPLY),
        2 => Just(ICMP_DEST_UNREACH),
        1 => Just(ICMP_TIME_EXCEEDED),
        1 => Just(ICMP_PARAMETER_PROBLEM),
        1 => any::<u8>(),
    ];
    let icmp_code = prop_oneof![4 => Just(0u8), 1 => any::<u8>()];
    let quoted_transport = (
        prop_oneof![
            1 => Just(ICMP_ECHO_REQUEST),
            1 => Just(ICMP_ECHO_REPLY),
            1 => any::<u8>(),
        ],
        prop_oneof![3 => Just(0u8), 1 => any::<u8>()],
        any::<[u8; 6]>(),
    );
    // Quotes of every length around a whole one (header and 8 bytes).
    let quote = (ipv4_header(), quoted_transport, 0usize..=8).prop_map(
        |(mut header, (first, second, rest), keep)| {
            header[2..4].copy_from_slice(&64u16.to_be_bytes());
            header.extend_from_slice(&[first, second]);
            header.extend_from_slice(&rest);
            header.truncate(header.len() - 8 + keep);
            header
        },
    );
    (
        any::<[u8; 20]>(),
        tcp_data_offset,
        prop::collection::vec(any::<u8>(), 40),
        icmp_type,
        icmp_code,
        any::<[u8; 6]>(),
        quote,
    )
        .prop_map(
            |(fixed, tcp_data_offset, tcp_options, icmp_type, icmp_code, icmp_rest, quote)| {
                Transport {
                    fixed,
                    tcp_data_offset,
                    tcp_options,
                    icmp_type,
                    icmp_code,
                    icmp_rest,
                    quote,
                }
            },
        )
}
