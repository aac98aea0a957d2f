//! Image records (`images/<key hash>.json`): which reference resolved to
//! which manifest, config and layers. They are the roots `gc` keeps, and
//! what `images` lists and `rmi` removes.

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::image_config::ImageConfig;
use crate::manifest::{Compression, MAX_CONFIG_BYTES};
use crate::pull::{LayerInfo, PullStats, PulledImage};
use crate::source::Source;
use crate::store::{write_atomic, Store};

/// The record format version this build writes and reads.
pub const RECORD_VERSION: u32 = 1;

/// What the store remembers about one pulled reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Format version ([`RECORD_VERSION`]).
    pub version: u32,
    /// The source key (`docker.io/library/alpine:latest`, `oci:/dir:tag` ...).
    pub reference: String,
    /// Index digest, for multi-platform sources.
    pub index_digest: Option<Digest>,
    /// Image manifest digest.
    pub manifest_digest: Digest,
    /// Config digest (Docker's image ID).
    pub config_digest: Digest,
    /// Config size in bytes.
    pub config_size: u64,
    /// Layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// When it was pulled, seconds since the Unix epoch.
    pub pulled_at: u64,
}

/// One layer in a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Blob digest.
    pub digest: Digest,
    /// Blob size.
    pub size: u64,
    /// Media type (says the compression).
    pub media_type: String,
}

impl ImageRecord {
    /// Config plus layer sizes, in bytes.
    pub fn size(&self) -> u64 {
        self.config_size + self.layers.iter().map(|l| l.size).sum::<u64>()
    }

    fn digests(&self) -> impl Iterator<Item = &Digest> {
        self.index_digest
            .iter()
            .chain([&self.manifest_digest, &self.config_digest])
            .chain(self.layers.iter().map(|l| &l.digest))
    }
}

/// What `gc` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Blobs deleted.
    pub blobs_removed: u64,
    /// Their total size.
    pub bytes_freed: u64,
    /// Leftovers of interrupted downloads deleted.
    pub temp_files_removed: u64,
}

impl Store {
    fn record_path(&self, key: &str) -> PathBuf {
        self.root.join("images").join(format!(
            "{}.json",
            &Digest::of_bytes(key.as_bytes()).hex()[..32]
        ))
    }

    pub(crate) fn save_record(&self, record: &ImageRecord) -> Result<()> {
        #[allow(
            clippy::expect_used,
            reason = "a derived Serialize of strings, numbers and string-keyed maps cannot fail"
        )]
        let json = serde_json::to_vec_pretty(record).expect("records serialize");
        write_atomic(&self.record_path(&record.reference), &json)
    }

    fn load_record(&self, path: &std::path::Path) -> Result<ImageRecord> {
        let bytes = fs::read(path).ctx(|| format!("reading {}", path.display()))?;
        let record: ImageRecord =
            serde_json::from_slice(&bytes).map_err(|e| Error::CorruptRecord {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        if record.version != RECORD_VERSION {
            return Err(Error::CorruptRecord {
                path: path.to_path_buf(),
                reason: format!(
                    "format version {} (this build reads {RECORD_VERSION})",
                    record.version
                ),
            });
        }
        Ok(record)
    }

    fn record_files(&self) -> Result<Vec<PathBuf>> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let path = entry.ctx(|| format!("listing {}", dir.display()))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".json") && !name.starts_with('.') {
                out.push(path);
            }
        }
        Ok(out)
    }

    /// All image records, sorted by reference. Unreadable records are
    /// skipped with a warning (`gc` refuses to run while one exists).
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        let mut records = Vec::new();
        for path in self.record_files()? {
            match self.load_record(&path) {
                Ok(r) => records.push(r),
                Err(e) => tracing::warn!("skipping image record: {e}"),
            }
        }
        records.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(records)
    }

    /// The stored image for `source`, if its record exists and every blob
    /// it names is present. Reads only the store.
    pub fn image(&self, source: &Source) -> Result<Option<PulledImage>> {
        let key = source.key();
        let path = self.record_path(&key);
        if !path.exists() {
            return Ok(None);
        }
        let r = self.load_record(&path)?;
        let complete = self.has_blob(&r.manifest_digest, None)
            && self.has_blob(&r.config_digest, Some(r.config_size))
            && r.layers
                .iter()
                .all(|l| self.has_blob(&l.digest, Some(l.size)));
        if !complete || r.reference != key {
            return Ok(None);
        }
        let config_bytes = self.read_blob(&r.config_digest, MAX_CONFIG_BYTES)?;
        let config = ImageConfig::parse(
            &config_bytes,
            &format!("config {} of {key}", r.config_digest),
        )?;
        let layers = r
            .layers
            .iter()
            .map(|l| {
                let compression = Compression::from_media_type(&l.media_type).ok_or_else(|| {
                    Error::CorruptRecord {
                        path: path.clone(),
                        reason: format!("layer media type {:?}", l.media_type),
                    }
                })?;
                Ok(LayerInfo {
                    digest: l.digest.clone(),
                    size: l.size,
                    media_type: l.media_type.clone(),
                    compression,
                    path: self.blob_path(&l.digest),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(PulledImage {
            reference: key,
            index_digest: r.index_digest,
            manifest_digest: r.manifest_digest,
            config_digest: r.config_digest,
            config,
            layers,
            stats: PullStats::default(),
        }))
    }

    /// Forgets the record of `source` if it still names `manifest_digest`:
    /// for an image that was pulled but then refused (its root filesystem
    /// could not be built from it), so that `images` does not list it and
    /// [`Store::gc`] frees its blobs. Returns whether a record was removed.
    pub fn forget_image(&self, source: &Source, manifest_digest: &Digest) -> Result<bool> {
        let path = self.record_path(&source.key());
        match self.load_record(&path) {
            Ok(r) if r.manifest_digest == *manifest_digest => {
                fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))?;
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(_) if !path.exists() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes the record of `reference` (any [`Source`] string, normalized
    /// first) or of every reference whose manifest digest is `reference`
    /// (`sha256:…`). Blobs stay until [`Store::gc`]. Returns what was removed.
    pub fn remove_image(&self, reference: &str) -> Result<Vec<ImageRecord>> {
        let targets: Vec<(PathBuf, ImageRecord)> = if let Ok(digest) = Digest::parse(reference) {
            let mut found = Vec::new();
            for path in self.record_files()? {
                if let Ok(r) = self.load_record(&path) {
                    if r.manifest_digest == digest {
                        found.push((path, r));
                    }
                }
            }
            found
        } else {
            let key = Source::parse(reference)?.key();
            let path = self.record_path(&key);
            if path.exists() {
                let r = self.load_record(&path)?;
                vec![(path, r)]
            } else {
                vec![]
            }
        };
        if targets.is_empty() {
            return Err(Error::ImageNotFound(reference.to_string()));
        }
        let mut removed = Vec::new();
        for (path, r) in targets {
            fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))?;
            removed.push(r);
        }
        Ok(removed)
    }

    /// Deletes blobs no record names, and leftovers of interrupted pulls.
    /// Waits for running pulls to finish (they hold the store lease) and
    /// keeps them out meanwhile. Refuses to run if a record is unreadable,
    /// since the blobs it names cannot be known.
    pub fn gc(&self) -> Result<GcReport> {
        let _exclusive = self.lock_exclusive()?;
        let mut keep: HashSet<Digest> = HashSet::new();
        for path in self.record_files()? {
            let record = self.load_record(&path)?;
            keep.extend(record.digests().cloned());
        }
        let mut report = GcReport::default();
        let blobs = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blobs).ctx(|| format!("listing {}", blobs.display()))? {
            let entry = entry.ctx(|| format!("listing {}", blobs.display()))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(digest) = Digest::parse(&format!("sha256:{name}")) else {
                continue; // not ours; leave it
            };
            if keep.contains(&digest) {
                continue;
            }
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(entry.path()).ctx(|| format!("removing {}", entry.path().display()))?;
            report.blobs_removed += 1;
            report.bytes_freed += size;
        }
        // No pull runs while we hold the exclusive lock, so every temp file
        // is a leftover and no per-digest lock file is in use.
        for dir in ["tmp", "locks"] {
            let dir = self.root.join(dir);
            for entry in fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
                let path = entry.ctx(|| format!("listing {}", dir.display()))?.path();
                fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))?;
                if path.extension().is_some_and(|e| e == "partial") {
                    report.temp_files_removed += 1;
                }
            }
        }
        let images = self.root.join("images");
        for entry in fs::read_dir(&images).ctx(|| format!("listing {}", images.display()))? {
            let path = entry
                .ctx(|| format!("listing {}", images.display()))?
                .path();
            if path.extension().is_some_and(|e| e == "tmp") {
                fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))?;
                report.temp_files_removed += 1;
            }
        }
        Ok(report)
    }
}
