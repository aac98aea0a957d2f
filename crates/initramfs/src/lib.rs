//! A writer for cpio "newc" archives, the format the Linux kernel unpacks as
//! an initramfs (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! We write it ourselves because it is small and because no well-kept crate
//! writes newc archives with device nodes (an initramfs needs `/dev/console`
//! before devtmpfs is mounted). Every entry is owned by root with mtime 0 and
//! inode numbers counting up from 1, so the same calls always produce the
//! same bytes: archives can be cached and compared by hash.
//!
//! ```
//! let mut w = supermachine_initramfs::Writer::new(Vec::new());
//! w.dir("bin", 0o755)?;
//! w.file("init", 0o755, b"#!/bin/sh\necho hi\n")?;
//! w.symlink("bin/sh", "busybox")?;
//! w.char_device("dev/console", 0o600, 5, 1)?;
//! let bytes = w.finish()?;
//! assert_eq!(bytes.len() % 512, 0);
//! # Ok::<(), std::io::Error>(())
//! ```

#![warn(missing_docs)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Streams a newc archive into `W`. Call [`Writer::finish`] at the end: an
/// archive without its trailer is rejected by the kernel.
pub struct Writer<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

/// The fields of one newc header that vary between our entries.
struct Entry<'a> {
    path: &'a str,
    mode: u32,
    nlink: u32,
    size: u64,
    rdev: (u32, u32),
}

impl<W: Write> Writer<W> {
    /// Starts an empty archive that writes into `out`. Entries go out in
    /// many small writes (header, name, padding), so give it a `BufWriter`
    /// around a file rather than the file itself.
    pub fn new(out: W) -> Self {
        Writer {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    /// A directory. Parents are not created implicitly: add them first, the
    /// kernel does not create missing parents either.
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        self.header(&Entry {
            path,
            mode: S_IFDIR | perm(mode),
            nlink: 2,
            size: 0,
            rdev: (0, 0),
        })
    }

    /// A regular file with the given contents.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.regular(path, mode, data.len() as u64, &mut &data[..])
    }

    /// A regular file copied from `host_path` in chunks, so large binaries
    /// are never held in memory whole.
    pub fn file_from_path(
        &mut self,
        path: &str,
        mode: u32,
        host_path: impl AsRef<Path>,
    ) -> io::Result<()> {
        let host_path = host_path.as_ref();
        let with_path =
            |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", host_path.display()));
        let mut f = File::open(host_path).map_err(with_path)?;
        let size = f.metadata().map_err(with_path)?.len();
        self.regular(path, mode, size, &mut f).map_err(with_path)
    }

    /// A symbolic link; newc stores the target as the entry's data.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        if target.is_empty() || target.contains('\0') {
            return Err(invalid(format!("bad symlink target {target:?}")));
        }
        self.header(&Entry {
            path,
            mode: S_IFLNK | 0o777,
            nlink: 1,
            size: target.len() as u64,
            rdev: (0, 0),
        })?;
        self.put(target.as_bytes())?;
        self.pad4()
    }

    /// A character device node, e.g. `dev/console` (5, 1).
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        self.header(&Entry {
            path,
            mode: S_IFCHR | perm(mode),
            nlink: 1,
            size: 0,
            rdev: (major, minor),
        })
    }

    /// Writes the `TRAILER!!!` entry, pads the archive to a multiple of 512
    /// bytes (what `cpio -o` does; it lets archives be concatenated) and
    /// returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        // The trailer is the one entry with inode 0, as GNU cpio writes it.
        self.next_ino = 0;
        self.header(&Entry {
            path: "TRAILER!!!",
            mode: 0,
            nlink: 1,
            size: 0,
            rdev: (0, 0),
        })?;
        let rem = (self.written % 512) as usize;
        if rem != 0 {
            self.put(&[0; 512][..512 - rem])?;
        }
        self.out.flush()?;
        Ok(self.out)
    }

    fn regular(&mut self, path: &str, mode: u32, size: u64, data: &mut dyn Read) -> io::Result<()> {
        if size > u32::MAX as u64 {
            return Err(invalid(format!(
                "{path}: {size} bytes is too large for newc (4 GiB max)"
            )));
        }
        self.header(&Entry {
            path,
            mode: S_IFREG | perm(mode),
            nlink: 1,
            size,
            rdev: (0, 0),
        })?;
        // `take` guards against a file that grew after we read its length;
        // a file that shrank would leave the header lying, so refuse it.
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        self.written += copied;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{path}: expected {size} bytes, read {copied} (file changed while archiving?)"
                ),
            ));
        }
        self.pad4()
    }

    fn header(&mut self, e: &Entry<'_>) -> io::Result<()> {
        check_path(e.path)?;
        let ino = self.next_ino;
        if ino != 0 {
            self.next_ino += 1;
        }
        // 13 fields of 8 hex digits after the magic; see buffer-format.rst.
        let fields = [
            ino,
            e.mode,
            0, // uid
            0, // gid
            e.nlink,
            0, // mtime: fixed for reproducible archives
            e.size as u32,
            0, // devmajor (of the file system holding the file)
            0, // devminor
            e.rdev.0,
            e.rdev.1,
            e.path.len() as u32 + 1, // namesize counts the NUL
            0,                       // check (only used by the "070702" format)
        ];
        let mut head = String::with_capacity(110);
        head.push_str("070701");
        for f in fields {
            head.push_str(&format!("{f:08X}"));
        }
        self.put(head.as_bytes())?;
        self.put(e.path.as_bytes())?;
        self.put(&[0])?;
        self.pad4()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Header+name and data are each padded to a multiple of four bytes.
    fn pad4(&mut self) -> io::Result<()> {
        let rem = (self.written % 4) as usize;
        if rem != 0 {
            self.put(&[0; 4][..4 - rem])?;
        }
        Ok(())
    }
}

/// Keeps only permission bits: the entry type comes from the method called.
fn perm(mode: u32) -> u32 {
    mode & !S_IFMT & 0o7777
}

fn check_path(path: &str) -> io::Result<()> {
    // The kernel resolves names relative to the initramfs root; a leading
    // `/` or `..` would make the archive mean different things to different
    // extractors, so refuse them instead of guessing.
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\0')
        || path.split('/').any(|c| c.is_empty() || c == "..");
    if bad {
        return Err(invalid(format!(
            "bad archive path {path:?}: want a relative path like \"bin/sh\" (no leading '/', no '..')"
        )));
    }
    Ok(())
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

#[cfg(test)]
mod tests;
