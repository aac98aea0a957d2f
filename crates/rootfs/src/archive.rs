//! Indexing a tar archive that sits on disk (a `docker save` file) without
//! reading its members: headers are parsed by the same bounded reader as
//! layers, member data is skipped by position, and the caller later reads
//! a member with positioned reads of its byte range.
//!
//! This exists so that the OCI side does not need a second tar parser: the
//! `tar` crate buffers a GNU long-name or PAX record whole, whatever size
//! its header claims (a 6 GiB record in a sparse 8 KB file is enough to
//! exhaust memory). Here such records are bounded by `max_header_bytes`,
//! and a member whose data would run past the end of the file is refused.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use crate::error::show;
use crate::ustar::{self, TarError};

/// Something that answers positioned reads: an archive file, or bytes in
/// memory (tests, fuzzing).
pub trait ReadAt {
    /// Reads into `buf` from `offset`; 0 at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Total length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// True if there are no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(<[u8]>::len(self) as u64)
    }
}

/// A sequential view of a [`ReadAt`] that skips by moving its position.
struct Positioned<'a, T: ?Sized> {
    src: &'a T,
    pos: u64,
    len: u64,
}

impl<T: ReadAt + ?Sized> Read for Positioned<'_, T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.src.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<T: ReadAt + ?Sized> ustar::Source for Positioned<'_, T> {
    fn skip(&mut self, n: u64) -> io::Result<()> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.len => {
                self.pos = end;
                Ok(())
            }
            _ => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

/// What a member of an archive is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberKind {
    /// A regular file whose contents are `size` bytes at `offset`.
    File {
        /// Byte offset of the contents in the archive.
        offset: u64,
        /// Length of the contents.
        size: u64,
    },
    /// A symbolic link to this target (raw bytes from the archive).
    Symlink(Vec<u8>),
    /// A hard link to this earlier member (raw bytes).
    HardLink(Vec<u8>),
    /// A GNU sparse file: its stored bytes are not its contents in order,
    /// so it cannot be read as a range.
    Sparse,
    /// A directory, device, fifo or PAX global header.
    Other,
}

/// One member of an indexed archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveMember {
    /// The member's path as stored (raw bytes; not normalized).
    pub path: Vec<u8>,
    /// What it is and where its contents are.
    pub kind: MemberKind,
}

/// Why an archive could not be indexed. The message is safe to print
/// (names from the archive are escaped).
#[derive(Debug, thiserror::Error)]
#[error("{message} (at byte {offset} of the archive)")]
pub struct ArchiveError {
    /// Offset of the header being read.
    pub offset: u64,
    /// What went wrong.
    pub message: String,
}

/// Walks the members of an archive, one header at a time.
pub struct ArchiveIndex<'a, T: ReadAt + ?Sized> {
    reader: ustar::Reader<Positioned<'a, T>>,
    len: u64,
    previous: Option<Vec<u8>>,
    done: bool,
}

impl<'a, T: ReadAt + ?Sized> ArchiveIndex<'a, T> {
    /// Starts at the beginning of `src`. `max_header_bytes` bounds the PAX
    /// and long-name records of one member, the only bytes held in memory.
    pub fn new(src: &'a T, max_header_bytes: u64) -> io::Result<Self> {
        let len = src.len()?;
        Ok(Self {
            reader: ustar::Reader::new(Positioned { src, pos: 0, len }, max_header_bytes),
            len,
            previous: None,
            done: false,
        })
    }

    fn error(&self, what: String) -> ArchiveError {
        let message = match &self.previous {
            Some(p) => format!("{what} in the member after '{}'", show(p)),
            None => format!("{what} in the first member"),
        };
        ArchiveError {
            offset: self.reader.header_offset(),
            message,
        }
    }

    /// The next member, or `None` after the last one.
    pub fn next_member(&mut self) -> Result<Option<ArchiveMember>, ArchiveError> {
        if self.done {
            return Ok(None);
        }
        let m = match self.reader.next_member() {
            Ok(Some(m)) => m,
            Ok(None) => {
                self.done = true;
                return Ok(None);
            }
            Err(e) => {
                self.done = true;
                let what = match e {
                    TarError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        "the archive is truncated".to_string()
                    }
                    TarError::Io(e) => format!("reading the archive failed: {e}"),
                    TarError::Corrupt(msg) => format!("corrupt tar header: {msg}"),
                    TarError::TooLarge => "PAX or long-name records larger than the limit".into(),
                    TarError::Unsupported(what) => format!("unsupported: {what}"),
                };
                return Err(self.error(what));
            }
        };
        let fits = m
            .data_offset
            .checked_add(m.stored)
            .is_some_and(|end| end <= self.len);
        if !fits {
            self.done = true;
            return Err(ArchiveError {
                offset: self.reader.header_offset(),
                message: format!(
                    "member '{}' claims {} bytes, past the end of the archive",
                    show(&m.path),
                    m.stored
                ),
            });
        }
        let kind = match m.typeflag {
            b'0' | b'7' if m.sparse => MemberKind::Sparse,
            b'0' | b'7' => MemberKind::File {
                offset: m.data_offset,
                size: m.size,
            },
            b'1' => MemberKind::HardLink(m.link),
            b'2' => MemberKind::Symlink(m.link),
            _ => MemberKind::Other,
        };
        self.previous = Some(m.path.clone());
        Ok(Some(ArchiveMember { path: m.path, kind }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &[u8], typeflag: u8, size: u64) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        h[100..108].copy_from_slice(b"0000644\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|&x| u64::from(x)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    #[test]
    fn indexes_offsets_and_refuses_overlong_records() {
        let mut a = header(b"a", b'0', 5).to_vec();
        a.extend_from_slice(b"hello");
        a.resize(1024, 0);
        a.extend_from_slice(&header(b"l", b'2', 0));
        a.resize(a.len() + 1024, 0);
        let mut idx = ArchiveIndex::new(&a[..], 4096).unwrap();
        let m = idx.next_member().unwrap().unwrap();
        assert_eq!(
            m.kind,
            MemberKind::File {
                offset: 512,
                size: 5
            }
        );
        assert!(matches!(
            idx.next_member().unwrap().unwrap().kind,
            MemberKind::Symlink(_)
        ));
        assert_eq!(idx.next_member().unwrap(), None);

        // A long name claiming a GiB, in a short archive: refused by the
        // budget before anything is read, and not blamed on a member.
        let mut b = header(b"././@LongLink", b'L', 1 << 30).to_vec();
        b.resize(8192, 0);
        let e = ArchiveIndex::new(&b[..], 4096)
            .unwrap()
            .next_member()
            .unwrap_err();
        assert!(
            e.message.contains("limit") && e.message.contains("first member"),
            "{e}"
        );
        // A file claiming more than the archive holds.
        let mut c = header(b"big", b'0', 1 << 32).to_vec();
        c.resize(4096, 0);
        let e = ArchiveIndex::new(&c[..], 4096)
            .unwrap()
            .next_member()
            .unwrap_err();
        assert!(e.message.contains("past the end"), "{e}");
    }
}
