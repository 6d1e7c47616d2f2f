//! Counter indices of the [`crate::maps::STATS`] map: every verdict a program can reach,
//! with a named reason. Drops in particular are never silent.

macro_rules! stats {
    ($($variant:ident = $name:literal,)+) => {
        /// One counter slot. The discriminant is the index into the per-CPU array.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Stat {
            $($variant,)+
        }

        impl Stat {
            pub const ALL: &'static [Stat] = &[$(Stat::$variant,)+];

            /// `program.verdict.reason`, as shown by `bpfbridge stats`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Stat::$variant => $name,)+
                }
            }
        }
    };
}

stats! {
    UplinkPassNotIpv4 = "uplink_ingress.pass.not_ipv4",
    UplinkPassNotTcpUdp = "uplink_ingress.pass.not_tcp_udp",
    UplinkPassFragment = "uplink_ingress.pass.fragment",
    UplinkPassNotPublished = "uplink_ingress.pass.not_published",
    UplinkPassLoopbackDestination = "uplink_ingress.pass.loopback_destination",
    UplinkRedirectDnat = "uplink_ingress.redirect.dnat",
    UplinkRedirectMasqueradeReply = "uplink_ingress.redirect.masquerade_reply",
    UplinkDropMalformed = "uplink_ingress.drop.malformed",
    UplinkDropTtlExpired = "uplink_ingress.drop.ttl_expired",
    UplinkDropFlowTableFull = "uplink_ingress.drop.flow_table_full",
    UplinkDropFilter = "uplink_ingress.drop.filter",
    ContainerPassNotIpv4 = "container_ingress.pass.not_ipv4",
    ContainerPassNotTcpUdp = "container_ingress.pass.not_tcp_udp",
    ContainerPassFragment = "container_ingress.pass.fragment",
    ContainerPassNoFlow = "container_ingress.pass.no_flow",
    ContainerPassToNode = "container_ingress.pass.to_node",
    ContainerPassSameNetwork = "container_ingress.pass.same_network",
    ContainerPassOutside = "container_ingress.pass.outside",
    ContainerPassLink = "container_ingress.pass.link",
    ContainerPassTracked = "container_ingress.pass.tracked_reply",
    ContainerRedirectReply = "container_ingress.redirect.reply",
    ContainerRedirectReplyNeigh = "container_ingress.redirect.reply_resolve_neighbour",
    ContainerRedirectReplyLocal = "container_ingress.redirect.reply_to_container",
    ContainerRedirectHairpin = "container_ingress.redirect.hairpin",
    ContainerRedirectMasquerade = "container_ingress.redirect.masquerade",
    ContainerRedirectMasqueradeNeigh = "container_ingress.redirect.masquerade_resolve_neighbour",
    ContainerDropMalformed = "container_ingress.drop.malformed",
    ContainerDropNoRoute = "container_ingress.drop.no_route",
    ContainerDropTtlExpired = "container_ingress.drop.ttl_expired",
    ContainerDropRewriteFailed = "container_ingress.drop.rewrite_failed",
    ContainerDropFlowTableFull = "container_ingress.drop.flow_table_full",
    ContainerDropPolicyIcc = "container_ingress.drop.policy_icc",
    ContainerDropIsolation = "container_ingress.drop.isolation",
    ContainerDropInternal = "container_ingress.drop.internal_network",
    ContainerDropNatExhausted = "container_ingress.drop.nat_exhausted",
    ContainerDropConntrackFull = "container_ingress.drop.conntrack_full",
    SocketTranslated = "sock_addr.translate.node_local",
    MonitorSuppressed = "monitor.events_suppressed",
    UplinkDropDirectAccess = "uplink_ingress.drop.direct_access",
    FlowEarlyDrop = "flow_table.evict.unreplied",
    ContainerDropNoEndpoint = "container_ingress.drop.no_endpoint",
    UplinkRedirectIcmpError = "uplink_ingress.redirect.icmp_error",
    UplinkRedirectFragment = "uplink_ingress.redirect.fragment",
    ContainerRedirectFragment = "container_ingress.redirect.fragment",
    ContainerRedirectFragmentNeigh = "container_ingress.redirect.fragment_resolve_neighbour",
    ContainerDropFragmentUntracked = "container_ingress.drop.fragment_untracked",
    ContainerRedirectIcmpError = "container_ingress.redirect.icmp_error",
    ContainerRedirectIcmpErrorNeigh = "container_ingress.redirect.icmp_error_resolve_neighbour",
    ContainerDropUntracked = "container_ingress.drop.untracked_segment",
    ContainerDropNoMasqueradeSource = "container_ingress.drop.no_masquerade_source",
    UplinkDropEthernetHeaderNotPushed = "uplink_ingress.drop.ethernet_header_not_pushed",
    UplinkPassUnparsedHeaders = "uplink_ingress.pass.unparsed_headers",
    ContainerPassUnparsedHeaders = "container_ingress.pass.unparsed_headers",
    ContainerPassIpv6 = "container_ingress.pass.ipv6",
    UplinkDropUdpZeroChecksum = "uplink_ingress.drop.udp_zero_checksum",
    ContainerDropUdpZeroChecksum = "container_ingress.drop.udp_zero_checksum",
    ContainerDropIpv6ProgramMissing = "container_ingress.drop.ipv6_program_missing",
    UplinkPassIpv6ProgramMissing = "uplink_ingress.pass.ipv6_program_missing",
}

/// Size of the per-CPU counter array. New counters go at the end of the list above: an
/// upgraded agent carries the pinned counters over slot by slot.
pub const STATS_LEN: u32 = Stat::ALL.len() as u32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_names_unique() {
        for (index, stat) in Stat::ALL.iter().enumerate() {
            assert_eq!(*stat as usize, index);
        }
        let mut names: Vec<_> = Stat::ALL.iter().map(|s| s.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Stat::ALL.len());
    }
}
