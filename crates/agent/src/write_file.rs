//! `WriteFile`: `Data` chunks, then `End`, then `Done` once the file is
//! complete on disk.
//!
//! Create/truncate writes go to a temporary file in the target's directory
//! (same filesystem, so the final `rename` is atomic) that is renamed over
//! the target at `End`. Until then the target is untouched, and if the host
//! goes away or breaks the protocol first, the temporary file is removed.
//! A symlink at the target is replaced, not followed (as `mv` would);
//! appends open the path and so do follow it.
//!
//! Durability: the file is `fdatasync`ed before the rename and the
//! directory `fsync`ed after it, so `Done` means the data survives a guest
//! crash. On the tmpfs-backed root this costs nothing; on a virtio-blk
//! volume it costs a device flush or two per file, which is the price of
//! never seeing an empty or half-written file after a crash.
//!
//! Chunks are written as they arrive: memory stays at one frame.
//!
//! An error found before `End` (bad path, no space, ...) is answered at
//! once, and the rest of the file is then read and dropped up to `End`: a
//! host may send the whole file before it reads the answer.

use crate::files::{absolute, send, OpError};
use crate::transport::Stream;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use supermachine_protocol::{
    read_frame, AgentMessage, ErrorKind, FrameError, HostMessage, WriteFileRequest,
};

/// Serves one `WriteFile` request.
pub fn write_file(stream: &Stream, req: &WriteFileRequest) {
    match write(stream, req) {
        Ok(count) => {
            send(stream, &AgentMessage::Done { count });
        }
        Err(Failure::Gone) => {}
        Err(Failure::Protocol(e) | Failure::Late(e)) => {
            send(stream, &e.into_message());
        }
        Err(Failure::Early(e)) => {
            if send(stream, &e.into_message()) {
                drain(stream);
            }
        }
    }
}

/// Why a write did not complete.
enum Failure {
    /// The host went away: nobody to answer.
    Gone,
    /// The host sent a frame that does not belong: answer and close.
    Protocol(OpError),
    /// The write failed before `End`: answer, then read and drop the rest
    /// of the file, so a host that streams everything before reading the
    /// answer finishes cleanly instead of writing into a closed connection.
    Early(OpError),
    /// The write failed after `End` (owner, sync, rename).
    Late(OpError),
}

impl From<OpError> for Failure {
    fn from(e: OpError) -> Self {
        Failure::Early(e)
    }
}

/// Reads and drops frames up to `End` (or anything unexpected).
fn drain(stream: &Stream) {
    while let Ok(HostMessage::Data(_)) = read_frame::<HostMessage, _>(&mut &*stream) {}
}

/// The bytes written, or why not.
fn write(stream: &Stream, req: &WriteFileRequest) -> Result<u64, Failure> {
    let path = absolute(&req.path)?;
    let mode = req.mode & 0o7777;
    let err = |e: io::Error| OpError::io("write", path, &e);
    let late = |e: io::Error| Failure::Late(err(e));
    let (parent, name) = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => (parent, name),
        // `/`, or a path ending in `..`.
        _ => return Err(err(io::Error::from_raw_os_error(libc::EISDIR)).into()),
    };
    if req.create_parents {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(err)?;
    }
    // Refuse a directory before taking any data, rather than at `rename`.
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(err(io::Error::from_raw_os_error(libc::EISDIR)).into());
    }

    if req.append {
        let (mut file, created) = open_append(path, mode).map_err(err)?;
        let count = receive(stream, &mut file, path)?;
        set_owner(&file, req, created.then_some(mode)).map_err(late)?;
        file.sync_data().map_err(late)?;
        return Ok(count);
    }

    let mut temp = TempFile::create(parent, name).map_err(err)?;
    let count = receive(stream, &mut temp.file, path)?;
    set_owner(&temp.file, req, Some(mode)).map_err(late)?;
    temp.file.sync_data().map_err(late)?;
    temp.commit(path).map_err(late)?;
    // Makes the rename itself durable; a failure here (a filesystem
    // without directory fsync) does not undo the write.
    if let Ok(dir) = File::open(parent) {
        let _ = dir.sync_all();
    }
    Ok(count)
}

/// Copies `Data` frames into `file` until `End`.
fn receive(stream: &Stream, file: &mut File, path: &Path) -> Result<u64, Failure> {
    let mut count = 0u64;
    loop {
        match read_frame::<HostMessage, _>(&mut &*stream) {
            Ok(HostMessage::Data(data)) => {
                file.write_all(&data)
                    .map_err(|e| OpError::io("write", path, &e))?;
                count += data.len() as u64;
            }
            Ok(HostMessage::End) => return Ok(count),
            Ok(other) => {
                let name = match other {
                    HostMessage::Stdin(_) => "Stdin",
                    HostMessage::CloseStdin => "CloseStdin",
                    HostMessage::Signal(_) => "Signal",
                    _ => "Resize",
                };
                let message = format!("unexpected {name} frame during write");
                return Err(Failure::Protocol(OpError::new(
                    ErrorKind::BadRequest,
                    message,
                )));
            }
            Err(e @ (FrameError::Decode(_) | FrameError::TooLarge(_))) => {
                let message = format!("bad frame during write: {e}");
                return Err(Failure::Protocol(OpError::new(
                    ErrorKind::BadRequest,
                    message,
                )));
            }
            Err(FrameError::Closed | FrameError::Io(_)) => return Err(Failure::Gone),
        }
    }
}

/// Applies the requested owner, then `mode` (after `fchown`, which clears
/// setuid/setgid bits) when the file is new: exactly the requested bits,
/// whatever the agent's umask.
fn set_owner(file: &File, req: &WriteFileRequest, mode: Option<u32>) -> io::Result<()> {
    if req.uid.is_some() || req.gid.is_some() {
        std::os::unix::fs::fchown(file, req.uid, req.gid)?;
    }
    if let Some(mode) = mode {
        file.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Opens `path` for appending; creates it (then `true`) when missing.
fn open_append(path: &Path, mode: u32) -> io::Result<(File, bool)> {
    let new = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(mode)
        .open(path);
    match new {
        Ok(file) => Ok((file, true)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let file = OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_NOCTTY)
                .open(path)?;
            Ok((file, false))
        }
        Err(e) => Err(e),
    }
}

/// A temporary file removed on drop unless committed.
struct TempFile {
    file: File,
    path: PathBuf,
    committed: bool,
}

/// Distinguishes temporary files of concurrent writes in one agent.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl TempFile {
    /// Creates `.NAME.sm-PID-SEQ` next to the target, exclusively, mode
    /// 0600 until the real mode is applied.
    fn create(dir: &Path, name: &std::ffi::OsStr) -> io::Result<TempFile> {
        // Keep the whole name under NAME_MAX (255) for any target name.
        let stem = &name.as_bytes()[..name.len().min(200)];
        let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
        for _ in 0..16 {
            let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
            let mut temp = b".".to_vec();
            temp.extend_from_slice(stem);
            temp.extend_from_slice(format!(".sm-{}-{seq}", std::process::id()).as_bytes());
            let path = dir.join(OsString::from_vec(temp));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(TempFile {
                        file,
                        path,
                        committed: false,
                    })
                }
                // Left over from another agent run with the same pid.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    fn commit(&mut self, target: &Path) -> io::Result<()> {
        fs::rename(&self.path, target)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}
