//! Root filesystems of OCI images: the layers applied in order into one
//! merged tree (`supermachine-rootfs`, no root needed, nothing extracted to
//! the host) and written as an uncompressed EROFS image by our own writer.
//!
//! One file per image manifest digest: `<cache>/rootfs/<hex>.erofs`. The
//! digest names the exact layers, so a file that exists is complete and
//! right (the writer renames it into place only when whole). Builders take
//! an exclusive `flock` on `<hex>.erofs.lock` and look again once they hold
//! it, so two processes wanting the same image build it once.

use crate::error::Error;
use crate::image::pull::{ImageEvent, PullOptions};
use crate::paths;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use supermachine_oci::lock::{FileLock, LockMode};
use supermachine_oci::{Compression, Digest, PulledImage, Store};
use supermachine_rootfs::{erofs, Tree, TreeOptions};

/// Report layer progress about this often (compressed bytes).
const PROGRESS_STEP: u64 = 1 << 20;

/// Where root filesystems of OCI images are cached.
///
/// ```
/// let dir = supermachine::rootfs_dir();
/// assert_eq!(dir, supermachine::paths::cache_dir().join("rootfs"));
/// ```
pub fn rootfs_dir() -> PathBuf {
    paths::cache_dir().join("rootfs")
}

/// The cache file of the image with this manifest digest in `dir`.
pub(crate) fn rootfs_path(dir: &Path, manifest: &Digest) -> PathBuf {
    dir.join(format!("{}.erofs", manifest.hex()))
}

fn lock_path(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// The root filesystem of `image`, built unless cached. Blocking.
pub(crate) fn ensure(
    store: &Store,
    image: &PulledImage,
    options: &PullOptions,
) -> Result<PathBuf, Error> {
    let dir = options.rootfs_dir.clone().unwrap_or_else(rootfs_dir);
    let path = rootfs_path(&dir, &image.manifest_digest);
    if path.is_file() {
        options.emit(ImageEvent::RootfsCached { path: path.clone() });
        return Ok(path);
    }
    paths::create_dir_all_mode(&dir, paths::SHARED_DIR)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    options.emit(ImageEvent::BuildStarted {
        manifest_digest: image.manifest_digest.clone(),
        layers: image.layers.len(),
    });
    let _lock = FileLock::acquire(&lock_path(&path), LockMode::Exclusive)?;
    if path.is_file() {
        // Another process built it while we waited for the lock.
        options.emit(ImageEvent::RootfsCached { path: path.clone() });
        return Ok(path);
    }
    // Keeps `gc` from deleting the layer blobs under us.
    let _lease = store.lease()?;
    let stats = build(image, &dir, &path, options).map_err(|source| match source {
        BuildError::Rootfs(source) => Error::Rootfs {
            image: image.reference.clone(),
            source,
        },
        BuildError::Io(e) => e,
    })?;
    options.emit(ImageEvent::RootfsBuilt {
        path: path.clone(),
        bytes: stats.bytes,
        inodes: stats.inodes,
    });
    Ok(path)
}

enum BuildError {
    Rootfs(supermachine_rootfs::Error),
    Io(Error),
}

impl From<supermachine_rootfs::Error> for BuildError {
    fn from(e: supermachine_rootfs::Error) -> Self {
        BuildError::Rootfs(e)
    }
}

fn build(
    image: &PulledImage,
    dir: &Path,
    dest: &Path,
    options: &PullOptions,
) -> Result<erofs::WriteStats, BuildError> {
    // The spool sits next to the final image, so the writer can copy file
    // contents in-kernel (or reflink them) instead of through user space.
    let mut tree = Tree::with_options(TreeOptions {
        spool_dir: Some(dir.to_path_buf()),
        limits: options.limits.clone(),
    })?;
    // Each uncompressed layer must hash to its diff_id, as in Docker.
    let diff_ids = &image.config.diff_ids;
    if diff_ids.len() != image.layers.len() {
        return Err(BuildError::Rootfs(
            supermachine_rootfs::Error::DiffIdCount {
                layers: image.layers.len(),
                diff_ids: diff_ids.len(),
            },
        ));
    }
    for (index, layer) in image.layers.iter().enumerate() {
        let file = File::open(&layer.path).map_err(|e| {
            BuildError::Io(Error::io(
                format!(
                    "opening layer {} of {} at {} (the store lost it: pull the image again)",
                    layer.digest,
                    image.reference,
                    layer.path.display()
                ),
                e,
            ))
        })?;
        options.emit(ImageEvent::LayerProgress {
            index,
            digest: layer.digest.clone(),
            done: 0,
            size: layer.size,
        });
        if let Some(progress) = options.progress.clone() {
            let (digest, size) = (layer.digest.clone(), layer.size);
            let mut next = PROGRESS_STEP;
            tree.set_progress_hook(move |p| {
                if p.input_bytes >= next {
                    next = p.input_bytes + PROGRESS_STEP;
                    progress(&ImageEvent::LayerProgress {
                        index,
                        digest: digest.clone(),
                        done: p.input_bytes.min(size),
                        size,
                    });
                }
            });
        }
        let stats = tree.apply_layer_verified(
            index,
            BufReader::with_capacity(256 << 10, file),
            compression(layer.compression),
            &diff_ids[index],
        )?;
        if stats.xattrs_dropped > 0 {
            tracing::warn!(
                "{}: layer {index} has {} xattrs EROFS cannot store; they were dropped",
                image.reference,
                stats.xattrs_dropped
            );
        }
        options.emit(ImageEvent::LayerApplied {
            index,
            digest: layer.digest.clone(),
            entries: stats.entries,
        });
    }
    let write_options = erofs::WriteOptions {
        uuid: uuid_of(&image.manifest_digest),
        volume_name: *b"supermachine\0\0\0\0",
    };
    Ok(erofs::write_with(&tree, dest, &write_options)?)
}

fn compression(c: Compression) -> supermachine_rootfs::Compression {
    match c {
        Compression::None => supermachine_rootfs::Compression::None,
        Compression::Gzip => supermachine_rootfs::Compression::Gzip,
        Compression::Zstd => supermachine_rootfs::Compression::Zstd,
    }
}

/// A stable volume UUID: the first 16 bytes of the manifest digest.
fn uuid_of(digest: &Digest) -> [u8; 16] {
    let mut uuid = [0u8; 16];
    if let Ok(bytes) = hex::decode(&digest.hex()[..32]) {
        uuid.copy_from_slice(&bytes);
    }
    uuid
}

/// What [`remove_unused`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Removed {
    /// Root filesystem images.
    pub files: u64,
    pub bytes: u64,
    /// Leftovers of builds that died or failed: writer temp files and
    /// lock files without an image.
    pub temp_files: u64,
}

/// Deletes cached root filesystems whose manifest digest is not in `keep`,
/// and leftovers of builds that died or failed (the writer's temp files, a
/// lock file whose image was never written). An image being built (its
/// lock held) is left alone. Files not named like ours are never touched.
pub(crate) fn remove_unused(keep: &[Digest]) -> Result<Removed, Error> {
    let dir = rootfs_dir();
    let mut removed = Removed::default();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        let size = entry.metadata().map_or(0, |m| m.len());
        let is_ours = |hex: &str| Digest::parse(&format!("sha256:{hex}")).ok();
        if let Some(digest) = name.strip_suffix(".erofs").and_then(is_ours) {
            if keep.contains(&digest) {
                continue;
            }
            let Some(_lock) = FileLock::try_acquire(&lock_path(&path), LockMode::Exclusive)? else {
                continue; // being built right now
            };
            std::fs::remove_file(&path)
                .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
            let _ = std::fs::remove_file(lock_path(&path));
            removed.files += 1;
            removed.bytes += size;
        } else if let Some(image) = name
            .strip_suffix(".erofs.lock")
            .filter(|h| is_ours(h).is_some())
        {
            // The lock of a build that failed: no image next to it, and
            // nobody holding it.
            let image = dir.join(format!("{image}.erofs"));
            if image.exists() {
                continue; // removed with its image, if ever
            }
            let Some(_lock) = FileLock::try_acquire(&path, LockMode::Exclusive)? else {
                continue;
            };
            let _ = std::fs::remove_file(&path);
            removed.temp_files += 1;
        } else if name.starts_with(".erofs-") && name.ends_with(".tmp") && is_stale(&entry) {
            // The writer's temp file of a build that was killed.
            let _ = std::fs::remove_file(&path);
            removed.temp_files += 1;
        }
    }
    Ok(removed)
}

/// A temp file nobody has written to for an hour: its build is gone.
fn is_stale(entry: &std::fs::DirEntry) -> bool {
    entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age.as_secs() > 3600)
}
