//! Small helpers for running external commands with errors that say what was run and why it
//! failed (the command line, the exit status and the command's stderr).

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// A command line as a shell would read it, for messages.
pub fn display(cmd: &Command) -> String {
    let mut line = quote(cmd.get_program());
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    line
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` with the terminal's stdio and fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Runs `cmd` with `input` on its stdin and fails unless it exits 0.
pub fn run_with_input(cmd: &mut Command, input: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = spawn(cmd.stdin(Stdio::piped()))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// The SHA-256 of `bytes` in hex, by `sha256sum` (coreutils): the tests' and xtask's OCI
/// images name their blobs by it.
pub fn sha256_hex(bytes: &[u8]) -> Result<String> {
    use std::io::Write as _;
    let mut cmd = Command::new("sha256sum");
    let mut child = spawn(cmd.stdin(Stdio::piped()).stdout(Stdio::piped()))?;
    child.stdin.take().context("stdin")?.write_all(bytes)?;
    let out = child.wait_with_output()?;
    let stdout = check(&cmd, out.status, &out.stdout, &out.stderr)?;
    Ok(stdout
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?
        .to_string())
}

/// Runs `cmd` with no stdin and its output captured; returns its stdout. Fails unless it exits 0,
/// with its stderr in the error.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    check(cmd, out.status, &out.stdout, &out.stderr)
}

/// Runs `program ARGS` with no stdin and returns its whole output; fails unless it exits 0,
/// with the command line and its stderr in the error.
pub fn run_program(program: &str, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{}`", display(&cmd)))?;
    check(&cmd, out.status, &out.stdout, &out.stderr)?;
    Ok(out)
}

/// Like [`output`], but kills the command and fails if it has not finished within `timeout`.
pub fn output_timeout(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    // Drain both pipes on threads so that a chatty command cannot block on a full pipe while we
    // poll for its exit.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = match wait_until(&mut child, deadline)? {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`{}` did not finish within {} s and was killed",
                display(cmd),
                timeout.as_secs_f32()
            );
        }
    };
    // A grandchild could keep the pipes open after the command exited; don't wait for it forever.
    let grace = deadline.max(Instant::now() + Duration::from_secs(1));
    let collect = |rx: mpsc::Receiver<Vec<u8>>| {
        rx.recv_timeout(grace.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    };
    let (stdout, stderr) = (collect(stdout), collect(stderr));
    check(cmd, status, &stdout, &stderr)
}

/// Runs `cmd` silently; true if it could be started and exited 0.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Like [`succeeds`], but a command still running after `timeout` is killed and counts as failed.
pub fn succeeds_timeout(cmd: &mut Command, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let spawned = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = spawned else {
        return false;
    };
    match wait_until(&mut child, deadline) {
        Ok(Some(status)) => status.success(),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            false
        }
    }
}

/// Starts `cmd` in the background.
pub fn spawn(cmd: &mut Command) -> Result<Child> {
    cmd.spawn()
        .with_context(|| format!("could not start `{}`", display(cmd)))
}

/// Replaces this process with `cmd`; returns only if that failed.
pub fn exec(cmd: &mut Command) -> anyhow::Error {
    let err = cmd.exec();
    anyhow!(err).context(format!("could not exec `{}`", display(cmd)))
}

/// Polls `child` until it exits (`Some`) or `deadline` passes (`None`).
pub fn wait_until(child: &mut Child, deadline: Instant) -> Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    }
    rx
}

fn check(cmd: &Command, status: ExitStatus, stdout: &[u8], stderr: &[u8]) -> Result<String> {
    if !status.success() {
        let stderr = String::from_utf8_lossy(stderr);
        let stdout = String::from_utf8_lossy(stdout);
        // Some tools report errors on stdout; show that when stderr has nothing.
        let (label, text) = if stderr.trim().is_empty() {
            ("stdout", stdout.trim())
        } else {
            ("stderr", stderr.trim())
        };
        if text.is_empty() {
            bail!("`{}` failed ({status}) and printed nothing", display(cmd));
        }
        bail!("`{}` failed ({status}); {label}:\n{text}", display(cmd));
    }
    Ok(String::from_utf8_lossy(stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_what_needs_it() {
        let mut cmd = Command::new("ip");
        cmd.args([
            "-n",
            "ns-1",
            "addr",
            "add",
            "198.51.100.1/24",
            "it's here",
            "",
        ]);
        assert_eq!(
            display(&cmd),
            r"ip -n ns-1 addr add 198.51.100.1/24 'it'\''s here' ''"
        );
    }

    #[test]
    fn output_reports_stderr() {
        let err = output(Command::new("sh").args(["-c", "echo out; echo oops >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sh -c"), "{err}");
        assert!(err.ends_with("stderr:\noops"), "{err}");
    }

    #[test]
    fn output_timeout_returns_stdout_and_kills_slow_commands() {
        let out = output_timeout(Command::new("echo").arg("hi"), Duration::from_secs(5)).unwrap();
        assert_eq!(out, "hi\n");
        let start = Instant::now();
        let err = output_timeout(Command::new("sleep").arg("10"), Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(err.contains("did not finish"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn succeeds_handles_missing_programs() {
        assert!(succeeds(&mut Command::new("true")));
        assert!(!succeeds(&mut Command::new("false")));
        assert!(!succeeds(&mut Command::new("/nonexistent/program")));
        assert!(!succeeds_timeout(
            Command::new("sleep").arg("10"),
            Duration::from_millis(100)
        ));
    }
}
