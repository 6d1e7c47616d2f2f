//! `bpfbridge-cni` driven exactly as a container runtime drives it (the `CNI_*`
//! environment, the configuration on stdin), against namespaces the test makes as a runtime
//! would: ADD gives an address and publishes the hostPort through the agent's fast path,
//! DEL removes it, and the spec's rules for repeated, missing and bad input hold.

use std::{
    net::{SocketAddr, SocketAddrV4},
    path::Path,
};

use anyhow::{Context as _, Result, ensure};
use bpfbridge_tests::{
    Agent, NODE_IP, Netns, Topology, WORLD_IP,
    cni::{Plugin, with_prev_result},
    links, request, run, serve_once, skip_unless_ebpf,
};
use serde_json::{Value, json};

const SUBNET: &str = "10.88.0.0/24";

/// A node with an agent and the plugin as the node's runtime calls it.
struct Node {
    topology: Topology,
    agent: Agent,
    plugin: Plugin,
}

impl Node {
    fn start() -> Result<Self> {
        let topology = Topology::new()?;
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

    fn veths(&self) -> Result<Vec<String>> {
        Ok(links(&self.topology.node)?
            .into_iter()
            .filter(|l| l.starts_with("veth"))
            .collect())
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
