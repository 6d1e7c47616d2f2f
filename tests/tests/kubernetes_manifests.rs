//! The DaemonSet's init scripts (deploy/kubernetes/node-info.sh, install-cni.sh), run with
//! `sh` against a fake `kubectl` that prints what an API server prints for the script's
//! query over a dual-stack node, a node of a cluster that sets `spec.podCIDR` alone, and
//! nodes with an IPv6 pod CIDR but no IPv6 InternalIP. Checks the pod CIDRs and
//! `--peer-node` flags written (each a flag the agent takes) and the conflist installed:
//! a host-local range set per pod CIDR, which the plugin reads as a dual-stack network.
//! Where a `kubectl` is installed, its own JSONPath evaluation of the script's query over
//! the same Nodes must give the fake's lines. No cluster, no root, no namespace.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, Result, ensure};
use bpfbridge::{
    cni::{Command as CniCommand, NetConf},
    peers::PeerNode,
};
use serde_json::{Value, json};

/// The Nodes of the fake cluster, as the API server serves them.
fn nodes() -> Value {
    let node = |name: &str, pod_cidr: &str, pod_cidrs: &[&str], addresses: &[&str]| {
        let mut spec = json!({ "podCIDR": pod_cidr });
        if !pod_cidrs.is_empty() {
            spec["podCIDRs"] = json!(pod_cidrs);
        }
        let mut status_addresses: Vec<Value> = addresses
            .iter()
            .map(|a| json!({"type": "InternalIP", "address": a}))
            .collect();
        status_addresses.push(json!({"type": "Hostname", "address": name}));
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": name },
            "spec": spec,
            "status": { "addresses": status_addresses },
        })
    };
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            node("dual-1", "10.244.1.0/24", &["10.244.1.0/24", "fd00:10:244:1::/64"],
                 &["192.0.2.11", "2001:db8::11"]),
            node("dual-2", "10.244.2.0/24", &["10.244.2.0/24", "fd00:10:244:2::/64"],
                 &["192.0.2.12", "2001:db8::12"]),
            // podCIDR alone (a cluster, or an API server, without podCIDRs).
            node("single", "10.244.3.0/24", &[], &["192.0.2.13"]),
            // An IPv6 pod CIDR but no IPv6 InternalIP: nothing routes that CIDR.
            node("v4-address", "10.244.4.0/24", &["10.244.4.0/24", "fd00:10:244:4::/64"],
                 &["192.0.2.14"]),
        ],
    })
}

/// What `kubectl get nodes -o jsonpath=...` prints for node-info.sh's query over
/// [`nodes`]: name;podCIDRs;podCIDR;InternalIPs, a line per node.
const QUERY_OUTPUT: &str = "\
dual-1;10.244.1.0/24 fd00:10:244:1::/64;10.244.1.0/24;192.0.2.11 2001:db8::11
dual-2;10.244.2.0/24 fd00:10:244:2::/64;10.244.2.0/24;192.0.2.12 2001:db8::12
single;;10.244.3.0/24;192.0.2.13
v4-address;10.244.4.0/24 fd00:10:244:4::/64;10.244.4.0/24;192.0.2.14
";

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// A directory with a fake `kubectl` that prints [`QUERY_OUTPUT`] whatever it is asked.
fn fake_kubectl(dir: &Path) -> Result<PathBuf> {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin)?;
    fs::write(dir.join("query-output"), QUERY_OUTPUT)?;
    let kubectl = bin.join("kubectl");
    fs::write(
        &kubectl,
        format!("#!/bin/sh\ncat '{}'\n", dir.join("query-output").display()),
    )?;
    Command::new("chmod").arg("+x").arg(&kubectl).status()?;
    Ok(bin)
}

/// Runs node-info.sh for `node` into a new directory under `dir`; that directory.
fn node_info(dir: &Path, bin: &Path, node: &str) -> Result<PathBuf> {
    let (out, run) = run_node_info(dir, bin, node)?;
    ensure!(run.status.success(), "node-info.sh for {node}: {run:?}");
    Ok(out)
}

/// Runs node-info.sh for `node` (the fake kubectl in `bin` first on the PATH) into a new
/// directory under `dir`; that directory and how the script ended.
fn run_node_info(dir: &Path, bin: &Path, node: &str) -> Result<(PathBuf, Output)> {
    let out = dir.join(node);
    fs::create_dir_all(&out)?;
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = Command::new("sh")
        .arg(manifests().join("node-info.sh"))
        .arg(&out)
        .env("NODE_NAME", node)
        .env("PATH", path)
        .output()?;
    Ok((out, run))
}

fn lines(path: &Path) -> Result<Vec<String>> {
    Ok(fs::read_to_string(path)
        .with_context(|| path.display().to_string())?
        .lines()
        .map(str::to_string)
        .collect())
}

/// The conflist template of configmap.yaml: the block under `10-bpfbridge.conflist: |`.
fn conflist_template() -> Result<String> {
    let configmap = fs::read_to_string(manifests().join("configmap.yaml"))?;
    let mut block = configmap
        .lines()
        .skip_while(|line| line.trim() != "10-bpfbridge.conflist: |")
        .skip(1);
    let indent = "    ";
    let mut template = String::new();
    for line in block.by_ref() {
        if !line.is_empty() && !line.starts_with(indent) {
            break;
        }
        template.push_str(line.strip_prefix(indent).unwrap_or(line));
        template.push('\n');
    }
    ensure!(!template.is_empty(), "no conflist in configmap.yaml");
    Ok(template)
}

/// Runs install-cni.sh with `node_info`'s pod CIDRs; the conflist it installs, as the
/// plugin reads it (the runtime puts the list's version and name into the plugin's part).
fn install_cni(dir: &Path, node_info: &Path) -> Result<(Value, NetConf)> {
    let (bin_dir, conf_dir) = (dir.join("opt-cni-bin"), dir.join("etc-cni-net.d"));
    fs::create_dir_all(&bin_dir)?;
    fs::create_dir_all(&conf_dir)?;
    let (plugin, template) = (dir.join("bpfbridge-cni"), dir.join("template"));
    fs::write(&plugin, "the plugin")?;
    fs::write(&template, conflist_template()?)?;
    let run = Command::new("sh")
        .arg(manifests().join("install-cni.sh"))
        .env("PLUGIN", &plugin)
        .env("TEMPLATE", &template)
        .env("NODE_INFO", node_info)
        .env("CNI_BIN_DIR", &bin_dir)
        .env("CNI_CONF_DIR", &conf_dir)
        .output()?;
    ensure!(run.status.success(), "install-cni.sh: {run:?}");
    assert_eq!(
        fs::read_to_string(bin_dir.join("bpfbridge-cni"))?,
        "the plugin"
    );
    let conflist: Value =
        serde_json::from_str(&fs::read_to_string(conf_dir.join("10-bpfbridge.conflist"))?)?;
    let mut plugin_conf = conflist["plugins"][0].clone();
    plugin_conf["cniVersion"] = conflist["cniVersion"].clone();
    plugin_conf["name"] = conflist["name"].clone();
    let net_conf = NetConf::parse(&serde_json::to_vec(&plugin_conf)?, CniCommand::Add)
        .map_err(|e| anyhow::anyhow!("the plugin refuses the conflist: {e:?}"))?;
    Ok((plugin_conf, net_conf))
}

#[test]
fn a_dual_stack_node_gets_both_pod_cidrs_and_peer_routes_of_both_families() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bin = fake_kubectl(dir.path())?;
    let info = node_info(dir.path(), &bin, "dual-1")?;
    assert_eq!(
        lines(&info.join("pod-cidrs"))?,
        ["10.244.1.0/24", "fd00:10:244:1::/64"]
    );
    let flags = lines(&info.join("peer-flags"))?;
    assert_eq!(
        flags,
        [
            "--peer-node=10.244.2.0/24=192.0.2.12",
            "--peer-node=fd00:10:244:2::/64=2001:db8::12",
            "--peer-node=10.244.3.0/24=192.0.2.13",
            "--peer-node=10.244.4.0/24=192.0.2.14",
        ]
    );
    for flag in &flags {
        let peer = flag.strip_prefix("--peer-node=").context("the flag")?;
        peer.parse::<PeerNode>()
            .map_err(|e| anyhow::anyhow!("the agent refuses {flag}: {e}"))?;
    }

    let (plugin_conf, net_conf) = install_cni(dir.path(), &info)?;
    assert_eq!(
        plugin_conf["ipam"],
        json!({"type": "host-local", "ranges": [
            [{"subnet": "10.244.1.0/24"}],
            [{"subnet": "fd00:10:244:1::/64"}],
        ]})
    );
    assert_eq!(net_conf.network.subnet.as_deref(), Some("10.244.1.0/24"));
    assert_eq!(
        net_conf.network.ipv6_subnet.as_deref(),
        Some("fd00:10:244:1::/64")
    );
    Ok(())
}

#[test]
fn a_node_with_pod_cidr_alone_stays_ipv4() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bin = fake_kubectl(dir.path())?;
    let info = node_info(dir.path(), &bin, "single")?;
    assert_eq!(lines(&info.join("pod-cidrs"))?, ["10.244.3.0/24"]);
    assert_eq!(
        lines(&info.join("peer-flags"))?.len(),
        5,
        "the dual-stack peers' CIDRs of both families, v4-address's IPv4 one"
    );
    let (plugin_conf, net_conf) = install_cni(dir.path(), &info)?;
    assert_eq!(
        plugin_conf["ipam"]["ranges"],
        json!([[{"subnet": "10.244.3.0/24"}]])
    );
    assert_eq!(net_conf.network.subnet.as_deref(), Some("10.244.3.0/24"));
    assert_eq!(net_conf.network.ipv6_subnet, None);

    // A node the API server gives no pod CIDR fails the init container, with the reason.
    fs::write(dir.path().join("query-output"), "bare;;;192.0.2.15\n")?;
    let (_, run) = run_node_info(dir.path(), &bin, "bare")?;
    assert!(!run.status.success());
    assert!(
        String::from_utf8_lossy(&run.stdout).contains("no spec.podCIDRs"),
        "{run:?}"
    );
    Ok(())
}

/// The fake's lines are what kubectl's JSONPath makes of node-info.sh's query: evaluated
/// here per Node (`kubectl label --local` prints each object of a list by the template,
/// offline), the query's `{range .items[*]}...{end}` around it taken off.
#[test]
fn kubectl_evaluates_the_query_to_the_fakes_lines() -> Result<()> {
    let Ok(version) = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
    else {
        eprintln!("skipped: no kubectl to evaluate node-info.sh's JSONPath with");
        return Ok(());
    };
    ensure!(version.status.success(), "kubectl version: {version:?}");
    let script = fs::read_to_string(manifests().join("node-info.sh"))?;
    let query = script
        .split("-o jsonpath='")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .context("the query in node-info.sh")?;
    let per_node = query
        .strip_prefix("{range .items[*]}")
        .and_then(|q| q.strip_suffix("{end}"))
        .context("the query ranges over .items")?;
    let dir = tempfile::tempdir()?;
    let list = dir.path().join("nodes.json");
    fs::write(&list, serde_json::to_vec(&nodes())?)?;
    let out = Command::new("kubectl")
        .args(["label", "--local", "-f"])
        .arg(&list)
        .args(["evaluated=yes", "-o"])
        .arg(format!("jsonpath={per_node}"))
        .env("KUBECONFIG", "/dev/null")
        .output()?;
    ensure!(out.status.success(), "kubectl: {out:?}");
    assert_eq!(String::from_utf8(out.stdout)?, QUERY_OUTPUT);
    Ok(())
}
