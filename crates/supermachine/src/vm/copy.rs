//! Copying file trees between the host and a guest (`supermachine cp`).
//!
//! Everything the guest says is hostile here: the names it lists, the
//! kinds and modes it reports, where its symlinks point. So on the host:
//!
//! * every guest name must be one plain path component (not empty, not
//!   `.` or `..`, no `/` or NUL, at most 255 bytes), else the copy stops
//!   with [`Error::UnsafeName`];
//! * nothing is opened by a path string: each directory of the target is
//!   a file descriptor, and entries are created relative to it with
//!   `O_NOFOLLOW | O_EXCL` and resolved with `openat2`'s
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, so no symlink (the guest's
//!   copied ones, or any already on the host) is ever followed below the
//!   target the user named;
//! * a file is written under an unpredictable temporary name, created
//!   exclusively, and renamed over its real name only when complete (a
//!   rename replaces a symlink of that name, never writes through it);
//! * guest symlinks are recreated as symlinks, their targets untouched and
//!   never followed; devices, FIFOs and sockets are skipped;
//! * modes are copied without setuid, setgid and sticky bits unless
//!   [`CopyOptions::preserve_mode`] asks for them (a setuid binary from a
//!   guest is a gift to whoever can run it on the host); a sticky
//!   directory (a guest's `/tmp`, 1777) loses its world write with its
//!   sticky bit, so it does not become a 0777 directory on the host.
//!
//! The other way, a host tree into the guest: the source path the user
//! names is followed if it is a symlink (as `cp` does), but inside the
//! tree symlinks are skipped, never followed, and every entry is opened
//! relative to its directory's descriptor with the same `openat2` rules:
//! a tree that changes during the copy cannot make the host read a file
//! outside it.

use crate::error::Error;
use crate::vm::Vm;
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use supermachine_protocol::{DirEntry, FileKind, FileStat, WriteFileRequest};

/// How [`Vm::copy_from_guest`] and [`Vm::copy_to_guest`] copy.
///
/// ```
/// let keep_setuid = supermachine::CopyOptions { preserve_mode: true };
/// assert!(!supermachine::CopyOptions::default().preserve_mode);
/// # let _ = keep_setuid;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyOptions {
    /// Keep setuid, setgid and sticky bits (dropped by default).
    pub preserve_mode: bool,
}

impl CopyOptions {
    fn mode(&self, mode: u32) -> u32 {
        if self.preserve_mode {
            mode & 0o7777
        } else if mode & 0o1000 != 0 {
            // A world-writable directory is safe to share only with the
            // sticky bit (each user may remove only their own files, as
            // in /tmp): dropping that bit drops world write with it.
            mode & 0o775
        } else {
            mode & 0o777
        }
    }
}

/// What a copy did.
///
/// ```
/// let report = supermachine::CopyReport::default();
/// assert_eq!((report.files, report.bytes), (0, 0));
/// assert!(report.skipped.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Regular files copied.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Bytes of file data copied.
    pub bytes: u64,
    /// Entries not copied and why (`/dev/null: a character device`).
    pub skipped: Vec<String>,
}

/// The guest side of a copy: a VM, or a fake in tests.
pub(crate) trait GuestFiles {
    async fn stat(&self, path: &str) -> Result<FileStat, Error>;
    async fn list(&self, path: &str) -> Result<Vec<DirEntry>, Error>;
    async fn read_into(&self, path: &str, sink: tokio::fs::File) -> Result<u64, Error>;
    /// Creates a directory; an existing one is fine.
    async fn make_dir(&self, path: &str) -> Result<(), Error>;
    async fn write(&self, request: WriteFileRequest, source: tokio::fs::File)
        -> Result<u64, Error>;
}

impl GuestFiles for Vm {
    async fn stat(&self, path: &str) -> Result<FileStat, Error> {
        Vm::stat(self, path).await
    }

    async fn list(&self, path: &str) -> Result<Vec<DirEntry>, Error> {
        self.list_dir(path).await
    }

    async fn read_into(&self, path: &str, sink: tokio::fs::File) -> Result<u64, Error> {
        self.read_file_to(path, sink).await
    }

    async fn make_dir(&self, path: &str) -> Result<(), Error> {
        match self.mkdir(path, false).await {
            Err(Error::Agent {
                kind: supermachine_protocol::ErrorKind::AlreadyExists,
                ..
            }) => Ok(()),
            other => other,
        }
    }

    async fn write(
        &self,
        request: WriteFileRequest,
        source: tokio::fs::File,
    ) -> Result<u64, Error> {
        self.write_file_with(request, source).await
    }
}

impl Vm {
    /// Copies `guest` (a file, symlink or directory tree) to the host: into
    /// `host` if that is an existing directory (as `host/<name>`), else to
    /// `host` itself. See the rules in [`CopyOptions`] and the README:
    /// guest names are checked, no symlink is followed on the host, and
    /// setuid/setgid/sticky bits are dropped unless asked for.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// use supermachine::CopyOptions;
    /// let report = vm.copy_from_guest("/etc", "/tmp/guest-etc".as_ref(), &CopyOptions::default()).await?;
    /// println!("{} files, {} bytes", report.files, report.bytes);
    /// # Ok(()) }
    /// ```
    pub async fn copy_from_guest(
        &self,
        guest: &str,
        host: &Path,
        options: &CopyOptions,
    ) -> Result<CopyReport, Error> {
        copy_out(self, guest, host, options).await
    }

    /// Copies the host file or directory tree `host` into the guest: into
    /// `guest` if that is an existing directory (as `guest/<name>`), else
    /// to `guest` itself. Symlinks inside the tree are skipped (never
    /// followed); `host` itself is followed if it is one.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// use supermachine::CopyOptions;
    /// vm.copy_to_guest("./site".as_ref(), "/srv", &CopyOptions::default()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn copy_to_guest(
        &self,
        host: &Path,
        guest: &str,
        options: &CopyOptions,
    ) -> Result<CopyReport, Error> {
        copy_in(self, host, guest, options).await
    }
}

/// Longest name a Linux file system takes.
const NAME_MAX: usize = 255;

/// `name` if it is one plain path component.
fn plain_name<'a>(name: &'a str, dir: &str) -> Result<&'a str, Error> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= NAME_MAX
        && !name.contains(['/', '\0']);
    if plain {
        Ok(name)
    } else {
        Err(Error::UnsafeName {
            name: name.to_string(),
            dir: dir.to_string(),
        })
    }
}

fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// The last component of a guest path (`/` is `root`).
fn guest_base_name(path: &str) -> &str {
    path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("root")
}

fn host_err(what: impl std::fmt::Display) -> impl FnOnce(rustix::io::Errno) -> Error {
    let what = what.to_string();
    move |e| Error::io(what, e.into())
}

/// How entries below the target are resolved: beneath their directory,
/// through no symlink at all.
const BENEATH: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS);

/// Opens `name` in `dir` as a directory, never through a symlink.
fn open_dir_beneath(dir: impl AsFd, name: &str) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        BENEATH,
    )
}

/// Opens a directory the user named (their own path: symlinks followed).
fn open_user_dir(path: &Path) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Where a copy out goes: a directory and a name in it.
fn host_target(host: &Path, guest: &str) -> Result<(OwnedFd, String), Error> {
    if let Ok(dir) = open_user_dir(host) {
        let name = plain_name(guest_base_name(guest), guest)?.to_string();
        return Ok((dir, name));
    }
    let parent = match host.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = host
        .file_name()
        .and_then(OsStr::to_str)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "cp: {}: name the target with a UTF-8 file name",
                host.display()
            ))
        })?
        .to_string();
    let dir =
        open_user_dir(parent).map_err(|e| Error::io(format!("cp: {}", parent.display()), e))?;
    Ok((dir, name))
}

pub(crate) async fn copy_out(
    guest: &impl GuestFiles,
    from: &str,
    host: &Path,
    options: &CopyOptions,
) -> Result<CopyReport, Error> {
    let (dir, name) = host_target(host, from)?;
    let stat = guest.stat(from).await?;
    let mut report = CopyReport::default();
    let mut writer = HostWriter {
        guest,
        options,
        report: &mut report,
    };
    writer.entry(&dir, &name, from, &stat).await?;
    Ok(report)
}

/// Writes guest entries below directory descriptors on the host.
struct HostWriter<'a, G> {
    guest: &'a G,
    options: &'a CopyOptions,
    report: &'a mut CopyReport,
}

impl<G: GuestFiles> HostWriter<'_, G> {
    /// Copies the guest entry `from` (with `stat`) to `name` in `dir`.
    async fn entry(
        &mut self,
        dir: &OwnedFd,
        name: &str,
        from: &str,
        stat: &FileStat,
    ) -> Result<(), Error> {
        match stat.kind {
            FileKind::Dir => Box::pin(self.dir(dir, name, from, stat)).await,
            FileKind::File => self.file(dir, name, from, stat).await,
            FileKind::Symlink => self.symlink(dir, name, from, stat),
            other => {
                self.report
                    .skipped
                    .push(format!("{from}: {}", kind_name(other)));
                Ok(())
            }
        }
    }

    async fn dir(
        &mut self,
        parent: &OwnedFd,
        name: &str,
        from: &str,
        stat: &FileStat,
    ) -> Result<(), Error> {
        // Private while it fills; its own mode once complete.
        let created = match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => true,
            Err(rustix::io::Errno::EXIST) => false,
            Err(e) => return Err(host_err(format!("cp: creating {name}"))(e)),
        };
        let dir = open_dir_beneath(parent, name).map_err(|e| {
            let why = if matches!(e, rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) {
                "exists on the host and is not a directory (symlinks are not followed)"
            } else {
                "cannot be opened"
            };
            Error::io(format!("cp: {name} {why}"), e.into())
        })?;
        for entry in self.guest.list(from).await? {
            let child = plain_name(&entry.name, from)?;
            self.entry(&dir, child, &join(from, child), &entry.stat)
                .await?;
        }
        if created {
            rustix::fs::fchmod(&dir, Mode::from_raw_mode(self.options.mode(stat.mode)))
                .map_err(host_err(format!("cp: setting the mode of {name}")))?;
        }
        self.report.dirs += 1;
        Ok(())
    }

    async fn file(
        &mut self,
        dir: &OwnedFd,
        name: &str,
        from: &str,
        stat: &FileStat,
    ) -> Result<(), Error> {
        let (temp, fd) = create_temp(|temp| {
            rustix::fs::openat2(
                dir,
                temp,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
                BENEATH,
            )
        })?;
        let written = async {
            let file = std::fs::File::from(fd.try_clone().map_err(|e| Error::io("cp", e))?);
            let copied = self
                .guest
                .read_into(from, tokio::fs::File::from_std(file))
                .await?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(self.options.mode(stat.mode)))
                .map_err(host_err(format!("cp: setting the mode of {name}")))?;
            rustix::fs::renameat(dir, temp.as_str(), dir, name)
                .map_err(host_err(format!("cp: moving {name} into place")))?;
            Ok::<_, Error>(copied)
        }
        .await;
        match written {
            Ok(copied) => {
                self.report.files += 1;
                self.report.bytes += copied;
                Ok(())
            }
            Err(e) => {
                let _ = rustix::fs::unlinkat(dir, temp.as_str(), AtFlags::empty());
                Err(e)
            }
        }
    }

    fn symlink(
        &mut self,
        dir: &OwnedFd,
        name: &str,
        from: &str,
        stat: &FileStat,
    ) -> Result<(), Error> {
        let Some(target) = stat.link_target.as_deref().filter(|t| !t.is_empty()) else {
            self.report
                .skipped
                .push(format!("{from}: a symlink with no target"));
            return Ok(());
        };
        // Made under a temporary name and renamed: replaces whatever the
        // name held without ever following it.
        let (temp, ()) = create_temp(|temp| rustix::fs::symlinkat(target, dir, temp))?;
        rustix::fs::renameat(dir, temp.as_str(), dir, name).map_err(|e| {
            let _ = rustix::fs::unlinkat(dir, temp.as_str(), AtFlags::empty());
            host_err(format!("cp: moving the symlink {name} into place"))(e)
        })?;
        self.report.symlinks += 1;
        Ok(())
    }
}

/// Creates something under a fresh unpredictable name in `dir` with
/// `create` (which must fail if the name exists); the name and the result.
fn create_temp<T>(
    mut create: impl FnMut(&str) -> rustix::io::Result<T>,
) -> Result<(String, T), Error> {
    for _ in 0..8 {
        let mut random = [0u8; 12];
        crate::worker::runtime::random_bytes(&mut random)
            .map_err(|e| Error::io("reading randomness for a temporary name", e))?;
        let temp = format!(".supermachine-partial-{}", hex::encode(random));
        match create(&temp) {
            Ok(made) => return Ok((temp, made)),
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(host_err("cp: creating a temporary file")(e)),
        }
    }
    Err(Error::io(
        "cp: creating a temporary file",
        std::io::Error::from(std::io::ErrorKind::AlreadyExists),
    ))
}

fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::File => "a file",
        FileKind::Dir => "a directory",
        FileKind::Symlink => "a symlink",
        FileKind::CharDevice => "a character device",
        FileKind::BlockDevice => "a block device",
        FileKind::Fifo => "a FIFO",
        FileKind::Socket => "a socket",
    }
}

/// The name a host source gets in the guest.
fn host_base_name(path: &Path) -> Result<String, Error> {
    let named = match path.file_name() {
        Some(name) => Some(name.to_os_string()),
        // `.`, `..`, `/`: the name of what it resolves to.
        None => std::fs::canonicalize(path)
            .map_err(|e| Error::io(format!("cp: {}", path.display()), e))?
            .file_name()
            .map(OsStr::to_os_string),
    };
    match named {
        None => Ok("root".into()),
        Some(name) => name.into_string().map_err(|name| {
            Error::InvalidArgument(format!(
                "cp: {}: the guest takes UTF-8 names only",
                Path::new(&name).display()
            ))
        }),
    }
}

pub(crate) async fn copy_in(
    guest: &impl GuestFiles,
    host: &Path,
    to: &str,
    options: &CopyOptions,
) -> Result<CopyReport, Error> {
    let target = match guest.stat(to).await {
        Ok(st) if st.kind == FileKind::Dir => join(to, &host_base_name(host)?),
        _ => to.to_string(),
    };
    // The path the user named is theirs: followed if it is a symlink.
    let source = rustix::fs::open(host, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(host_err(format!("cp: {}", host.display())))?;
    let mut report = CopyReport::default();
    let mut reader = HostReader {
        guest,
        options,
        report: &mut report,
    };
    reader
        .entry(source, &host.display().to_string(), &target)
        .await?;
    Ok(report)
}

/// Reads host entries below directory descriptors into the guest.
struct HostReader<'a, G> {
    guest: &'a G,
    options: &'a CopyOptions,
    report: &'a mut CopyReport,
}

impl<G: GuestFiles> HostReader<'_, G> {
    /// Copies the open host entry `fd` (shown as `shown`) to guest `to`.
    async fn entry(&mut self, fd: OwnedFd, shown: &str, to: &str) -> Result<(), Error> {
        let stat = rustix::fs::fstat(&fd).map_err(host_err(format!("cp: {shown}")))?;
        let mode = stat.st_mode & 0o7777;
        match rustix::fs::FileType::from_raw_mode(stat.st_mode) {
            rustix::fs::FileType::Directory => {
                self.guest.make_dir(to).await?;
                for name in sorted_names(&fd).map_err(host_err(format!("cp: {shown}")))? {
                    let shown_child = format!("{shown}/{}", Path::new(&name).display());
                    let Some(utf8) = name.to_str() else {
                        self.report
                            .skipped
                            .push(format!("{shown_child}: not a UTF-8 name"));
                        continue;
                    };
                    let opened = rustix::fs::openat2(
                        &fd,
                        utf8,
                        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
                        Mode::empty(),
                        BENEATH,
                    );
                    match opened {
                        Ok(child) => {
                            Box::pin(self.entry(child, &shown_child, &join(to, utf8))).await?
                        }
                        // A symlink (ELOOP), or one that a rename made
                        // appear mid-copy (EXDEV, RESOLVE_NO_SYMLINKS).
                        Err(rustix::io::Errno::LOOP | rustix::io::Errno::XDEV) => self
                            .report
                            .skipped
                            .push(format!("{shown_child}: a symlink (not followed)")),
                        Err(e) => return Err(host_err(format!("cp: {shown_child}"))(e)),
                    }
                }
                self.report.dirs += 1;
                Ok(())
            }
            rustix::fs::FileType::RegularFile => {
                let file = std::fs::File::from(fd);
                let mut request = WriteFileRequest::new(to);
                request.mode = self.options.mode(mode);
                let written = self
                    .guest
                    .write(request, tokio::fs::File::from_std(file))
                    .await?;
                self.report.files += 1;
                self.report.bytes += written;
                Ok(())
            }
            other => {
                self.report.skipped.push(format!(
                    "{shown}: {other:?} (only files and directories are copied)"
                ));
                Ok(())
            }
        }
    }
}

/// The entry names of an open directory, sorted (`.` and `..` left out).
fn sorted_names(dir: &OwnedFd) -> rustix::io::Result<Vec<std::ffi::OsString>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    //! The host side of copies with a fake guest: a tree in memory that
    //! lists whatever names, kinds and modes a hostile guest would.
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Mutex;
    use tokio::io::AsyncWriteExt;

    enum Node {
        File(Vec<u8>, u32),
        Dir(u32),
        Link(String),
        Fifo,
    }

    /// Paths to nodes; a directory's entries are the paths right below it
    /// plus any extra names it is told to list.
    #[derive(Default)]
    struct FakeGuest {
        nodes: BTreeMap<String, Node>,
        /// Extra (name, node) entries listed in a directory: names a real
        /// file system would never hold.
        forged: BTreeMap<String, Vec<(String, Node)>>,
        /// What the host wrote into this guest: (path, mode, bytes).
        written: Mutex<Vec<(String, u32, Vec<u8>)>>,
        made_dirs: Mutex<Vec<String>>,
    }

    fn stat_of(node: &Node) -> FileStat {
        let (kind, mode, size, link_target) = match node {
            Node::File(data, mode) => (FileKind::File, *mode, data.len() as u64, None),
            Node::Dir(mode) => (FileKind::Dir, *mode, 0, None),
            Node::Link(target) => (FileKind::Symlink, 0o777, 0, Some(target.clone())),
            Node::Fifo => (FileKind::Fifo, 0o644, 0, None),
        };
        FileStat {
            kind,
            mode,
            uid: 0,
            gid: 0,
            size,
            mtime: 0,
            link_target,
        }
    }

    impl FakeGuest {
        fn with(mut self, path: &str, node: Node) -> Self {
            self.nodes.insert(path.into(), node);
            self
        }

        fn forge(mut self, dir: &str, name: &str, node: Node) -> Self {
            self.forged
                .entry(dir.into())
                .or_default()
                .push((name.into(), node));
            self
        }

        fn find(&self, path: &str) -> Option<&Node> {
            self.nodes.get(path).or_else(|| {
                let (dir, name) = path.rsplit_once('/')?;
                let dir = if dir.is_empty() { "/" } else { dir };
                self.forged
                    .get(dir)?
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, node)| node)
            })
        }
    }

    fn not_found() -> Error {
        Error::Agent {
            kind: supermachine_protocol::ErrorKind::NotFound,
            message: "not found".into(),
        }
    }

    impl GuestFiles for FakeGuest {
        async fn stat(&self, path: &str) -> Result<FileStat, Error> {
            self.find(path).map(stat_of).ok_or_else(not_found)
        }

        async fn list(&self, path: &str) -> Result<Vec<DirEntry>, Error> {
            let prefix = format!("{}/", path.trim_end_matches('/'));
            let mut entries: Vec<DirEntry> = self
                .nodes
                .iter()
                .filter_map(|(p, node)| {
                    let name = p.strip_prefix(&prefix)?;
                    (!name.contains('/')).then(|| DirEntry {
                        name: name.into(),
                        stat: stat_of(node),
                    })
                })
                .collect();
            for (name, node) in self.forged.get(path).into_iter().flatten() {
                entries.push(DirEntry {
                    name: name.clone(),
                    stat: stat_of(node),
                });
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(entries)
        }

        async fn read_into(&self, path: &str, mut sink: tokio::fs::File) -> Result<u64, Error> {
            let Some(Node::File(data, _)) = self.find(path) else {
                return Err(not_found());
            };
            sink.write_all(data)
                .await
                .map_err(|e| Error::io("sink", e))?;
            sink.flush().await.map_err(|e| Error::io("sink", e))?;
            Ok(data.len() as u64)
        }

        async fn make_dir(&self, path: &str) -> Result<(), Error> {
            self.made_dirs.lock().unwrap().push(path.into());
            Ok(())
        }

        async fn write(
            &self,
            request: WriteFileRequest,
            mut source: tokio::fs::File,
        ) -> Result<u64, Error> {
            use tokio::io::AsyncReadExt;
            let mut data = Vec::new();
            source
                .read_to_end(&mut data)
                .await
                .map_err(|e| Error::io("source", e))?;
            let n = data.len() as u64;
            self.written
                .lock()
                .unwrap()
                .push((request.path, request.mode, data));
            Ok(n)
        }
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[tokio::test]
    async fn a_tree_arrives_with_its_files_dirs_symlinks_and_modes() {
        let guest = FakeGuest::default()
            .with("/t", Node::Dir(0o750))
            .with("/t/a.txt", Node::File(b"alpha".to_vec(), 0o640))
            .with("/t/sub", Node::Dir(0o755))
            .with("/t/sub/run.sh", Node::File(b"#!/bin/sh".to_vec(), 0o755))
            .with("/t/link", Node::Link("/etc/passwd".into()))
            .with("/t/pipe", Node::Fifo);
        let host = tempfile::tempdir().unwrap();
        let report = copy_out(&guest, "/t", host.path(), &CopyOptions::default())
            .await
            .unwrap();
        let t = host.path().join("t");
        assert_eq!(std::fs::read(t.join("a.txt")).unwrap(), b"alpha");
        assert_eq!(mode_of(&t.join("a.txt")), 0o640);
        assert_eq!(mode_of(&t.join("sub/run.sh")), 0o755);
        assert_eq!(mode_of(&t), 0o750);
        assert_eq!(
            std::fs::read_link(t.join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert!(!t.join("pipe").exists());
        assert_eq!((report.files, report.dirs, report.symlinks), (2, 2, 1));
        assert_eq!(report.skipped, ["/t/pipe: a FIFO"]);
        // Nothing temporary left behind.
        let names: Vec<_> = std::fs::read_dir(&t)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    /// The docker cp CVE-2018-15664 shape that `supermachine cp` had: a
    /// guest symlink named like the copy's partial file for `x`, pointing
    /// at a host file outside the target. Failed before the fix: the
    /// host file was overwritten with the guest's data and chmod-ed.
    #[tokio::test]
    async fn a_guest_symlink_never_makes_the_copy_write_outside_the_target() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "host data").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let victim_str = victim.to_str().unwrap().to_string();
        let mut guest = FakeGuest::default().with("/evil", Node::Dir(0o755));
        for partial in [".x.supermachine-partial", ".supermachine-partial-x", "x"] {
            if partial != "x" {
                guest = guest.with(&format!("/evil/{partial}"), Node::Link(victim_str.clone()));
            }
        }
        let guest = guest.with("/evil/x", Node::File(b"guest data".to_vec(), 0o4777));
        let host = tempfile::tempdir().unwrap();
        copy_out(
            &guest,
            "/evil",
            &host.path().join("copy"),
            &CopyOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host data");
        assert_eq!(mode_of(&victim), 0o600);
        assert_eq!(
            std::fs::read(host.path().join("copy/x")).unwrap(),
            b"guest data"
        );
    }

    #[tokio::test]
    async fn a_host_symlink_in_the_target_is_replaced_not_written_through() {
        let outside = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        // The target already holds a symlink where the guest has a file,
        // and one where it has a directory.
        std::os::unix::fs::symlink(outside.path().join("file"), host.path().join("f")).unwrap();
        std::os::unix::fs::symlink(outside.path(), host.path().join("d")).unwrap();
        let file_guest = FakeGuest::default().with("/f", Node::File(b"data".to_vec(), 0o644));
        copy_out(&file_guest, "/f", host.path(), &CopyOptions::default())
            .await
            .unwrap();
        assert!(!outside.path().join("file").exists());
        assert_eq!(std::fs::read(host.path().join("f")).unwrap(), b"data");
        let dir_guest = FakeGuest::default()
            .with("/d", Node::Dir(0o755))
            .with("/d/inside", Node::File(b"data".to_vec(), 0o644));
        let e = copy_out(&dir_guest, "/d", host.path(), &CopyOptions::default())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert!(!outside.path().join("inside").exists());
    }

    #[tokio::test]
    async fn names_that_are_not_one_plain_component_are_refused() {
        let host = tempfile::tempdir().unwrap();
        let target = host.path().join("in");
        std::fs::create_dir(&target).unwrap();
        for bad in [
            "..",
            ".",
            "",
            "a/b",
            "../escape",
            "nul\0byte",
            &"n".repeat(256),
        ] {
            let guest = FakeGuest::default().with("/d", Node::Dir(0o755)).forge(
                "/d",
                bad,
                Node::File(b"x".to_vec(), 0o644),
            );
            let e = copy_out(&guest, "/d", &target, &CopyOptions::default())
                .await
                .unwrap_err();
            assert!(
                matches!(&e, Error::UnsafeName { name, .. } if name == bad),
                "{bad:?}: {e}"
            );
        }
        assert!(!host.path().join("escape").exists());
        assert!(!host.path().join("b").exists());
    }

    #[tokio::test]
    async fn setuid_setgid_and_sticky_bits_are_dropped_unless_asked_for() {
        let guest = FakeGuest::default()
            .with("/s", Node::Dir(0o1777))
            .with("/s/suid", Node::File(b"x".to_vec(), 0o4755))
            .with("/s/sgid", Node::File(b"x".to_vec(), 0o2755));
        let host = tempfile::tempdir().unwrap();
        copy_out(
            &guest,
            "/s",
            &host.path().join("plain"),
            &CopyOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(mode_of(&host.path().join("plain/suid")), 0o755);
        assert_eq!(mode_of(&host.path().join("plain/sgid")), 0o755);
        // 1777 without its sticky bit would be writable by every local
        // user with nothing to stop them removing each other's files.
        assert_eq!(mode_of(&host.path().join("plain")), 0o775);
        let keep = CopyOptions {
            preserve_mode: true,
        };
        copy_out(&guest, "/s", &host.path().join("kept"), &keep)
            .await
            .unwrap();
        assert_eq!(mode_of(&host.path().join("kept/suid")), 0o4755);
        assert_eq!(mode_of(&host.path().join("kept")), 0o1777);
    }

    #[tokio::test]
    async fn a_host_tree_goes_in_without_following_its_symlinks() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "host secret").unwrap();
        let src = tempfile::tempdir().unwrap();
        let tree = src.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("sub/a"), "a").unwrap();
        std::fs::set_permissions(tree.join("sub/a"), std::fs::Permissions::from_mode(0o4750))
            .unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), tree.join("leak")).unwrap();
        std::os::unix::fs::symlink(outside.path(), tree.join("leakdir")).unwrap();
        let guest = FakeGuest::default().with("/dst", Node::Dir(0o755));
        let report = copy_in(&guest, &tree, "/dst", &CopyOptions::default())
            .await
            .unwrap();
        let written = guest.written.lock().unwrap();
        assert_eq!(
            *written,
            vec![("/dst/tree/sub/a".to_string(), 0o750, b"a".to_vec())]
        );
        assert_eq!(
            *guest.made_dirs.lock().unwrap(),
            ["/dst/tree", "/dst/tree/sub"]
        );
        assert_eq!(report.skipped.len(), 2, "{:?}", report.skipped);
        assert!(report.skipped.iter().all(|s| s.contains("symlink")));
    }
}
