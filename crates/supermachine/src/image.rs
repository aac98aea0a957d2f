//! What a VM boots from.

use crate::assets;
use crate::defaults::{docker_command, ExecDefaults};
use crate::error::Error;
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Builtin,
    Rootfs(PathBuf),
    Oci(Arc<OciImage>),
}

/// An OCI image whose root filesystem is built.
#[derive(Debug, PartialEq, Eq)]
struct OciImage {
    pulled: PulledImage,
    rootfs: PathBuf,
}

impl Image {
    /// The small built-in root filesystem made from Debian's busybox-static
    /// (built into the cache on first use).
    pub fn builtin() -> Image {
        Image {
            kind: Kind::Builtin,
        }
    }

    /// A root filesystem image file (ext4 or EROFS).
    pub fn from_rootfs(path: impl Into<PathBuf>) -> Image {
        Image {
            kind: Kind::Rootfs(path.into()),
        }
    }

    /// An OCI image from the store whose root filesystem is `rootfs`.
    pub(crate) fn from_pulled(pulled: PulledImage, rootfs: PathBuf) -> Image {
        Image {
            kind: Kind::Oci(Arc::new(OciImage { pulled, rootfs })),
        }
    }

    /// How the image is shown to users (`supermachine ps`): the normalized
    /// reference of an OCI image (`docker.io/library/alpine:3.20`,
    /// `oci:/abs/dir:tag`), the path of a root filesystem file.
    pub fn name(&self) -> String {
        match &self.kind {
            Kind::Builtin => "builtin:busybox".into(),
            Kind::Rootfs(p) => p.display().to_string(),
            Kind::Oci(o) => o.pulled.reference.clone(),
        }
    }

    /// The image config (Entrypoint, Cmd, Env, ...) of an OCI image.
    pub fn config(&self) -> Option<&ImageConfig> {
        self.oci().map(|p| &p.config)
    }

    /// The manifest digest of an OCI image: its identity.
    pub fn digest(&self) -> Option<&Digest> {
        self.oci().map(|p| &p.manifest_digest)
    }

    /// Everything known about an OCI image: digests, config, layers.
    pub fn oci(&self) -> Option<&PulledImage> {
        match &self.kind {
            Kind::Oci(o) => Some(&o.pulled),
            _ => None,
        }
    }

    /// The root filesystem file of an OCI image (EROFS) or a file image.
    pub fn rootfs_path(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Builtin => None,
            Kind::Rootfs(p) => Some(p),
            Kind::Oci(o) => Some(&o.rootfs),
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
    /// exec in a VM booted from it starts with; empty for other images.
    pub fn exec_defaults(&self) -> ExecDefaults {
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
                return Err(Error::Setup(format!(
                    "the root filesystem of {} ({}) was removed (by `supermachine gc`?): pull the image again",
                    o.pulled.reference,
                    o.rootfs.display()
                )))
            }
            Kind::Oci(o) => o.rootfs.clone(),
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
