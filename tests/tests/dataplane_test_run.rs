//! Table-driven BPF_PROG_TEST_RUN tests of the eBPF programs: for each input frame, the
//! verdict, the output frame and the counter that must move (and no other).

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{
        Array, HashMap, MapData, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{CgroupSockAddr, SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use bpfbridge::{
    config::FlowTableSizes,
    dataplane::ebpf::{
        CONTAINER_PROGRAM, PROGRAMS, SOCKET_PROGRAMS, UPLINK_L3_PROGRAM, UPLINK_PROGRAM,
        UPLINK_TC_PROGRAM, VERIFIER_INSTRUCTION_LIMIT, load_container_programs, load_object_with,
        load_uplink_programs, loaded_programs,
    },
};
use bpfbridge_tests::{
    NODE_IP, Netns, WORLD_IP,
    packet::{
        ETH_HLEN, Packet, View, echo_request, fragments, icmp_checksum_ok, icmp_error,
        ipv4_checksum_ok, l4_checksum_ok, quoted, reassemble, with_ip_id, with_ttl,
    },
    unique,
};
use dataplane_common::{
    BackendKey, CONNTRACK, CONNTRACK_MAX, CT_CLOSING, CT_ESTABLISHED, CT_NEW, CT_REPLIED, Counter,
    CtEntry, CtKey, ENDPOINTS, EndpointInfo, EndpointKey, FILTER_ALLOW, FILTER_DENY, FILTER_RULES,
    FILTER_SCOPE_BITS, FRAGMENTS, FilterKey, FilterRule, FlowKey, FragmentEntry, FragmentKey,
    IPPROTO_TCP, IPPROTO_UDP, MASQUERADE_SOURCES, NAT_FLOWS, NAT_FLOWS_MAX, NETWORK_DIRECT_ANY,
    NETWORK_DIRECT_ICMP, NETWORK_DIRECT_PUBLISHED, NETWORK_ICC, NETWORK_INTERNAL,
    NETWORK_MASQUERADE, NETWORKS, NODE_ADDRS, NODE_CONFIG, NatFlow, NetworkInfo, NetworkKey,
    NodeAddr, NodeAddrKey, NodeConfig, PUBLISHED_BACKENDS, PUBLISHED_PORTS, PortKey, PortTarget,
    STATS, TRUSTED_IFACES, TrustedIfaceKey, stats::Stat,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const CONTAINER_IP: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 1);
const EXACT_BOUND_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const CONTAINER_MAC: [u8; 6] = [0x02, 0x42, 172, 17, 0, 2];
const HOST_VETH_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x0a];
const HOST_VETH_IFINDEX: u32 = 42;

/// The counters a test run moved, and by how much.
type Moved = Vec<(Stat, u64)>;

/// The eBPF object loaded with its maps pinned in a private directory, removed on drop.
struct Fixture {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

impl Fixture {
    /// Node address 198.51.100.1; 8080/tcp published on every node address and 9090/tcp on
    /// 198.51.100.7 only, both to 172.17.0.2:80.
    fn new() -> Result<Self> {
        Self::with_sizes(CONNTRACK_MAX, NAT_FLOWS_MAX)
    }

    /// [`Fixture::new`] with flow tables of the given sizes.
    fn with_sizes(conntrack: u32, nat_flows: u32) -> Result<Self> {
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(unique("testrun"));
        let ebpf = load_object_with(
            &pin_dir,
            FlowTableSizes {
                conntrack,
                nat_flows,
            },
        )?;
        let mut f = Fixture { ebpf, pin_dir };
        load_uplink_programs(&mut f.ebpf)?;
        load_container_programs(&mut f.ebpf)?;
        f.node_address(NODE_IP, 2)?;
        let mut ports: HashMap<&mut MapData, PortKey, PortTarget> =
            HashMap::try_from(f.ebpf.map_mut(PUBLISHED_PORTS).unwrap())?;
        let published = [
            (Ipv4Addr::UNSPECIFIED, 8080u16, IPPROTO_TCP),
            (EXACT_BOUND_IP, 9090, IPPROTO_TCP),
            (Ipv4Addr::LOCALHOST, 8081, IPPROTO_TCP),
            (Ipv4Addr::UNSPECIFIED, 5353, IPPROTO_UDP),
            (Ipv4Addr::UNSPECIFIED, 8090, IPPROTO_TCP),
        ];
        for (host_ip, host_port, proto) in published {
            ports.insert(
                PortKey {
                    host_ip_be: u32::from(host_ip).to_be(),
                    host_port_be: host_port.to_be(),
                    proto,
                    _pad: 0,
                },
                PortTarget {
                    container_ip_be: u32::from(CONTAINER_IP).to_be(),
                    container_port_be: 80u16.to_be(),
                    _pad0: 0,
                    host_veth_ifindex: HOST_VETH_IFINDEX,
                    container_mac: CONTAINER_MAC,
                    host_veth_mac: HOST_VETH_MAC,
                },
                0,
            )?;
        }
        // What the agent keeps beside them: 172.17.0.2:80/tcp is some published port's end.
        let mut backends: HashMap<&mut MapData, BackendKey, u32> =
            HashMap::try_from(f.ebpf.map_mut(PUBLISHED_BACKENDS).unwrap())?;
        backends.insert(
            BackendKey {
                container_ip_be: u32::from(CONTAINER_IP).to_be(),
                container_port_be: 80u16.to_be(),
                proto: IPPROTO_TCP,
                _pad: 0,
            },
            4,
            0,
        )?;
        let mut endpoints: HashMap<&mut MapData, EndpointKey, EndpointInfo> =
            HashMap::try_from(f.ebpf.map_mut(ENDPOINTS).unwrap())?;
        endpoints.insert(
            EndpointKey {
                ip_be: u32::from(CONTAINER_IP).to_be(),
            },
            EndpointInfo {
                host_veth_ifindex: HOST_VETH_IFINDEX,
                gateway_ip_be: u32::from(GATEWAY).to_be(),
                container_mac: CONTAINER_MAC,
                host_veth_mac: HOST_VETH_MAC,
            },
            0,
        )?;
        // On 8090/tcp only: allow 198.51.100.0/24 but not .3, deny everything else.
        let mut filters: LpmTrie<&mut MapData, FilterKey, FilterRule> =
            LpmTrie::try_from(f.ebpf.map_mut(FILTER_RULES).unwrap())?;
        let scope = |src: [u8; 4]| FilterKey {
            host_port_be: 8090u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: 0,
            src_ip_be: u32::from_ne_bytes(src),
        };
        for (id, (src, len, action)) in [
            ([198, 51, 100, 0], 24, FILTER_ALLOW),
            ([198, 51, 100, 3], 32, FILTER_DENY),
            ([0, 0, 0, 0], 0, FILTER_DENY),
        ]
        .into_iter()
        .enumerate()
        {
            filters.insert(
                &Key::new(FILTER_SCOPE_BITS + len, scope(src)),
                FilterRule {
                    rule_id: id as u32,
                    action,
                },
                0,
            )?;
        }
        Ok(f)
    }

    /// Makes `ip` an address of the node, on interface `ifindex`.
    fn node_address(&mut self, ip: Ipv4Addr, ifindex: u32) -> Result<()> {
        let mut addrs: HashMap<&mut MapData, NodeAddrKey, NodeAddr> =
            HashMap::try_from(self.ebpf.map_mut(NODE_ADDRS).unwrap())?;
        addrs.insert(
            NodeAddrKey {
                addr_be: u32::from(ip).to_be(),
            },
            NodeAddr { ifindex },
            0,
        )?;
        Ok(())
    }

    /// Masquerade out of up0 (the forwarding namespace's, this thread's) leaves from the
    /// node's address, as the agent writes each interface's primary address.
    fn masquerade_via_up0(&mut self) -> Result<()> {
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(c"up0".as_ptr()) };
        anyhow::ensure!(index != 0, "no up0 here");
        let mut sources: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(self.ebpf.map_mut(MASQUERADE_SOURCES).unwrap())?;
        sources.insert(index, u32::from(NODE_IP).to_be(), 0)?;
        Ok(())
    }

    /// Installs bridge networks (subnet, prefix, flags) for the policy.
    fn networks(&mut self, networks: &[(&str, u32, u32)]) -> Result<()> {
        let mut trie: LpmTrie<&mut MapData, NetworkKey, NetworkInfo> =
            LpmTrie::try_from(self.ebpf.map_mut(NETWORKS).unwrap())?;
        for (index, (addr, len, flags)) in networks.iter().enumerate() {
            let addr: Ipv4Addr = addr.parse()?;
            let key = Key::new(
                *len,
                NetworkKey {
                    addr_be: u32::from(addr).to_be(),
                },
            );
            trie.insert(
                &key,
                NetworkInfo {
                    index: index as u32 + 1,
                    flags: *flags,
                },
                0,
            )?;
        }
        Ok(())
    }

    fn counters(&self) -> Result<Vec<u64>> {
        let stats: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(self.ebpf.map(STATS).unwrap())?;
        Stat::ALL
            .iter()
            .map(|s| Ok(stats.get(&(*s as u32), 0)?.iter().map(|c| c.packets).sum()))
            .collect()
    }

    fn flow(&self, key: &FlowKey) -> Option<NatFlow> {
        let flows: HashMap<&MapData, FlowKey, NatFlow> =
            HashMap::try_from(self.ebpf.map(NAT_FLOWS).unwrap()).ok()?;
        flows.get(key, 0).ok()
    }

    /// Runs `program` on `frame`; returns the verdict, the output frame and which counter
    /// moved (asserting that exactly one moved by exactly one).
    fn run(&mut self, program: &str, frame: &[u8]) -> Result<(u32, Vec<u8>, Stat)> {
        let (verdict, out, moved) = self.run_counting(program, frame)?;
        assert!(
            matches!(moved.as_slice(), [(_, 1)]),
            "exactly one counter must move by one, got {moved:?}"
        );
        Ok((verdict, out, moved[0].0))
    }

    /// Runs `program` on `frame`; returns the verdict, the output frame and every counter
    /// that moved, with how much.
    fn run_counting(&mut self, program: &str, frame: &[u8]) -> Result<(u32, Vec<u8>, Moved)> {
        let before = self.counters()?;
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        };
        let result = if program == UPLINK_PROGRAM {
            let p: &mut Xdp = self.ebpf.program_mut(program).unwrap().try_into()?;
            p.test_run(opts)?
        } else {
            let p: &mut SchedClassifier = self.ebpf.program_mut(program).unwrap().try_into()?;
            p.test_run(opts)?
        };
        out.truncate(result.data_size_out as usize);
        let after = self.counters()?;
        let moved: Vec<(Stat, u64)> = Stat::ALL
            .iter()
            .zip(before.iter().zip(&after))
            .filter(|(_, (b, a))| a != b)
            .map(|(s, (b, a))| (*s, a - b))
            .collect();
        Ok((result.return_value, out, moved))
    }
}

fn syn_to(dst: Ipv4Addr, dport: u16) -> Packet {
    Packet::tcp_syn(WORLD_IP, 40000, dst, dport)
}

#[test]
fn uplink_ingress_table() -> Result<()> {
    let mut fx = Fixture::new()?;
    let mut not_ipv4 = syn_to(NODE_IP, 8080).build();
    not_ipv4[12..14].copy_from_slice(&0x0806u16.to_be_bytes()); // ARP
    let mut ipv4_as_ipv6 = syn_to(NODE_IP, 8080).build();
    ipv4_as_ipv6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    let mut more_fragments = syn_to(NODE_IP, 8080).build();
    more_fragments[ETH_HLEN + 6] = 0x20;
    // Translated, so its IPv4 checksum must be valid to begin with: setting the id again
    // recomputes it.
    let more_fragments = with_ip_id(more_fragments, 0x1234);
    // Another datagram (IP id) than the first fragment's: its own first was never seen.
    let mut later_fragment = with_ip_id(syn_to(NODE_IP, 8080).build(), 0x4321);
    later_fragment[ETH_HLEN + 6..ETH_HLEN + 8].copy_from_slice(&0x0010u16.to_be_bytes());
    let mut icmp = syn_to(NODE_IP, 8080).build();
    icmp[ETH_HLEN + 9] = 1;
    let mut bad_ihl = syn_to(NODE_IP, 8080).build();
    bad_ihl[ETH_HLEN] = 0x44;
    let mut bad_version = syn_to(NODE_IP, 8080).build();
    bad_version[ETH_HLEN] = 0x65;
    let mut bad_total_len = syn_to(NODE_IP, 8080).build();
    bad_total_len[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&1500u16.to_be_bytes());
    let udp_to_tcp_port = Packet {
        protocol: 17,
        ..syn_to(NODE_IP, 8080)
    }
    .build();
    let ttl_one = Packet {
        ttl: 1,
        ..syn_to(NODE_IP, 8080)
    }
    .build();

    // (name, frame, verdict, counter, translated to 172.17.0.2:80?)
    let cases: Vec<(&str, Vec<u8>, u32, Stat, bool)> = vec![
        (
            "published port on a node address",
            syn_to(NODE_IP, 8080).build(),
            XDP_REDIRECT,
            Stat::UplinkRedirectDnat,
            true,
        ),
        (
            "published port bound to its exact address",
            syn_to(EXACT_BOUND_IP, 9090).build(),
            XDP_REDIRECT,
            Stat::UplinkRedirectDnat,
            true,
        ),
        (
            "exact-bound port at another node address",
            syn_to(NODE_IP, 9090).build(),
            XDP_PASS,
            Stat::UplinkPassNotPublished,
            false,
        ),
        (
            "unpublished port",
            syn_to(NODE_IP, 8081).build(),
            XDP_PASS,
            Stat::UplinkPassNotPublished,
            false,
        ),
        (
            "published port at a foreign address",
            syn_to(Ipv4Addr::new(203, 0, 113, 9), 8080).build(),
            XDP_PASS,
            Stat::UplinkPassNotPublished,
            false,
        ),
        (
            "udp to a tcp-only port",
            udp_to_tcp_port,
            XDP_PASS,
            Stat::UplinkPassNotPublished,
            false,
        ),
        ("arp", not_ipv4, XDP_PASS, Stat::UplinkPassNotIpv4, false),
        (
            "an ipv4 header in an ipv6 frame",
            ipv4_as_ipv6,
            XDP_DROP,
            Stat::UplinkDropMalformed,
            false,
        ),
        (
            "first fragment: it has the ports",
            more_fragments,
            XDP_REDIRECT,
            Stat::UplinkRedirectDnat,
            true,
        ),
        (
            "later fragment whose first was not seen",
            later_fragment,
            XDP_PASS,
            Stat::UplinkPassFragment,
            false,
        ),
        ("icmp", icmp, XDP_PASS, Stat::UplinkPassNotTcpUdp, false),
        (
            "ihl below 5",
            bad_ihl,
            XDP_DROP,
            Stat::UplinkDropMalformed,
            false,
        ),
        (
            "ip version 6 in an ipv4 frame",
            bad_version,
            XDP_DROP,
            Stat::UplinkDropMalformed,
            false,
        ),
        (
            "total length past the frame",
            bad_total_len,
            XDP_DROP,
            Stat::UplinkDropMalformed,
            false,
        ),
        (
            "ttl 1",
            ttl_one,
            XDP_DROP,
            Stat::UplinkDropTtlExpired,
            false,
        ),
        // moby#45610: a frame from the wire to 127.0.0.1 never reaches a loopback-bound port.
        (
            "loopback destination",
            syn_to(Ipv4Addr::LOCALHOST, 8081).build(),
            XDP_PASS,
            Stat::UplinkPassLoopbackDestination,
            false,
        ),
        (
            "filter: inside the allowed /24",
            syn_to(NODE_IP, 8090).build(),
            XDP_REDIRECT,
            Stat::UplinkRedirectDnat,
            true,
        ),
        (
            "filter: the denied /32",
            Packet::tcp_syn(Ipv4Addr::new(198, 51, 100, 3), 40000, NODE_IP, 8090).build(),
            XDP_DROP,
            Stat::UplinkDropFilter,
            false,
        ),
        (
            "filter: the /0 default",
            Packet::tcp_syn(Ipv4Addr::new(203, 0, 113, 1), 40000, NODE_IP, 8090).build(),
            XDP_DROP,
            Stat::UplinkDropFilter,
            false,
        ),
        (
            "filter: other ports unfiltered",
            Packet::tcp_syn(Ipv4Addr::new(203, 0, 113, 1), 40000, NODE_IP, 8080).build(),
            XDP_REDIRECT,
            Stat::UplinkRedirectDnat,
            true,
        ),
    ];
    // The same logic at XDP and at TC (where an uplink's frames may carry partial
    // checksums), each program on a fixture of its own.
    for program in [UPLINK_PROGRAM, UPLINK_TC_PROGRAM] {
        if program == UPLINK_TC_PROGRAM {
            fx = Fixture::new()?;
        }
        for (name, frame, verdict, stat, translated) in &cases {
            let (got, out, moved) = fx.run(program, frame)?;
            let name = format!("{program}: {name}");
            assert_eq!((got, moved), (at_hook(program, *verdict), *stat), "{name}");
            if *translated {
                assert_dnat(&out, frame, &name);
            } else {
                assert_eq!(&out, frame, "{name}: frame must pass untouched");
            }
        }
    }
    Ok(())
}

/// An XDP verdict as `program` gives it: the same at XDP, its TC counterpart at TC.
fn at_hook(program: &str, xdp_verdict: u32) -> u32 {
    match (program == UPLINK_PROGRAM, xdp_verdict) {
        (true, verdict) => verdict,
        (false, XDP_PASS) => TC_ACT_OK,
        (false, XDP_REDIRECT) => TC_ACT_REDIRECT,
        (false, _) => TC_ACT_SHOT,
    }
}

/// From the outside straight to a container's own address, as Docker 28 decides: nothing
/// on a `nat` network (its raw-table drop), published container ports, replies and ICMP on
/// a `routed` one, everything on a `nat-unprotected` one, published container ports from a
/// trusted interface.
#[test]
fn direct_access_table() -> Result<()> {
    let mut fx = Fixture::new()?;
    fx.networks(&[
        ("172.17.0.0", 16, NETWORK_ICC | NETWORK_MASQUERADE),
        ("172.18.0.0", 16, NETWORK_ICC),
        ("172.19.0.0", 16, NETWORK_INTERNAL),
        (
            "172.20.0.0",
            16,
            NETWORK_ICC | NETWORK_DIRECT_PUBLISHED | NETWORK_DIRECT_ICMP,
        ),
        (
            "172.21.0.0",
            16,
            NETWORK_ICC | NETWORK_MASQUERADE | NETWORK_DIRECT_ANY,
        ),
        ("172.22.0.0", 16, NETWORK_ICC | NETWORK_MASQUERADE),
    ])?;
    fx.node_address(GATEWAY, 3)?;
    let routed = Ipv4Addr::new(172, 20, 0, 2);
    let trusted = Ipv4Addr::new(172, 22, 0, 2);
    {
        let mut backends: HashMap<&mut MapData, BackendKey, u32> =
            HashMap::try_from(fx.ebpf.map_mut(PUBLISHED_BACKENDS).unwrap())?;
        for ip in [routed, trusted] {
            let key = BackendKey {
                container_ip_be: u32::from(ip).to_be(),
                container_port_be: 80u16.to_be(),
                proto: IPPROTO_TCP,
                _pad: 0,
            };
            backends.insert(key, 1, 0)?;
        }
        // BPF_PROG_TEST_RUN hands an XDP program its frame from loopback (ifindex 1):
        // trusted for the sixth network.
        let mut trusted_ifaces: HashMap<&mut MapData, TrustedIfaceKey, u32> =
            HashMap::try_from(fx.ebpf.map_mut(TRUSTED_IFACES).unwrap())?;
        let key = TrustedIfaceKey {
            network_index: 6,
            ifindex: 1,
        };
        trusted_ifaces.insert(key, 1, 0)?;
    }
    // A routed container opens a flow to the world: its replies may come back.
    let out = Packet::tcp_syn(routed, 5555, WORLD_IP, 40000).build();
    let (verdict, _, stat) = fx.run(CONTAINER_PROGRAM, &out)?;
    assert_eq!((verdict, stat), (TC_ACT_OK, Stat::ContainerPassOutside));
    let ping_to = |dst: Ipv4Addr| {
        let mut ping = syn_to(dst, 80).build();
        ping[ETH_HLEN + 9] = 1;
        ping
    };
    let udp_to_tcp_backend = Packet {
        protocol: 17,
        ..syn_to(CONTAINER_IP, 80)
    }
    .build();
    let pass = (XDP_PASS, Stat::UplinkPassNotPublished);
    let pass_other = (XDP_PASS, Stat::UplinkPassNotTcpUdp);
    let drop = (XDP_DROP, Stat::UplinkDropDirectAccess);
    let cases: Vec<(&str, Vec<u8>, (u32, Stat))> = vec![
        (
            "nat: a published container port",
            syn_to(CONTAINER_IP, 80).build(),
            drop,
        ),
        (
            "nat: an unpublished container port",
            syn_to(CONTAINER_IP, 22).build(),
            drop,
        ),
        ("nat: udp", udp_to_tcp_backend, drop),
        ("nat: ping", ping_to(CONTAINER_IP), drop),
        (
            "the gateway, a node address",
            syn_to(GATEWAY, 22).build(),
            pass,
        ),
        (
            "nat without masquerade",
            syn_to(Ipv4Addr::new(172, 18, 0, 5), 22).build(),
            drop,
        ),
        (
            "an internal network",
            syn_to(Ipv4Addr::new(172, 19, 0, 5), 80).build(),
            drop,
        ),
        (
            "routed: a published container port",
            syn_to(routed, 80).build(),
            pass,
        ),
        (
            "routed: an unpublished port",
            syn_to(routed, 22).build(),
            drop,
        ),
        ("routed: ping", ping_to(routed), pass_other),
        (
            "routed: the reply of a flow the container opened",
            Packet {
                tcp_flags: 0x12,
                ..Packet::tcp_syn(WORLD_IP, 40000, routed, 5555)
            }
            .build(),
            pass,
        ),
        (
            "routed: the same port from another remote port",
            Packet::tcp_syn(WORLD_IP, 40001, routed, 5555).build(),
            drop,
        ),
        (
            "nat-unprotected: any port",
            syn_to(Ipv4Addr::new(172, 21, 0, 5), 22).build(),
            pass,
        ),
        (
            "nat-unprotected: ping",
            ping_to(Ipv4Addr::new(172, 21, 0, 5)),
            pass_other,
        ),
        (
            "trusted interface: a published container port",
            syn_to(trusted, 80).build(),
            pass,
        ),
        (
            "trusted interface: an unpublished port",
            syn_to(trusted, 22).build(),
            drop,
        ),
        (
            "not a bridge network",
            syn_to(Ipv4Addr::new(203, 0, 113, 9), 22).build(),
            pass,
        ),
    ];
    for (name, frame, expected) in cases {
        let (got, out, moved) = fx.run(UPLINK_PROGRAM, &frame)?;
        assert_eq!((got, moved), expected, "{name}");
        assert_eq!(out, frame, "{name}: frame must pass untouched");
    }
    Ok(())
}

/// The frame was rewritten to 172.17.0.2:80 for the container's veth, and nothing else.
fn assert_dnat(out: &[u8], input: &[u8], name: &str) {
    let (o, i) = (View(out), View(input));
    assert_eq!(out.len(), input.len(), "{name}");
    assert_eq!(o.dst(), CONTAINER_IP, "{name}");
    assert_eq!(o.dport(), 80, "{name}");
    assert_eq!(
        o.src(),
        i.src(),
        "{name}: the container sees the client's real address"
    );
    assert_eq!(o.sport(), i.sport(), "{name}");
    assert_eq!(o.ttl(), i.ttl() - 1, "{name}");
    assert_eq!(
        (o.dst_mac(), o.src_mac()),
        (CONTAINER_MAC, HOST_VETH_MAC),
        "{name}"
    );
    assert!(ipv4_checksum_ok(out), "{name}: IPv4 checksum");
    assert!(l4_checksum_ok(out), "{name}: TCP checksum");
}

#[test]
fn udp_is_translated_with_valid_checksums() -> Result<()> {
    let mut fx = Fixture::new()?;
    let frame = Packet {
        protocol: IPPROTO_UDP,
        payload: b"query".to_vec(),
        ..syn_to(NODE_IP, 5353)
    }
    .build();
    let (verdict, out, stat) = fx.run(UPLINK_PROGRAM, &frame)?;
    assert_eq!((verdict, stat), (XDP_REDIRECT, Stat::UplinkRedirectDnat));
    let (o, i) = (View(&out), View(&frame));
    assert_eq!(
        (o.dst(), o.dport(), o.src(), o.sport()),
        (CONTAINER_IP, 80, i.src(), i.sport())
    );
    assert!(
        ipv4_checksum_ok(&out) && l4_checksum_ok(&out),
        "UDP checksum valid after rewrite"
    );

    // A UDP checksum of zero means "none" and stays zero.
    let mut unchecked = frame.clone();
    let at = ETH_HLEN + 20 + 6;
    unchecked[at..at + 2].copy_from_slice(&[0, 0]);
    let (verdict, out, _) = fx.run(UPLINK_PROGRAM, &unchecked)?;
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(&out[at..at + 2], &[0, 0]);
    assert!(ipv4_checksum_ok(&out));
    Ok(())
}

#[test]
fn ip_options_are_skipped_by_ihl() -> Result<()> {
    let mut fx = Fixture::new()?;
    for options in [4, 12, 40] {
        let frame = Packet {
            ip_options: options,
            ..syn_to(NODE_IP, 8080)
        }
        .build();
        let (verdict, out, stat) = fx.run(UPLINK_PROGRAM, &frame)?;
        assert_eq!(
            (verdict, stat),
            (XDP_REDIRECT, Stat::UplinkRedirectDnat),
            "options={options}"
        );
        assert_dnat(&out, &frame, &format!("{options} option bytes"));
    }
    Ok(())
}

#[test]
fn truncated_frames_are_dropped_and_counted_at_every_length() -> Result<()> {
    let mut fx = Fixture::new()?;
    let frame = Packet {
        ip_options: 8,
        ..syn_to(NODE_IP, 8080)
    }
    .build();
    // Below an Ethernet header the kernel refuses the test run itself.
    for len in ETH_HLEN..frame.len() {
        let (verdict, _, stat) = fx.run(UPLINK_PROGRAM, &frame[..len])?;
        assert_eq!(
            (verdict, stat),
            (XDP_DROP, Stat::UplinkDropMalformed),
            "len={len}"
        );
    }
    Ok(())
}

#[test]
fn translated_flow_is_recorded_for_replies() -> Result<()> {
    let mut fx = Fixture::new()?;
    let (verdict, _, _) = fx.run(UPLINK_PROGRAM, &syn_to(NODE_IP, 8080).build())?;
    assert_eq!(verdict, XDP_REDIRECT);
    let key = FlowKey {
        container_ip_be: u32::from(CONTAINER_IP).to_be(),
        remote_ip_be: u32::from(WORLD_IP).to_be(),
        container_port_be: 80u16.to_be(),
        remote_port_be: 40000u16.to_be(),
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    };
    let origin = fx.flow(&key).expect("flow recorded");
    assert_eq!(origin.frontend_ip_be, u32::from(NODE_IP).to_be());
    assert_eq!(origin.frontend_port_be, 8080u16.to_be());
    // A packet that was not translated leaves no flow behind.
    fx.run(UPLINK_PROGRAM, &syn_to(NODE_IP, 8081).build())?;
    assert!(
        fx.flow(&FlowKey {
            container_port_be: 81u16.to_be(),
            ..key
        })
        .is_none()
    );
    Ok(())
}

/// A namespace whose FIB reaches the world (198.51.100.2 on `up0`, a known neighbour), for
/// the programs that forward by FIB lookup: test runs use the caller's namespace.
fn forwarding_namespace() -> Result<Netns> {
    let ns = Netns::new("tcrun")?;
    // The FIB helper refuses to forward unless forwarding is on (the agent turns it on).
    ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    ns.ip(&[
        "link", "add", "up0", "type", "veth", "peer", "name", "up0peer",
    ])?;
    ns.ip(&["link", "set", "up0peer", "up"])?;
    ns.ip(&["link", "set", "up0", "address", "0a:00:00:00:00:01", "up"])?;
    ns.ip(&["addr", "add", "198.51.100.1/24", "dev", "up0"])?;
    ns.ip(&[
        "neigh",
        "add",
        "198.51.100.2",
        "lladdr",
        "0a:00:00:00:00:02",
        "dev",
        "up0",
        "nud",
        "permanent",
    ])?;
    Ok(ns)
}

/// Masquerade leaves with the address of the interface the route picks: out of one without
/// an address nothing is masqueraded, counted, as MASQUERADE drops it.
#[test]
fn masquerade_takes_the_route_interfaces_address_or_drops() -> Result<()> {
    let ns = forwarding_namespace()?;
    ns.run(|| -> Result<()> {
        let mut fx = Fixture::new()?;
        fx.networks(&[("172.17.0.0", 16, NETWORK_ICC | NETWORK_MASQUERADE)])?;
        let query = Packet {
            src_mac: CONTAINER_MAC,
            dst_mac: HOST_VETH_MAC,
            protocol: IPPROTO_UDP,
            payload: b"query".to_vec(),
            ..Packet::tcp_syn(CONTAINER_IP, 5000, WORLD_IP, 53)
        }
        .build();
        let (verdict, _, stat) = fx.run(CONTAINER_PROGRAM, &query)?;
        assert_eq!(
            (verdict, stat),
            (TC_ACT_SHOT, Stat::ContainerDropNoMasqueradeSource)
        );
        fx.masquerade_via_up0()?;
        let (verdict, out, stat) = fx.run(CONTAINER_PROGRAM, &query)?;
        assert_eq!(
            (verdict, stat),
            (TC_ACT_REDIRECT, Stat::ContainerRedirectMasquerade)
        );
        assert_eq!(out[ETH_HLEN + 12..ETH_HLEN + 16], NODE_IP.octets());
        Ok(())
    })
}

#[test]
fn masquerade_table() -> Result<()> {
    let ns = forwarding_namespace()?;
    ns.run(|| -> Result<()> {
        let mut fx = Fixture::new()?;
        fx.networks(&[("172.17.0.0", 16, NETWORK_ICC | NETWORK_MASQUERADE)])?;
        let mut config: Array<&mut MapData, NodeConfig> =
            Array::try_from(fx.ebpf.map_mut(NODE_CONFIG).unwrap())?;
        config.set(
            0,
            NodeConfig {
                netns_cookie: 0,
                masquerade_ip_be: 0,
                masquerade_port_min: 61000,
                masquerade_port_max: 61000,
            },
            0,
        )?;
        fx.masquerade_via_up0()?;
        let conntrack = |fx: &Fixture| -> Result<usize> {
            let ct: HashMap<&MapData, CtKey, CtEntry> =
                HashMap::try_from(fx.ebpf.map(CONNTRACK).unwrap())?;
            Ok(ct.keys().count())
        };
        let out_of = |sport: u16| Packet {
            src_mac: CONTAINER_MAC,
            dst_mac: HOST_VETH_MAC,
            protocol: IPPROTO_UDP,
            payload: b"query".to_vec(),
            ..Packet::tcp_syn(CONTAINER_IP, sport, WORLD_IP, 53)
        };

        // An invalid packet creates no entry.
        let mut truncated = out_of(5000).build();
        truncated.truncate(ETH_HLEN + 24);
        truncated[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&24u16.to_be_bytes());
        let (verdict, _, stat) = fx.run(CONTAINER_PROGRAM, &truncated)?;
        assert_eq!((verdict, stat), (TC_ACT_SHOT, Stat::ContainerDropMalformed));
        assert_eq!(conntrack(&fx)?, 0);

        // A flow out: the node's address and the one port of the range, both directions
        // tracked.
        let (verdict, out, stat) = fx.run(CONTAINER_PROGRAM, &out_of(5000).build())?;
        assert_eq!(
            (verdict, stat),
            (TC_ACT_REDIRECT, Stat::ContainerRedirectMasquerade)
        );
        let o = View(&out);
        assert_eq!(
            (o.src(), o.sport(), o.dst(), o.dport()),
            (NODE_IP, 61000, WORLD_IP, 53)
        );
        assert!(ipv4_checksum_ok(&out) && l4_checksum_ok(&out));
        assert_eq!(conntrack(&fx)?, 2);

        // The reply on the uplink goes back to the container.
        let reply = Packet {
            protocol: IPPROTO_UDP,
            payload: b"answer".to_vec(),
            ..Packet::tcp_syn(WORLD_IP, 53, NODE_IP, 61000)
        }
        .build();
        let (verdict, out, stat) = fx.run(UPLINK_PROGRAM, &reply)?;
        assert_eq!(
            (verdict, stat),
            (XDP_REDIRECT, Stat::UplinkRedirectMasqueradeReply)
        );
        let o = View(&out);
        assert_eq!(
            (o.src(), o.sport(), o.dst(), o.dport()),
            (WORLD_IP, 53, CONTAINER_IP, 5000)
        );
        assert_eq!((o.dst_mac(), o.src_mac()), (CONTAINER_MAC, HOST_VETH_MAC));
        assert!(ipv4_checksum_ok(&out) && l4_checksum_ok(&out));

        // A second flow finds the range used up: refused and counted, the first intact.
        let (verdict, _, stat) = fx.run(CONTAINER_PROGRAM, &out_of(5001).build())?;
        assert_eq!(
            (verdict, stat),
            (TC_ACT_SHOT, Stat::ContainerDropNatExhausted)
        );
        assert_eq!(conntrack(&fx)?, 2);
        let (verdict, _, stat) = fx.run(CONTAINER_PROGRAM, &out_of(5000).build())?;
        assert_eq!(
            (verdict, stat),
            (TC_ACT_REDIRECT, Stat::ContainerRedirectMasquerade)
        );
        Ok(())
    })
}

#[test]
fn container_ingress_table() -> Result<()> {
    let ns = forwarding_namespace()?;
    ns.run(|| -> Result<()> {
        let mut fx = Fixture::new()?;
        let reply = Packet {
            src_mac: CONTAINER_MAC,
            dst_mac: HOST_VETH_MAC,
            ..Packet::tcp_syn(CONTAINER_IP, 80, WORLD_IP, 40000)
        }
        .build();

        // No flow yet: the container's own traffic passes untouched.
        let (verdict, out, stat) = fx.run(CONTAINER_PROGRAM, &reply)?;
        assert_eq!((verdict, stat), (TC_ACT_OK, Stat::ContainerPassNoFlow));
        assert_eq!(out, reply);

        // The networks' policy: isolation, icc=false, --internal; each drop named.
        fx.networks(&[
            ("172.17.0.0", 16, NETWORK_ICC),
            ("10.62.0.0", 24, 0),
            ("10.63.0.0", 24, NETWORK_INTERNAL | NETWORK_ICC),
        ])?;
        let udp = |src: [u8; 4], dst: [u8; 4]| {
            Packet {
                protocol: IPPROTO_UDP,
                ..Packet::tcp_syn(src.into(), 40000, dst.into(), 53)
            }
            .build()
        };
        let mut icmp = udp([10, 62, 0, 2], [10, 62, 0, 3]);
        icmp[ETH_HLEN + 9] = 1;
        let policy_cases: Vec<(&str, Vec<u8>, u32, Stat)> = vec![
            (
                "to the world",
                reply.clone(),
                TC_ACT_OK,
                Stat::ContainerPassOutside,
            ),
            (
                "same network, icc",
                udp([172, 17, 0, 2], [172, 17, 0, 3]),
                TC_ACT_OK,
                Stat::ContainerPassSameNetwork,
            ),
            (
                "same network, icc=false",
                udp([10, 62, 0, 2], [10, 62, 0, 3]),
                TC_ACT_SHOT,
                Stat::ContainerDropPolicyIcc,
            ),
            (
                "icmp, icc=false",
                icmp,
                TC_ACT_SHOT,
                Stat::ContainerDropPolicyIcc,
            ),
            (
                "another network",
                udp([172, 17, 0, 2], [10, 62, 0, 3]),
                TC_ACT_SHOT,
                Stat::ContainerDropIsolation,
            ),
            (
                "from an internal network out",
                udp([10, 63, 0, 2], [203, 0, 113, 1]),
                TC_ACT_SHOT,
                Stat::ContainerDropInternal,
            ),
            (
                "inside an internal network",
                udp([10, 63, 0, 2], [10, 63, 0, 3]),
                TC_ACT_OK,
                Stat::ContainerPassSameNetwork,
            ),
            (
                "to the node",
                udp([10, 62, 0, 2], [198, 51, 100, 1]),
                TC_ACT_OK,
                Stat::ContainerPassToNode,
            ),
        ];
        for (name, frame, verdict, stat) in policy_cases {
            let (got, out, moved) = fx.run(CONTAINER_PROGRAM, &frame)?;
            assert_eq!((got, moved), (verdict, stat), "{name}");
            assert_eq!(out, frame, "{name}: untouched");
        }

        // The inbound SYN records the flow; the reply is translated back and forwarded.
        let (verdict, _, _) = fx.run(UPLINK_PROGRAM, &syn_to(NODE_IP, 8080).build())?;
        assert_eq!(verdict, XDP_REDIRECT);
        let (verdict, out, stat) = fx.run(CONTAINER_PROGRAM, &reply)?;
        assert_eq!(
            (verdict, stat),
            (TC_ACT_REDIRECT, Stat::ContainerRedirectReply)
        );
        let o = View(&out);
        assert_eq!(
            (o.src(), o.sport()),
            (NODE_IP, 8080),
            "reply comes from the published address"
        );
        assert_eq!((o.dst(), o.dport()), (WORLD_IP, 40000));
        assert_eq!(o.ttl(), 63);
        assert_eq!(
            o.dst_mac(),
            [0x0a, 0, 0, 0, 0, 0x02],
            "next hop's MAC from the neighbour table"
        );
        assert_eq!(o.src_mac(), [0x0a, 0, 0, 0, 0, 0x01]);
        assert!(ipv4_checksum_ok(&out) && l4_checksum_ok(&out), "checksums");

        let mut truncated = reply.clone();
        // Ends inside the TCP header (the kernel refuses shorter IPv4 skbs to test runs).
        truncated.truncate(ETH_HLEN + 20 + 10);
        truncated[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&30u16.to_be_bytes());
        let (verdict, _, stat) = fx.run(CONTAINER_PROGRAM, &truncated).context("truncated")?;
        assert_eq!((verdict, stat), (TC_ACT_SHOT, Stat::ContainerDropMalformed));
        let mut arp = reply.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let (verdict, _, stat) = fx.run(CONTAINER_PROGRAM, &arp)?;
        assert_eq!((verdict, stat), (TC_ACT_OK, Stat::ContainerPassNotIpv4));

        // Hairpin: the container reaches its own published port through the node's
        // address; it is seen from its gateway, and the reply comes back to it directly.
        let to_own_port = Packet {
            src_mac: CONTAINER_MAC,
            dst_mac: HOST_VETH_MAC,
            ..Packet::tcp_syn(CONTAINER_IP, 40001, NODE_IP, 8080)
        };
        let ack = Packet {
            tcp_flags: 0x10,
            ..to_own_port.clone()
        }
        .build();
        let (verdict, out, stat) = fx.run(CONTAINER_PROGRAM, &ack)?;
        assert_eq!(
            (verdict, stat),
            (TC_ACT_OK, Stat::ContainerPassNoFlow),
            "only a SYN opens a hairpin flow"
        );
        assert_eq!(out, ack);
        let (verdict, out, stat) = fx.run(CONTAINER_PROGRAM, &to_own_port.build())?;
        assert_eq!(
            (verdict, stat),
            (TC_ACT_REDIRECT, Stat::ContainerRedirectHairpin)
        );
        let o = View(&out);
        assert_eq!(
            (o.src(), o.sport(), o.dst(), o.dport()),
            (GATEWAY, 40001, CONTAINER_IP, 80)
        );
        assert_eq!((o.dst_mac(), o.src_mac()), (CONTAINER_MAC, HOST_VETH_MAC));
        assert!(ipv4_checksum_ok(&out) && l4_checksum_ok(&out));
        let syn_ack = Packet {
            src_mac: CONTAINER_MAC,
            dst_mac: HOST_VETH_MAC,
            tcp_flags: 0x12,
            ..Packet::tcp_syn(CONTAINER_IP, 80, GATEWAY, 40001)
        }
        .build();
        let (verdict, out, stat) = fx.run(CONTAINER_PROGRAM, &syn_ack)?;
        assert_eq!(
            (verdict, stat),
            (TC_ACT_REDIRECT, Stat::ContainerRedirectReplyLocal)
        );
        let o = View(&out);
        assert_eq!(
            (o.src(), o.sport(), o.dst(), o.dport()),
            (NODE_IP, 8080, CONTAINER_IP, 40001)
        );
        assert_eq!((o.dst_mac(), o.src_mac()), (CONTAINER_MAC, HOST_VETH_MAC));
        assert!(ipv4_checksum_ok(&out) && l4_checksum_ok(&out));
        Ok(())
    })
}

const OTHER_CONTAINER_IP: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 3);
const OTHER_CONTAINER_MAC: [u8; 6] = [0x02, 0x42, 172, 17, 0, 3];

impl Fixture {
    /// Masquerade through the node's address, with netfilter's choice of ports (no range),
    /// for 172.17.0.0/16 where a second container sits at 172.17.0.3.
    fn masquerading(conntrack_max: u32) -> Result<Self> {
        let mut fx = Fixture::with_sizes(conntrack_max, NAT_FLOWS_MAX)?;
        fx.networks(&[("172.17.0.0", 16, NETWORK_ICC | NETWORK_MASQUERADE)])?;
        let mut config: Array<&mut MapData, NodeConfig> =
            Array::try_from(fx.ebpf.map_mut(NODE_CONFIG).unwrap())?;
        config.set(
            0,
            NodeConfig {
                netns_cookie: 0,
                masquerade_ip_be: 0,
                masquerade_port_min: 0,
                masquerade_port_max: 0,
            },
            0,
        )?;
        fx.masquerade_via_up0()?;
        let mut endpoints: HashMap<&mut MapData, EndpointKey, EndpointInfo> =
            HashMap::try_from(fx.ebpf.map_mut(ENDPOINTS).unwrap())?;
        endpoints.insert(
            EndpointKey {
                ip_be: u32::from(OTHER_CONTAINER_IP).to_be(),
            },
            EndpointInfo {
                host_veth_ifindex: HOST_VETH_IFINDEX + 1,
                gateway_ip_be: u32::from(GATEWAY).to_be(),
                container_mac: OTHER_CONTAINER_MAC,
                host_veth_mac: HOST_VETH_MAC,
            },
            0,
        )?;
        Ok(fx)
    }

    /// Every CONNTRACK entry.
    fn conntrack(&self) -> Result<Vec<(CtKey, CtEntry)>> {
        let ct: HashMap<&MapData, CtKey, CtEntry> =
            HashMap::try_from(self.ebpf.map(CONNTRACK).unwrap())?;
        Ok(ct.iter().collect::<Result<_, _>>()?)
    }

    /// The states of the entries of the flow whose reply comes to the node at `port`.
    fn states_at(&self, port: u16) -> Result<Vec<u8>> {
        Ok(self
            .conntrack()?
            .into_iter()
            .filter(|(k, e)| {
                u16::from_be(k.dport_be) == port || u16::from_be(e.nat_port_be) == port
            })
            .map(|(_, e)| e.state)
            .collect())
    }
}

/// A container's packet to the world server 198.51.100.2:`dport`.
fn from_container(src: Ipv4Addr, sport: u16, dport: u16, protocol: u8, flags: u8) -> Vec<u8> {
    let mac = if src == CONTAINER_IP {
        CONTAINER_MAC
    } else {
        OTHER_CONTAINER_MAC
    };
    Packet {
        src_mac: mac,
        dst_mac: HOST_VETH_MAC,
        protocol,
        tcp_flags: flags,
        payload: b"data".to_vec(),
        ..Packet::tcp_syn(src, sport, WORLD_IP, dport)
    }
    .build()
}

/// The world server's packet to the node's `port`.
fn from_world(sport: u16, port: u16, protocol: u8, flags: u8) -> Vec<u8> {
    Packet {
        protocol,
        tcp_flags: flags,
        payload: b"data".to_vec(),
        ..Packet::tcp_syn(WORLD_IP, sport, NODE_IP, port)
    }
    .build()
}

const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;
const ACK: u8 = 0x10;
const FIN_ACK: u8 = 0x11;
const RST: u8 = 0x04;

#[test]
fn masquerade_port_allocation_table() -> Result<()> {
    let ns = forwarding_namespace()?;
    ns.run(|| -> Result<()> {
        let mut fx = Fixture::masquerading(CONNTRACK_MAX)?;

        // (name, container, source port, the port the world must see: Some(kept) or None
        // for "another one, from the kernel's range for the class").
        let cases: Vec<(&str, Ipv4Addr, u16, Option<u16>)> = vec![
            ("a free port is kept", CONTAINER_IP, 40000, Some(40000)),
            (
                "the same port from another container is remapped",
                OTHER_CONTAINER_IP,
                40000,
                None,
            ),
            ("a privileged port is kept", CONTAINER_IP, 700, Some(700)),
            (
                "a taken privileged port is remapped among 600-1023",
                OTHER_CONTAINER_IP,
                700,
                None,
            ),
            ("a port below 512 is kept", CONTAINER_IP, 53, Some(53)),
            (
                "a taken port below 512 is remapped among 1-511",
                OTHER_CONTAINER_IP,
                53,
                None,
            ),
        ];
        for (name, src, sport, kept) in cases {
            let (verdict, out, stat) = fx.run(
                CONTAINER_PROGRAM,
                &from_container(src, sport, 53, IPPROTO_UDP, 0),
            )?;
            assert_eq!(
                (verdict, stat),
                (TC_ACT_REDIRECT, Stat::ContainerRedirectMasquerade),
                "{name}"
            );
            let o = View(&out);
            assert_eq!(o.src(), NODE_IP, "{name}");
            assert!(
                ipv4_checksum_ok(&out) && l4_checksum_ok(&out),
                "{name}: checksums"
            );
            let class = match sport {
                0..512 => 1..=511,
                512..1024 => 600..=1023,
                _ => 1024..=65535,
            };
            match kept {
                Some(port) => assert_eq!(o.sport(), port, "{name}"),
                None => assert!(
                    o.sport() != sport && class.contains(&o.sport()),
                    "{name}: {}",
                    o.sport()
                ),
            }
            // The reply finds its way back to the right container and port.
            let (verdict, out, stat) =
                fx.run(UPLINK_PROGRAM, &from_world(53, o.sport(), IPPROTO_UDP, 0))?;
            assert_eq!(
                (verdict, stat),
                (XDP_REDIRECT, Stat::UplinkRedirectMasqueradeReply),
                "{name}"
            );
            let back = View(&out);
            assert_eq!((back.dst(), back.dport()), (src, sport), "{name}: reply");
            assert!(
                ipv4_checksum_ok(&out) && l4_checksum_ok(&out),
                "{name}: reply checksums"
            );
        }
        // Answered flows are established, both entries.
        assert!(
            fx.conntrack()?
                .iter()
                .all(|(_, e)| e.state == CT_ESTABLISHED)
        );
        Ok(())
    })
}

#[test]
fn masquerade_tcp_states_table() -> Result<()> {
    let ns = forwarding_namespace()?;
    ns.run(|| -> Result<()> {
        let mut fx = Fixture::masquerading(CONNTRACK_MAX)?;
        let out = |fx: &mut Fixture, flags: u8| -> Result<Stat> {
            let (verdict, _, stat) = fx.run(
                CONTAINER_PROGRAM,
                &from_container(CONTAINER_IP, 40000, 80, IPPROTO_TCP, flags),
            )?;
            assert_eq!(verdict, TC_ACT_REDIRECT, "{stat:?}");
            Ok(stat)
        };
        let back = |fx: &mut Fixture, flags: u8| -> Result<Stat> {
            let (verdict, _, stat) =
                fx.run(UPLINK_PROGRAM, &from_world(80, 40000, IPPROTO_TCP, flags))?;
            assert_eq!(verdict, XDP_REDIRECT, "{stat:?}");
            Ok(stat)
        };

        // (step, packet, the states of both entries after it)
        out(&mut fx, SYN)?;
        assert_eq!(fx.states_at(40000)?, [CT_NEW, CT_NEW], "SYN out: new");
        back(&mut fx, SYN_ACK)?;
        assert_eq!(
            fx.states_at(40000)?,
            [CT_REPLIED; 2],
            "SYN-ACK back: replied"
        );
        out(&mut fx, ACK)?;
        assert_eq!(
            fx.states_at(40000)?,
            [CT_ESTABLISHED; 2],
            "the opener's ACK: established"
        );
        back(&mut fx, ACK)?;
        assert_eq!(fx.states_at(40000)?, [CT_ESTABLISHED; 2], "ACK: unchanged");
        back(&mut fx, FIN_ACK)?;
        assert_eq!(fx.states_at(40000)?, [CT_CLOSING; 2], "FIN: closing");
        out(&mut fx, SYN)?;
        assert_eq!(
            fx.states_at(40000)?,
            [CT_NEW; 2],
            "a SYN takes the closing tuple over"
        );
        back(&mut fx, SYN_ACK)?;
        out(&mut fx, ACK)?;
        assert_eq!(fx.states_at(40000)?, [CT_ESTABLISHED; 2]);

        // A reset goes through and ends the flow at once.
        back(&mut fx, RST)?;
        assert!(fx.conntrack()?.is_empty(), "RST removes both entries");
        // Without its flow, a late segment from the world is not translated.
        let (verdict, _, stat) =
            fx.run(UPLINK_PROGRAM, &from_world(80, 40000, IPPROTO_TCP, ACK))?;
        assert_eq!((verdict, stat), (XDP_PASS, Stat::UplinkPassNotPublished));

        // Another container's SYN may take over a tuple whose flow is closing.
        out(&mut fx, SYN)?;
        back(&mut fx, SYN_ACK)?;
        out(&mut fx, FIN_ACK)?;
        assert_eq!(fx.states_at(40000)?, [CT_CLOSING; 2]);
        let (verdict, out_frame, _) = fx.run(
            CONTAINER_PROGRAM,
            &from_container(OTHER_CONTAINER_IP, 40000, 80, IPPROTO_TCP, SYN),
        )?;
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(
            View(&out_frame).sport(),
            40000,
            "the closing tuple is reused"
        );
        let (_, back_frame, _) =
            fx.run(UPLINK_PROGRAM, &from_world(80, 40000, IPPROTO_TCP, SYN_ACK))?;
        assert_eq!(View(&back_frame).dst(), OTHER_CONTAINER_IP);
        assert_eq!(fx.conntrack()?.len(), 2, "the old flow is gone");
        Ok(())
    })
}

#[test]
fn full_table_early_drop_table() -> Result<()> {
    let ns = forwarding_namespace()?;
    ns.run(|| -> Result<()> {
        // Room for two flows (two entries each).
        let mut fx = Fixture::masquerading(4)?;
        let udp_out = |fx: &mut Fixture, sport: u16| {
            fx.run_counting(
                CONTAINER_PROGRAM,
                &from_container(CONTAINER_IP, sport, 53, IPPROTO_UDP, 0),
            )
        };
        for sport in [5001, 5002] {
            let (verdict, _, moved) = udp_out(&mut fx, sport)?;
            assert_eq!(
                (verdict, moved),
                (
                    TC_ACT_REDIRECT,
                    vec![(Stat::ContainerRedirectMasquerade, 1)]
                )
            );
        }
        // Full of unanswered flows: the oldest gives way.
        let (verdict, _, moved) = udp_out(&mut fx, 5003)?;
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(
            moved,
            vec![
                (Stat::ContainerRedirectMasquerade, 1),
                (Stat::FlowEarlyDrop, 1)
            ]
        );
        let ports: Vec<u16> = fx
            .conntrack()?
            .iter()
            .map(|(k, _)| u16::from_be(k.sport_be))
            .collect();
        assert!(
            !ports.contains(&5001) && ports.contains(&5002) && ports.contains(&5003),
            "{ports:?}"
        );
        // Both answered: established flows are never evicted, so the next is refused.
        for port in [5002, 5003] {
            let (verdict, _, _) = fx.run(UPLINK_PROGRAM, &from_world(53, port, IPPROTO_UDP, 0))?;
            assert_eq!(verdict, XDP_REDIRECT);
        }
        let (verdict, _, moved) = udp_out(&mut fx, 5004)?;
        assert_eq!(
            (verdict, moved),
            (TC_ACT_SHOT, vec![(Stat::ContainerDropConntrackFull, 1)])
        );
        assert_eq!(fx.conntrack()?.len(), 4);
        // The live flows still carry data both ways.
        for port in [5002, 5003] {
            let (verdict, _, _) = udp_out(&mut fx, port)?;
            assert_eq!(verdict, TC_ACT_REDIRECT);
            let (verdict, _, _) = fx.run(UPLINK_PROGRAM, &from_world(53, port, IPPROTO_UDP, 0))?;
            assert_eq!(verdict, XDP_REDIRECT);
        }
        Ok(())
    })
}

const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The MACs `forwarding_namespace` routes to the world with.
const UPLINK_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x01];
const WORLD_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x02];

/// A UDP datagram with `len` bytes of patterned payload.
fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, len: usize) -> Packet {
    Packet {
        protocol: IPPROTO_UDP,
        payload: (0..len).map(|i| (i % 251) as u8).collect(),
        ..Packet::tcp_syn(src, sport, dst, dport)
    }
}

/// `packet` as a container sends it: from its MAC to the node-side veth's.
fn sent_by_container(packet: Packet) -> Packet {
    Packet {
        src_mac: CONTAINER_MAC,
        dst_mac: HOST_VETH_MAC,
        ..packet
    }
}

impl Fixture {
    fn fragment_entry(&self, key: &FragmentKey) -> Option<FragmentEntry> {
        let map: HashMap<&MapData, FragmentKey, FragmentEntry> =
            HashMap::try_from(self.ebpf.map(FRAGMENTS).unwrap()).ok()?;
        map.get(key, 0).ok()
    }

    /// 172.17.0.0/16 masquerades to the node's address from the one port 61000.
    fn masquerade_from_one_port(&mut self) -> Result<()> {
        self.networks(&[("172.17.0.0", 16, NETWORK_ICC | NETWORK_MASQUERADE)])?;
        let mut config: Array<&mut MapData, NodeConfig> =
            Array::try_from(self.ebpf.map_mut(NODE_CONFIG).unwrap())?;
        config.set(
            0,
            NodeConfig {
                netns_cookie: 0,
                masquerade_ip_be: 0,
                masquerade_port_min: 61000,
                masquerade_port_max: 61000,
            },
            0,
        )?;
        self.masquerade_via_up0()?;
        Ok(())
    }

    /// Runs `program` on each frame in turn, expecting `first` for the first one and
    /// `rest` for the others; returns the output frames.
    fn run_each(
        &mut self,
        program: &str,
        frames: &[Vec<u8>],
        first: (u32, Stat),
        rest: (u32, Stat),
    ) -> Result<Vec<Vec<u8>>> {
        let mut outs = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            let (verdict, out, stat) = self.run(program, frame)?;
            let want = if i == 0 { first } else { rest };
            assert_eq!((verdict, stat), want, "fragment {i}");
            outs.push(out);
        }
        Ok(outs)
    }
}

/// The key of a fragmented datagram as it arrives.
fn fragment_key(src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> FragmentKey {
    FragmentKey {
        src_ip_be: u32::from(src).to_be(),
        dst_ip_be: u32::from(dst).to_be(),
        id_be: id.to_be(),
        proto: IPPROTO_UDP,
        _pad: 0,
    }
}

/// Every output fragment kept its data and got a valid IPv4 checksum, and together they
/// make the expected datagram with a valid UDP checksum; returns it.
fn assert_reassembles(outs: &[Vec<u8>], inputs: &[Vec<u8>], name: &str) -> Vec<u8> {
    for (i, (out, input)) in outs.iter().zip(inputs).enumerate() {
        assert_eq!(out.len(), input.len(), "{name}: fragment {i}");
        assert!(ipv4_checksum_ok(out), "{name}: fragment {i}: IPv4 checksum");
        assert_eq!(
            View(out).ttl(),
            View(input).ttl() - 1,
            "{name}: fragment {i}"
        );
        assert_eq!(
            &out[ETH_HLEN + 4..ETH_HLEN + 8],
            &input[ETH_HLEN + 4..ETH_HLEN + 8],
            "{name}: fragment {i}: IP id, flags and offset"
        );
    }
    let whole = reassemble(outs);
    assert!(
        l4_checksum_ok(&whole),
        "{name}: UDP checksum of the whole datagram"
    );
    whole
}

#[test]
fn fragments_to_a_published_port_table() -> Result<()> {
    let mut fx = Fixture::new()?;
    let datagram = with_ip_id(udp(WORLD_IP, 40000, NODE_IP, 5353, 3000).build(), 0x0a01);
    let frags = fragments(&datagram, 1480);
    assert_eq!(frags.len(), 3);

    // In order: the first is translated like a whole packet, the others follow it.
    let outs = fx.run_each(
        UPLINK_PROGRAM,
        &frags,
        (XDP_REDIRECT, Stat::UplinkRedirectDnat),
        (XDP_REDIRECT, Stat::UplinkRedirectFragment),
    )?;
    for (i, (out, input)) in outs.iter().zip(&frags).enumerate() {
        let o = View(out);
        assert_eq!((o.src(), o.dst()), (WORLD_IP, CONTAINER_IP), "fragment {i}");
        assert_eq!((o.dst_mac(), o.src_mac()), (CONTAINER_MAC, HOST_VETH_MAC));
        if i > 0 {
            assert_eq!(
                &out[ETH_HLEN + 20..],
                &input[ETH_HLEN + 20..],
                "data untouched"
            );
        }
    }
    let whole = assert_reassembles(&outs, &frags, "published port");
    let w = View(&whole);
    assert_eq!((w.sport(), w.dport()), (40000, 80));
    assert_eq!(
        &whole[ETH_HLEN + 28..],
        &datagram[ETH_HLEN + 28..],
        "payload"
    );
    let entry = fx
        .fragment_entry(&fragment_key(WORLD_IP, NODE_IP, 0x0a01))
        .expect("the first fragment's translation is remembered");
    assert_eq!(
        (entry.dst_ip_be, entry.ifindex, entry.dst_mac),
        (
            u32::from(CONTAINER_IP).to_be(),
            HOST_VETH_IFINDEX,
            CONTAINER_MAC
        )
    );

    // Out of order: a fragment before its first passes to the node's stack untouched (it
    // may be the node's own); the first and those after it are translated.
    let datagram = with_ip_id(udp(WORLD_IP, 40001, NODE_IP, 5353, 3000).build(), 0x0a02);
    let frags = fragments(&datagram, 1480);
    let (verdict, out, stat) = fx.run(UPLINK_PROGRAM, &frags[2])?;
    assert_eq!((verdict, stat), (XDP_PASS, Stat::UplinkPassFragment));
    assert_eq!(out, frags[2]);
    let outs = fx.run_each(
        UPLINK_PROGRAM,
        &frags[..2],
        (XDP_REDIRECT, Stat::UplinkRedirectDnat),
        (XDP_REDIRECT, Stat::UplinkRedirectFragment),
    )?;
    assert_eq!(View(&outs[1]).dst(), CONTAINER_IP);

    // 9,000 bytes, seven fragments, the first arriving fourth: the three before it pass,
    // the three after it follow it to the container.
    let datagram = with_ip_id(udp(WORLD_IP, 40002, NODE_IP, 5353, 9000).build(), 0x0a04);
    let frags = fragments(&datagram, 1480);
    assert_eq!(frags.len(), 7);
    for (i, at) in [5, 2, 6, 0, 3, 1, 4].into_iter().enumerate() {
        let (verdict, out, stat) = fx.run(UPLINK_PROGRAM, &frags[at])?;
        let want = match i {
            0..3 => (XDP_PASS, Stat::UplinkPassFragment),
            3 => (XDP_REDIRECT, Stat::UplinkRedirectDnat),
            _ => (XDP_REDIRECT, Stat::UplinkRedirectFragment),
        };
        assert_eq!(
            (verdict, stat),
            want,
            "fragment {at}, arriving in position {i}"
        );
        if i < 3 {
            assert_eq!(out, frags[at]);
        } else {
            assert_eq!(View(&out).dst(), CONTAINER_IP);
        }
    }

    // Another datagram of the same flow (another IP id) is not taken for this one; an
    // expiring TTL ends at a following fragment too.
    let other = with_ip_id(frags[1].clone(), 0x0a03);
    let (verdict, out, stat) = fx.run(UPLINK_PROGRAM, &other)?;
    assert_eq!((verdict, stat), (XDP_PASS, Stat::UplinkPassFragment));
    assert_eq!(out, other);
    let expiring = with_ttl(frags[1].clone(), 1);
    let (verdict, _, stat) = fx.run(UPLINK_PROGRAM, &expiring)?;
    assert_eq!((verdict, stat), (XDP_DROP, Stat::UplinkDropTtlExpired));
    Ok(())
}

#[test]
fn fragments_through_masquerade_both_ways() -> Result<()> {
    let ns = forwarding_namespace()?;
    ns.run(|| -> Result<()> {
        let mut fx = Fixture::new()?;
        fx.masquerade_from_one_port()?;
        // The container sends a fragmented datagram out: it leaves from the node's address
        // and port, every fragment forwarded to the next hop.
        let datagram = with_ip_id(
            sent_by_container(udp(CONTAINER_IP, 5000, WORLD_IP, 53, 3000)).build(),
            0x0b01,
        );
        let frags = fragments(&datagram, 1480);
        let outs = fx.run_each(
            CONTAINER_PROGRAM,
            &frags,
            (TC_ACT_REDIRECT, Stat::ContainerRedirectMasquerade),
            (TC_ACT_REDIRECT, Stat::ContainerRedirectFragment),
        )?;
        for out in &outs {
            let o = View(out);
            assert_eq!((o.src(), o.dst()), (NODE_IP, WORLD_IP));
            assert_eq!((o.dst_mac(), o.src_mac()), (WORLD_MAC, UPLINK_MAC));
        }
        let whole = assert_reassembles(&outs, &frags, "masquerade out");
        assert_eq!((View(&whole).sport(), View(&whole).dport()), (61000, 53));

        // The world's fragmented answer goes back to the container, in order and not.
        let answer = |id| {
            let datagram = with_ip_id(udp(WORLD_IP, 53, NODE_IP, 61000, 3000).build(), id);
            fragments(&datagram, 1480)
        };
        let frags = answer(0x0b02);
        let outs = fx.run_each(
            UPLINK_PROGRAM,
            &frags,
            (XDP_REDIRECT, Stat::UplinkRedirectMasqueradeReply),
            (XDP_REDIRECT, Stat::UplinkRedirectFragment),
        )?;
        for out in &outs {
            assert_eq!(View(out).dst(), CONTAINER_IP);
            assert_eq!(
                (View(out).dst_mac(), View(out).src_mac()),
                (CONTAINER_MAC, HOST_VETH_MAC)
            );
        }
        let whole = assert_reassembles(&outs, &frags, "masquerade reply");
        assert_eq!((View(&whole).sport(), View(&whole).dport()), (53, 5000));
        let frags = answer(0x0b03);
        let (verdict, out, stat) = fx.run(UPLINK_PROGRAM, &frags[1])?;
        assert_eq!((verdict, stat), (XDP_PASS, Stat::UplinkPassFragment));
        assert_eq!(out, frags[1]);
        fx.run_each(
            UPLINK_PROGRAM,
            &[frags[0].clone(), frags[2].clone()],
            (XDP_REDIRECT, Stat::UplinkRedirectMasqueradeReply),
            (XDP_REDIRECT, Stat::UplinkRedirectFragment),
        )?;

        // A container's fragment whose first was never translated would leave with the
        // container's own address: dropped, counted.
        let lone = with_ip_id(frags_of_container(0x0b04)[1].clone(), 0x0b04);
        let (verdict, _, stat) = fx.run(CONTAINER_PROGRAM, &lone)?;
        assert_eq!(
            (verdict, stat),
            (TC_ACT_SHOT, Stat::ContainerDropFragmentUntracked)
        );
        Ok(())
    })
}

/// A container's 3,000-byte datagram to the world's port 53, fragmented.
fn frags_of_container(id: u16) -> Vec<Vec<u8>> {
    let datagram = with_ip_id(
        sent_by_container(udp(CONTAINER_IP, 5001, WORLD_IP, 53, 3000)).build(),
        id,
    );
    fragments(&datagram, 1480)
}

#[test]
fn fragmented_replies_of_a_published_port_flow() -> Result<()> {
    let ns = forwarding_namespace()?;
    ns.run(|| -> Result<()> {
        let mut fx = Fixture::new()?;
        let request = udp(WORLD_IP, 40000, NODE_IP, 5353, 10).build();
        let (verdict, _, _) = fx.run(UPLINK_PROGRAM, &request)?;
        assert_eq!(verdict, XDP_REDIRECT);
        let datagram = with_ip_id(
            sent_by_container(udp(CONTAINER_IP, 80, WORLD_IP, 40000, 3000)).build(),
            0x0c01,
        );
        let frags = fragments(&datagram, 1480);
        let outs = fx.run_each(
            CONTAINER_PROGRAM,
            &frags,
            (TC_ACT_REDIRECT, Stat::ContainerRedirectReply),
            (TC_ACT_REDIRECT, Stat::ContainerRedirectFragment),
        )?;
        for out in &outs {
            let o = View(out);
            assert_eq!((o.src(), o.dst()), (NODE_IP, WORLD_IP));
            assert_eq!((o.dst_mac(), o.src_mac()), (WORLD_MAC, UPLINK_MAC));
        }
        let whole = assert_reassembles(&outs, &frags, "published reply");
        assert_eq!((View(&whole).sport(), View(&whole).dport()), (5353, 40000));
        Ok(())
    })
}

/// The checks every translated ICMP error passes: valid outer, quoted-header and ICMP
/// checksums, the TTL down, the type-specific bytes (the MTU) untouched.
fn assert_icmp_error(out: &[u8], input: &[u8], name: &str) {
    assert_eq!(out.len(), input.len(), "{name}");
    assert!(ipv4_checksum_ok(out), "{name}: IPv4 checksum");
    assert!(
        ipv4_checksum_ok(&quoted(out)),
        "{name}: quoted IPv4 checksum"
    );
    assert!(icmp_checksum_ok(out), "{name}: ICMP checksum");
    assert_eq!(View(out).ttl(), View(input).ttl() - 1, "{name}");
    assert_eq!(
        &out[ETH_HLEN + 20..ETH_HLEN + 22],
        &input[ETH_HLEN + 20..ETH_HLEN + 22],
        "{name}: type and code"
    );
    assert_eq!(
        &out[ETH_HLEN + 24..ETH_HLEN + 28],
        &input[ETH_HLEN + 24..ETH_HLEN + 28],
        "{name}: the next-hop MTU"
    );
}

const FRAG_NEEDED_1280: (u8, u8, [u8; 4]) = (3, 4, [0, 0, 0x05, 0x00]);
const PORT_UNREACHABLE: (u8, u8, [u8; 4]) = (3, 3, [0; 4]);
const TTL_EXCEEDED: (u8, u8, [u8; 4]) = (11, 0, [0; 4]);

#[test]
fn icmp_errors_about_published_port_flows() -> Result<()> {
    let ns = forwarding_namespace()?;
    ns.run(|| -> Result<()> {
        let mut fx = Fixture::new()?;
        let (verdict, _, _) = fx.run(UPLINK_PROGRAM, &syn_to(NODE_IP, 8080).build())?;
        assert_eq!(verdict, XDP_REDIRECT);
        // The container's reply as a router saw it: from the published address.
        let reply = Packet {
            tcp_flags: 0x12,
            ttl: 63,
            payload: vec![7; 1400],
            ..Packet::tcp_syn(NODE_IP, 8080, WORLD_IP, 40000)
        }
        .build();
        // A router's "fragmentation needed", quoting 8 bytes (RFC 792) or more (Linux).
        for quote in [8, 20, 60] {
            let name = format!("frag needed quoting {quote} bytes");
            let error = icmp_error(ROUTER_IP, NODE_IP, FRAG_NEEDED_1280, &reply, quote);
            let (verdict, out, stat) = fx.run(UPLINK_PROGRAM, &error)?;
            assert_eq!(
                (verdict, stat),
                (XDP_REDIRECT, Stat::UplinkRedirectIcmpError),
                "{name}"
            );
            assert_icmp_error(&out, &error, &name);
            let (o, q) = (View(&out), quoted(&out));
            assert_eq!((o.src(), o.dst()), (ROUTER_IP, CONTAINER_IP), "{name}");
            assert_eq!(
                (o.dst_mac(), o.src_mac()),
                (CONTAINER_MAC, HOST_VETH_MAC),
                "{name}"
            );
            let q = View(&q);
            assert_eq!(
                (q.src(), q.sport(), q.dst(), q.dport()),
                (CONTAINER_IP, 80, WORLD_IP, 40000),
                "{name}: the quote is the container's own packet"
            );
        }
        // About a flow that does not exist: left to the node's stack.
        let stranger = Packet {
            tcp_flags: 0x12,
            ..Packet::tcp_syn(NODE_IP, 8080, WORLD_IP, 40001)
        }
        .build();
        let error = icmp_error(ROUTER_IP, NODE_IP, FRAG_NEEDED_1280, &stranger, 8);
        let (verdict, out, stat) = fx.run(UPLINK_PROGRAM, &error)?;
        assert_eq!((verdict, stat), (XDP_PASS, Stat::UplinkPassNotTcpUdp));
        assert_eq!(out, error);
        let error = with_ttl(
            icmp_error(ROUTER_IP, NODE_IP, FRAG_NEEDED_1280, &reply, 8),
            1,
        );
        let (verdict, _, stat) = fx.run(UPLINK_PROGRAM, &error)?;
        assert_eq!((verdict, stat), (XDP_DROP, Stat::UplinkDropTtlExpired));

        // The container answers a datagram to a published UDP port with "port
        // unreachable": it leaves from the published address, quoting what the client sent.
        let request = udp(WORLD_IP, 40000, NODE_IP, 5353, 10).build();
        let (verdict, received, _) = fx.run(UPLINK_PROGRAM, &request)?;
        assert_eq!(verdict, XDP_REDIRECT);
        let mut error = icmp_error(CONTAINER_IP, WORLD_IP, PORT_UNREACHABLE, &received, 8);
        error[0..6].copy_from_slice(&HOST_VETH_MAC);
        error[6..12].copy_from_slice(&CONTAINER_MAC);
        let (verdict, out, stat) = fx.run(CONTAINER_PROGRAM, &error)?;
        assert_eq!(
            (verdict, stat),
            (TC_ACT_REDIRECT, Stat::ContainerRedirectIcmpError)
        );
        assert_icmp_error(&out, &error, "port unreachable from the container");
        assert_eq!((View(&out).src(), View(&out).dst()), (NODE_IP, WORLD_IP));
        assert_eq!(View(&out).dst_mac(), WORLD_MAC);
        assert_eq!(
            quoted(&out)[ETH_HLEN + 12..ETH_HLEN + 28],
            request[ETH_HLEN + 12..ETH_HLEN + 28],
            "the quote is what the client sent: addresses, ports, UDP checksum"
        );
        Ok(())
    })
}

#[test]
fn icmp_errors_about_masqueraded_flows() -> Result<()> {
    let ns = forwarding_namespace()?;
    ns.run(|| -> Result<()> {
        let mut fx = Fixture::new()?;
        fx.masquerade_from_one_port()?;
        let original = sent_by_container(udp(CONTAINER_IP, 5000, WORLD_IP, 53, 5)).build();
        let (verdict, sent, _) = fx.run(CONTAINER_PROGRAM, &original)?;
        assert_eq!(verdict, TC_ACT_REDIRECT);
        // The world's "port unreachable" and a router's "fragmentation needed" go back to
        // the container, the quote showing its own packet (UDP checksum included).
        for (name, from, kind) in [
            ("port unreachable", WORLD_IP, PORT_UNREACHABLE),
            ("frag needed", ROUTER_IP, FRAG_NEEDED_1280),
        ] {
            let error = icmp_error(from, NODE_IP, kind, &sent, 8);
            let (verdict, out, stat) = fx.run(UPLINK_PROGRAM, &error)?;
            assert_eq!(
                (verdict, stat),
                (XDP_REDIRECT, Stat::UplinkRedirectIcmpError),
                "{name}"
            );
            assert_icmp_error(&out, &error, name);
            assert_eq!(View(&out).dst(), CONTAINER_IP, "{name}");
            assert_eq!(
                (View(&out).dst_mac(), View(&out).src_mac()),
                (CONTAINER_MAC, HOST_VETH_MAC)
            );
            let q = quoted(&out);
            assert_eq!(
                q[ETH_HLEN + 12..ETH_HLEN + 28],
                original[ETH_HLEN + 12..ETH_HLEN + 28],
                "{name}: addresses, ports and UDP checksum as the container sent them"
            );
        }

        // A masqueraded ping's "time exceeded" (traceroute): the quoted identifier and the
        // quoted echo checksum come back as the container sent them.
        let mut ping = echo_request(CONTAINER_IP, WORLD_IP, 0x7777);
        ping[0..6].copy_from_slice(&HOST_VETH_MAC);
        ping[6..12].copy_from_slice(&CONTAINER_MAC);
        let (verdict, sent, stat) = fx.run(CONTAINER_PROGRAM, &ping)?;
        assert_eq!(
            (verdict, stat),
            (TC_ACT_REDIRECT, Stat::ContainerRedirectMasquerade)
        );
        let error = icmp_error(ROUTER_IP, NODE_IP, TTL_EXCEEDED, &sent, 8);
        let (verdict, out, stat) = fx.run(UPLINK_PROGRAM, &error)?;
        assert_eq!(
            (verdict, stat),
            (XDP_REDIRECT, Stat::UplinkRedirectIcmpError)
        );
        assert_icmp_error(&out, &error, "time exceeded");
        let q = quoted(&out);
        assert_eq!(
            q[ETH_HLEN + 12..ETH_HLEN + 28],
            ping[ETH_HLEN + 12..ETH_HLEN + 28],
            "addresses, identifier and echo checksum as the container sent them"
        );

        // The container's own "port unreachable" about the world's reply leaves from the
        // node's address, quoting what the world sent.
        let world_sent = udp(WORLD_IP, 53, NODE_IP, 61000, 5).build();
        let (verdict, received, _) = fx.run(UPLINK_PROGRAM, &world_sent)?;
        assert_eq!(verdict, XDP_REDIRECT);
        let mut error = icmp_error(CONTAINER_IP, WORLD_IP, PORT_UNREACHABLE, &received, 8);
        error[0..6].copy_from_slice(&HOST_VETH_MAC);
        error[6..12].copy_from_slice(&CONTAINER_MAC);
        let (verdict, out, stat) = fx.run(CONTAINER_PROGRAM, &error)?;
        assert_eq!(
            (verdict, stat),
            (TC_ACT_REDIRECT, Stat::ContainerRedirectIcmpError)
        );
        assert_icmp_error(&out, &error, "port unreachable from the container");
        assert_eq!((View(&out).src(), View(&out).dst()), (NODE_IP, WORLD_IP));
        assert_eq!(
            quoted(&out)[ETH_HLEN + 12..ETH_HLEN + 28],
            world_sent[ETH_HLEN + 12..ETH_HLEN + 28],
        );
        Ok(())
    })
}

#[test]
fn published_port_flood_early_drop_table() -> Result<()> {
    let ns = forwarding_namespace()?;
    ns.run(|| -> Result<()> {
        // Room for two published-port flows.
        let mut fx = Fixture::with_sizes(CONNTRACK_MAX, 2)?;
        let client = |n: u8| Ipv4Addr::new(198, 51, 100, 100 + n);
        let syn_from = |n: u8| Packet::tcp_syn(client(n), 40000, NODE_IP, 8080).build();
        let answer_to = |n: u8| {
            Packet {
                src_mac: CONTAINER_MAC,
                dst_mac: HOST_VETH_MAC,
                tcp_flags: SYN_ACK,
                ..Packet::tcp_syn(CONTAINER_IP, 80, client(n), 40000)
            }
            .build()
        };
        let ack_from = |n: u8| {
            Packet {
                tcp_flags: ACK,
                ..Packet::tcp_syn(client(n), 40000, NODE_IP, 8080)
            }
            .build()
        };
        let flow_of = |n: u8| FlowKey {
            container_ip_be: u32::from(CONTAINER_IP).to_be(),
            remote_ip_be: u32::from(client(n)).to_be(),
            container_port_be: 80u16.to_be(),
            remote_port_be: 40000u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        // The container answers a SYN; only the client's ACK of the answer establishes.
        let handshake = |fx: &mut Fixture, n: u8, acked: bool| -> Result<()> {
            let (verdict, out, stat) = fx.run(CONTAINER_PROGRAM, &answer_to(n))?;
            assert_eq!(verdict, TC_ACT_REDIRECT);
            // The clients' MACs are not known in the test's namespace.
            assert_eq!(stat, Stat::ContainerRedirectReplyNeigh);
            assert_eq!(View(&out).src(), NODE_IP);
            assert_eq!(fx.flow(&flow_of(n)).map(|f| f.state), Some(CT_REPLIED));
            if acked {
                let (verdict, _, _) = fx.run(UPLINK_PROGRAM, &ack_from(n))?;
                assert_eq!(verdict, XDP_REDIRECT);
                assert_eq!(fx.flow(&flow_of(n)).map(|f| f.state), Some(CT_ESTABLISHED));
            }
            Ok(())
        };
        for n in [1, 2] {
            let (verdict, _, stat) = fx.run(UPLINK_PROGRAM, &syn_from(n))?;
            assert_eq!((verdict, stat), (XDP_REDIRECT, Stat::UplinkRedirectDnat));
        }
        // A spoofed source never acknowledges the answer to its SYN; a real client does.
        handshake(&mut fx, 1, false)?;
        handshake(&mut fx, 2, true)?;
        // The half-open flow gives way to the next one.
        let (verdict, _, moved) = fx.run_counting(UPLINK_PROGRAM, &syn_from(3))?;
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(
            moved,
            vec![(Stat::UplinkRedirectDnat, 1), (Stat::FlowEarlyDrop, 1)]
        );
        assert!(fx.flow(&flow_of(1)).is_none(), "the half-open flow went");
        handshake(&mut fx, 3, true)?;
        // Established flows are never evicted: the next SYN is refused.
        let (verdict, _, stat) = fx.run(UPLINK_PROGRAM, &syn_from(4))?;
        assert_eq!((verdict, stat), (XDP_DROP, Stat::UplinkDropFlowTableFull));
        // The live flows carry on both ways.
        for n in [2, 3] {
            let (verdict, _, stat) = fx.run(UPLINK_PROGRAM, &ack_from(n))?;
            assert_eq!((verdict, stat), (XDP_REDIRECT, Stat::UplinkRedirectDnat));
            let (verdict, _, _) = fx.run(CONTAINER_PROGRAM, &answer_to(n))?;
            assert_eq!(verdict, TC_ACT_REDIRECT);
        }
        Ok(())
    })
}

#[test]
fn closing_flows_give_way_table() -> Result<()> {
    let ns = forwarding_namespace()?;
    ns.run(|| -> Result<()> {
        // Room for one flow.
        let mut fx = Fixture::masquerading(2)?;
        let tcp_out = |fx: &mut Fixture, flags: u8| {
            fx.run(
                CONTAINER_PROGRAM,
                &from_container(CONTAINER_IP, 40000, 80, IPPROTO_TCP, flags),
            )
        };
        let udp_out = |fx: &mut Fixture| {
            fx.run_counting(
                CONTAINER_PROGRAM,
                &from_container(CONTAINER_IP, 5001, 53, IPPROTO_UDP, 0),
            )
        };
        tcp_out(&mut fx, SYN)?;
        fx.run(UPLINK_PROGRAM, &from_world(80, 40000, IPPROTO_TCP, SYN_ACK))?;
        tcp_out(&mut fx, ACK)?;
        assert_eq!(fx.states_at(40000)?, [CT_ESTABLISHED; 2]);
        let (verdict, _, moved) = udp_out(&mut fx)?;
        assert_eq!(
            (verdict, moved),
            (TC_ACT_SHOT, vec![(Stat::ContainerDropConntrackFull, 1)]),
            "an established flow is never evicted"
        );
        // Once it closes, a new flow may take its place (the kernel early-drops TCP flows
        // in FIN_WAIT, TIME_WAIT and CLOSE too).
        let (verdict, _, _) = tcp_out(&mut fx, FIN_ACK)?;
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let (verdict, _, moved) = udp_out(&mut fx)?;
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(
            moved,
            vec![
                (Stat::ContainerRedirectMasquerade, 1),
                (Stat::FlowEarlyDrop, 1)
            ]
        );
        assert!(fx.states_at(40000)?.is_empty(), "the closing flow went");
        // The evicted flow's last segments are dropped, not sent out with the container's
        // own address; a reply from a published container port (172.17.0.2:80, to a
        // connection routed to the container's address) still goes out as it is.
        let (verdict, out, stat) = tcp_out(&mut fx, ACK)?;
        assert_eq!((verdict, stat), (TC_ACT_SHOT, Stat::ContainerDropUntracked));
        assert_eq!(View(&out).src(), CONTAINER_IP, "untouched");
        let routed_reply = Packet {
            src_mac: CONTAINER_MAC,
            dst_mac: HOST_VETH_MAC,
            tcp_flags: ACK,
            ..Packet::tcp_syn(CONTAINER_IP, 80, WORLD_IP, 40000)
        }
        .build();
        let (verdict, _, stat) = fx.run(CONTAINER_PROGRAM, &routed_reply)?;
        assert_eq!((verdict, stat), (TC_ACT_OK, Stat::ContainerPassOutside));
        Ok(())
    })
}

/// Every program's verifier complexity stays within half the verifier's limit, so that a
/// change (or a kernel whose verifier explores more) has room before a load fails.
#[test]
fn verified_instructions_stay_under_half_the_verifier_limit() -> Result<()> {
    let mut fx = Fixture::new()?;
    for name in SOCKET_PROGRAMS {
        let program: &mut CgroupSockAddr = fx.ebpf.program_mut(name).unwrap().try_into()?;
        program.load()?;
    }
    let programs = loaded_programs(&fx.ebpf)?;
    assert_eq!(
        programs.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        PROGRAMS
    );
    let mut budget = serde_json::Map::new();
    for program in programs {
        let verified = program
            .verified_instructions
            .with_context(|| format!("{}: the kernel gave no count", program.name))?;
        // Picked up by docs/reliability.md's "verifier budget" row.
        eprintln!(
            "verifier budget: {}: {verified} instructions ({:.1}% of the limit)",
            program.name,
            f64::from(verified) * 100.0 / f64::from(VERIFIER_INSTRUCTION_LIMIT)
        );
        assert!(
            verified <= VERIFIER_INSTRUCTION_LIMIT / 2,
            "{}: {verified} verified instructions",
            program.name
        );
        budget.insert(program.name.clone(), verified.into());
    }
    budget.insert("limit".into(), VERIFIER_INSTRUCTION_LIMIT.into());
    bpfbridge_tests::figures::record("verifier_budget", budget.into())
}

#[path = "dataplane_test_run/malformed.rs"]
mod malformed;

#[path = "dataplane_test_run/ipv6.rs"]
mod ipv6;
#[path = "dataplane_test_run/ipv6_icmp.rs"]
mod ipv6_icmp;
#[path = "dataplane_test_run/ipv6_links.rs"]
mod ipv6_links;
#[path = "dataplane_test_run/ipv6_masquerade.rs"]
mod ipv6_masquerade;
#[path = "dataplane_test_run/layer3.rs"]
mod layer3;
