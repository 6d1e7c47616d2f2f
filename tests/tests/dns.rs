//! Name resolution through the agent: containers on user-defined networks resolve each
//! other by name and alias at 127.0.0.11, never across networks; the default bridge has no
//! resolver, like Docker.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::Result;
use bpfbridge_tests::{Agent, FakeUpstream, Topology, dns_lookup};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(3);

fn ip(container: &Value, network: &str) -> Ipv4Addr {
    container["NetworkSettings"]["Networks"][network]["IPAddress"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn names_resolve_on_shared_networks_only() -> Result<()> {
    let topology = Topology::new()?;
    let _upstream = FakeUpstream::start(&topology.world, 5353)?;
    let mut agent = Agent::start_with(&topology, &["--dns", "198.51.100.2:5353"])?;
    for net in ["a", "b"] {
        let out = agent.cli(&["network", "create", net])?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (c1, c1_ns) = agent.create_container(&["c1", "--network", "a"])?;
    let (c2, _) = agent.create_container(&["c2", "--network", "a", "--alias", "api"])?;
    let (_, c3_ns) = agent.create_container(&["c3", "--network", "b"])?;
    let (c5, _) = agent.create_container(&["c5", "--network", "a", "--network", "b"])?;
    let (_, c4_ns) = agent.create_container(&["c4"])?;

    let c2_short = c2["Id"].as_str().unwrap()[..12].to_string();
    let cases: Vec<(&std::path::Path, &str, Option<Vec<Ipv4Addr>>)> = vec![
        (&c1_ns, "c2", Some(vec![ip(&c2, "a")])),
        (&c1_ns, "C2.", Some(vec![ip(&c2, "a")])),
        (&c1_ns, "api", Some(vec![ip(&c2, "a")])),
        (&c1_ns, &c2_short, Some(vec![ip(&c2, "a")])),
        (&c1_ns, "c1", Some(vec![ip(&c1, "a")])),
        (&c1_ns, "c5", Some(vec![ip(&c5, "a")])),
        (&c3_ns, "c5", Some(vec![ip(&c5, "b")])),
        // Across networks nothing is answered locally; the upstream says NXDOMAIN.
        (&c1_ns, "c3", None),
        (&c3_ns, "c1", None),
        (&c3_ns, "api", None),
        // The default bridge network's names are not served either.
        (&c1_ns, "c4", None),
    ];
    for (ns, name, expected) in &cases {
        assert_eq!(
            &dns_lookup(ns, name, WAIT)?,
            expected,
            "{name} from {}",
            ns.display()
        );
    }
    assert!(
        dns_lookup(&c4_ns, "c1", Duration::from_millis(500)).is_err(),
        "no resolver on the default bridge"
    );

    // Removal and restart: the view follows the records.
    assert!(agent.cli(&["container", "rm", "c2"])?.status.success());
    assert_eq!(dns_lookup(&c1_ns, "api", WAIT)?, None);
    agent.stop();
    agent.spawn()?;
    assert_eq!(dns_lookup(&c1_ns, "c5", WAIT)?, Some(vec![ip(&c5, "a")]));
    Ok(())
}
