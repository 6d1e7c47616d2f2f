//! Bad input gets a clear one-line error and a non-zero exit, and leaves nothing behind.

use anyhow::Result;
use bpfbridge_tests::{Agent, Topology, bpfbridge_bin, links};

/// Runs the CLI, expects failure, returns its stderr.
fn refused(agent: &Agent, args: &[&str]) -> Result<String> {
    let out = agent.cli(args)?;
    let stderr = String::from_utf8(out.stderr)?;
    assert!(!out.status.success(), "{args:?} must fail");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("Error: "), "{stderr}");
    Ok(stderr)
}

#[test]
fn bad_requests_are_refused_without_side_effects() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    agent.create_container(&["--name", "web", "-p", "8080:80"])?;
    let links_before = links(&topology.node)?;
    let ports_before = agent.cli_json(&["ports"])?;
    let netns_before = std::fs::read_dir(&agent.netns_dir)?.count();

    let cases: &[(&[&str], &str)] = &[
        (&["container", "rm", "nope"], "no such container: nope"),
        (&["container", "inspect", "nope"], "no such container: nope"),
        (&["container", "create", "--name", "web"], "already in use"),
        (
            &["container", "create", "--name", "other", "-p", "8080:81"],
            "already published by container web",
        ),
        (
            &["container", "create", "--name", "other", "-p", "0:80"],
            "must be between 1 and 65535",
        ),
        (
            &["container", "create", "--name", "other", "-p", "70000:80"],
            "must be between 1 and 65535",
        ),
        (
            &["container", "create", "--name", "other", "-p", "8081:0"],
            "must be between 1 and 65535",
        ),
        (
            &["container", "create", "--name", "other", "-p", "808x:80"],
            "invalid host port",
        ),
        (
            &[
                "container",
                "create",
                "--name",
                "other",
                "-p",
                "8081:80/sctp",
            ],
            "unknown protocol",
        ),
        (
            &[
                "container",
                "create",
                "--name",
                "other",
                "--netns",
                "/run/netns/does-not-exist",
            ],
            "does not exist",
        ),
        (
            &[
                "container",
                "create",
                "--name",
                "other",
                "--netns",
                "/etc/hostname",
            ],
            "not a network namespace",
        ),
        (
            &["container", "create", "--name", "bad name"],
            "invalid container name",
        ),
    ];
    for (args, expected) in cases {
        let stderr = refused(&agent, args)?;
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert_eq!(links(&topology.node)?, links_before, "no half-made veth");
    assert_eq!(
        agent.cli_json(&["ports"])?,
        ports_before,
        "no stray map entry"
    );
    assert_eq!(
        std::fs::read_dir(&agent.netns_dir)?.count(),
        netns_before,
        "no stray namespace"
    );
    Ok(())
}

#[test]
fn api_returns_json_errors_with_http_status() -> Result<()> {
    let topology = Topology::new()?;
    let agent = Agent::start(&topology)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = bpfbridge::client::Client::new(&agent.socket);
    runtime.block_on(async {
        use bpfbridge::client::ClientError;
        use hyper::{Method, StatusCode};
        let status = |r: Result<_, ClientError>| match r {
            Err(ClientError::Api { status, .. }) => status,
            other => panic!("expected an API error, got {other:?}"),
        };
        assert_eq!(
            status(client.raw(Method::DELETE, "/containers/nope", None).await),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(
                client
                    .raw(Method::POST, "/containers", Some(b"{not json".to_vec()))
                    .await
            ),
            StatusCode::BAD_REQUEST
        );
        let unknown_field = br#"{"Name":"x","Bogus":1}"#.to_vec();
        assert_eq!(
            status(
                client
                    .raw(Method::POST, "/containers", Some(unknown_field))
                    .await
            ),
            StatusCode::BAD_REQUEST
        );
        let bad_port =
            br#"{"Name":"x","HostConfig":{"PortBindings":{"80/tcp":[{"HostPort":"99999"}]}}}"#
                .to_vec();
        assert_eq!(
            status(
                client
                    .raw(Method::POST, "/containers", Some(bad_port))
                    .await
            ),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(client.raw(Method::GET, "/nope", None).await),
            StatusCode::NOT_FOUND
        );
        let ok = br#"{"Name":"x"}"#.to_vec();
        client
            .raw(Method::POST, "/containers", Some(ok.clone()))
            .await
            .expect("created");
        assert_eq!(
            status(client.raw(Method::POST, "/containers", Some(ok)).await),
            StatusCode::CONFLICT
        );
    });
    Ok(())
}

#[test]
fn cli_without_an_agent_says_so() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = std::process::Command::new(bpfbridge_bin())
        .arg("--socket")
        .arg(dir.path().join("none.sock"))
        .args(["container", "ls"])
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr)?;
    assert!(
        stderr.contains("cannot connect to the bpfbridge agent")
            && stderr.contains("is the agent running?"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1);
    Ok(())
}
