//! OCI image layers → one merged tree → a read-only EROFS image.
//!
//! ```no_run
//! use supermachine_rootfs::{erofs, Compression, Tree};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut tree = Tree::new()?;
//! for (i, path) in ["layer0.tar.gz", "layer1.tar.zst"].iter().enumerate() {
//!     tree.apply_layer(i, std::fs::File::open(path)?, Compression::Auto)?;
//! }
//! let stats = erofs::write(&tree, std::path::Path::new("rootfs.erofs"))?;
//! println!("{} inodes, {} bytes", stats.inodes, stats.bytes);
//! # Ok(()) }
//! ```
//!
//! Layers are applied without privileges and without touching the host
//! filesystem (except an anonymous spool file for contents), so ownership,
//! modes, device nodes and xattrs come out exactly as the image says, and no
//! member can escape the root. See [`Tree::apply_layer`] for the rules and
//! [`erofs`] for the image format.
//!
//! Layers are untrusted: every resource a layer can make the host spend
//! (memory, scratch disk, decompression work) is bounded by [`Limits`], and
//! every name an error shows is escaped ([`Escaped`]). [`archive`] indexes a
//! tar file on disk with the same bounded reader.

#![warn(missing_docs)]

pub mod archive;
mod compress;
pub mod erofs;
mod error;
mod layer;
mod limits;
mod listing;
mod nodes;
mod path;
mod spool;
mod tree;
mod ustar;
mod whiteout;

pub use compress::Compression;
pub use error::{needs_escape, At, Error, Escaped, Result, UnsafeReason};
pub use layer::LayerStats;
pub use limits::{Cap, Limits, LimitsEnvError, MAX_INODES_ENV, MAX_SPOOL_ENV, MAX_UNPACKED_ENV};
pub use listing::{FileKind, ListingEntry};
pub use path::MAX_NAME_LEN;
pub use tree::{Progress, Tree, TreeOptions};
