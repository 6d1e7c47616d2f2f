//! docs/reliability.md, rendered rather than written: the figures come from the files the
//! tests record (`bpfbridge_tests::figures::record`, `target/reliability/NAME.DATAPLANE.json`),
//! the words from [`SECTIONS`], a fixed description of each test: what it checks and the
//! command that reproduces it. Both dataplanes' figures sit side by side; a name without a
//! description still shows, its figures as they were recorded, under "Other figures".
//!
//! `cargo xtask test` renders `target/reliability/reliability.md` at its end; `cargo xtask
//! reliability` renders docs/reliability.md from the figures of the last runs. Latencies and
//! scan times differ from run to run, so nothing compares the rendering with the committed
//! one; the rendering says which run, commit and kernel its figures come from.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    path::Path,
};

use anyhow::{Context as _, Result};
use serde_json::Value;

/// A test the report describes, under the name it records its figures with.
struct Test {
    name: &'static str,
    title: &'static str,
    checks: &'static str,
    command: &'static str,
    /// Why the test has no figures on the iptables dataplane, when it never has.
    not_on_iptables: Option<&'static str>,
}

struct Section {
    title: &'static str,
    tests: &'static [Test],
}

const EBPF_PROGRAMS_ONLY: Option<&str> = Some("the eBPF programs' own test");

const SECTIONS: &[Section] = &[
    Section {
        title: "Exposure and hostile input",
        tests: &[
            Test {
                name: "parser_fuzz",
                title: "Parser fuzz",
                checks: "Frames generated from a structure (Ethernet, IPv4 with options and every \
                    kind of fragment word, TCP/UDP/ICMP headers, ICMP errors quoting a packet, \
                    payload, padding; IPv6 with extension header chains, fragment headers, \
                    TCP/UDP/ICMPv6, ICMPv6 errors quoting a packet with its own chain), their \
                    total or payload length right, nearly right or anything, a few bytes \
                    flipped, go through the shared parser (`dataplane-common`'s `parse`, \
                    `icmp_echo`, `icmp_error` and their `parse::ipv6` counterparts). It must \
                    agree with an independent reference decoder per family on every outcome and \
                    field; every offset it returns lies inside the \
                    packet; a frame parses the same without its padding and with other padding; \
                    cut at every length it is rejected until the cut keeps the whole packet, then \
                    parsed the same; seen through a shorter linear area (TC) it is `Truncated` or \
                    parsed the same. `cargo xtask test` runs 4,000 frames from a fixed seed.",
                command: "`cargo test -p dataplane-common --test parser_fuzz -- --nocapture`; \
                    longer, from a random seed: `cargo xtask fuzz --seconds 600`",
                not_on_iptables: Some("the eBPF programs' parser"),
            },
            Test {
                name: "malformed_frames",
                title: "Malformed frames",
                checks: "A corpus generated from valid frames (a SYN, UDP, ICMP echo, first and \
                    last fragments, IPv4 options, a frame to a loopback-published port, ARP; an \
                    IPv6 SYN behind extension headers, an IPv6 first fragment, an ICMPv6 echo, a \
                    neighbour solicitation, with IPv6 ports published): truncations at every \
                    length, every IHL, IP versions, total and payload lengths around the real \
                    one, padding, next headers, extension header lengths, fragment offsets at and \
                    past the end, every TCP data offset, UDP lengths, and 150 random flips of 1–3 \
                    header bytes per frame (fixed seed). Each frame goes through the program by \
                    `BPF_PROG_TEST_RUN`. Every verdict is counted once under a reason of its \
                    kind, none is aborted; no frame that is not a well-formed first packet \
                    creates a `CONNTRACK`, `NAT_FLOWS` or `NAT_FLOWS6` entry. Frames refused by \
                    the kernel are those its test run will not make an skb of (network header \
                    not whole); such frames never reach TC. The layer-3 uplink program gets the \
                    same mutants of seeds from a client behind a tunnel, without their Ethernet \
                    header.",
                command: "`cargo test -p bpfbridge-tests --test dataplane_test_run malformed -- \
                    --nocapture`",
                not_on_iptables: EBPF_PROGRAMS_ONLY,
            },
            Test {
                name: "verifier_budget",
                title: "Verifier budget",
                checks: "Each program's verified instruction count (as `bpfbridge info` reports \
                    it under `Programs`) is at most half the verifier's limit. The count depends \
                    on the kernel's verifier.",
                command: "`cargo test -p bpfbridge-tests --test dataplane_test_run verified -- \
                    --nocapture`; a running agent's figures are checked by `--test daemon \
                    flow_timeouts`",
                not_on_iptables: EBPF_PROGRAMS_ONLY,
            },
            Test {
                name: "exposure_world_scan",
                title: "Ports exposed",
                checks: "From the world namespace, a connect to every TCP port 1–65535 of the \
                    node's uplink address (16 scanners, 300 ms timeout) and a UDP datagram to \
                    133 ports (every 509th, the published ones, 53 and the loopback-published \
                    one). With two containers publishing 8080, 8443, 9000/tcp, 5353, 9001/udp, \
                    and 8081/tcp, 8082/udp on 127.0.0.1 only, exactly the published set answers; \
                    the node's own listening sockets (listed with `ss`) would count as exposed \
                    too.",
                command: "`cargo test -p bpfbridge-tests --test exposure world_scan -- \
                    --nocapture`, and with `BPFBRIDGE_TEST_DATAPLANE=iptables`",
                not_on_iptables: None,
            },
            Test {
                name: "exposure_loopback_frames",
                title: "Loopback from the wire",
                checks: "Frames crafted in the world namespace (AF_PACKET on `wl0`) to \
                    127.0.0.1:8081/tcp and 127.0.0.1:8082/udp, the node's MAC as destination, 3 \
                    of each: the container behind those ports receives no segment or datagram \
                    (its `Tcp: InSegs`, `Udp: InDatagrams` and `Udp: NoPorts` do not move), and \
                    the uplink program counts each as `uplink_ingress.pass.loopback_destination` \
                    (the kernel then drops it as a martian). The iptables dataplane drops them \
                    in raw/PREROUTING, as Docker 28 does (moby#49325; Docker 20.10 translated \
                    them, moby#45610).",
                command: "`cargo test -p bpfbridge-tests --test exposure frames -- --nocapture`, \
                    and with `BPFBRIDGE_TEST_DATAPLANE=iptables`",
                not_on_iptables: None,
            },
        ],
    },
    Section {
        title: "Addresses that change",
        tests: &[
            Test {
                name: "addresses_replaced",
                title: "Replaced uplink address",
                checks: "With 8080:80 published, the uplink's 198.51.100.1/24 is deleted and \
                    198.51.100.7/24 added (one `ip -batch`, as a DHCP renewal that hands out \
                    another address does), the world's default route follows. Within 5 s the \
                    port answers on the new address; then it does not answer on the old one, and \
                    a container's new connection to a world server arrives from the new address. \
                    The eBPF agent gathers a 100 ms burst of announcements before it updates the \
                    maps; Docker's rules need no update.",
                command: "`cargo test -p bpfbridge-tests --test addresses replaced -- \
                    --nocapture`, and with `BPFBRIDGE_TEST_DATAPLANE=iptables`",
                not_on_iptables: None,
            },
            Test {
                name: "addresses_second",
                title: "Second uplink address",
                checks: "198.51.100.9/24 added to the uplink: the port answers on it within 5 s, \
                    still on the first address, and masquerade keeps the first address; once it \
                    is deleted, the port stops answering on it within 5 s.",
                command: "`cargo test -p bpfbridge-tests --test addresses second -- --nocapture`",
                not_on_iptables: None,
            },
            Test {
                name: "addresses_another_interface",
                title: "Address on another interface",
                checks: "203.0.113.5/32 on a new interface of the node, routed to by the world \
                    through the uplink: the port answers on it within 5 s.",
                command: "`cargo test -p bpfbridge-tests --test addresses another -- \
                    --nocapture`",
                not_on_iptables: None,
            },
        ],
    },
    Section {
        title: "Drift repair",
        tests: &[
            Test {
                name: "repair_veth_deleted",
                title: "Deleted veth",
                checks: "A container publishing 8080:80; its node-side veth deleted with `ip link \
                    del` in the node namespace. Within 5 s `info` shows `Repairs.VethRecreated` \
                    1, the port answers from the world again, the container keeps its address, \
                    MAC and interface name and reaches the world through masquerade.",
                command: "`cargo test -p bpfbridge-tests --test repair deleted -- --nocapture`, \
                    and with `BPFBRIDGE_TEST_DATAPLANE=iptables`",
                not_on_iptables: None,
            },
            Test {
                name: "repair_veth_off_its_bridge",
                title: "Veth off its bridge, and down",
                checks: "`ip link set VETH nomaster down`: put back and set up; the port answers \
                    again.",
                command: "`cargo test -p bpfbridge-tests --test repair bridge -- --nocapture`",
                not_on_iptables: None,
            },
            Test {
                name: "repair_namespace_gone",
                title: "Namespace gone",
                checks: "A container on a namespace given with `--netns`, which is deleted: \
                    `container inspect` shows `State.Error` naming it within 5 s; the agent keeps \
                    running, uses under 0.5 s of CPU over the next 5 s, logs the failure once, \
                    and `container rm` works.",
                command: "`cargo test -p bpfbridge-tests --test repair namespace -- --nocapture`",
                not_on_iptables: None,
            },
            Test {
                name: "repair_bridge_deleted",
                title: "Deleted bridge",
                checks: "A network's bridge deleted with `ip link del`: recreated with its gateway address, the containers' veths put back on it (`BridgeRecreated`), a `repair` event in `monitor`, the published port answers again. Figures: time to the repair and to the port answering.",
                command: "`cargo test -p bpfbridge-tests --test repair -- --nocapture`, and with \
                    `BPFBRIDGE_TEST_DATAPLANE=iptables`",
                not_on_iptables: None,
            },
            Test {
                name: "repair_bridge_down",
                title: "Bridge set down",
                checks: "`ip link set BRIDGE down`: set up again (`BridgeSetUp`), a `repair` event, the port answers again.",
                command: "`cargo test -p bpfbridge-tests --test repair -- --nocapture`, and with \
                    `BPFBRIDGE_TEST_DATAPLANE=iptables`",
                not_on_iptables: None,
            },
            Test {
                name: "repair_gateway_address",
                title: "Gateway address removed",
                checks: "The bridge's gateway address deleted: put back (`BridgeAddressRestored`) at the address event, a `repair` event, the container reaches the world again.",
                command: "`cargo test -p bpfbridge-tests --test repair -- --nocapture`, and with \
                    `BPFBRIDGE_TEST_DATAPLANE=iptables`",
                not_on_iptables: None,
            },
            Test {
                name: "repair_subnet_route",
                title: "Subnet route deleted",
                checks: "The route to the network's subnet on its bridge deleted (`ip route del`), the address left: added again as the kernel makes it (`SubnetRouteRestored`) at the next pass, a `repair` event, the port answers and the node reaches the container again.",
                command: "`cargo test -p bpfbridge-tests --test repair -- --nocapture`, and with \
                    `BPFBRIDGE_TEST_DATAPLANE=iptables`",
                not_on_iptables: None,
            },
            Test {
                name: "repair_ip_forward",
                title: "Forwarding turned off",
                checks: "`net.ipv4.ip_forward=0` in the node namespace: set again (`SysctlRestored`), a `repair` event, the port answers again.",
                command: "`cargo test -p bpfbridge-tests --test repair -- --nocapture`, and with \
                    `BPFBRIDGE_TEST_DATAPLANE=iptables`",
                not_on_iptables: None,
            },
            Test {
                name: "repair_tc_link_pin_deleted",
                title: "Container program's link pin deleted",
                checks: "The pin of a container veth's TC link removed (which detaches it): attached anew (`ProgramReattached`), the port answers again.",
                command: "`cargo test -p bpfbridge-tests --test repair -- --nocapture`, and with \
                    `BPFBRIDGE_TEST_DATAPLANE=iptables`",
                not_on_iptables: Some("no BPF links"),
            },
            Test {
                name: "repair_tc_link_detached",
                title: "Container program detached",
                checks: "The TC link detached with `bpftool link detach`, its pin left: found by the link's interface (0 once detached), attached anew.",
                command: "`cargo test -p bpfbridge-tests --test repair -- --nocapture`, and with \
                    `BPFBRIDGE_TEST_DATAPLANE=iptables`",
                not_on_iptables: Some("no BPF links"),
            },
            Test {
                name: "repair_ipv6_program_slot_emptied",
                title: "Container IPv6 program slot emptied",
                checks: "The `CONTAINER_PROGRAMS` slot that `container_ingress` tail-calls for IPv6 and the `CONTAINER6_PROGRAMS` slots of IPv6 masquerade, of IPv6 links and of a container's ICMPv6 errors and fragmented replies cleared in the pinned program arrays: `container_ingress6`, `container_masquerade6`, `container_link6` and `container_reply6` put back (`ProgramReattached`), the port answers again.",
                command: "`cargo test -p bpfbridge-tests --test repair -- --nocapture`, and with \
                    `BPFBRIDGE_TEST_DATAPLANE=iptables`",
                not_on_iptables: Some("no BPF maps"),
            },
            Test {
                name: "repair_uplink_ipv6_program_slot_emptied",
                title: "Uplink IPv6 program slot emptied",
                checks: "The slots that the uplink programs tail-call for IPv6 (`UPLINK_XDP_PROGRAMS`, `UPLINK_TC_PROGRAMS`) and that their IPv6 programs tail-call for the replies of masqueraded IPv6 flows (`UPLINK6_XDP_PROGRAMS`, `UPLINK6_TC_PROGRAMS`) cleared in the pinned program arrays: each program put back (`ProgramReattached`), the port answers again.",
                command: "`cargo test -p bpfbridge-tests --test repair -- --nocapture`, and with \
                    `BPFBRIDGE_TEST_DATAPLANE=iptables`",
                not_on_iptables: Some("no BPF maps"),
            },
            Test {
                name: "repair_published_port_entry",
                title: "Published-port entry deleted",
                checks: "The `PUBLISHED_PORTS` entry of 8080 deleted from the pinned map: written back from the records (`MapEntryRestored`), the port answers again.",
                command: "`cargo test -p bpfbridge-tests --test repair -- --nocapture`, and with \
                    `BPFBRIDGE_TEST_DATAPLANE=iptables`",
                not_on_iptables: Some("no BPF maps"),
            },
            Test {
                name: "repair_node_address_entry",
                title: "Node-address entry deleted",
                checks: "The node address's `NODE_ADDRS` entry deleted from the pinned map \
                    (which closes ports published on 0.0.0.0 there): written back \
                    (`MapEntryRestored`), the port answers again.",
                command: "`cargo test -p bpfbridge-tests --test repair -- --nocapture`",
                not_on_iptables: Some("no BPF maps"),
            },
            Test {
                name: "repair_docker_chain_flushed",
                title: "DOCKER chains flushed",
                checks: "`iptables -F DOCKER` and `iptables -t nat -F DOCKER` in the node namespace: every rule put back in Docker's order (`IptablesRuleRestored`); `iptables -S` afterwards equals the listing from before. dockerd itself does not do this.",
                command: "`cargo test -p bpfbridge-tests --test repair -- --nocapture`, and with \
                    `BPFBRIDGE_TEST_DATAPLANE=iptables`",
                not_on_iptables: Some("no iptables rules"),
            },
            Test {
                name: "repair_uplink_link_pin_deleted",
                title: "Uplink program's link pin deleted",
                checks: "The pin of the uplink's link (XDP or TC, as the hook in `info` says) removed: attached anew on the same hook, published ports answer again.",
                command: "`cargo test -p bpfbridge-tests --test repair -- --nocapture`, and with \
                    `BPFBRIDGE_TEST_DATAPLANE=iptables`",
                not_on_iptables: Some("no BPF links"),
            },
            Test {
                name: "repair_cgroup_link_pin_deleted",
                title: "Socket programs' link pin deleted",
                checks: "The pin of a cgroup socket program's link removed: attached anew, node-local access to a published port works again.",
                command: "`cargo test -p bpfbridge-tests --test repair -- --nocapture`, and with \
                    `BPFBRIDGE_TEST_DATAPLANE=iptables`",
                not_on_iptables: Some("no BPF links"),
            },
        ],
    },
    Section {
        title: "Every interface",
        tests: &[Test {
            name: "interfaces",
            title: "Second interface, hotplug and unplug",
            checks: "A second node interface (a veth to a second world, 192.0.2.0/24, TX \
                offload on) answers a port published on 0.0.0.0, and a container's connection out \
                of it is masqueraded with that interface's address; an interface created after \
                the agent started answers (figure: time until it does), and one removed leaves \
                no attachment (figure: time until its pin is gone). The published-port suite \
                itself runs three ways: the world's TX offload on (TC hook, partial checksums), \
                off (TC), and off on the XDP hook.",
            command: "`cargo test -p bpfbridge-tests --test interfaces -- --nocapture`, and with \
                `BPFBRIDGE_TEST_DATAPLANE=iptables`",
            not_on_iptables: None,
        }],
    },
    Section {
        title: "Upgrades across map layout changes",
        tests: &[
            Test {
                name: "upgrade",
                title: "Previous layout's pins under live connections",
                checks: "An agent is killed with a TCP connection open through a published port \
                    (its state in `NAT_FLOWS`) and one from a container through masquerade \
                    (`CONNTRACK`); its `NAT_FLOWS` pin is replaced by a map of the previous \
                    layout (v1, no counters) holding the same flows, as a build from before \
                    versioned layouts leaves it. The new agent starts over them: both connections \
                    still carry bytes, `NAT_FLOWS` is v2 with the flows migrated, nothing is left \
                    under `retired/`. The tests beside it: an upgrade stopped half-way is \
                    finished by the next start; a newer layout (a downgrade) is refused with the \
                    pins untouched; every pinned map has a layout version the kernel confirms.",
                command: "`cargo test -p bpfbridge-tests --test upgrade -- --nocapture`",
                not_on_iptables: Some("no pinned maps"),
            },
            Test {
                name: "upgrade_from_previous_agent",
                title: "From a real agent of the previous layout",
                checks: "With `BPFBRIDGE_UPGRADE_FROM` naming a `bpfbridge` built from the commit \
                    in `xtask/src/upgrade_from.rs` (the bench builds one; CI does not, and the \
                    test skips): that agent runs with the two connections open, is stopped, and \
                    this build's agent starts over its pins; both connections carry bytes and a \
                    new one works.",
                command: "`BPFBRIDGE_UPGRADE_FROM=PATH cargo test -p bpfbridge-tests --test \
                    upgrade from_an -- --nocapture`",
                not_on_iptables: Some("no pinned maps"),
            },
        ],
    },
    Section {
        title: "Restarts and operation",
        tests: &[
            Test {
                name: "daemon_kill_9",
                title: "kill -9 during creates",
                checks: "The agent killed with SIGKILL in the middle of a batch of 25 `container \
                    create -p` calls, twice, and started again: every recorded container has a \
                    unique address, one veth, one namespace and its port mappings; nothing else \
                    is left (veths, namespaces, mappings), and a new container gets an address \
                    nobody has.",
                command: "`cargo test -p bpfbridge-tests --test daemon kill_9 -- --nocapture`",
                not_on_iptables: None,
            },
            Test {
                name: "metrics",
                title: "Prometheus metrics",
                checks: "`--metrics-addr`: after a request through a published port, `/metrics` \
                    (OpenMetrics text) has the API latency histogram, containers, published \
                    ports and, on eBPF, every program's counters and the flow tables' fill.",
                command: "`cargo test -p bpfbridge-tests --test metrics -- --nocapture`",
                not_on_iptables: None,
            },
            Test {
                name: "faults",
                title: "Killed at every step",
                checks: "The agent kills itself (SIGKILL) at each crash point of network \
                    create/rm, container create/rm, connect, disconnect, publish and filters \
                    (`bpfbridge debug crash-points` lists them; a point the test does not try \
                    fails it), is restarted, and nothing is left over: no veth, bridge, address, \
                    namespace, map entry, link pin, iptables rule or record without an owner; \
                    the operation can be redone, and every delete done twice answers not found \
                    the second time.",
                command: "`cargo test -p bpfbridge-tests --test faults -- --nocapture`, and with \
                    `BPFBRIDGE_TEST_DATAPLANE=iptables`",
                not_on_iptables: None,
            },
            Test {
                name: "dns_restart",
                title: "DNS through restarts",
                checks: "A container resolves another's name every 10 ms (retried after 1 s, \
                    failed after 5 s, as a stub resolver) across 10 SIGTERM restarts and 10 kill \
                    -9 restarts of the agent: the keeper holds the DNS sockets meanwhile, queries \
                    wait in them, the next agent answers from the records the last one saved.",
                command: "`cargo test -p bpfbridge-tests --test dns through -- --nocapture`, and \
                    with `BPFBRIDGE_TEST_DATAPLANE=iptables`",
                not_on_iptables: None,
            },
        ],
    },
];

/// One file of figures.
struct Record {
    name: String,
    dataplane: String,
    figures: Value,
    recorded_unix: Option<u64>,
    kernel: Option<String>,
    commit: Option<String>,
}

/// The figures recorded in `dir` (none when it does not exist).
fn load(dir: &Path) -> Result<Vec<Record>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut records = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = fs::read_to_string(&path)?;
        let body: Value =
            serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
        let text_of = |key: &str| body[key].as_str().map(str::to_string);
        records.push(Record {
            name: text_of("name").with_context(|| format!("{}: no name", path.display()))?,
            dataplane: text_of("dataplane").unwrap_or_else(|| "?".into()),
            figures: body["figures"].clone(),
            recorded_unix: body["recorded_unix"].as_u64(),
            kernel: text_of("kernel"),
            commit: text_of("commit"),
        });
    }
    records.sort_by(|a, b| (&a.name, &a.dataplane).cmp(&(&b.name, &b.dataplane)));
    Ok(records)
}

/// Where the tests record their figures.
pub fn figures_dir() -> std::path::PathBuf {
    crate::target_dir().join("reliability")
}

/// Removes the figures of earlier runs, so that a report shows one run's.
pub fn clear_figures() -> Result<()> {
    let dir = figures_dir();
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Renders the report from the recorded figures into `out`.
pub fn render_to(out: &Path) -> Result<()> {
    let records = load(&figures_dir())?;
    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(out, render(&records)).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "reliability report: {} ({} files of figures from {})",
        out.display(),
        records.len(),
        figures_dir().display()
    );
    Ok(())
}

fn render(records: &[Record]) -> String {
    let mut dataplanes: BTreeSet<&str> = ["ebpf", "iptables"].into();
    dataplanes.extend(records.iter().map(|r| r.dataplane.as_str()));
    let by_name: BTreeMap<(&str, &str), &Record> = records
        .iter()
        .map(|r| ((r.name.as_str(), r.dataplane.as_str()), r))
        .collect();

    let mut doc = String::from(
        "# Reliability\n\n\
         <!-- Rendered by `cargo xtask reliability` (xtask/src/reliability.rs) from the figures \
         the tests record in target/reliability; do not edit by hand. -->\n\n\
         What the tests show about bpfbridge under failure and hostile input, with the figures \
         they recorded. Each test writes its figures with `bpfbridge_tests::figures::record`; \
         `cargo xtask test` renders them into `target/reliability/reliability.md` at its end, \
         and `cargo xtask reliability` renders this page from the last runs' figures. The \
         checks hold on every run; latencies, scan times and how far a killed batch got vary \
         from run to run and with the machine's load.\n\n",
    );
    let _ = writeln!(doc, "{}\n", provenance(records));

    let header = |doc: &mut String| {
        let _ = write!(doc, "| Test | What it checks |");
        for dataplane in &dataplanes {
            let _ = write!(doc, " {} |", dataplane_title(dataplane));
        }
        let _ = writeln!(doc, " Reproduce |");
        let _ = writeln!(doc, "|{}", " --- |".repeat(dataplanes.len() + 3));
    };
    let described: BTreeSet<&str> = SECTIONS
        .iter()
        .flat_map(|s| s.tests.iter().map(|t| t.name))
        .collect();
    for section in SECTIONS {
        let _ = writeln!(doc, "## {}\n", section.title);
        header(&mut doc);
        for test in section.tests {
            let _ = write!(doc, "| {} | {} |", test.title, cell(test.checks));
            for dataplane in &dataplanes {
                let figures = match (by_name.get(&(test.name, *dataplane)), test.not_on_iptables) {
                    (Some(record), _) => figures_cell(&record.figures),
                    (None, Some(why)) if *dataplane == "iptables" => format!("— ({why})"),
                    (None, _) => "not recorded in this run".into(),
                };
                let _ = write!(doc, " {figures} |");
            }
            let _ = writeln!(doc, " {} |", cell(test.command));
        }
        doc.push('\n');
    }

    let undescribed: BTreeSet<&str> = records
        .iter()
        .map(|r| r.name.as_str())
        .filter(|name| !described.contains(name))
        .collect();
    if !undescribed.is_empty() {
        doc.push_str(
            "## Other figures\n\n\
             Recorded by tests that have no description in xtask/src/reliability.rs yet, shown \
             as they were recorded.\n\n",
        );
        header(&mut doc);
        for name in undescribed {
            let _ = write!(doc, "| `{name}` | |");
            for dataplane in &dataplanes {
                let figures = by_name.get(&(name, *dataplane)).map_or_else(
                    || "not recorded in this run".into(),
                    |r| figures_cell(&r.figures),
                );
                let _ = write!(doc, " {figures} |");
            }
            let _ = writeln!(doc, " |");
        }
        doc.push('\n');
    }
    doc
}

fn dataplane_title(dataplane: &str) -> &str {
    match dataplane {
        "ebpf" => "eBPF",
        other => other,
    }
}

/// Which run the figures come from: when they were recorded, at which commit, on which
/// kernel (every distinct one, should they differ).
fn provenance(records: &[Record]) -> String {
    if records.is_empty() {
        return "No figures were recorded: run the tests (`cargo xtask test`) first.".into();
    }
    let times: Vec<u64> = records.iter().filter_map(|r| r.recorded_unix).collect();
    let distinct = |values: BTreeSet<&str>| -> String {
        if values.is_empty() {
            "unknown".into()
        } else {
            values
                .into_iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let commits = distinct(records.iter().filter_map(|r| r.commit.as_deref()).collect());
    let kernels = distinct(records.iter().filter_map(|r| r.kernel.as_deref()).collect());
    let when = match (times.iter().min(), times.iter().max()) {
        (Some(first), Some(last)) if first == last => utc(*first),
        (Some(first), Some(last)) => format!("{} to {}", utc(*first), utc(*last)),
        _ => "unknown times".into(),
    };
    format!(
        "**This rendering:** figures recorded {when}, commit {commits}, Linux {kernels}, \
         {} files of figures.",
        records.len()
    )
}

/// A unix time as `YYYY-MM-DD HH:MM UTC` (the civil-from-days algorithm: no date crate for
/// one line).
fn utc(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let (hour, minute) = ((unix % 86_400) / 3_600, (unix % 3_600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02} UTC")
}

/// Text made safe for one table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// A test's figures as `key: value` lines in one cell, keys as recorded; nested objects'
/// keys are joined with dots.
fn figures_cell(figures: &Value) -> String {
    let mut lines = Vec::new();
    flatten("", figures, &mut lines);
    if lines.is_empty() {
        return "(no figures)".into();
    }
    cell(&lines.join("<br>"))
}

fn flatten(prefix: &str, value: &Value, lines: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (key, value) in fields {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, lines);
            }
        }
        value if prefix.is_empty() => lines.push(scalar(value)),
        value => lines.push(format!("{prefix}: {}", scalar(value))),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Null => "—".into(),
        Value::String(text) => text.clone(),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => thousands(u),
            (_, Some(i), _) if i < 0 => format!("-{}", thousands(i.unsigned_abs())),
            (_, _, Some(f)) => format!("{f:.2}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string(),
            _ => n.to_string(),
        },
        Value::Array(items) if items.is_empty() => "none".into(),
        // Lists are of ports and the like: no thousands separators.
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Number(n) => n.to_string(),
                other => scalar(other),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Object(_) => value.to_string(),
    }
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(name: &str, dataplane: &str, figures: Value) -> Record {
        Record {
            name: name.into(),
            dataplane: dataplane.into(),
            figures,
            recorded_unix: Some(1_795_910_400),
            kernel: Some("6.18.0".into()),
            commit: Some("abc123".into()),
        }
    }

    #[test]
    fn figures_of_both_dataplanes_sit_side_by_side() {
        let doc = render(&[
            record(
                "addresses_replaced",
                "ebpf",
                json!({"answered_after_ms": 110}),
            ),
            record(
                "addresses_replaced",
                "iptables",
                json!({"answered_after_ms": 9}),
            ),
        ]);
        let row = doc
            .lines()
            .find(|l| l.starts_with("| Replaced uplink address"))
            .unwrap();
        assert!(
            row.contains("| answered_after_ms: 110 | answered_after_ms: 9 |"),
            "{row}"
        );
        assert!(doc.contains("| Test | What it checks | eBPF | iptables | Reproduce |"));
        assert!(doc.contains("commit `abc123`, Linux `6.18.0`"), "{doc}");
        assert!(doc.contains("2026-11-29 00:00 UTC"), "{doc}");
    }

    #[test]
    fn undescribed_names_show_generically_and_missing_ones_say_so() {
        let doc = render(&[record(
            "dns_restarts",
            "iptables",
            json!({"lost": 0, "queries": 1000, "per_restart": {"max_ms": 12.5}, "ports": [5353, 9001]}),
        )]);
        let row = doc
            .lines()
            .find(|l| l.starts_with("| `dns_restarts`"))
            .unwrap();
        assert!(
            row.contains("| not recorded in this run | lost: 0<br>per_restart.max_ms: 12.5<br>ports: 5353, 9001<br>queries: 1,000 |"),
            "{row}"
        );
        assert!(doc.contains("| — (the eBPF programs' own test) |"));
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400 + 3_660), "2000-02-29 01:01 UTC");
        assert_eq!(utc(1_795_910_400), "2026-11-29 00:00 UTC");
    }
}
