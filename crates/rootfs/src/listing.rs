//! A canonical description of a tree, one line per path.
//!
//! Tests compare it with what independent readers (`fsck.erofs --extract`,
//! a kernel mount) see, and the in-guest boot check can compare it with the
//! mounted root. Directory sizes are left out (0) because they depend on the
//! filesystem; everything else a reader can observe is in.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::error::{show, Error, Result};
use crate::nodes::{Ino, Kind, View, ROOT};

/// The type of a listed path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileKind {
    /// Directory.
    Dir,
    /// Regular file.
    File,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
    /// Named pipe.
    Fifo,
    /// Unix socket (never produced from tar, listed for readers of images).
    Socket,
}

impl FileKind {
    /// One-word name used in listing lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dir => "dir",
            Self::File => "file",
            Self::Symlink => "symlink",
            Self::CharDev => "chardev",
            Self::BlockDev => "blockdev",
            Self::Fifo => "fifo",
            Self::Socket => "socket",
        }
    }
}

/// One path of a tree as a reader of the finished filesystem sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListingEntry {
    /// Absolute path, `/` for the root.
    pub path: Vec<u8>,
    /// File type.
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Content length for files, target length for symlinks, 0 otherwise.
    pub size: u64,
    /// Link count: names of the inode, or 2 + subdirectories for a directory.
    pub nlink: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// Device number `(major, minor)` of device nodes.
    pub rdev: Option<(u32, u32)>,
    /// Lowercase hex SHA-256 of a regular file's contents.
    pub sha256: Option<String>,
    /// Extended attributes, full names, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Display for ListingEntry {
    /// `path kind mode uid:gid size nlink mtime [-> target] [dev=M,m]
    /// [sha256=..] [xattr name=hexvalue]...`, non-printable path bytes
    /// escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {:04o} {}:{} {} {} {}.{:09}",
            show(&self.path),
            self.kind.as_str(),
            self.mode,
            self.uid,
            self.gid,
            self.size,
            self.nlink,
            self.mtime,
            self.mtime_nsec
        )?;
        if let Some(t) = &self.target {
            write!(f, " -> {}", show(t))?;
        }
        if let Some((ma, mi)) = self.rdev {
            write!(f, " dev={ma},{mi}")?;
        }
        if let Some(h) = &self.sha256 {
            write!(f, " sha256={h}")?;
        }
        for (n, v) in &self.xattrs {
            write!(f, " xattr {}={}", show(n), hex::encode(v))?;
        }
        Ok(())
    }
}

pub(crate) fn build(view: &View<'_>) -> Result<Vec<ListingEntry>> {
    let nodes = view.nodes;
    let mut out = Vec::new();
    let mut pending: Vec<(Vec<u8>, Ino)> = vec![(b"/".to_vec(), ROOT)];
    let mut buf = vec![0u8; 1 << 16];
    while let Some((path, ino)) = pending.pop() {
        let Some(node) = nodes.get(ino) else {
            continue;
        };
        let mut e = ListingEntry {
            path: path.clone(),
            kind: FileKind::Dir,
            mode: u32::from(node.meta.mode),
            uid: node.meta.uid,
            gid: node.meta.gid,
            size: 0,
            nlink: node.refs,
            mtime: node.meta.mtime,
            mtime_nsec: node.meta.mtime_nsec,
            target: None,
            rdev: None,
            sha256: None,
            xattrs: node
                .meta
                .xattrs
                .iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect(),
        };
        match &node.kind {
            Kind::Dir(_) => {
                let mut subdirs = 0u32;
                for (name, child) in nodes.entries(ino) {
                    if matches!(nodes.get(child).map(|n| &n.kind), Some(Kind::Dir(_))) {
                        subdirs += 1;
                    }
                    let mut p = if ino == ROOT {
                        Vec::new()
                    } else {
                        path.clone()
                    };
                    p.push(b'/');
                    p.extend_from_slice(name);
                    pending.push((p, child));
                }
                e.nlink = 2 + subdirs;
            }
            Kind::File(extent) => {
                e.kind = FileKind::File;
                e.size = extent.len;
                let mut h = Sha256::new();
                let mut off = 0u64;
                while off < extent.len {
                    let n =
                        usize::try_from(extent.len - off).map_or(buf.len(), |r| r.min(buf.len()));
                    view.spool
                        .read_at(*extent, off, &mut buf[..n])
                        .map_err(|source| Error::Io {
                            context: "reading the spool file",
                            path: view.spool.dir().to_path_buf(),
                            source,
                        })?;
                    h.update(&buf[..n]);
                    off += n as u64;
                }
                e.sha256 = Some(hex::encode(h.finalize()));
            }
            Kind::Symlink(t) => {
                e.kind = FileKind::Symlink;
                e.size = t.len() as u64;
                e.target = Some(t.to_vec());
            }
            Kind::CharDev { major, minor } => {
                e.kind = FileKind::CharDev;
                e.rdev = Some((*major, *minor));
            }
            Kind::BlockDev { major, minor } => {
                e.kind = FileKind::BlockDev;
                e.rdev = Some((*major, *minor));
            }
            Kind::Fifo => e.kind = FileKind::Fifo,
        }
        out.push(e);
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}
