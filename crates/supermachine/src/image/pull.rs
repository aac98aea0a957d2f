//! Getting an OCI image: pull its blobs into the store, then build (or
//! find) its root filesystem.

use crate::error::Error;
use crate::image::rootfs;
use crate::image::Image;
use std::path::PathBuf;
use std::sync::Arc;
use supermachine_oci::{Digest, PullEvent, PullPolicy, RegistryConfig, Source, Store};
use supermachine_rootfs::Limits;

/// Receives [`ImageEvent`]s; called from pulling and building threads, so
/// keep it quick (update a progress bar, send into a channel).
///
/// ```
/// use std::sync::{mpsc, Arc};
/// use supermachine::{ImageEvent, ImageProgressFn};
/// let (tx, rx) = mpsc::channel();
/// let progress: ImageProgressFn = Arc::new(move |event: &ImageEvent| {
///     let _ = tx.send(event.clone());
/// });
/// progress(&ImageEvent::RootfsCached { path: "/cache/rootfs/ab12.erofs".into() });
/// assert!(matches!(rx.try_recv(), Ok(ImageEvent::RootfsCached { .. })));
/// ```
pub type ImageProgressFn = Arc<dyn Fn(&ImageEvent) + Send + Sync>;

/// Progress of [`Image::pull`]: the pull's own events, then the root
/// filesystem build (skipped when it is cached).
///
/// ```
/// use std::sync::Arc;
/// use supermachine::{ImageEvent, PullOptions};
/// let options = PullOptions {
///     progress: Some(Arc::new(|event: &ImageEvent| match event {
///         ImageEvent::LayerApplied { index, .. } => eprintln!("layer {index} applied"),
///         ImageEvent::RootfsBuilt { path, .. } => eprintln!("built {}", path.display()),
///         _ => {}
///     })),
///     ..PullOptions::default()
/// };
/// assert!(options.progress.is_some());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageEvent {
    /// Resolving and transferring blobs (see [`PullEvent`]).
    Pull(PullEvent),
    /// The root filesystem of this manifest is already built.
    RootfsCached {
        /// The image file.
        path: PathBuf,
    },
    /// Building starts (or waits for another process building the same
    /// image, then finds it done).
    BuildStarted {
        /// The manifest digest.
        manifest_digest: Digest,
        /// Number of layers to apply.
        layers: usize,
    },
    /// A layer is being applied; sent when it starts and then about every
    /// MiB of (compressed) input.
    LayerProgress {
        /// Position in the manifest, bottom first.
        index: usize,
        /// The layer blob.
        digest: Digest,
        /// Compressed bytes read so far.
        done: u64,
        /// Size of the blob.
        size: u64,
    },
    /// A layer is applied.
    LayerApplied {
        /// Position in the manifest.
        index: usize,
        /// The layer blob.
        digest: Digest,
        /// Tar members processed.
        entries: u64,
    },
    /// The root filesystem image is written.
    RootfsBuilt {
        /// The image file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
        /// Inodes in it.
        inodes: u64,
    },
}

/// How [`Image::pull`] gets an image.
///
/// ```
/// use supermachine::{PullOptions, oci::PullPolicy};
/// let options = PullOptions { policy: PullPolicy::IfMissing, ..PullOptions::default() };
/// assert_eq!(options.max_concurrent_downloads, 4);
/// ```
#[derive(Clone)]
pub struct PullOptions {
    /// When to contact the source: [`PullPolicy::Always`] resolves a tag
    /// again (one request when nothing changed), `IfMissing` uses a stored
    /// image as is (what `supermachine run` does), `Never` only the store.
    pub policy: PullPolicy,
    /// Mirrors, plain-http registries, where credentials are.
    pub registry: RegistryConfig,
    /// Layers downloaded at once.
    pub max_concurrent_downloads: usize,
    /// Progress callback.
    pub progress: Option<ImageProgressFn>,
    /// The blob store; `None`: the user's ([`Store::open_default`]).
    pub store: Option<Store>,
    /// Where root filesystems are cached; `None`: [`crate::rootfs_dir`].
    /// (`supermachine gc` only looks at the default one.)
    pub rootfs_dir: Option<PathBuf>,
    /// Caps on what building an image's root filesystem may cost (memory,
    /// scratch disk, unpacked bytes); an image beyond one is refused and
    /// its record forgotten.
    pub limits: Limits,
}

impl Default for PullOptions {
    /// Always resolve, no registry settings (use [`PullOptions::from_env`]
    /// to read them), 4 parallel downloads, no progress, the default store.
    fn default() -> Self {
        PullOptions {
            policy: PullPolicy::Always,
            registry: RegistryConfig::default(),
            max_concurrent_downloads: 4,
            progress: None,
            store: None,
            rootfs_dir: None,
            limits: Limits::default(),
        }
    }
}

impl PullOptions {
    /// Defaults plus the registry settings of the user's
    /// `registries.toml` and the `SUPERMACHINE_REGISTRY_MIRRORS` /
    /// `SUPERMACHINE_INSECURE_REGISTRIES` variables (see
    /// [`RegistryConfig::from_env`]), and the image caps of
    /// `SUPERMACHINE_IMAGE_MAX_UNPACKED` / `_MAX_SPOOL` / `_MAX_INODES`
    /// (see [`Limits::from_env`]).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), supermachine::Error> {
    /// use supermachine::{Image, PullOptions};
    /// let options = PullOptions::from_env()?;
    /// let image = Image::pull("registry.example.com/team/app:v2", &options).await?;
    /// println!("pulled {}", image.name());
    /// # Ok(()) }
    /// ```
    pub fn from_env() -> Result<Self, Error> {
        Ok(PullOptions {
            registry: RegistryConfig::from_env()?,
            limits: Limits::from_env().map_err(|e| Error::InvalidArgument(e.to_string()))?,
            ..PullOptions::default()
        })
    }

    pub(crate) fn emit(&self, event: ImageEvent) {
        if let Some(p) = &self.progress {
            p(&event);
        }
    }

    fn store(&self) -> Result<Store, Error> {
        match &self.store {
            Some(s) => Ok(s.clone()),
            None => Ok(Store::open_default()?),
        }
    }

    fn oci_options(&self) -> supermachine_oci::PullOptions {
        let progress = self.progress.clone().map(|p| {
            Arc::new(move |e: &PullEvent| p(&ImageEvent::Pull(e.clone())))
                as supermachine_oci::ProgressFn
        });
        supermachine_oci::PullOptions {
            registry: self.registry.clone(),
            progress,
            max_concurrent_downloads: self.max_concurrent_downloads.max(1),
            policy: self.policy,
            ..supermachine_oci::PullOptions::default()
        }
    }
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions")
            .field("policy", &self.policy)
            .field("registry", &self.registry)
            .field("max_concurrent_downloads", &self.max_concurrent_downloads)
            .field("progress", &self.progress.is_some())
            .field("store", &self.store)
            .field("rootfs_dir", &self.rootfs_dir)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Image {
    /// Gets an OCI image and its root filesystem.
    ///
    /// `source` is a registry reference (`alpine`, `localhost:5000/app:v1`,
    /// `quay.io/x/y@sha256:…`), `oci:/path/to/layout[:tag]`, or
    /// `docker-archive:/path/to/image.tar[:name:tag]`. Blobs go into the
    /// content-addressed store (verified); the layers are then applied in
    /// order and written as a read-only EROFS image, cached per manifest
    /// digest under `~/.cache/supermachine/rootfs/`: a second pull of the
    /// same image does no layer work, and two processes building the same
    /// image build it once.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), supermachine::Error> {
    /// use supermachine::{Image, PullOptions, Vm, VmConfig};
    /// let image = Image::pull("alpine:3.20", &PullOptions::from_env()?).await?;
    /// println!("{} {}", image.name(), image.digest().unwrap());
    /// let vm = Vm::start(&image, &VmConfig::default()).await?;
    /// let out = vm.exec(image.command(&["cat".into(), "/etc/os-release".into()])?).await?;
    /// print!("{}", out.stdout_lossy());
    /// vm.stop().await?;
    /// # Ok(()) }
    /// ```
    pub async fn pull(source: &str, options: &PullOptions) -> Result<Image, Error> {
        let source = Source::parse(source)?;
        let store = options.store()?;
        let pulled = store.pull(&source, &options.oci_options()).await?;
        let options = options.clone();
        let rootfs = tokio::task::spawn_blocking(move || {
            let path = match rootfs::ensure(&store, &pulled, &options) {
                Ok(path) => path,
                Err(e) => {
                    // A refused image must not stay listed (nor keep its
                    // blobs from gc); a host failure keeps it for a retry.
                    if matches!(&e, Error::Rootfs { source, .. } if source.is_image_fault()) {
                        let _ = store.forget_image(&source, &pulled.manifest_digest);
                    }
                    return Err(e);
                }
            };
            Ok::<_, Error>(Image::from_pulled(pulled, path))
        })
        .await
        .map_err(|source| Error::Task {
            task: "root filesystem builder",
            source,
        })??;
        Ok(rootfs)
    }

    /// An image already in the store, without contacting any registry (its
    /// root filesystem is built if it is not cached).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), supermachine::Error> {
    /// let image = supermachine::Image::from_store("alpine:3.20").await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_store(source: &str) -> Result<Image, Error> {
        let options = PullOptions {
            policy: PullPolicy::Never,
            ..PullOptions::default()
        };
        match Image::pull(source, &options).await {
            Err(Error::Oci(supermachine_oci::Error::ImageNotFound(_))) => {
                Err(Error::NotPulled(source.to_string()))
            }
            other => other,
        }
    }
}
