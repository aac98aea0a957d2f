//! `--compare-skopeo-umoci`: the same image through Debian's `skopeo copy`
//! (source → a fresh OCI layout) and `umoci unpack --rootless` (layout →
//! an OCI runtime bundle: the rootfs tree, config.json and an mtree
//! manifest of the tree), timed as separate processes.
//!
//! Cold: a fresh layout and bundle. Warm: `skopeo copy` again into the layout
//! that already holds the blobs (skopeo skips blobs it has; it still
//! fetches the manifest and config), then `umoci unpack` into a fresh bundle
//! again: umoci has no cache, so its warm run unpacks everything anew. Also
//! timed, for reference: `umoci raw unpack` alone (the rootfs tree only, no
//! config.json or mtree manifest), the least an unpacking tool can do.

use crate::registry::SKOPEO_BIN;
use crate::BoxError;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const UMOCI_BIN: &str = "/usr/bin/umoci";

#[derive(Default)]
pub struct Samples {
    pub cold: Vec<Duration>,
    pub cold_copy: Vec<Duration>,
    pub cold_unpack: Vec<Duration>,
    pub warm: Vec<Duration>,
    pub raw_unpack: Vec<Duration>,
}

/// Checks the tools are installed; returns their versions.
pub fn versions() -> Result<String, BoxError> {
    crate::require(&[(SKOPEO_BIN, "skopeo"), (UMOCI_BIN, "umoci")])?;
    let version = |bin: &str| -> Result<String, BoxError> {
        let out = Command::new(bin).arg("--version").output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    Ok(format!("{}, {}", version(SKOPEO_BIN)?, version(UMOCI_BIN)?))
}

impl Samples {
    /// One cold and one warm run in `dir` (created, then removed).
    pub fn measure(&mut self, source: &str, dir: &Path) -> Result<(), BoxError> {
        std::fs::create_dir_all(dir)?;
        let layout = dir.join("layout");
        let image = format!("{}:x", layout.display());
        let bundle = dir.join("bundle");

        crate::settle();
        let started = Instant::now();
        skopeo_copy(source, &image)?;
        let copied = started.elapsed();
        umoci(&["unpack", "--rootless", "--image", &image], &bundle)?;
        let total = started.elapsed();
        self.cold.push(total);
        self.cold_copy.push(copied);
        self.cold_unpack.push(total - copied);
        std::fs::remove_dir_all(&bundle)?;

        crate::settle();
        let started = Instant::now();
        skopeo_copy(source, &image)?;
        umoci(&["unpack", "--rootless", "--image", &image], &bundle)?;
        self.warm.push(started.elapsed());

        crate::settle();
        let started = Instant::now();
        umoci(
            &["raw", "unpack", "--rootless", "--image", &image],
            &dir.join("raw"),
        )?;
        self.raw_unpack.push(started.elapsed());
        eprintln!(
            "  skopeo + umoci: cold {total:?} (skopeo {copied:?}), warm {:?}, raw unpack {:?}",
            self.warm.last().copied().unwrap_or_default(),
            self.raw_unpack.last().copied().unwrap_or_default()
        );
        std::fs::remove_dir_all(dir)?;
        Ok(())
    }
}

/// `skopeo copy SOURCE oci:LAYOUT:TAG`; a registry reference becomes
/// `docker://REF`, over plain http when its host is loopback (as ours is).
fn skopeo_copy(source: &str, dest: &str) -> Result<(), BoxError> {
    let mut cmd = Command::new(SKOPEO_BIN);
    cmd.args(["copy", "--quiet"]);
    let src = if source.starts_with("oci:") || source.starts_with("docker-archive:") {
        source.to_string()
    } else {
        let host = source.split('/').next().unwrap_or_default();
        if ["127.", "localhost", "[::1]"]
            .iter()
            .any(|p| host.starts_with(p))
        {
            cmd.arg("--src-tls-verify=false");
        }
        format!("docker://{source}")
    };
    checked(cmd.arg(src).arg(format!("oci:{dest}")))
}

fn umoci(args: &[&str], dest: &Path) -> Result<(), BoxError> {
    checked(Command::new(UMOCI_BIN).args(args).arg(dest))
}

fn checked(cmd: &mut Command) -> Result<(), BoxError> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}
