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

use std::io::{self, Read};
use std::rc::Rc;

use crate::compress::{self, Compression, Flags, TarStream};
use crate::erofs::{format, xattr};
use crate::error::{show, Error, Result, UnsafeReason};
use crate::nodes::{Ino, Kind, Meta, WalkError, Xattr, ROOT};
use crate::path::{self, PathError, MAX_NAME_LEN};
use crate::spool::AppendError;
use crate::tree::{Progress, Tree};
use crate::ustar::{self, TarError};
use crate::whiteout::{self, Whiteout};

/// Longest symlink target Linux accepts (`PATH_MAX` without the NUL).
const MAX_SYMLINK_LEN: usize = 4095;
/// EROFS stores an xattr value length in 16 bits.
const MAX_XATTR_VALUE: usize = u16::MAX as usize;

/// What one `apply_layer` call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Tar members processed (including whiteouts and skipped ones).
    pub entries: u64,
    /// Bytes of regular-file contents taken into the spool.
    pub file_bytes: u64,
    /// Compressed bytes read from the caller's stream.
    pub input_bytes: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Xattrs dropped because EROFS (Linux 6.1) has no name prefix for them
    /// (anything but `user.`, `trusted.`, `security.`, POSIX ACLs).
    pub xattrs_dropped: u64,
}

/// Per-layer state threaded through the member handlers.
struct Apply<'t> {
    tree: &'t mut Tree,
    layer: usize,
    stats: LayerStats,
    flags: Rc<Flags>,
}

pub(crate) fn apply<R: Read>(
    tree: &mut Tree,
    layer: usize,
    src: R,
    declared: Compression,
) -> Result<LayerStats> {
    let flags = Rc::new(Flags::default());
    let stream = compress::open(layer, src, declared, &flags)?;
    let max_meta = tree.limits().max_header_bytes;
    let mut reader = ustar::Reader::new(stream, max_meta);
    let mut ctx = Apply {
        tree,
        layer,
        stats: LayerStats::default(),
        flags: flags.clone(),
    };
    let mut last_path = Vec::new();
    loop {
        let member = match reader.next_member() {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => return Err(ctx.tar_error(&last_path, e)),
        };
        last_path.clone_from(&member.path);
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
    // is verified, as Docker does.
    let mut rest = reader.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| ctx.io_error(&last_path, e))?;
    ctx.stats.input_bytes = flags.input_bytes.get();
    Ok(ctx.stats)
}

impl Apply<'_> {
    fn io_error(&self, path: &[u8], source: io::Error) -> Error {
        let layer = self.layer;
        if self.flags.source_failed.get() {
            Error::Read { layer, source }
        } else if self.flags.decoder_failed.get() {
            Error::Decompress {
                layer,
                format: self.flags.format.get(),
                source,
            }
        } else {
            Error::Tar {
                layer,
                path: show(path),
                source,
            }
        }
    }

    fn tar_error(&self, path: &[u8], e: TarError) -> Error {
        match e {
            TarError::Io(e) => self.io_error(path, e),
            TarError::Corrupt(msg) => self.io_error(path, io::Error::other(msg)),
            TarError::TooLarge => self.limit(
                path,
                "the PAX / long-name records of one entry",
                self.tree.limits().max_header_bytes,
            ),
            TarError::Unsupported(what) => self.invalid(path, format!("unsupported: {what}")),
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

    fn limit(&self, path: &[u8], what: &'static str, limit: u64) -> Error {
        Error::LimitExceeded {
            layer: self.layer,
            path: show(path),
            what,
            limit,
        }
    }

    fn walk_error(&self, path: &[u8], e: WalkError, symlink: UnsafeReason) -> Error {
        match e {
            WalkError::Symlink => self.unsafe_entry(path, symlink),
            WalkError::NotDir => self.invalid(path, "a parent on its path is not a directory"),
            WalkError::Missing => self.invalid(path, "a parent directory does not exist"),
            WalkError::TooMany => {
                self.limit(path, "the number of inodes", self.tree.limits().max_inodes)
            }
        }
    }

    fn components<'p>(&self, shown: &[u8], raw: &'p [u8], link: bool) -> Result<Vec<&'p [u8]>> {
        let limits = self.tree.limits();
        path::normalize(raw, limits.max_path_len, limits.max_depth).map_err(|e| match e {
            PathError::Escapes if link => {
                self.unsafe_entry(shown, UnsafeReason::LinkTargetEscapesRoot)
            }
            PathError::Escapes => self.unsafe_entry(shown, UnsafeReason::PathEscapesRoot),
            PathError::NameTooLong => {
                self.limit(shown, "a path component's length", MAX_NAME_LEN as u64)
            }
            PathError::PathTooLong => {
                self.limit(shown, "the path length", limits.max_path_len as u64)
            }
            PathError::TooDeep => self.limit(shown, "the path depth", limits.max_depth as u64),
            PathError::Nul => self.invalid(shown, "the path contains a NUL byte"),
        })
    }

    fn charge(&mut self, path: &[u8], bytes: usize) -> Result<()> {
        if !self.tree.charge_metadata(bytes as u64) {
            let limit = self.tree.limits().max_metadata_bytes;
            return Err(self.limit(path, "the total metadata held in memory", limit));
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
        match whiteout::classify(name) {
            Whiteout::None => {}
            Whiteout::AufsMeta => return Ok(()),
            Whiteout::Invalid => return Err(self.invalid(&m.path, "whiteout of nothing")),
            Whiteout::Opaque => {
                let dir = self.parent(&m.path, parents)?;
                self.tree.nodes_mut().make_opaque(dir, self.layer);
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
            b'0' | b'7' => {
                let extent = match self.tree.spool_mut().append(&mut reader.data(), m.size) {
                    Ok(e) => e,
                    Err(AppendError::Read(e)) => return Err(self.io_error(&m.path, e)),
                    Err(AppendError::Write(source)) => {
                        return Err(Error::Io {
                            context: "writing the spool file",
                            path: self.tree.spool_mut().dir().to_path_buf(),
                            source,
                        })
                    }
                };
                self.stats.file_bytes += m.size;
                Kind::File(extent)
            }
            b'2' => {
                let target = m.link;
                if target.is_empty() {
                    return Err(self.invalid(&m.path, "symlink with an empty target"));
                }
                if target.len() > MAX_SYMLINK_LEN {
                    let limit = MAX_SYMLINK_LEN as u64;
                    return Err(self.limit(&m.path, "the symlink target length", limit));
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
        let dir = self.parent(&m.path, parents)?;
        let layer = self.layer;
        self.tree
            .nodes_mut()
            .put(dir, name, meta, kind, layer)
            .map_err(|e| self.walk_error(&m.path, e, UnsafeReason::ParentIsSymlink))
    }

    /// Walks (creating) the parent directories of an entry.
    fn parent(&mut self, path: &[u8], parents: &[&[u8]]) -> Result<Ino> {
        let layer = self.layer;
        self.tree
            .nodes_mut()
            .walk(parents, Some(layer))
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
        let layer = self.layer;
        self.tree.nodes_mut().link(dir, name, t.ino, layer);
        Ok(())
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
        let mut xattrs: Vec<Xattr> = Vec::new();
        for (name, value) in &m.xattrs {
            if xattr::split_name(name).is_none() {
                self.stats.xattrs_dropped += 1;
                continue;
            }
            if value.len() > MAX_XATTR_VALUE {
                let limit = MAX_XATTR_VALUE as u64;
                return Err(self.limit(path, "an xattr value's size", limit));
            }
            xattrs.retain(|(n, _)| **n != **name);
            xattrs.push((name[..].into(), value[..].into()));
        }
        let total: usize = xattrs.iter().map(|(n, v)| n.len() + v.len()).sum();
        let limit = self.tree.limits().max_xattr_bytes;
        if total > limit {
            return Err(self.limit(path, "the xattr bytes of one file", limit as u64));
        }
        self.charge(path, total)?;
        xattrs.sort();
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
