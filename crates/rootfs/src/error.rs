//! The one error type of this crate.
//!
//! Every variant that comes from a layer names the layer index and, where
//! there is one, the entry path, so that a user can find the offending member
//! with `tar -tvf`. Paths are shown lossily (non-UTF-8 bytes escaped) because
//! they come from untrusted input and end up in terminals and logs.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::limits::Cap;

/// Why an entry was refused as unsafe: it would place something outside the
/// image root, or reach a place through a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsafeReason {
    /// The entry path has `..` components that climb above the root.
    PathEscapesRoot,
    /// A hard link target has `..` components that climb above the root.
    LinkTargetEscapesRoot,
    /// A parent component of the entry path is a symlink created by an
    /// earlier entry or layer; extracting through it could write anywhere.
    ParentIsSymlink,
    /// A parent component of a hard link target is a symlink.
    LinkTargetThroughSymlink,
}

impl std::fmt::Display for UnsafeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PathEscapesRoot => "its path climbs above the image root with '..'",
            Self::LinkTargetEscapesRoot => {
                "its hard link target climbs above the image root with '..'"
            }
            Self::ParentIsSymlink => "a parent directory on its path is a symlink",
            Self::LinkTargetThroughSymlink => "its hard link target goes through a symlink",
        })
    }
}

/// Errors from applying layers and writing images.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The layer tries to place a file outside the root. The image is hostile
    /// or broken; it must not be used.
    #[error(
        "layer {layer}: entry '{path}' rejected: {reason}; the image is unsafe to unpack — \
         rebuild it or use another image"
    )]
    Unsafe {
        /// Index of the layer (as passed to `apply_layer`).
        layer: usize,
        /// The entry path as found in the tar stream.
        path: String,
        /// What was wrong.
        reason: UnsafeReason,
    },

    /// An entry is well-formed tar but makes no sense as a filesystem change
    /// (hard link to a missing file, file below a regular file, ...).
    #[error("layer {layer}: entry '{path}' is invalid: {reason}; the layer is corrupt or was built by a broken tool")]
    InvalidEntry {
        /// Index of the layer.
        layer: usize,
        /// The entry path as found in the tar stream.
        path: String,
        /// What was wrong.
        reason: String,
    },

    /// A bound on memory, disk or work was exceeded; it protects the host
    /// from a hostile image. `cap` says which option raises it.
    #[error("layer {layer}: {at}: {what} exceeds the limit of {limit} ({cap}); raise it only if the image is trusted")]
    LimitExceeded {
        /// Index of the layer.
        layer: usize,
        /// Where in the layer.
        at: At,
        /// Which bound.
        what: &'static str,
        /// The bound.
        limit: u64,
        /// The option (and environment variable) that sets it.
        cap: Cap,
    },

    /// The tar stream is malformed (bad checksum, bad numbers, truncated
    /// member).
    #[error("layer {layer}: corrupt tar stream at {at}: {source}; re-download the layer")]
    Tar {
        /// Index of the layer.
        layer: usize,
        /// The entry being read, or the header that could not be read.
        at: At,
        /// The decoder's complaint.
        #[source]
        source: io::Error,
    },

    /// The image config does not give one `diff_id` per layer, so the
    /// layers cannot be checked against it.
    #[error(
        "the image config lists {diff_ids} diff_ids for {layers} layers; the image is corrupt"
    )]
    DiffIdCount {
        /// Layers in the manifest.
        layers: usize,
        /// Entries of `rootfs.diff_ids` in the config.
        diff_ids: usize,
    },

    /// The uncompressed layer does not hash to the `diff_id` the image
    /// config gives for it: the layer blob and the config disagree.
    #[error("layer {layer}: its uncompressed content is {actual}, but the image config says {expected}; the image is corrupt or was tampered with")]
    DiffIdMismatch {
        /// Index of the layer.
        layer: usize,
        /// The config's diff_id (escaped for display).
        expected: String,
        /// `sha256:<hex>` of the uncompressed stream.
        actual: String,
    },

    /// The compressed stream could not be decoded (truncated gzip, bad zstd
    /// frame).
    #[error(
        "layer {layer}: {format} stream is corrupt or truncated: {source}; re-download the layer"
    )]
    Decompress {
        /// Index of the layer.
        layer: usize,
        /// "gzip" or "zstd".
        format: &'static str,
        /// The decoder's complaint.
        #[source]
        source: io::Error,
    },

    /// The caller said the layer had one compression but its first bytes say
    /// another.
    #[error("layer {layer}: declared {declared} but the data looks like {found}; the media type is wrong — pass Compression::Auto to sniff")]
    CompressionMismatch {
        /// Index of the layer.
        layer: usize,
        /// What the caller declared.
        declared: &'static str,
        /// What the magic bytes say.
        found: &'static str,
    },

    /// The layer uses a compression this crate does not decode.
    #[error("layer {layer}: {format} compressed layers are not supported; only gzip, zstd and uncompressed tar are")]
    UnsupportedCompression {
        /// Index of the layer.
        layer: usize,
        /// The detected format.
        format: &'static str,
    },

    /// Reading the caller's layer stream failed (network, disk).
    #[error("layer {layer}: reading the layer stream failed: {source}")]
    Read {
        /// Index of the layer.
        layer: usize,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// An earlier `apply_layer` failed and left the tree half-applied.
    #[error("the tree is incomplete because applying layer {layer} failed earlier; start over with a new Tree")]
    Poisoned {
        /// The layer whose application failed.
        layer: usize,
    },

    /// The filesystem would exceed what EROFS can address.
    #[error("the image is too large for EROFS: {what}")]
    ImageTooLarge {
        /// Which bound.
        what: String,
    },

    /// A host I/O operation failed (spool file, image file).
    #[error("{context} ({path}): {source}")]
    Io {
        /// What we were doing.
        context: &'static str,
        /// The host path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True when the image is at fault (hostile, corrupt, or beyond a cap)
    /// rather than the host (reading the layer file, writing the spool or
    /// the image): retrying the same image cannot succeed.
    pub fn is_image_fault(&self) -> bool {
        !matches!(
            self,
            Self::Read { .. } | Self::Io { .. } | Self::Poisoned { .. }
        )
    }
}

/// Where in a layer's tar stream something went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum At {
    /// The member with this path (escaped for display).
    Entry(String),
    /// A header at this byte offset of the uncompressed stream, read before
    /// the member's name was known. `previous` is the member before it (for
    /// orientation only: it is not the one at fault).
    Header {
        /// Offset of the header's first block.
        offset: u64,
        /// Path of the member before it, if any (escaped).
        previous: Option<String>,
    },
    /// Data after the end-of-archive marker.
    Trailer,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Entry(path) => write!(f, "entry '{path}'"),
            Self::Header {
                offset,
                previous: Some(p),
            } => write!(f, "the header at byte {offset} (the member after '{p}')"),
            Self::Header {
                offset,
                previous: None,
            } => write!(f, "the header at byte {offset} (the first member)"),
            Self::Trailer => f.write_str("the data after the end-of-archive marker"),
        }
    }
}

/// Shows untrusted bytes (names from an image, strings from its config)
/// safely on a terminal or in a log: control characters (C0, DEL, C1),
/// bidirectional-text overrides and bytes that are not UTF-8 are escaped,
/// so a hostile name cannot move the cursor, retitle the terminal or
/// reorder what the user reads. Everything an image supplies goes through
/// this before it is printed or put into an error message.
///
/// ```
/// use supermachine_rootfs::Escaped;
/// assert_eq!(Escaped::new("a\x1b[2Jb\u{202e}").to_string(), "a\\u{1b}[2Jb\\u{202e}");
/// assert_eq!(Escaped::new(&b"\xff/x"[..]).to_string(), "\\xff/x");
/// ```
#[derive(Clone, Copy)]
pub struct Escaped<'a>(&'a [u8]);

impl<'a> Escaped<'a> {
    /// Wraps a string or raw bytes.
    pub fn new(s: &'a (impl AsRef<[u8]> + ?Sized)) -> Self {
        Self(s.as_ref())
    }
}

/// Whether `c` could act on a terminal rather than show on it: control
/// characters (C0, DEL, C1) and the bidirectional overrides that reorder
/// what a line seems to say. [`Escaped`] writes these as escapes.
///
/// ```
/// use supermachine_rootfs::needs_escape;
/// assert!(needs_escape('\u{1b}') && needs_escape('\u{9b}') && needs_escape('\u{202e}'));
/// assert!(!needs_escape('a') && !needs_escape('é'));
/// ```
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                if needs_escape(c) {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    fmt::Write::write_char(f, c)?;
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// [`Escaped`] as an owned string, for error fields.
pub(crate) fn show(bytes: &[u8]) -> String {
    Escaped(bytes).to_string()
}
