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
    /// unless the policy follows); `None` after a restore until first use,
    /// when it is opened again from its parent and name.
    pub fd: Option<Arc<OwnedFd>>,
    /// The file type bits (`st_mode & S_IFMT`).
    pub kind: u32,
    key: Option<FileKey>,
    nlookup: u64,
    /// The directory it was first looked up in (the root's is the root),
    /// which answers `..`.
    pub parent: u64,
    /// The name it was first looked up by, in `parent`: how a restore finds
    /// it again.
    pub name: Box<[u8]>,
}

/// A node as a snapshot keeps it: where it was, what it was, how many
/// references the guest holds. No descriptor, no host path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedNode {
    /// Its node id.
    pub id: u64,
    /// The directory node it was looked up in.
    pub parent: u64,
    /// Its name there.
    pub name: Vec<u8>,
    /// Its file type bits.
    pub kind: u32,
    /// The guest's references.
    pub nlookup: u64,
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
                fd: Some(root),
                kind: libc::S_IFDIR,
                key: Some(key),
                nlookup: 0,
                parent: ROOT,
                name: Box::new([]),
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
        name: &[u8],
        fd: OwnedFd,
        kind: u32,
        key: FileKey,
    ) -> Result<u64, Full> {
        if let Some(&id) = self.by_key.get(&key) {
            // The same host file can have changed type only by being
            // replaced under the same inode number: then it is a new file.
            if self
                .by_id
                .get(&id)
                .is_some_and(|inode| inode.kind == kind && inode.fd.is_some())
            {
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
                fd: Some(Arc::new(fd)),
                kind,
                key: Some(key),
                nlookup: 1,
                parent,
                name: name.into(),
            },
        );
        self.by_key.insert(key, id);
        Ok(id)
    }

    /// Records the descriptor a restored node was opened again with.
    pub fn reopened(&mut self, id: u64, fd: Arc<OwnedFd>, key: FileKey) {
        if let Some(inode) = self.by_id.get_mut(&id) {
            inode.fd = Some(fd);
            inode.key = Some(key);
            self.by_key.insert(key, id);
        }
    }

    /// The table as a snapshot keeps it: the next id and every node but
    /// the root, in id order.
    pub fn save(&self) -> (u64, Vec<SavedNode>) {
        let mut nodes: Vec<SavedNode> = self
            .by_id
            .iter()
            .filter(|(&id, _)| id != ROOT)
            .map(|(&id, inode)| SavedNode {
                id,
                parent: inode.parent,
                name: inode.name.to_vec(),
                kind: inode.kind,
                nlookup: inode.nlookup,
            })
            .collect();
        nodes.sort_by_key(|n| n.id);
        (self.next, nodes)
    }

    /// A table restored from a snapshot (untrusted input): every node
    /// unopened until first used. Refused with the reason unless it could
    /// have been saved: within the bound, ids unique and below `next`,
    /// names single components, parents saved directories whose chain
    /// reaches the root.
    pub fn restore(
        root: Arc<OwnedFd>,
        key: FileKey,
        max: usize,
        next: u64,
        nodes: &[SavedNode],
    ) -> Result<Inodes, String> {
        let mut inodes = Inodes::new(root, key, max);
        if nodes.len() >= inodes.max {
            return Err(format!(
                "{} nodes, more than the bound of {}",
                nodes.len(),
                inodes.max
            ));
        }
        for node in nodes {
            let name = &node.name;
            let valid_name = !name.is_empty()
                && name.len() <= 255
                && !name.contains(&b'/')
                && !name.contains(&0)
                && name.as_slice() != b"."
                && name.as_slice() != b"..";
            if node.id <= ROOT || node.id >= next || !valid_name {
                return Err(format!(
                    "node {} ({:?}) cannot have been saved",
                    node.id, name
                ));
            }
            let inode = Inode {
                fd: None,
                kind: node.kind & libc::S_IFMT,
                key: None,
                nlookup: node.nlookup,
                parent: node.parent,
                name: name.as_slice().into(),
            };
            if inodes.by_id.insert(node.id, inode).is_some() {
                return Err(format!("node {} saved twice", node.id));
            }
        }
        // Every chain of parents ends at the root, through directories.
        for node in nodes {
            let mut at = node.parent;
            let mut steps = 0;
            while at != ROOT {
                match inodes.by_id.get(&at) {
                    Some(p) if p.kind == libc::S_IFDIR && steps < nodes.len() => {
                        at = p.parent;
                        steps += 1;
                    }
                    _ => {
                        return Err(format!(
                            "node {}: its parents do not lead to the root",
                            node.id
                        ))
                    }
                }
            }
            if inodes
                .by_id
                .get(&node.parent)
                .is_none_or(|p| p.kind != libc::S_IFDIR)
            {
                return Err(format!("node {}: its parent is not a directory", node.id));
            }
        }
        inodes.next = next;
        Ok(inodes)
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
            if let Some(key) = key {
                if self.by_key.get(&key) == Some(&id) {
                    self.by_key.remove(&key);
                }
            }
        }
    }

    /// Entries held, the root included.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}
