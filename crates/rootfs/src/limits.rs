//! Bounds that keep a hostile layer from exhausting host memory.
//!
//! File *contents* go to the spool and cost no memory; what a layer can make
//! us hold is metadata: names, symlink targets, xattrs, one inode per entry,
//! and the PAX / GNU long-name records the tar reader buffers whole. Every
//! one of those is bounded here. The defaults are far above any real image
//! (the largest public images have a few hundred thousand files) while
//! capping memory at a few GiB in the worst case.

/// Configurable bounds on what a tree accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Live inodes (files, directories, links, ...) in the merged tree.
    pub max_inodes: u64,
    /// Length in bytes of one entry path as found in the tar stream.
    pub max_path_len: usize,
    /// Number of components of one entry path.
    pub max_depth: usize,
    /// Total bytes of one entry's PAX and GNU long-name records, which the
    /// tar reader holds in memory.
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
            max_path_len: 4096,
            max_depth: 512,
            max_header_bytes: 1 << 20,
            max_xattr_bytes: 64 << 10,
            max_metadata_bytes: 1 << 30,
        }
    }
}
