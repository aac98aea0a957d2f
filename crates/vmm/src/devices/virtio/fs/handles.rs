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
    /// `None` after a restore until first use, when it is opened again
    /// (with `flags`, never truncating).
    pub file: Option<Arc<File>>,
    /// The guest's open flags, as taken.
    pub flags: u32,
    /// A directory handle.
    pub dir: bool,
}

/// A handle as a snapshot keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedHandle {
    /// The handle number the guest holds.
    pub fh: u64,
    /// The node it belongs to.
    pub node: u64,
    /// Its open flags.
    pub flags: u32,
    /// A directory handle.
    pub dir: bool,
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

    /// A new handle for `file`, opened from `node` with `flags`.
    pub fn insert(&mut self, node: u64, file: File, flags: u32, dir: bool) -> Result<u64, Full> {
        if self.by_fh.len() >= self.max {
            return Err(Full);
        }
        let fh = self.next;
        self.next += 1;
        self.by_fh.insert(
            fh,
            Handle {
                node,
                file: Some(Arc::new(file)),
                flags,
                dir,
            },
        );
        Ok(fh)
    }

    /// Handle `fh`, if it is open and belongs to `node`.
    pub fn get(&self, fh: u64, node: u64) -> Option<&Handle> {
        self.by_fh.get(&fh).filter(|h| h.node == node)
    }

    /// Records the file a restored handle was opened again as.
    pub fn reopened(&mut self, fh: u64, file: Arc<File>) {
        if let Some(handle) = self.by_fh.get_mut(&fh) {
            handle.file = Some(file);
        }
    }

    /// The table as a snapshot keeps it: the next handle number and every
    /// handle, in order.
    pub fn save(&self) -> (u64, Vec<SavedHandle>) {
        let mut saved: Vec<SavedHandle> = self
            .by_fh
            .iter()
            .map(|(&fh, h)| SavedHandle {
                fh,
                node: h.node,
                flags: h.flags,
                dir: h.dir,
            })
            .collect();
        saved.sort_by_key(|h| h.fh);
        (self.next, saved)
    }

    /// A table restored from a snapshot (untrusted): every handle unopened
    /// until used; refused unless within the bound, numbers unique and
    /// below `next`, each of a node `known` says is saved.
    pub fn restore(
        max: usize,
        next: u64,
        saved: &[SavedHandle],
        known: impl Fn(u64) -> bool,
    ) -> Result<Handles, String> {
        if saved.len() > max {
            return Err(format!(
                "{} open files, more than the bound of {max}",
                saved.len()
            ));
        }
        let mut handles = Handles::new(max);
        for h in saved {
            if h.fh == 0 || h.fh >= next || !known(h.node) {
                return Err(format!("open file {} cannot have been saved", h.fh));
            }
            let handle = Handle {
                node: h.node,
                file: None,
                flags: h.flags,
                dir: h.dir,
            };
            if handles.by_fh.insert(h.fh, handle).is_some() {
                return Err(format!("open file {} saved twice", h.fh));
            }
        }
        handles.next = next;
        Ok(handles)
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
