//! Writing a [`Tree`] as an uncompressed EROFS image, without root and
//! without mounting anything.
//!
//! The format follows Linux `fs/erofs/erofs_fs.h` (6.1): 4 KiB blocks,
//! uncompressed `FLAT_PLAIN` / `FLAT_INLINE` (tail-packed) data, and
//! `CHUNK_BASED` files with a block map for files with holes (so sparse
//! and zero-filled files stay small), compact or extended inodes as needed,
//! inline xattrs, no shared xattrs, no superblock checksum. `mkfs.erofs` is not used; `fsck.erofs` and the kernel
//! are the test oracles. See `layout` for where things go and why.

mod chunks;
mod dir;
pub(crate) mod format;
mod layout;
mod writer;
pub(crate) mod xattr;

use std::path::Path;

use crate::error::Result;
use crate::tree::Tree;

/// Knobs of the image that do not come from the tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Volume UUID (`blkid` shows it). Zero by default so that the same tree
    /// always gives the same bytes; derive one from the image digest if it
    /// matters.
    pub uuid: [u8; 16],
    /// Volume label, NUL-padded.
    pub volume_name: [u8; 16],
}

/// What was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Inodes in the image (hard links count once).
    pub inodes: u64,
    /// Size of the image file in bytes (a multiple of 4096).
    pub bytes: u64,
    /// Bytes of the metadata area (superblock, inodes, xattrs, inline tails).
    pub meta_bytes: u64,
    /// Bytes of regular-file contents stored (holes of chunk-based files
    /// excluded).
    pub data_bytes: u64,
}

/// Writes `tree` as an EROFS image at `dest`, atomically (temporary file in
/// the same directory, fsync, rename). The same tree always gives
/// byte-identical images.
pub fn write(tree: &Tree, dest: &Path) -> Result<WriteStats> {
    write_with(tree, dest, &WriteOptions::default())
}

/// [`write()`] with explicit options.
pub fn write_with(tree: &Tree, dest: &Path, options: &WriteOptions) -> Result<WriteStats> {
    tree.check()?;
    let view = tree.view();
    let plan = layout::plan(&view)?;
    writer::write(&view, &plan, dest, options)
}
