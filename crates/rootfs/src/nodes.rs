//! The merged filesystem tree, held in memory as metadata only.
//!
//! Inodes live in an arena indexed by [`Ino`]; directories map names to
//! [`Dirent`]s. A hard link is simply a second dirent with the same `Ino`,
//! so "one inode, nlink > 1" falls out of the representation and survives
//! into the EROFS image. Each inode counts the dirents pointing at it and is
//! freed when the last one goes, so overwritten and whited-out files do not
//! accumulate. Regular-file contents are in the [`Spool`].
//!
//! Every name costs memory, so names are counted and capped
//! ([`crate::Limits::max_inodes`]) whether they carry a new inode or are one
//! more hard link to an old one.
//!
//! The tree never follows symlinks. Walking a path that meets a symlink in a
//! parent position is refused by the callers ([`WalkError::Symlink`]): that is
//! how `evil -> /etc` followed by `evil/passwd` is stopped, whether both come
//! from one layer or two.

use std::collections::{BTreeMap, HashSet};

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
    /// Another name or inode would exceed [`Limits::max_inodes`].
    TooMany,
}

/// The inode arena and directory structure of a tree.
#[derive(Debug)]
pub(crate) struct Nodes {
    slots: Vec<Option<Inode>>,
    free: Vec<Ino>,
    live: u64,
    /// Live dirents (names), hard links included.
    names: u64,
    /// Directories whose subtree holds only names of `opaque_layer`: an
    /// opaque marker on them, or below them, has nothing left to hide.
    /// Keeping this set is what makes repeated markers cost nothing.
    opaque_done: HashSet<Ino>,
    opaque_layer: Option<usize>,
    /// Dirents examined by opaque markers, for tests of their complexity.
    pub opaque_visits: u64,
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
            names: 0,
            opaque_done: HashSet::new(),
            opaque_layer: None,
            opaque_visits: 0,
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

    /// Refuses a new name `dir/name` when the tree holds as many names
    /// (plus the root) as the limit allows; replacing a name is free.
    fn reserve_name(&self, dir: Ino, name: &[u8]) -> Result<(), WalkError> {
        let exists = self.children(dir).is_some_and(|c| c.contains_key(name));
        if !exists && self.names + 1 >= self.limits.max_inodes {
            return Err(WalkError::TooMany);
        }
        Ok(())
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
                self.names -= children.len() as u64;
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
                    self.reserve_name(cur, name)?;
                    let ino = self.alloc(Inode {
                        meta: Meta::implicit_dir(),
                        kind: Kind::Dir(BTreeMap::new()),
                        refs: 1,
                    })?;
                    if let Some(c) = self.children_mut(cur) {
                        c.insert((*name).into(), Dirent { ino, layer });
                        self.names += 1;
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
        self.reserve_name(dir, name)?;
        let ino = self.alloc(Inode {
            meta,
            kind,
            refs: 1,
        })?;
        self.replace(dir, name, Dirent { ino, layer });
        Ok(())
    }

    /// Adds `dir/name` as another name of inode `target` (a hard link).
    pub fn link(
        &mut self,
        dir: Ino,
        name: &[u8],
        target: Ino,
        layer: usize,
    ) -> Result<(), WalkError> {
        self.reserve_name(dir, name)?;
        if let Some(node) = self.get_mut(target) {
            node.refs = node.refs.saturating_add(1);
        }
        self.replace(dir, name, Dirent { ino: target, layer });
        Ok(())
    }

    fn replace(&mut self, dir: Ino, name: &[u8], dirent: Dirent) {
        let Some(children) = self.children_mut(dir) else {
            return;
        };
        match children.insert(name.into(), dirent) {
            Some(old) => self.unref(old.ino),
            None => self.names += 1,
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
                self.names -= 1;
                self.unref(old.ino);
                true
            }
            None => false,
        }
    }

    /// Applies an opaque whiteout: hides everything below `dir` that was not
    /// created or touched by `layer`, at any depth.
    ///
    /// A directory walked once in a layer holds only that layer's names
    /// from then on (the layer can add names, never bring back older
    /// ones), so it is not walked again: however many markers a layer has,
    /// each directory costs one walk, and the layer stays linear.
    pub fn make_opaque(&mut self, dir: Ino, layer: usize) {
        if self.opaque_layer != Some(layer) {
            self.opaque_done.clear();
            self.opaque_layer = Some(layer);
        }
        let mut pending = vec![dir];
        while let Some(d) = pending.pop() {
            if !self.opaque_done.insert(d) {
                continue;
            }
            let Some(children) = self.children(d) else {
                continue;
            };
            let visited = children.len() as u64;
            let mut stale = Vec::new();
            for (name, dirent) in children {
                if dirent.layer != layer {
                    stale.push(name.clone());
                } else if matches!(self.get(dirent.ino).map(|n| &n.kind), Some(Kind::Dir(_))) {
                    pending.push(dirent.ino);
                }
            }
            self.opaque_visits += visited;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Kind {
        Kind::File(Extent::default())
    }

    /// A layer that alternates new files and opaque markers on the root:
    /// every marker used to walk every file the layer had made so far.
    #[test]
    fn repeated_opaque_markers_cost_one_walk_per_directory() {
        let mut nodes = Nodes::new(Limits::default());
        let n = 2000u64;
        for i in 0..n {
            let dir = nodes.walk(&[b"d"], Some(1)).unwrap();
            nodes
                .put(
                    dir,
                    format!("f{i}").as_bytes(),
                    Meta::implicit_dir(),
                    file(),
                    1,
                )
                .unwrap();
            nodes.make_opaque(ROOT, 1);
            nodes.make_opaque(dir, 1);
        }
        assert!(
            nodes.opaque_visits <= 4 * n,
            "{} dirents visited for {n} markers",
            nodes.opaque_visits
        );
        assert_eq!(nodes.entries(ROOT).count(), 1);
        // A new layer walks again and hides what the old one made.
        nodes.make_opaque(ROOT, 2);
        assert_eq!(nodes.entries(ROOT).count(), 0);
        assert_eq!((nodes.live(), nodes.names), (1, 0));
    }

    #[test]
    fn hard_links_count_against_the_name_limit() {
        let limits = Limits {
            max_inodes: 10,
            ..Limits::default()
        };
        let mut nodes = Nodes::new(limits);
        nodes
            .put(ROOT, b"f", Meta::implicit_dir(), file(), 0)
            .unwrap();
        let ino = nodes.child(ROOT, b"f").unwrap().ino;
        let mut made = 0;
        for i in 0..100 {
            if nodes
                .link(ROOT, format!("l{i}").as_bytes(), ino, 0)
                .is_err()
            {
                break;
            }
            made += 1;
        }
        assert_eq!(made, 8, "root + f + 8 links = 10 names");
        // Replacing an existing name is still allowed at the limit.
        nodes.link(ROOT, b"l0", ino, 0).unwrap();
        assert!(nodes.remove(ROOT, b"l1"));
        nodes.link(ROOT, b"again", ino, 0).unwrap();
        assert_eq!(nodes.names, 9);
    }
}
