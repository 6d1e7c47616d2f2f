//! The host's mounts the lab needs: bpffs (the agents' pins) and cgroup2 (their socket
//! programs' cgroups), found in /proc/self/mounts rather than assumed.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// Where bpffs is mounted; agents pin their programs and maps below it.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Where the cgroup v2 hierarchy is mounted.
pub fn cgroup2_mount() -> Result<PathBuf> {
    mounts()?
        .into_iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| m.target)
        .ok_or_else(|| anyhow::anyhow!("no cgroup2 filesystem is mounted"))
}

/// Removes the cgroup `cgroup_parent` (a path below the cgroup2 mount, as a container
/// runtime's `cgroup_parent` option names it) and the cgroups directly under it, which the
/// runtime leaves empty behind. Best effort: a cgroup still in use stays.
pub fn remove_cgroup_parent(cgroup_parent: &str) {
    let Ok(mount) = cgroup2_mount() else {
        return;
    };
    let parent = mount.join(cgroup_parent.trim_start_matches('/'));
    if let Ok(children) = fs::read_dir(&parent) {
        for child in children.flatten().filter(|c| c.path().is_dir()) {
            let _ = fs::remove_dir(child.path());
        }
    }
    let _ = fs::remove_dir(&parent);
}

/// Whether bpffs is mounted at [`BPFFS`].
pub fn bpffs_mounted() -> Result<bool> {
    Ok(mounts()?
        .iter()
        .any(|m| m.fstype == "bpf" && m.target == Path::new(BPFFS)))
}

/// Unmounts (lazily) everything mounted at or below `dir`, deepest first: what dockerd, or
/// an agent's namespaces, left there. Best effort.
pub fn unmount_below(dir: &Path) {
    let mut targets: Vec<PathBuf> = mounts()
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.target)
        .filter(|t| t.starts_with(dir))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.as_os_str().len()));
    for target in targets {
        let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// One line of /proc/self/mounts.
#[derive(Debug, PartialEq)]
pub struct Mount {
    pub target: PathBuf,
    pub fstype: String,
}

/// The mounts this process sees.
pub fn mounts() -> Result<Vec<Mount>> {
    let text = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    Ok(parse_mounts(&text))
}

/// Parses /proc/self/mounts: `SOURCE TARGET FSTYPE OPTIONS DUMP PASS`, with spaces and other
/// special characters in paths written as octal escapes (`\040`).
fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _source = fields.next()?;
            let target = fields.next()?;
            let fstype = fields.next()?;
            Some(Mount {
                target: PathBuf::from(unescape_octal(target)),
                fstype: fstype.to_string(),
            })
        })
        .collect()
}

fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match escape {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mounts_and_finds_bpffs_and_cgroup2() {
        let text = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
bpf /sys/fs/bpf bpf rw,relatime 0 0
tmpfs /mnt/with\\040space tmpfs rw 0 0
";
        let mounts = parse_mounts(text);
        assert_eq!(mounts.len(), 5);
        let cgroup2 = mounts.iter().find(|m| m.fstype == "cgroup2").unwrap();
        assert_eq!(cgroup2.target, Path::new("/sys/fs/cgroup/unified"));
        assert!(
            mounts
                .iter()
                .any(|m| m.fstype == "bpf" && m.target == Path::new(BPFFS))
        );
        assert_eq!(mounts[4].target, Path::new("/mnt/with space"));
    }

    #[test]
    fn unescapes_only_octal_escapes() {
        assert_eq!(unescape_octal(r"a\040b\011c"), "a b\tc");
        assert_eq!(unescape_octal(r"plain\x"), r"plain\x");
        assert_eq!(unescape_octal(r"end\04"), r"end\04");
    }
}
