//! What the guest changes in the shared directory: files, directories and
//! links created, removed and renamed, attributes, space, and `user.*`
//! extended attributes.
//!
//! Names are one validated component in a directory node's descriptor,
//! never followed when the last component is a symlink (a symlink planted
//! where the guest creates a file makes the create fail, it is not written
//! through). What a guest sets is cut down to what it may set on the host:
//! permission bits without setuid and setgid (a guest must not leave a
//! setuid file behind for a host user to run), no device nodes, no owner
//! but the worker's user, no extended attribute outside `user.*` (a guest
//! must not plant `security.capability` on a host binary). On a read-only
//! mount every change is EROFS.

use super::shared_dir::{errno, stat, SharedDir};
use fuse_backend_rs::abi::fuse_abi::{CreateIn, SetattrValid};
use fuse_backend_rs::api::filesystem::{Entry, GetxattrReply, ListxattrReply};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags};
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use supermachine_protocol::fs_spec::SymlinkPolicy;

/// Permission bits a guest may give a file (no setuid, setgid).
const FILE_BITS: u32 = 0o777;
/// ... and a directory (the sticky bit is fine: it restricts).
const DIR_BITS: u32 = 0o1777;
/// Largest extended attribute value or name list handed over.
const XATTR_MAX: usize = 64 * 1024;

/// A name for a new entry: one component, and neither `.` nor `..`.
fn new_name(name: &CStr) -> io::Result<&CStr> {
    let name = super::shared_dir::component(name)?;
    if matches!(name.to_bytes(), b"." | b"..") {
        return Err(errno(libc::EINVAL));
    }
    Ok(name)
}

impl SharedDir {
    fn writable(&self) -> io::Result<()> {
        if self.read_only() {
            Err(errno(libc::EROFS))
        } else {
            Ok(())
        }
    }

    /// The descriptor of directory node `id`, for a change in it.
    fn dir_for_change(&self, id: u64) -> io::Result<Arc<OwnedFd>> {
        self.writable()?;
        let (fd, kind) = self.node(id)?;
        if kind != libc::S_IFDIR {
            return Err(errno(libc::ENOTDIR));
        }
        Ok(fd)
    }

    /// `/proc/self/fd/N` for our own descriptor `fd`: how a node is named
    /// to the calls that take no descriptor (never a guest's name).
    fn proc_name(fd: &OwnedFd) -> String {
        fd.as_raw_fd().to_string()
    }

    /// The node of a regular file or directory (xattrs, modes, times go
    /// through its `/proc/self/fd` name, which must not be a symlink's).
    fn plain_node(&self, id: u64) -> io::Result<(Arc<OwnedFd>, u32)> {
        let (fd, kind) = self.node(id)?;
        match kind {
            libc::S_IFREG | libc::S_IFDIR => Ok((fd, kind)),
            _ => Err(errno(libc::EPERM)),
        }
    }

    /// CREATE: a regular file `name` in `parent`, opened; its entry and
    /// handle.
    pub(super) fn create_file(
        &self,
        parent: u64,
        name: &CStr,
        args: &CreateIn,
    ) -> io::Result<(Entry, u64)> {
        let dir = self.dir_for_change(parent)?;
        let name = new_name(name)?;
        let access = args.flags & libc::O_ACCMODE as u32;
        let keep = args.flags & (libc::O_TRUNC | libc::O_APPEND) as u32;
        let oflags = OFlags::from_bits_retain(access | keep) | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(args.mode & !args.umask & FILE_BITS);
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS;
        let open = |oflags| rustix::fs::openat2(&*dir, name, oflags, mode, resolve);
        // Made here, or (unless the guest said O_EXCL) the file already
        // there: only a file made here gets the guest's mode.
        let (file, made) = match open(oflags | OFlags::CREATE | OFlags::EXCL) {
            Ok(fd) => (File::from(fd), true),
            Err(rustix::io::Errno::EXIST) if args.flags & libc::O_EXCL as u32 == 0 => {
                (File::from(open(oflags)?), false)
            }
            Err(e) => return Err(e.into()),
        };
        let mut attr = stat(&file)?;
        if attr.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(errno(libc::EEXIST));
        }
        if made && attr.st_mode & 0o7777 != mode.as_raw_mode() {
            // The worker's own umask narrowed the guest's mode.
            rustix::fs::fchmod(&file, mode)?;
            attr = stat(&file)?;
        }
        // The node keeps an O_PATH descriptor of the very file opened.
        let path = rustix::fs::openat(
            self.proc_fds(),
            file.as_raw_fd().to_string(),
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let node = self
            .inodes()
            .looked_up(
                parent,
                name.to_bytes(),
                path,
                libc::S_IFREG,
                (attr.st_dev, attr.st_ino),
            )
            .map_err(|_| errno(libc::ENFILE))?;
        match self.handles().insert(node, file, args.flags, false) {
            Ok(fh) => Ok((self.entry(node, attr), fh)),
            Err(_) => {
                self.inodes().forget(node, 1);
                Err(errno(libc::EMFILE))
            }
        }
    }

    /// MKDIR.
    pub(super) fn make_dir(
        &self,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let dir = self.dir_for_change(parent)?;
        let name = new_name(name)?;
        let mode = Mode::from_raw_mode(mode & !umask & DIR_BITS);
        rustix::fs::mkdirat(&*dir, name, mode)?;
        self.exact_mode(self.lookup_entry(parent, name)?, mode)
    }

    /// Gives a node just made the guest's mode exactly (the worker's own
    /// umask narrowed it), through the node's descriptor: the name may
    /// already be something else.
    fn exact_mode(&self, mut entry: Entry, mode: Mode) -> io::Result<Entry> {
        if entry.attr.st_mode & 0o7777 != mode.as_raw_mode() {
            let (fd, _) = self.plain_node(entry.inode)?;
            rustix::fs::chmodat(
                self.proc_fds(),
                Self::proc_name(&fd),
                mode,
                AtFlags::empty(),
            )?;
            entry.attr = stat(&*fd)?;
        }
        Ok(entry)
    }

    /// MKNOD: regular files, FIFOs and sockets; never a device node.
    pub(super) fn make_node(
        &self,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let dir = self.dir_for_change(parent)?;
        let name = new_name(name)?;
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG => rustix::fs::FileType::RegularFile,
            libc::S_IFIFO => rustix::fs::FileType::Fifo,
            libc::S_IFSOCK => rustix::fs::FileType::Socket,
            _ => return Err(errno(libc::EPERM)),
        };
        let mode = Mode::from_raw_mode(mode & !umask & FILE_BITS);
        rustix::fs::mknodat(&*dir, name, kind, mode, 0)?;
        let entry = self.lookup_entry(parent, name)?;
        if kind == rustix::fs::FileType::RegularFile {
            return self.exact_mode(entry, mode);
        }
        // A FIFO or socket is never opened or chmod-ed through its /proc
        // name (that would open it); its mode stays as the umask left it.
        Ok(entry)
    }

    /// SYMLINK: the target stored as the guest gave it (resolved only by
    /// the guest); refused under `deny`.
    pub(super) fn make_symlink(
        &self,
        target: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        if self.symlinks() == SymlinkPolicy::Deny {
            return Err(errno(libc::EPERM));
        }
        let dir = self.dir_for_change(parent)?;
        let name = new_name(name)?;
        rustix::fs::symlinkat(target, &*dir, name)?;
        self.lookup_entry(parent, name)
    }

    /// LINK: a new name for node `id` (which the guest holds, so inside
    /// the share); refused under `deny`.
    pub(super) fn make_link(&self, id: u64, parent: u64, name: &CStr) -> io::Result<Entry> {
        if self.symlinks() == SymlinkPolicy::Deny {
            return Err(errno(libc::EPERM));
        }
        let dir = self.dir_for_change(parent)?;
        let name = new_name(name)?;
        let (fd, kind) = self.node(id)?;
        if kind == libc::S_IFDIR {
            return Err(errno(libc::EPERM));
        }
        // The node's own descriptor, through its /proc name (linking an
        // O_PATH descriptor directly needs CAP_DAC_READ_SEARCH).
        rustix::fs::linkat(
            self.proc_fds(),
            Self::proc_name(&fd),
            &*dir,
            name,
            AtFlags::SYMLINK_FOLLOW,
        )?;
        self.lookup_entry(parent, name)
    }

    /// UNLINK and RMDIR.
    pub(super) fn remove(&self, parent: u64, name: &CStr, dir: bool) -> io::Result<()> {
        let parent_fd = self.dir_for_change(parent)?;
        let name = new_name(name)?;
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        Ok(rustix::fs::unlinkat(&*parent_fd, name, flags)?)
    }

    /// RENAME and RENAME2 (NOREPLACE and EXCHANGE; WHITEOUT is an overlay
    /// file system's business).
    pub(super) fn rename_entry(
        &self,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        let flags = RenameFlags::from_bits(flags).ok_or_else(|| errno(libc::EINVAL))?;
        if flags.contains(RenameFlags::WHITEOUT) {
            return Err(errno(libc::EINVAL));
        }
        let from = self.dir_for_change(olddir)?;
        let to = self.dir_for_change(newdir)?;
        let (oldname, newname) = (new_name(oldname)?, new_name(newname)?);
        Ok(rustix::fs::renameat_with(
            &*from, oldname, &*to, newname, flags,
        )?)
    }

    /// SETATTR: mode (without setuid/setgid on files), size, times; an
    /// owner other than the current one is EPERM (files stay the worker
    /// user's).
    pub(super) fn set_attributes(
        &self,
        id: u64,
        attr: &libc::stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<libc::stat64> {
        self.writable()?;
        let (fd, kind) = self.node(id)?;
        let now = stat(&*fd)?;
        if (valid.contains(SetattrValid::UID) && attr.st_uid != now.st_uid)
            || (valid.contains(SetattrValid::GID) && attr.st_gid != now.st_gid)
        {
            return Err(errno(libc::EPERM));
        }
        let times = SetattrValid::ATIME | SetattrValid::MTIME;
        if valid.intersects(SetattrValid::MODE | SetattrValid::SIZE | times) {
            self.plain_node(id)?;
        }
        let name = Self::proc_name(&fd);
        if valid.contains(SetattrValid::MODE) {
            let bits = if kind == libc::S_IFDIR {
                DIR_BITS
            } else {
                FILE_BITS
            };
            rustix::fs::chmodat(
                self.proc_fds(),
                &name,
                Mode::from_raw_mode(attr.st_mode & bits),
                AtFlags::empty(),
            )?;
        }
        if valid.contains(SetattrValid::SIZE) {
            if kind != libc::S_IFREG {
                return Err(errno(libc::EINVAL));
            }
            let size = u64::try_from(attr.st_size).map_err(|_| errno(libc::EINVAL))?;
            match handle.and_then(|fh| self.handle(id, fh).ok()) {
                Some(file) => rustix::fs::ftruncate(&*file, size)?,
                None => {
                    let file = rustix::fs::openat(
                        self.proc_fds(),
                        &name,
                        OFlags::WRONLY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    rustix::fs::ftruncate(&file, size)?;
                }
            }
        }
        if valid.intersects(times) {
            let time =
                |set: SetattrValid, now: SetattrValid, sec: i64, nsec: i64| rustix::fs::Timespec {
                    tv_sec: if valid.contains(set) && !valid.contains(now) {
                        sec
                    } else {
                        0
                    },
                    tv_nsec: if !valid.contains(set) {
                        rustix::fs::UTIME_OMIT
                    } else if valid.contains(now) {
                        rustix::fs::UTIME_NOW
                    } else {
                        nsec as _
                    },
                };
            let stamps = rustix::fs::Timestamps {
                last_access: time(
                    SetattrValid::ATIME,
                    SetattrValid::ATIME_NOW,
                    attr.st_atime,
                    attr.st_atime_nsec,
                ),
                last_modification: time(
                    SetattrValid::MTIME,
                    SetattrValid::MTIME_NOW,
                    attr.st_mtime,
                    attr.st_mtime_nsec,
                ),
            };
            rustix::fs::utimensat(self.proc_fds(), &name, &stamps, AtFlags::empty())?;
        }
        stat(&*fd)
    }

    /// FALLOCATE: allocate, punch holes, zero ranges.
    pub(super) fn allocate(
        &self,
        id: u64,
        fh: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable()?;
        let file = self.handle(id, fh)?;
        let flags =
            rustix::fs::FallocateFlags::from_bits(mode).ok_or_else(|| errno(libc::EOPNOTSUPP))?;
        let allowed = rustix::fs::FallocateFlags::KEEP_SIZE
            | rustix::fs::FallocateFlags::PUNCH_HOLE
            | rustix::fs::FallocateFlags::ZERO_RANGE;
        if !allowed.contains(flags) {
            return Err(errno(libc::EOPNOTSUPP));
        }
        Ok(rustix::fs::fallocate(&*file, flags, offset, length)?)
    }

    /// The `/proc/self/fd` path of node `id` for an xattr call, if `name`
    /// is a `user.*` attribute.
    fn xattr_target(&self, id: u64, name: &CStr) -> io::Result<String> {
        if !name.to_bytes().starts_with(b"user.") {
            return Err(errno(libc::EPERM));
        }
        let (fd, _) = self.plain_node(id)?;
        Ok(format!("/proc/self/fd/{}", fd.as_raw_fd()))
    }

    /// SETXATTR (`user.*` only).
    pub(super) fn set_xattr(
        &self,
        id: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        let path = self.xattr_target(id, name)?;
        let flags = rustix::fs::XattrFlags::from_bits(flags).ok_or_else(|| errno(libc::EINVAL))?;
        Ok(rustix::fs::setxattr(path, name, value, flags)?)
    }

    /// GETXATTR (`user.*` only; others read as absent).
    pub(super) fn get_xattr(&self, id: u64, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
        let path = self
            .xattr_target(id, name)
            .map_err(|_| errno(libc::ENODATA))?;
        if size == 0 {
            return Ok(GetxattrReply::Count(
                rustix::fs::getxattr_query(path, name)? as u32,
            ));
        }
        let mut value = Vec::with_capacity((size as usize).min(XATTR_MAX));
        rustix::fs::getxattr(path, name, spare(&mut value))?;
        Ok(GetxattrReply::Value(value))
    }

    /// LISTXATTR: only the `user.*` names.
    pub(super) fn list_xattrs(&self, id: u64, size: u32) -> io::Result<ListxattrReply> {
        let (fd, _) = self.plain_node(id)?;
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let mut all = Vec::with_capacity(XATTR_MAX);
        rustix::fs::listxattr(path, spare(&mut all))?;
        let user: Vec<u8> = all
            .split(|&b| b == 0)
            .filter(|n| n.starts_with(b"user."))
            .flat_map(|n| n.iter().copied().chain([0]))
            .collect();
        if size == 0 {
            return Ok(ListxattrReply::Count(user.len() as u32));
        }
        if user.len() > size as usize {
            return Err(errno(libc::ERANGE));
        }
        Ok(ListxattrReply::Names(user))
    }

    /// REMOVEXATTR (`user.*` only).
    pub(super) fn remove_xattr(&self, id: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        let path = self.xattr_target(id, name)?;
        Ok(rustix::fs::removexattr(path, name)?)
    }
}

/// The spare capacity of `buf`, which rustix fills and commits.
fn spare(buf: &mut Vec<u8>) -> rustix::buffer::SpareCapacity<'_, u8> {
    rustix::buffer::spare_capacity(buf)
}
