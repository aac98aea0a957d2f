//! Opening, reading and writing files and listing directories for the
//! guest: the handle-based operations of [`SharedDir`].
//!
//! A file is opened for I/O from its node's own `O_PATH` descriptor
//! (through `/proc/self/fd/N`, N being that descriptor: never a name the
//! guest sent), with the guest's flags cut down to the access mode and the
//! few that change how I/O behaves. Reads and writes go straight between
//! the file and the guest's buffers (preadv/pwritev), capped by the room
//! the request has.

use super::shared_dir::{errno, SharedDir};
use fuse_backend_rs::api::filesystem::{DirEntry, Entry, ZeroCopyReader, ZeroCopyWriter};
use rustix::fs::{Mode, OFlags};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Open flags a guest may pass on: the access mode and these. Creation
/// flags mean nothing on an existing file, and O_DIRECT is the host's
/// business.
const PASSED_FLAGS: u32 = (libc::O_APPEND | libc::O_TRUNC | libc::O_SYNC | libc::O_DSYNC) as u32;

/// The most one READDIR gathers from the host at a time.
const DIRENT_BUFFER: usize = 64 * 1024;

impl SharedDir {
    /// Opens node `inode` (a regular file, or a directory when `dir`) for
    /// I/O with the guest's `flags`; the new handle.
    pub(super) fn open_node(&self, inode: u64, flags: u32, dir: bool) -> io::Result<u64> {
        let file = self.open_file(inode, flags, dir)?;
        self.handles()
            .insert(inode, file, flags, dir)
            .map_err(|_| errno(libc::EMFILE))
    }

    /// Node `inode` opened for I/O (see [`SharedDir::open_node`]).
    fn open_file(&self, inode: u64, flags: u32, dir: bool) -> io::Result<File> {
        let (fd, kind) = self.node(inode)?;
        let access = flags & libc::O_ACCMODE as u32;
        let mut oflags =
            OFlags::from_bits_retain(access | (flags & PASSED_FLAGS)) | OFlags::CLOEXEC;
        match (dir, kind) {
            (true, libc::S_IFDIR) => oflags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            (false, libc::S_IFREG) => {}
            (false, libc::S_IFDIR) => return Err(errno(libc::EISDIR)),
            (true, _) => return Err(errno(libc::ENOTDIR)),
            // Devices, FIFOs and sockets in a shared tree are the host's;
            // a symlink is never opened, only read.
            (false, _) => return Err(errno(libc::EINVAL)),
        }
        if self.read_only()
            && (access != libc::O_RDONLY as u32 || flags & libc::O_TRUNC as u32 != 0)
        {
            return Err(errno(libc::EROFS));
        }
        Ok(File::from(rustix::fs::openat(
            self.proc_fds(),
            fd.as_raw_fd().to_string(),
            oflags,
            Mode::empty(),
        )?))
    }

    /// The file of handle `fh` of node `inode`; EBADF if there is none. A
    /// handle restored from a snapshot is opened again on first use, with
    /// its flags but never truncating the file.
    pub(super) fn handle(&self, inode: u64, fh: u64) -> io::Result<std::sync::Arc<File>> {
        let (file, flags, dir) = {
            let handles = self.handles();
            let h = handles.get(fh, inode).ok_or_else(|| errno(libc::EBADF))?;
            (h.file.clone(), h.flags, h.dir)
        };
        if let Some(file) = file {
            return Ok(file);
        }
        let flags = flags & !(libc::O_TRUNC | libc::O_CREAT | libc::O_EXCL) as u32;
        let file = std::sync::Arc::new(self.open_file(inode, flags, dir)?);
        self.handles().reopened(fh, file.clone());
        Ok(file)
    }

    /// Closes handle `fh` of node `inode`.
    pub(super) fn release_handle(&self, inode: u64, fh: u64) -> io::Result<()> {
        if self.handles().remove(fh, inode) {
            Ok(())
        } else {
            Err(errno(libc::EBADF))
        }
    }

    /// READ: up to `size` bytes at `offset`, straight into the guest's
    /// buffers (no more than they hold).
    pub(super) fn read_into(
        &self,
        inode: u64,
        fh: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
    ) -> io::Result<usize> {
        let file = self.handle(inode, fh)?;
        let count = (size as usize).min(w.available_bytes());
        check_range(offset, count)?;
        w.write_from(&mut *borrowed(&file), count, offset)
    }

    /// WRITE: `size` bytes from the guest's buffers at `offset`.
    pub(super) fn write_from(
        &self,
        inode: u64,
        fh: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
    ) -> io::Result<usize> {
        if self.read_only() {
            return Err(errno(libc::EROFS));
        }
        let file = self.handle(inode, fh)?;
        check_range(offset, size as usize)?;
        r.read_to(&mut *borrowed(&file), size as usize, offset)
    }

    /// READDIR and READDIRPLUS: entries from the cookie `offset` on, each
    /// handed to `add` until it says the reply is full (0). With `plus`,
    /// each entry is looked up as LOOKUP would (so under the policy and
    /// the node bound); an entry that cannot be (`.`, `..`, a denied
    /// symlink, a full table) is listed without attributes.
    pub(super) fn list(
        &self,
        inode: u64,
        fh: u64,
        size: u32,
        offset: u64,
        plus: bool,
        add: &mut dyn FnMut(DirEntry, Option<Entry>) -> io::Result<usize>,
    ) -> io::Result<()> {
        let dir = self.handle(inode, fh)?;
        let offset = i64::try_from(offset).map_err(|_| errno(libc::EINVAL))?;
        rustix::fs::seek(&*dir, rustix::fs::SeekFrom::Start(offset as u64))?;
        let mut buf = vec![0u8; (size as usize).clamp(512, DIRENT_BUFFER)];
        loop {
            let n = getdents(&dir, &mut buf)?;
            if n == 0 {
                return Ok(());
            }
            let mut at = 0;
            while at + DIRENT_HEADER <= n {
                let d = &buf[at..n];
                let ino = u64::from_ne_bytes(d[0..8].try_into().unwrap_or_default());
                let off = i64::from_ne_bytes(d[8..16].try_into().unwrap_or_default());
                let reclen = usize::from(u16::from_ne_bytes([d[16], d[17]]));
                let type_ = u32::from(d[18]);
                if reclen < DIRENT_HEADER || reclen > d.len() {
                    return Err(errno(libc::EIO));
                }
                let name = &d[DIRENT_HEADER..reclen];
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                at += reclen;
                let entry = DirEntry {
                    ino,
                    offset: off as u64,
                    type_,
                    name,
                };
                let looked_up = if plus && name != b"." && name != b".." {
                    std::ffi::CString::new(name)
                        .ok()
                        .and_then(|c| self.lookup_entry(inode, &c).ok())
                } else {
                    None
                };
                let node = looked_up.as_ref().map(|e| e.inode);
                if add(entry, looked_up)? == 0 {
                    // The reply is full: the guest never sees this entry,
                    // so it will never forget it either.
                    if let Some(node) = node {
                        self.inodes().forget(node, 1);
                    }
                    return Ok(());
                }
            }
        }
    }

    /// FSYNC and FSYNCDIR.
    pub(super) fn sync(&self, inode: u64, fh: u64, datasync: bool) -> io::Result<()> {
        let file = self.handle(inode, fh)?;
        if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        }
    }

    /// LSEEK, for SEEK_DATA and SEEK_HOLE (the guest keeps its own file
    /// positions; other whences are its business).
    pub(super) fn seek(&self, inode: u64, fh: u64, offset: u64, whence: u32) -> io::Result<u64> {
        let file = self.handle(inode, fh)?;
        let offset = i64::try_from(offset).map_err(|_| errno(libc::EINVAL))?;
        let whence = match whence as i32 {
            libc::SEEK_DATA => rustix::fs::SeekFrom::Data(offset as u64),
            libc::SEEK_HOLE => rustix::fs::SeekFrom::Hole(offset as u64),
            _ => return Err(errno(libc::EINVAL)),
        };
        Ok(rustix::fs::seek(&*file, whence)?)
    }
}

/// `file` as a `File` value for fuse-backend-rs's I/O traits (which take
/// `&mut File`), without a dup: never closed, since the handle table's
/// `Arc` owns the descriptor and outlives the borrow.
fn borrowed(file: &std::sync::Arc<File>) -> std::mem::ManuallyDrop<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: the descriptor is open and stays open while `file` lives;
    // ManuallyDrop keeps this second File from ever closing it.
    std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(file.as_raw_fd()) })
}

/// Bytes of a `linux_dirent64` before its name: inode, offset, record
/// length, type.
const DIRENT_HEADER: usize = 19;

/// One getdents64 call into `buf`; the bytes filled.
fn getdents(dir: &File, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes, and the
    // descriptor is open for the call.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            dir.as_fd().as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Refuses a range past what a file offset can hold.
fn check_range(offset: u64, count: usize) -> io::Result<()> {
    match offset.checked_add(count as u64) {
        Some(end) if end <= i64::MAX as u64 => Ok(()),
        _ => Err(errno(libc::EINVAL)),
    }
}
