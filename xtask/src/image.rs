//! `cargo xtask image`: the agent's container image as a tarball, assembled here from the
//! built binaries (no Dockerfile, no registry, no daemon): `bpfbridge`, `bpfbridge-cni` and a
//! static busybox (the DaemonSet's init container installs the plugin and writes the
//! conflist with its shell). The tarball is an OCI image layout that also carries Docker's
//! `manifest.json`, so `ctr images import`, `podman load` and `docker load` all take it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};
use bpfbridge_lab::cmd;
use serde_json::json;

/// The busybox applets the image links in /bin for the init container's script.
const APPLETS: &[&str] = &[
    "sh", "cat", "cp", "mkdir", "mv", "rm", "sed", "test", "echo",
];

/// What goes into the image, and where it is written.
pub struct ImageSpec {
    /// The directory with the built `bpfbridge` and `bpfbridge-cni`.
    pub bin_dir: PathBuf,
    pub busybox: PathBuf,
    /// `NAME:TAG` as the runtimes will list it.
    pub reference: String,
    pub output: PathBuf,
}

/// The shared libraries `binaries` load (as `ldd` lists them: the C library and the
/// dynamic loader), copied into `rootfs` at their paths: the binaries link glibc
/// dynamically, and the image has no distribution under them.
fn copy_shared_libraries(binaries: &[PathBuf], rootfs: &Path) -> Result<()> {
    for binary in binaries {
        let listing = cmd::output(Command::new("ldd").arg(binary))?;
        for line in listing.lines() {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or
            // `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
            let path = line
                .split("=>")
                .last()
                .and_then(|rest| rest.split_whitespace().next())
                .filter(|p| p.starts_with('/'));
            if let Some(path) = path {
                let inside = rootfs.join(path.trim_start_matches('/'));
                fs::create_dir_all(inside.parent().context("a library's directory")?)?;
                fs::copy(path, &inside).with_context(|| format!("copying {path}"))?;
            }
        }
    }
    Ok(())
}

/// The names at the top of `rootfs`, sorted: what the layer holds.
fn top_level(rootfs: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(rootfs)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    Ok(names)
}

/// Writes the image tarball; returns its path.
pub fn write_image(spec: &ImageSpec) -> Result<PathBuf> {
    let work = tempfile::Builder::new()
        .prefix("bpfbridge-image-")
        .tempdir()?;
    let rootfs = work.path().join("rootfs");
    let bin = rootfs.join("usr/local/bin");
    fs::create_dir_all(&bin)?;
    fs::create_dir_all(rootfs.join("bin"))?;
    for name in ["bpfbridge", "bpfbridge-cni"] {
        let built = spec.bin_dir.join(name);
        ensure!(
            built.exists(),
            "{} is missing: build it first (`cargo build --release --bins`, or --debug for the debug build)",
            built.display()
        );
        fs::copy(&built, bin.join(name)).with_context(|| format!("copying {}", built.display()))?;
    }
    copy_shared_libraries(&[bin.join("bpfbridge"), bin.join("bpfbridge-cni")], &rootfs)?;
    fs::copy(&spec.busybox, rootfs.join("bin/busybox"))
        .with_context(|| format!("copying {} (busybox-static)", spec.busybox.display()))?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    // Runtimes name pod namespaces by /var/run/netns/... paths (containerd does), which the
    // agent opens in its own mount namespace: /var/run is /run there too.
    fs::create_dir_all(rootfs.join("var"))?;
    fs::create_dir_all(rootfs.join("run"))?;
    std::os::unix::fs::symlink("../run", rootfs.join("var/run"))?;
    fs::create_dir_all(rootfs.join("tmp"))?;
    fs::set_permissions(
        rootfs.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )?;
    let layer_path = work.path().join("layer.tar");
    cmd::run(
        Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["--owner=0", "--group=0", "--numeric-owner", "--sort=name"])
            .args(["--mtime=@0", "-cf"])
            .arg(&layer_path)
            .args(top_level(&rootfs)?),
    )?;

    let layout = work.path().join("layout");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let add_blob = |bytes: &[u8]| -> Result<(String, usize)> {
        let digest = cmd::sha256_hex(bytes)?;
        fs::write(blobs.join(&digest), bytes)?;
        Ok((digest, bytes.len()))
    };
    let (layer, layer_size) = add_blob(&fs::read(&layer_path)?)?;
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/usr/local/bin/bpfbridge"],
            "Cmd": ["agent"],
            "Env": ["PATH=/usr/local/bin:/bin"],
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer}")]},
    });
    let (config_digest, config_size) = add_blob(&serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_digest}"), "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{layer}"), "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = add_blob(&serde_json::to_vec(&manifest)?)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha256:{manifest_digest}"), "size": manifest_size,
                       "annotations": {"io.containerd.image.name": spec.reference,
                                       "org.opencontainers.image.ref.name": spec.reference}}],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion": "1.0.0"}"#,
    )?;
    // Docker's own format, beside: `docker load` reads manifest.json.
    let docker_manifest = json!([{
        "Config": format!("blobs/sha256/{config_digest}"),
        "RepoTags": [spec.reference],
        "Layers": [format!("blobs/sha256/{layer}")],
    }]);
    fs::write(
        layout.join("manifest.json"),
        serde_json::to_vec(&docker_manifest)?,
    )?;
    if let Some(parent) = spec.output.parent() {
        fs::create_dir_all(parent)?;
    }
    cmd::run(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .args([
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mtime=@0",
                "-cf",
            ])
            .arg(&spec.output)
            .args(["oci-layout", "index.json", "manifest.json", "blobs"]),
    )?;
    Ok(spec.output.clone())
}

/// Where busybox-static installs busybox.
pub fn busybox() -> Result<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .map(Path::to_path_buf)
        .context("busybox is not installed (busybox-static; `cargo xtask setup` installs it)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tarball_is_an_oci_layout_whose_digests_match() {
        let dir = tempfile::tempdir().unwrap();
        let bin_dir = dir.path().join("bin");
        fs::create_dir_all(&bin_dir).unwrap();
        // Stand-ins linked as the real binaries are (glibc, dynamically).
        for name in ["bpfbridge", "bpfbridge-cni"] {
            fs::copy("/bin/true", bin_dir.join(name)).unwrap();
        }
        let busybox = dir.path().join("busybox");
        fs::write(&busybox, "not really busybox").unwrap();
        let output = dir.path().join("out/image.tar");
        write_image(&ImageSpec {
            bin_dir,
            busybox,
            reference: "localhost/bpfbridge:test".into(),
            output: output.clone(),
        })
        .unwrap();
        let unpacked = dir.path().join("unpacked");
        fs::create_dir_all(&unpacked).unwrap();
        cmd::run(
            Command::new("tar")
                .arg("-C")
                .arg(&unpacked)
                .arg("-xf")
                .arg(&output),
        )
        .unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(unpacked.join("index.json")).unwrap()).unwrap();
        let entry = &index["manifests"][0];
        assert_eq!(
            entry["annotations"]["io.containerd.image.name"],
            "localhost/bpfbridge:test"
        );
        let blob = |digest: &serde_json::Value| {
            let hex = digest.as_str().unwrap().strip_prefix("sha256:").unwrap();
            let bytes = fs::read(unpacked.join("blobs/sha256").join(hex)).unwrap();
            assert_eq!(
                cmd::sha256_hex(&bytes).unwrap(),
                hex,
                "the blob's name is its digest"
            );
            bytes
        };
        let manifest: serde_json::Value = serde_json::from_slice(&blob(&entry["digest"])).unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&blob(&manifest["config"]["digest"])).unwrap();
        assert_eq!(
            config["config"]["Entrypoint"][0],
            "/usr/local/bin/bpfbridge"
        );
        let layer = blob(&manifest["layers"][0]["digest"]);
        fs::write(dir.path().join("layer.tar"), layer).unwrap();
        let listing = cmd::output(
            Command::new("tar")
                .arg("-tf")
                .arg(dir.path().join("layer.tar")),
        )
        .unwrap();
        for path in [
            "usr/local/bin/bpfbridge",
            "usr/local/bin/bpfbridge-cni",
            "bin/busybox",
            "bin/sh",
            "var/run",
        ] {
            assert!(listing.lines().any(|l| l == path), "{path} in {listing}");
        }
        assert!(
            listing.lines().any(|l| l.ends_with("/libc.so.6")),
            "the C library in {listing}"
        );
        let docker: serde_json::Value =
            serde_json::from_slice(&fs::read(unpacked.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(docker[0]["RepoTags"][0], "localhost/bpfbridge:test");
    }
}
