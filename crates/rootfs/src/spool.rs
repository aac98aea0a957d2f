//! Scratch storage for regular-file contents while layers are applied.
//!
//! Layers are streams: a file's bytes must be taken when its tar member goes
//! by, yet its fate (overwritten by a later layer, whited out) is only known
//! at the end. Holding contents in memory is out of the question for images
//! of several GiB, and extracting to the host filesystem would need root to
//! keep ownership and device nodes, and exposes the host to path tricks. So
//! every regular file is appended to one anonymous scratch file (opened with
//! `O_TMPFILE` where available, so nothing is left behind on a crash), and the
//! tree records only `(offset, len)`. The EROFS writer later copies live
//! ranges straight into the image with `std::io::copy`, which uses
//! `copy_file_range(2)` for file-to-file copies (a reflink on btrfs/XFS when
//! both sit on one filesystem, an in-kernel copy elsewhere).
//!
//! Extents start on 4 KiB boundaries so that ranges line up with EROFS data
//! blocks (a precondition for reflinks), and all-zero 4 KiB chunks are
//! skipped rather than written, so sparse and zero-filled files cost no disk
//! space in the spool. Space of files that are later replaced is not
//! reclaimed: the spool lives only as long as the build.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Granularity of extent alignment and of zero-chunk skipping.
const CHUNK: usize = 4096;
/// Read buffer size: large enough to amortise syscalls on decompressors.
const BUF: usize = 32 * CHUNK;

/// Where a file's contents live in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Extent {
    pub offset: u64,
    pub len: u64,
}

/// A failed append, split by side so the caller can blame the layer or the
/// host.
#[derive(Debug)]
pub(crate) enum AppendError {
    /// Reading the source failed or it ended early.
    Read(io::Error),
    /// Writing the spool failed (disk full, ...).
    Write(io::Error),
}

/// The append-only scratch file.
#[derive(Debug)]
pub(crate) struct Spool {
    file: File,
    dir: PathBuf,
    end: u64,
    buf: Vec<u8>,
}

impl Spool {
    /// Creates an anonymous spool file in `dir`.
    pub fn new_in(dir: &Path) -> io::Result<Self> {
        Ok(Self {
            file: tempfile::tempfile_in(dir)?,
            dir: dir.to_path_buf(),
            end: 0,
            buf: Vec::new(),
        })
    }

    /// The directory holding the spool, for error messages.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Copies exactly `len` bytes from `src` into the spool.
    pub fn append(&mut self, src: &mut dyn Read, len: u64) -> Result<Extent, AppendError> {
        let offset = self.end.next_multiple_of(CHUNK as u64);
        if self.buf.is_empty() {
            self.buf = vec![0; BUF];
        }
        let mut done = 0u64;
        while done < len {
            let want = usize::try_from(len - done).map_or(BUF, |r| r.min(BUF));
            let got = read_full(src, &mut self.buf[..want]).map_err(AppendError::Read)?;
            if got < want {
                return Err(AppendError::Read(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("file data ends after {} of {len} bytes", done + got as u64),
                )));
            }
            // Offsets stay CHUNK-aligned inside the loop because BUF is a
            // multiple of CHUNK, so skipped chunks are whole blocks.
            let mut pos = 0;
            while pos < got {
                let end = (pos + CHUNK).min(got);
                let piece = &self.buf[pos..end];
                if piece.iter().any(|&b| b != 0) {
                    self.file
                        .write_all_at(piece, offset + done + pos as u64)
                        .map_err(AppendError::Write)?;
                }
                pos = end;
            }
            done += got as u64;
        }
        let end = offset + len;
        // A trailing hole must still count as file length, or reads of it
        // would hit EOF.
        if end > self.file_len().map_err(AppendError::Write)? {
            self.file.set_len(end).map_err(AppendError::Write)?;
        }
        self.end = end;
        Ok(Extent { offset, len })
    }

    fn file_len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// The spool file, for copying ranges out of it.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Reads `buf.len()` bytes at `offset` within `extent`.
    pub fn read_at(&self, extent: Extent, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let in_range = offset
            .checked_add(buf.len() as u64)
            .is_some_and(|end| end <= extent.len);
        if !in_range {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "read beyond a spooled file",
            ));
        }
        self.file.read_exact_at(buf, extent.offset + offset)
    }
}

/// Reads until `buf` is full or the source ends; returns bytes read.
pub(crate) fn read_full(src: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_with_holes_and_alignment() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new_in(dir.path()).unwrap();
        let a = s.append(&mut &b"hello"[..], 5).unwrap();
        let mut data = vec![0u8; 3 * CHUNK + 10];
        data[CHUNK + 1] = 7;
        let b = s.append(&mut &data[..], data.len() as u64).unwrap();
        assert_eq!(a.offset, 0);
        assert_eq!(b.offset % CHUNK as u64, 0);
        let mut back = vec![1u8; data.len()];
        s.read_at(b, 0, &mut back).unwrap();
        assert_eq!(back, data);
        let mut h = [0u8; 5];
        s.read_at(a, 0, &mut h).unwrap();
        assert_eq!(&h, b"hello");
        assert!(s.read_at(a, 1, &mut h).is_err());
    }

    #[test]
    fn short_source_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new_in(dir.path()).unwrap();
        assert!(matches!(
            s.append(&mut &b"abc"[..], 10),
            Err(AppendError::Read(_))
        ));
    }
}
