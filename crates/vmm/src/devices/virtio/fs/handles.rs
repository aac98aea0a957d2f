//! Open files and directories the guest holds (FUSE file handles).
//!
//! A handle is a descriptor opened for I/O from a node's `O_PATH`
//! descriptor, bound to that node: a handle used with another node id, or
//! after RELEASE, is EBADF. Bounded like the node table: past the bound
//! OPEN is EMFILE.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

/// Handles the guest may hold at once, by default.
pub const DEFAULT_MAX_HANDLES: usize = 8_192;

/// One open file or directory.
pub(super) struct Handle {
    /// The node it was opened from.
    pub node: u64,
    pub file: Arc<File>,
}

/// The table is full.
#[derive(Debug)]
pub(super) struct Full;

/// File handles and what they stand for.
pub(super) struct Handles {
    by_fh: HashMap<u64, Handle>,
    next: u64,
    max: usize,
}

impl Handles {
    /// An empty table for at most `max` handles.
    pub fn new(max: usize) -> Handles {
        Handles {
            by_fh: HashMap::new(),
            next: 1,
            max,
        }
    }

    /// A new handle for `file`, opened from `node`.
    pub fn insert(&mut self, node: u64, file: File) -> Result<u64, Full> {
        if self.by_fh.len() >= self.max {
            return Err(Full);
        }
        let fh = self.next;
        self.next += 1;
        self.by_fh.insert(
            fh,
            Handle {
                node,
                file: Arc::new(file),
            },
        );
        Ok(fh)
    }

    /// The file of handle `fh`, if it is open and belongs to `node`.
    pub fn get(&self, fh: u64, node: u64) -> Option<Arc<File>> {
        self.by_fh
            .get(&fh)
            .filter(|h| h.node == node)
            .map(|h| h.file.clone())
    }

    /// Closes `fh` (if it belongs to `node`); whether it was open.
    pub fn remove(&mut self, fh: u64, node: u64) -> bool {
        if self.by_fh.get(&fh).is_some_and(|h| h.node == node) {
            self.by_fh.remove(&fh);
            true
        } else {
            false
        }
    }

    /// Closes every handle (the guest unmounted: DESTROY).
    pub fn clear(&mut self) {
        self.by_fh.clear();
    }
}
