//! The merged filesystem tree, held in memory as metadata only.
//!
//! Inodes live in an arena indexed by [`Ino`]; directories map names to
//! [`Dirent`]s. A hard link is simply a second dirent with the same `Ino`,
//! so "one inode, nlink > 1" falls out of the representation and survives
//! into the EROFS image. Each inode counts the dirents pointing at it and is
//! freed when the last one goes, so overwritten and whited-out files do not
//! accumulate. Regular-file contents are in the [`Spool`].
//!
//! The tree never follows symlinks. Walking a path that meets a symlink in a
//! parent position is refused by the callers ([`WalkError::Symlink`]): that is
//! how `evil -> /etc` followed by `evil/passwd` is stopped, whether both come
//! from one layer or two.

use std::collections::BTreeMap;

use crate::limits::Limits;
use crate::spool::{Extent, Spool};

/// Index of an inode in the arena.
pub(crate) type Ino = u32;

/// The root directory's index; it is never freed.
pub(crate) const ROOT: Ino = 0;

/// One extended attribute: full name (`user.foo`) and value.
pub(crate) type Xattr = (Box<[u8]>, Box<[u8]>);

/// Ownership, permissions, time and xattrs of an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Permission bits including setuid/setgid/sticky (`0o7777` mask); the
    /// file type lives in [`Kind`].
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Full xattr names (`user.foo`) to values, sorted by name.
    pub xattrs: Vec<Xattr>,
}

impl Meta {
    /// Metadata of directories that exist only because an entry below them
    /// did: what Docker gives them, with a fixed time for reproducibility.
    pub fn implicit_dir() -> Self {
        Self {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: Vec::new(),
        }
    }
}

/// What an inode is, with the data that goes with its type.
#[derive(Debug)]
pub(crate) enum Kind {
    Dir(BTreeMap<Box<[u8]>, Dirent>),
    File(Extent),
    Symlink(Box<[u8]>),
    CharDev { major: u32, minor: u32 },
    BlockDev { major: u32, minor: u32 },
    Fifo,
}

/// A name in a directory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dirent {
    pub ino: Ino,
    /// The layer that last created or touched this name. Opaque whiteouts
    /// keep only names touched by their own layer.
    pub layer: usize,
}

#[derive(Debug)]
pub(crate) struct Inode {
    pub meta: Meta,
    pub kind: Kind,
    /// Number of dirents naming this inode.
    pub refs: u32,
}

/// Why walking a path stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WalkError {
    /// A parent component is a symlink.
    Symlink,
    /// A parent component is neither a directory nor a symlink.
    NotDir,
    /// A parent component does not exist (only when not creating).
    Missing,
    /// Creating a missing parent would exceed the node limit.
    TooMany,
}

/// The inode arena and directory structure of a tree.
#[derive(Debug)]
pub(crate) struct Nodes {
    slots: Vec<Option<Inode>>,
    free: Vec<Ino>,
    live: u64,
    pub limits: Limits,
}

impl Nodes {
    pub fn new(limits: Limits) -> Self {
        let root = Inode {
            meta: Meta::implicit_dir(),
            kind: Kind::Dir(BTreeMap::new()),
            refs: 1,
        };
        Self {
            slots: vec![Some(root)],
            free: Vec::new(),
            live: 1,
            limits,
        }
    }

    /// The inode at `ino`. Indices handed out by this tree are always live
    /// while a dirent refers to them.
    pub fn get(&self, ino: Ino) -> Option<&Inode> {
        self.slots.get(ino as usize).and_then(Option::as_ref)
    }

    fn get_mut(&mut self, ino: Ino) -> Option<&mut Inode> {
        self.slots.get_mut(ino as usize).and_then(Option::as_mut)
    }

    /// Number of live inodes.
    pub fn live(&self) -> u64 {
        self.live
    }

    fn children(&self, dir: Ino) -> Option<&BTreeMap<Box<[u8]>, Dirent>> {
        match &self.get(dir)?.kind {
            Kind::Dir(c) => Some(c),
            _ => None,
        }
    }

    fn children_mut(&mut self, dir: Ino) -> Option<&mut BTreeMap<Box<[u8]>, Dirent>> {
        match &mut self.get_mut(dir)?.kind {
            Kind::Dir(c) => Some(c),
            _ => None,
        }
    }

    /// The dirent `name` in directory `dir`.
    pub fn child(&self, dir: Ino, name: &[u8]) -> Option<Dirent> {
        self.children(dir)?.get(name).copied()
    }

    fn alloc(&mut self, inode: Inode) -> Result<Ino, WalkError> {
        if self.live >= self.limits.max_inodes {
            return Err(WalkError::TooMany);
        }
        self.live += 1;
        if let Some(ino) = self.free.pop() {
            self.slots[ino as usize] = Some(inode);
            return Ok(ino);
        }
        let ino = Ino::try_from(self.slots.len()).map_err(|_| WalkError::TooMany)?;
        self.slots.push(Some(inode));
        Ok(ino)
    }

    /// Drops one reference to `ino`, freeing it (and, for a directory, its
    /// whole subtree) when none remain. Iterative so that deep trees cannot
    /// overflow the stack.
    fn unref(&mut self, ino: Ino) {
        let mut pending = vec![ino];
        while let Some(ino) = pending.pop() {
            let Some(node) = self.get_mut(ino) else {
                continue;
            };
            node.refs = node.refs.saturating_sub(1);
            if node.refs > 0 || ino == ROOT {
                continue;
            }
            if let Some(Inode {
                kind: Kind::Dir(children),
                ..
            }) = self.slots[ino as usize].take()
            {
                pending.extend(children.values().map(|d| d.ino));
            }
            self.free.push(ino);
            self.live -= 1;
        }
    }

    /// Walks the parent components `parents` from the root. Missing
    /// directories are created with implicit metadata when `create` is set
    /// (and the walked names are marked as touched by `layer`).
    pub fn walk(&mut self, parents: &[&[u8]], create: Option<usize>) -> Result<Ino, WalkError> {
        let mut cur = ROOT;
        for name in parents {
            let next = match self.child(cur, name) {
                Some(d) => {
                    let ino = d.ino;
                    match self.get(ino).map(|n| &n.kind) {
                        Some(Kind::Dir(_)) => {}
                        Some(Kind::Symlink(_)) => return Err(WalkError::Symlink),
                        _ => return Err(WalkError::NotDir),
                    }
                    if let Some(layer) = create {
                        if let Some(d) = self.children_mut(cur).and_then(|c| c.get_mut(*name)) {
                            d.layer = layer;
                        }
                    }
                    ino
                }
                None => {
                    let Some(layer) = create else {
                        return Err(WalkError::Missing);
                    };
                    let ino = self.alloc(Inode {
                        meta: Meta::implicit_dir(),
                        kind: Kind::Dir(BTreeMap::new()),
                        refs: 1,
                    })?;
                    if let Some(c) = self.children_mut(cur) {
                        c.insert((*name).into(), Dirent { ino, layer });
                    }
                    ino
                }
            };
            cur = next;
        }
        Ok(cur)
    }

    /// Puts a new inode at `dir/name`. An existing directory meeting a new
    /// directory only takes the new metadata and keeps its children (Docker
    /// semantics); anything else is replaced, subtree and all.
    pub fn put(
        &mut self,
        dir: Ino,
        name: &[u8],
        meta: Meta,
        kind: Kind,
        layer: usize,
    ) -> Result<(), WalkError> {
        if let Some(old) = self.child(dir, name) {
            let merge = matches!(kind, Kind::Dir(_))
                && matches!(self.get(old.ino).map(|n| &n.kind), Some(Kind::Dir(_)));
            if merge {
                if let Some(node) = self.get_mut(old.ino) {
                    node.meta = meta;
                }
                if let Some(d) = self.children_mut(dir).and_then(|c| c.get_mut(name)) {
                    d.layer = layer;
                }
                return Ok(());
            }
        }
        let ino = self.alloc(Inode {
            meta,
            kind,
            refs: 1,
        })?;
        self.replace(dir, name, Dirent { ino, layer });
        Ok(())
    }

    /// Adds `dir/name` as another name of inode `target` (a hard link).
    pub fn link(&mut self, dir: Ino, name: &[u8], target: Ino, layer: usize) {
        if let Some(node) = self.get_mut(target) {
            node.refs += 1;
        }
        self.replace(dir, name, Dirent { ino: target, layer });
    }

    fn replace(&mut self, dir: Ino, name: &[u8], dirent: Dirent) {
        let old = self
            .children_mut(dir)
            .and_then(|c| c.insert(name.into(), dirent));
        if let Some(old) = old {
            self.unref(old.ino);
        }
    }

    /// Replaces the metadata of an existing inode (the root directory entry).
    pub fn set_meta(&mut self, ino: Ino, meta: Meta) {
        if let Some(node) = self.get_mut(ino) {
            node.meta = meta;
        }
    }

    /// Removes `dir/name` if present; returns whether it was.
    pub fn remove(&mut self, dir: Ino, name: &[u8]) -> bool {
        let old = self.children_mut(dir).and_then(|c| c.remove(name));
        match old {
            Some(old) => {
                self.unref(old.ino);
                true
            }
            None => false,
        }
    }

    /// Applies an opaque whiteout: hides everything below `dir` that was not
    /// created or touched by `layer`, at any depth.
    pub fn make_opaque(&mut self, dir: Ino, layer: usize) {
        let mut pending = vec![dir];
        while let Some(d) = pending.pop() {
            let Some(children) = self.children(d) else {
                continue;
            };
            let mut stale = Vec::new();
            for (name, dirent) in children {
                if dirent.layer != layer {
                    stale.push(name.clone());
                } else if matches!(self.get(dirent.ino).map(|n| &n.kind), Some(Kind::Dir(_))) {
                    pending.push(dirent.ino);
                }
            }
            for name in stale {
                self.remove(d, &name);
            }
        }
    }

    /// Directory children in name order (byte order), for writers.
    pub fn entries(&self, dir: Ino) -> impl Iterator<Item = (&[u8], Ino)> {
        self.children(dir)
            .into_iter()
            .flat_map(|c| c.iter().map(|(n, d)| (&**n, d.ino)))
    }
}

/// Everything the writers and the listing need from a finished tree.
pub(crate) struct View<'a> {
    pub nodes: &'a Nodes,
    pub spool: &'a Spool,
}
