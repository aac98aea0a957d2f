//! What a VM boots from.

use crate::assets;
use crate::error::Error;
use std::path::PathBuf;

/// A root filesystem a VM boots from: mounted read-only in the guest under
/// a RAM-backed overlay, so writes inside the VM never reach the image.
///
/// ```
/// use supermachine::Image;
/// let image = Image::from_rootfs("/var/lib/images/app.ext4");
/// assert_eq!(image.name(), "/var/lib/images/app.ext4");
/// assert_eq!(Image::builtin().name(), "builtin:busybox");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    rootfs: Option<PathBuf>,
}

impl Image {
    /// The small built-in root filesystem made from Debian's busybox-static
    /// (built into the cache on first use).
    pub fn builtin() -> Image {
        Image { rootfs: None }
    }

    /// A root filesystem image file (ext4 or EROFS).
    pub fn from_rootfs(path: impl Into<PathBuf>) -> Image {
        Image {
            rootfs: Some(path.into()),
        }
    }

    /// How the image is shown to users (`supermachine ps`).
    pub fn name(&self) -> String {
        match &self.rootfs {
            Some(p) => p.display().to_string(),
            None => "builtin:busybox".into(),
        }
    }

    /// The root filesystem file, built first if it is the built-in one.
    pub(crate) fn rootfs(&self) -> Result<PathBuf, Error> {
        let path = match &self.rootfs {
            Some(p) => p.clone(),
            None => assets::default_rootfs()?,
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
