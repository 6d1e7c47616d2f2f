//! The commands: each a few calls to the agent's `/cni/attachments`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use hyper::StatusCode;
use serde::{Deserialize, Serialize};

use super::{
    CURRENT_VERSION, CniError, CniResult, Command, ErrorCode, Invocation, NetConf,
    SUPPORTED_VERSIONS,
};
use crate::{
    client::{Client, ClientError},
    model::{CniAttachRequest, CniAttachment},
};

/// Runs one command; returns what goes to stdout on success (nothing for DEL, CHECK, GC
/// and STATUS).
pub async fn run(invocation: &Invocation, stdin: &[u8]) -> Result<Option<String>, CniError> {
    if invocation.command == Command::Version {
        return version(stdin).map(Some);
    }
    let conf = NetConf::parse(stdin, invocation.command)?;
    let agent = Client::new(&conf.agent_socket);
    let pending = PendingDeletions::new(&conf.state_dir);
    match invocation.command {
        Command::Add => add(invocation, &conf, &agent, &pending).await.map(Some),
        Command::Del => del(invocation, &agent, &pending).await.map(|()| None),
        Command::Check => check(invocation, &conf, &agent, &pending)
            .await
            .map(|()| None),
        Command::Status => status(&agent, &pending).await.map(|()| None),
        Command::Gc => gc(&conf, &agent, &pending).await.map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

fn version(stdin: &[u8]) -> Result<String, CniError> {
    #[derive(Deserialize)]
    struct VersionInput {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    // VERSION may come with no input at all.
    let asked = if stdin.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<VersionInput>(stdin)
            .map_err(|e| {
                CniError::new(
                    ErrorCode::Decoding,
                    "failed to decode version input",
                    e.to_string(),
                )
            })?
            .cni_version
    };
    Ok(serde_json::json!({
        "cniVersion": asked.unwrap_or_else(|| CURRENT_VERSION.into()),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string())
}

/// The error of a call the agent did not answer, or answered with an error.
fn agent_error(what: &str, error: ClientError) -> CniError {
    match error {
        ClientError::Connect { .. } => CniError::new(
            ErrorCode::TryAgainLater,
            "the bpfbridge agent is not running",
            format!("{what}: {error}"),
        ),
        ClientError::Api { status, message } if status == StatusCode::BAD_REQUEST => {
            CniError::new(ErrorCode::InvalidConfig, "invalid network config", message)
        }
        ClientError::Api { status, message } if status == StatusCode::NOT_FOUND => {
            CniError::new(ErrorCode::UnknownContainer, what, message)
        }
        other => CniError::new(ErrorCode::Internal, what, other.to_string()),
    }
}

fn attachment_path(container_id: &str, ifname: &str) -> String {
    format!("/cni/attachments/{container_id}/{ifname}")
}

/// Removes an attachment; one that is not there is removed already.
async fn detach(agent: &Client, container_id: &str, ifname: &str) -> Result<(), ClientError> {
    match agent.delete(&attachment_path(container_id, ifname)).await {
        Err(ClientError::Api { status, .. }) if status == StatusCode::NOT_FOUND => Ok(()),
        other => other,
    }
}

/// DELs that the agent has not seen (it was down), one file each in the plugin's state
/// directory, until a later call reaches the agent.
struct PendingDeletions {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct PendingDeletion {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

impl PendingDeletions {
    fn new(state_dir: &Path) -> Self {
        PendingDeletions {
            dir: state_dir.join("pending-del"),
        }
    }

    fn path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join(format!("{container_id}.{ifname}.json"))
    }

    fn record(&self, container_id: &str, ifname: &str) -> Result<(), CniError> {
        let io = |e: std::io::Error| {
            CniError::new(
                ErrorCode::Io,
                "recording a deletion for the agent",
                format!("{}: {e}", self.dir.display()),
            )
        };
        fs::create_dir_all(&self.dir).map_err(io)?;
        let body = serde_json::to_vec(&PendingDeletion {
            container_id: container_id.into(),
            ifname: ifname.into(),
        })
        .map_err(|e| CniError::new(ErrorCode::Internal, "encoding a deletion", e.to_string()))?;
        let path = self.path(container_id, ifname);
        let partial = path.with_extension("partial");
        fs::write(&partial, body).map_err(io)?;
        fs::rename(&partial, &path).map_err(io)
    }

    fn forget(&self, container_id: &str, ifname: &str) {
        let _ = fs::remove_file(self.path(container_id, ifname));
    }

    /// Sends every recorded deletion to the agent; stops at the first it cannot send.
    async fn replay(&self, agent: &Client) -> Result<(), ClientError> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Ok(pending) = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<PendingDeletion>(&b).ok())
                .ok_or(())
            else {
                continue;
            };
            detach(agent, &pending.container_id, &pending.ifname).await?;
            let _ = fs::remove_file(&path);
        }
        Ok(())
    }
}

async fn add(
    invocation: &Invocation,
    conf: &NetConf,
    agent: &Client,
    pending: &PendingDeletions,
) -> Result<String, CniError> {
    if !Path::new(&invocation.netns).exists() {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            "invalid CNI environment variables",
            format!("CNI_NETNS {}: no such file", invocation.netns),
        ));
    }
    let previous = conf
        .prev_result
        .clone()
        .map(serde_json::from_value::<CniResult>)
        .transpose()
        .map_err(|e| {
            CniError::new(
                ErrorCode::Decoding,
                "failed to decode prevResult",
                e.to_string(),
            )
        })?;
    let (ip, ipv6) = conf.requested_ips()?;
    let request = CniAttachRequest {
        container_id: invocation.container_id.clone(),
        ifname: invocation.ifname.clone(),
        netns: invocation.netns.clone(),
        network: conf.network.clone(),
        port_mappings: conf.port_mappings()?,
        ip,
        ipv6,
        mac: conf.requested_mac()?,
    };
    pending
        .replay(agent)
        .await
        .map_err(|e| agent_error("sending earlier deletions", e))?;
    let attachment: CniAttachment = agent
        .post("/cni/attachments", &request)
        .await
        .map_err(|e| agent_error("attaching the container", e))?;
    let ours = CniResult::of_attachment(&attachment, &conf.dns);
    let result = match previous {
        Some(previous) => ours.after(previous),
        None => ours,
    };
    Ok(serde_json::to_string(&result.in_version(&conf.cni_version)).expect("a result serializes"))
}

/// DEL succeeds whatever is missing; when the agent is down the deletion waits in the state
/// directory for the next call that reaches it.
async fn del(
    invocation: &Invocation,
    agent: &Client,
    pending: &PendingDeletions,
) -> Result<(), CniError> {
    let (container_id, ifname) = (&invocation.container_id, &invocation.ifname);
    let sent = match pending.replay(agent).await {
        Ok(()) => detach(agent, container_id, ifname).await,
        Err(e) => Err(e),
    };
    match sent {
        Ok(()) => {
            pending.forget(container_id, ifname);
            Ok(())
        }
        Err(ClientError::Connect { .. }) => pending.record(container_id, ifname),
        Err(e) => Err(agent_error("detaching the container", e)),
    }
}

async fn check(
    invocation: &Invocation,
    conf: &NetConf,
    agent: &Client,
    pending: &PendingDeletions,
) -> Result<(), CniError> {
    let previous: CniResult = conf
        .prev_result
        .clone()
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidConfig,
                "invalid network config",
                "CHECK needs prevResult",
            )
        })
        .and_then(|p| {
            serde_json::from_value(p).map_err(|e| {
                CniError::new(
                    ErrorCode::Decoding,
                    "failed to decode prevResult",
                    e.to_string(),
                )
            })
        })?;
    pending
        .replay(agent)
        .await
        .map_err(|e| agent_error("sending earlier deletions", e))?;
    let attachment: CniAttachment = agent
        .get(&attachment_path(
            &invocation.container_id,
            &invocation.ifname,
        ))
        .await
        .map_err(|e| agent_error("no such attachment", e))?;
    let mut problems = attachment.problems.clone();
    // Compared as sets of networks: in any order, however the runtime wrote them.
    let mut expected: Vec<String> = attachment
        .addresses()
        .iter()
        .map(ToString::to_string)
        .collect();
    expected.sort();
    let mut given: Vec<String> = previous
        .addresses_of(&invocation.ifname, &invocation.netns)
        .into_iter()
        .map(|a| {
            a.parse::<ipnet::IpNet>()
                .map_or_else(|_| a.to_string(), |n| n.to_string())
        })
        .collect();
    given.sort();
    if given.is_empty() {
        problems.push(format!(
            "prevResult has no address for interface {} in {}",
            invocation.ifname, invocation.netns
        ));
    } else if given != expected {
        problems.push(format!(
            "prevResult gives {} the addresses {}, the agent {}",
            invocation.ifname,
            given.join(", "),
            expected.join(", ")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::Internal,
            "the attachment is not as expected",
            problems.join("; "),
        ))
    }
}

async fn status(agent: &Client, pending: &PendingDeletions) -> Result<(), CniError> {
    let reached = match pending.replay(agent).await {
        Ok(()) => agent.raw(hyper::Method::GET, "/info", None).await.map(drop),
        Err(e) => Err(e),
    };
    reached.map_err(|e| {
        CniError::new(
            ErrorCode::NotAvailable,
            "the bpfbridge agent is not available",
            e.to_string(),
        )
    })
}

/// Removes this network's attachments that are not in `cni.dev/valid-attachments`.
async fn gc(conf: &NetConf, agent: &Client, pending: &PendingDeletions) -> Result<(), CniError> {
    pending
        .replay(agent)
        .await
        .map_err(|e| agent_error("sending earlier deletions", e))?;
    let valid = conf.valid_attachments.clone().unwrap_or_default();
    let attachments: Vec<CniAttachment> = agent
        .get("/cni/attachments")
        .await
        .map_err(|e| agent_error("listing attachments", e))?;
    let mut errors = Vec::new();
    for attachment in attachments {
        let still_valid = valid
            .iter()
            .any(|v| v.container_id == attachment.container_id && v.ifname == attachment.ifname);
        if attachment.network != conf.network.name || still_valid {
            continue;
        }
        if let Err(e) = detach(agent, &attachment.container_id, &attachment.ifname).await {
            errors.push(format!(
                "{} {}: {e}",
                attachment.container_id, attachment.ifname
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::Internal,
            "removing stale attachments",
            errors.join("; "),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_answers_with_the_asked_version() {
        let answer: serde_json::Value =
            serde_json::from_str(&version(br#"{"cniVersion": "0.4.0"}"#).unwrap()).unwrap();
        assert_eq!(answer["cniVersion"], "0.4.0");
        assert_eq!(
            answer["supportedVersions"],
            serde_json::json!(["0.4.0", "1.0.0", "1.1.0"])
        );
        let bare: serde_json::Value = serde_json::from_str(&version(b"").unwrap()).unwrap();
        assert_eq!(bare["cniVersion"], CURRENT_VERSION);
        assert_eq!(version(b"{nope").unwrap_err().code, ErrorCode::Decoding);
    }

    #[tokio::test]
    async fn del_while_the_agent_is_down_waits_in_the_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Client::new(&dir.path().join("no-agent.sock"));
        let pending = PendingDeletions::new(dir.path());
        let invocation = Invocation {
            command: Command::Del,
            container_id: "abc".into(),
            netns: String::new(),
            ifname: "eth0".into(),
        };
        del(&invocation, &agent, &pending).await.unwrap();
        del(&invocation, &agent, &pending).await.unwrap();
        assert!(pending.path("abc", "eth0").exists());
        let replay = pending.replay(&agent).await.unwrap_err();
        assert!(matches!(replay, ClientError::Connect { .. }), "{replay}");
        let error = status(&agent, &pending).await.unwrap_err();
        assert_eq!(error.code, ErrorCode::NotAvailable);
    }
}
