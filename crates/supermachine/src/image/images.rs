//! The local images: list, inspect, remove, and collect garbage.
//!
//! Pulled images live in two places: their blobs (manifest, config,
//! layers) in the content-addressed store under the data directory
//! (`~/.local/share/supermachine/oci`, see [`supermachine_oci::Store`]),
//! with one record per reference, and their root filesystems in the cache
//! (`~/.cache/supermachine/rootfs/<manifest hex>.erofs`), which can always
//! be rebuilt from the blobs.
//!
//! ```no_run
//! # fn demo() -> Result<(), supermachine::Error> {
//! for record in supermachine::images::list()? {
//!     println!("{} {} {}", record.reference, record.manifest_digest.short(), record.size());
//! }
//! supermachine::images::remove("alpine:3.20")?;
//! let report = supermachine::images::gc()?;
//! println!("freed {} bytes", report.bytes_freed());
//! # Ok(()) }
//! ```

use crate::error::Error;
use crate::image::rootfs;
use serde::Serialize;
use supermachine_oci::{Digest, ImageRecord, PulledImage, Source, Store};

/// Every pulled image, sorted by reference.
///
/// ```no_run
/// # fn demo() -> Result<(), supermachine::Error> {
/// for record in supermachine::images::list()? {
///     println!("{} {}", record.reference, record.manifest_digest);
/// }
/// # Ok(()) }
/// ```
pub fn list() -> Result<Vec<ImageRecord>, Error> {
    Ok(Store::open_default()?.images()?)
}

/// Everything stored about one pulled image: reference, digests, config,
/// layers (what `supermachine inspect` prints). Reads only the store.
///
/// ```no_run
/// # fn demo() -> Result<(), supermachine::Error> {
/// let image = supermachine::images::inspect("alpine:3.20")?;
/// println!("{}", image.inspect_json());
/// # Ok(()) }
/// ```
pub fn inspect(source: &str) -> Result<PulledImage, Error> {
    let parsed = Source::parse(source)?;
    Store::open_default()?
        .image(&parsed)?
        .ok_or_else(|| Error::NotPulled(source.to_string()))
}

/// Forgets `reference` (a source as given to pull, or a manifest digest
/// `sha256:…` for every reference to that image) and deletes the cached
/// root filesystems no remaining image uses. Blobs stay until [`gc`].
///
/// ```no_run
/// # fn demo() -> Result<(), supermachine::Error> {
/// let removed = supermachine::images::remove("alpine:3.20")?;
/// println!("forgot {} reference(s)", removed.len());
/// # Ok(()) }
/// ```
pub fn remove(reference: &str) -> Result<Vec<ImageRecord>, Error> {
    let store = Store::open_default()?;
    let removed = store.remove_image(reference)?;
    rootfs::remove_unused(&kept_digests(&store)?)?;
    Ok(removed)
}

/// What [`gc`] deleted.
///
/// ```no_run
/// # fn demo() -> Result<(), supermachine::Error> {
/// let report = supermachine::images::gc()?;
/// println!("{} blobs removed", report.blobs_removed);
/// println!("{} root filesystems removed", report.rootfs_removed);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Blobs no image record names.
    pub blobs_removed: u64,
    /// Their bytes.
    pub blob_bytes_freed: u64,
    /// Leftovers of interrupted pulls and of failed or interrupted builds.
    pub temp_files_removed: u64,
    /// Cached root filesystems of images no longer pulled.
    pub rootfs_removed: u64,
    /// Their bytes.
    pub rootfs_bytes_freed: u64,
}

impl GcReport {
    /// All bytes freed.
    ///
    /// ```
    /// use supermachine::images::GcReport;
    /// let report = GcReport {
    ///     blob_bytes_freed: 1000,
    ///     rootfs_bytes_freed: 24,
    ///     ..Default::default()
    /// };
    /// assert_eq!(report.bytes_freed(), 1024);
    /// ```
    pub fn bytes_freed(&self) -> u64 {
        self.blob_bytes_freed + self.rootfs_bytes_freed
    }
}

/// Deletes blobs and cached root filesystems that no image record uses,
/// and leftovers of interrupted pulls and builds. Waits for running pulls.
///
/// ```no_run
/// # fn demo() -> Result<(), supermachine::Error> {
/// let report = supermachine::images::gc()?;
/// println!("freed {} MiB", report.bytes_freed() >> 20);
/// # Ok(()) }
/// ```
pub fn gc() -> Result<GcReport, Error> {
    let store = Store::open_default()?;
    let blobs = store.gc()?;
    let rootfs = rootfs::remove_unused(&kept_digests(&store)?)?;
    Ok(GcReport {
        blobs_removed: blobs.blobs_removed,
        blob_bytes_freed: blobs.bytes_freed,
        temp_files_removed: blobs.temp_files_removed + rootfs.temp_files,
        rootfs_removed: rootfs.files,
        rootfs_bytes_freed: rootfs.bytes,
    })
}

/// Manifest digests of every readable record (the store's own gc refuses
/// to run while a record is unreadable; a root filesystem is only a cache).
fn kept_digests(store: &Store) -> Result<Vec<Digest>, Error> {
    Ok(store
        .images()?
        .into_iter()
        .map(|r| r.manifest_digest)
        .collect())
}
