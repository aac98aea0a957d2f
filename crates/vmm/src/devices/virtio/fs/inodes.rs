//! The node ids the guest holds, and what each stands for on the host.
//!
//! A node id is handed out once per host file (hard links and repeated
//! lookups share one) and never reused in a session. Each entry keeps an
//! `O_PATH` descriptor of the file, so every later operation starts from
//! the file itself and never resolves a path again, and the lookup count
//! the FUSE protocol asks for: the guest's kernel says with FORGET when it
//! drops its references, and the entry goes with the last one. The table
//! is bounded: a guest that looks up more files than the bound without
//! forgetting any is told ENFILE, instead of growing the worker.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// The root's node id (FUSE_ROOT_ID).
pub(super) const ROOT: u64 = 1;

/// Entries the table holds at most, by default: about 23 MB of names and
/// records at the worst, and as many descriptors.
pub const DEFAULT_MAX_INODES: usize = 65_536;

/// What identifies a host file: its device and inode numbers.
pub(super) type FileKey = (u64, u64);

/// One host file the guest knows.
pub(super) struct Inode {
    /// `O_PATH` descriptor of the file (a symlink itself, never its target,
    /// unless the policy follows).
    pub fd: Arc<OwnedFd>,
    /// The file type bits (`st_mode & S_IFMT`).
    pub kind: u32,
    key: FileKey,
    nlookup: u64,
    /// The directory it was first looked up in (the root's is the root),
    /// which answers `..`.
    pub parent: u64,
}

/// The table is full (see the module doc).
#[derive(Debug)]
pub(super) struct Full;

/// Node ids and their host files.
pub(super) struct Inodes {
    by_id: HashMap<u64, Inode>,
    by_key: HashMap<FileKey, u64>,
    next: u64,
    max: usize,
}

impl Inodes {
    /// A table holding only the root, `fd` (a directory), for at most `max`
    /// entries, the root included.
    pub fn new(root: Arc<OwnedFd>, key: FileKey, max: usize) -> Inodes {
        let mut inodes = Inodes {
            by_id: HashMap::new(),
            by_key: HashMap::new(),
            next: ROOT + 1,
            max: max.max(1),
        };
        inodes.by_id.insert(
            ROOT,
            Inode {
                fd: root,
                kind: libc::S_IFDIR,
                key,
                nlookup: 0,
                parent: ROOT,
            },
        );
        inodes.by_key.insert(key, ROOT);
        inodes
    }

    /// The entry for `id`, if the guest holds it.
    pub fn get(&self, id: u64) -> Option<&Inode> {
        self.by_id.get(&id)
    }

    /// One more reference to `id` from the guest (a reply that names it).
    pub fn add_lookup(&mut self, id: u64) {
        if let Some(inode) = self.by_id.get_mut(&id) {
            inode.nlookup = inode.nlookup.saturating_add(1);
        }
    }

    /// Records that the guest looked up the file `fd` (of type `kind`,
    /// identified by `key`) in `parent`: the node id it already has, with
    /// one more reference (`fd` is then dropped), or a new one.
    pub fn looked_up(
        &mut self,
        parent: u64,
        fd: OwnedFd,
        kind: u32,
        key: FileKey,
    ) -> Result<u64, Full> {
        if let Some(&id) = self.by_key.get(&key) {
            // The same host file can have changed type only by being
            // replaced under the same inode number: then it is a new file.
            if self.by_id.get(&id).is_some_and(|inode| inode.kind == kind) {
                self.add_lookup(id);
                return Ok(id);
            }
        }
        if self.by_id.len() >= self.max {
            return Err(Full);
        }
        let id = self.next;
        self.next += 1;
        self.by_id.insert(
            id,
            Inode {
                fd: Arc::new(fd),
                kind,
                key,
                nlookup: 1,
                parent,
            },
        );
        self.by_key.insert(key, id);
        Ok(id)
    }

    /// The guest dropped `count` references to `id`; the entry goes with
    /// the last. The root stays whatever the guest says; an id it never
    /// had is ignored (FORGET has no reply to carry an error).
    pub fn forget(&mut self, id: u64, count: u64) {
        if id == ROOT {
            return;
        }
        let Some(inode) = self.by_id.get_mut(&id) else {
            return;
        };
        inode.nlookup = inode.nlookup.saturating_sub(count);
        if inode.nlookup == 0 {
            let key = inode.key;
            self.by_id.remove(&id);
            if self.by_key.get(&key) == Some(&id) {
                self.by_key.remove(&key);
            }
        }
    }

    /// Entries held, the root included.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}
