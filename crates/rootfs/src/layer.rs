//! Applying one layer's tar stream to the tree.
//!
//! Nothing is ever written to the host filesystem except file contents into
//! the spool, so ownership, device nodes and setuid bits are kept exactly
//! without privileges, and no member name can reach a host path. Every
//! member is checked before it changes the tree: its path is normalized
//! lexically ([`crate::path`]), and walking its parents must not meet a
//! symlink. Docker's choices are followed where the tar format leaves room:
//! later duplicates win, missing parents are created `0755 root:root`, a
//! directory over a directory keeps its children, whiteouts of missing paths
//! are ignored, PAX global headers are ignored.
//!
//! Metadata on hard-link members is ignored: the link shares the target's
//! inode, whose metadata came with the target.
//!
//! AUFS bookkeeping is dropped as Docker drops it: nothing below a
//! `.wh..wh.*` directory (nor such a name itself) reaches the image, and a
//! hard link to a file in `/.wh..wh.plnk` (AUFS's hard-link staging area)
//! becomes a copy of that file, as Docker makes it.
//!
//! Every step is linear in the layer's size and bounded by [`Limits`]:
//! the unpacked bytes (see `compress`), the spool, the names, the
//! metadata. A hostile layer is refused with an error naming the cap.
//!
//! [`Limits`]: crate::Limits

use std::collections::HashMap;
use std::io::{self, Read};
use std::rc::Rc;

use crate::compress::{self, Compression, Flags, TarStream};
use crate::erofs::{format, xattr};
use crate::error::{show, At, Error, Result, UnsafeReason};
use crate::limits::Cap;
use crate::nodes::{Ino, Kind, Meta, WalkError, Xattr, ROOT};
use crate::path::{self, PathError, MAX_NAME_LEN};
use crate::spool::{AppendError, Extent};
use crate::tree::{Progress, Tree};
use crate::ustar::{self, TarError};
use crate::whiteout::{self, Whiteout, AUFS_LINK_DIR};

/// Longest symlink target Linux accepts (`PATH_MAX` without the NUL).
const MAX_SYMLINK_LEN: usize = 4095;
/// EROFS stores an xattr value length in 16 bits.
const MAX_XATTR_VALUE: usize = u16::MAX as usize;

/// What one `apply_layer` call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Tar members processed (including whiteouts and skipped ones).
    pub entries: u64,
    /// Bytes of regular-file contents taken into the spool.
    pub file_bytes: u64,
    /// Compressed bytes read from the caller's stream.
    pub input_bytes: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Bytes of holes in sparse members (not in the stream).
    pub holes: u64,
    /// Xattrs dropped because EROFS (Linux 6.1) has no name prefix for them
    /// (anything but `user.`, `trusted.`, `security.`, POSIX ACLs).
    pub xattrs_dropped: u64,
    /// Bytes of the uncompressed tar stream.
    pub tar_bytes: u64,
    /// The layer's diff_id: `sha256:<hex>` of the uncompressed tar stream.
    pub diff_id: String,
}

/// Per-layer state threaded through the member handlers.
struct Apply<'t> {
    tree: &'t mut Tree,
    /// The caller's index, for messages.
    layer: usize,
    /// The tree's own count of applied layers, which tags what this layer
    /// touched (opaque markers keep only that): unique even if a caller
    /// passes the same index twice.
    seq: usize,
    stats: LayerStats,
    flags: Rc<Flags>,
    /// Files of `/.wh..wh.plnk` by base name, for hard links to them.
    aufs_links: HashMap<Vec<u8>, (Meta, Extent)>,
}

pub(crate) fn apply<R: Read>(
    tree: &mut Tree,
    layer: usize,
    src: R,
    declared: Compression,
) -> Result<LayerStats> {
    let flags = Rc::new(Flags::default());
    flags.budget.set(
        tree.limits()
            .max_unpacked_bytes
            .saturating_sub(tree.unpacked_bytes()),
    );
    let stream = compress::open(layer, src, declared, &flags)?;
    let max_meta = tree.limits().max_header_bytes;
    let mut reader = ustar::Reader::new(stream, max_meta);
    let seq = tree.layers();
    let mut ctx = Apply {
        tree,
        layer,
        seq,
        stats: LayerStats::default(),
        flags: flags.clone(),
        aufs_links: HashMap::new(),
    };
    let mut last_path: Option<Vec<u8>> = None;
    loop {
        let member = match reader.next_member() {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                let at = At::Header {
                    offset: reader.header_offset(),
                    previous: last_path.as_deref().map(show),
                };
                return Err(ctx.tar_error(at, e));
            }
        };
        last_path = Some(member.path.clone());
        ctx.member(member, &mut reader)?;
        ctx.stats.entries += 1;
        ctx.stats.input_bytes = flags.input_bytes.get();
        ctx.tree.report(Progress {
            layer,
            entries: ctx.stats.entries,
            file_bytes: ctx.stats.file_bytes,
            input_bytes: ctx.stats.input_bytes,
        });
    }
    // Read to the end so that a gzip/zstd checksum after the tar end marker
    // is verified, as Docker does, and the diff_id covers the whole stream.
    let mut rest = reader.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| ctx.io_error(At::Trailer, e))?;
    ctx.stats.input_bytes = flags.input_bytes.get();
    ctx.stats.tar_bytes = flags.unpacked.get().saturating_sub(ctx.stats.holes);
    ctx.stats.diff_id = format!("sha256:{}", hex::encode(rest.digest()));
    ctx.tree.add_unpacked(flags.unpacked.get());
    Ok(ctx.stats)
}

impl Apply<'_> {
    fn at(path: &[u8]) -> At {
        At::Entry(show(path))
    }

    fn io_error(&self, at: At, source: io::Error) -> Error {
        let layer = self.layer;
        if self.flags.over_budget.get() {
            self.unpacked_limit(at)
        } else if self.flags.source_failed.get() {
            Error::Read { layer, source }
        } else if self.flags.decoder_failed.get() {
            Error::Decompress {
                layer,
                format: self.flags.format.get(),
                source,
            }
        } else {
            Error::Tar { layer, at, source }
        }
    }

    fn unpacked_limit(&self, at: At) -> Error {
        Error::LimitExceeded {
            layer: self.layer,
            at,
            what:
                "the unpacked size of the image (uncompressed layer bytes plus sparse-file holes)",
            limit: self.tree.limits().max_unpacked_bytes,
            cap: Cap::UnpackedBytes,
        }
    }

    fn tar_error(&self, at: At, e: TarError) -> Error {
        match e {
            TarError::Io(e) => self.io_error(at, e),
            TarError::Corrupt(msg) => self.io_error(at, io::Error::other(msg)),
            TarError::TooLarge => Error::LimitExceeded {
                layer: self.layer,
                at,
                what: "the PAX / long-name records and sparse map of one member",
                limit: self.tree.limits().max_header_bytes,
                cap: Cap::HeaderBytes,
            },
            TarError::Unsupported(what) => match at {
                At::Entry(path) => Error::InvalidEntry {
                    layer: self.layer,
                    path,
                    reason: format!("unsupported: {what}"),
                },
                at => Error::Tar {
                    layer: self.layer,
                    at,
                    source: io::Error::other(format!("unsupported: {what}")),
                },
            },
        }
    }

    fn invalid(&self, path: &[u8], reason: impl Into<String>) -> Error {
        Error::InvalidEntry {
            layer: self.layer,
            path: show(path),
            reason: reason.into(),
        }
    }

    fn unsafe_entry(&self, path: &[u8], reason: UnsafeReason) -> Error {
        Error::Unsafe {
            layer: self.layer,
            path: show(path),
            reason,
        }
    }

    fn limit(&self, path: &[u8], what: &'static str, limit: u64, cap: Cap) -> Error {
        Error::LimitExceeded {
            layer: self.layer,
            at: Self::at(path),
            what,
            limit,
            cap,
        }
    }

    fn too_many(&self, path: &[u8]) -> Error {
        self.limit(
            path,
            "the number of names (files, directories, links ...)",
            self.tree.limits().max_inodes,
            Cap::Inodes,
        )
    }

    fn walk_error(&self, path: &[u8], e: WalkError, symlink: UnsafeReason) -> Error {
        match e {
            WalkError::Symlink => self.unsafe_entry(path, symlink),
            WalkError::NotDir => self.invalid(path, "a parent on its path is not a directory"),
            WalkError::Missing => self.invalid(path, "a parent directory does not exist"),
            WalkError::TooMany => self.too_many(path),
        }
    }

    fn components<'p>(&self, shown: &[u8], raw: &'p [u8], link: bool) -> Result<Vec<&'p [u8]>> {
        let limits = self.tree.limits();
        path::normalize(raw, limits.max_path_len, limits.max_depth).map_err(|e| match e {
            PathError::Escapes if link => {
                self.unsafe_entry(shown, UnsafeReason::LinkTargetEscapesRoot)
            }
            PathError::Escapes => self.unsafe_entry(shown, UnsafeReason::PathEscapesRoot),
            PathError::NameTooLong => self.limit(
                shown,
                "a path component's length",
                MAX_NAME_LEN as u64,
                Cap::Format,
            ),
            PathError::PathTooLong => self.limit(
                shown,
                "the path length",
                limits.max_path_len as u64,
                Cap::PathLen,
            ),
            PathError::TooDeep => {
                self.limit(shown, "the path depth", limits.max_depth as u64, Cap::Depth)
            }
            PathError::Nul => self.invalid(shown, "the path contains a NUL byte"),
        })
    }

    fn charge(&mut self, path: &[u8], bytes: usize) -> Result<()> {
        if !self.tree.charge_metadata(bytes as u64) {
            let limit = self.tree.limits().max_metadata_bytes;
            return Err(self.limit(
                path,
                "the total metadata held in memory",
                limit,
                Cap::MetadataBytes,
            ));
        }
        Ok(())
    }

    fn member(
        &mut self,
        m: ustar::Member,
        reader: &mut ustar::Reader<TarStream<'_>>,
    ) -> Result<()> {
        // PAX global headers: ignored, like Docker.
        if m.typeflag == b'g' {
            return Ok(());
        }
        let meta = self.meta(&m)?;
        let comps = self.components(&m.path, &m.path, false)?;
        self.charge(&m.path, m.path.len())?;
        let Some((name, parents)) = comps.split_last() else {
            return match m.typeflag {
                b'5' => {
                    self.tree.nodes_mut().set_meta(ROOT, meta);
                    Ok(())
                }
                _ => Err(self.invalid(&m.path, "a non-directory cannot replace the root")),
            };
        };
        if parents.iter().any(|c| whiteout::is_aufs_meta(c)) {
            return self.aufs_member(&m, meta, &comps, reader);
        }
        let seq = self.seq;
        match whiteout::classify(name) {
            Whiteout::None => {}
            Whiteout::AufsMeta => return Ok(()),
            Whiteout::Invalid => return Err(self.invalid(&m.path, "whiteout of nothing")),
            Whiteout::Opaque => {
                let dir = self.parent(&m.path, parents)?;
                self.tree.nodes_mut().make_opaque(dir, seq);
                self.stats.whiteouts += 1;
                return Ok(());
            }
            Whiteout::Remove(target) => {
                match self.tree.nodes_mut().walk(parents, None) {
                    Ok(dir) => {
                        self.tree.nodes_mut().remove(dir, target);
                    }
                    Err(WalkError::Symlink) => {
                        return Err(self.unsafe_entry(&m.path, UnsafeReason::ParentIsSymlink))
                    }
                    // Nothing there to delete: ignored, like Docker.
                    Err(_) => {}
                }
                self.stats.whiteouts += 1;
                return Ok(());
            }
        }
        let kind = match m.typeflag {
            b'5' => Kind::Dir(Default::default()),
            b'0' | b'7' => Kind::File(self.contents(&m, reader)?),
            b'2' => {
                let target = m.link;
                if target.is_empty() {
                    return Err(self.invalid(&m.path, "symlink with an empty target"));
                }
                if target.contains(&0) {
                    // Go's archive/tar (Docker) refuses it too; the kernel
                    // would cut the target at the NUL.
                    return Err(self.invalid(&m.path, "the symlink target contains a NUL byte"));
                }
                if target.len() > MAX_SYMLINK_LEN {
                    let limit = MAX_SYMLINK_LEN as u64;
                    return Err(self.limit(
                        &m.path,
                        "the symlink target length",
                        limit,
                        Cap::Format,
                    ));
                }
                self.charge(&m.path, target.len())?;
                Kind::Symlink(target.into())
            }
            b'1' => return self.hard_link(&m.path, name, parents, &m.link),
            b'3' | b'4' if m.major > format::MAX_MAJOR || m.minor > format::MAX_MINOR => {
                return Err(self.invalid(
                    &m.path,
                    format!(
                        "device number {}:{} is too large for Linux",
                        m.major, m.minor
                    ),
                ));
            }
            b'3' => Kind::CharDev {
                major: m.major,
                minor: m.minor,
            },
            b'4' => Kind::BlockDev {
                major: m.major,
                minor: m.minor,
            },
            b'6' => Kind::Fifo,
            other => {
                return Err(self.invalid(
                    &m.path,
                    format!("unsupported tar entry type '{}'", other.escape_ascii()),
                ));
            }
        };
        self.put(&m.path, parents, name, meta, kind)
    }

    fn put(
        &mut self,
        path: &[u8],
        parents: &[&[u8]],
        name: &[u8],
        meta: Meta,
        kind: Kind,
    ) -> Result<()> {
        let dir = self.parent(path, parents)?;
        let seq = self.seq;
        self.tree
            .nodes_mut()
            .put(dir, name, meta, kind, seq)
            .map_err(|e| self.walk_error(path, e, UnsafeReason::ParentIsSymlink))
    }

    /// Takes a regular file's contents into the spool, within the caps.
    fn contents(
        &mut self,
        m: &ustar::Member,
        reader: &mut ustar::Reader<TarStream<'_>>,
    ) -> Result<Extent> {
        // The holes of a sparse member are never read, so they are charged
        // here; its stored bytes (and every other member's) are charged as
        // the stream goes by. Either way a claimed size beyond what is left
        // is refused before any work.
        let holes = m.size - m.stored;
        let left = self
            .flags
            .budget
            .get()
            .saturating_sub(self.flags.unpacked.get());
        if m.size > left || !self.flags.charge(holes) {
            self.flags.over_budget.set(true);
            return Err(self.unpacked_limit(Self::at(&m.path)));
        }
        self.stats.holes += holes;
        let extent = match self.tree.spool_mut().append(&mut reader.data(), m.size) {
            Ok(e) => e,
            Err(AppendError::Read(e)) => return Err(self.io_error(Self::at(&m.path), e)),
            Err(AppendError::Full) => {
                return Err(self.limit(
                    &m.path,
                    "the file data written to the spool",
                    self.tree.limits().max_spool_bytes,
                    Cap::SpoolBytes,
                ))
            }
            Err(AppendError::Write(source)) => {
                return Err(Error::Io {
                    context: "writing the spool file",
                    path: self.tree.spool_mut().dir().to_path_buf(),
                    source,
                })
            }
        };
        self.stats.file_bytes += m.size;
        Ok(extent)
    }

    /// A member below a `.wh..wh.*` directory: AUFS bookkeeping, dropped.
    /// Regular files of `/.wh..wh.plnk` are kept aside (not in the tree) for
    /// the hard links that name them.
    fn aufs_member(
        &mut self,
        m: &ustar::Member,
        meta: Meta,
        comps: &[&[u8]],
        reader: &mut ustar::Reader<TarStream<'_>>,
    ) -> Result<()> {
        let [AUFS_LINK_DIR, name] = comps else {
            return Ok(());
        };
        if !matches!(m.typeflag, b'0' | b'7') {
            return Ok(());
        }
        if self.aufs_links.len() as u64 >= self.tree.limits().max_inodes {
            return Err(self.too_many(&m.path));
        }
        let extent = self.contents(m, reader)?;
        self.aufs_links.insert(name.to_vec(), (meta, extent));
        Ok(())
    }

    /// Walks (creating) the parent directories of an entry.
    fn parent(&mut self, path: &[u8], parents: &[&[u8]]) -> Result<Ino> {
        let seq = self.seq;
        self.tree
            .nodes_mut()
            .walk(parents, Some(seq))
            .map_err(|e| self.walk_error(path, e, UnsafeReason::ParentIsSymlink))
    }

    fn hard_link(
        &mut self,
        path: &[u8],
        name: &[u8],
        parents: &[&[u8]],
        raw_target: &[u8],
    ) -> Result<()> {
        let target = self.components(path, raw_target, true)?;
        let Some((tname, tparents)) = target.split_last() else {
            return Err(self.invalid(path, "hard link to the root directory"));
        };
        if tparents == [AUFS_LINK_DIR] {
            // Docker makes these copies of the staged file.
            let Some((meta, extent)) = self.aufs_links.get(*tname).cloned() else {
                return Err(self.link_missing(path, raw_target));
            };
            return self.put(path, parents, name, meta, Kind::File(extent));
        }
        let nodes = self.tree.nodes_mut();
        let tdir = nodes.walk(tparents, None).map_err(|e| match e {
            WalkError::Symlink => self.unsafe_entry(path, UnsafeReason::LinkTargetThroughSymlink),
            _ => self.link_missing(path, raw_target),
        })?;
        let nodes = self.tree.nodes_mut();
        let Some(t) = nodes.child(tdir, tname) else {
            return Err(self.link_missing(path, raw_target));
        };
        if matches!(nodes.get(t.ino).map(|n| &n.kind), Some(Kind::Dir(_))) {
            return Err(self.invalid(path, "hard link to a directory"));
        }
        if tparents == parents && *tname == name {
            return Ok(());
        }
        let dir = self.parent(path, parents)?;
        let seq = self.seq;
        self.tree
            .nodes_mut()
            .link(dir, name, t.ino, seq)
            .map_err(|_| self.too_many(path))
    }

    fn link_missing(&self, path: &[u8], target: &[u8]) -> Error {
        self.invalid(
            path,
            format!(
                "hard link target '{}' does not exist in this or an earlier layer",
                show(target)
            ),
        )
    }

    /// Ownership, mode, time and xattrs of a member, validated.
    fn meta(&mut self, m: &ustar::Member) -> Result<Meta> {
        let path = &m.path;
        let (Ok(uid), Ok(gid)) = (u32::try_from(m.uid), u32::try_from(m.gid)) else {
            return Err(self.invalid(path, "uid or gid does not fit in 32 bits"));
        };
        // Later records of one name win. A stable sort by name, then keeping
        // the last of each run, does that in O(n log n): a header may hold
        // tens of thousands of records.
        let mut records: Vec<&(Vec<u8>, Vec<u8>)> = Vec::with_capacity(m.xattrs.len());
        for record in &m.xattrs {
            let (name, value) = record;
            if xattr::split_name(name).is_none() {
                self.stats.xattrs_dropped += 1;
                continue;
            }
            if value.len() > MAX_XATTR_VALUE {
                let limit = MAX_XATTR_VALUE as u64;
                return Err(self.limit(path, "an xattr value's size", limit, Cap::Format));
            }
            records.push(record);
        }
        records.sort_by(|a, b| a.0.cmp(&b.0));
        let mut xattrs: Vec<Xattr> = Vec::with_capacity(records.len());
        for (i, (name, value)) in records.iter().map(|r| (&r.0, &r.1)).enumerate() {
            if records.get(i + 1).is_some_and(|next| next.0 == *name) {
                continue;
            }
            xattrs.push((name[..].into(), value[..].into()));
        }
        let total: usize = xattrs.iter().map(|(n, v)| n.len() + v.len()).sum();
        let limit = self.tree.limits().max_xattr_bytes;
        if total > limit {
            return Err(self.limit(
                path,
                "the xattr bytes of one file",
                limit as u64,
                Cap::XattrBytes,
            ));
        }
        self.charge(path, total)?;
        Ok(Meta {
            mode: (m.mode & 0o7777) as u16,
            uid,
            gid,
            mtime: m.mtime,
            mtime_nsec: m.mtime_nsec,
            xattrs,
        })
    }
}
