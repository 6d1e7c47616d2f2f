//! IPv6 frames, on the uplinks and at the containers' veths: parsed by the shared parser
//! (extension headers walked), a malformed one dropped and counted as IPv4's are, and the
//! rest passed untouched: neighbour discovery, ICMPv6, fragments, and what the parser does
//! not walk into. No IPv6 policy or translation yet.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use dataplane_common::{
    parse::{
        ETH_HLEN, Frame, Malformed,
        ipv6::{FRAGMENT_HLEN, IPV6_HLEN, Parsed6, parse_ipv6},
    },
    stats::Stat,
};

use crate::frame::{Action, Packet, TcFrame};

/// What a container's IPv6 packet may need in the linear area: Ethernet, IPv6, a few
/// extension headers and a TCP header with options.
const MAX_HEADERS: usize = ETH_HLEN + IPV6_HLEN + 3 * 8 + FRAGMENT_HLEN + 60;

/// Whether a frame that parsed as truncated is longer than the bytes the program sees:
/// its headers lie past TC's linear area, not past its end. Such a frame is not ours to
/// judge and passes.
#[inline(always)]
fn headers_beyond_linear<F: Frame + ?Sized>(frame: &F, len: usize) -> bool {
    len > 0 && frame.load::<u8>(len - 1).is_none()
}

/// On an uplink (XDP or TC).
#[inline(always)]
pub fn uplink_ingress<P: Packet>(packet: &P, len: usize) -> (Action, Stat) {
    match parse_ipv6(packet, len) {
        Err(Malformed::Truncated) if headers_beyond_linear(packet, len) => {
            (Action::Pass, Stat::UplinkPassUnparsedHeaders)
        }
        Err(_) => (Action::Drop, Stat::UplinkDropMalformed),
        Ok(Parsed6::NotIpv6) => (Action::Pass, Stat::UplinkPassNotIpv4),
        Ok(Parsed6::Fragment(_)) => (Action::Pass, Stat::UplinkPassFragment),
        Ok(Parsed6::OtherProtocol(_)) => (Action::Pass, Stat::UplinkPassNotTcpUdp),
        Ok(Parsed6::Transport(..)) => (Action::Pass, Stat::UplinkPassNotPublished),
    }
}

/// At a container's veth (TC), for a frame the IPv4 parser found not to be IPv4.
#[inline(always)]
pub fn container_ingress(ctx: &TcContext, len: usize) -> (i32, Stat) {
    let mut parsed = parse_ipv6(&TcFrame(ctx), len);
    if parsed == Err(Malformed::Truncated) && ctx.data_end() - ctx.data() < len {
        // The headers may sit partly outside the linear area: pull them in and retry.
        let want = if len < MAX_HEADERS { len } else { MAX_HEADERS };
        if ctx.pull_data(want as u32).is_ok() {
            parsed = parse_ipv6(&TcFrame(ctx), len);
        }
    }
    match parsed {
        Err(Malformed::Truncated) if headers_beyond_linear(&TcFrame(ctx), len) => {
            (TC_ACT_OK, Stat::ContainerPassUnparsedHeaders)
        }
        Err(_) => (TC_ACT_SHOT, Stat::ContainerDropMalformed),
        Ok(Parsed6::NotIpv6) => (TC_ACT_OK, Stat::ContainerPassNotIpv4),
        Ok(_) => (TC_ACT_OK, Stat::ContainerPassIpv6),
    }
}
