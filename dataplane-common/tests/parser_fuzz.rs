//! Property fuzzing of the shared packet parser (`dataplane_common::parse`), which the BPF
//! programs run on every frame from the wire and from containers.
//!
//! Frames are generated from a structure (Ethernet, IPv4 with options and every kind of
//! fragment word, TCP/UDP/ICMP headers, ICMP errors quoting a packet, payload, Ethernet
//! padding; or IPv6 with chains of extension headers, fragment headers of every kind,
//! TCP/UDP/ICMPv6, ICMPv6 errors quoting a packet with its own chain), their total (IPv6:
//! payload) length set right, nearly right or anywhere, then a few bytes flipped.
//! Each frame is checked for properties, not only for the absence of a panic:
//!
//! - the parser agrees with [`reference`] and [`reference6`], small decoders written
//!   independently here from the parser's documented rules, on every outcome: the rejection
//!   reason, every header field, every offset, and what `icmp_echo`, `icmp_error` and their
//!   ICMPv6 counterparts find;
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
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    parse::{
        ETH_HLEN, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_PARAMETER_PROBLEM,
        ICMP_TIME_EXCEEDED, IcmpError, Ipv4, L4, Malformed, Parsed, Quoted, icmp_echo, icmp_error,
        ipv6::{
            ICMPV6_DEST_UNREACH, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, ICMPV6_PACKET_TOO_BIG,
            ICMPV6_PARAMETER_PROBLEM, ICMPV6_TIME_EXCEEDED, Ipv6, MAX_EXTENSION_HEADERS,
            NEXTHDR_AUTH, NEXTHDR_DEST, NEXTHDR_ESP, NEXTHDR_FRAGMENT, NEXTHDR_HOP, NEXTHDR_NONE,
            NEXTHDR_ROUTING, Parsed6, icmp6_echo, icmp6_error, parse_ipv6,
        },
        parse,
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
        "rejected": tally.rejected, "ipv6_tcp_udp": tally.ipv6_transport,
        "ipv6_later_fragments": tally.ipv6_fragments,
        "ipv6_other_protocols": tally.ipv6_other_protocols,
        "ipv6_icmp_echoes": tally.ipv6_icmp_echoes,
        "ipv6_icmp_errors_with_a_usable_quote": tally.ipv6_icmp_errors,
        "ipv6_rejected": tally.ipv6_rejected,
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
    ipv6_transport: u64,
    ipv6_fragments: u64,
    ipv6_other_protocols: u64,
    ipv6_icmp_echoes: u64,
    ipv6_icmp_errors: u64,
    ipv6_rejected: u64,
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
        let kind = match outcome.parsed6 {
            Ok(Parsed6::Transport(..)) => &mut self.ipv6_transport,
            Ok(Parsed6::Fragment(_)) => &mut self.ipv6_fragments,
            Ok(Parsed6::OtherProtocol(_)) => &mut self.ipv6_other_protocols,
            Ok(Parsed6::NotIpv6) => return,
            Err(_) => &mut self.ipv6_rejected,
        };
        *kind += 1;
        if outcome.echo6_request.is_some() || outcome.echo6_reply.is_some() {
            self.ipv6_icmp_echoes += 1;
        }
        if outcome.error6.is_some() {
            self.ipv6_icmp_errors += 1;
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} TCP/UDP, {} later fragments, {} other protocols ({} ICMP echoes, {} ICMP \
             errors with a usable quote), {} not IPv4, {} rejected; IPv6: {} TCP/UDP, {} later \
             fragments, {} other protocols ({} ICMPv6 echoes, {} ICMPv6 errors with a usable \
             quote), {} rejected",
            self.transport,
            self.fragments,
            self.other_protocols,
            self.icmp_echoes,
            self.icmp_errors,
            self.not_ipv4,
            self.rejected,
            self.ipv6_transport,
            self.ipv6_fragments,
            self.ipv6_other_protocols,
            self.ipv6_icmp_echoes,
            self.ipv6_icmp_errors,
            self.ipv6_rejected,
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

    let packet_end = match (whole.parsed, whole.parsed6) {
        (Ok(Parsed::Fragment(ip) | Parsed::OtherProtocol(ip) | Parsed::Transport(ip, _)), _) => {
            Some(ETH_HLEN + usize::from(ip.total_len))
        }
        (_, Ok(Parsed6::Fragment(ip) | Parsed6::OtherProtocol(ip) | Parsed6::Transport(ip, _))) => {
            Some(ip.end())
        }
        (Err(Malformed::BadTransportHeader), _) => reference_packet_end(frame),
        (_, Err(Malformed::BadTransportHeader | Malformed::BadExtensionHeader)) => {
            reference_packet_end6(frame)
        }
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
            Some(_) => prop_assert!(
                seen.parsed.is_err() || seen.parsed6.is_err(),
                "cut at {}: {:?}",
                cut,
                seen
            ),
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
    if seen.parsed6 != Err(Malformed::Truncated) {
        prop_assert_eq!(
            seen.parsed6,
            whole.parsed6,
            "IPv6, linear area of {} bytes",
            linear
        );
        for (partial, full) in [
            (seen.echo6_request, whole.echo6_request),
            (seen.echo6_reply, whole.echo6_reply),
        ] {
            prop_assert!(partial.is_none() || partial == full);
        }
        prop_assert!(seen.error6.is_none() || seen.error6 == whole.error6);
    }
    Ok(())
}

/// Where the reference says the IPv6 packet ends, when its payload length fits the frame.
fn reference_packet_end6(frame: &[u8]) -> Option<usize> {
    let ip = frame.get(ETH_HLEN..)?;
    let total = 40 + usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
    (total <= ip.len()).then_some(ETH_HLEN + total)
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
        return check_offsets6(frame, len);
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
        if let Some((at, _)) = q.l4_check.get() {
            used.push(("quoted checksum", at, 2));
        }
    }
    within(&used, end)
}

/// [`check_offsets`] for an IPv6 packet.
fn check_offsets6(frame: &[u8], len: usize) -> Result<(), TestCaseError> {
    let parsed = parse_ipv6(frame, len);
    let Ok(Parsed6::Fragment(ip) | Parsed6::OtherProtocol(ip) | Parsed6::Transport(ip, _)) = parsed
    else {
        return Ok(());
    };
    let end = ip.end();
    prop_assert!(
        end <= len && end <= frame.len(),
        "packet end {} past the frame",
        end
    );
    prop_assert!(ip.l4_offset() <= end && ip.header_len >= 40);
    let mut used: Vec<(&str, usize, usize)> = Vec::new();
    if let Ok(Parsed6::Transport(_, l4)) = parsed {
        used.push(("ports", ip.l4_offset(), 4));
        used.push(("transport checksum", l4.check_offset, 2));
    }
    for request in [true, false] {
        if let Some(echo) = icmp6_echo(frame, &ip, request) {
            used.push(("echo header", ip.l4_offset(), 8));
            used.push(("echo checksum", echo.check_offset, 2));
        }
    }
    if let Some(error) = icmp6_error(frame, &ip) {
        let q = error.quoted;
        prop_assert!(q.header_len >= 40);
        used.push(("icmp checksum", error.check_offset, 2));
        used.push(("quoted header", q.offset, q.header_len));
        used.push(("quoted transport", q.l4_offset(), 8));
        used.push(("quoted source port", q.port_offset(true), 2));
        used.push(("quoted destination port", q.port_offset(false), 2));
        if let Some((at, _)) = q.l4_check.get() {
            used.push(("quoted checksum", at, 2));
        }
    }
    within(&used, end)
}

/// Every `(what, offset, size)` in `used` ends by `end`.
fn within(used: &[(&str, usize, usize)], end: usize) -> Result<(), TestCaseError> {
    for &(what, at, size) in used {
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
    parsed6: Result<Parsed6, Malformed>,
    echo6_request: Option<L4>,
    echo6_reply: Option<L4>,
    error6: Option<IcmpError<[u8; 16]>>,
}

/// What the parser module says of the first `len` bytes of `frame`... as the programs ask:
/// `parse` and `parse_ipv6`, then the ICMP helpers on the IP header they found.
fn outcome(frame: &[u8], len: usize) -> Outcome {
    let parsed = parse(frame, len);
    let ip = match parsed {
        Ok(Parsed::Fragment(ip) | Parsed::OtherProtocol(ip) | Parsed::Transport(ip, _)) => Some(ip),
        _ => None,
    };
    let parsed6 = parse_ipv6(frame, len);
    let ip6 = match parsed6 {
        Ok(Parsed6::Fragment(ip) | Parsed6::OtherProtocol(ip) | Parsed6::Transport(ip, _)) => {
            Some(ip)
        }
        _ => None,
    };
    Outcome {
        parsed,
        echo_request: ip.and_then(|ip| icmp_echo(frame, &ip, true)),
        echo_reply: ip.and_then(|ip| icmp_echo(frame, &ip, false)),
        error: ip.and_then(|ip| icmp_error(frame, &ip)),
        parsed6,
        echo6_request: ip6.and_then(|ip| icmp6_echo(frame, &ip, true)),
        echo6_reply: ip6.and_then(|ip| icmp6_echo(frame, &ip, false)),
        error6: ip6.and_then(|ip| icmp6_error(frame, &ip)),
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

/// The outcome of a frame both parsers reject for `reason` (too short for Ethernet).
fn rejected(reason: Malformed) -> Outcome {
    Outcome {
        parsed: Err(reason),
        echo_request: None,
        echo_reply: None,
        error: None,
        parsed6: Err(reason),
        echo6_request: None,
        echo6_reply: None,
        error6: None,
    }
}

/// The reference decoding of a whole frame (its length is the slice's), by both families.
fn reference(frame: &[u8]) -> Outcome {
    let v6 = reference6(frame);
    let v4 = reference4(frame);
    Outcome {
        parsed6: v6.parsed6,
        echo6_request: v6.echo6_request,
        echo6_reply: v6.echo6_reply,
        error6: v6.error6,
        ..v4
    }
}

/// The IPv4 reference decoding; its IPv6 fields are left as [`rejected`] fills them.
fn reference4(frame: &[u8]) -> Outcome {
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
        parsed6: Ok(Parsed6::NotIpv6),
        echo6_request: None,
        echo6_reply: None,
        error6: None,
        echo_request: reference_echo(icmp && !later_fragment, segment, l4_offset, true),
        echo_reply: reference_echo(icmp && !later_fragment, segment, l4_offset, false),
        // An ICMP error that is a fragment, even the first, is not looked into.
        error: (icmp && flags_and_offset & 0x3fff == 0)
            .then(|| reference_error(segment, l4_offset))
            .flatten(),
    }
}

/// The IPv6 reference decoding: the fixed header, the extension headers as RFC 8200
/// lays them out (at most `MAX_EXTENSION_HEADERS` of them), then TCP/UDP or ICMPv6.
fn reference6(frame: &[u8]) -> Outcome {
    let v6 = |parsed6| Outcome {
        parsed6,
        ..rejected(Malformed::Truncated)
    };
    if frame.len() < 14 {
        return v6(Err(Malformed::Truncated));
    }
    if be16(frame, 12) != 0x86dd {
        return v6(Ok(Parsed6::NotIpv6));
    }
    let ip = &frame[14..];
    if ip.len() < 40 {
        return v6(Err(Malformed::Truncated));
    }
    if ip[0] >> 4 != 6 {
        return v6(Err(Malformed::BadVersion));
    }
    let total = 40 + usize::from(be16(ip, 4));
    if total > ip.len() {
        return v6(Err(Malformed::BadTotalLength));
    }
    let mut header = Ipv6 {
        header_len: 40,
        payload_len: be16(ip, 4),
        hop_limit: ip[7],
        protocol: ip[6],
        src: ip[8..24].try_into().unwrap(),
        dst: ip[24..40].try_into().unwrap(),
        id_be: 0,
        frag: 0,
    };
    if total == 40 {
        return v6(Ok(Parsed6::OtherProtocol(header)));
    }
    let packet = &ip[..total];
    let Some(chain) = reference_chain(packet, 40, ip[6]) else {
        return v6(Err(Malformed::BadExtensionHeader));
    };
    header.header_len = chain.end;
    header.protocol = chain.next;
    header.id_be = chain.id_be;
    header.frag = chain.frag;
    if chain.frag & 0xfff8 != 0 {
        return v6(Ok(Parsed6::Fragment(header)));
    }
    let segment = &packet[chain.end..];
    let l4_offset = 14 + chain.end;
    let parsed6 = match header.protocol {
        6 => {
            let data_offset = segment.get(12).map_or(0, |b| usize::from(b >> 4) * 4);
            if segment.len() < 20 || data_offset < 20 || data_offset > segment.len() {
                return v6(Err(Malformed::BadTransportHeader));
            }
            Parsed6::Transport(
                header,
                L4 {
                    sport_be: raw16(segment, 0),
                    dport_be: raw16(segment, 2),
                    check_offset: l4_offset + 16,
                    check: raw16(segment, 16),
                    tcp_flags: segment[13],
                },
            )
        }
        17 if segment.len() < 8 => return v6(Err(Malformed::BadTransportHeader)),
        17 => Parsed6::Transport(
            header,
            L4 {
                sport_be: raw16(segment, 0),
                dport_be: raw16(segment, 2),
                check_offset: l4_offset + 6,
                check: raw16(segment, 6),
                tcp_flags: 0,
            },
        ),
        _ => Parsed6::OtherProtocol(header),
    };
    let icmp = header.protocol == 58;
    let echo = |request: bool| {
        let wanted = if request { 128 } else { 129 };
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
    };
    Outcome {
        parsed6: Ok(parsed6),
        echo6_request: echo(true),
        echo6_reply: echo(false),
        // An ICMPv6 error that is a fragment, even the first, is not looked into.
        error6: (icmp && chain.frag & 0xfff9 == 0)
            .then(|| reference_error6(segment, l4_offset))
            .flatten(),
        ..rejected(Malformed::Truncated)
    }
}

/// Where a chain of extension headers starting at `at` in `packet`, named by `next`, ends.
struct Chain {
    end: usize,
    next: u8,
    id_be: u32,
    frag: u16,
}

/// Follows the extension headers from `at`; `None` when one reaches past the packet.
fn reference_chain(packet: &[u8], mut at: usize, mut next: u8) -> Option<Chain> {
    let (mut id_be, mut frag) = (0, 0);
    for _ in 0..MAX_EXTENSION_HEADERS {
        let kind = next;
        let len = match kind {
            0 | 43 | 60 => (usize::from(*packet.get(at + 1)?) + 1) * 8,
            44 => 8,
            _ => break,
        };
        let header = packet.get(at..at + len)?;
        next = header[0];
        if kind == 44 {
            frag = be16(header, 2);
            id_be = raw32(header, 4);
        }
        at += len;
        if frag & 0xfff8 != 0 {
            break;
        }
    }
    Some(Chain {
        end: at,
        next,
        id_be,
        frag,
    })
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
        quoted: Quoted {
            offset: quote_offset,
            header_len,
            protocol: quote[9],
            src_be: raw32(quote, 12),
            dst_be: raw32(quote, 16),
            ip_check: raw16(quote, 10),
            sport_be,
            dport_be,
            l4_check: l4_check.into(),
        },
    })
}

/// An ICMPv6 error in `segment` and the packet it quotes: its header, its extension headers
/// and 8 bytes, all inside the ICMPv6 message.
fn reference_error6(segment: &[u8], l4_offset: usize) -> Option<IcmpError<[u8; 16]>> {
    if segment.len() < 8 || !(1..=4).contains(&segment[0]) {
        return None;
    }
    let quote = &segment[8..];
    if quote.len() < 40 || quote[0] >> 4 != 6 {
        return None;
    }
    let chain = reference_chain(quote, 40, quote[6])?;
    if chain.frag & 0xfff8 != 0 {
        return None;
    }
    let transport = quote.get(chain.end..chain.end + 8)?;
    let transport_offset = l4_offset + 8 + chain.end;
    let (sport_be, dport_be, l4_check) = match chain.next {
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
        58 if transport[1] == 0 && (transport[0] == 128 || transport[0] == 129) => {
            let id = raw16(transport, 4);
            let check = Some((transport_offset + 2, raw16(transport, 2)));
            if transport[0] == 128 {
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
        quoted: Quoted {
            offset: l4_offset + 8,
            header_len: chain.end,
            protocol: chain.next,
            src_be: quote[8..24].try_into().unwrap(),
            dst_be: quote[24..40].try_into().unwrap(),
            ip_check: 0,
            sport_be,
            dport_be,
            l4_check: l4_check.into(),
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

/// A frame of either family (the other family's parser must say it is not its own). Boxed:
/// the nested strategy types of both would overflow the test thread's stack.
fn frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![3 => ipv4_frame().boxed(), 2 => ipv6_frame().boxed()]
}

fn ipv4_frame() -> impl Strategy<Value = Vec<u8>> {
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

/// An IPv6 frame: the fixed header, a chain of extension headers, the transport header (or
/// an ICMPv6 message quoting a packet with its own chain), payload, padding.
fn ipv6_frame() -> impl Strategy<Value = Vec<u8>> {
    let ethertype = prop_oneof![
        12 => Just(0x86ddu16),
        1 => Just(0x0800),
        1 => any::<u16>(),
    ];
    let version = prop_oneof![10 => Just(0x60u8), 1 => any::<u8>()];
    let payload_length = prop_oneof![
        6 => Just(TotalLength::Exact),
        2 => (-24i32..24).prop_map(TotalLength::Off),
        1 => any::<u16>().prop_map(TotalLength::Any),
    ];
    let flips = prop_oneof![
        3 => Just(Vec::new()),
        2 => prop::collection::vec((0usize..200, any::<u8>()), 1..4),
    ];
    let header = (ethertype, version, any::<[u8; 40]>());
    let body = (
        extension_chain(0..=MAX_EXTENSION_HEADERS + 1).boxed(),
        upper_protocol(),
        transport().boxed(),
        icmp6_message().boxed(),
        prop::collection::vec(any::<u8>(), 0..40),
    );
    (header, body, payload_length, padding(), flips).prop_map(
        |(
            (ethertype, version, mut fixed),
            (chain, protocol, transport, icmp6, payload),
            payload_length,
            padding,
            flips,
        )| {
            let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
            frame.extend_from_slice(&ethertype.to_be_bytes());
            fixed[0] = version;
            let mut packet = fixed.to_vec();
            chained(&mut packet, 6, &chain, protocol);
            match protocol {
                IPPROTO_ICMPV6 => packet.extend_from_slice(&icmp6),
                _ => packet.extend_from_slice(&transport.bytes(protocol)),
            }
            packet.extend_from_slice(&payload);
            let exact = packet.len() - 40;
            let length = match payload_length {
                TotalLength::Exact => exact as u16,
                TotalLength::Off(by) => (exact as i32 + by).clamp(0, 0xffff) as u16,
                TotalLength::Any(length) => length,
            };
            packet[4..6].copy_from_slice(&length.to_be_bytes());
            frame.extend_from_slice(&packet);
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

/// Appends `chain` to `packet`, whose next-header byte is at `next_at`, each header naming
/// the one after it and the last naming `protocol`.
fn chained(packet: &mut Vec<u8>, mut next_at: usize, chain: &[(u8, Vec<u8>)], protocol: u8) {
    for (kind, header) in chain {
        packet[next_at] = *kind;
        next_at = packet.len();
        packet.extend_from_slice(header);
    }
    packet[next_at] = protocol;
}

/// Up to `count` extension headers: options and routing headers of 8 to 24 bytes (their
/// length byte now and then anything), fragment headers with every kind of offset word.
fn extension_chain(
    count: std::ops::RangeInclusive<usize>,
) -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    let options = (
        prop_oneof![Just(NEXTHDR_HOP), Just(NEXTHDR_ROUTING), Just(NEXTHDR_DEST)],
        prop_oneof![8 => 0u8..3, 1 => any::<u8>()],
        any::<[u8; 24]>(),
    )
        .prop_map(|(kind, units, bytes)| {
            let len = (usize::from(units.min(2)) + 1) * 8;
            let mut header = bytes[..len].to_vec();
            header[1] = units;
            (kind, header)
        });
    let frag = prop_oneof![
        2 => Just(0u16),      // an atomic fragment
        3 => Just(1),         // the first fragment
        3 => (1u16..0x2000, any::<bool>()).prop_map(|(o, more)| o << 3 | u16::from(more)),
        1 => any::<u16>(),
    ];
    let fragment = (frag, any::<[u8; 8]>()).prop_map(|(frag, mut header)| {
        header[2..4].copy_from_slice(&frag.to_be_bytes());
        (NEXTHDR_FRAGMENT, header.to_vec())
    });
    prop::collection::vec(prop_oneof![3 => options, 1 => fragment], count)
}

/// What follows the extension headers.
fn upper_protocol() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => Just(IPPROTO_TCP),
        3 => Just(IPPROTO_UDP),
        4 => Just(IPPROTO_ICMPV6),
        1 => prop_oneof![Just(NEXTHDR_AUTH), Just(NEXTHDR_ESP), Just(NEXTHDR_NONE)],
        1 => any::<u8>(),
    ]
}

/// An ICMPv6 message: echoes, neighbour discovery, other types, and errors quoting an IPv6
/// packet (its header, its chain, 8 transport bytes) cut at any length.
fn icmp6_message() -> impl Strategy<Value = Vec<u8>> {
    let icmp_type = prop_oneof![
        2 => Just(ICMPV6_ECHO_REQUEST),
        2 => Just(ICMPV6_ECHO_REPLY),
        2 => Just(ICMPV6_DEST_UNREACH),
        2 => Just(ICMPV6_PACKET_TOO_BIG),
        1 => Just(ICMPV6_TIME_EXCEEDED),
        1 => Just(ICMPV6_PARAMETER_PROBLEM),
        1 => 133u8..=137,
        1 => any::<u8>(),
    ];
    let quoted_protocol = prop_oneof![
        2 => Just(IPPROTO_TCP),
        2 => Just(IPPROTO_UDP),
        2 => Just(IPPROTO_ICMPV6),
        1 => any::<u8>(),
    ];
    let quoted_transport = (
        prop_oneof![
            1 => Just(ICMPV6_ECHO_REQUEST),
            1 => Just(ICMPV6_ECHO_REPLY),
            1 => any::<u8>(),
        ],
        prop_oneof![3 => Just(0u8), 1 => any::<u8>()],
        any::<[u8; 6]>(),
    );
    let quote = (
        prop_oneof![10 => Just(0x60u8), 1 => any::<u8>()],
        any::<[u8; 40]>(),
        extension_chain(0..=3).boxed(),
        quoted_protocol,
        quoted_transport,
        any::<Index>(),
    )
        .prop_map(
            |(version, mut fixed, chain, protocol, (first, second, rest), keep)| {
                fixed[0] = version;
                let mut quote = fixed.to_vec();
                chained(&mut quote, 6, &chain, protocol);
                quote.extend_from_slice(&[first, second]);
                quote.extend_from_slice(&rest);
                // Mostly whole, else cut anywhere.
                let whole = quote.len();
                let cut = keep.index(whole * 2 + 1).min(whole);
                quote.truncate(cut);
                quote
            },
        );
    (
        icmp_type,
        prop_oneof![4 => Just(0u8), 1 => any::<u8>()],
        any::<[u8; 6]>(),
        quote,
    )
        .prop_map(|(icmp_type, code, rest, quote)| {
            let mut message = vec![icmp_type, code];
            message.extend_from_slice(&rest);
            if (ICMPV6_DEST_UNREACH..=ICMPV6_PARAMETER_PROBLEM).contains(&icmp_type) {
                message.extend_from_slice(&quote);
            }
            message
        })
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
