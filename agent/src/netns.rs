//! Network namespaces: named ones made like `ip netns add` (a bind mount of an nsfs file),
//! and running netlink work inside another namespace on a thread of its own, so the agent's
//! runtime threads never leave the node's namespace.

use std::{
    fs,
    future::Future,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};

use crate::{Error, Result};

/// Where `ip netns` keeps named namespaces; the agent puts the ones it creates there too,
/// so `ip netns exec` works on them.
pub const NETNS_RUN_DIR: &str = "/run/netns";

const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Whether `path` is a network namespace file (nsfs).
pub fn is_netns(path: &Path) -> Result<()> {
    let stat = nix::sys::statfs::statfs(path).map_err(|e| {
        Error::InvalidArgument(format!("network namespace {}: {e}", path.display()))
    })?;
    if stat.filesystem_type().0 as i64 != NSFS_MAGIC {
        return Err(Error::InvalidArgument(format!(
            "{} is not a network namespace",
            path.display()
        )));
    }
    Ok(())
}

/// Where the cgroup v2 hierarchy is mounted (found in /proc/self/mounts, not assumed).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts =
        fs::read_to_string("/proc/self/mounts").map_err(Error::io("reading /proc/self/mounts"))?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .next()
        .ok_or_else(|| Error::NotFound("no cgroup2 filesystem is mounted; give --cgroup".into()))
}

/// Creates a new, empty network namespace and pins it at `dir/name`.
pub fn create_named(dir: &Path, name: &str) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    let path = dir.join(name);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::Conflict(format!(
                "network namespace {} already exists",
                path.display()
            )),
            _ => Error::io(format!("creating {}", path.display()))(e),
        })?;
    let target = path.clone();
    let made = std::thread::spawn(move || -> Result<()> {
        // Only this short-lived thread moves into the new namespace.
        unshare(CloneFlags::CLONE_NEWNET).map_err(Error::sys("unshare(CLONE_NEWNET)"))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(Error::sys(format!(
            "bind-mounting the new namespace on {}",
            target.display()
        )))
    })
    .join()
    .unwrap_or_else(|_| Err(Error::Internal("namespace thread panicked".into())));
    if let Err(e) = made {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Removes a namespace made by [`create_named`]; the namespace itself goes away once no
/// process uses it any more.
pub fn delete_named(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(Error::sys(format!("unmounting {}", path.display()))(e)),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()))(e)),
    }
}

/// Runs `work` with a netlink handle bound to the namespace at `path`, on a dedicated thread
/// with its own single-threaded runtime.
pub fn with_netlink_in<F, Fut, T>(path: &Path, work: F) -> Result<T>
where
    F: FnOnce(rtnetlink::Handle) -> Fut + Send,
    Fut: Future<Output = Result<T>>,
    T: Send,
{
    let run = || -> Result<T> {
        let file =
            fs::File::open(path).map_err(Error::io(format!("opening {}", path.display())))?;
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(Error::sys(format!(
            "entering network namespace {}",
            path.display()
        )))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::io("starting a runtime for namespace work"))?;
        runtime.block_on(async {
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(Error::io("opening a netlink socket"))?;
            let connection = tokio::spawn(connection);
            let result = work(handle).await;
            connection.abort();
            result
        })
    };
    let body = || {
        std::thread::scope(|scope| {
            scope
                .spawn(run)
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("namespace thread panicked".into())))
        })
    };
    // Called from the agent's async code: tell the runtime this worker blocks for a moment.
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(body)
        }
        _ => body(),
    }
}
