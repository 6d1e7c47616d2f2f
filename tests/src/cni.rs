//! Driving `bpfbridge-cni` as a container runtime does: the `CNI_*` environment, the
//! plugin configuration on stdin, the result or the CNI error on stdout.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, ensure};
use serde_json::{Value, json};

use crate::bpfbridge_bin;

/// The plugin binary next to `bpfbridge`.
pub fn plugin_bin() -> PathBuf {
    bpfbridge_bin().with_file_name("bpfbridge-cni")
}

/// What one invocation gave: whether it succeeded and its stdout, parsed when there is one.
#[derive(Debug)]
pub struct Outcome {
    pub success: bool,
    pub output: Value,
    pub stderr: String,
}

impl Outcome {
    /// The result of a successful command; an error with the CNI error otherwise.
    pub fn ok(self) -> Result<Value> {
        ensure!(
            self.success,
            "the plugin failed: {} {}",
            self.output,
            self.stderr
        );
        Ok(self.output)
    }

    /// The CNI error code of a failed command.
    pub fn error_code(&self) -> Option<u64> {
        (!self.success)
            .then(|| self.output["code"].as_u64())
            .flatten()
    }
}

/// The plugin as one runtime on one node calls it: the agent's socket, the plugin's state
/// directory and the namespace the runtime runs in (the plugin is executed there).
pub struct Plugin {
    pub agent_socket: PathBuf,
    pub state_dir: PathBuf,
    pub runtime_netns: PathBuf,
}

impl Plugin {
    /// A plugin configuration for network `name` on `subnet`, at `version`, with the
    /// plugin's paths filled in; `extra` keys are merged in.
    pub fn config(&self, version: &str, name: &str, subnet: &str, extra: Value) -> Value {
        let mut config = json!({
            "cniVersion": version,
            "name": name,
            "type": "bpfbridge-cni",
            "subnet": subnet,
            "agentSocket": self.agent_socket,
            "stateDir": self.state_dir,
        });
        if let (Some(config), Value::Object(extra)) = (config.as_object_mut(), extra) {
            config.extend(extra);
        }
        config
    }

    /// Runs one command with the environment a runtime sets and `stdin`.
    pub fn call_raw(
        &self,
        command: &str,
        container_id: &str,
        netns: &Path,
        ifname: &str,
        stdin: &[u8],
    ) -> Result<Outcome> {
        let mut process = Command::new(plugin_bin());
        process
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", plugin_bin().parent().context("bin dir")?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !container_id.is_empty() {
            process.env("CNI_CONTAINERID", container_id);
        }
        if !netns.as_os_str().is_empty() {
            process.env("CNI_NETNS", netns);
        }
        if !ifname.is_empty() {
            process.env("CNI_IFNAME", ifname);
        }
        let mut child = crate::spawn_in_netns(&mut process, &self.runtime_netns)?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(stdin)
            .context("writing the config")?;
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let output = if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout).with_context(|| format!("plugin output {stdout:?}"))?
        };
        Ok(Outcome {
            success: out.status.success(),
            output,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs one command with `config` on stdin.
    pub fn call(
        &self,
        command: &str,
        container_id: &str,
        netns: &Path,
        ifname: &str,
        config: &Value,
    ) -> Result<Outcome> {
        self.call_raw(
            command,
            container_id,
            netns,
            ifname,
            &serde_json::to_vec(config)?,
        )
    }
}

/// `config` with `prevResult` set, as a runtime passes it to CHECK and DEL.
pub fn with_prev_result(config: &Value, result: &Value) -> Value {
    let mut config = config.clone();
    config["prevResult"] = result.clone();
    config
}
