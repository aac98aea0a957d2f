//! The public handle: a merged tree being built layer by layer.

use std::fmt;
use std::io::Read;
use std::path::PathBuf;

use crate::compress::Compression;
use crate::error::{Error, Result};
use crate::layer::{self, LayerStats};
use crate::limits::Limits;
use crate::listing::{self, ListingEntry};
use crate::nodes::{Nodes, View};
use crate::spool::Spool;

/// Counters reported while a layer is applied, for progress displays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// The layer being applied.
    pub layer: usize,
    /// Tar members of this layer processed so far.
    pub entries: u64,
    /// Regular-file bytes of this layer spooled so far.
    pub file_bytes: u64,
    /// Compressed bytes of this layer read so far (compare with the blob
    /// size for a percentage).
    pub input_bytes: u64,
}

type Hook = Box<dyn FnMut(&Progress) + Send>;

/// An image's root filesystem under construction: layers are applied in
/// order, then the result is written with [`crate::erofs::write`] or
/// inspected with [`Tree::listing`].
///
/// Only metadata is kept in memory; regular-file contents go to an anonymous
/// spool file (see the `spool` module) that disappears with the `Tree`.
pub struct Tree {
    nodes: Nodes,
    spool: Spool,
    hook: Option<Hook>,
    poisoned: Option<usize>,
    metadata_bytes: u64,
    /// Unpacked bytes of the layers applied so far (see
    /// [`Limits::max_unpacked_bytes`]).
    unpacked_bytes: u64,
    layers: usize,
}

impl fmt::Debug for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tree")
            .field("inodes", &self.nodes.live())
            .field("layers", &self.layers)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

/// Where the spool lives and which limits apply.
#[derive(Debug, Clone, Default)]
pub struct TreeOptions {
    /// Directory for the spool file; the system temporary directory if
    /// `None`. Putting it on the filesystem of the final image lets the
    /// writer reflink or copy in-kernel.
    pub spool_dir: Option<PathBuf>,
    /// Bounds on what layers may make the tree hold.
    pub limits: Limits,
}

impl Tree {
    /// An empty tree (just `/`, `0755 root:root`) with default limits and
    /// the spool in the system temporary directory.
    pub fn new() -> Result<Self> {
        Self::with_options(TreeOptions::default())
    }

    /// An empty tree with the given spool directory and limits.
    pub fn with_options(options: TreeOptions) -> Result<Self> {
        let dir = options.spool_dir.unwrap_or_else(std::env::temp_dir);
        let spool =
            Spool::new_in(&dir, options.limits.max_spool_bytes).map_err(|source| Error::Io {
                context: "creating the spool file",
                path: dir.clone(),
                source,
            })?;
        Ok(Self {
            nodes: Nodes::new(options.limits),
            spool,
            hook: None,
            poisoned: None,
            metadata_bytes: 0,
            unpacked_bytes: 0,
            layers: 0,
        })
    }

    /// Calls `hook` after every tar member applied.
    pub fn set_progress_hook(&mut self, hook: impl FnMut(&Progress) + Send + 'static) {
        self.hook = Some(Box::new(hook));
    }

    /// Applies one layer read from `src`. `index` is used in error messages
    /// and progress (callers pass the layer's position in the manifest).
    /// `compression` is usually [`Compression::Auto`]; a declared format
    /// must match the stream's magic bytes. A zero-byte stream is an empty
    /// layer whatever the declared format.
    ///
    /// Every layer counts against the tree's [`Limits`] (unpacked bytes,
    /// spool bytes, names, metadata): a layer that would exceed one is
    /// refused with [`Error::LimitExceeded`] naming the cap.
    ///
    /// On error the tree is left half-applied and refuses further use.
    pub fn apply_layer<R: Read>(
        &mut self,
        index: usize,
        src: R,
        compression: Compression,
    ) -> Result<LayerStats> {
        self.check()?;
        match layer::apply(self, index, src, compression) {
            Ok(stats) => {
                self.layers += 1;
                Ok(stats)
            }
            Err(e) => {
                self.poisoned = Some(index);
                Err(e)
            }
        }
    }

    /// Like [`Tree::apply_layer`], and then checks that the uncompressed
    /// stream hashes to `diff_id` (`sha256:<hex>`, from the image config's
    /// `rootfs.diff_ids`), as Docker and containerd do: a layer blob that
    /// does not match its config is refused and the tree poisoned.
    pub fn apply_layer_verified<R: Read>(
        &mut self,
        index: usize,
        src: R,
        compression: Compression,
        diff_id: &str,
    ) -> Result<LayerStats> {
        let stats = self.apply_layer(index, src, compression)?;
        if stats.diff_id != diff_id {
            self.poisoned = Some(index);
            return Err(Error::DiffIdMismatch {
                layer: index,
                expected: crate::error::show(diff_id.as_bytes()),
                actual: stats.diff_id,
            });
        }
        Ok(stats)
    }

    /// Bytes of file data in the spool (what [`Limits::max_spool_bytes`]
    /// bounds): all-zero blocks and sparse holes are not written.
    pub fn spool_bytes(&self) -> u64 {
        self.spool.written()
    }

    /// Unpacked bytes of the layers so far (what
    /// [`Limits::max_unpacked_bytes`] bounds).
    pub fn unpacked_bytes(&self) -> u64 {
        self.unpacked_bytes
    }

    pub(crate) fn add_unpacked(&mut self, bytes: u64) {
        self.unpacked_bytes = self.unpacked_bytes.saturating_add(bytes);
    }

    /// Number of layers applied.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Number of inodes (files, directories, ...; hard links count once)
    /// including the root.
    pub fn inodes(&self) -> u64 {
        self.nodes.live()
    }

    /// Every path of the tree with its type, ownership, mode, size, link
    /// target, device number, content digest and link count, sorted by path.
    /// Reads all file contents back from the spool to hash them, holes
    /// included (as zeros): it costs up to the unpacked size.
    pub fn listing(&self) -> Result<Vec<ListingEntry>> {
        self.check()?;
        listing::build(&self.view())
    }

    pub(crate) fn check(&self) -> Result<()> {
        match self.poisoned {
            Some(layer) => Err(Error::Poisoned { layer }),
            None => Ok(()),
        }
    }

    pub(crate) fn view(&self) -> View<'_> {
        View {
            nodes: &self.nodes,
            spool: &self.spool,
        }
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.nodes.limits
    }

    pub(crate) fn nodes_mut(&mut self) -> &mut Nodes {
        &mut self.nodes
    }

    pub(crate) fn spool_mut(&mut self) -> &mut Spool {
        &mut self.spool
    }

    /// Accounts `bytes` of metadata; false when over the limit.
    pub(crate) fn charge_metadata(&mut self, bytes: u64) -> bool {
        self.metadata_bytes = self.metadata_bytes.saturating_add(bytes);
        self.metadata_bytes <= self.nodes.limits.max_metadata_bytes
    }

    pub(crate) fn report(&mut self, p: Progress) {
        if let Some(hook) = self.hook.as_mut() {
            hook(&p);
        }
    }
}
