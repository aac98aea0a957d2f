//! [`SharedDir`]: the file system the guest sees, one host directory
//! served through a descriptor of it, under a symlink policy.
//!
//! This first step answers INIT (the options below) and DESTROY; every
//! other operation is fuse-backend-rs's default, ENOSYS, so a guest can
//! mount the tag and sees an empty, unusable root. Lookups, I/O and the
//! mutators follow, each resolved one component at a time beneath the
//! root's descriptor (docs/design/virtio-fs.md).

use fuse_backend_rs::abi::fuse_abi::FsOptions;
use fuse_backend_rs::api::filesystem::FileSystem;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use supermachine_protocol::fs_spec::SymlinkPolicy;

/// One shared host directory.
pub struct SharedDir {
    /// The directory, opened once (`O_PATH`): every later lookup starts
    /// from this descriptor, never from its path.
    root: OwnedFd,
    symlinks: SymlinkPolicy,
    read_only: bool,
    /// Whether the guest has sent INIT (and not DESTROY since).
    initialized: AtomicBool,
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
        let root = rustix::fs::open(
            path,
            rustix::fs::OFlags::PATH
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        Ok(SharedDir {
            root,
            symlinks,
            read_only,
            initialized: AtomicBool::new(false),
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

    /// Puts back the session state a snapshot saved.
    pub(super) fn set_initialized(&self, initialized: bool) {
        self.initialized.store(initialized, Ordering::SeqCst);
    }

    /// The root directory's descriptor.
    pub fn root(&self) -> &OwnedFd {
        &self.root
    }
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
    }
}
