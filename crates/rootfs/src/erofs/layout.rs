//! Deciding where everything goes before a byte is written.
//!
//! Image layout (all offsets known up front, so writing is one sequential
//! pass):
//!
//! ```text
//! block 0..M   metadata area (meta_blkaddr = 0): 1024 bytes of nothing, the
//!              superblock, then inodes in breadth-first order, each followed
//!              by its inline xattrs and, when it fits, its tail data
//! block M..N   data area: the whole blocks of files, directories and long
//!              symlinks, in inode order
//! ```
//!
//! Inodes are numbered breadth-first with children in name order, so a
//! directory's entries sit next to each other and the root gets nid 36 (the
//! first slot after the superblock; the superblock's `root_nid` is only 16
//! bits). An inode record never straddles a block boundary unless its xattrs
//! alone exceed a block: the kernel refuses inline data that crosses one.
//!
//! Compact 32-byte inodes are used when nothing needs the extended form;
//! compact inodes take their mtime from the superblock's build time, so the
//! build time is the most common mtime in the tree, and every inode with
//! another mtime (or uid/gid/nlink above 65535, or size above 4 GiB) is
//! extended. The choice is a pure function of the tree, so output is
//! deterministic.
//!
//! Files with holes may be chunk-based instead (see `chunks`): their block
//! map follows the inode and its xattrs in the metadata area, and only
//! their data chunks take blocks in the data area.

use std::collections::HashMap;

use super::chunks::{self, ChunkPlan};
use super::dir::{self, Plan};
use super::format::{self, ft, ifmt, RawInode, BLOCK, NULL_ADDR, SLOT, SUPER_OFFSET, SUPER_SIZE};
use super::xattr;
use crate::error::{Error, Result};
use crate::nodes::{Ino, Kind, View, Xattr, ROOT};
use crate::spool::Extent;

/// Where an inode's bytes come from.
#[derive(Debug)]
pub(crate) enum Data<'a> {
    /// Device nodes, fifos.
    None,
    File(Extent),
    /// A file with holes, stored chunk by chunk.
    Chunked(Extent, ChunkPlan),
    /// Entries in on-disk order (`.` and `..` included) as (name, order
    /// index of the target), and how they split into blocks.
    Dir(Vec<(&'a [u8], usize)>, Plan),
    Symlink(&'a [u8]),
}

/// One inode with its placement.
#[derive(Debug)]
pub(crate) struct Placed<'a> {
    pub raw: RawInode,
    pub xattrs: &'a [Xattr],
    pub data: Data<'a>,
    /// Bytes of the last partial block stored inline after the inode.
    pub tail: usize,
    /// Whole blocks in the data area.
    pub blocks: u64,
    /// First block of the data in the data area (meaningful when `blocks`
    /// is not 0).
    pub addr: u32,
    /// Byte offset of the inode in the metadata area.
    pub pos: u64,
    pub file_type: u8,
}

impl Placed<'_> {
    pub fn nid(&self) -> u64 {
        self.pos / SLOT
    }
}

/// The finished plan.
#[derive(Debug)]
pub(crate) struct Layout<'a> {
    pub inodes: Vec<Placed<'a>>,
    pub meta_blocks: u64,
    pub total_blocks: u32,
    pub build_time: (i64, u32),
    /// Some inode is chunk-based (a superblock feature flag).
    pub chunked: bool,
}

/// Breadth-first inode order, with each directory's parent.
fn order(view: &View<'_>) -> (Vec<Ino>, Vec<usize>) {
    let nodes = view.nodes;
    let mut order = vec![ROOT];
    let mut parent = vec![0usize];
    let mut seen: HashMap<Ino, ()> = HashMap::from([(ROOT, ())]);
    let mut i = 0;
    while i < order.len() {
        let ino = order[i];
        for (_, child) in nodes.entries(ino) {
            if seen.insert(child, ()).is_none() {
                order.push(child);
                parent.push(i);
            }
        }
        i += 1;
    }
    (order, parent)
}

fn most_common_mtime(view: &View<'_>, order: &[Ino]) -> (i64, u32) {
    let mut counts: HashMap<(i64, u32), u64> = HashMap::new();
    for &ino in order {
        if let Some(n) = view.nodes.get(ino) {
            *counts.entry((n.meta.mtime, n.meta.mtime_nsec)).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map_or((0, 0), |(t, _)| t)
}

pub(crate) fn plan<'a>(view: &View<'a>) -> Result<Layout<'a>> {
    let nodes = view.nodes;
    let (order, parent) = order(view);
    let index: HashMap<Ino, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let build_time = most_common_mtime(view, &order);
    let too_large = |what: String| Error::ImageTooLarge { what };

    let mut inodes = Vec::with_capacity(order.len());
    let mut pos = (SUPER_OFFSET + SUPER_SIZE) as u64;
    for (i, &ino) in order.iter().enumerate() {
        let Some(node) = nodes.get(ino) else {
            return Err(too_large(format!("internal: inode {ino} vanished")));
        };
        let (type_bits, file_type, data, size, nlink) = match &node.kind {
            Kind::Dir(_) => {
                let mut entries: Vec<(&[u8], usize)> = vec![(b".", i), (b"..", parent[i])];
                let mut subdirs = 0u32;
                for (name, child) in nodes.entries(ino) {
                    if matches!(nodes.get(child).map(|n| &n.kind), Some(Kind::Dir(_))) {
                        subdirs += 1;
                    }
                    entries.push((name, index.get(&child).copied().unwrap_or(0)));
                }
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                let p = dir::plan(entries.iter().map(|e| e.0.len()));
                let size = p.size;
                (ifmt::DIR, ft::DIR, Data::Dir(entries, p), size, 2 + subdirs)
            }
            Kind::File(e) => {
                let data = match view.spool.holes(*e).and_then(|h| chunks::plan(e.len, h)) {
                    Some(plan) => Data::Chunked(*e, plan),
                    None => Data::File(*e),
                };
                (ifmt::REG, ft::REG, data, e.len, node.refs)
            }
            Kind::Symlink(t) => (
                ifmt::LNK,
                ft::SYMLINK,
                Data::Symlink(t),
                t.len() as u64,
                node.refs,
            ),
            Kind::CharDev { .. } => (ifmt::CHR, ft::CHR, Data::None, 0, node.refs),
            Kind::BlockDev { .. } => (ifmt::BLK, ft::BLK, Data::None, 0, node.refs),
            Kind::Fifo => (ifmt::FIFO, ft::FIFO, Data::None, 0, node.refs),
        };
        let m = &node.meta;
        let extended = m.uid > 0xffff
            || m.gid > 0xffff
            || nlink > 0xffff
            || size > u64::from(u32::MAX)
            || (m.mtime, m.mtime_nsec) != build_time;
        let xattr_size = xattr::ibody_size(&m.xattrs);
        let Some(xattr_icount) = xattr::icount(xattr_size) else {
            return Err(too_large(format!(
                "{xattr_size} bytes of xattrs on one inode"
            )));
        };
        let mut raw = RawInode {
            extended,
            layout: format::FLAT_PLAIN,
            xattr_icount,
            mode: type_bits | (m.mode & 0o7777),
            nlink,
            size,
            i_u: 0,
            ino: u32::try_from(i + 1).map_err(|_| too_large("more than 2^32 inodes".into()))?,
            uid: m.uid,
            gid: m.gid,
            mtime: m.mtime,
            mtime_nsec: m.mtime_nsec,
        };
        let head = (raw.disk_size() + xattr_size) as u64;
        let mut tail = 0usize;
        let mut blocks = 0u64;
        let mut map = 0u64;
        match (&node.kind, &data) {
            (Kind::CharDev { major, minor } | Kind::BlockDev { major, minor }, _) => {
                raw.i_u = format::encode_dev(*major, *minor);
            }
            (_, Data::None) => {}
            (_, Data::Chunked(_, plan)) => {
                raw.layout = format::CHUNK_BASED;
                raw.i_u = u32::from(plan.bits);
                blocks = plan.data_blocks;
                // Entries are 4-byte aligned after the xattrs, which are.
                map = plan.map_bytes();
            }
            _ => {
                let rem = size % BLOCK;
                if rem != 0 && head + rem <= BLOCK {
                    raw.layout = format::FLAT_INLINE;
                    tail = rem as usize;
                    blocks = size / BLOCK;
                } else {
                    blocks = size.div_ceil(BLOCK);
                }
            }
        }
        let record = head + tail as u64 + map;
        pos = pos.next_multiple_of(SLOT);
        let in_block = pos % BLOCK;
        let straddles = if record <= BLOCK {
            in_block + record > BLOCK
        } else {
            in_block != 0
        };
        if straddles {
            pos = pos.next_multiple_of(BLOCK);
        }
        if i == 0 && pos / SLOT > u64::from(u16::MAX) {
            return Err(too_large("root inode beyond nid 65535".into()));
        }
        inodes.push(Placed {
            raw,
            xattrs: &m.xattrs,
            data,
            tail,
            blocks,
            addr: 0,
            pos,
            file_type,
        });
        pos += record;
    }

    let meta_blocks = pos.div_ceil(BLOCK);
    let mut next = meta_blocks;
    let mut chunked = false;
    for p in &mut inodes {
        if matches!(p.data, Data::None) {
            continue;
        }
        if p.blocks > 0 {
            p.addr = u32::try_from(next)
                .map_err(|_| too_large("data beyond block 2^32 (16 TiB)".into()))?;
            next += p.blocks;
        }
        if matches!(p.data, Data::Chunked(..)) {
            chunked = true;
            continue; // i_u is the chunk format
        }
        p.raw.i_u = if p.blocks > 0 {
            p.addr
        } else if p.raw.layout == format::FLAT_INLINE {
            NULL_ADDR
        } else {
            0
        };
    }
    let total_blocks =
        u32::try_from(next).map_err(|_| too_large(format!("{next} blocks of 4 KiB")))?;
    Ok(Layout {
        inodes,
        meta_blocks,
        total_blocks,
        build_time,
        chunked,
    })
}
