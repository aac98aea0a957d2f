//! Writing a planned layout to a file, sequentially and atomically.
//!
//! The image is written to a temporary file in the destination directory,
//! synced, made `0644` and renamed over the destination; the directory is
//! synced too. A crash or error at any point leaves either the old file or
//! nothing at the destination, never a partial image. File contents are
//! copied from the spool with `std::io::copy`, which uses
//! `copy_file_range(2)` between files.

use std::fs::{File, Permissions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::dir::{self, Entry};
use super::format::{SuperBlock, BLOCK, FEATURE_INCOMPAT_CHUNKED_FILE, NULL_ADDR, SUPER_OFFSET};
use super::layout::{Data, Layout, Placed};
use super::xattr;
use super::{WriteOptions, WriteStats};
use crate::error::{Error, Result};
use crate::nodes::View;

/// A `Write` that knows its offset and pads with zeros.
struct Out<'f> {
    w: BufWriter<&'f File>,
    pos: u64,
}

impl Out<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, target: u64) -> io::Result<()> {
        const ZEROS: [u8; 4096] = [0; 4096];
        while self.pos < target {
            let n = (target - self.pos).min(ZEROS.len() as u64) as usize;
            self.write(&ZEROS[..n])?;
        }
        if self.pos != target {
            return Err(io::Error::other("internal: image layout overlaps"));
        }
        Ok(())
    }

    fn pad_block(&mut self) -> io::Result<()> {
        self.pad_to(self.pos.next_multiple_of(BLOCK))
    }

    /// Copies `len` bytes of the spool at `offset` to the current position.
    fn copy_from(&mut self, spool: &File, offset: u64, len: u64) -> io::Result<()> {
        let mut src = spool;
        src.seek(SeekFrom::Start(offset))?;
        let n = io::copy(&mut src.take(len), &mut self.w)?;
        if n != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "spool file shorter than recorded",
            ));
        }
        self.pos += n;
        Ok(())
    }
}

/// Entries of one directory block with nids filled in.
fn block_entries<'a>(
    layout: &Layout<'_>,
    entries: &'a [(&'a [u8], usize)],
) -> impl Iterator<Item = Entry<'a>> + 'a {
    let nids: Vec<(u64, u8)> = entries
        .iter()
        .map(|(_, i)| {
            let p = &layout.inodes[*i];
            (p.nid(), p.file_type)
        })
        .collect();
    entries
        .iter()
        .zip(nids)
        .map(|((name, _), (nid, file_type))| Entry {
            name,
            nid,
            file_type,
        })
}

/// Bytes of directory block `b` of `p`.
fn dir_block(layout: &Layout<'_>, p: &Placed<'_>, b: usize, out: &mut Vec<u8>) {
    let Data::Dir(entries, plan) = &p.data else {
        return;
    };
    let start = plan.starts[b];
    let end = plan.starts.get(b + 1).copied().unwrap_or(entries.len());
    let list: Vec<Entry<'_>> = block_entries(layout, &entries[start..end]).collect();
    dir::encode_block(&list, out);
}

fn meta_record(
    view: &View<'_>,
    layout: &Layout<'_>,
    p: &Placed<'_>,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    buf.clear();
    p.raw.encode(buf);
    xattr::encode(p.xattrs, buf);
    if let Data::Chunked(_, plan) = &p.data {
        let mut addr = p.addr;
        for k in 0..plan.chunks {
            if plan.is_data(k) {
                buf.extend_from_slice(&addr.to_le_bytes());
                addr += plan.chunk_blocks(k) as u32;
            } else {
                buf.extend_from_slice(&NULL_ADDR.to_le_bytes());
            }
        }
    }
    if p.tail == 0 {
        return Ok(());
    }
    match &p.data {
        Data::File(extent) => {
            let at = buf.len();
            buf.resize(at + p.tail, 0);
            view.spool
                .read_at(*extent, p.blocks * BLOCK, &mut buf[at..])?;
        }
        Data::Dir(_, plan) => dir_block(layout, p, plan.starts.len() - 1, buf),
        Data::Symlink(t) => buf.extend_from_slice(&t[(p.blocks * BLOCK) as usize..]),
        Data::Chunked(..) | Data::None => {}
    }
    Ok(())
}

fn data_blocks(
    view: &View<'_>,
    layout: &Layout<'_>,
    p: &Placed<'_>,
    out: &mut Out<'_>,
    stats: &mut WriteStats,
) -> io::Result<()> {
    let bytes = p.blocks * BLOCK;
    match &p.data {
        Data::File(extent) => {
            let len = bytes.min(extent.len);
            out.w.flush()?;
            out.copy_from(view.spool.file(), extent.offset, len)?;
            stats.data_bytes += len;
        }
        Data::Dir(_, _) => {
            let mut buf = Vec::with_capacity(BLOCK as usize);
            for b in 0..p.blocks as usize {
                buf.clear();
                dir_block(layout, p, b, &mut buf);
                out.write(&buf)?;
                out.pad_block()?;
            }
        }
        Data::Chunked(extent, plan) => {
            // Runs of data chunks are contiguous in the file and in the
            // image: one copy each.
            let chunk = BLOCK << plan.bits;
            let mut k = 0;
            while k < plan.chunks {
                if !plan.is_data(k) {
                    k += 1;
                    continue;
                }
                let start = k;
                while k < plan.chunks && plan.is_data(k) {
                    k += 1;
                }
                let from = start * chunk;
                let len = (k * chunk).min(extent.len) - from;
                out.w.flush()?;
                out.copy_from(view.spool.file(), extent.offset + from, len)?;
                out.pad_block()?;
                stats.data_bytes += len;
            }
        }
        Data::Symlink(t) => out.write(t)?,
        Data::None => {}
    }
    out.pad_block()
}

pub(crate) fn write(
    view: &View<'_>,
    layout: &Layout<'_>,
    dest: &Path,
    options: &WriteOptions,
) -> Result<WriteStats> {
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let io_err = |context| {
        move |source| Error::Io {
            context,
            path: dest.to_path_buf(),
            source,
        }
    };
    let tmp = tempfile::Builder::new()
        .prefix(".erofs-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io_err("creating a temporary image file"))?;
    let mut stats = WriteStats {
        inodes: layout.inodes.len() as u64,
        ..Default::default()
    };
    emit(view, layout, tmp.as_file(), options, &mut stats).map_err(io_err("writing the image"))?;
    let file = tmp.as_file();
    file.set_permissions(Permissions::from_mode(0o644))
        .map_err(io_err("setting image permissions"))?;
    file.sync_all().map_err(io_err("syncing the image"))?;
    tmp.persist(dest)
        .map_err(|e| io_err("renaming the image into place")(e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing the image directory"))?;
    Ok(stats)
}

fn emit(
    view: &View<'_>,
    layout: &Layout<'_>,
    file: &File,
    options: &WriteOptions,
    stats: &mut WriteStats,
) -> io::Result<()> {
    let mut out = Out {
        w: BufWriter::with_capacity(1 << 20, file),
        pos: 0,
    };
    let sb = SuperBlock {
        root_nid: layout.inodes.first().map_or(0, |r| r.nid() as u16),
        inos: layout.inodes.len() as u64,
        build_time: layout.build_time.0,
        build_time_nsec: layout.build_time.1,
        blocks: layout.total_blocks,
        meta_blkaddr: 0,
        uuid: options.uuid,
        volume_name: options.volume_name,
        feature_incompat: if layout.chunked {
            FEATURE_INCOMPAT_CHUNKED_FILE
        } else {
            0
        },
    };
    out.pad_to(SUPER_OFFSET as u64)?;
    out.write(&sb.encode())?;
    let mut buf = Vec::new();
    for p in &layout.inodes {
        out.pad_to(p.pos)?;
        meta_record(view, layout, p, &mut buf)?;
        out.write(&buf)?;
    }
    out.pad_to(layout.meta_blocks * BLOCK)?;
    stats.meta_bytes = out.pos;
    for p in &layout.inodes {
        if p.blocks > 0 {
            out.pad_to(u64::from(p.addr) * BLOCK)?;
            data_blocks(view, layout, p, &mut out, stats)?;
        }
        if let Data::File(e) = &p.data {
            stats.data_bytes += e.len.min(p.tail as u64);
        }
    }
    out.pad_to(u64::from(layout.total_blocks) * BLOCK)?;
    out.w.flush()?;
    stats.bytes = out.pos;
    Ok(())
}
