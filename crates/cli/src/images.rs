//! `pull`, `images`, `rmi`, `gc`, `inspect`: the local OCI images.

use indicatif::HumanBytes;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};
use supermachine::oci::PullPolicy;
use supermachine::{images, Error, Image, PullOptions};

/// Text shared by the help of the commands that take an image.
pub const SOURCES_HELP: &str = "\
IMAGE sources:
  alpine, alpine:3.20, user/app:v1     Docker Hub (docker.io/library/alpine:latest ...)
  registry.example:5000/team/app:v1    any registry; append @sha256:<digest> to pin
  oci:/path/to/layout[:tag]            an OCI image layout directory
  docker-archive:/path/to/image.tar[:name:tag]
                                       a `docker save` tarball
  /abs/path, ./rel/path                a directory is an OCI layout, a file a docker archive

Registries: loopback registries (127.0.0.1:5000, localhost:5000) are reached over plain http.
  SUPERMACHINE_REGISTRY_MIRRORS=\"docker.io=http://127.0.0.1:5000,quay.io=https://m.example\"
      mirrors, tried in order before the registry itself
  SUPERMACHINE_INSECURE_REGISTRIES=\"registry.lan:5000\"   more plain-http registries
  ~/.config/supermachine/registries.toml ($SUPERMACHINE_REGISTRIES_CONFIG):
      insecure = [\"registry.lan:5000\"]
      [mirrors]
      \"docker.io\" = [\"http://127.0.0.1:5000\"]
  Credentials come from ~/.docker/config.json ($DOCKER_CONFIG): auths, credHelpers, credsStore.

Storage: blobs in ~/.local/share/supermachine/oci ($SUPERMACHINE_DATA_DIR/oci), root
filesystems (EROFS, one per image digest) in ~/.cache/supermachine/rootfs.

Caps on building a root filesystem (an image beyond one is refused; raise them only for
images you trust): SUPERMACHINE_IMAGE_MAX_UNPACKED=32G (uncompressed layer bytes plus
sparse holes), SUPERMACHINE_IMAGE_MAX_SPOOL=16G (file data on scratch disk),
SUPERMACHINE_IMAGE_MAX_INODES=4194304 (files, directories and links).";

/// Pull policy names for `--pull`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Resolve the reference again (one request when nothing changed).
    Always,
    /// Use the stored image if there is one (Docker's default for `run`).
    Missing,
    /// Only use the stored image.
    Never,
}

impl From<Policy> for PullPolicy {
    fn from(p: Policy) -> PullPolicy {
        match p {
            Policy::Always => PullPolicy::Always,
            Policy::Missing => PullPolicy::IfMissing,
            Policy::Never => PullPolicy::Never,
        }
    }
}

/// Gets an image with progress on stderr.
pub async fn get(source: &str, policy: PullPolicy) -> Result<Image, Error> {
    let options = PullOptions {
        policy,
        progress: Some(crate::progress::reporter()),
        ..PullOptions::from_env()?
    };
    match Image::pull(source, &options).await {
        Err(Error::Oci(supermachine::oci::Error::ImageNotFound(_))) => {
            Err(Error::NotPulled(source.to_string()))
        }
        other => other,
    }
}

/// `supermachine pull`: prints the manifest digest on stdout.
pub async fn pull(source: &str) -> Result<i32, Error> {
    let image = get(source, PullPolicy::Always).await?;
    if let Some(p) = image.oci() {
        let fetched = if p.stats.blobs_fetched == 0 {
            "up to date".to_string()
        } else {
            format!(
                "fetched {} blobs, {}",
                p.stats.blobs_fetched,
                HumanBytes(p.stats.bytes_fetched)
            )
        };
        eprintln!("{}: {fetched}", p.reference);
        println!("{}", p.manifest_digest);
    }
    Ok(0)
}

/// `supermachine images`.
pub fn list(json: bool) -> Result<i32, Error> {
    let records = images::list()?;
    let mut out = std::io::stdout().lock();
    if json {
        for r in &records {
            let rootfs =
                supermachine::rootfs_dir().join(format!("{}.erofs", r.manifest_digest.hex()));
            let value = serde_json::json!({
                "reference": r.reference,
                "manifest_digest": r.manifest_digest,
                "config_digest": r.config_digest,
                "index_digest": r.index_digest,
                "size": r.size(),
                "layers": r.layers.len(),
                "pulled_at": r.pulled_at,
                "rootfs": rootfs.is_file().then_some(rootfs),
            });
            let _ = writeln!(out, "{value}");
        }
        return Ok(0);
    }
    let _ = writeln!(
        out,
        "{:<50} {:<12} {:>10}  PULLED",
        "REFERENCE", "DIGEST", "SIZE"
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for r in &records {
        let _ = writeln!(
            out,
            "{:<50} {:<12} {:>10}  {}",
            r.reference,
            r.manifest_digest.short(),
            HumanBytes(r.size()).to_string(),
            ago(now.saturating_sub(r.pulled_at))
        );
    }
    Ok(0)
}

fn ago(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s} seconds ago"),
        s if s < 3600 => format!("{} minutes ago", s / 60),
        s if s < 86400 => format!("{} hours ago", s / 3600),
        s => format!("{} days ago", s / 86400),
    }
}

/// `supermachine rmi`: every failure is reported; exit 1 if any.
pub fn remove(references: &[String]) -> Result<i32, Error> {
    let mut failed = 0;
    for reference in references {
        match images::remove(reference) {
            Ok(removed) => {
                for r in removed {
                    println!("untagged {} ({})", r.reference, r.manifest_digest);
                }
            }
            Err(e) => {
                eprintln!("supermachine: rmi {reference}: {e}");
                failed += 1;
            }
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

/// `supermachine gc`.
pub fn gc() -> Result<i32, Error> {
    let r = images::gc()?;
    println!(
        "removed {} blobs ({}), {} root filesystems ({}), {} leftover temporary files; {} freed",
        r.blobs_removed,
        HumanBytes(r.blob_bytes_freed),
        r.rootfs_removed,
        HumanBytes(r.rootfs_bytes_freed),
        r.temp_files_removed,
        HumanBytes(r.bytes_freed())
    );
    Ok(0)
}

/// `supermachine inspect`: the stored image as JSON.
pub fn inspect(source: &str) -> Result<i32, Error> {
    println!("{}", images::inspect(source)?.inspect_json());
    Ok(0)
}
