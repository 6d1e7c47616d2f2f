//! The `iptables` dataplane: the same behaviour as the eBPF fast path, programmed the way
//! Docker 20.10's bridge driver does it (each rule reads as in dockerd's `iptables-save`;
//! the tests below hold them to that), so that the two can be compared. It exists for the
//! benchmark (`cargo xtask bench`) and as a reference behaviour, not as the product.
//!
//! Like dockerd, every rule is one `iptables` process: `-C` to see whether it is there,
//! then `-A`/`-I` (or `-D`). The rules live in the namespace the agent runs in; this module
//! never enters or names another namespace.
//!
//! What it keeps:
//! - the published ports it installed, keyed like the eBPF map (protocol, host address,
//!   host port), read back from `iptables -t nat -S DOCKER` when it starts (and the bridge
//!   of a hairpin-mode port, which its DNAT rule does not name, from its ACCEPT rule in
//!   filter/DOCKER), so that a restarted agent knows what a previous one left;
//! - the rules it installed for each network (FORWARD, isolation, masquerade), to remove
//!   them when the network goes.
//!
//! `stats()` returns the packet and byte counters of the DNAT rules in nat/DOCKER
//! (`iptables -t nat -L DOCKER -v -x -n`), one counter per published port, named
//! `dnat.PROTO.HOSTIP:HOSTPORT`.
//!
//! With the userland proxy (dockerd's default) the DNAT rules carry `! -i BRIDGE`: node-local
//! access through 127.0.0.1 and containers reaching published ports through the node's
//! address go through the userland proxy ([`proxy`], TCP only), one listener per published
//! TCP port, as docker-proxy does. Without it (`--userland-proxy=false`) the rules are
//! Docker's hairpin layout: DNAT from the bridges too, nat/OUTPUT also for 127.0.0.0/8,
//! `route_localnet` on the bridges and a MASQUERADE of the node's own addresses into them;
//! the bridge ports need hairpin mode then, which this backend declares in its
//! capabilities and the agent sets over netlink.
//!
//! It looks nothing up in the kernel: the bridges of endpoints, networks and links come
//! with them. Docker matches the node's addresses with `-m addrtype --dst-type
//! LOCAL` and masquerades per network (`-s SUBNET ! -o BRIDGE -j MASQUERADE`), so this
//! backend is told neither the node's addresses nor a masquerade source.
//!
//! Bridged traffic (container to container) only meets the filter rules with br_netfilter:
//! like dockerd, this dataplane turns on net.bridge.bridge-nf-call-iptables, a per-namespace
//! setting, in the namespace it runs in.
//!
//! Source filters (`bpfbridge filter add`) go to DOCKER-USER, where Docker's documentation
//! puts them: matched on the original destination port of DNATed connections from the
//! uplink, ordered so that the first match is the longest prefix, each tagged with a
//! comment naming its rule id (its hits are the rule's packet counter).

mod proxy;

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr},
    process::{Command, Output, Stdio},
};

use ipnet::IpNet;

use super::{
    Capabilities, Dataplane, DirectAccess, Endpoint, FilterHits, Intended, LinkRule, NetworkPolicy,
    Repaired,
};
use crate::{
    Error, Result,
    model::{
        FilterAction, FilterRecord, PortBinding, Proto, PublishedPort, RepairKind, StatCounter,
    },
};

pub const CHAIN_DOCKER: &str = "DOCKER";
pub const CHAIN_ISOLATION_1: &str = "DOCKER-ISOLATION-STAGE-1";
pub const CHAIN_ISOLATION_2: &str = "DOCKER-ISOLATION-STAGE-2";
pub const CHAIN_USER: &str = "DOCKER-USER";

/// One rule: table, chain and match/target arguments (without `-A CHAIN`), and whether it
/// is an ip6tables rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    pub table: &'static str,
    pub chain: &'static str,
    pub args: Vec<String>,
    pub ipv6: bool,
}

impl Rule {
    fn new(table: &'static str, chain: &'static str, args: &[&str]) -> Self {
        Rule {
            table,
            chain,
            args: args.iter().map(|a| a.to_string()).collect(),
            ipv6: false,
        }
    }

    /// The same rule for ip6tables when `ipv6`.
    fn in_family(mut self, ipv6: bool) -> Self {
        self.ipv6 = ipv6;
        self
    }

    /// The rule as `iptables-save` prints it.
    pub fn save_line(&self) -> String {
        format!("-A {} {}", self.chain, self.args.join(" "))
    }
}

/// Where rules go in their chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Position {
    Append,
    Insert,
}

/// The key of a published port, as in the eBPF map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct PortId {
    proto: Proto,
    host_ip: IpAddr,
    host_port: u16,
}

impl PortId {
    fn of(port: &PortBinding) -> Self {
        PortId {
            proto: port.proto,
            host_ip: port.host_ip,
            host_port: port.host_port,
        }
    }
}

/// Where a published port leads.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mapping {
    container_ip: IpAddr,
    container_port: u16,
    bridge: String,
    host_veth_ifindex: u32,
}

/// Whether published ports are reached from the node and from containers through a
/// userland proxy or through DNAT (Docker's `--userland-proxy=false`, "hairpin mode").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalAccess {
    Proxy,
    Hairpin,
}

/// The DNAT rule of a published port (nat/DOCKER).
pub fn dnat_rule(
    proto: Proto,
    host_ip: IpAddr,
    host_port: u16,
    bridge: &str,
    container_ip: IpAddr,
    container_port: u16,
    access: LocalAccess,
) -> Rule {
    let p = proto.as_str();
    let mut args: Vec<String> = Vec::new();
    if !host_ip.is_unspecified() {
        args.extend(["-d".into(), IpNet::from(host_ip).to_string()]);
    }
    if access == LocalAccess::Proxy {
        args.extend(["!".into(), "-i".into(), bridge.into()]);
    }
    args.extend(
        [
            "-p",
            p,
            "-m",
            p,
            "--dport",
            &host_port.to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            // `[2001:db8::2]:80` for ip6tables.
            &std::net::SocketAddr::new(container_ip, container_port).to_string(),
        ]
        .map(String::from),
    );
    Rule {
        table: "nat",
        chain: CHAIN_DOCKER,
        args,
        ipv6: host_ip.is_ipv6(),
    }
}

/// The filter/DOCKER ACCEPT and nat/POSTROUTING hairpin MASQUERADE rules of a container
/// port (shared by every host port that leads to it).
pub fn target_rules(
    proto: Proto,
    bridge: &str,
    container_ip: IpAddr,
    container_port: u16,
) -> [Rule; 2] {
    let p = proto.as_str();
    let ip = IpNet::from(container_ip).to_string();
    let ipv6 = container_ip.is_ipv6();
    let port = container_port.to_string();
    [
        Rule::new(
            "filter",
            CHAIN_DOCKER,
            &[
                "-d", &ip, "!", "-i", bridge, "-o", bridge, "-p", p, "-m", p, "--dport", &port,
                "-j", "ACCEPT",
            ],
        ),
        Rule::new(
            "nat",
            "POSTROUTING",
            &[
                "-s",
                &ip,
                "-d",
                &ip,
                "-p",
                p,
                "-m",
                p,
                "--dport",
                &port,
                "-j",
                "MASQUERADE",
            ],
        ),
    ]
    .map(|rule| rule.in_family(ipv6))
}

/// Docker 28's raw-table drop of frames to 127.0.0.1 (and ::1) published ports from
/// outside the loopback interface (moby#45610), which its DNAT would otherwise route to the
/// container.
pub fn loopback_filter_rule(proto: Proto, host_ip: IpAddr, host_port: u16) -> Rule {
    let p = proto.as_str();
    Rule::new(
        "raw",
        "PREROUTING",
        &[
            "-d",
            &IpNet::from(host_ip).to_string(),
            "!",
            "-i",
            "lo",
            "-p",
            p,
            "-m",
            p,
            "--dport",
            &host_port.to_string(),
            "-j",
            "DROP",
        ],
    )
    .in_family(host_ip.is_ipv6())
}

/// The raw-table rules that drop direct access to a `nat` network's containers from
/// outside its bridge (Docker 28, moby#49325), for the family whose gateway mode opens
/// nothing, in the order they are inserted (each at the
/// top, so they read: the gateway, the trusted interfaces, the drop). Docker writes them
/// per container address (`-d CONTAINER ! -i BRIDGE -j DROP`); per subnet, with the
/// gateway (a node address) let through, they drop the same frames and change only when
/// the network does.
fn direct_access_rules(policy: &NetworkPolicy, family: &Family) -> Vec<Rule> {
    if policy.internal || family.direct_access != DirectAccess::None {
        return Vec::new();
    }
    let subnet = family.subnet.to_string();
    let mut rules = vec![Rule::new(
        "raw",
        "PREROUTING",
        &["-d", &subnet, "!", "-i", &policy.bridge, "-j", "DROP"],
    )];
    for interface in policy.trusted_interfaces.iter().rev() {
        rules.push(Rule::new(
            "raw",
            "PREROUTING",
            &["-d", &subnet, "-i", interface, "-j", "ACCEPT"],
        ));
    }
    rules.push(Rule::new(
        "raw",
        "PREROUTING",
        &[
            "-d",
            &IpNet::from(family.gateway).to_string(),
            "-j",
            "ACCEPT",
        ],
    ));
    rules
}

/// One address family of a network: what its rules of that family name, and what its
/// gateway mode decides for that family.
struct Family {
    subnet: IpNet,
    gateway: IpAddr,
    masquerade: bool,
    direct_access: DirectAccess,
    ipv6: bool,
}

/// The rules of one bridge network, in the order they are installed, each with its
/// position: its iptables rules (none for an IPv6-only network), then (with `ip6tables`
/// and an IPv6 subnet) the same for ip6tables, as Docker 27 writes them.
fn network_rules(
    policy: &NetworkPolicy,
    access: LocalAccess,
    ip6tables: bool,
) -> Vec<(Rule, Position)> {
    let ipv4 = match (policy.subnet, policy.gateway) {
        (Some(subnet), Some(gateway)) => Some(Family {
            subnet: subnet.into(),
            gateway: gateway.into(),
            masquerade: policy.masquerade,
            direct_access: policy.direct_access,
            ipv6: false,
        }),
        _ => None,
    };
    let ipv6 = match (policy.subnet_ipv6, policy.gateway_ipv6) {
        (Some(subnet), Some(gateway)) if ip6tables => Some(Family {
            subnet: subnet.into(),
            gateway: gateway.into(),
            masquerade: policy.masquerade_ipv6,
            direct_access: policy.direct_access_ipv6,
            ipv6: true,
        }),
        _ => None,
    };
    ipv4.into_iter()
        .chain(ipv6)
        .flat_map(|family| family_rules(policy, &family, access))
        .collect()
}

/// The rules of one family of a network (see [`network_rules`]).
fn family_rules(
    policy: &NetworkPolicy,
    family: &Family,
    access: LocalAccess,
) -> Vec<(Rule, Position)> {
    use Position::*;
    let bridge = policy.bridge.as_str();
    let subnet = family.subnet.to_string();
    let icc = if policy.icc { "ACCEPT" } else { "DROP" };
    let mut rules: Vec<(Rule, Position)> = direct_access_rules(policy, family)
        .into_iter()
        .map(|rule| (rule, Insert))
        .collect();
    if policy.internal {
        rules.push((
            Rule::new(
                "filter",
                "FORWARD",
                &["-i", bridge, "-o", bridge, "-j", icc],
            ),
            Append,
        ));
        rules.push((
            Rule::new(
                "filter",
                CHAIN_ISOLATION_1,
                &["!", "-d", &subnet, "-i", bridge, "-j", "DROP"],
            ),
            Insert,
        ));
        rules.push((
            Rule::new(
                "filter",
                CHAIN_ISOLATION_1,
                &["!", "-s", &subnet, "-o", bridge, "-j", "DROP"],
            ),
            Insert,
        ));
    } else {
        // Inserted in reverse, so that they read in Docker's order.
        for args in [
            &["-i", bridge, "-o", bridge, "-j", icc][..],
            &["-i", bridge, "!", "-o", bridge, "-j", "ACCEPT"],
            &["-o", bridge, "-j", CHAIN_DOCKER],
            &[
                "-o",
                bridge,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
                "-j",
                "ACCEPT",
            ],
        ] {
            rules.push((Rule::new("filter", "FORWARD", args), Insert));
        }
        rules.push((
            Rule::new(
                "filter",
                CHAIN_ISOLATION_1,
                &["-i", bridge, "!", "-o", bridge, "-j", CHAIN_ISOLATION_2],
            ),
            Insert,
        ));
        rules.push((
            Rule::new("filter", CHAIN_ISOLATION_2, &["-o", bridge, "-j", "DROP"]),
            Insert,
        ));
        // Docker 28's FORWARD rules of the gateway modes that open more than the published
        // container ports.
        match family.direct_access {
            // ip6tables' `-p icmp` would match protocol 1, which IPv6 never carries.
            DirectAccess::PublishedAndIcmp => rules.push((
                Rule::new(
                    "filter",
                    CHAIN_DOCKER,
                    &[
                        "-o",
                        bridge,
                        "-p",
                        if family.ipv6 { "ipv6-icmp" } else { "icmp" },
                        "-j",
                        "ACCEPT",
                    ],
                ),
                Append,
            )),
            DirectAccess::Any => rules.push((
                Rule::new(
                    "filter",
                    CHAIN_DOCKER,
                    &["!", "-i", bridge, "-o", bridge, "-j", "ACCEPT"],
                ),
                Append,
            )),
            DirectAccess::None | DirectAccess::Published => {}
        }
        // Without the proxy, containers reach published ports through DNAT too.
        if family.masquerade && access == LocalAccess::Proxy {
            rules.push((
                Rule::new("nat", CHAIN_DOCKER, &["-i", bridge, "-j", "RETURN"]),
                Insert,
            ));
        }
        if family.masquerade {
            rules.push((
                Rule::new(
                    "nat",
                    "POSTROUTING",
                    &["-s", &subnet, "!", "-o", bridge, "-j", "MASQUERADE"],
                ),
                Insert,
            ));
        }
        // The node's connections DNATed into the bridge leave with the gateway's address,
        // so that the answers come back through the node (127.0.0.1 included).
        if access == LocalAccess::Hairpin {
            rules.push((
                Rule::new(
                    "nat",
                    "POSTROUTING",
                    &[
                        "-o",
                        bridge,
                        "-m",
                        "addrtype",
                        "--src-type",
                        "LOCAL",
                        "-j",
                        "MASQUERADE",
                    ],
                ),
                Insert,
            ));
        }
    }
    // Neighbour discovery is ICMPv6, which bridged traffic takes through FORWARD
    // (bridge-nf-call-ip6tables): without these, icc=false would keep the containers from
    // resolving each other's addresses, and --link would open nothing. Inserted last, so
    // that they come before the icc rule.
    if family.ipv6 && !policy.icc {
        for kind in ["neighbour-solicitation", "neighbour-advertisement"] {
            rules.push((
                Rule::new(
                    "filter",
                    "FORWARD",
                    &[
                        "-i",
                        bridge,
                        "-o",
                        bridge,
                        "-p",
                        "ipv6-icmp",
                        "-m",
                        "icmp6",
                        "--icmpv6-type",
                        kind,
                        "-j",
                        "ACCEPT",
                    ],
                ),
                Insert,
            ));
        }
    }
    rules
        .into_iter()
        .map(|(rule, position)| (rule.in_family(family.ipv6), position))
        .collect()
}

/// The DOCKER-USER rule of a source filter. `-s` first and the rest in the order in which
/// `iptables -S` prints them, so that a rule read back compares equal.
fn filter_rule(uplink: &str, record: &FilterRecord) -> Rule {
    let mut args: Vec<String> = Vec::new();
    if record.source.prefix_len() > 0 {
        args.extend(["-s".into(), record.source.to_string()]);
    }
    args.extend(["-i".into(), uplink.into()]);
    if let Some(scope) = record.scope {
        args.extend(["-p".into(), scope.proto.as_str().into()]);
    }
    args.extend(["-m", "conntrack", "--ctstate", "DNAT"].map(String::from));
    if let Some(scope) = record.scope {
        args.extend(["--ctorigdstport".into(), scope.host_port.to_string()]);
    }
    args.extend(
        [
            "--ctdir",
            "ORIGINAL",
            "-m",
            "comment",
            "--comment",
            &filter_comment(record.id),
            "-j",
            match record.action {
                // Not ACCEPT: an allowed connection still meets Docker's own rules.
                FilterAction::Allow => "RETURN",
                FilterAction::Deny => "DROP",
            },
        ]
        .map(String::from),
    );
    Rule {
        table: "filter",
        chain: CHAIN_USER,
        args,
        ipv6: record.source.addr().is_ipv6(),
    }
}

fn filter_comment(id: u32) -> String {
    format!("bpfbridge-filter-{id}")
}

/// The rule id in a line of `iptables -S DOCKER-USER` or `-L DOCKER-USER`.
fn filter_id(line: &str) -> Option<u32> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("bpfbridge-filter-"))?
        .parse()
        .ok()
}

/// Source filters in the order that makes iptables' first match the eBPF dataplane's
/// choice: rules for one published port before rules for every port, longer prefixes
/// first.
fn filter_order(rules: &[FilterRecord]) -> Vec<&FilterRecord> {
    let mut ordered: Vec<&FilterRecord> = rules.iter().collect();
    ordered.sort_by_key(|r| {
        (
            r.scope.is_none(),
            std::cmp::Reverse(r.source.prefix_len()),
            r.id,
        )
    });
    ordered
}

/// The filter/DOCKER pair Docker writes for a `--link` through `icc=false`: the request
/// and its answers.
pub fn link_rules(link: &LinkRule) -> [Rule; 2] {
    let bridge = link.bridge.as_str();
    let p = link.proto.as_str();
    let (from, to, port) = (
        IpNet::from(link.from).to_string(),
        IpNet::from(link.to).to_string(),
        link.port.to_string(),
    );
    let ipv6 = link.from.is_ipv6();
    let rule = |src: &str, dst: &str, dir: &str| {
        Rule::new(
            "filter",
            CHAIN_DOCKER,
            &[
                "-s", src, "-d", dst, "-i", bridge, "-o", bridge, "-p", p, "-m", p, dir, &port,
                "-j", "ACCEPT",
            ],
        )
    };
    [rule(&from, &to, "--dport"), rule(&to, &from, "--sport")].map(|r| r.in_family(ipv6))
}

/// A rule of a DOCKER chain as `iptables -S` prints it, split in words.
struct DockerRule<'a> {
    words: Vec<&'a str>,
}

impl<'a> DockerRule<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"-A") || words.get(1) != Some(&CHAIN_DOCKER) {
            return None;
        }
        Some(DockerRule { words })
    }

    /// The word after the first `flag`.
    fn value(&self, flag: &str) -> Option<&'a str> {
        self.words
            .iter()
            .position(|w| *w == flag)
            .and_then(|i| self.words.get(i + 1).copied())
    }
}

/// Parses a DNAT rule of nat/DOCKER as `iptables -S` prints it.
fn parse_dnat(line: &str) -> Option<(PortId, Mapping)> {
    let rule = DockerRule::parse(line)?;
    let value = |flag: &str| rule.value(flag);
    if value("-j") != Some("DNAT") {
        return None;
    }
    let to: std::net::SocketAddr = value("--to-destination")?.parse().ok()?;
    let host_ip = match value("-d") {
        Some(d) => d.parse::<IpNet>().ok()?.addr(),
        None if to.is_ipv6() => std::net::Ipv6Addr::UNSPECIFIED.into(),
        None => Ipv4Addr::UNSPECIFIED.into(),
    };
    // Hairpin rules name no bridge: the caller finds it in the port's ACCEPT rule.
    let bridge = rule
        .words
        .windows(3)
        .find(|w| w[0] == "!" && w[1] == "-i")
        .map(|w| w[2].to_string())
        .unwrap_or_default();
    let proto = Proto::parse(value("-p")?).ok()?;
    let host_port = value("--dport")?.parse().ok()?;
    Some((
        PortId {
            proto,
            host_ip,
            host_port,
        },
        Mapping {
            container_ip: to.ip(),
            container_port: to.port(),
            bridge,
            host_veth_ifindex: 0,
        },
    ))
}

/// The container address and bridge of a published port's ACCEPT rule in filter/DOCKER, as
/// `iptables -S` prints it (`-A DOCKER -d IP/32 ! -i BR -o BR -p P ... -j ACCEPT`).
fn parse_accept_bridge(line: &str) -> Option<(IpAddr, String)> {
    let rule = DockerRule::parse(line)?;
    let value = |flag: &str| rule.value(flag);
    // Link rules carry `-s` and name the bridge on both sides.
    if value("-j") != Some("ACCEPT") || value("-s").is_some() {
        return None;
    }
    let container_ip = value("-d")?.parse::<IpNet>().ok()?.addr();
    Some((container_ip, value("-o")?.to_string()))
}

/// Docker's base rules, which every other rule hangs off, for iptables or (`ipv6`)
/// ip6tables. IPv6 has no route_localnet: ::1 is never translated, the userland proxy
/// serves it (see [`proxy_listen`]).
fn base_rules(access: LocalAccess, ipv6: bool) -> [Rule; 5] {
    let loopback = if ipv6 { "::1/128" } else { "127.0.0.0/8" };
    let access = if ipv6 { LocalAccess::Proxy } else { access };
    [
        Rule::new(
            "nat",
            "PREROUTING",
            &["-m", "addrtype", "--dst-type", "LOCAL", "-j", CHAIN_DOCKER],
        ),
        // Without the proxy, 127.0.0.1 is translated too.
        match access {
            LocalAccess::Proxy => Rule::new(
                "nat",
                "OUTPUT",
                &[
                    "!",
                    "-d",
                    loopback,
                    "-m",
                    "addrtype",
                    "--dst-type",
                    "LOCAL",
                    "-j",
                    CHAIN_DOCKER,
                ],
            ),
            LocalAccess::Hairpin => Rule::new(
                "nat",
                "OUTPUT",
                &["-m", "addrtype", "--dst-type", "LOCAL", "-j", CHAIN_DOCKER],
            ),
        },
        Rule::new("filter", CHAIN_ISOLATION_1, &["-j", "RETURN"]),
        Rule::new("filter", CHAIN_ISOLATION_2, &["-j", "RETURN"]),
        Rule::new("filter", CHAIN_USER, &["-j", "RETURN"]),
    ]
    .map(|rule| rule.in_family(ipv6))
}

/// Where the userland proxy of a published TCP port listens, if anywhere: with the proxy
/// (dockerd's default), on the port's address, as docker-proxy; without it, IPv6 ports on
/// `::` or `::1` still get one on `[::1]`, which no DNAT can reach (IPv6 has no
/// route_localnet).
fn proxy_listen(access: LocalAccess, id: &PortId) -> Option<std::net::SocketAddr> {
    if id.proto != Proto::Tcp {
        return None;
    }
    match (access, id.host_ip) {
        (LocalAccess::Proxy, ip) => Some(std::net::SocketAddr::new(ip, id.host_port)),
        (LocalAccess::Hairpin, IpAddr::V6(ip)) if ip.is_unspecified() || ip.is_loopback() => Some(
            std::net::SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), id.host_port),
        ),
        (LocalAccess::Hairpin, _) => None,
    }
}

/// Sets a sysctl of the namespace this process runs in.
fn set_sysctl(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(
        std::path::Path::new("/proc/sys").join(key.replace('.', "/")),
        value,
    )
}

/// net.bridge.bridge-nf-call-iptables=1 (with `ipv6` bridge-nf-call-ip6tables) in this
/// namespace, so that bridged traffic meets the FORWARD rules (icc, links, isolation);
/// loads br_netfilter when the setting is absent.
fn bridge_netfilter_on(ipv6: bool) -> Result<()> {
    let key = if ipv6 {
        BRIDGE_NETFILTER6
    } else {
        BRIDGE_NETFILTER
    };
    if set_sysctl(key, "1").is_ok() {
        return Ok(());
    }
    // Built into some kernels; a module on others.
    let _ = run("modprobe", &["br_netfilter"]);
    set_sysctl(key, "1").map_err(Error::io(format!(
        "setting {key} (is br_netfilter available?)"
    )))
}

const BRIDGE_NETFILTER: &str = "net.bridge.bridge-nf-call-iptables";
const BRIDGE_NETFILTER6: &str = "net.bridge.bridge-nf-call-ip6tables";

fn run(program: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(Error::io(format!("running {program}")))?;
    if !out.status.success() {
        return Err(Error::Dataplane {
            context: format!("{program} {}", args.join(" ")),
            source: Box::new(std::io::Error::other(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))),
        });
    }
    Ok(out)
}

pub struct IptablesDataplane {
    /// The iptables binary (`iptables`, i.e. iptables-nft on Debian 12).
    binary: String,
    /// The ip6tables binary, with `--ip6tables` (Docker 27's default); `None`: IPv6 is
    /// left alone, as dockerd with `ip6tables: false`.
    binary6: Option<String>,
    /// The interface the world is behind; source filters match it.
    uplink: String,
    access: LocalAccess,
    ports: BTreeMap<PortId, Mapping>,
    /// The rules installed per network (by its index).
    networks: BTreeMap<u32, Vec<(Rule, Position)>>,
    /// The `--link` rules installed.
    links: Vec<Rule>,
    /// The source filter rules installed, by rule id, in their order in DOCKER-USER (the
    /// IPv4 ones, then the IPv6 ones, each family in its own chain).
    filters: Vec<(u32, Rule)>,
    /// The userland proxies of published TCP ports ([`proxy_listen`]).
    proxies: HashMap<PortId, proxy::Proxy>,
    /// How many invocations of iptables this backend made, for the benchmark.
    invocations: u64,
}

impl IptablesDataplane {
    /// Creates Docker's chains and base rules in this namespace (idempotent), with or
    /// without the userland proxy, for iptables and (with `ip6tables`) ip6tables, and reads
    /// back the published ports and source filters a previous agent left. A node where
    /// ip6tables cannot be set up (no IPv6 in the kernel, no ip6tables binary) gets a
    /// warning and an IPv4-only dataplane, as dockerd goes on without ip6tables.
    pub fn start(uplink: &str, userland_proxy: bool, ip6tables: bool) -> Result<Self> {
        bridge_netfilter_on(false)?;
        let mut dp = IptablesDataplane {
            binary: "iptables".into(),
            binary6: ip6tables.then(|| "ip6tables".into()),
            uplink: uplink.into(),
            access: match userland_proxy {
                true => LocalAccess::Proxy,
                false => LocalAccess::Hairpin,
            },
            ports: BTreeMap::new(),
            networks: BTreeMap::new(),
            links: Vec::new(),
            filters: Vec::new(),
            proxies: HashMap::new(),
            invocations: 0,
        };
        dp.set_up_family(false)?;
        if ip6tables && let Err(e) = bridge_netfilter_on(true).and_then(|()| dp.set_up_family(true))
        {
            tracing::warn!(
                "ip6tables cannot be set up ({e}): IPv6 networks get no ip6tables rules and no IPv6 ports"
            );
            dp.binary6 = None;
        }
        tracing::info!(
            ports = dp.ports.len(),
            ip6tables = dp.binary6.is_some(),
            invocations = dp.invocations,
            "iptables dataplane ready"
        );
        Ok(dp)
    }

    /// Docker's chains, base rules, FORWARD jumps and policy of one family, and what a
    /// previous agent left in it.
    fn set_up_family(&mut self, ipv6: bool) -> Result<()> {
        self.ensure_chain(ipv6, "nat", CHAIN_DOCKER)?;
        for chain in [
            CHAIN_DOCKER,
            CHAIN_ISOLATION_1,
            CHAIN_ISOLATION_2,
            CHAIN_USER,
        ] {
            self.ensure_chain(ipv6, "filter", chain)?;
        }
        for rule in &base_rules(self.access, ipv6) {
            self.add(rule, Position::Append)?;
        }
        self.ensure_forward_jumps(ipv6)?;
        self.ipt(ipv6, &["-P", "FORWARD", "DROP"])?;
        self.read_back(ipv6)
    }

    /// The families this backend programs: IPv4 (false), and IPv6 (true) with ip6tables.
    fn families(&self) -> Vec<bool> {
        let mut families = vec![false];
        if self.binary6.is_some() {
            families.push(true);
        }
        families
    }

    /// The published ports and source filters of one family a previous agent left.
    fn read_back(&mut self, ipv6: bool) -> Result<()> {
        let out = self.ipt(ipv6, &["-t", "nat", "-S", CHAIN_DOCKER])?;
        let mut ports: BTreeMap<PortId, Mapping> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(parse_dnat)
            .collect();
        if ports.values().any(|m| m.bridge.is_empty()) {
            let out = self.ipt(ipv6, &["-t", "filter", "-S", CHAIN_DOCKER])?;
            let bridges: HashMap<IpAddr, String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(parse_accept_bridge)
                .collect();
            for mapping in ports.values_mut().filter(|m| m.bridge.is_empty()) {
                if let Some(bridge) = bridges.get(&mapping.container_ip) {
                    mapping.bridge = bridge.clone();
                }
            }
        }
        self.ports.extend(ports);
        let out = self.ipt(ipv6, &["-S", CHAIN_USER])?;
        let filters: Vec<(u32, Rule)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let args = line.strip_prefix(&format!("-A {CHAIN_USER} "))?;
                Some((
                    filter_id(args)?,
                    Rule {
                        table: "filter",
                        chain: CHAIN_USER,
                        args: args.split_whitespace().map(String::from).collect(),
                        ipv6,
                    },
                ))
            })
            .collect();
        self.filters.extend(filters);
        Ok(())
    }

    /// The binary of a family.
    fn binary_of(&self, ipv6: bool) -> &str {
        match (ipv6, &self.binary6) {
            (true, Some(binary6)) => binary6,
            _ => &self.binary,
        }
    }

    fn ipt(&mut self, ipv6: bool, args: &[&str]) -> Result<Output> {
        self.invocations += 1;
        let mut full = vec!["-w"];
        full.extend_from_slice(args);
        run(self.binary_of(ipv6), &full)
    }

    /// `iptables -t TABLE -C CHAIN ARGS` succeeds.
    fn exists(&mut self, rule: &Rule) -> bool {
        self.invocations += 1;
        Command::new(self.binary_of(rule.ipv6))
            .args(["-w", "-t", rule.table, "-C", rule.chain])
            .args(&rule.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn with_rule(&mut self, op: &str, rule: &Rule) -> Result<()> {
        let mut args = vec!["-t", rule.table, op, rule.chain];
        args.extend(rule.args.iter().map(String::as_str));
        self.ipt(rule.ipv6, &args).map(drop)
    }

    /// Adds `rule` unless it is there, as dockerd does (`-C`, then `-A` or `-I`).
    fn add(&mut self, rule: &Rule, position: Position) -> Result<()> {
        if self.exists(rule) {
            return Ok(());
        }
        match position {
            Position::Append => self.with_rule("-A", rule),
            Position::Insert => self.with_rule("-I", rule),
        }
    }

    /// Removes `rule` if it is there (`-C`, then `-D`).
    fn remove(&mut self, rule: &Rule) -> Result<()> {
        if !self.exists(rule) {
            return Ok(());
        }
        self.with_rule("-D", rule)
    }

    fn ensure_chain(&mut self, ipv6: bool, table: &str, chain: &str) -> Result<()> {
        if self.ipt(ipv6, &["-t", table, "-S", chain]).is_ok() {
            return Ok(());
        }
        self.ipt(ipv6, &["-t", table, "-N", chain]).map(drop)
    }

    /// FORWARD starts with `-j DOCKER-USER`, then `-j DOCKER-ISOLATION-STAGE-1`: dockerd
    /// deletes and re-inserts both whenever it adds a network.
    fn ensure_forward_jumps(&mut self, ipv6: bool) -> Result<()> {
        for chain in [CHAIN_ISOLATION_1, CHAIN_USER] {
            let jump = Rule::new("filter", "FORWARD", &["-j", chain]).in_family(ipv6);
            self.remove(&jump)?;
            self.with_rule("-I", &jump)?;
        }
        Ok(())
    }

    /// Starts the userland proxy of a TCP port, if it has one ([`proxy_listen`]), unless
    /// it runs.
    fn ensure_proxy(&mut self, id: PortId, mapping: &Mapping) -> Result<()> {
        let Some(listen) = proxy_listen(self.access, &id) else {
            return Ok(());
        };
        if self.proxies.contains_key(&id) {
            return Ok(());
        }
        let target = std::net::SocketAddr::new(mapping.container_ip, mapping.container_port);
        let proxy = proxy::Proxy::start(listen, target).map_err(|e| {
            Error::Conflict(format!("userland proxy: cannot listen on {listen}: {e}"))
        })?;
        self.proxies.insert(id, proxy);
        Ok(())
    }

    /// The nat/DOCKER rule of one published port.
    fn dnat(&self, id: PortId, mapping: &Mapping) -> Rule {
        dnat_rule(
            id.proto,
            id.host_ip,
            id.host_port,
            &mapping.bridge,
            mapping.container_ip,
            mapping.container_port,
            self.access,
        )
    }

    fn install(&mut self, id: PortId, mapping: Mapping) -> Result<()> {
        if let Some(old) = self.ports.get(&id) {
            if *old == mapping {
                return self.ensure_proxy(id, &mapping);
            }
            self.uninstall(id)?;
        }
        // The proxy first: like dockerd, a port the node already uses is refused before any
        // rule is written.
        self.ensure_proxy(id, &mapping)?;
        if id.host_ip.is_loopback() {
            self.add(
                &loopback_filter_rule(id.proto, id.host_ip, id.host_port),
                Position::Insert,
            )?;
        }
        self.add(&self.dnat(id, &mapping), Position::Append)?;
        for rule in target_rules(
            id.proto,
            &mapping.bridge,
            mapping.container_ip,
            mapping.container_port,
        ) {
            self.add(&rule, Position::Append)?;
        }
        self.ports.insert(id, mapping);
        Ok(())
    }

    /// Removes a port's rules, trying every one; the ACCEPT and hairpin rules stay while
    /// another host port leads to the same container port.
    fn uninstall(&mut self, id: PortId) -> Result<()> {
        self.proxies.remove(&id);
        let Some(mapping) = self.ports.remove(&id) else {
            return Ok(());
        };
        let mut errors = Vec::new();
        if let Err(e) = self.remove(&self.dnat(id, &mapping)) {
            errors.push(e);
        }
        if id.host_ip.is_loopback()
            && let Err(e) = self.remove(&loopback_filter_rule(id.proto, id.host_ip, id.host_port))
        {
            errors.push(e);
        }
        let shared = self.ports.iter().any(|(other, m)| {
            other.proto == id.proto
                && m.container_ip == mapping.container_ip
                && m.container_port == mapping.container_port
        });
        if !shared {
            for rule in target_rules(
                id.proto,
                &mapping.bridge,
                mapping.container_ip,
                mapping.container_port,
            ) {
                if let Err(e) = self.remove(&rule) {
                    errors.push(e);
                }
            }
        }
        Error::collect(errors)
    }

    /// Where `port` leads: the container's address of the port's family.
    fn mapping(endpoint: &Endpoint, port: &PortBinding) -> Result<Mapping> {
        let missing = |family: &str| {
            Error::InvalidArgument(format!(
                "port {}: the container has no {family} address",
                std::net::SocketAddr::new(port.host_ip, port.host_port)
            ))
        };
        let container_ip = match port.host_ip {
            IpAddr::V4(_) => endpoint
                .container_ip
                .map(IpAddr::V4)
                .ok_or_else(|| missing("IPv4"))?,
            IpAddr::V6(_) => endpoint
                .container_ipv6
                .map(IpAddr::V6)
                .ok_or_else(|| missing("IPv6"))?,
        };
        Ok(Mapping {
            container_ip,
            container_port: port.container_port,
            bridge: endpoint.bridge.clone(),
            host_veth_ifindex: endpoint.host_veth_ifindex,
        })
    }

    /// How many times this backend ran iptables.
    pub fn invocations(&self) -> u64 {
        self.invocations
    }
}

impl Dataplane for IptablesDataplane {
    fn name(&self) -> &'static str {
        "iptables"
    }

    /// Hairpin ports without the userland proxy: a container reaching its own published
    /// port is DNATed back out of the bridge port it came in by, as with dockerd.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            hairpin_ports: self.access == LocalAccess::Hairpin,
            network_policy: true,
            links: true,
            source_filters: true,
            ipv6: self.binary6.is_some(),
            ..Capabilities::default()
        }
    }

    /// Removes whatever ports still lead to the container, trying every one.
    fn detach_endpoint(&mut self, endpoint: &Endpoint) -> Result<()> {
        let ids: Vec<PortId> = self
            .ports
            .iter()
            .filter(|(_, m)| {
                endpoint.container_ip.map(IpAddr::V4) == Some(m.container_ip)
                    || endpoint.container_ipv6.map(IpAddr::V6) == Some(m.container_ip)
            })
            .map(|(id, _)| *id)
            .collect();
        let errors = ids
            .into_iter()
            .filter_map(|id| self.uninstall(id).err())
            .collect();
        Error::collect(errors)
    }

    fn publish(&mut self, endpoint: &Endpoint, port: &PortBinding) -> Result<()> {
        self.install(PortId::of(port), Self::mapping(endpoint, port)?)
    }

    fn unpublish(&mut self, port: &PortBinding) -> Result<()> {
        self.uninstall(PortId::of(port))
    }

    fn sync_published(&mut self, wanted: &[(Endpoint, PortBinding)]) -> Result<()> {
        let mut want: HashMap<PortId, Mapping> = HashMap::new();
        for (endpoint, port) in wanted {
            want.insert(PortId::of(port), Self::mapping(endpoint, port)?);
        }
        let mut errors = Vec::new();
        let installed: Vec<(PortId, Mapping)> =
            self.ports.iter().map(|(i, m)| (*i, m.clone())).collect();
        for (id, mapping) in installed {
            let keep = want.get(&id).is_some_and(|w| {
                w.container_ip == mapping.container_ip
                    && w.container_port == mapping.container_port
                    && w.bridge == mapping.bridge
            });
            if !keep && let Err(e) = self.uninstall(id) {
                errors.push(e);
            }
        }
        for (id, mapping) in want {
            match self.ports.get_mut(&id) {
                // Read back from iptables, which does not know the veth's index; the
                // previous agent's proxy ended with it.
                Some(m) => {
                    m.host_veth_ifindex = mapping.host_veth_ifindex;
                    if let Err(e) = self.ensure_proxy(id, &mapping) {
                        tracing::warn!("{e}");
                    }
                }
                None => {
                    if let Err(e) = self.install(id, mapping) {
                        errors.push(e);
                    }
                }
            }
        }
        Error::collect(errors)
    }

    fn published(&self) -> Result<Vec<PublishedPort>> {
        let mut out: Vec<PublishedPort> = self
            .ports
            .iter()
            .map(|(id, m)| PublishedPort {
                host_ip: id.host_ip,
                host_port: id.host_port,
                proto: id.proto.as_str().into(),
                container_ip: m.container_ip,
                container_port: m.container_port,
                host_veth_ifindex: m.host_veth_ifindex,
            })
            .collect();
        out.sort_by_key(|p| (p.host_port, p.host_ip));
        Ok(out)
    }

    /// The counters of the DNAT rules, `dnat.PROTO.HOSTIP:HOSTPORT` (`[HOSTIP]` for IPv6).
    fn stats(&self) -> Result<Vec<StatCounter>> {
        let mut counters = Vec::new();
        for ipv6 in self.families() {
            let out = run(
                self.binary_of(ipv6),
                &["-w", "-t", "nat", "-L", CHAIN_DOCKER, "-v", "-x", "-n"],
            )?;
            let text = String::from_utf8_lossy(&out.stdout);
            counters.extend(text.lines().filter_map(parse_counter));
        }
        Ok(counters)
    }

    /// Docker's ACCEPT pairs in filter/DOCKER (bridged traffic meets them through
    /// br_netfilter).
    fn set_links(&mut self, links: &[LinkRule]) -> Result<()> {
        let mut wanted: Vec<Rule> = Vec::new();
        for link in links {
            for rule in link_rules(link) {
                if !wanted.contains(&rule) {
                    wanted.push(rule);
                }
            }
        }
        let mut errors = Vec::new();
        for rule in std::mem::take(&mut self.links) {
            if !wanted.contains(&rule)
                && let Err(e) = self.remove(&rule)
            {
                errors.push(e);
                self.links.push(rule);
            }
        }
        for rule in wanted {
            if self.links.contains(&rule) {
                continue;
            }
            match self.add(&rule, Position::Append) {
                Ok(()) => self.links.push(rule),
                Err(e) => errors.push(e),
            }
        }
        Error::collect(errors)
    }

    fn set_networks(&mut self, networks: &[NetworkPolicy]) -> Result<()> {
        let mut errors = Vec::new();
        let gone: Vec<u32> = self
            .networks
            .keys()
            .filter(|i| !networks.iter().any(|n| n.index == **i))
            .copied()
            .collect();
        for index in gone {
            let rules = self.networks.remove(&index).unwrap_or_default();
            for (rule, _) in rules.iter().rev() {
                if let Err(e) = self.remove(rule) {
                    errors.push(e);
                }
            }
        }
        let mut added = false;
        for policy in networks {
            let bridge = &policy.bridge;
            let rules = network_rules(policy, self.access, self.binary6.is_some());
            if self.networks.get(&policy.index) == Some(&rules) {
                continue;
            }
            // Docker's hairpin mode: 127.0.0.1 may be routed into the bridge.
            if self.access == LocalAccess::Hairpin
                && let Err(e) = set_sysctl(&format!("net.ipv4.conf.{bridge}.route_localnet"), "1")
            {
                errors.push(Error::io(format!("route_localnet on {bridge}"))(e));
            }
            if let Some(old) = self.networks.remove(&policy.index) {
                for (rule, _) in old.iter().rev() {
                    if !rules.iter().any(|(r, _)| r == rule)
                        && let Err(e) = self.remove(rule)
                    {
                        errors.push(e);
                    }
                }
            }
            let mut ok = true;
            for (rule, position) in &rules {
                if let Err(e) = self.add(rule, *position) {
                    errors.push(e);
                    ok = false;
                }
            }
            if ok {
                self.networks.insert(policy.index, rules);
            }
            added = true;
        }
        if added {
            for ipv6 in self.families() {
                if let Err(e) = self.ensure_forward_jumps(ipv6) {
                    errors.push(e);
                }
            }
        }
        Error::collect(errors)
    }

    /// Removes the rules no longer wanted, then inserts the new ones at their place in the
    /// order, so that kept rules keep their counters.
    /// Each family's rules go to its own DOCKER-USER chain.
    fn set_filters(&mut self, rules: &[FilterRecord]) -> Result<()> {
        let mut errors = Vec::new();
        let previous = std::mem::take(&mut self.filters);
        for ipv6 in self.families() {
            let wanted: Vec<(u32, Rule)> = filter_order(rules)
                .into_iter()
                .filter(|r| r.source.addr().is_ipv6() == ipv6)
                .map(|r| (r.id, filter_rule(&self.uplink, r)))
                .collect();
            let installed: Vec<(u32, Rule)> = previous
                .iter()
                .filter(|(_, rule)| rule.ipv6 == ipv6)
                .cloned()
                .collect();
            let kept = self.sync_filters_of(ipv6, installed, wanted, &mut errors);
            self.filters.extend(kept);
        }
        Error::collect(errors)
    }

    /// The counters of the rule's DOCKER-USER entry.
    fn filter_hits(&self, rule_id: u32) -> Result<FilterHits> {
        for ipv6 in self.families() {
            let out = run(
                self.binary_of(ipv6),
                &["-w", "-L", CHAIN_USER, "-v", "-x", "-n"],
            )?;
            let text = String::from_utf8_lossy(&out.stdout);
            let counters = text
                .lines()
                .find(|line| filter_id(line) == Some(rule_id))
                .and_then(|line| {
                    let mut words = line.split_whitespace();
                    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
                });
            if let Some((packets, bytes)) = counters {
                return Ok(FilterHits { packets, bytes });
            }
        }
        Ok(FilterHits::default())
    }

    fn repair(&mut self, intended: &Intended, repaired: &mut Vec<Repaired>) -> Result<()> {
        let sysctls = self.repair_sysctls(intended.networks, repaired);
        let rules = self.repair_rules(repaired);
        sysctls.and(rules)
    }
}

/// Drift repair ([`Dataplane::repair`]): Docker's rules and settings, as this backend
/// installed them, put back when someone removed them (`iptables -F DOCKER`). dockerd does
/// not do this; it rewrites its rules only when it restarts.
impl IptablesDataplane {
    /// Makes one family's DOCKER-USER hold `wanted` in order: removes the rules of
    /// `installed` no longer wanted, then inserts the new ones at their place, so that kept
    /// rules keep their counters. Returns what is installed.
    fn sync_filters_of(
        &mut self,
        ipv6: bool,
        installed: Vec<(u32, Rule)>,
        wanted: Vec<(u32, Rule)>,
        errors: &mut Vec<Error>,
    ) -> Vec<(u32, Rule)> {
        let mut kept = Vec::new();
        for entry in installed {
            if wanted.contains(&entry) {
                kept.push(entry);
            } else if let Err(e) = self.remove(&entry.1) {
                errors.push(e);
                kept.push(entry);
            }
        }
        for (place, entry) in wanted.into_iter().enumerate() {
            if kept.contains(&entry) {
                continue;
            }
            let position = (place + 1).to_string();
            let mut args = vec!["-I", CHAIN_USER, position.as_str()];
            args.extend(entry.1.args.iter().map(String::as_str));
            match self.ipt(ipv6, &args) {
                Ok(_) => kept.insert(place.min(kept.len()), entry),
                Err(e) => errors.push(e),
            }
        }
        kept
    }

    /// The rules this backend installed, in the order it installs them, each with its
    /// position; the source filters and the FORWARD jumps, which keep an order of their
    /// own, apart.
    fn installed_rules(&self) -> Vec<(Rule, Position)> {
        let mut rules: Vec<(Rule, Position)> = self
            .families()
            .into_iter()
            .flat_map(|ipv6| base_rules(self.access, ipv6))
            .map(|r| (r, Position::Append))
            .collect();
        rules.extend(self.networks.values().flatten().cloned());
        for (id, mapping) in &self.ports {
            rules.push((self.dnat(*id, mapping), Position::Append));
            for rule in target_rules(
                id.proto,
                &mapping.bridge,
                mapping.container_ip,
                mapping.container_port,
            ) {
                if !rules.iter().any(|(r, _)| *r == rule) {
                    rules.push((rule, Position::Append));
                }
            }
        }
        rules.extend(self.links.iter().map(|r| (r.clone(), Position::Append)));
        rules
    }

    /// `iptables -t TABLE -S` (ip6tables with `ipv6`), one line a rule or chain.
    fn listing(&mut self, ipv6: bool, table: &str) -> Result<Vec<String>> {
        let out = self.ipt(ipv6, &["-t", table, "-S"])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// Whether `rule` is gone: not in its table's listing of its family, and (should the
    /// listing spell it otherwise) not found by `iptables -C` either.
    fn is_gone(&mut self, rule: &Rule, listings: &Listings) -> bool {
        !listings.of(rule).contains(&rule.save_line()) && !self.exists(rule)
    }

    fn repair_rules(&mut self, repaired: &mut Vec<Repaired>) -> Result<()> {
        let mut listings = Listings::default();
        for ipv6 in self.families() {
            for table in ["nat", "filter", "raw"] {
                let listing = self.listing(ipv6, table)?;
                listings.tables.insert((ipv6, table), listing);
            }
        }
        let mut restored = Vec::new();
        for ipv6 in self.families() {
            let chains = [("nat", CHAIN_DOCKER)].into_iter().chain(
                [
                    CHAIN_DOCKER,
                    CHAIN_ISOLATION_1,
                    CHAIN_ISOLATION_2,
                    CHAIN_USER,
                ]
                .map(|chain| ("filter", chain)),
            );
            for (table, chain) in chains {
                let there = listings
                    .tables
                    .get(&(ipv6, table))
                    .is_some_and(|l| l.contains(&format!("-N {chain}")));
                if !there {
                    self.ensure_chain(ipv6, table, chain)?;
                }
            }
        }
        for (rule, position) in self.installed_rules() {
            if self.is_gone(&rule, &listings) {
                self.add(&rule, position)?;
                restored.push(rule);
            }
        }
        // Filters go back at their place in their family's DOCKER-USER: the ones before
        // them are there.
        for ipv6 in self.families() {
            let family: Vec<Rule> = self
                .filters
                .iter()
                .filter(|(_, rule)| rule.ipv6 == ipv6)
                .map(|(_, rule)| rule.clone())
                .collect();
            for (place, rule) in family.into_iter().enumerate() {
                if self.is_gone(&rule, &listings) {
                    let position = (place + 1).to_string();
                    let mut args = vec!["-I", CHAIN_USER, position.as_str()];
                    args.extend(rule.args.iter().map(String::as_str));
                    self.ipt(ipv6, &args)?;
                    restored.push(rule);
                }
            }
        }
        // The jumps to DOCKER-USER and the isolation come first in FORWARD, before any
        // rule put back there.
        for ipv6 in self.families() {
            let jumps = [CHAIN_ISOLATION_1, CHAIN_USER]
                .map(|c| Rule::new("filter", "FORWARD", &["-j", c]).in_family(ipv6));
            let jumps_gone: Vec<Rule> = jumps
                .into_iter()
                .filter(|jump| self.is_gone(jump, &listings))
                .collect();
            if !jumps_gone.is_empty()
                || restored
                    .iter()
                    .any(|r| r.chain == "FORWARD" && r.ipv6 == ipv6)
            {
                self.ensure_forward_jumps(ipv6)?;
                restored.extend(jumps_gone);
            }
        }
        repaired.extend(restored.into_iter().map(|rule| Repaired {
            kind: RepairKind::IptablesRuleRestored,
            what: format!(
                "{}{} {}",
                if rule.ipv6 { "ip6tables " } else { "" },
                rule.table,
                rule.save_line()
            ),
        }));
        Ok(())
    }

    /// bridge-nf-call-iptables (and -ip6tables with ip6tables), and each bridge's
    /// route_localnet in hairpin mode.
    fn repair_sysctls(
        &mut self,
        networks: &[NetworkPolicy],
        repaired: &mut Vec<Repaired>,
    ) -> Result<()> {
        for ipv6 in self.families() {
            let key = if ipv6 {
                BRIDGE_NETFILTER6
            } else {
                BRIDGE_NETFILTER
            };
            if sysctl(key).as_deref() != Some("1") {
                bridge_netfilter_on(ipv6)?;
                repaired.push(Repaired {
                    kind: RepairKind::SysctlRestored,
                    what: key.into(),
                });
            }
        }
        if self.access != LocalAccess::Hairpin {
            return Ok(());
        }
        for network in networks {
            let key = format!("net.ipv4.conf.{}.route_localnet", network.bridge);
            // A bridge that is gone is the service's to make again.
            if sysctl(&key).is_some_and(|v| v != "1") {
                set_sysctl(&key, "1").map_err(Error::io(format!("setting {key}")))?;
                repaired.push(Repaired {
                    kind: RepairKind::SysctlRestored,
                    what: key,
                });
            }
        }
        Ok(())
    }
}

/// `iptables -S` of each family and table, read once for a repair pass.
#[derive(Default)]
struct Listings {
    tables: BTreeMap<(bool, &'static str), Vec<String>>,
}

impl Listings {
    /// The listing of `rule`'s family and table.
    fn of(&self, rule: &Rule) -> &[String] {
        self.tables
            .get(&(rule.ipv6, rule.table))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// A sysctl of this process's namespace; `None` when it does not exist.
fn sysctl(key: &str) -> Option<String> {
    std::fs::read_to_string(std::path::Path::new("/proc/sys").join(key.replace('.', "/")))
        .ok()
        .map(|v| v.trim().to_string())
}

/// One line of `iptables -t nat -L DOCKER -v -x -n` for a DNAT rule:
/// `pkts bytes DNAT tcp -- !br0 * 0.0.0.0/0 0.0.0.0/0 tcp dpt:8080 to:172.17.0.2:80`.
fn parse_counter(line: &str) -> Option<StatCounter> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.get(2) != Some(&"DNAT") {
        return None;
    }
    let packets = words[0].parse().ok()?;
    let bytes = words.get(1)?.parse().ok()?;
    // `-n` prints protocols by number.
    let proto = match *words.get(3)? {
        "6" => "tcp",
        "17" => "udp",
        other => other,
    };
    // The destination is the word before the protocol match (`tcp dpt:8080`): ip6tables
    // prints no `opt` column.
    let at = words.iter().position(|w| w.starts_with("dpt:"))?;
    let port: u16 = words[at].strip_prefix("dpt:")?.parse().ok()?;
    let dst: IpAddr = words.get(at.checked_sub(2)?)?.parse::<IpNet>().ok()?.addr();
    Some(StatCounter {
        name: format!("dnat.{proto}.{}", std::net::SocketAddr::new(dst, port)),
        packets,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `-p 8080:80` of a container at 172.17.0.2 on docker0.
    fn web_dnat(access: LocalAccess) -> Rule {
        dnat_rule(
            Proto::Tcp,
            Ipv4Addr::UNSPECIFIED.into(),
            8080,
            "docker0",
            "172.17.0.2".parse().unwrap(),
            80,
            access,
        )
    }

    /// The default bridge network as dockerd sets it up.
    fn default_bridge() -> NetworkPolicy {
        NetworkPolicy {
            index: 1,
            bridge: "docker0".into(),
            subnet: Some("172.17.0.0/16".parse().unwrap()),
            icc: true,
            internal: false,
            masquerade: true,
            gateway: Some("172.17.0.1".parse().unwrap()),
            direct_access: DirectAccess::None,
            trusted_interfaces: Vec::new(),
            subnet_ipv6: None,
            gateway_ipv6: None,
            masquerade_ipv6: false,
            direct_access_ipv6: DirectAccess::None,
        }
    }

    /// Docker 28's raw-table rules, and the FORWARD rules of the gateway modes.
    #[test]
    fn direct_access_follows_docker_28() {
        let lines = |policy: &NetworkPolicy| -> Vec<String> {
            network_rules(policy, LocalAccess::Proxy, true)
                .iter()
                .filter(|(r, _)| r.table == "raw" || r.args.contains(&"icmp".to_string()))
                .map(|(r, position)| {
                    assert_eq!(
                        *position,
                        if r.table == "raw" {
                            Position::Insert
                        } else {
                            Position::Append
                        }
                    );
                    r.save_line()
                })
                .collect()
        };
        let nat = NetworkPolicy {
            trusted_interfaces: vec!["eth3".into(), "vxlan.1".into()],
            ..default_bridge()
        };
        // Inserted each at the top: they read in the reverse order.
        assert_eq!(
            lines(&nat),
            [
                "-A PREROUTING -d 172.17.0.0/16 ! -i docker0 -j DROP",
                "-A PREROUTING -d 172.17.0.0/16 -i vxlan.1 -j ACCEPT",
                "-A PREROUTING -d 172.17.0.0/16 -i eth3 -j ACCEPT",
                "-A PREROUTING -d 172.17.0.1/32 -j ACCEPT",
            ]
        );
        for open in [DirectAccess::Published, DirectAccess::Any] {
            let policy = NetworkPolicy {
                direct_access: open,
                ..default_bridge()
            };
            assert!(lines(&policy).is_empty(), "{open:?}");
        }
        let routed = NetworkPolicy {
            direct_access: DirectAccess::PublishedAndIcmp,
            masquerade: false,
            ..default_bridge()
        };
        assert_eq!(lines(&routed), ["-A DOCKER -o docker0 -p icmp -j ACCEPT"]);
        let routed_dual_stack = NetworkPolicy {
            subnet_ipv6: Some("fd00:1::/64".parse().unwrap()),
            gateway_ipv6: Some("fd00:1::1".parse().unwrap()),
            direct_access_ipv6: DirectAccess::PublishedAndIcmp,
            ..routed
        };
        let icmp: Vec<String> = network_rules(&routed_dual_stack, LocalAccess::Proxy, true)
            .iter()
            .filter(|(r, _)| r.args.iter().any(|a| a.contains("icmp")))
            .map(|(r, _)| {
                format!(
                    "{} {}",
                    if r.ipv6 { "ip6tables" } else { "iptables" },
                    r.save_line()
                )
            })
            .collect();
        assert_eq!(
            icmp,
            [
                "iptables -A DOCKER -o docker0 -p icmp -j ACCEPT",
                "ip6tables -A DOCKER -o docker0 -p ipv6-icmp -j ACCEPT"
            ]
        );
        let internal = NetworkPolicy {
            internal: true,
            ..default_bridge()
        };
        assert!(lines(&internal).is_empty());
        assert_eq!(
            loopback_filter_rule(Proto::Tcp, Ipv4Addr::LOCALHOST.into(), 8080).save_line(),
            "-A PREROUTING -d 127.0.0.1/32 ! -i lo -p tcp -m tcp --dport 8080 -j DROP"
        );
    }

    /// Each family's rules follow that family's gateway mode (Docker 28): `nat` IPv4 with
    /// `routed` IPv6 drops direct IPv4 and lets ICMPv6 through, and the reverse.
    #[test]
    fn each_family_follows_its_own_gateway_mode() {
        let lines = |policy: &NetworkPolicy| -> Vec<String> {
            network_rules(policy, LocalAccess::Proxy, true)
                .iter()
                .filter(|(r, _)| {
                    r.table == "raw"
                        || r.args
                            .iter()
                            .any(|a| a.contains("icmp") || a == "MASQUERADE")
                })
                .filter(|(r, _)| !r.args.contains(&"--src-type".to_string()))
                .map(|(r, _)| {
                    let tool = if r.ipv6 { "ip6tables" } else { "iptables" };
                    format!("{tool} -t {} {}", r.table, r.save_line())
                })
                .collect()
        };
        let nat4_routed6 = NetworkPolicy {
            subnet_ipv6: Some("fd00:1::/64".parse().unwrap()),
            gateway_ipv6: Some("fd00:1::1".parse().unwrap()),
            masquerade_ipv6: false,
            direct_access_ipv6: DirectAccess::PublishedAndIcmp,
            ..default_bridge()
        };
        assert_eq!(
            lines(&nat4_routed6),
            [
                "iptables -t raw -A PREROUTING -d 172.17.0.0/16 ! -i docker0 -j DROP",
                "iptables -t raw -A PREROUTING -d 172.17.0.1/32 -j ACCEPT",
                "iptables -t nat -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
                "ip6tables -t filter -A DOCKER -o docker0 -p ipv6-icmp -j ACCEPT",
            ]
        );
        let routed4_nat6 = NetworkPolicy {
            masquerade: false,
            direct_access: DirectAccess::PublishedAndIcmp,
            masquerade_ipv6: true,
            direct_access_ipv6: DirectAccess::None,
            ..nat4_routed6
        };
        assert_eq!(
            lines(&routed4_nat6),
            [
                "iptables -t filter -A DOCKER -o docker0 -p icmp -j ACCEPT",
                "ip6tables -t raw -A PREROUTING -d fd00:1::/64 ! -i docker0 -j DROP",
                "ip6tables -t raw -A PREROUTING -d fd00:1::1/128 -j ACCEPT",
                "ip6tables -t nat -A POSTROUTING -s fd00:1::/64 ! -o docker0 -j MASQUERADE",
            ]
        );
    }

    #[test]
    fn rules_read_like_dockers() {
        let dnat = web_dnat(LocalAccess::Proxy);
        assert_eq!(
            dnat.save_line(),
            "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80"
        );
        let local = dnat_rule(
            Proto::Tcp,
            Ipv4Addr::LOCALHOST.into(),
            8081,
            "docker0",
            "172.17.0.2".parse().unwrap(),
            80,
            LocalAccess::Proxy,
        );
        assert_eq!(
            local.save_line(),
            "-A DOCKER -d 127.0.0.1/32 ! -i docker0 -p tcp -m tcp --dport 8081 -j DNAT --to-destination 172.17.0.2:80"
        );
        let [accept, hairpin] =
            target_rules(Proto::Udp, "docker0", "172.17.0.2".parse().unwrap(), 53);
        assert_eq!(
            accept.save_line(),
            "-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p udp -m udp --dport 53 -j ACCEPT"
        );
        assert_eq!(
            hairpin.save_line(),
            "-A POSTROUTING -s 172.17.0.2/32 -d 172.17.0.2/32 -p udp -m udp --dport 53 -j MASQUERADE"
        );
        assert_eq!(parse_dnat(&local.save_line()).unwrap().0.host_port, 8081);
        let (id, m) = parse_dnat(&dnat.save_line()).unwrap();
        assert_eq!(id.host_ip, IpAddr::from(Ipv4Addr::UNSPECIFIED));
        assert_eq!((m.bridge.as_str(), m.container_port), ("docker0", 80));
    }

    #[test]
    fn network_rules_follow_the_reference() {
        let lines: Vec<String> = network_rules(&default_bridge(), LocalAccess::Proxy, true)
            .iter()
            .map(|(r, _)| r.save_line())
            .collect();
        for expected in [
            "-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-A FORWARD -o docker0 -j DOCKER",
            "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT",
            "-A FORWARD -i docker0 -o docker0 -j ACCEPT",
            "-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2",
            "-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP",
            "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
            "-A DOCKER -i docker0 -j RETURN",
        ] {
            assert!(
                lines.iter().any(|l| l == expected),
                "{expected} in {lines:#?}"
            );
        }
    }

    #[test]
    fn hairpin_mode_translates_from_the_bridge_and_masquerades_the_node() {
        let dnat = web_dnat(LocalAccess::Hairpin);
        assert_eq!(
            dnat.save_line(),
            "-A DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80"
        );
        let (_, mapping) = parse_dnat(&dnat.save_line()).unwrap();
        assert_eq!(mapping.bridge, "", "found later in the ACCEPT rule");
        let [accept, _] = target_rules(Proto::Tcp, "docker0", "172.17.0.2".parse().unwrap(), 80);
        assert_eq!(
            parse_accept_bridge(&accept.save_line()),
            Some(("172.17.0.2".parse().unwrap(), "docker0".to_string()))
        );
        let masquerade_node =
            "-A POSTROUTING -o docker0 -m addrtype --src-type LOCAL -j MASQUERADE";
        let lines = |access| -> Vec<String> {
            network_rules(&default_bridge(), access, true)
                .iter()
                .map(|(r, _)| r.save_line())
                .collect()
        };
        let skip_dnat = "-A DOCKER -i docker0 -j RETURN";
        let hairpin = lines(LocalAccess::Hairpin);
        assert!(hairpin.iter().any(|l| l == masquerade_node), "{hairpin:#?}");
        assert!(!hairpin.iter().any(|l| l == skip_dnat), "{hairpin:#?}");
        let proxy = lines(LocalAccess::Proxy);
        assert!(!proxy.iter().any(|l| l == masquerade_node), "{proxy:#?}");
        assert!(proxy.iter().any(|l| l == skip_dnat), "{proxy:#?}");
    }

    #[test]
    fn source_filters_in_longest_prefix_order() {
        use crate::model::FilterScope;
        let record = |id, source: &str, port: Option<u16>, action| FilterRecord {
            id,
            source: source.parse().unwrap(),
            scope: port.map(|host_port| FilterScope {
                host_port,
                proto: Proto::Tcp,
            }),
            action,
        };
        let rules = [
            record(1, "0.0.0.0/0", None, FilterAction::Deny),
            record(2, "198.51.100.0/24", Some(8080), FilterAction::Allow),
            record(3, "198.51.100.3/32", Some(8080), FilterAction::Deny),
            record(4, "192.0.2.0/24", None, FilterAction::Allow),
        ];
        let ids: Vec<u32> = filter_order(&rules).iter().map(|r| r.id).collect();
        assert_eq!(ids, [3, 2, 4, 1]);
        let scoped = filter_rule("up0", &rules[1]);
        assert_eq!(
            scoped.save_line(),
            "-A DOCKER-USER -s 198.51.100.0/24 -i up0 -p tcp -m conntrack --ctstate DNAT \
             --ctorigdstport 8080 --ctdir ORIGINAL -m comment --comment bpfbridge-filter-2 -j RETURN"
        );
        let everything = filter_rule("up0", &rules[0]);
        assert_eq!(
            everything.save_line(),
            "-A DOCKER-USER -i up0 -m conntrack --ctstate DNAT --ctdir ORIGINAL -m comment \
             --comment bpfbridge-filter-1 -j DROP"
        );
        assert_eq!(filter_id(&everything.save_line()), Some(1));
        let listed = "   3   180 DROP   0 --  up0  *  0.0.0.0/0  0.0.0.0/0  ctstate DNAT ctdir ORIGINAL /* bpfbridge-filter-1 */";
        assert_eq!(filter_id(listed), Some(1));
    }

    #[test]
    fn link_rules_follow_the_reference() {
        let link = LinkRule {
            bridge: "docker0".into(),
            from: "172.17.0.3".parse().unwrap(),
            to: "172.17.0.2".parse().unwrap(),
            port: 5432,
            proto: Proto::Tcp,
        };
        let [there, back] = link_rules(&link);
        assert_eq!(
            there.save_line(),
            "-A DOCKER -s 172.17.0.3/32 -d 172.17.0.2/32 -i docker0 -o docker0 -p tcp -m tcp --dport 5432 -j ACCEPT"
        );
        assert_eq!(
            back.save_line(),
            "-A DOCKER -s 172.17.0.2/32 -d 172.17.0.3/32 -i docker0 -o docker0 -p tcp -m tcp --sport 5432 -j ACCEPT"
        );
    }

    #[test]
    fn counters_of_dnat_rules() {
        let line = "      12     720 DNAT       6    --  !bpfbr0 *       0.0.0.0/0            0.0.0.0/0            tcp dpt:8080 to:172.17.0.2:80";
        let c = parse_counter(line).unwrap();
        assert_eq!(
            (c.name.as_str(), c.packets, c.bytes),
            ("dnat.tcp.0.0.0.0:8080", 12, 720)
        );
        assert!(parse_counter("   0 0 RETURN all -- bpfbr0 * 0.0.0.0/0 0.0.0.0/0").is_none());
    }

    /// An IPv6-only network (Docker 28's `--ipv4=false`) has its ip6tables rules and no
    /// iptables rule at all: nothing names an IPv4 subnet it does not have.
    #[test]
    fn an_ipv6_only_network_has_ip6tables_rules_only() {
        let only6 = NetworkPolicy {
            subnet: None,
            gateway: None,
            masquerade: false,
            subnet_ipv6: Some("fd00:6::/64".parse().unwrap()),
            gateway_ipv6: Some("fd00:6::1".parse().unwrap()),
            masquerade_ipv6: true,
            ..default_bridge()
        };
        let rules = network_rules(&only6, LocalAccess::Hairpin, true);
        assert!(!rules.is_empty());
        assert!(rules.iter().all(|(r, _)| r.ipv6), "{rules:#?}");
        let masquerade = "-A POSTROUTING -s fd00:6::/64 ! -o docker0 -j MASQUERADE";
        assert!(rules.iter().any(|(r, _)| r.save_line() == masquerade));
        assert!(network_rules(&only6, LocalAccess::Hairpin, false).is_empty());
    }

    /// Docker 27's ip6tables rules of a dual-stack network and an IPv6 published port.
    #[test]
    fn ipv6_rules_read_like_docker_27s() {
        let dual = NetworkPolicy {
            subnet_ipv6: Some("fd00:1::/64".parse().unwrap()),
            gateway_ipv6: Some("fd00:1::1".parse().unwrap()),
            masquerade_ipv6: true,
            ..default_bridge()
        };
        let v6: Vec<String> = network_rules(&dual, LocalAccess::Hairpin, true)
            .iter()
            .filter(|(r, _)| r.ipv6)
            .map(|(r, _)| format!("{} {}", r.table, r.save_line()))
            .collect();
        for expected in [
            "raw -A PREROUTING -d fd00:1::/64 ! -i docker0 -j DROP",
            "raw -A PREROUTING -d fd00:1::1/128 -j ACCEPT",
            "filter -A FORWARD -i docker0 -o docker0 -j ACCEPT",
            "filter -A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP",
            "nat -A POSTROUTING -s fd00:1::/64 ! -o docker0 -j MASQUERADE",
        ] {
            assert!(v6.contains(&expected.to_string()), "{expected} in {v6:#?}");
        }
        assert!(
            network_rules(&dual, LocalAccess::Hairpin, false)
                .iter()
                .all(|(r, _)| !r.ipv6),
            "no ip6tables rules without --ip6tables"
        );
        let dnat = dnat_rule(
            Proto::Tcp,
            "2001:db8::1".parse().unwrap(),
            8080,
            "docker0",
            "fd00:1::2".parse().unwrap(),
            80,
            LocalAccess::Hairpin,
        );
        assert!(dnat.ipv6);
        assert_eq!(
            dnat.save_line(),
            "-A DOCKER -d 2001:db8::1/128 -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:1::2]:80"
        );
        let (id, m) = parse_dnat(&dnat.save_line()).unwrap();
        assert_eq!(
            (id.host_ip, m.container_ip),
            ("2001:db8::1".parse().unwrap(), "fd00:1::2".parse().unwrap())
        );
        let any = dnat_rule(
            Proto::Udp,
            std::net::Ipv6Addr::UNSPECIFIED.into(),
            53,
            "docker0",
            "fd00:1::2".parse().unwrap(),
            53,
            LocalAccess::Hairpin,
        );
        assert_eq!(
            parse_dnat(&any.save_line()).unwrap().0.host_ip,
            IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
        );
        let [accept, _] = target_rules(Proto::Tcp, "docker0", "fd00:1::2".parse().unwrap(), 80);
        assert_eq!(
            accept.save_line(),
            "-A DOCKER -d fd00:1::2/128 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT"
        );
        let line = "  3  180 DNAT  6  !docker0 *  ::/0  ::/0  tcp dpt:8080 to:[fd00:1::2]:80";
        assert_eq!(parse_counter(line).unwrap().name, "dnat.tcp.[::]:8080");
        let id = PortId {
            proto: Proto::Tcp,
            host_ip: std::net::Ipv6Addr::UNSPECIFIED.into(),
            host_port: 8080,
        };
        assert_eq!(
            proxy_listen(LocalAccess::Hairpin, &id),
            Some("[::1]:8080".parse().unwrap()),
            "::1 has no DNAT without route_localnet"
        );
    }
}
