//! What a VM boots from.

pub mod assets;
pub(crate) mod defaults;
pub mod images;
pub mod kernel;
pub(crate) mod pull;
pub(crate) mod rootfs;

use crate::error::Error;
use crate::image::defaults::{docker_command, ExecDefaults};
use crate::snapshot::{self, SnapshotMeta};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use supermachine_oci::{Digest, ImageConfig, PulledImage};

/// A root filesystem a VM boots from: mounted read-only in the guest under
/// a RAM-backed overlay, so writes inside the VM never reach the image.
///
/// Three kinds: the built-in busybox one, a root filesystem file, and an
/// OCI image ([`Image::pull`]), which also brings its config: the default
/// command ([`Image::command`]) and the Env, WorkingDir and User every exec
/// in the VM starts with.
///
/// ```
/// use supermachine::Image;
/// let image = Image::from_rootfs("/var/lib/images/app.ext4");
/// assert_eq!(image.name(), "/var/lib/images/app.ext4");
/// assert_eq!(Image::builtin().name(), "builtin:busybox");
/// assert!(Image::builtin().config().is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    kind: Kind,
    /// The network VMs restored from this snapshot get when their config
    /// names none: what the build was given (held in memory only, never
    /// read from the snapshot; see [`Image::with_network`]).
    network: Option<crate::Network>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Builtin,
    Rootfs(PathBuf),
    Oci(Arc<OciImage>),
    Snapshot(Arc<SnapshotImage>),
}

/// A snapshot directory and what its `meta.json` says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SnapshotImage {
    pub dir: PathBuf,
    pub meta: SnapshotMeta,
}

/// An OCI image whose root filesystem is built.
#[derive(Debug, PartialEq, Eq)]
struct OciImage {
    pulled: PulledImage,
    rootfs: PathBuf,
}

impl Image {
    /// VMs started from this image get `network` when their
    /// [`VmConfig::network`](crate::VmConfig::network) is `None`: how a
    /// build's network policy reaches its pool's copies (a snapshot keeps
    /// only that it had a network, never a policy: it may come from
    /// anywhere). [`Image::build`] sets it from its options.
    ///
    /// ```
    /// use supermachine::{Image, Network};
    /// let image = Image::builtin().with_network(Some(Network::Public));
    /// assert_eq!(image.network(), Some(&Network::Public));
    /// ```
    pub fn with_network(mut self, network: Option<crate::Network>) -> Image {
        self.network = network;
        self
    }

    /// The network set by [`Image::with_network`].
    pub fn network(&self) -> Option<&crate::Network> {
        self.network.as_ref()
    }

    /// The small built-in root filesystem made from Debian's busybox-static
    /// (built into the cache on first use).
    ///
    /// ```
    /// use supermachine::Image;
    /// assert_eq!(Image::builtin(), Image::default());
    /// assert!(Image::builtin().rootfs_path().is_none());
    /// ```
    pub fn builtin() -> Image {
        Image {
            kind: Kind::Builtin,
            network: None,
        }
    }

    /// A root filesystem image file (ext4 or EROFS).
    ///
    /// ```
    /// use supermachine::Image;
    /// let image = Image::from_rootfs("/srv/images/app.ext4");
    /// assert_eq!(image.rootfs_path(), Some(std::path::Path::new("/srv/images/app.ext4")));
    /// ```
    pub fn from_rootfs(path: impl Into<PathBuf>) -> Image {
        Image {
            kind: Kind::Rootfs(path.into()),
            network: None,
        }
    }

    /// A snapshot written by [`crate::Vm::snapshot`] or [`Image::build`]:
    /// a VM started from it is restored (copy-on-write from the snapshot's
    /// memory file) instead of booted, and runs on from where the snapshot
    /// was taken. Its memory size and vCPU count are the snapshot's.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), supermachine::Error> {
    /// use supermachine::{Image, Vm, VmConfig};
    /// let image = Image::from_snapshot("/srv/snapshots/app")?;
    /// let vm = Vm::start(&image, &VmConfig::default()).await?;
    /// # Ok(()) }
    /// ```
    pub fn from_snapshot(dir: impl Into<PathBuf>) -> Result<Image, Error> {
        let dir = dir.into();
        let dir = std::fs::canonicalize(&dir).map_err(|e| Error::Snapshot {
            path: dir.clone(),
            reason: match e.kind() {
                std::io::ErrorKind::NotFound => snapshot::SnapshotProblem::NotFound,
                _ => snapshot::SnapshotProblem::Io {
                    what: "resolving the snapshot directory".into(),
                    source: e,
                },
            },
        })?;
        let meta = snapshot::read_meta(&dir)?;
        Ok(Image {
            kind: Kind::Snapshot(Arc::new(SnapshotImage { dir, meta })),
            network: None,
        })
    }

    /// The snapshot directory, for an image made by [`Image::from_snapshot`].
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), supermachine::Error> {
    /// let image = supermachine::Image::from_snapshot("/srv/snapshots/app")?;
    /// println!("restores from {}", image.snapshot_dir().unwrap().display());
    /// # Ok(()) }
    /// ```
    pub fn snapshot_dir(&self) -> Option<&Path> {
        self.snapshot().map(|s| s.dir.as_path())
    }

    /// The build key of a snapshot made by [`Image::build`].
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), supermachine::Error> {
    /// let image = supermachine::Image::from_snapshot("/srv/snapshots/app")?;
    /// println!("built with key {:?}", image.snapshot_key());
    /// # Ok(()) }
    /// ```
    pub fn snapshot_key(&self) -> Option<&str> {
        self.snapshot().and_then(|s| s.meta.key.as_deref())
    }

    pub(crate) fn snapshot(&self) -> Option<&SnapshotImage> {
        match &self.kind {
            Kind::Snapshot(s) => Some(s),
            _ => None,
        }
    }

    /// An OCI image from the store whose root filesystem is `rootfs`.
    pub(crate) fn from_pulled(pulled: PulledImage, rootfs: PathBuf) -> Image {
        Image {
            kind: Kind::Oci(Arc::new(OciImage { pulled, rootfs })),
            network: None,
        }
    }

    /// How the image is shown to users (`supermachine ps`): the normalized
    /// reference of an OCI image (`docker.io/library/alpine:3.20`,
    /// `oci:/abs/dir:tag`), the path of a root filesystem file.
    ///
    /// ```
    /// use supermachine::Image;
    /// assert_eq!(Image::from_rootfs("/srv/app.ext4").name(), "/srv/app.ext4");
    /// ```
    pub fn name(&self) -> String {
        match &self.kind {
            Kind::Builtin => "builtin:busybox".into(),
            Kind::Rootfs(p) => p.display().to_string(),
            Kind::Oci(o) => o.pulled.reference.clone(),
            Kind::Snapshot(s) => s.meta.image.clone(),
        }
    }

    /// The image config (Entrypoint, Cmd, Env, ...) of an OCI image.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), supermachine::Error> {
    /// let image = supermachine::Image::from_store("nginx:1.27").await?;
    /// let config = image.config().expect("an OCI image has a config");
    /// println!("{:?} {:?}", config.entrypoint, config.exposed_ports);
    /// # Ok(()) }
    /// ```
    pub fn config(&self) -> Option<&ImageConfig> {
        self.oci().map(|p| &p.config)
    }

    /// The manifest digest of an OCI image: its identity.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), supermachine::Error> {
    /// let image = supermachine::Image::from_store("alpine:3.20").await?;
    /// println!("{}", image.digest().expect("an OCI image has a digest"));
    /// # Ok(()) }
    /// ```
    pub fn digest(&self) -> Option<&Digest> {
        self.oci().map(|p| &p.manifest_digest)
    }

    /// Everything known about an OCI image: digests, config, layers.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), supermachine::Error> {
    /// let image = supermachine::Image::from_store("alpine:3.20").await?;
    /// for layer in &image.oci().expect("an OCI image").layers {
    ///     println!("{} {} bytes", layer.digest, layer.size);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn oci(&self) -> Option<&PulledImage> {
        match &self.kind {
            Kind::Oci(o) => Some(&o.pulled),
            _ => None,
        }
    }

    /// The root filesystem file of an OCI image (EROFS) or a file image.
    ///
    /// ```
    /// use supermachine::Image;
    /// let image = Image::from_rootfs("/srv/images/app.ext4");
    /// assert!(image.rootfs_path().is_some_and(|p| p.ends_with("app.ext4")));
    /// assert_eq!(Image::builtin().rootfs_path(), None);
    /// ```
    pub fn rootfs_path(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Builtin => None,
            Kind::Rootfs(p) => Some(p),
            Kind::Oci(o) => Some(&o.rootfs),
            Kind::Snapshot(_) => None,
        }
    }

    /// The command to run by Docker's rules: the Entrypoint followed by
    /// `args` when given (they replace the image's Cmd), else by the Cmd.
    /// Images without a config (the built-in one, a root filesystem file)
    /// have neither, so `args` is the command. Nothing at all to run is
    /// [`Error::NoCommand`].
    ///
    /// ```
    /// use supermachine::Image;
    /// let argv = Image::builtin().command(&["echo".into(), "hi".into()]).unwrap();
    /// assert_eq!(argv, ["echo", "hi"]);
    /// assert!(Image::builtin().command(&[]).is_err());
    /// ```
    pub fn command(&self, args: &[String]) -> Result<Vec<String>, Error> {
        docker_command(self.config(), args, &self.name())
    }

    /// The Env, WorkingDir and User of an OCI image's config, which every
    /// exec in a VM booted from it starts with (for a snapshot: those of
    /// the VM it was taken from); empty for other images.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), supermachine::Error> {
    /// let image = supermachine::Image::from_store("python:3.12-slim").await?;
    /// let defaults = image.exec_defaults();
    /// println!("cwd {:?}, user {:?}", defaults.cwd, defaults.user);
    /// for (name, value) in &defaults.env {
    ///     println!("{name}={value}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn exec_defaults(&self) -> ExecDefaults {
        if let Some(s) = self.snapshot() {
            return s.meta.defaults.clone();
        }
        self.config()
            .map(ExecDefaults::from_config)
            .unwrap_or_default()
    }

    /// The root filesystem file, built first if it is the built-in one.
    pub(crate) fn rootfs(&self) -> Result<PathBuf, Error> {
        let path = match &self.kind {
            Kind::Builtin => assets::default_rootfs()?,
            Kind::Rootfs(p) => p.clone(),
            Kind::Oci(o) if !o.rootfs.is_file() => {
                return Err(Error::RootfsRemoved {
                    image: o.pulled.reference.clone(),
                    path: o.rootfs.clone(),
                })
            }
            Kind::Oci(o) => o.rootfs.clone(),
            Kind::Snapshot(s) => {
                return Err(Error::InvalidArgument(format!(
                    "{} is a snapshot: it is restored, not booted",
                    s.dir.display()
                )))
            }
        };
        if !path.is_file() {
            return Err(Error::InvalidArgument(format!(
                "root filesystem {} does not exist",
                path.display()
            )));
        }
        Ok(path)
    }
}

impl Default for Image {
    fn default() -> Self {
        Image::builtin()
    }
}
