//! Published ports: destination NAT of connections from outside (the uplink) and
//! from containers through the node's address (hairpin, TC), and the reverse translation
//! of their replies (TC). Flows live in NAT_FLOWS, keyed as the container sees them.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_ktime_get_ns, bpf_redirect},
    programs::TcContext,
};
use dataplane_common::{
    CT_CLOSING, CT_ESTABLISHED, CT_NEW, CT_REPLIED, EndpointKey, FlowKey, IPPROTO_TCP, IPPROTO_UDP,
    NatFlow, NodeAddrKey, PortKey, PortTarget,
    parse::{IPV4_DST_OFF, IPV4_SRC_OFF, Ipv4, L4, L4_DPORT_OFF, L4_SPORT_OFF},
    stats::Stat,
};

use crate::{
    fib,
    flowtable::{self, InsertError},
    frag,
    frame::{Action, Packet},
    maps::{ENDPOINTS, NAT_FLOWS, NODE_ADDRS, PUBLISHED_PORTS},
    policy,
    rewrite::{self, Target},
};

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

/// 127.0.0.0/8 in network order: never a published address from the wire (moby#45610).
#[inline(always)]
pub(crate) fn is_loopback(ip_be: u32) -> bool {
    u32::from_be(ip_be) >> 24 == 127
}

/// The port mapping that a packet to `dst:port` hits: one bound to that exact address first,
/// then one bound to every node address, loopback counting as one when `loopback_is_node`
/// (sockets on the node itself).
#[inline(always)]
pub(crate) fn published_target(
    dst_be: u32,
    port_be: u16,
    proto: u8,
    loopback_is_node: bool,
) -> Option<PortTarget> {
    let exact = PortKey {
        host_ip_be: dst_be,
        host_port_be: port_be,
        proto,
        _pad: 0,
    };
    // SAFETY: values are plain data copied out at once.
    if let Some(target) = unsafe { PUBLISHED_PORTS.get(&exact) } {
        return Some(*target);
    }
    // SAFETY: as above.
    let node_address = unsafe { NODE_ADDRS.get(&NodeAddrKey { addr_be: dst_be }) }.is_some();
    if !node_address && !(loopback_is_node && is_loopback(dst_be)) {
        return None;
    }
    let any = PortKey {
        host_ip_be: 0,
        ..exact
    };
    // SAFETY: as above.
    unsafe { PUBLISHED_PORTS.get(&any) }.copied()
}

#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

/// What a packet does to a published-port flow: `None` for a TCP reset (the flow ends once
/// the packet is through), else the flow's next state. The client's SYN takes a closing
/// flow over as a new one; the container's first packet answers it, and for TCP the
/// client's ACK of that answer establishes it. IPv6's flows (ipv6.rs) go through it too.
#[inline(always)]
pub(crate) fn next_state(state: u8, from_container: bool, protocol: u8, l4: &L4) -> Option<u8> {
    if protocol == IPPROTO_TCP {
        if l4.tcp_flags & TCP_RST != 0 {
            return None;
        }
        if l4.tcp_flags & TCP_FIN != 0 {
            return Some(CT_CLOSING);
        }
        if !from_container && state == CT_CLOSING && l4.is_tcp_syn() {
            return Some(CT_NEW);
        }
    }
    Some(match (state, from_container) {
        // TCP waits for the client's ACK of the SYN-ACK: the SYNs of a spoofed flood stay
        // evictable.
        (CT_NEW, true) if protocol == IPPROTO_TCP => CT_REPLIED,
        (CT_NEW, true) => CT_ESTABLISHED,
        (CT_REPLIED, false) if !l4.is_tcp_syn() => CT_ESTABLISHED,
        _ => state,
    })
}

/// Records a packet of the flow at `flow`, opening it when `opens`: updates the existing
/// entry in place (so its state survives), or inserts a new one (with early drop when the
/// table is full). `Err` is the drop reason.
#[inline(always)]
fn track(
    flow: &FlowKey,
    nat: NatFlow,
    opens: bool,
    ip: &Ipv4,
    l4: &L4,
    full: Stat,
) -> Result<(), Stat> {
    if let Some(entry) = NAT_FLOWS.get_ptr_mut(flow) {
        // SAFETY: a pointer to a live map value of plain data.
        let state = unsafe {
            let seen = *entry;
            *entry = NatFlow {
                state: seen.state,
                packets: seen.packets,
                bytes: seen.bytes,
                ..nat
            };
            seen.state
        };
        count(entry, ip);
        match next_state(state, false, ip.protocol, l4) {
            Some(next) => flowtable::nat_set_state(flow, entry, next),
            None => {
                let _ = NAT_FLOWS.remove(flow);
            }
        }
        return Ok(());
    }
    if !opens {
        return Ok(());
    }
    match flowtable::nat_insert(flow, &nat) {
        Ok(()) | Err(InsertError::Exists) => Ok(()),
        Err(InsertError::Full) => Err(full),
    }
}

/// The translation record of a published-port flow: the client as it came, and the
/// published address it asked for.
#[inline(always)]
fn nat_flow_of(ip: &Ipv4, l4: &L4) -> NatFlow {
    NatFlow {
        frontend_ip_be: ip.dst_be,
        frontend_port_be: l4.dport_be,
        state: CT_NEW,
        _pad0: 0,
        client_ip_be: ip.src_be,
        client_port_be: l4.sport_be,
        _pad1: 0,
        last_seen_ns: now_ns(),
        packets: 1,
        bytes: u64::from(ip.total_len),
    }
}

/// Counts a packet of the flow at `entry`. Plain adds (the BPF target has no atomic
/// read-modify-write in Rust): two CPUs counting the same flow at once may lose a count,
/// as the flow's other fields may lose a write; the counters are for people, not decisions.
#[inline(always)]
fn count(entry: *mut NatFlow, ip: &Ipv4) {
    // SAFETY: a pointer to a live map value of plain data.
    unsafe {
        (*entry).packets += 1;
        (*entry).bytes += u64::from(ip.total_len);
    }
}

/// On the uplink: a packet to a published port goes straight to its container; anything
/// else is the node's (or dropped, like Docker's FORWARD policy, when it tries to reach a
/// container directly).
#[inline(always)]
pub fn from_outside<P: Packet>(packet: &P, ip: &Ipv4, l4: &L4, len: usize) -> (Action, Stat) {
    // A frame from the wire addressed to loopback is never translated, whatever is
    // published on 127.0.0.1; the stack drops it as a martian.
    if is_loopback(ip.dst_be) {
        return (Action::Pass, Stat::UplinkPassLoopbackDestination);
    }
    let Some(target) = published_target(ip.dst_be, l4.dport_be, ip.protocol, false) else {
        if !policy::direct_access_allowed(ip, Some(l4), packet.ingress_ifindex()) {
            return (Action::Drop, Stat::UplinkDropDirectAccess);
        }
        return (Action::Pass, Stat::UplinkPassNotPublished);
    };
    if !policy::source_allowed(ip.src_be, l4.dport_be, ip.protocol, len) {
        return (Action::Drop, Stat::UplinkDropFilter);
    }
    // We forward the packet, so we act as a router: an expiring TTL ends here.
    if ip.ttl <= 1 {
        return (Action::Drop, Stat::UplinkDropTtlExpired);
    }
    let flow = FlowKey {
        container_ip_be: target.container_ip_be,
        remote_ip_be: ip.src_be,
        container_port_be: target.container_port_be,
        remote_port_be: l4.sport_be,
        proto: ip.protocol,
        _pad: [0; 3],
    };
    // Any packet may (re)open a flow from outside: the container answers what reaches it.
    let nat = nat_flow_of(ip, l4);
    if let Err(stat) = track(&flow, nat, true, ip, l4, Stat::UplinkDropFlowTableFull) {
        return (Action::Drop, stat);
    }
    let to = Target {
        ip_be: target.container_ip_be,
        port_be: target.container_port_be,
        dst_mac: target.container_mac,
        src_mac: target.host_veth_mac,
    };
    if rewrite::to_target(packet, ip, l4, &to).is_none() {
        return (Action::Drop, Stat::UplinkDropMalformed);
    }
    frag::remember(
        ip,
        ip.src_be,
        target.container_ip_be,
        target.host_veth_ifindex,
        target.container_mac,
        target.host_veth_mac,
    );
    if l4.is_tcp_syn() {
        crate::events::new_flow(
            Stat::UplinkRedirectDnat,
            ip.protocol,
            ip.src_be,
            ip.dst_be,
            l4.sport_be,
            l4.dport_be,
        );
    }
    (
        Action::Redirect(target.host_veth_ifindex),
        Stat::UplinkRedirectDnat,
    )
}

/// The published-port flow a container's packet answers, if any.
#[inline(always)]
pub fn reply_flow(ip: &Ipv4, l4: &L4) -> Option<(FlowKey, *mut NatFlow)> {
    let flow = FlowKey {
        container_ip_be: ip.src_be,
        remote_ip_be: ip.dst_be,
        container_port_be: l4.sport_be,
        remote_port_be: l4.dport_be,
        proto: ip.protocol,
        _pad: [0; 3],
    };
    let entry = NAT_FLOWS.get_ptr_mut(&flow)?;
    Some((flow, entry))
}

/// A container reaching a published port through the node's address: translate to the
/// backend and hand the packet straight to its veth. A container reaching its own port
/// would see a packet from itself, so its source becomes its network's gateway, as Docker's
/// hairpin masquerade does.
#[inline(always)]
pub fn hairpin(ctx: &TcContext, ip: &Ipv4, l4: &L4, target: &PortTarget) -> (i32, Stat) {
    if ip.ttl <= 1 {
        return (TC_ACT_SHOT, Stat::ContainerDropTtlExpired);
    }
    // SAFETY: plain data copied out at once.
    let source = unsafe { ENDPOINTS.get(&EndpointKey { ip_be: ip.src_be }) }.copied();
    let mut remote_ip_be = ip.src_be;
    if target.container_ip_be == ip.src_be {
        let Some(source) = source else {
            return (TC_ACT_SHOT, Stat::ContainerDropNoEndpoint);
        };
        remote_ip_be = source.gateway_ip_be;
    }
    let flow = FlowKey {
        container_ip_be: target.container_ip_be,
        remote_ip_be,
        container_port_be: target.container_port_be,
        remote_port_be: l4.sport_be,
        proto: ip.protocol,
        _pad: [0; 3],
    };
    // Only a TCP SYN opens a new hairpin flow; a later segment must belong to one. A
    // container answering a node-local client (whose ephemeral port may equal a published
    // port) is not taken for a new one. Likewise UDP sent to the sender's own gateway,
    // where those clients' datagrams come from, only continues a flow.
    let opens = match ip.protocol {
        IPPROTO_UDP => source.is_none_or(|s| s.gateway_ip_be != ip.dst_be),
        _ => l4.is_tcp_syn(),
    };
    // SAFETY: only checking presence.
    if !opens && unsafe { NAT_FLOWS.get(&flow) }.is_none() {
        return (TC_ACT_OK, Stat::ContainerPassNoFlow);
    }
    if let Err(stat) = track(
        &flow,
        nat_flow_of(ip, l4),
        opens,
        ip,
        l4,
        Stat::ContainerDropFlowTableFull,
    ) {
        return (TC_ACT_SHOT, stat);
    }
    let rewritten = rewrite::decrement_ttl(ctx, ip)
        .and_then(|()| {
            rewrite::rewrite_address(ctx, ip, l4, IPV4_DST_OFF, ip.dst_be, target.container_ip_be)
        })
        .and_then(|()| {
            rewrite::rewrite_port(
                ctx,
                ip,
                l4,
                L4_DPORT_OFF,
                l4.dport_be,
                target.container_port_be,
            )
        })
        .and_then(|()| match remote_ip_be == ip.src_be {
            true => Ok(()),
            false => rewrite::rewrite_address(ctx, ip, l4, IPV4_SRC_OFF, ip.src_be, remote_ip_be),
        })
        .and_then(|()| rewrite::set_macs(ctx, &target.container_mac, &target.host_veth_mac));
    if rewritten.is_err() {
        return (TC_ACT_SHOT, Stat::ContainerDropRewriteFailed);
    }
    frag::remember(
        ip,
        remote_ip_be,
        target.container_ip_be,
        target.host_veth_ifindex,
        target.container_mac,
        target.host_veth_mac,
    );
    // SAFETY: plain helper call.
    let verdict = unsafe { bpf_redirect(target.host_veth_ifindex, 0) } as i32;
    (verdict, Stat::ContainerRedirectHairpin)
}

/// A reply of a translated flow: its source becomes the published address again (and its
/// destination the real client, when that was translated too); then it goes to the client,
/// a local container directly, anything else by the FIB.
#[inline(always)]
pub fn reply(
    ctx: &TcContext,
    ip: &Ipv4,
    l4: &L4,
    flow: &FlowKey,
    entry: *mut NatFlow,
) -> (i32, Stat) {
    // SAFETY: the pointer is to a live map value; fields are plain data.
    let nat = unsafe {
        (*entry).last_seen_ns = now_ns();
        *entry
    };
    count(entry, ip);
    match next_state(nat.state, true, ip.protocol, l4) {
        Some(state) => flowtable::nat_set_state(flow, entry, state),
        None => {
            let _ = NAT_FLOWS.remove(flow);
        }
    }
    if ip.ttl <= 1 {
        return (TC_ACT_SHOT, Stat::ContainerDropTtlExpired);
    }
    let rewritten = rewrite::decrement_ttl(ctx, ip)
        .and_then(|()| {
            rewrite::rewrite_address(ctx, ip, l4, IPV4_SRC_OFF, ip.src_be, nat.frontend_ip_be)
        })
        .and_then(|()| {
            rewrite::rewrite_port(ctx, ip, l4, L4_SPORT_OFF, l4.sport_be, nat.frontend_port_be)
        })
        .and_then(|()| match nat.client_ip_be == ip.dst_be {
            true => Ok(()),
            false => {
                rewrite::rewrite_address(ctx, ip, l4, IPV4_DST_OFF, ip.dst_be, nat.client_ip_be)
            }
        });
    if rewritten.is_err() {
        return (TC_ACT_SHOT, Stat::ContainerDropRewriteFailed);
    }
    // SAFETY: plain data copied out at once.
    if let Some(local) = unsafe {
        ENDPOINTS.get(&EndpointKey {
            ip_be: nat.client_ip_be,
        })
    } {
        if rewrite::set_macs(ctx, &local.container_mac, &local.host_veth_mac).is_err() {
            return (TC_ACT_SHOT, Stat::ContainerDropRewriteFailed);
        }
        frag::remember(
            ip,
            nat.frontend_ip_be,
            nat.client_ip_be,
            local.host_veth_ifindex,
            local.container_mac,
            local.host_veth_mac,
        );
        // SAFETY: plain helper call.
        let verdict = unsafe { bpf_redirect(local.host_veth_ifindex, 0) } as i32;
        return (verdict, Stat::ContainerRedirectReplyLocal);
    }
    let stats = (
        Stat::ContainerRedirectReply,
        Stat::ContainerRedirectReplyNeigh,
    );
    fib::forward(ctx, ip, l4, nat.frontend_ip_be, nat.client_ip_be, stats)
}
