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
//! Files of a block or more start on 4 KiB boundaries so that their blocks
//! line up with EROFS data blocks (a precondition for reflinks); smaller
//! files, which EROFS stores inline with their inode anyway, are packed
//! back to back, so a layer of millions of tiny files costs their bytes,
//! not a block each. All-zero 4 KiB chunks are not written, and the holes
//! of sparse members are skipped without being read: neither costs disk
//! space nor counts against the spool cap. Which chunks of a file are holes
//! is remembered (one bit per 4 KiB, only for files that have any) so the
//! image can keep them as holes too. Space of files that are later
//! replaced is not reclaimed: the spool lives only as long as the build.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Granularity of extent alignment and of zero-chunk skipping.
pub(crate) const CHUNK: usize = 4096;
/// Read buffer size: large enough to amortise syscalls on decompressors.
const BUF: usize = 32 * CHUNK;

/// Where a file's contents live in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Extent {
    pub offset: u64,
    pub len: u64,
}

/// A file's contents as the spool takes them: bytes, and where the source
/// knows them (sparse tar members), holes that need not be read at all.
pub(crate) trait Contents: Read {
    /// Bytes of hole (zeros) from the current position on; 0 if none or
    /// unknown.
    fn hole_ahead(&mut self) -> u64 {
        0
    }
    /// Moves past `n` bytes of hole (at most [`Contents::hole_ahead`]).
    fn skip_hole(&mut self, _n: u64) {}
}

impl Contents for &[u8] {}

/// Which 4 KiB chunks of an aligned extent are holes (never written).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct HoleMap {
    bits: Vec<u64>,
}

impl HoleMap {
    pub(crate) fn set(&mut self, chunk: u64) {
        let word = (chunk / 64) as usize;
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        self.bits[word] |= 1 << (chunk % 64);
    }

    /// True if chunk `chunk` (of 4 KiB) was never written.
    #[cfg(test)]
    pub fn is_hole(&self, chunk: u64) -> bool {
        self.bits
            .get((chunk / 64) as usize)
            .is_some_and(|w| w & (1 << (chunk % 64)) != 0)
    }

    /// The chunks below `end` that are not holes, in order; words that are
    /// all hole are passed over whole.
    pub fn data_blocks(&self, end: u64) -> impl Iterator<Item = u64> + '_ {
        (0..end.div_ceil(64)).flat_map(move |w| {
            let holes = self.bits.get(w as usize).copied().unwrap_or(0);
            let mut data = !holes;
            std::iter::from_fn(move || {
                while data != 0 {
                    let bit = u64::from(data.trailing_zeros());
                    data &= data - 1;
                    let chunk = w * 64 + bit;
                    if chunk < end {
                        return Some(chunk);
                    }
                }
                None
            })
        })
    }
}

/// A failed append, split by side so the caller can blame the layer or the
/// host.
#[derive(Debug)]
pub(crate) enum AppendError {
    /// Reading the source failed or it ended early.
    Read(io::Error),
    /// Writing the spool failed (disk full, ...).
    Write(io::Error),
    /// Writing would take the spool past its cap.
    Full,
}

/// The append-only scratch file.
#[derive(Debug)]
pub(crate) struct Spool {
    file: File,
    dir: PathBuf,
    end: u64,
    buf: Vec<u8>,
    /// Bytes of data written (what counts against `max_written`).
    written: u64,
    max_written: u64,
    /// Hole maps of the aligned extents that have holes, by offset.
    holes: HashMap<u64, HoleMap>,
}

impl Spool {
    /// Creates an anonymous spool file in `dir` that takes at most
    /// `max_written` bytes of data.
    pub fn new_in(dir: &Path, max_written: u64) -> io::Result<Self> {
        Ok(Self {
            file: tempfile::tempfile_in(dir)?,
            dir: dir.to_path_buf(),
            end: 0,
            buf: Vec::new(),
            written: 0,
            max_written,
            holes: HashMap::new(),
        })
    }

    /// The directory holding the spool, for error messages.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of file data written so far (holes and zero chunks excluded).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The holes of `extent`, if it has any.
    pub fn holes(&self, extent: Extent) -> Option<&HoleMap> {
        self.holes.get(&extent.offset).filter(|_| extent.len > 0)
    }

    /// Copies exactly `len` bytes from `src` into the spool.
    pub fn append(&mut self, src: &mut dyn Contents, len: u64) -> Result<Extent, AppendError> {
        let aligned = len >= CHUNK as u64;
        let offset = if aligned {
            self.end.next_multiple_of(CHUNK as u64)
        } else {
            self.end
        };
        if self.buf.is_empty() {
            self.buf = vec![0; BUF];
        }
        let mut holes = HoleMap::default();
        let mut has_holes = false;
        let mut done = 0u64;
        while done < len {
            // Whole chunks of a sparse hole are skipped without a byte read.
            // `done` is chunk-aligned here because BUF is a multiple of CHUNK.
            if aligned {
                let hole = src.hole_ahead().min(len - done);
                let skip = if done + hole == len {
                    hole
                } else {
                    hole - hole % CHUNK as u64
                };
                if skip > 0 {
                    src.skip_hole(skip);
                    let first = done / CHUNK as u64;
                    for chunk in first..(done + skip).div_ceil(CHUNK as u64) {
                        holes.set(chunk);
                    }
                    has_holes = true;
                    done += skip;
                    continue;
                }
            }
            let want = usize::try_from(len - done).map_or(BUF, |r| r.min(BUF));
            let got = read_full(src, &mut self.buf[..want]).map_err(AppendError::Read)?;
            if got < want {
                return Err(AppendError::Read(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("file data ends after {} of {len} bytes", done + got as u64),
                )));
            }
            let mut pos = 0;
            while pos < got {
                let end = (pos + CHUNK).min(got);
                let piece = &self.buf[pos..end];
                if piece.iter().any(|&b| b != 0) {
                    if self.written + piece.len() as u64 > self.max_written {
                        return Err(AppendError::Full);
                    }
                    self.file
                        .write_all_at(piece, offset + done + pos as u64)
                        .map_err(AppendError::Write)?;
                    self.written += piece.len() as u64;
                } else if aligned {
                    holes.set((done + pos as u64) / CHUNK as u64);
                    has_holes = true;
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
        if has_holes {
            self.holes.insert(offset, holes);
        }
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
pub(crate) fn read_full<R: Read + ?Sized>(src: &mut R, buf: &mut [u8]) -> io::Result<usize> {
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
        let mut s = Spool::new_in(dir.path(), u64::MAX).unwrap();
        let a = s.append(&mut &b"hello"[..], 5).unwrap();
        let tiny = s.append(&mut &b"!"[..], 1).unwrap();
        let mut data = vec![0u8; 3 * CHUNK + 10];
        data[CHUNK + 1] = 7;
        let b = s.append(&mut &data[..], data.len() as u64).unwrap();
        assert_eq!((a.offset, tiny.offset), (0, 5), "small files are packed");
        assert_eq!(b.offset % CHUNK as u64, 0);
        let holes = s.holes(b).expect("zero chunks are holes");
        assert!(holes.is_hole(0) && !holes.is_hole(1) && holes.is_hole(2) && holes.is_hole(3));
        assert_eq!(s.written(), 5 + 1 + CHUNK as u64);
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
        let mut s = Spool::new_in(dir.path(), u64::MAX).unwrap();
        assert!(matches!(
            s.append(&mut &b"abc"[..], 10),
            Err(AppendError::Read(_))
        ));
    }

    #[test]
    fn the_cap_counts_written_bytes_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new_in(dir.path(), 2 * CHUNK as u64).unwrap();
        let zeros = vec![0u8; 64 * CHUNK];
        s.append(&mut &zeros[..], zeros.len() as u64).unwrap();
        let ones = vec![1u8; 3 * CHUNK];
        assert!(matches!(
            s.append(&mut &ones[..], ones.len() as u64),
            Err(AppendError::Full)
        ));
    }
}
