//! bpfbridge as Docker's network and IPAM driver, driven by a real dockerd 20.10 and the real
//! docker client in the node namespace: networks, containers, published ports reached from
//! the world namespace, icc, isolation, masquerade, connect and disconnect, removal, the IPAM
//! driver, `--ipv6` networks with ports reached over IPv6, refused options and an agent
//! crash. Skipped (and says so) without docker.io.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use bpfbridge_tests::{
    Agent, Echo, NODE_IP, NODE_IPV6, Topology, WORLD_IP, WORLD_IPV6,
    docker::{self, Dockerd, IMAGE},
    ebpf_checks, in_netns, links, request, serve_once, skip_without_dataplane_ipv6, tcp_reaches,
    udp_reaches,
};
use ipnet::Ipv6Net;

const WAIT: Duration = Duration::from_secs(2);

/// The agent (with the plugin) and dockerd, in the order that tears dockerd down first.
struct Node {
    topology: Topology,
    agent: Agent,
    plugin: String,
    plugin_socket: std::path::PathBuf,
    dockerd: Option<Dockerd>,
}

impl Node {
    /// The node, or `None` (said on stderr) without docker.io.
    fn start() -> Result<Option<Self>> {
        Self::start_on(Ok)
    }

    /// The node on a dual-stack uplink ([`NODE_IPV6`], [`WORLD_IPV6`]), or `None`.
    fn start_dual_stack() -> Result<Option<Self>> {
        Self::start_on(Topology::with_ipv6)
    }

    /// The node on the default topology as `shape` makes it, or `None`.
    fn start_on(shape: impl FnOnce(Topology) -> Result<Topology>) -> Result<Option<Self>> {
        if !docker::available() {
            eprintln!("skipped: docker.io is not installed (`cargo xtask setup` installs it)");
            return Ok(None);
        }
        let topology = shape(Topology::new()?)?;
        let (plugin, plugin_socket) = docker::plugin("dk");
        let agent = Agent::start_with(&topology, &["--docker-plugin", &plugin])?;
        let dockerd = Dockerd::start(&topology.node)?;
        Ok(Some(Node {
            topology,
            agent,
            plugin,
            plugin_socket,
            dockerd: Some(dockerd),
        }))
    }

    /// Nothing of Docker's is left in bpfbridge or on the node.
    fn ensure_clean(&self) -> Result<()> {
        let networks = self.bpfbridge_networks()?;
        ensure!(networks.is_empty(), "networks left: {networks:?}");
        let containers = String::from_utf8(self.agent.cli(&["container", "ls"])?.stdout)?;
        ensure!(
            !containers.contains("docker-"),
            "containers left:\n{containers}"
        );
        let veths = self.veths()?;
        ensure!(veths.is_empty(), "veths left: {veths:?}");
        Ok(())
    }

    /// `docker network create -d PLUGIN ARGS...`, expected to work.
    fn network_create(&self, args: &[&str]) -> Result<String> {
        self.docker().ok(&self.network_create_args(args))
    }

    /// `docker network create -d PLUGIN ARGS...`, expected to fail; returns docker's stderr.
    fn network_create_fails(&self, args: &[&str]) -> Result<String> {
        self.docker().fails(&self.network_create_args(args))
    }

    fn network_create_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut full = vec!["network", "create", "-d", self.plugin.as_str()];
        full.extend_from_slice(args);
        full
    }

    fn docker(&self) -> &Dockerd {
        self.dockerd.as_ref().expect("dockerd runs")
    }

    fn world(&self) -> std::path::PathBuf {
        self.topology.world.path()
    }

    /// `docker run -d ARGS IMAGE sleep 600`: a container that idles while the test serves
    /// from inside its namespace.
    fn run(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["run", "-d"];
        full.extend_from_slice(args);
        full.extend([IMAGE, "sleep", "600"]);
        self.docker().ok(&full).map(drop)
    }

    fn ip_on(&self, container: &str, network: &str) -> Result<Ipv4Addr> {
        let ip = self.docker().inspect(
            container,
            &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        )?;
        ip.parse()
            .with_context(|| format!("{container}'s address on {network}: {ip:?}"))
    }

    fn ipv6_on(&self, container: &str, network: &str) -> Result<Ipv6Addr> {
        let ip = self.docker().inspect(
            container,
            &format!("{{{{(index .NetworkSettings.Networks \"{network}\").GlobalIPv6Address}}}}"),
        )?;
        ip.parse()
            .with_context(|| format!("{container}'s IPv6 address on {network}: {ip:?}"))
    }

    /// The IPv6 subnet Docker shows for `network` (the IPv6 one of its `IPAM.Config`).
    fn ipv6_subnet(&self, network: &str) -> Result<Ipv6Net> {
        let subnets = self.docker().ok(&[
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Subnet}}\n{{end}}",
            network,
        ])?;
        subnets
            .lines()
            .find(|l| l.contains(':'))
            .with_context(|| format!("no IPv6 subnet on {network}:\n{subnets}"))?
            .parse()
            .context("an IPv6 subnet")
    }

    /// `bpfbridge port` for a Docker container.
    fn ports(&self, container: &str) -> Result<String> {
        let name = self.docker().bpfbridge_name(container)?;
        let out = self.agent.cli(&["port", &name])?;
        ensure!(
            out.status.success(),
            "bpfbridge port {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// The user-defined networks bpfbridge has (not bridge, host and none).
    fn bpfbridge_networks(&self) -> Result<Vec<String>> {
        let raw = self.agent.cli(&["network", "ls", "--format", "json"])?;
        ensure!(
            raw.status.success(),
            "{}",
            String::from_utf8_lossy(&raw.stderr)
        );
        // One object per line.
        let networks: Vec<serde_json::Value> = String::from_utf8(raw.stdout)?
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        Ok(networks
            .iter()
            .filter_map(|n| n["Name"].as_str().map(str::to_string))
            .filter(|n| !["bridge", "host", "none"].contains(&n.as_str()))
            .collect())
    }

    /// Veths left in the node namespace.
    fn veths(&self) -> Result<Vec<String>> {
        Ok(links(&self.topology.node)?
            .into_iter()
            .filter(|l| l.contains("veth") || l.contains("bpfc"))
            .collect())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // dockerd first, while the plugin still answers its teardown calls.
        self.dockerd.take();
    }
}

fn no_docker_proxy() -> Result<()> {
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        ensure!(
            comm.trim() != "docker-proxy",
            "a docker-proxy runs: {entry:?}"
        );
    }
    Ok(())
}

/// One TCP exchange from `from` with `to`, answered by a server for one connection on
/// `[::]:port` in `server`: the answer and the peer the server saw.
fn exchange_v6(
    server: &Path,
    port: u16,
    from: &Path,
    to: SocketAddr,
) -> Result<(String, SocketAddr)> {
    let listener = in_netns(server, || TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)))?;
    listener.set_nonblocking(true)?;
    let accepting = std::thread::spawn(move || -> Result<SocketAddr> {
        let deadline = Instant::now() + WAIT * 3;
        let (mut stream, peer) = loop {
            match listener.accept() {
                Ok(connection) => break connection,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => return Err(e).context("no connection came"),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(WAIT))?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf)?;
        stream.write_all(b"pong ")?;
        stream.write_all(&buf[..n])?;
        Ok(peer)
    });
    let answer = in_netns(from, || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&to, WAIT)?;
        stream.set_read_timeout(Some(WAIT))?;
        stream.write_all(b"hi")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    })
    .with_context(|| format!("exchange with {to}"));
    let peer = accepting.join().expect("server thread");
    Ok((answer?, peer?))
}

/// A POST of `body` to the plugin socket; returns the status line and the JSON answer.
fn plugin_call(socket: &Path, method: &str, body: &str) -> Result<(String, serde_json::Value)> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "POST /{method} HTTP/1.0\r\nHost: plugin\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, json) = answer.split_once("\r\n\r\n").context("no HTTP body")?;
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, serde_json::from_str(json).context(answer.clone())?))
}

#[test]
fn docker_drives_networks_ports_icc_isolation_and_masquerade() -> Result<()> {
    let Some(node) = Node::start()? else {
        return Ok(());
    };
    let docker = node.docker();
    let world = node.world();
    node.network_create(&[
        "--subnet",
        "10.20.0.0/24",
        "-o",
        "com.docker.network.bridge.enable_icc=false",
        "app-net",
    ])?;
    let network_id = docker.ok(&["network", "inspect", "-f", "{{.Id}}", "app-net"])?;
    let ours = node.agent.cli_json(&["network", "inspect", &network_id])?[0].clone();
    ensure!(ours["Id"] == network_id.as_str(), "{ours}");
    ensure!(
        ours["IPAM"]["Config"][0]["Subnet"] == "10.20.0.0/24",
        "{ours}"
    );

    // Published ports, every form, reached from the world.
    node.run(&[
        "--network",
        "app-net",
        "--name",
        "web",
        "-p",
        "8080:80",
        "-p",
        "127.0.0.1:8081:80",
        "-p",
        "5353:53/udp",
    ])?;
    let web_ip = node.ip_on("web", "app-net")?;
    ensure!(web_ip == Ipv4Addr::new(10, 20, 0, 2), "web is at {web_ip}");
    let web_ns = docker.sandbox("web")?;
    let _web_http = Echo::start(&web_ns, 80)?;
    let _web_dns = Echo::start(&web_ns, 53)?;
    ensure!(
        tcp_reaches(&world, SocketAddrV4::new(NODE_IP, 8080), WAIT),
        "world → node:8080 → web:80"
    );
    ensure!(
        udp_reaches(&world, SocketAddrV4::new(NODE_IP, 5353), WAIT),
        "world → node:5353/udp → web:53"
    );
    ensure!(
        !tcp_reaches(&world, SocketAddrV4::new(NODE_IP, 8081), WAIT),
        "8081 is published on 127.0.0.1 only"
    );
    let ports = node.ports("web")?;
    for line in [
        "80/tcp -> 0.0.0.0:8080",
        "80/tcp -> 127.0.0.1:8081",
        "53/udp -> 0.0.0.0:5353",
    ] {
        ensure!(
            ports.contains(line),
            "bpfbridge port lacks {line}:\n{ports}"
        );
    }
    // Docker 20.10 drops a remote driver's port map: `docker port` shows nothing (README,
    // "Use with Docker"). Should a Docker show ports, they must be bpfbridge's.
    let docker_ports = docker.ok(&["port", "web"])?;
    ensure!(
        docker_ports.lines().all(|l| ports.contains(l)),
        "docker port disagrees with bpfbridge port:\n{docker_ports}\nvs\n{ports}"
    );
    no_docker_proxy()?;
    // Docker writes none (--iptables=false); the iptables dataplane writes its own.
    if ebpf_checks("that no iptables rule is in the node namespace") {
        let rules = String::from_utf8(node.topology.node.exec("iptables-save", &[])?.stdout)?;
        ensure!(
            !rules.lines().any(|l| l.starts_with("-A")),
            "iptables rules in the node namespace:\n{rules}"
        );
    }

    // icc=false: containers on app-net do not reach each other; the world they do, masqueraded.
    node.run(&["--network", "app-net", "--name", "client"])?;
    let client_ns = docker.sandbox("client")?;
    ensure!(
        !tcp_reaches(&client_ns, SocketAddrV4::new(web_ip, 80), WAIT),
        "icc=false: client must not reach web"
    );
    let server = serve_once(&world, 7000);
    let answer = request(&client_ns, SocketAddrV4::new(WORLD_IP, 7000), "hi")?;
    ensure!(answer == "pong hi", "{answer}");
    let seen = server.join().expect("server thread")?;
    ensure!(seen.ip() == NODE_IP, "the world saw {seen}, not the node");

    // Docker's embedded DNS names containers on user-defined networks.
    let lookup = docker.ok(&["exec", "client", "nslookup", "web"])?;
    ensure!(
        lookup.contains(&web_ip.to_string()),
        "nslookup web:\n{lookup}"
    );

    // Isolation between networks; connect and disconnect.
    node.network_create(&["other-net"])?;
    node.run(&["--network", "other-net", "--name", "db"])?;
    let db_ip = node.ip_on("db", "other-net")?;
    let _db = Echo::start(&docker.sandbox("db")?, 5432)?;
    let db = SocketAddrV4::new(db_ip, 5432);
    ensure!(
        !tcp_reaches(&client_ns, db, WAIT),
        "isolation: client must not reach db"
    );
    docker.ok(&["network", "connect", "other-net", "client"])?;
    ensure!(
        tcp_reaches(&client_ns, db, WAIT),
        "connected: client reaches db"
    );
    let client = docker.bpfbridge_name("client")?;
    let inspect = node.agent.cli_json(&["container", "inspect", &client])?[0].clone();
    ensure!(
        inspect["NetworkSettings"]["Networks"]
            .as_object()
            .is_some_and(|n| n.len() == 2),
        "{inspect}"
    );
    docker.ok(&["network", "disconnect", "other-net", "client"])?;
    ensure!(
        !tcp_reaches(&client_ns, db, WAIT),
        "disconnected: client must not reach db"
    );

    // --internal: no way out; the MTU option; a network-scoped alias in Docker's DNS.
    let _world_echo = Echo::start(&world, 7001)?;
    let outside = SocketAddrV4::new(WORLD_IP, 7001);
    ensure!(
        tcp_reaches(&client_ns, outside, WAIT),
        "client reaches the world"
    );
    node.network_create(&[
        "--internal",
        "-o",
        "com.docker.network.driver.mtu=1400",
        "inner",
    ])?;
    node.run(&[
        "--network",
        "inner",
        "--name",
        "hermit",
        "--network-alias",
        "recluse",
    ])?;
    node.run(&["--network", "inner", "--name", "neighbour"])?;
    ensure!(
        !tcp_reaches(&docker.sandbox("hermit")?, outside, WAIT),
        "internal: hermit must not reach the world"
    );
    let mtu = docker.ok(&["exec", "hermit", "cat", "/sys/class/net/eth0/mtu"])?;
    ensure!(mtu == "1400", "eth0 MTU {mtu}");
    let hermit_ip = node.ip_on("hermit", "inner")?;
    let lookup = docker.ok(&["exec", "neighbour", "nslookup", "recluse"])?;
    ensure!(
        lookup.contains(&hermit_ip.to_string()),
        "nslookup recluse:\n{lookup}"
    );

    // -P and a host port range.
    node.run(&[
        "--network",
        "app-net",
        "--name",
        "multi",
        "-P",
        "--expose",
        "9000",
        "-p",
        "9100-9110:90",
    ])?;
    let multi_ns = docker.sandbox("multi")?;
    let _multi_exposed = Echo::start(&multi_ns, 9000)?;
    let _multi_ranged = Echo::start(&multi_ns, 90)?;
    let ports = node.ports("multi")?;
    ensure!(ports.contains("90/tcp -> 0.0.0.0:9100"), "{ports}");
    let dynamic: u16 = ports
        .lines()
        .find_map(|l| l.strip_prefix("9000/tcp -> 0.0.0.0:"))
        .with_context(|| format!("no dynamic port for 9000/tcp:\n{ports}"))?
        .trim()
        .parse()?;
    for port in [dynamic, 9100] {
        ensure!(
            tcp_reaches(&world, SocketAddrV4::new(NODE_IP, port), WAIT),
            "world → node:{port}"
        );
    }

    // Removal takes everything with it.
    docker.ok(&["rm", "-f", "web"])?;
    ensure!(
        !tcp_reaches(&world, SocketAddrV4::new(NODE_IP, 8080), WAIT),
        "8080 must close with web"
    );
    docker.ok(&["rm", "-f", "client", "db", "multi", "hermit", "neighbour"])?;
    docker.ok(&["network", "rm", "app-net", "other-net", "inner"])?;
    node.ensure_clean()
}

#[test]
fn docker_ipam_driver_refused_options_and_bad_calls() -> Result<()> {
    let Some(node) = Node::start()? else {
        return Ok(());
    };
    let docker = node.docker();
    let plugin = node.plugin.as_str();

    // bpfbridge's IPAM hands out the subnet and the addresses.
    node.network_create(&["--ipam-driver", plugin, "pooled"])?;
    let subnet = docker.ok(&[
        "network",
        "inspect",
        "-f",
        "{{(index .IPAM.Config 0).Subnet}}",
        "pooled",
    ])?;
    let id = docker.ok(&["network", "inspect", "-f", "{{.Id}}", "pooled"])?;
    let ours = node.agent.cli_json(&["network", "inspect", &id])?[0].clone();
    ensure!(
        ours["IPAM"]["Config"][0]["Subnet"] == subnet.as_str(),
        "{ours} vs {subnet}"
    );
    let subnet: ipnet::Ipv4Net = subnet.parse()?;
    node.run(&["--network", "pooled", "--name", "first"])?;
    let first = node.ip_on("first", "pooled")?;
    ensure!(
        first == Ipv4Addr::from(u32::from(subnet.network()) + 2),
        "first address {first} in {subnet}"
    );
    // A given subnet and --ip-range; --ip (Docker allows it with a given subnet only).
    node.network_create(&[
        "--ipam-driver",
        plugin,
        "--subnet",
        "10.43.0.0/24",
        "--ip-range",
        "10.43.0.128/25",
        "ranged",
    ])?;
    node.run(&["--network", "ranged", "--name", "dynamic"])?;
    let dynamic = node.ip_on("dynamic", "ranged")?;
    ensure!(
        dynamic == Ipv4Addr::new(10, 43, 0, 128),
        "dynamic address {dynamic}"
    );
    node.run(&[
        "--network",
        "ranged",
        "--ip",
        "10.43.0.50",
        "--name",
        "fixed",
    ])?;
    ensure!(node.ip_on("fixed", "ranged")? == Ipv4Addr::new(10, 43, 0, 50));
    let taken = docker.fails(&[
        "run",
        "-d",
        "--network",
        "ranged",
        "--ip",
        "10.43.0.50",
        "--name",
        "again",
        IMAGE,
        "sleep",
        "600",
    ])?;
    ensure!(taken.contains("in use"), "{taken}");

    // A typo in an option of bpfbridge's own is refused with a message Docker shows (others
    // are ignored, as Docker's bridge driver ignores them).
    let unknown =
        node.network_create_fails(&["-o", "bpfbridge.foo=bar", "--subnet", "10.41.0.0/24", "bad"])?;
    ensure!(
        unknown.contains("unknown network option \"bpfbridge.foo\""),
        "{unknown}"
    );
    // --ipv6: the IPv6 pool from Docker's IPAM, never from bpfbridge's.
    node.network_create(&[
        "--ipv6",
        "--subnet",
        "10.42.0.0/24",
        "--subnet",
        "fd00:42::/64",
        "v6",
    ])?;
    let v6_id = docker.ok(&["network", "inspect", "-f", "{{.Id}}", "v6"])?;
    let ours = node.agent.cli_json(&["network", "inspect", &v6_id])?[0].clone();
    ensure!(
        ours["EnableIPv6"] == true && ours["IPAM"]["Config"][1]["Subnet"] == "fd00:42::/64",
        "{ours}"
    );
    docker.ok(&["network", "rm", "v6"])?;
    // ... or from bpfbridge's, a given IPv6 subnet too; one taken is refused.
    node.network_create(&[
        "--ipam-driver",
        plugin,
        "--ipv6",
        "--subnet",
        "fd00:43::/64",
        "v6pool",
    ])?;
    let given = node.ipv6_subnet("v6pool")?;
    ensure!(given == "fd00:43::/64".parse()?, "{given}");
    let taken = node.network_create_fails(&[
        "--ipam-driver",
        plugin,
        "--ipv6",
        "--subnet",
        "fd00:43::/56",
        "v6clash",
    ])?;
    ensure!(taken.contains("overlaps with"), "{taken}");
    docker.ok(&["network", "rm", "v6pool"])?;
    let out = node
        .agent
        .cli(&["network", "create", "--subnet", "10.99.0.0/24", "mine"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let overlap = node.network_create_fails(&["--subnet", "10.99.0.0/25", "clash"])?;
    ensure!(overlap.contains("overlaps with network mine"), "{overlap}");
    let networks = node.bpfbridge_networks()?;
    ensure!(
        networks.len() == 3,
        "a refused network was half made: {networks:?}"
    );

    // What Docker drives, the bpfbridge CLI only reads.
    let name = format!("docker-{}", &id[..12]);
    let out = node.agent.cli(&["network", "rm", &name])?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("managed by Docker"),
        "bpfbridge network rm of a Docker network: {out:?}"
    );

    // Malformed or out-of-order calls get the protocol's error form, or succeed when they
    // ask for what is already so.
    let socket = &node.plugin_socket;
    let (status, body) = plugin_call(socket, "NetworkDriver.CreateNetwork", "{")?;
    ensure!(
        !status.contains("200") && body["Err"].as_str().is_some_and(|e| !e.is_empty()),
        "{status} {body}"
    );
    let unknown_endpoint = format!(
        r#"{{"NetworkID":"{id}","EndpointID":"{}","SandboxKey":"/nonexistent","Options":{{}}}}"#,
        "e".repeat(64)
    );
    let (_, body) = plugin_call(socket, "NetworkDriver.Join", &unknown_endpoint)?;
    ensure!(
        body["Err"]
            .as_str()
            .is_some_and(|e| e.contains("not found")),
        "{body}"
    );
    for method in ["NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint"] {
        let (status, body) = plugin_call(socket, method, &unknown_endpoint)?;
        ensure!(
            status.contains("200") && body == serde_json::json!({}),
            "{method}: {status} {body}"
        );
    }
    let (_, body) = plugin_call(socket, "NetworkDriver.AllocateNetwork", "{}")?;
    ensure!(
        body["Err"]
            .as_str()
            .is_some_and(|e| e.contains("not supported")),
        "{body}"
    );

    docker.ok(&["rm", "-f", "first", "dynamic", "fixed"])?;
    docker.ok(&["network", "rm", "pooled", "ranged"])?;
    // The pool went back: the next network gets the same subnet.
    node.network_create(&["--ipam-driver", plugin, "again"])?;
    let again = docker.ok(&[
        "network",
        "inspect",
        "-f",
        "{{(index .IPAM.Config 0).Subnet}}",
        "again",
    ])?;
    ensure!(again == subnet.to_string(), "{again} vs {subnet}");
    Ok(())
}

/// Docker 28's options through `docker network create -d PLUGIN -o ...`: a routed network
/// opens its published container ports at the container's own address and nothing else;
/// an option the bridge driver does not know is accepted.
#[test]
fn docker_passes_gateway_modes_and_unknown_options() -> Result<()> {
    let Some(node) = Node::start()? else {
        return Ok(());
    };
    let docker = node.docker();
    node.network_create(&[
        "--subnet",
        "10.45.0.0/24",
        "-o",
        "com.docker.network.bridge.gateway_mode_ipv4=routed",
        "-o",
        "com.docker.network.windowsshim.hnsid=1",
        "routed-net",
    ])?;
    let network_id = docker.ok(&["network", "inspect", "-f", "{{.Id}}", "routed-net"])?;
    let ours = node.agent.cli_json(&["network", "inspect", &network_id])?[0].clone();
    ensure!(
        ours["Options"]["com.docker.network.bridge.gateway_mode_ipv4"] == "routed",
        "{ours}"
    );
    node.run(&["--network", "routed-net", "--name", "web", "-p", "8090:80"])?;
    let web_ip = node.ip_on("web", "routed-net")?;
    let web_ns = docker.sandbox("web")?;
    let _http = Echo::start(&web_ns, 80)?;
    let _ssh = Echo::start(&web_ns, 22)?;
    let world = node.world();
    ensure!(
        tcp_reaches(&world, SocketAddrV4::new(web_ip, 80), WAIT),
        "routed: the published container port at the container's address"
    );
    ensure!(
        !tcp_reaches(&world, SocketAddrV4::new(web_ip, 22), WAIT),
        "routed: an unpublished port"
    );
    docker.ok(&["rm", "-f", "web"])?;
    docker.ok(&["network", "rm", "routed-net"])?;
    node.ensure_clean()
}

/// `--ipv6` networks on a dual-stack uplink: the IPv6 pool from Docker's IPAM, from
/// bpfbridge's (chosen or given, kept across an agent restart), or chosen by the driver
/// (`-o com.docker.network.enable_ipv6=true`, its addresses in CreateEndpoint's answer);
/// `docker inspect` shows each container's IPv6 address, and its published port answers
/// the world on the node's IPv6 address with the client's address kept.
#[test]
fn docker_ipv6_networks_publish_on_both_families() -> Result<()> {
    let Some(mut node) = Node::start_dual_stack()? else {
        return Ok(());
    };
    if skip_without_dataplane_ipv6(&node.agent, "IPv6 published ports of Docker containers")? {
        return Ok(());
    }
    let world = node.world();
    let plugin = node.plugin.clone();
    // A container on `network` publishing `host_port`: its IPv6 address agrees between
    // Docker and bpfbridge and lies in `subnet`, whose ::1 is its gateway, and the world
    // reaches it on both families, over IPv6 with its own address kept.
    let check = |node: &Node,
                 container: &str,
                 network: &str,
                 subnet: Ipv6Net,
                 host_port: u16|
     -> Result<Ipv6Addr> {
        let docker = node.docker();
        let ip = node.ipv6_on(container, network)?;
        ensure!(
            subnet.contains(&ip),
            "{container} at {ip}, outside {subnet}"
        );
        let gateway = Ipv6Addr::from(u128::from(subnet.network()) + 1);
        let shown_gateway = docker.inspect(
            container,
            &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPv6Gateway}}}}"),
        )?;
        ensure!(
            shown_gateway == gateway.to_string(),
            "{shown_gateway} vs {gateway}"
        );
        let id = docker.ok(&["network", "inspect", "-f", "{{.Id}}", network])?;
        let ours =
            node.agent
                .cli_json(&["container", "inspect", &docker.bpfbridge_name(container)?])?[0]
                .clone();
        let settings = &ours["NetworkSettings"]["Networks"][format!("docker-{}", &id[..12])];
        ensure!(
            settings["GlobalIPv6Address"] == ip.to_string().as_str()
                && settings["IPv6Gateway"] == gateway.to_string().as_str(),
            "bpfbridge's view of {container}: {settings}"
        );
        let ports = node.ports(container)?;
        for line in [
            format!("80/tcp -> 0.0.0.0:{host_port}"),
            format!("80/tcp -> [::]:{host_port}"),
        ] {
            ensure!(
                ports.contains(&line),
                "bpfbridge port lacks {line}:\n{ports}"
            );
        }
        let sandbox = docker.sandbox(container)?;
        let published = SocketAddr::new(NODE_IPV6.into(), host_port);
        let (answer, peer) = exchange_v6(&sandbox, 80, &world, published)?;
        ensure!(answer == "pong hi", "{published}: {answer:?}");
        ensure!(
            peer.ip() == IpAddr::V6(WORLD_IPV6),
            "{container} saw {peer}, not the world's address"
        );
        let _http = Echo::start(&sandbox, 80)?;
        ensure!(
            tcp_reaches(&world, SocketAddrV4::new(NODE_IP, host_port), WAIT),
            "world → node:{host_port} over IPv4 → {container}"
        );
        Ok(ip)
    };

    // Docker's IPAM, with the IPv6 subnet given: Docker 20.10's has no default IPv6 pool.
    let no_pool = node.network_create_fails(&["--ipv6", "nopool6"])?;
    ensure!(no_pool.contains("IPv6 address pool"), "{no_pool}");
    node.network_create(&[
        "--ipv6",
        "--subnet",
        "10.46.0.0/24",
        "--subnet",
        "2001:db8:46::/64",
        "given6",
    ])?;
    node.run(&["--network", "given6", "--name", "web", "-p", "8086:80"])?;
    check(&node, "web", "given6", "2001:db8:46::/64".parse()?, 8086)?;

    // bpfbridge's IPAM chooses the IPv6 pool: a /64 of the agent's unique local /48, its
    // gateway ::1 and addresses from ::2.
    node.network_create(&["--ipam-driver", &plugin, "--ipv6", "pooled6"])?;
    let pool = node.ipv6_subnet("pooled6")?;
    ensure!(
        pool.prefix_len() == 64 && pool.network().segments()[0] >> 8 == 0xfd,
        "pool {pool}"
    );
    node.run(&["--network", "pooled6", "--name", "api", "-p", "8087:80"])?;
    let api = check(&node, "api", "pooled6", pool, 8087)?;
    ensure!(
        api == Ipv6Addr::from(u128::from(pool.network()) + 2),
        "api at {api}"
    );
    // The pool and its addresses are kept across a restart of the agent.
    node.agent.kill();
    node.agent.spawn()?;
    node.run(&["--network", "pooled6", "--name", "api2"])?;
    let api2 = node.ipv6_on("api2", "pooled6")?;
    ensure!(
        api2 == Ipv6Addr::from(u128::from(pool.network()) + 3),
        "api2 at {api2}"
    );
    node.network_create(&["--ipam-driver", &plugin, "--ipv6", "next6"])?;
    let next = node.ipv6_subnet("next6")?;
    ensure!(next != pool, "a second pool {next} is the first one");
    // A given IPv6 subnet and --ip6 through bpfbridge's IPAM.
    node.network_create(&[
        "--ipam-driver",
        &plugin,
        "--ipv6",
        "--subnet",
        "10.47.0.0/24",
        "--subnet",
        "2001:db8:47::/64",
        "fixed6",
    ])?;
    node.run(&[
        "--network",
        "fixed6",
        "--ip6",
        "2001:db8:47::50",
        "--name",
        "pinned",
        "-p",
        "8088:80",
    ])?;
    let pinned = check(&node, "pinned", "fixed6", "2001:db8:47::/64".parse()?, 8088)?;
    ensure!(
        pinned == "2001:db8:47::50".parse::<Ipv6Addr>()?,
        "pinned at {pinned}"
    );

    // The driver chooses: Docker's IPAM gives IPv4 only, bpfbridge the IPv6 subnet and the
    // addresses, which Docker takes from CreateEndpoint's answer.
    node.network_create(&[
        "--subnet",
        "10.48.0.0/24",
        "-o",
        "com.docker.network.enable_ipv6=true",
        "chosen6",
    ])?;
    let id = node
        .docker()
        .ok(&["network", "inspect", "-f", "{{.Id}}", "chosen6"])?;
    let ours = node.agent.cli_json(&["network", "inspect", &id])?[0].clone();
    ensure!(ours["EnableIPv6"] == true, "{ours}");
    let chosen: Ipv6Net = ours["IPAM"]["Config"][1]["Subnet"]
        .as_str()
        .context("bpfbridge's IPv6 subnet")?
        .parse()?;
    ensure!(
        chosen != pool && chosen != next,
        "{chosen} is a pool of the IPAM driver's"
    );
    node.run(&["--network", "chosen6", "--name", "own", "-p", "8089:80"])?;
    check(&node, "own", "chosen6", chosen, 8089)?;

    let docker = node.docker();
    docker.ok(&["rm", "-f", "web", "api", "api2", "pinned", "own"])?;
    let closed = SocketAddr::new(NODE_IPV6.into(), 8087);
    ensure!(
        in_netns(&world, || TcpStream::connect_timeout(&closed, WAIT)).is_err(),
        "{closed} must close with api"
    );
    docker.ok(&[
        "network", "rm", "given6", "pooled6", "next6", "fixed6", "chosen6",
    ])?;
    // The pool went back: the next IPv6 network of bpfbridge's IPAM gets it again.
    node.network_create(&["--ipam-driver", &plugin, "--ipv6", "again6"])?;
    let again = node.ipv6_subnet("again6")?;
    ensure!(again == pool, "{again} vs {pool}");
    docker.ok(&["network", "rm", "again6"])?;
    node.ensure_clean()
}

/// Docker 28's `docker network create --ipv4=false --ipv6 -d PLUGIN` sends CreateNetwork
/// with no IPv4 pool, and CreateEndpoint with no IPv4 address. dockerd 20.10 here cannot
/// (it has no `--ipv4`), so the test makes Docker 28's calls itself, on the plugin socket:
/// the plugin makes an IPv6-only network as `bpfbridge network create --ipv4=false --ipv6`
/// does, its endpoint gets the IPv6 address alone and a random MAC, `Join` answers an IPv6
/// gateway only, and ports publish on `::` only.
#[test]
fn the_plugin_makes_an_ipv6_only_network_from_docker_28s_calls() -> Result<()> {
    use serde_json::json;
    let topology = Topology::new()?.with_ipv6()?;
    let (plugin, socket) = docker::plugin("v6only");
    let agent = Agent::start_with(&topology, &["--docker-plugin", &plugin])?;
    let call = |method: &str, body: &serde_json::Value| -> Result<serde_json::Value> {
        let (status, answer) = plugin_call(&socket, method, &body.to_string())?;
        ensure!(status.contains("200"), "{method}: {status} {answer}");
        Ok(answer)
    };
    let network_id = "6a".repeat(32);
    let create = json!({
        "NetworkID": network_id,
        "Options": {
            "com.docker.network.enable_ipv4": false,
            "com.docker.network.enable_ipv6": true,
            "com.docker.network.generic": {},
        },
        "IPv4Data": null,
        "IPv6Data": [{
            "AddressSpace": "LocalDefault",
            "Pool": "fd00:77::/64",
            "Gateway": "fd00:77::1/64",
            "AuxAddresses": null,
        }],
    });
    assert_eq!(call("NetworkDriver.CreateNetwork", &create)?, json!({}));
    // Docker repeats its calls after a restart: the same network is fine.
    assert_eq!(call("NetworkDriver.CreateNetwork", &create)?, json!({}));
    let name = format!("docker-{}", &network_id[..12]);
    let network = &agent.cli_json(&["network", "inspect", &name])?[0];
    assert_eq!(network["EnableIPv4"], false, "{network}");
    assert_eq!(network["EnableIPv6"], true, "{network}");
    assert_eq!(
        network["IPAM"]["Config"],
        json!([{"Subnet": "fd00:77::/64", "Gateway": "fd00:77::1"}]),
        "the IPv6 entry alone"
    );

    let endpoint_id = "e6".repeat(32);
    let endpoint = |address: &str| {
        json!({
            "NetworkID": network_id,
            "EndpointID": endpoint_id,
            "Interface": {"Address": address, "AddressIPv6": "fd00:77::2/64", "MacAddress": ""},
            "Options": {},
        })
    };
    let (_, refused) = plugin_call(
        &socket,
        "NetworkDriver.CreateEndpoint",
        &endpoint("10.77.0.2/24").to_string(),
    )?;
    assert!(
        refused["Err"]
            .as_str()
            .is_some_and(|e| e.contains("IPv6-only")),
        "an IPv4 address on an IPv6-only network: {refused}"
    );
    let created = call("NetworkDriver.CreateEndpoint", &endpoint(""))?;
    let mac = created["Interface"]["MacAddress"]
        .as_str()
        .context("a MAC in CreateEndpoint's answer")?
        .to_string();
    let first_octet = u8::from_str_radix(&mac[..2], 16)?;
    assert_eq!(
        first_octet & 0b11,
        0b10,
        "{mac}: unicast, locally administered"
    );
    assert_eq!(
        created["Interface"].get("AddressIPv6"),
        None,
        "Docker's address is kept"
    );
    assert_eq!(
        call("NetworkDriver.CreateEndpoint", &endpoint(""))?,
        created,
        "a repeated call gets the same MAC"
    );

    let sandbox = format!("/run/docker/netns/{}", bpfbridge_tests::unique("sb"));
    let join = json!({
        "NetworkID": network_id,
        "EndpointID": endpoint_id,
        "SandboxKey": sandbox,
        "Options": {},
    });
    let joined = call("NetworkDriver.Join", &join)?;
    assert_eq!(joined.get("Gateway"), None, "no IPv4 gateway: {joined}");
    assert_eq!(joined["GatewayIPv6"], "fd00:77::1", "{joined}");
    let network = &agent.cli_json(&["network", "inspect", &name])?[0];
    let (sandbox_name, member) = network["Containers"]
        .as_object()
        .and_then(|members| members.values().next())
        .map(|m| {
            (
                m["Name"].as_str().unwrap_or_default().to_string(),
                m.clone(),
            )
        })
        .context("the sandbox on the network")?;
    assert_eq!(member["IPv4Address"], "", "{member}");
    assert_eq!(member["IPv6Address"], "fd00:77::2/64", "{member}");
    assert_eq!(member["MacAddress"], mac.as_str(), "{member}");

    let external = json!({
        "NetworkID": network_id,
        "EndpointID": endpoint_id,
        "Options": {"com.docker.network.portmap": [
            {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8680, "HostPortEnd": 8680},
        ]},
    });
    call("NetworkDriver.ProgramExternalConnectivity", &external)?;
    let out = agent.cli(&["port", &sandbox_name])?;
    assert_eq!(
        String::from_utf8(out.stdout)?.trim(),
        "80/tcp -> [::]:8680",
        "published on :: only"
    );

    let leave = json!({"NetworkID": network_id, "EndpointID": endpoint_id});
    for method in [
        "NetworkDriver.RevokeExternalConnectivity",
        "NetworkDriver.Leave",
        "NetworkDriver.DeleteEndpoint",
    ] {
        call(method, &leave)?;
    }
    call(
        "NetworkDriver.DeleteNetwork",
        &json!({"NetworkID": network_id}),
    )?;
    let out = agent.cli(&["network", "inspect", &name])?;
    ensure!(!out.status.success(), "the network is gone");
    Ok(())
}

#[test]
fn docker_calls_keep_working_after_an_agent_crash() -> Result<()> {
    let Some(mut node) = Node::start()? else {
        return Ok(());
    };
    let world = node.world();
    node.network_create(&["--subnet", "10.30.0.0/24", "crashy"])?;
    node.run(&["--network", "crashy", "--name", "web", "-p", "8080:80"])?;
    let _web = Echo::start(&node.docker().sandbox("web")?, 80)?;
    let published = SocketAddrV4::new(NODE_IP, 8080);
    ensure!(tcp_reaches(&world, published, WAIT), "before the crash");

    node.agent.kill();
    node.agent.spawn()?;
    ensure!(tcp_reaches(&world, published, WAIT), "after the restart");

    node.run(&["--network", "crashy", "--name", "late", "-p", "8090:80"])?;
    let _late = Echo::start(&node.docker().sandbox("late")?, 80)?;
    ensure!(
        tcp_reaches(&world, SocketAddrV4::new(NODE_IP, 8090), WAIT),
        "a container started after the restart"
    );
    node.docker().ok(&["rm", "-f", "web", "late"])?;
    ensure!(
        !tcp_reaches(&world, published, WAIT),
        "8080 must close with web"
    );
    node.docker().ok(&["network", "rm", "crashy"])?;
    node.ensure_clean()
}
