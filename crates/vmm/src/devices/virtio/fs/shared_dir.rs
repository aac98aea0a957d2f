//! [`SharedDir`]: the file system the guest sees, one host directory
//! served through a descriptor of it, under a symlink policy.
//!
//! Every name the guest sends is resolved alone, one component relative
//! to the descriptor of the directory it names (`openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`, and without following a
//! symlink unless the policy is `follow`); no path string is ever built or
//! resolved again later, since each node keeps its own descriptor
//! ([`inodes`](super::inodes)). `.` and `..` are answered from the table,
//! never by the host: `..` of the root is the root.
//!
//! So far: INIT, DESTROY, LOOKUP, FORGET, BATCH_FORGET, GETATTR, READLINK,
//! STATFS, and (in [`io`](super::io)) OPEN, READ, WRITE, FLUSH, FSYNC,
//! RELEASE, OPENDIR, READDIR, READDIRPLUS, FSYNCDIR, RELEASEDIR, LSEEK,
//! and (in [`mutate`](super::mutate)) CREATE, MKDIR, MKNOD, SYMLINK, LINK,
//! UNLINK, RMDIR, RENAME(2), SETATTR, FALLOCATE and the xattr calls. The
//! rest is fuse-backend-rs's default, ENOSYS: ACCESS (a virtiofs mount
//! checks permissions in the guest), locks (they stay in the guest),
//! IOCTL, BMAP, POLL, DAX mappings.

use super::handles::{Handles, DEFAULT_MAX_HANDLES};
use super::inodes::{Inodes, DEFAULT_MAX_INODES, ROOT};
use fuse_backend_rs::abi::fuse_abi::FsOptions;
use fuse_backend_rs::abi::fuse_abi::{CreateIn, OpenOptions, SetattrValid};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, GetxattrReply, ListxattrReply, ZeroCopyReader,
    ZeroCopyWriter,
};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use supermachine_protocol::fs_spec::SymlinkPolicy;

/// One shared host directory.
pub struct SharedDir {
    /// The directory, opened once (`O_PATH`): every later lookup starts
    /// from this descriptor, never from its path.
    root: Arc<OwnedFd>,
    symlinks: SymlinkPolicy,
    read_only: bool,
    /// Whether the guest has sent INIT (and not DESTROY since).
    initialized: AtomicBool,
    inodes: Mutex<Inodes>,
    handles: Mutex<Handles>,
    /// `/proc/self/fd`, through which a node's `O_PATH` descriptor is
    /// reopened for I/O (never used with a guest's name).
    proc_fds: OwnedFd,
    /// The root's identity, to start a fresh table on DESTROY.
    root_key: (u64, u64),
    max_inodes: usize,
    /// How long the guest may trust an entry or attributes without asking
    /// again: zero, so a host edit is seen on the guest's next access.
    ttl: Duration,
}

/// What we take of the options the guest's kernel offers: reads may be in
/// flight together, O_TRUNC comes with OPEN, writes up to 1 MiB, READDIRPLUS
/// (attributes with the listing), parallel lookups in one directory, and
/// the page cache dropped when a file's size or mtime changed on the host.
/// Not taken: writeback caching (a guest write must reach the host at
/// once), POSIX and flock locks (they stay in the guest), export support.
pub(super) const WANTED: FsOptions = FsOptions::ASYNC_READ
    .union(FsOptions::ATOMIC_O_TRUNC)
    .union(FsOptions::BIG_WRITES)
    .union(FsOptions::MAX_PAGES)
    .union(FsOptions::DO_READDIRPLUS)
    .union(FsOptions::READDIRPLUS_AUTO)
    .union(FsOptions::PARALLEL_DIROPS)
    .union(FsOptions::AUTO_INVAL_DATA);

impl SharedDir {
    /// Opens `path` (a directory; a symlink there is not followed) to
    /// share it under `symlinks`.
    pub fn open(path: &Path, symlinks: SymlinkPolicy, read_only: bool) -> io::Result<SharedDir> {
        Self::open_with_limit(path, symlinks, read_only, DEFAULT_MAX_INODES)
    }

    /// [`SharedDir::open`] with a bound on the node ids the guest may hold
    /// at once (the root included).
    pub fn open_with_limit(
        path: &Path,
        symlinks: SymlinkPolicy,
        read_only: bool,
        max_inodes: usize,
    ) -> io::Result<SharedDir> {
        let root = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = stat(&root)?;
        let root = Arc::new(root);
        let root_key = (st.st_dev, st.st_ino);
        let proc_fds = rustix::fs::open(
            "/proc/self/fd",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(SharedDir {
            inodes: Mutex::new(Inodes::new(root.clone(), root_key, max_inodes)),
            handles: Mutex::new(Handles::new(DEFAULT_MAX_HANDLES)),
            proc_fds,
            root_key,
            max_inodes,
            root,
            symlinks,
            read_only,
            initialized: AtomicBool::new(false),
            ttl: Duration::ZERO,
        })
    }

    /// The symlink policy it serves under.
    pub fn symlinks(&self) -> SymlinkPolicy {
        self.symlinks
    }

    /// Whether the guest may only read.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether the guest's driver has initialized the session.
    pub fn initialized(&self) -> bool {
        self.initialized.load(Ordering::SeqCst)
    }

    /// The node and handle tables, for a snapshot.
    #[allow(clippy::type_complexity, reason = "two (next id, entries) pairs")]
    pub(super) fn save_tables(
        &self,
    ) -> (
        (u64, Vec<super::inodes::SavedNode>),
        (u64, Vec<super::handles::SavedHandle>),
    ) {
        (self.inodes().save(), self.handles().save())
    }

    /// Puts back the tables a snapshot saved (every entry unopened until
    /// used), or says why they cannot have been saved.
    pub(super) fn restore_tables(&self, state: &super::FsState) -> Result<(), String> {
        let inodes = Inodes::restore(
            self.root.clone(),
            self.root_key,
            self.max_inodes,
            state.next_node,
            &state.nodes,
        )?;
        let handles = Handles::restore(
            DEFAULT_MAX_HANDLES,
            state.next_handle,
            &state.handles,
            |node| inodes.get(node).is_some(),
        )?;
        *self.inodes() = inodes;
        *self.handles() = handles;
        Ok(())
    }

    /// Puts back the session state a snapshot saved.
    pub(super) fn set_initialized(&self, initialized: bool) {
        self.initialized.store(initialized, Ordering::SeqCst);
    }

    /// The root directory's descriptor.
    pub fn root(&self) -> &OwnedFd {
        &self.root
    }

    /// Node ids the guest holds now, the root included.
    pub fn nodes(&self) -> usize {
        self.inodes().len()
    }

    pub(super) fn handles(&self) -> MutexGuard<'_, Handles> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn proc_fds(&self) -> &OwnedFd {
        &self.proc_fds
    }

    pub(super) fn inodes(&self) -> MutexGuard<'_, Inodes> {
        // A panic while the table was held leaves it consistent: every
        // change to it is a single insert or remove.
        self.inodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The descriptor and type of node `id`; ESTALE for an id the guest
    /// does not hold (never issued, or forgotten), and for a node restored
    /// from a snapshot whose file is gone or is now another kind of file.
    pub(super) fn node(&self, id: u64) -> io::Result<(Arc<OwnedFd>, u32)> {
        let mut inodes = self.inodes();
        let inode = inodes.get(id).ok_or_else(|| errno(libc::ESTALE))?;
        if let Some(fd) = &inode.fd {
            return Ok((fd.clone(), inode.kind));
        }
        // Restored and not yet used: open it again from its parent and
        // name, ancestors first, with the policy's rules (as a lookup).
        let mut chain = vec![id];
        loop {
            let parent = inodes.get(chain[chain.len() - 1]).map(|i| i.parent);
            match parent.and_then(|p| inodes.get(p).map(|i| (p, i.fd.is_some()))) {
                Some((_, true)) => break,
                // Validated at restore: chains end at the (open) root.
                Some((p, false)) if chain.len() <= inodes.len() => chain.push(p),
                _ => return Err(errno(libc::ESTALE)),
            }
        }
        for &n in chain.iter().rev() {
            let Some(inode) = inodes.get(n) else {
                return Err(errno(libc::ESTALE));
            };
            let (kind, name) = (inode.kind, inode.name.to_vec());
            let dir = inodes
                .get(inode.parent)
                .and_then(|p| p.fd.clone())
                .ok_or_else(|| errno(libc::ESTALE))?;
            let name = std::ffi::CString::new(name).map_err(|_| errno(libc::ESTALE))?;
            let stale = |_| errno(libc::ESTALE);
            let fd = self.open_child(&dir, &name).map_err(stale)?;
            let attr = stat(&fd).map_err(stale)?;
            let found = attr.st_mode & libc::S_IFMT;
            if found != kind || (found == libc::S_IFLNK && self.symlinks == SymlinkPolicy::Deny) {
                return Err(errno(libc::ESTALE));
            }
            inodes.reopened(n, Arc::new(fd), (attr.st_dev, attr.st_ino));
        }
        let inode = inodes.get(id).ok_or_else(|| errno(libc::ESTALE))?;
        let fd = inode.fd.clone().ok_or_else(|| errno(libc::ESTALE))?;
        Ok((fd, inode.kind))
    }

    /// Opens `name` in the directory `dir` as the policy says, without
    /// following anything out of the shared tree (except in `follow`).
    fn open_child(&self, dir: &OwnedFd, name: &CStr) -> io::Result<OwnedFd> {
        let beneath = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        let path_only = OFlags::PATH | OFlags::CLOEXEC;
        let open = |oflags, resolve| {
            rustix::fs::openat2(dir, name, oflags, Mode::empty(), resolve).map_err(io::Error::from)
        };
        match self.symlinks {
            SymlinkPolicy::Deny => open(
                path_only | OFlags::NOFOLLOW,
                beneath | ResolveFlags::NO_SYMLINKS,
            ),
            SymlinkPolicy::Opaque => open(path_only | OFlags::NOFOLLOW, beneath),
            // Trusted: a host symlink is followed wherever it leads; one
            // that leads nowhere is shown as the symlink it is.
            SymlinkPolicy::Follow => match open(path_only, ResolveFlags::NO_MAGICLINKS) {
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ELOOP)) => {
                    open(path_only | OFlags::NOFOLLOW, ResolveFlags::NO_MAGICLINKS)
                }
                other => other,
            },
        }
    }

    pub(super) fn entry(&self, id: u64, attr: libc::stat64) -> Entry {
        Entry {
            inode: id,
            generation: 0,
            attr,
            attr_flags: 0,
            attr_timeout: self.ttl,
            entry_timeout: self.ttl,
        }
    }

    /// LOOKUP: `name` in the directory node `parent`, under the policy;
    /// the entry carries one more reference for the guest.
    pub(super) fn lookup_entry(&self, parent: u64, name: &CStr) -> io::Result<Entry> {
        let (dir, kind) = self.node(parent)?;
        if kind != libc::S_IFDIR {
            return Err(errno(libc::ENOTDIR));
        }
        match name.to_bytes() {
            b"." => return self.existing_entry(parent),
            b".." => {
                let up = if parent == ROOT {
                    ROOT
                } else {
                    let inodes = self.inodes();
                    inodes.get(parent).map(|i| i.parent).unwrap_or(ROOT)
                };
                return self.existing_entry(up);
            }
            _ => {}
        }
        let name = component(name)?;
        let fd = self.open_child(&dir, name)?;
        let attr = stat(&fd)?;
        let kind = attr.st_mode & libc::S_IFMT;
        if kind == libc::S_IFLNK && self.symlinks == SymlinkPolicy::Deny {
            return Err(errno(libc::EACCES));
        }
        let id = self
            .inodes()
            .looked_up(
                parent,
                name.to_bytes(),
                fd,
                kind,
                (attr.st_dev, attr.st_ino),
            )
            .map_err(|_| errno(libc::ENFILE))?;
        Ok(self.entry(id, attr))
    }

    /// The entry of a node the guest holds, with one more reference.
    fn existing_entry(&self, id: u64) -> io::Result<Entry> {
        let (fd, _) = self.node(id)?;
        let attr = stat(&fd)?;
        self.inodes().add_lookup(id);
        Ok(self.entry(id, attr))
    }
}

/// The longest name a Linux file system holds.
const NAME_MAX: usize = 255;

/// A name the guest sent, if it can be one directory entry: not empty,
/// no `/`, at most 255 bytes (a CStr holds no NUL).
pub(super) fn component(name: &CStr) -> io::Result<&CStr> {
    let bytes = name.to_bytes();
    if bytes.is_empty() || bytes.contains(&b'/') {
        return Err(errno(libc::EINVAL));
    }
    if bytes.len() > NAME_MAX {
        return Err(errno(libc::ENAMETOOLONG));
    }
    Ok(name)
}

pub(super) fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn zeroed_stat() -> libc::stat64 {
    // SAFETY: stat64 is plain data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// The attributes of the file `fd` refers to (a symlink itself, for an
/// `O_PATH | O_NOFOLLOW` descriptor of one).
pub(super) fn stat(fd: &impl AsFd) -> io::Result<libc::stat64> {
    // SAFETY: stat64 is plain data; all-zero is a valid value.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the call, the path is an empty C string
    // (AT_EMPTY_PATH: the fd itself), and `st` is a live stat64.
    let r = unsafe {
        libc::fstatat64(
            fd.as_fd().as_raw_fd(),
            c"".as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

impl FileSystem for SharedDir {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.initialized.store(true, Ordering::SeqCst);
        Ok(capable & WANTED)
    }

    fn destroy(&self) {
        self.initialized.store(false, Ordering::SeqCst);
        // The guest unmounted: it holds nothing any more.
        self.handles().clear();
        *self.inodes() = Inodes::new(self.root.clone(), self.root_key, self.max_inodes);
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.lookup_entry(parent, name)
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        self.inodes().forget(inode, count);
    }

    fn batch_forget(&self, _ctx: &Context, requests: Vec<(u64, u64)>) {
        let mut inodes = self.inodes();
        for (inode, count) in requests {
            inodes.forget(inode, count);
        }
    }

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: Option<u64>,
    ) -> io::Result<(libc::stat64, Duration)> {
        let (fd, _) = self.node(inode)?;
        Ok((stat(&fd)?, self.ttl))
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        let (fd, kind) = self.node(inode)?;
        if kind != libc::S_IFLNK {
            return Err(errno(libc::EINVAL));
        }
        // The link itself (an empty path on its O_PATH descriptor): its
        // bytes as stored, for the guest to resolve.
        Ok(rustix::fs::readlinkat(&*fd, c"", Vec::new())?.into_bytes())
    }

    fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let fh = self.open_node(inode, flags, false)?;
        Ok((Some(fh), OpenOptions::empty(), None))
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "the FileSystem trait's signature"
    )]
    fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        self.read_into(inode, handle, w, size, offset)
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "the FileSystem trait's signature"
    )]
    fn write(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<usize> {
        self.write_from(inode, handle, r, size, offset)
    }

    fn flush(&self, _ctx: &Context, inode: u64, handle: u64, _lock_owner: u64) -> io::Result<()> {
        // Nothing is buffered here and no locks are kept: only check the
        // handle is the guest's.
        self.handle(inode, handle).map(drop)
    }

    fn fsync(&self, _ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.sync(inode, handle, datasync)
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "the FileSystem trait's signature"
    )]
    fn release(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.release_handle(inode, handle)
    }

    fn opendir(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let fh = self.open_node(inode, flags, true)?;
        Ok((Some(fh), OpenOptions::empty()))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.list(inode, handle, size, offset, false, &mut |entry, _| {
            add_entry(entry)
        })
    }

    fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.list(inode, handle, size, offset, true, &mut |entry, found| {
            // Node id 0: listed without attributes; the guest looks the
            // name up itself when it needs it.
            let found = found.unwrap_or_else(|| self.entry(0, zeroed_stat()));
            add_entry(entry, found)
        })
    }

    fn fsyncdir(&self, _ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.sync(inode, handle, datasync)
    }

    fn releasedir(&self, _ctx: &Context, inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.release_handle(inode, handle)
    }

    fn lseek(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.seek(inode, handle, offset, whence)
    }

    fn create(
        &self,
        _ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let (entry, fh) = self.create_file(parent, name, &args)?;
        Ok((entry, Some(fh), OpenOptions::empty(), None))
    }

    fn mkdir(
        &self,
        _ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.make_dir(parent, name, mode, umask)
    }

    fn mknod(
        &self,
        _ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        _rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.make_node(parent, name, mode, umask)
    }

    fn symlink(
        &self,
        _ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.make_symlink(linkname, parent, name)
    }

    fn link(
        &self,
        _ctx: &Context,
        inode: u64,
        newparent: u64,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.make_link(inode, newparent, newname)
    }

    fn unlink(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.remove(parent, name, false)
    }

    fn rmdir(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.remove(parent, name, true)
    }

    fn rename(
        &self,
        _ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.rename_entry(olddir, oldname, newdir, newname, flags)
    }

    fn setattr(
        &self,
        _ctx: &Context,
        inode: u64,
        attr: libc::stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(libc::stat64, Duration)> {
        Ok((self.set_attributes(inode, &attr, handle, valid)?, self.ttl))
    }

    fn fallocate(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.allocate(inode, handle, mode, offset, length)
    }

    fn setxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.set_xattr(inode, name, value, flags)
    }

    fn getxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.get_xattr(inode, name, size)
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.list_xattrs(inode, size)
    }

    fn removexattr(&self, _ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.remove_xattr(inode, name)
    }

    fn statfs(&self, _ctx: &Context, _inode: u64) -> io::Result<libc::statvfs64> {
        // SAFETY: statvfs64 is plain data; all-zero is a valid value.
        let mut st: libc::statvfs64 = unsafe { std::mem::zeroed() };
        // SAFETY: the root descriptor is open, `st` a live statvfs64.
        if unsafe { libc::fstatvfs64(self.root.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }
}
