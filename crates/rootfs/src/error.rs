//! The one error type of this crate.
//!
//! Every variant that comes from a layer names the layer index and, where
//! there is one, the entry path, so that a user can find the offending member
//! with `tar -tvf`. Paths are shown lossily (non-UTF-8 bytes escaped) because
//! they come from untrusted input and end up in terminals and logs.

use std::io;
use std::path::PathBuf;

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

    /// A configured bound on names, xattrs or entry counts was exceeded; it
    /// protects the host from memory exhaustion by a hostile image.
    #[error("layer {layer}: entry '{path}': {what} exceeds the limit of {limit}; raise `Limits` if the image is trusted")]
    LimitExceeded {
        /// Index of the layer.
        layer: usize,
        /// The entry path as found in the tar stream (may be empty).
        path: String,
        /// Which bound.
        what: &'static str,
        /// The bound.
        limit: u64,
    },

    /// The tar stream is malformed (bad checksum, bad numbers, truncated
    /// member). `path` is the last entry read successfully or being read.
    #[error(
        "layer {layer}: corrupt tar stream near entry '{path}': {source}; re-download the layer"
    )]
    Tar {
        /// Index of the layer.
        layer: usize,
        /// The entry being read, or the previous one.
        path: String,
        /// The decoder's complaint.
        #[source]
        source: io::Error,
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

/// Renders raw tar path bytes for messages, escaping what is not printable
/// UTF-8 so a hostile name cannot inject terminal control sequences.
pub(crate) fn show(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}
