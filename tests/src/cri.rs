//! Debian's containerd 1.6 with its CRI plugin, run by a test in a node namespace with its
//! own root, state, socket and configuration (the CNI `bin_dir` and `conf_dir` the test
//! fills), its sandbox image imported from a tarball the test builds (static busybox as the
//! pause process: no registry), and a CRI client that drives it over gRPC as kubelet does.
//!
//! The client is gRPC on HTTP/2 over the unix socket with the few CRI `runtime.v1` messages
//! the tests send, encoded by prost from the field numbers of cri-api's `api.proto`: the
//! generated crates need `protoc` to build.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use bpfbridge_lab::{
    cmd,
    mounts::{remove_cgroup_parent, unmount_below},
    process::stop_child_within,
};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::spawn_in_netns;

pub const CONTAINERD: &str = "/usr/bin/containerd";
pub const CTR: &str = "/usr/bin/ctr";

/// Whether Debian's containerd (and its shim and runc) is installed.
pub fn available() -> bool {
    [
        CONTAINERD,
        CTR,
        "/usr/bin/containerd-shim-runc-v2",
        "/usr/sbin/runc",
    ]
    .iter()
    .all(|p| Path::new(p).exists())
}

/// The image the sandboxes run.
pub const SANDBOX_IMAGE: &str = "bpfbridge.test/pause:1";

/// The CRI `runtime.v1` messages the tests use (field numbers from cri-api's api.proto).
pub mod v1 {
    use std::collections::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct VersionRequest {
        #[prost(string, tag = "1")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct VersionResponse {
        #[prost(string, tag = "1")]
        pub version: String,
        #[prost(string, tag = "2")]
        pub runtime_name: String,
        #[prost(string, tag = "3")]
        pub runtime_version: String,
        #[prost(string, tag = "4")]
        pub runtime_api_version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxMetadata {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub uid: String,
        #[prost(string, tag = "3")]
        pub namespace: String,
        #[prost(uint32, tag = "4")]
        pub attempt: u32,
    }

    /// `Protocol`: TCP = 0, UDP = 1.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PortMapping {
        #[prost(int32, tag = "1")]
        pub protocol: i32,
        #[prost(int32, tag = "2")]
        pub container_port: i32,
        #[prost(int32, tag = "3")]
        pub host_port: i32,
        #[prost(string, tag = "4")]
        pub host_ip: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LinuxPodSandboxConfig {
        #[prost(string, tag = "1")]
        pub cgroup_parent: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxConfig {
        #[prost(message, optional, tag = "1")]
        pub metadata: Option<PodSandboxMetadata>,
        #[prost(string, tag = "2")]
        pub hostname: String,
        #[prost(string, tag = "3")]
        pub log_directory: String,
        #[prost(message, repeated, tag = "5")]
        pub port_mappings: Vec<PortMapping>,
        #[prost(map = "string, string", tag = "6")]
        pub labels: HashMap<String, String>,
        #[prost(map = "string, string", tag = "7")]
        pub annotations: HashMap<String, String>,
        #[prost(message, optional, tag = "8")]
        pub linux: Option<LinuxPodSandboxConfig>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RunPodSandboxRequest {
        #[prost(message, optional, tag = "1")]
        pub config: Option<PodSandboxConfig>,
        #[prost(string, tag = "2")]
        pub runtime_handler: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RunPodSandboxResponse {
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
    }

    /// `StopPodSandboxRequest`, `RemovePodSandboxRequest`: the same one field.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxIdRequest {
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Empty {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxStatusRequest {
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
        #[prost(bool, tag = "2")]
        pub verbose: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxNetworkStatus {
        #[prost(string, tag = "1")]
        pub ip: String,
        /// The pod's other addresses (a dual-stack pod's IPv6 one).
        #[prost(message, repeated, tag = "2")]
        pub additional_ips: Vec<PodIp>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodIp {
        #[prost(string, tag = "1")]
        pub ip: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxStatus {
        #[prost(string, tag = "1")]
        pub id: String,
        /// `PodSandboxState`: READY = 0, NOTREADY = 1.
        #[prost(int32, tag = "3")]
        pub state: i32,
        #[prost(message, optional, tag = "5")]
        pub network: Option<PodSandboxNetworkStatus>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxStatusResponse {
        #[prost(message, optional, tag = "1")]
        pub status: Option<PodSandboxStatus>,
        #[prost(map = "string, string", tag = "2")]
        pub info: HashMap<String, String>,
    }
}

/// A CRI client on containerd's socket: one HTTP/2 connection per call, as simple as the
/// tests need.
pub struct CriClient {
    socket: PathBuf,
}

impl CriClient {
    pub fn new(socket: &Path) -> Self {
        CriClient {
            socket: socket.to_path_buf(),
        }
    }

    /// One unary call of `runtime.v1.RuntimeService`.
    pub fn call<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<Resp> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(self.unary(method, request))
    }

    async fn unary<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<Resp> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .with_context(|| format!("connecting to {}", self.socket.display()))?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .context("HTTP/2 handshake")?;
        let driver = tokio::spawn(connection);
        // A gRPC message: not compressed, its length, the protobuf bytes.
        let message = request.encode_to_vec();
        let mut frame = Vec::with_capacity(5 + message.len());
        frame.push(0);
        frame.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
        frame.extend_from_slice(&message);
        let http = hyper::Request::builder()
            .method("POST")
            .uri(format!(
                "http://localhost/runtime.v1.RuntimeService/{method}"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from(frame)))?;
        let response = tokio::time::timeout(Duration::from_secs(120), sender.send_request(http))
            .await
            .with_context(|| format!("{method}: no answer in 120 s"))??;
        let headers = response.headers().clone();
        let collected = response.into_body().collect().await?;
        driver.abort();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        // A trailers-only answer (an error) has the status in the headers.
        let field = |name: &str| {
            trailers
                .get(name)
                .or_else(|| headers.get(name))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let status = field("grpc-status");
        ensure!(
            status == "0",
            "{method}: gRPC status {status}: {}",
            field("grpc-message")
        );
        let body = collected.to_bytes();
        ensure!(body.len() >= 5, "{method}: no message in the answer");
        let length = u32::from_be_bytes(body[1..5].try_into()?) as usize;
        ensure!(body.len() >= 5 + length, "{method}: truncated answer");
        Ok(Resp::decode(&body[5..5 + length])?)
    }

    pub fn version(&self) -> Result<v1::VersionResponse> {
        self.call(
            "Version",
            &v1::VersionRequest {
                version: "v1".into(),
            },
        )
    }

    /// Runs a sandbox named `name` with `port_mappings` (tcp `(host, container)` pairs), its
    /// cgroup under `cgroup_parent`; returns its id.
    pub fn run_pod_sandbox(
        &self,
        name: &str,
        port_mappings: &[(u16, u16)],
        cgroup_parent: &str,
        log_directory: &Path,
    ) -> Result<String> {
        let config = v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_directory.display().to_string(),
            port_mappings: port_mappings
                .iter()
                .map(|&(host, container)| v1::PortMapping {
                    protocol: 0,
                    container_port: container.into(),
                    host_port: host.into(),
                    host_ip: String::new(),
                })
                .collect(),
            linux: Some(v1::LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent.into(),
            }),
            ..Default::default()
        };
        let response: v1::RunPodSandboxResponse = self.call(
            "RunPodSandbox",
            &v1::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            },
        )?;
        Ok(response.pod_sandbox_id)
    }

    pub fn pod_sandbox_status(&self, id: &str) -> Result<v1::PodSandboxStatusResponse> {
        self.call(
            "PodSandboxStatus",
            &v1::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            },
        )
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let _: v1::Empty = self.call(
            "StopPodSandbox",
            &v1::PodSandboxIdRequest {
                pod_sandbox_id: id.into(),
            },
        )?;
        Ok(())
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let _: v1::Empty = self.call(
            "RemovePodSandbox",
            &v1::PodSandboxIdRequest {
                pod_sandbox_id: id.into(),
            },
        )?;
        Ok(())
    }
}

/// Writes an OCI image layout tarball of one layer, a static busybox, whose entrypoint
/// sleeps: the pause process of the sandboxes, and podman's container. `ctr images import`
/// and `podman load` take it as `SANDBOX_IMAGE` (the `io.containerd.image.name` and
/// `org.opencontainers.image.ref.name` annotations).
pub fn write_sandbox_image(dir: &Path) -> Result<PathBuf> {
    let layout = dir.join("image");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let rootfs = dir.join("image-rootfs");
    fs::create_dir_all(rootfs.join("bin"))?;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox-static is not installed")?;
    fs::copy(busybox, rootfs.join("bin/busybox"))?;
    let layer = dir.join("layer.tar");
    cmd::run(
        Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&layer)
            .arg("bin"),
    )?;
    let add_blob = |bytes: &[u8]| -> Result<(String, usize)> {
        let digest = cmd::sha256_hex(bytes)?;
        fs::write(blobs.join(&digest), bytes)?;
        Ok((format!("sha256:{digest}"), bytes.len()))
    };
    let (layer_digest, layer_size) = add_blob(&fs::read(&layer)?)?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/busybox", "sleep", "2147483647"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = add_blob(&serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = add_blob(&serde_json::to_vec(&manifest)?)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size,
                       "annotations": {"io.containerd.image.name": SANDBOX_IMAGE,
                                       "org.opencontainers.image.ref.name": SANDBOX_IMAGE}}],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion": "1.0.0"}"#,
    )?;
    let tarball = dir.join("pause.tar");
    cmd::run(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&tarball)
            .args(["oci-layout", "index.json", "blobs"]),
    )?;
    Ok(tarball)
}

/// A CNI `loopback` plugin for containerd, which sets up `lo` through it in every sandbox:
/// the reference one is not installed here.
const LOOPBACK_PLUGIN: &str = r#"#!/bin/sh
# Brings lo up in $CNI_NETNS on ADD (the reference loopback plugin's job).
input=$(cat)
version=$(printf '%s' "$input" | sed -n 's/.*"cniVersion" *: *"\([^"]*\)".*/\1/p')
case "$CNI_COMMAND" in
ADD)
    nsenter --net="$CNI_NETNS" ip link set lo up || exit 1
    printf '{"cniVersion":"%s","interfaces":[{"name":"lo","sandbox":"%s"}],"ips":[{"address":"127.0.0.1/8","interface":0}]}\n' "$version" "$CNI_NETNS"
    ;;
VERSION)
    printf '{"cniVersion":"%s","supportedVersions":["0.4.0","1.0.0"]}\n' "$version"
    ;;
esac
exit 0
"#;

/// containerd in a node namespace, with everything under a directory of its own.
pub struct Containerd {
    daemon: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// The CNI `bin_dir` and `conf_dir`.
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    /// The cgroup the sandboxes' cgroups go under.
    pub cgroup_parent: String,
}

impl Containerd {
    /// Starts containerd in the namespace at `netns` with `conflist` as its CNI
    /// configuration and `plugin` installed in its bin dir; imports the sandbox image.
    pub fn start(netns: &Path, plugin: &Path, conflist: &serde_json::Value) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bpfbt-containerd-")
            .tempdir()?;
        let root = dir.path();
        let cni_bin_dir = root.join("cni-bin");
        let cni_conf_dir = root.join("cni-conf");
        fs::create_dir_all(&cni_bin_dir)?;
        fs::create_dir_all(&cni_conf_dir)?;
        std::os::unix::fs::symlink(plugin, cni_bin_dir.join("bpfbridge-cni"))?;
        let loopback = cni_bin_dir.join("loopback");
        fs::write(&loopback, LOOPBACK_PLUGIN)?;
        fs::set_permissions(
            &loopback,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        fs::write(
            cni_conf_dir.join("10-bpfbridge.conflist"),
            serde_json::to_vec_pretty(conflist)?,
        )?;
        let socket = root.join("containerd.sock");
        let cgroup_parent = format!("/{}", crate::unique("cri"));
        let config = format!(
            r#"version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
            root = root.display(),
            socket = socket.display(),
            bin = cni_bin_dir.display(),
            conf = cni_conf_dir.display(),
        );
        fs::write(root.join("config.toml"), config)?;
        let log = fs::File::create(root.join("containerd.log"))?;
        let mut command = Command::new(CONTAINERD);
        command
            .arg("--config")
            .arg(root.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let daemon = spawn_in_netns(&mut command, netns).context("spawning containerd")?;
        let image = write_sandbox_image(root)?;
        let mut containerd = Containerd {
            daemon: Some(daemon),
            dir,
            socket,
            cni_bin_dir,
            cni_conf_dir,
            cgroup_parent,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while containerd.client().version().is_err() {
            if let Some(status) = containerd.daemon.as_mut().and_then(|d| d.try_wait().ok()?) {
                bail!("containerd exited with {status}: {}", containerd.log());
            }
            if Instant::now() > deadline {
                bail!("containerd not ready after 60 s: {}", containerd.log());
            }
            thread::sleep(Duration::from_millis(200));
        }
        cmd::run(
            Command::new(CTR)
                .arg("--address")
                .arg(&containerd.socket)
                .args(["--namespace", "k8s.io", "images", "import"])
                .args(["--snapshotter", "native"])
                .arg(&image),
        )
        .context("importing the sandbox image")?;
        Ok(containerd)
    }

    pub fn client(&self) -> CriClient {
        CriClient::new(&self.socket)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Runs a sandbox with tcp `port_mappings`; returns its id.
    pub fn run_pod(&self, name: &str, port_mappings: &[(u16, u16)]) -> Result<String> {
        let logs = self.dir.path().join("pod-logs").join(name);
        fs::create_dir_all(&logs)?;
        self.client()
            .run_pod_sandbox(name, port_mappings, &self.cgroup_parent, &logs)
            .with_context(|| format!("RunPodSandbox {name}: {}", self.log_tail()))
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// The shims this containerd started (they outlive it by design), found by the socket
    /// they were given.
    fn shims(&self) -> Vec<i32> {
        let needle = self.socket.display().to_string();
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("containerd-shim-runc-v2") && c.contains(&needle)
                })
            })
            .collect()
    }

    /// Stops containerd and the shims it started, and removes its mounts, the sandboxes'
    /// cgroups and its directory.
    pub fn stop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            stop_child_within(daemon, Duration::from_secs(10));
        }
        for pid in self.shims() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        unmount_below(self.dir.path());
        remove_cgroup_parent(&self.cgroup_parent);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}
