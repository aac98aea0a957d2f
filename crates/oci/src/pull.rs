//! Pulling: the part shared by every source. A source resolves to an
//! (optional) index and a manifest plus a way to fetch blobs; this module
//! stores the manifest, fetches the config and the layers it lacks (layers in
//! parallel), and writes the image record.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image_config::ImageConfig;
use crate::manifest::{
    self, Compression, Desc, Parsed, Platform, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES,
};
use crate::records::{ImageRecord, LayerRecord, RECORD_VERSION};
use crate::registries::RegistryConfig;
use crate::source::Source;
use crate::store::Store;
use crate::{layout, registry};

/// Receives pull progress; called from the pulling tasks, so keep it quick
/// (e.g. forward into a channel or update a progress bar).
pub type ProgressFn = Arc<dyn Fn(&PullEvent) + Send + Sync>;

/// What a blob is, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    /// The image config.
    Config,
    /// A filesystem layer.
    Layer,
}

/// Progress of a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// A mirror (or the registry) failed; the next endpoint is tried.
    EndpointFailed {
        /// `mirror http://…` or `https://registry`.
        endpoint: String,
        /// The error, as text.
        error: String,
    },
    /// The manifest is known; these blobs make up the image.
    Resolved {
        /// The image manifest digest (the image's identity).
        manifest_digest: Digest,
        /// `(digest, size)` of each layer, in order.
        layers: Vec<(Digest, u64)>,
    },
    /// A blob is not in the store; its transfer starts.
    BlobStarted {
        /// The blob.
        digest: Digest,
        /// Config or layer.
        kind: BlobKind,
        /// Its size in bytes.
        size: u64,
    },
    /// Bytes of a blob transferred so far (sent at most every 256 KiB).
    BlobProgress {
        /// The blob.
        digest: Digest,
        /// Bytes so far.
        done: u64,
        /// Total bytes.
        size: u64,
    },
    /// A blob is in the store.
    BlobDone {
        /// The blob.
        digest: Digest,
        /// Config or layer.
        kind: BlobKind,
        /// Its size in bytes.
        size: u64,
        /// False when nothing was transferred: the blob was already there,
        /// or another pull (maybe another process) stored it meanwhile.
        fetched: bool,
    },
}

/// When to contact the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Always resolve the reference (a HEAD request for a tag); blobs
    /// already stored are never fetched again.
    #[default]
    Always,
    /// Use the stored record if it is complete, else pull (Docker's
    /// `--pull=missing`, what `docker run` does).
    IfMissing,
    /// Only use the store; fail if the image is not there.
    Never,
}

/// How to pull.
#[derive(Clone)]
pub struct PullOptions {
    /// The platform to pick from multi-platform images (linux/amd64).
    pub platform: Platform,
    /// Mirrors, insecure registries, credentials location.
    pub registry: RegistryConfig,
    /// Progress callback.
    pub progress: Option<ProgressFn>,
    /// Layers transferred at once (at least 1).
    pub max_concurrent_downloads: usize,
    /// When to contact the source.
    pub policy: PullPolicy,
}

impl Default for PullOptions {
    /// linux/amd64, no mirrors or insecure registries (the environment is
    /// *not* read: use [`PullOptions::from_env`] for that), 4 parallel
    /// layer downloads, [`PullPolicy::Always`].
    fn default() -> Self {
        PullOptions {
            platform: Platform::default(),
            registry: RegistryConfig::default(),
            progress: None,
            max_concurrent_downloads: 4,
            policy: PullPolicy::Always,
        }
    }
}

impl PullOptions {
    /// Defaults with the registry settings of the user's config file and
    /// environment (see [`RegistryConfig::from_env`]).
    pub fn from_env() -> Result<Self> {
        Ok(PullOptions {
            registry: RegistryConfig::from_env()?,
            ..PullOptions::default()
        })
    }

    pub(crate) fn emit(&self, event: PullEvent) {
        if let Some(p) = &self.progress {
            p(&event);
        }
    }
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions")
            .field("platform", &self.platform)
            .field("registry", &self.registry)
            .field("progress", &self.progress.is_some())
            .field("max_concurrent_downloads", &self.max_concurrent_downloads)
            .field("policy", &self.policy)
            .finish()
    }
}

/// One layer of a pulled image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerInfo {
    /// Digest of the (compressed) blob.
    pub digest: Digest,
    /// Blob size in bytes.
    pub size: u64,
    /// The layer media type.
    pub media_type: String,
    /// How the blob is compressed.
    pub compression: Compression,
    /// The blob file in the store.
    pub path: PathBuf,
}

/// What a pull transferred.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PullStats {
    /// Blobs this pull wrote into the store (manifests included).
    pub blobs_fetched: u64,
    /// Bytes of those blobs.
    pub bytes_fetched: u64,
}

/// A pulled image, all of whose blobs are in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PulledImage {
    /// The source's key (`docker.io/library/alpine:latest`, `oci:/dir:tag` ...).
    pub reference: String,
    /// The index (manifest list) digest, if the source was multi-platform.
    pub index_digest: Option<Digest>,
    /// The image manifest digest: the image's identity.
    pub manifest_digest: Digest,
    /// The config blob digest (Docker's "image ID").
    pub config_digest: Digest,
    /// The parsed config.
    pub config: ImageConfig,
    /// Layers, bottom first.
    pub layers: Vec<LayerInfo>,
    /// What this pull transferred (zero on a warm pull).
    pub stats: PullStats,
}

impl PulledImage {
    /// Everything about the image as pretty JSON (for `inspect`). Strings
    /// from the image (its config's Env, Labels, Cmd...) are untrusted:
    /// serde_json escapes C0 control characters, and this also writes DEL,
    /// C1 controls and bidirectional overrides as `\uXXXX` escapes, so
    /// printing the JSON cannot drive the terminal. Still valid JSON with
    /// the same values.
    #[allow(
        clippy::expect_used,
        reason = "a derived Serialize of strings, numbers and string-keyed maps cannot fail"
    )]
    pub fn inspect_json(&self) -> String {
        let json = serde_json::to_string_pretty(self).expect("PulledImage serializes");
        let mut out = String::with_capacity(json.len());
        for c in json.chars() {
            // Raw C0 left in serde_json's output is its own layout (the
            // newlines of pretty printing), never a string's content.
            if u32::from(c) >= 0x7f && supermachine_rootfs::needs_escape(c) {
                // All of these are in the BMP: one \uXXXX each.
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            } else {
                out.push(c);
            }
        }
        out
    }

    /// Sum of config and layer sizes (what the image takes in the store).
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// An index and manifest, as bytes with their claimed digests.
pub(crate) struct Resolved {
    pub index: Option<(Digest, Vec<u8>)>,
    pub manifest: (Digest, Vec<u8>),
}

/// Where blobs come from.
pub(crate) enum Fetcher {
    Registry(Box<registry::RemoteBlobs>),
    Local(Arc<dyn layout::LocalBlobs>),
}

impl Store {
    /// Pulls `source` into the store (see [`PullOptions`] for how).
    pub async fn pull(&self, source: &Source, options: &PullOptions) -> Result<PulledImage> {
        let store = self.clone();
        // Pulls share the store lease so `gc` cannot delete blobs that are
        // stored but not yet referenced by a record.
        let _lease = tokio::task::spawn_blocking(move || store.lease())
            .await
            .map_err(join_error)??;
        let key = source.key();
        if options.policy != PullPolicy::Always {
            // An unreadable record is treated as missing: the pull rewrites it.
            if let Ok(Some(image)) = self.image(source) {
                return Ok(image);
            }
            if options.policy == PullPolicy::Never {
                return Err(Error::ImageNotFound(key));
            }
        }
        let (resolved, fetcher) = match source {
            Source::Registry(reference) => registry::resolve(self, reference, options).await?,
            Source::OciLayout { path, tag } => {
                let (path, tag, platform) = (path.clone(), tag.clone(), options.platform.clone());
                run_blocking(move || layout::resolve_dir(&path, tag.as_deref(), &platform)).await?
            }
            Source::DockerArchive { path, reference } => {
                let (path, reference, platform) =
                    (path.clone(), reference.clone(), options.platform.clone());
                run_blocking(move || {
                    crate::docker_archive::resolve(&path, reference.as_deref(), &platform)
                })
                .await?
            }
        };
        let mut counter = Counter::default();
        let image = self
            .complete(&key, resolved, &fetcher, options, &mut counter)
            .await?;
        Ok(PulledImage {
            stats: PullStats {
                blobs_fetched: counter.blobs,
                bytes_fetched: counter.bytes,
            },
            ..image
        })
    }

    /// Stores manifest and index, fetches missing blobs, writes the record.
    async fn complete(
        &self,
        key: &str,
        resolved: Resolved,
        fetcher: &Fetcher,
        options: &PullOptions,
        counter: &mut Counter,
    ) -> Result<PulledImage> {
        let Resolved { index, manifest } = resolved;
        if let Some((digest, bytes)) = &index {
            counter.add(self.put_bytes(digest, bytes, &format!("index {digest} of {key}"))?);
        }
        let (manifest_digest, manifest_bytes) = manifest;
        let what = format!("manifest {manifest_digest} of {key}");
        let Parsed::Manifest(m) = manifest::parse(&manifest_bytes, &what)? else {
            return Err(Error::InvalidManifest {
                what,
                reason: "an index where an image manifest was expected".into(),
            });
        };
        options.emit(PullEvent::Resolved {
            manifest_digest: manifest_digest.clone(),
            layers: m
                .layers
                .iter()
                .map(|(d, _)| (d.digest.clone(), d.size))
                .collect(),
        });

        // Config first: it is small and says whether the image fits our platform.
        counter.add(
            self.ensure_blob(fetcher, &m.config, BlobKind::Config, key, options)
                .await?,
        );
        let config_bytes = self.read_blob(&m.config.digest, MAX_CONFIG_BYTES)?;
        let config = ImageConfig::parse(
            &config_bytes,
            &format!("config {} of {key}", m.config.digest),
        )?;
        config.check_platform(&options.platform, key)?;

        // The futures are built before they enter the stream: a `.map()`
        // closure returning a borrowing future makes the whole pull future
        // non-`Send` (a known higher-ranked lifetime limitation of rustc).
        let downloads: Vec<_> = m
            .layers
            .iter()
            .map(|(d, _)| self.ensure_blob(fetcher, d, BlobKind::Layer, key, options))
            .collect();
        let fetched: Vec<Option<u64>> = futures_util::stream::iter(downloads)
            .buffered(options.max_concurrent_downloads.max(1))
            .try_collect()
            .await?;
        for f in fetched {
            counter.add(f);
        }
        // Store the manifest last: its presence (with all it names) is what
        // makes a later pull of the same digest a no-op.
        counter.add(self.put_bytes(&manifest_digest, &manifest_bytes, &what)?);

        let layers: Vec<LayerInfo> = m
            .layers
            .iter()
            .map(|(d, c)| LayerInfo {
                digest: d.digest.clone(),
                size: d.size,
                media_type: d.media_type.clone(),
                compression: *c,
                path: self.blob_path(&d.digest),
            })
            .collect();
        let record = ImageRecord {
            version: RECORD_VERSION,
            reference: key.to_string(),
            index_digest: index.as_ref().map(|(d, _)| d.clone()),
            manifest_digest: manifest_digest.clone(),
            config_digest: m.config.digest.clone(),
            config_size: m.config.size,
            layers: layers
                .iter()
                .map(|l| LayerRecord {
                    digest: l.digest.clone(),
                    size: l.size,
                    media_type: l.media_type.clone(),
                })
                .collect(),
            pulled_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        self.save_record(&record)?;
        Ok(PulledImage {
            reference: key.to_string(),
            index_digest: record.index_digest,
            manifest_digest,
            config_digest: m.config.digest,
            config,
            layers,
            stats: PullStats::default(),
        })
    }

    /// Makes sure a blob is stored; returns `Some(bytes)` if this call
    /// transferred it.
    async fn ensure_blob(
        &self,
        fetcher: &Fetcher,
        desc: &Desc,
        kind: BlobKind,
        key: &str,
        options: &PullOptions,
    ) -> Result<Option<u64>> {
        let done = |fetched| {
            options.emit(PullEvent::BlobDone {
                digest: desc.digest.clone(),
                kind,
                size: desc.size,
                fetched,
            })
        };
        if self.has_blob(&desc.digest, Some(desc.size)) {
            done(false);
            return Ok(None);
        }
        // One fetcher per digest across processes; a waiter finds the blob
        // present when it gets the lock.
        let (store, digest) = (self.clone(), desc.digest.clone());
        let _lock = run_blocking(move || store.lock_blob(&digest)).await?;
        if self.has_blob(&desc.digest, Some(desc.size)) {
            done(false);
            return Ok(None);
        }
        options.emit(PullEvent::BlobStarted {
            digest: desc.digest.clone(),
            kind,
            size: desc.size,
        });
        let what = format!(
            "{} {} of {key}",
            if kind == BlobKind::Config {
                "config"
            } else {
                "layer"
            },
            desc.digest
        );
        let writer = self.writer(Some(&desc.digest), Some(desc.size), &what)?;
        let writer = match fetcher {
            Fetcher::Registry(remote) => remote.fetch(desc, writer, options).await?,
            Fetcher::Local(local) => {
                let (local, desc, progress) = (local.clone(), desc.clone(), options.clone());
                run_blocking(move || layout::copy_blob(&*local, &desc, writer, &progress)).await?
            }
        };
        run_blocking(move || writer.commit()).await?;
        done(true);
        Ok(Some(desc.size))
    }

    /// Stores small in-memory content (manifests, indexes) after checking
    /// that it hashes to `digest`. Returns `Some(len)` if it was new.
    pub(crate) fn put_bytes(
        &self,
        digest: &Digest,
        bytes: &[u8],
        what: &str,
    ) -> Result<Option<u64>> {
        manifest::check_size(
            what,
            bytes.len() as u64,
            MAX_MANIFEST_BYTES.max(MAX_CONFIG_BYTES),
        )?;
        if self.has_blob(digest, Some(bytes.len() as u64)) {
            return Ok(None);
        }
        let _lock = self.lock_blob(digest)?;
        if self.has_blob(digest, Some(bytes.len() as u64)) {
            return Ok(None);
        }
        let mut w = self.writer(Some(digest), Some(bytes.len() as u64), what)?;
        w.write(bytes)?;
        w.commit()?;
        Ok(Some(bytes.len() as u64))
    }
}

#[derive(Default)]
struct Counter {
    blobs: u64,
    bytes: u64,
}

impl Counter {
    fn add(&mut self, fetched: Option<u64>) {
        if let Some(n) = fetched {
            self.blobs += 1;
            self.bytes += n;
        }
    }
}

/// Runs blocking file work (locks, fsync, local copies) off the async threads.
pub(crate) async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(join_error)?
}

fn join_error(e: tokio::task::JoinError) -> Error {
    Error::io("background task", std::io::Error::other(e.to_string()))
}
