//! Bounds that keep a hostile layer from exhausting host memory, disk and
//! CPU.
//!
//! What a layer can make us hold in memory is metadata: names, symlink
//! targets, xattrs, one inode per entry, and the PAX / GNU long-name
//! records the tar reader buffers. What it can make us spend in CPU is the
//! bytes we decompress and scan; in disk, the file data we keep in the
//! spool. Every one of those is bounded here, and every bound is counted
//! over the whole tree (all layers), so many small layers cannot add up to
//! more than one large one.
//!
//! The defaults are far above any real image (the largest public images
//! unpack to 10–20 GiB and have a few hundred thousand files) and fit a
//! laptop. Measured with the name cap filled by 4 million one-byte files:
//! about 180 bytes of memory per name while layers are applied and 1.6 GiB
//! at the peak while the EROFS image is written, 41 s of CPU; names and
//! xattrs add at most `max_metadata_bytes` (512 MiB). The unpacked-size cap
//! is a minute or two of decompression; the spool cap is 16 GiB of scratch
//! disk. Raise them (the options struct, or the environment through
//! [`Limits::from_env`]) for images you trust.

use std::fmt;

/// Environment variable overriding [`Limits::max_unpacked_bytes`].
pub const MAX_UNPACKED_ENV: &str = "SUPERMACHINE_IMAGE_MAX_UNPACKED";
/// Environment variable overriding [`Limits::max_spool_bytes`].
pub const MAX_SPOOL_ENV: &str = "SUPERMACHINE_IMAGE_MAX_SPOOL";
/// Environment variable overriding [`Limits::max_inodes`].
pub const MAX_INODES_ENV: &str = "SUPERMACHINE_IMAGE_MAX_INODES";

/// Configurable bounds on what a tree accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Names in the merged tree plus one for the root: every file,
    /// directory, symlink, device and fifo, and every extra hard-link name.
    /// Each costs memory whether or not it has its own inode, so hard links
    /// count too. It also bounds the inodes.
    pub max_inodes: u64,
    /// The unpacked size: bytes of the uncompressed tar streams of all
    /// layers (headers, file data, anything after the end-of-archive
    /// marker) plus the holes of sparse files, which a reader of the image
    /// sees as zeros. It bounds the CPU spent decompressing and scanning
    /// (a few KiB of gzip or zstd can unpack to many GiB) and the logical
    /// size of the image's files.
    pub max_unpacked_bytes: u64,
    /// Bytes of file data written to the spool (the scratch file on disk,
    /// see [`crate::TreeOptions::spool_dir`]). All-zero 4 KiB blocks and
    /// sparse holes are not written and do not count. The finished EROFS
    /// image holds at most this much file data too.
    pub max_spool_bytes: u64,
    /// Length in bytes of one entry path as found in the tar stream.
    pub max_path_len: usize,
    /// Number of components of one entry path.
    pub max_depth: usize,
    /// Total bytes of one entry's PAX and GNU long-name records and sparse
    /// maps, which the tar reader holds in memory.
    pub max_header_bytes: u64,
    /// Total bytes (names plus values) of the xattrs of one inode. EROFS
    /// additionally caps a single value at 65535 bytes.
    pub max_xattr_bytes: usize,
    /// Total bytes of names, symlink targets and xattrs taken in over the
    /// life of the tree.
    pub max_metadata_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_inodes: 4 << 20,
            max_unpacked_bytes: 32 << 30,
            max_spool_bytes: 16 << 30,
            max_path_len: 4096,
            max_depth: 512,
            max_header_bytes: 1 << 20,
            max_xattr_bytes: 64 << 10,
            max_metadata_bytes: 512 << 20,
        }
    }
}

/// An environment variable that does not hold a size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?} is not a size (a number with an optional K, M, G or T suffix, powers of 1024)")]
pub struct LimitsEnvError {
    /// The variable.
    pub name: &'static str,
    /// Its value.
    pub value: String,
}

impl Limits {
    /// The defaults, with the caps an operator may want to raise (or
    /// lower) taken from [`MAX_UNPACKED_ENV`], [`MAX_SPOOL_ENV`] and
    /// [`MAX_INODES_ENV`] when set (`64G`, `500000`, `2T` ...).
    pub fn from_env() -> Result<Self, LimitsEnvError> {
        let mut limits = Self::default();
        for (name, field) in [
            (MAX_UNPACKED_ENV, &mut limits.max_unpacked_bytes),
            (MAX_SPOOL_ENV, &mut limits.max_spool_bytes),
            (MAX_INODES_ENV, &mut limits.max_inodes),
        ] {
            let Some(value) = std::env::var_os(name) else {
                continue;
            };
            let value = value.to_string_lossy().into_owned();
            *field = parse_size(&value).ok_or(LimitsEnvError { name, value })?;
        }
        Ok(limits)
    }
}

/// `123`, `64K`, `32G`, `1T` (binary multiples, case-insensitive, an
/// optional trailing `B` or `iB`).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s
        .strip_suffix("iB")
        .or_else(|| s.strip_suffix('B'))
        .unwrap_or(s);
    let (digits, shift) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 10),
        (i, 'm' | 'M') => (&s[..i], 20),
        (i, 'g' | 'G') => (&s[..i], 30),
        (i, 't' | 'T') => (&s[..i], 40),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

/// Which configurable cap a [`crate::Error::LimitExceeded`] hit, so that the
/// message can say how to raise it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// [`Limits::max_inodes`].
    Inodes,
    /// [`Limits::max_unpacked_bytes`].
    UnpackedBytes,
    /// [`Limits::max_spool_bytes`].
    SpoolBytes,
    /// [`Limits::max_path_len`].
    PathLen,
    /// [`Limits::max_depth`].
    Depth,
    /// [`Limits::max_header_bytes`].
    HeaderBytes,
    /// [`Limits::max_xattr_bytes`].
    XattrBytes,
    /// [`Limits::max_metadata_bytes`].
    MetadataBytes,
    /// A bound of Linux or EROFS that no option changes.
    Format,
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (field, env) = match self {
            Self::Inodes => ("max_inodes", Some(MAX_INODES_ENV)),
            Self::UnpackedBytes => ("max_unpacked_bytes", Some(MAX_UNPACKED_ENV)),
            Self::SpoolBytes => ("max_spool_bytes", Some(MAX_SPOOL_ENV)),
            Self::PathLen => ("max_path_len", None),
            Self::Depth => ("max_depth", None),
            Self::HeaderBytes => ("max_header_bytes", None),
            Self::XattrBytes => ("max_xattr_bytes", None),
            Self::MetadataBytes => ("max_metadata_bytes", None),
            Self::Format => return f.write_str("a limit of the EROFS format or of Linux"),
        };
        write!(f, "Limits::{field}")?;
        if let Some(env) = env {
            write!(f, ", environment variable {env}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("32g"), Some(32 << 30));
        assert_eq!(parse_size("2TiB"), Some(2 << 40));
        assert_eq!(parse_size("1MB"), Some(1 << 20));
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("G"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }
}
