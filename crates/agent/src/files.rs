//! File requests: `ReadFile`, `Stat`, `Mkdir`, `Remove`, `List` here,
//! `WriteFile` in [`crate::write_file`].
//!
//! Errors carry the kind of the errno (see [`kind_of`]) and a message naming
//! the operation and the path, like `write /etc/x: Permission denied`.
//! Paths must be absolute: the agent's working directory means nothing to
//! the host.

use crate::sys;
use crate::transport::Stream;
use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use supermachine_protocol::{
    write_frame, AgentMessage, DirEntry, ErrorKind, FileKind, FileStat, MAX_CHUNK,
    MAX_ENTRIES_PER_FRAME,
};

/// A failed file operation, as sent to the host.
#[derive(Debug)]
pub struct OpError {
    /// What kind of failure the host sees (not found, permission, ...).
    pub kind: ErrorKind,
    /// Names the operation and the path, e.g. `mkdir /x/y: No such file or
    /// directory`.
    pub message: String,
}

impl OpError {
    /// An error that did not come from an errno, such as a refused request.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> OpError {
        OpError {
            kind,
            message: message.into(),
        }
    }

    /// `op path: description of e`, with the kind of its errno.
    pub fn io(op: &str, path: &Path, e: &io::Error) -> OpError {
        let message = format!("{op} {}: {}", path.display(), sys::describe(e));
        OpError::new(kind_of(e), message)
    }

    /// The `Error` frame that answers the request with this error.
    pub fn into_message(self) -> AgentMessage {
        AgentMessage::Error {
            kind: self.kind,
            message: self.message,
        }
    }
}

/// Maps an errno to the protocol's error kinds.
pub fn kind_of(e: &io::Error) -> ErrorKind {
    match e.raw_os_error() {
        Some(libc::ENOENT) => ErrorKind::NotFound,
        Some(libc::EACCES | libc::EPERM) => ErrorKind::PermissionDenied,
        Some(libc::EEXIST) => ErrorKind::AlreadyExists,
        Some(libc::ENOTDIR) => ErrorKind::NotADirectory,
        Some(libc::EISDIR) => ErrorKind::IsADirectory,
        Some(libc::ENOTEMPTY) => ErrorKind::DirectoryNotEmpty,
        _ => ErrorKind::Failed,
    }
}

/// The request's path, if usable: absolute and free of NUL bytes.
pub fn absolute(path: &str) -> Result<&Path, OpError> {
    if !path.starts_with('/') {
        let message = format!("path must be absolute: {path:?}");
        return Err(OpError::new(ErrorKind::BadRequest, message));
    }
    if path.contains('\0') {
        let message = format!("path contains a NUL byte: {path:?}");
        return Err(OpError::new(ErrorKind::BadRequest, message));
    }
    Ok(Path::new(path))
}

/// Sends `msg`; a host that went away has nobody left to tell.
pub fn send(stream: &Stream, msg: &AgentMessage) -> bool {
    match write_frame(&mut &*stream, msg) {
        Ok(()) => true,
        Err(e) => {
            crate::transport::report_send_failure(&e);
            false
        }
    }
}

/// Sends the one-frame answer of a request, or its error.
fn answer(stream: &Stream, result: Result<AgentMessage, OpError>) {
    send(stream, &result.unwrap_or_else(OpError::into_message));
}

/// `FileStat` of metadata that was not obtained by following a symlink,
/// with `link_target` filled in by the caller.
pub fn file_stat(meta: &Metadata, link_target: Option<String>) -> FileStat {
    let t = meta.file_type();
    let kind = if t.is_symlink() {
        FileKind::Symlink
    } else if t.is_dir() {
        FileKind::Dir
    } else if t.is_char_device() {
        FileKind::CharDevice
    } else if t.is_block_device() {
        FileKind::BlockDevice
    } else if t.is_fifo() {
        FileKind::Fifo
    } else if t.is_socket() {
        FileKind::Socket
    } else {
        FileKind::File
    };
    FileStat {
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size: meta.len(),
        mtime: meta.mtime(),
        link_target,
    }
}

/// `lstat` of `path`, with the target when it is a symlink.
fn lstat(op: &str, path: &Path) -> Result<FileStat, OpError> {
    let meta = fs::symlink_metadata(path).map_err(|e| OpError::io(op, path, &e))?;
    let target = if meta.file_type().is_symlink() {
        let target = fs::read_link(path).map_err(|e| OpError::io(op, path, &e))?;
        Some(String::from_utf8_lossy(target.as_os_str().as_bytes()).into_owned())
    } else {
        None
    };
    Ok(file_stat(&meta, target))
}

/// Answers `Stat` with one `Stat` frame, or an `Error`. A symlink is
/// described itself, not followed, with its target filled in.
pub fn stat(stream: &Stream, path: &str) {
    answer(
        stream,
        absolute(path).and_then(|p| lstat("stat", p).map(AgentMessage::Stat)),
    );
}

/// `Stat` of the opened file, `Data` chunks, `Done` with the byte count.
pub fn read_file(stream: &Stream, path: &str) {
    let (mut file, meta) = match absolute(path).and_then(open_for_reading) {
        Ok(opened) => opened,
        Err(e) => return answer(stream, Err(e)),
    };
    let path = Path::new(path);
    if !send(stream, &AgentMessage::Stat(file_stat(&meta, None))) {
        return;
    }
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut count = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                count += n as u64;
                if !send(stream, &AgentMessage::Data(buf[..n].to_vec())) {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return answer(stream, Err(OpError::io("read", path, &e))),
        }
    }
    send(stream, &AgentMessage::Done { count });
}

/// Opens a regular file. O_NONBLOCK keeps a FIFO from blocking the open;
/// it does nothing to regular files. Anything but a regular file is
/// refused: a device or FIFO could stream forever.
fn open_for_reading(path: &Path) -> Result<(File, Metadata), OpError> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| OpError::io("read", path, &e))?;
    let meta = file.metadata().map_err(|e| OpError::io("read", path, &e))?;
    if meta.is_dir() {
        let e = io::Error::from_raw_os_error(libc::EISDIR);
        return Err(OpError::io("read", path, &e));
    }
    if !meta.is_file() {
        let message = format!("read {}: not a regular file", path.display());
        return Err(OpError::new(ErrorKind::Failed, message));
    }
    Ok((file, meta))
}

/// Answers `Mkdir` with `Done { count: 0 }`, or an `Error`. The directory
/// gets exactly the permission bits of `mode`, whatever the umask; with
/// `parents`, missing parents are made 0755 and an existing directory is
/// no error.
pub fn mkdir(stream: &Stream, path: &str, mode: u32, parents: bool) {
    let result = absolute(path).and_then(|p| make_dir(p, mode & 0o7777, parents));
    answer(stream, result.map(|()| AgentMessage::Done { count: 0 }));
}

/// `mkdir`, or `mkdir -p` with `parents` (missing parents get 0755, and an
/// existing directory is fine). A directory created here gets exactly
/// `mode`, whatever the agent's umask.
fn make_dir(path: &Path, mode: u32, parents: bool) -> Result<(), OpError> {
    let err = |e: io::Error| OpError::io("mkdir", path, &e);
    if parents {
        if let Some(parent) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(err)?;
        }
    }
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err),
        Err(e) if parents && e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// Answers `Remove` with `Done { count: 0 }`, or an `Error`. Symlinks are
/// removed, never followed, and the root is refused; a directory must be
/// empty unless `recursive`.
pub fn remove(stream: &Stream, path: &str, recursive: bool) {
    let result = absolute(path).and_then(|p| remove_path(p, recursive));
    answer(stream, result.map(|()| AgentMessage::Done { count: 0 }));
}

/// Removes a file, symlink or (empty, unless `recursive`) directory.
/// Symlinks are never followed: `symlink_metadata` does not, and
/// `remove_dir_all` on Linux walks with `openat(O_NOFOLLOW)` and unlinks
/// links as entries (std fixed CVE-2022-21658 in 1.58.1).
fn remove_path(path: &Path, recursive: bool) -> Result<(), OpError> {
    let err = |e: io::Error| OpError::io("remove", path, &e);
    let meta = fs::symlink_metadata(path).map_err(err)?;
    if !meta.is_dir() {
        return fs::remove_file(path).map_err(err);
    }
    // A real directory (not a link) whose canonical path is the root:
    // `/`, `/.`, `/tmp/..`. Wiping the guest is not a file operation.
    if fs::canonicalize(path).is_ok_and(|c| c == Path::new("/")) {
        let message = format!("remove {}: refusing to remove the root", path.display());
        return Err(OpError::new(ErrorKind::BadRequest, message));
    }
    if recursive {
        fs::remove_dir_all(path).map_err(err)
    } else {
        fs::remove_dir(path).map_err(err)
    }
}

/// `Entries` batches sorted by name (bytewise), each entry `lstat`ed,
/// then `Done` with the count. Entries that vanish while listing are
/// skipped. The names are collected first (sorting needs them all); the
/// stats are taken batch by batch.
pub fn list(stream: &Stream, path: &str) {
    let names = match absolute(path).and_then(read_names) {
        Ok(names) => names,
        Err(e) => return answer(stream, Err(e)),
    };
    let dir = Path::new(path);
    let mut count = 0u64;
    for batch in names.chunks(MAX_ENTRIES_PER_FRAME) {
        let mut entries = Vec::with_capacity(batch.len());
        for name in batch {
            let full: PathBuf = dir.join(name);
            match lstat("list", &full) {
                Ok(stat) => entries.push(DirEntry {
                    name: String::from_utf8_lossy(name.as_bytes()).into_owned(),
                    stat,
                }),
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => return answer(stream, Err(e)),
            }
        }
        count += entries.len() as u64;
        if !entries.is_empty() && !send(stream, &AgentMessage::Entries(entries)) {
            return;
        }
    }
    send(stream, &AgentMessage::Done { count });
}

fn read_names(path: &Path) -> Result<Vec<OsString>, OpError> {
    let err = |e: io::Error| OpError::io("list", path, &e);
    let mut names = Vec::new();
    for entry in fs::read_dir(path).map_err(err)? {
        names.push(entry.map_err(err)?.file_name());
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_maps_to_kinds_and_messages_name_op_and_path() {
        let e = OpError::io(
            "write",
            Path::new("/etc/x"),
            &io::Error::from_raw_os_error(libc::EACCES),
        );
        assert_eq!(e.kind, ErrorKind::PermissionDenied);
        assert_eq!(e.message, "write /etc/x: Permission denied");
        for (errno, kind) in [
            (libc::ENOENT, ErrorKind::NotFound),
            (libc::EPERM, ErrorKind::PermissionDenied),
            (libc::EEXIST, ErrorKind::AlreadyExists),
            (libc::ENOTDIR, ErrorKind::NotADirectory),
            (libc::EISDIR, ErrorKind::IsADirectory),
            (libc::ENOTEMPTY, ErrorKind::DirectoryNotEmpty),
            (libc::EIO, ErrorKind::Failed),
        ] {
            assert_eq!(kind_of(&io::Error::from_raw_os_error(errno)), kind);
        }
    }

    #[test]
    fn only_absolute_paths_without_nul_are_accepted() {
        assert!(absolute("/a/b").is_ok());
        for bad in ["", "a/b", "./a", "/a\0b"] {
            let kind = absolute(bad).err().map(|e| e.kind);
            assert_eq!(kind, Some(ErrorKind::BadRequest), "{bad:?}");
        }
    }
}
