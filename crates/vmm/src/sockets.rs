//! Unix sockets the worker serves and uses on the host.
//!
//! - Its listening sockets (the vsock muxer's, the control socket) are
//!   private: bound in the VM's 0700 directory and made 0600 right after,
//!   and every connection is checked on accept: only the worker's own
//!   user (and root) may talk to it ([`peer_is_trusted`]).
//! - Its outgoing connections (a guest's stream to a host port) never
//!   block the thread that makes them ([`connect_nonblocking`]).

use crate::files::PRIVATE_FILE;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Listens on `path`, replacing a stale socket left there. The socket is
/// made 0600; the directory holding it should be 0700
/// (`files::make_private_dir`), which also covers the moment between the
/// bind and the chmod.
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(PRIVATE_FILE))?;
    Ok(listener)
}

/// The user id of the process at the other end of a Unix socket.
pub fn peer_uid(fd: RawFd) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes at most `len` bytes into `cred`, a ucred
    // of exactly that size, and sets `len`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Whether the peer of an accepted connection may talk to this worker:
/// a process of the worker's own user, or root. Anything else (or a
/// socket whose peer cannot be told) may not.
pub fn peer_is_trusted(stream: &UnixStream) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    matches!(peer_uid(stream.as_raw_fd()), Ok(uid) if uid == me || uid == 0)
}

/// Connects to the Unix socket at `path` without ever waiting: on Linux
/// a non-blocking connect of a Unix stream socket completes at once, or
/// fails with `WouldBlock` when the listener's backlog is full (a blocking
/// one would wait for the listener to accept, as long as it likes). The
/// stream comes back non-blocking.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::UNIX, Type::STREAM.nonblocking().cloexec(), None)?;
    match socket.connect(&SockAddr::unix(path)?) {
        Ok(()) => Ok(UnixStream::from(std::os::fd::OwnedFd::from(socket))),
        // Not a Unix socket's answer, but if it ever came the stream would
        // be half made: refuse it like a full backlog.
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            Err(io::Error::from(io::ErrorKind::WouldBlock))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_bound_socket_is_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        std::fs::write(&path, "stale").unwrap();
        let _listener = bind_private(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
        assert_eq!(meta.mode() & 0o777, 0o600);
    }

    #[test]
    fn our_own_connections_are_trusted() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(peer_is_trusted(&a));
    }

    #[test]
    fn a_connect_to_nothing_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let err = connect_nonblocking(&dir.path().join("none")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let path = dir.path().join("l");
        let listener = UnixListener::bind(&path).unwrap();
        let stream = connect_nonblocking(&path).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(
            peer_uid(accepted.as_raw_fd()).unwrap(),
            // SAFETY: geteuid has no preconditions.
            unsafe { libc::geteuid() }
        );
        drop(stream);
    }
}
