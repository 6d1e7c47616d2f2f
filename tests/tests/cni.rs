//! `bpfbridge-cni` driven exactly as a container runtime drives it (the `CNI_*`
//! environment, the configuration on stdin), against namespaces the test makes as a runtime
//! would: ADD gives an address and publishes the hostPort through the agent's fast path,
//! DEL removes it, and the spec's rules for repeated, missing and bad input hold. A
//! dual-stack configuration (host-local's IPv6 range set) gives both families: addresses,
//! default routes, masquerade to the world and the hostPort on IPv6 too.

use std::{
    net::{IpAddr, SocketAddr, SocketAddrV4},
    path::Path,
};

use anyhow::{Context as _, Result, ensure};
use bpfbridge_tests::{
    Agent, NODE_IP, NODE_IPV6, Netns, Topology, WORLD_IP, WORLD_IPV6,
    cni::{Plugin, with_prev_result},
    links, request, run, serve_once, serve_once_v6, skip_unless_ebpf, skip_without_dataplane_ipv6,
};
use serde_json::{Value, json};

const SUBNET: &str = "10.88.0.0/24";

/// The IPv6 range of the dual-stack tests.
const SUBNET6: &str = "fd00:88::/64";

/// A node with an agent and the plugin as the node's runtime calls it.
struct Node {
    topology: Topology,
    agent: Agent,
    plugin: Plugin,
}

impl Node {
    fn start() -> Result<Self> {
        Self::on(Topology::new()?)
    }

    /// A node whose uplink carries IPv6 too ([`NODE_IPV6`], the world at [`WORLD_IPV6`]).
    fn start_dual_stack() -> Result<Self> {
        Self::on(Topology::new()?.with_ipv6()?)
    }

    fn on(topology: Topology) -> Result<Self> {
        let agent = Agent::start(&topology)?;
        let plugin = Plugin {
            agent_socket: agent.socket.clone(),
            state_dir: agent.dir.path().join("cni-state"),
            runtime_netns: topology.node.path(),
        };
        Ok(Node {
            topology,
            agent,
            plugin,
        })
    }

    /// The configuration of network "pods" at `version`, publishing `host_port` → 80/tcp.
    fn config(&self, version: &str, host_port: u16) -> Value {
        self.plugin.config(
            version,
            "pods",
            SUBNET,
            json!({
                "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
                "runtimeConfig": {
                    "portMappings": [{"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}],
                    "io.kubernetes.cri.pod-annotations": {"example.com/a": "b"}
                }
            }),
        )
    }

    fn add(&self, id: &str, pod: &Path, config: &Value) -> Result<Value> {
        self.plugin.call("ADD", id, pod, "eth0", config)?.ok()
    }

    fn del(&self, id: &str, pod: &Path, config: &Value) -> Result<()> {
        self.plugin
            .call("DEL", id, pod, "eth0", config)?
            .ok()
            .map(drop)
    }

    /// One request from the world to the node's `host_port`; what the pod's server saw.
    fn round_trip(&self, pod: &Path, host_port: u16) -> Result<SocketAddr> {
        let server = serve_once(pod, 80);
        let answer = request(
            &self.topology.world.path(),
            SocketAddrV4::new(NODE_IP, host_port),
            "ping\n",
        )
        .context("world client")?;
        let peer = server.join().expect("server thread")?;
        ensure!(answer == "pong ping\n", "unexpected answer {answer:?}");
        Ok(peer)
    }

    fn port_is_closed(&self, host_port: u16) -> bool {
        request(
            &self.topology.world.path(),
            SocketAddrV4::new(NODE_IP, host_port),
            "ping\n",
        )
        .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    }

    /// A host-local style dual-stack configuration of network `name` at `version`: an
    /// IPv4 and an IPv6 range set, no bpfbridge keys, `extra` merged in.
    fn dual_stack_config(
        &self,
        version: &str,
        name: &str,
        ipv4: &str,
        ipv6: &str,
        extra: Value,
    ) -> Value {
        let mut config = self.plugin.config(version, name, ipv4, extra);
        let object = config.as_object_mut().expect("an object");
        object.remove("subnet");
        object.insert(
            "ipam".into(),
            json!({"type": "host-local",
                   "ranges": [[{"subnet": ipv4}], [{"subnet": ipv6}]],
                   "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}),
        );
        config
    }

    fn veths(&self) -> Result<Vec<String>> {
        Ok(links(&self.topology.node)?
            .into_iter()
            .filter(|l| l.starts_with("veth"))
            .collect())
    }

    /// The networks the agent lists.
    fn networks(&self) -> Result<Vec<String>> {
        let ls = self.agent.cli(&["network", "ls", "--format", "json"])?;
        ensure!(ls.status.success(), "network ls: {ls:?}");
        String::from_utf8(ls.stdout)?
            .lines()
            .map(|line| {
                let network: Value = serde_json::from_str(line)?;
                Ok(network["Name"].as_str().context("Name")?.to_string())
            })
            .collect()
    }

    /// The containers the agent lists (`container ls --format json`: one per line).
    fn attachments(&self) -> Result<Vec<String>> {
        let ls = self.agent.cli(&["container", "ls", "--format", "json"])?;
        ensure!(ls.status.success(), "container ls: {ls:?}");
        String::from_utf8(ls.stdout)?
            .lines()
            .map(|line| {
                let container: Value = serde_json::from_str(line)?;
                Ok(container["Name"]
                    .as_str()
                    .context("Name")?
                    .trim_start_matches('/')
                    .to_string())
            })
            .collect()
    }
}

#[test]
fn add_gives_an_address_and_a_published_host_port_and_del_removes_them() -> Result<()> {
    let node = Node::start()?;
    let pod = Netns::new("pod")?;
    let config = node.config("1.1.0", 8080);
    let result = node.add("pod1", &pod.path(), &config)?;
    let sandbox = pod.path().display().to_string();
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(result["interfaces"][1]["sandbox"], sandbox.as_str());
    assert_eq!(
        result["ips"],
        json!([{"address": "10.88.0.2/24", "gateway": "10.88.0.1", "interface": 1}])
    );
    assert_eq!(
        result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}])
    );
    assert_eq!(result["dns"]["nameservers"], json!(["10.96.0.10"]));
    // The interface is there, with its address and the default route.
    let inside = String::from_utf8(pod.ip(&["-4", "-o", "addr", "show", "eth0"])?.stdout)?;
    assert!(inside.contains("10.88.0.2/24"), "{inside}");
    let routes = String::from_utf8(pod.ip(&["route"])?.stdout)?;
    assert!(routes.contains("default via 10.88.0.1"), "{routes}");

    // The hostPort answers from the world, the client's address preserved.
    assert_eq!(node.round_trip(&pod.path(), 8080)?.ip(), WORLD_IP);
    if !skip_unless_ebpf("the iptables dataplane publishes ports with NAT rules") {
        let saved = run(
            "ip",
            &["netns", "exec", &node.topology.node.name, "iptables-save"],
        )?;
        let saved = String::from_utf8_lossy(&saved.stdout);
        assert!(!saved.contains("DNAT"), "no iptables rule: {saved}");
    }

    // CHECK with the ADD's result as prevResult passes.
    let check = with_prev_result(&config, &result);
    node.plugin
        .call("CHECK", "pod1", &pod.path(), "eth0", &check)?
        .ok()?;

    // DEL removes the veth and the mapping; DEL again, and DEL with no namespace, succeed.
    node.del("pod1", &pod.path(), &check)?;
    assert!(node.port_is_closed(8080), "the hostPort answers after DEL");
    assert_eq!(node.veths()?, Vec::<String>::new());
    assert!(!links(&pod)?.contains(&"eth0".to_string()));
    node.del("pod1", &pod.path(), &check)?;
    node.del("pod1", Path::new(""), &config)?;
    node.del("never-added", Path::new("/run/netns/gone"), &config)?;
    assert_eq!(node.attachments()?, Vec::<String>::new());
    Ok(())
}

#[test]
fn results_take_the_requested_versions_shape_and_prev_result_is_kept() -> Result<()> {
    let node = Node::start()?;
    let pod = Netns::new("pod")?;
    let result = node.add("v04", &pod.path(), &node.config("0.4.0", 8081))?;
    assert_eq!(result["cniVersion"], "0.4.0");
    assert_eq!(result["ips"][0]["version"], "4");
    assert!(result["interfaces"][1].get("mtu").is_none(), "{result}");

    // A chained call: the previous plugin's result comes first and stays.
    let second = Netns::new("pod")?;
    let previous = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "dummy0", "sandbox": second.path()}],
        "ips": [{"address": "192.0.2.9/32", "interface": 0}]
    });
    let chained = with_prev_result(&node.config("1.0.0", 8082), &previous);
    let result = node.add("v10", &second.path(), &chained)?;
    assert_eq!(result["interfaces"][0]["name"], "dummy0");
    assert_eq!(result["ips"][0]["address"], "192.0.2.9/32");
    assert_eq!(result["ips"][1]["address"], "10.88.0.3/24");
    assert_eq!(result["ips"][1]["interface"], 2);
    assert!(result["ips"][1].get("version").is_none(), "{result}");
    node.del("v04", &pod.path(), &node.config("0.4.0", 8081))?;
    node.del("v10", &second.path(), &chained)?;
    Ok(())
}

#[test]
fn repeated_and_bad_input_get_the_specs_errors() -> Result<()> {
    let node = Node::start()?;
    let pod = Netns::new("pod")?;
    let config = node.config("1.1.0", 8080);
    node.add("pod1", &pod.path(), &config)?;
    let plugin = &node.plugin;

    // ADD twice for the same container and interface is refused; the first stays.
    let twice = plugin.call("ADD", "pod1", &pod.path(), "eth0", &config)?;
    assert_eq!(twice.error_code(), Some(999), "{twice:?}");
    assert!(
        twice.output["details"]
            .as_str()
            .unwrap_or_default()
            .contains("already has interface eth0"),
        "{twice:?}"
    );
    assert_eq!(node.round_trip(&pod.path(), 8080)?.ip(), WORLD_IP);

    let other = Netns::new("pod")?;
    let code = |command: &str, netns: &Path, stdin: &[u8]| -> Result<Option<u64>> {
        Ok(plugin
            .call_raw(command, "pod2", netns, "eth0", stdin)?
            .error_code())
    };
    let with = |extra: Value| -> Vec<u8> {
        serde_json::to_vec(&plugin.config("1.1.0", "pods", SUBNET, extra)).unwrap()
    };
    let good = with(json!({}));
    assert_eq!(code("ADD", &other.path(), b"{not json")?, Some(6));
    assert_eq!(
        code(
            "ADD",
            &other.path(),
            &serde_json::to_vec(&plugin.config("0.3.1", "pods", SUBNET, json!({})))?
        )?,
        Some(1)
    );
    assert_eq!(
        code(
            "ADD",
            &other.path(),
            br#"{"cniVersion": "1.1.0", "type": "bpfbridge-cni"}"#
        )?,
        Some(7),
        "no name"
    );
    assert_eq!(
        code(
            "ADD",
            &other.path(),
            &with(json!({"runtimeConfig": {"bandwidth": {"ingressRate": 1000}}}))
        )?,
        Some(2),
        "a capability the plugin does not honour"
    );
    assert_eq!(
        code("ADD", Path::new("/run/netns/no-such-pod"), &good)?,
        Some(4)
    );
    assert_eq!(code("FROB", &other.path(), &good)?, Some(4));
    // The network exists with another subnet: the configuration does not match it.
    assert_eq!(
        code(
            "ADD",
            &other.path(),
            &serde_json::to_vec(&plugin.config("1.1.0", "pods", "10.99.0.0/24", json!({})))?
        )?,
        Some(999)
    );
    // The namespace of another attachment.
    let shared = plugin.call_raw("ADD", "pod3", &pod.path(), "eth1", &good)?;
    assert!(!shared.success, "{shared:?}");
    // The host port of another pod.
    let taken = plugin.call(
        "ADD",
        "pod2",
        &other.path(),
        "eth0",
        &node.config("1.1.0", 8080),
    )?;
    assert!(!taken.success, "{taken:?}");
    // CHECK of an attachment that does not exist: the container is unknown.
    let result = json!({"cniVersion": "1.1.0"});
    let unknown = plugin.call(
        "CHECK",
        "pod2",
        &other.path(),
        "eth0",
        &with_prev_result(&config, &result),
    )?;
    assert_eq!(unknown.error_code(), Some(3), "{unknown:?}");
    // Nothing of the refused ADDs is left.
    assert_eq!(node.attachments()?, ["cni-pod1"]);
    assert_eq!(node.veths()?.len(), 1);

    let version = plugin
        .call_raw(
            "VERSION",
            "",
            Path::new(""),
            "",
            br#"{"cniVersion": "1.0.0"}"#,
        )?
        .ok()?;
    assert_eq!(
        version,
        json!({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
    );
    plugin
        .call_raw("STATUS", "", Path::new(""), "", &good)?
        .ok()?;
    Ok(())
}

#[test]
fn check_detects_a_removed_veth_and_gc_removes_what_is_not_valid() -> Result<()> {
    let node = Node::start()?;
    let (a, b) = (Netns::new("pod")?, Netns::new("pod")?);
    let config = node.plugin.config("1.1.0", "pods", SUBNET, json!({}));
    let result_a = node.add("a", &a.path(), &config)?;
    node.add("b", &b.path(), &config)?;

    a.ip(&["link", "del", "eth0"])?;
    let check = node.plugin.call(
        "CHECK",
        "a",
        &a.path(),
        "eth0",
        &with_prev_result(&config, &result_a),
    )?;
    assert_eq!(check.error_code(), Some(999), "{check:?}");
    assert!(
        check.output["details"]
            .as_str()
            .unwrap_or_default()
            .contains("gone"),
        "{check:?}"
    );

    // GC keeps the valid attachment and removes the other.
    let mut gc = config.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "b", "ifname": "eth0"}]);
    node.plugin.call("GC", "", Path::new(""), "", &gc)?.ok()?;
    assert_eq!(node.attachments()?, ["cni-b"]);
    assert_eq!(node.veths()?.len(), 1);
    Ok(())
}

#[test]
fn del_works_across_an_agent_crash_and_while_the_agent_is_down() -> Result<()> {
    let mut node = Node::start()?;
    let (first, second) = (Netns::new("pod")?, Netns::new("pod")?);
    node.add("first", &first.path(), &node.config("1.1.0", 8080))?;
    node.add("second", &second.path(), &node.config("1.1.0", 8081))?;

    // Killed between ADD and DEL: the restarted agent has the records, DEL cleans up.
    node.agent.kill();
    node.agent.spawn()?;
    assert_eq!(node.round_trip(&first.path(), 8080)?.ip(), WORLD_IP);
    node.del("first", &first.path(), &node.config("1.1.0", 8080))?;
    assert!(node.port_is_closed(8080));

    // ADD fails clearly while the agent is down; DEL succeeds and is done once it is back.
    node.agent.kill();
    let third = Netns::new("pod")?;
    let refused = node.plugin.call(
        "ADD",
        "third",
        &third.path(),
        "eth0",
        &node.config("1.1.0", 8082),
    )?;
    assert_eq!(refused.error_code(), Some(11), "{refused:?}");
    assert!(
        refused.output["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("agent is not running"),
        "{refused:?}"
    );
    node.del("second", &second.path(), &node.config("1.1.0", 8081))?;
    node.agent.spawn()?;
    // The published port kept working while the agent was down; the next call that
    // reaches the agent sends the deletion.
    assert_eq!(node.attachments()?, ["cni-second"]);
    node.plugin
        .call_raw(
            "STATUS",
            "",
            Path::new(""),
            "",
            &serde_json::to_vec(&node.config("1.1.0", 8081))?,
        )?
        .ok()?;
    assert_eq!(node.attachments()?, Vec::<String>::new());
    assert!(node.port_is_closed(8081));

    // A namespace the runtime deleted while the agent was down: the agent forgets it.
    let fourth = Netns::new("pod")?;
    node.add("fourth", &fourth.path(), &node.config("1.1.0", 8083))?;
    node.agent.kill();
    fourth.delete()?;
    node.agent.spawn()?;
    assert_eq!(node.attachments()?, Vec::<String>::new());
    assert!(node.port_is_closed(8083));
    Ok(())
}

/// One exchange over IPv6 from `client` to `to`, served on `server_port` in `server`: the
/// peer the server saw.
fn round_trip_v6(
    (server, server_port): (&Path, u16),
    client: &Path,
    to: SocketAddr,
) -> Result<SocketAddr> {
    let listening = serve_once_v6(server, server_port);
    let answer = request(client, to, "ping\n").with_context(|| format!("client to {to}"))?;
    let peer = listening.join().expect("server thread")?;
    ensure!(answer == "pong ping\n", "unexpected answer {answer:?}");
    Ok(peer)
}

#[test]
fn a_dual_stack_add_gives_both_families_and_del_removes_them() -> Result<()> {
    let node = Node::start_dual_stack()?;
    let pod = Netns::new("pod")?;
    let config = node.dual_stack_config(
        "1.0.0",
        "pods",
        SUBNET,
        SUBNET6,
        json!({"runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 8081, "containerPort": 80, "protocol": "tcp", "hostIP": "::"}
        ]}}),
    );
    let result = node.add("pod1", &pod.path(), &config)?;
    assert_eq!(
        result["ips"],
        json!([
            {"address": "10.88.0.2/24", "gateway": "10.88.0.1", "interface": 1},
            {"address": "fd00:88::2/64", "gateway": "fd00:88::1", "interface": 1}
        ])
    );
    assert_eq!(
        result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}, {"dst": "::/0", "gw": "fd00:88::1"}])
    );
    let inside = String::from_utf8(pod.ip(&["-6", "-o", "addr", "show", "eth0"])?.stdout)?;
    assert!(inside.contains("fd00:88::2/64"), "{inside}");
    let routes = String::from_utf8(pod.ip(&["-6", "route"])?.stdout)?;
    assert!(routes.contains("default via fd00:88::1"), "{routes}");
    let network = &node.agent.cli_json(&["network", "inspect", "pods"])?[0];
    assert_eq!(network["EnableIPv6"], true);

    // CHECK knows both addresses.
    let check = with_prev_result(&config, &result);
    node.plugin
        .call("CHECK", "pod1", &pod.path(), "eth0", &check)?
        .ok()?;
    let mut wrong = result.clone();
    wrong["ips"][1]["address"] = json!("fd00:88::99/64");
    let mismatch = node.plugin.call(
        "CHECK",
        "pod1",
        &pod.path(),
        "eth0",
        &with_prev_result(&config, &wrong),
    )?;
    assert_eq!(mismatch.error_code(), Some(999), "{mismatch:?}");

    // The hostPort answers on IPv4 as before.
    assert_eq!(node.round_trip(&pod.path(), 8080)?.ip(), WORLD_IP);
    if !skip_without_dataplane_ipv6(&node.agent, "CNI pods' IPv6 traffic")? {
        let world = node.topology.world.path();
        // The pod reaches the world over IPv6 with the node's address (ipMasq's default).
        assert_eq!(
            round_trip_v6(
                (&world, 7601),
                &pod.path(),
                SocketAddr::new(WORLD_IPV6.into(), 7601)
            )?
            .ip(),
            IpAddr::V6(NODE_IPV6),
            "the world sees the node's IPv6 address"
        );
        // The world reaches the pod's hostPort on the node's IPv6 address, its own
        // address preserved; `hostIP: "::"` is IPv6 only.
        for port in [8080, 8081] {
            assert_eq!(
                round_trip_v6(
                    (&pod.path(), 80),
                    &world,
                    SocketAddr::new(NODE_IPV6.into(), port)
                )?
                .ip(),
                IpAddr::V6(WORLD_IPV6),
                "[{NODE_IPV6}]:{port}"
            );
        }
        assert!(
            node.port_is_closed(8081),
            "hostIP :: publishes no IPv4 port"
        );
    }

    // DEL removes both families' addresses and ports.
    node.del("pod1", &pod.path(), &check)?;
    assert!(node.port_is_closed(8080));
    let world = node.topology.world.path();
    for port in [8080, 8081] {
        assert!(
            request(&world, SocketAddr::new(NODE_IPV6.into(), port), "ping\n").is_err(),
            "[{NODE_IPV6}]:{port} answers after DEL"
        );
    }
    assert_eq!(node.veths()?, Vec::<String>::new());
    assert_eq!(node.attachments()?, Vec::<String>::new());
    Ok(())
}

#[test]
fn bad_dual_stack_input_is_refused_and_leaves_nothing() -> Result<()> {
    let node = Node::start_dual_stack()?;
    let pod = Netns::new("pod")?;
    node.add(
        "pod1",
        &pod.path(),
        &node.dual_stack_config("1.1.0", "pods", SUBNET, SUBNET6, json!({})),
    )?;
    let other = Netns::new("pod")?;
    let refused = |config: &Value| -> Result<(Option<u64>, String)> {
        let outcome = node
            .plugin
            .call("ADD", "pod2", &other.path(), "eth0", config)?;
        Ok((
            outcome.error_code(),
            outcome.output["details"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ))
    };
    // An IPv6 range overlapping the first network's: the agent refuses the new network.
    let (code, details) = refused(&node.dual_stack_config(
        "1.1.0",
        "other",
        "10.89.0.0/24",
        "fd00:88::/48",
        json!({}),
    ))?;
    assert_eq!(code, Some(999), "{details}");
    assert!(details.contains("overlaps"), "{details}");
    // An invalid CIDR, a gateway outside its range: the configuration is invalid.
    let (code, details) = refused(&node.dual_stack_config(
        "1.1.0",
        "other",
        "10.89.0.0/24",
        "fd00:89::/200",
        json!({}),
    ))?;
    assert_eq!(code, Some(7), "{details}");
    let mut outside =
        node.dual_stack_config("1.1.0", "other", "10.89.0.0/24", "fd00:89::/64", json!({}));
    outside["ipam"]["ranges"][1][0]["gateway"] = json!("fd00:90::1");
    let (code, details) = refused(&outside)?;
    assert_eq!(code, Some(7), "{details}");
    assert!(details.contains("not a usable address"), "{details}");
    // The existing network with another IPv6 range: the configuration does not match it.
    let (code, details) =
        refused(&node.dual_stack_config("1.1.0", "pods", SUBNET, "fd00:87::/64", json!({})))?;
    assert_eq!(code, Some(999), "{details}");
    assert!(details.contains("IPv6 subnet"), "{details}");
    // Nothing of the refused ADDs is left.
    assert_eq!(node.networks()?.iter().filter(|n| *n == "other").count(), 0);
    assert_eq!(node.attachments()?, ["cni-pod1"]);
    assert_eq!(node.veths()?.len(), 1);

    // On an IPv4-only network an IPv6 hostIP is left out, as the portmap plugin does.
    let third = Netns::new("pod")?;
    let v4 = node.plugin.config(
        "1.1.0",
        "v4pods",
        "10.90.0.0/24",
        json!({"runtimeConfig": {"portMappings": [
            {"hostPort": 8090, "containerPort": 80, "hostIP": "::"}
        ]}}),
    );
    let result = node.add("pod3", &third.path(), &v4)?;
    assert_eq!(result["ips"].as_array().map(Vec::len), Some(1), "{result}");
    assert_eq!(
        result["routes"].as_array().map(Vec::len),
        Some(1),
        "{result}"
    );
    Ok(())
}

#[test]
fn an_ipv6_only_range_gives_ipv6_only_pods() -> Result<()> {
    let node = Node::start_dual_stack()?;
    let pod = Netns::new("pod")?;
    let mut config = node.plugin.config(
        "1.1.0",
        "pods6",
        SUBNET,
        json!({
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "fd00:86::/64"}]]},
            "runtimeConfig": {"portMappings": [
                {"hostPort": 8086, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 8087, "containerPort": 80, "protocol": "tcp", "hostIP": "0.0.0.0"}
            ]}
        }),
    );
    config
        .as_object_mut()
        .context("an object")?
        .remove("subnet");
    let result = node.add("pod6", &pod.path(), &config)?;
    assert_eq!(
        result["ips"],
        json!([{"address": "fd00:86::2/64", "gateway": "fd00:86::1", "interface": 1}])
    );
    assert_eq!(
        result["routes"],
        json!([{"dst": "::/0", "gw": "fd00:86::1"}])
    );
    let network = &node.agent.cli_json(&["network", "inspect", "pods6"])?[0];
    assert_eq!(network["EnableIPv4"], false, "{network}");
    let inside = String::from_utf8(pod.ip(&["-4", "-o", "addr", "show", "eth0"])?.stdout)?;
    assert!(inside.trim().is_empty(), "no IPv4 address: {inside}");
    let check = with_prev_result(&config, &result);
    node.plugin
        .call("CHECK", "pod6", &pod.path(), "eth0", &check)?
        .ok()?;

    if !skip_without_dataplane_ipv6(&node.agent, "IPv6-only CNI pods' traffic")? {
        let world = node.topology.world.path();
        assert_eq!(
            round_trip_v6(
                (&world, 7602),
                &pod.path(),
                SocketAddr::new(WORLD_IPV6.into(), 7602)
            )?
            .ip(),
            IpAddr::V6(NODE_IPV6),
            "masqueraded to the world"
        );
        assert_eq!(
            round_trip_v6(
                (&pod.path(), 80),
                &world,
                SocketAddr::new(NODE_IPV6.into(), 8086)
            )?
            .ip(),
            IpAddr::V6(WORLD_IPV6),
            "the hostPort on the node's IPv6 address"
        );
    }
    // The hostPort is IPv6 only, and the 0.0.0.0 mapping was left out, as portmap does.
    assert!(node.port_is_closed(8086) && node.port_is_closed(8087));
    node.del("pod6", &pod.path(), &check)?;
    assert_eq!(node.attachments()?, Vec::<String>::new());
    assert_eq!(node.veths()?, Vec::<String>::new());
    Ok(())
}
