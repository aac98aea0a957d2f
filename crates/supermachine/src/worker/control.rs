//! The client side of a worker's control socket: one request and one
//! reply per connection (see `supermachine_protocol::worker_control`).
//!
//! Every connection is checked to be served by this user or root
//! ([`check_peer`]) before anything is sent, and every failure is typed
//! ([`ControlError`]): a refusal carries the worker's [`FailureKind`], so
//! a caller tells "the TSC rate differs" from "the disks differ" without
//! reading the message.

use crate::error::Error;
use crate::worker::runtime::check_peer;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use supermachine_protocol::worker_control::{
    self, FailureKind, WorkerFailure, WorkerReply, WorkerRequest,
};
use tokio::io::AsyncWriteExt;

/// Why a request on a worker's control socket failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The control socket could not be reached.
    #[error("connecting to the VM's control socket {}: {source}", .socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The socket is served by another user's process.
    #[error(transparent)]
    Peer(Box<Error>),
    /// The request could not be sent.
    #[error("sending the {request} request: {detail}")]
    Send {
        /// Which request.
        request: &'static str,
        /// What failed.
        detail: String,
    },
    /// No reply came (the worker ended, or it timed out).
    #[error("the worker did not answer the {request} request: {detail}")]
    NoAnswer {
        /// Which request.
        request: &'static str,
        /// What failed.
        detail: String,
    },
    /// The worker said no, and why.
    #[error("{failure}")]
    Refused {
        /// Which request.
        request: &'static str,
        /// The worker's kind of failure and its message.
        failure: WorkerFailure,
    },
    /// The worker answered with a reply that does not fit the request.
    #[error("unexpected answer to a {request} request: {reply}")]
    Unexpected {
        /// Which request.
        request: &'static str,
        /// The reply.
        reply: String,
    },
    /// A standby worker ended before a restore was asked of it.
    #[error("the standby worker ended before it was used")]
    WorkerEnded,
}

impl ControlError {
    /// The worker's own kind of failure, if it refused.
    ///
    /// ```
    /// use supermachine::{ControlError, FailureKind, WorkerFailure};
    /// let e = ControlError::Refused {
    ///     request: "restore",
    ///     failure: WorkerFailure::new(FailureKind::TscRate, "the TSC runs at another rate"),
    /// };
    /// assert_eq!(e.failure_kind(), Some(FailureKind::TscRate));
    /// ```
    pub fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            ControlError::Refused { failure, .. } => Some(failure.kind),
            _ => None,
        }
    }
}

/// The control socket of the VM whose runtime directory is `vm_dir`.
pub(crate) fn socket(vm_dir: &Path) -> PathBuf {
    vm_dir.join(worker_control::SOCKET)
}

/// Connects to a worker's control socket and checks who serves it.
pub(crate) fn connect(socket: &Path) -> Result<UnixStream, ControlError> {
    let stream = UnixStream::connect(socket).map_err(|source| ControlError::Connect {
        socket: socket.to_path_buf(),
        source,
    })?;
    trusted(stream, socket)
}

/// `stream` if it is served by this user or root.
pub(crate) fn trusted(stream: UnixStream, socket: &Path) -> Result<UnixStream, ControlError> {
    check_peer(&stream, socket).map_err(|e| ControlError::Peer(Box::new(e)))?;
    Ok(stream)
}

/// What a reply means: a refusal (either form) is the error.
fn answer(reply: WorkerReply, request: &'static str) -> Result<WorkerReply, ControlError> {
    match reply {
        WorkerReply::Failed(message) => Err(ControlError::Refused {
            request,
            failure: WorkerFailure::new(FailureKind::Other, message),
        }),
        WorkerReply::Refused(failure) => Err(ControlError::Refused { request, failure }),
        reply => Ok(reply),
    }
}

/// Sends `request` on a connected control socket and waits up to
/// `timeout` for the reply (blocking). `name` names the request in errors.
pub(crate) fn ask(
    stream: &mut UnixStream,
    request: &WorkerRequest,
    timeout: Duration,
    name: &'static str,
) -> Result<WorkerReply, ControlError> {
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| ControlError::Send {
            request: name,
            detail: e.to_string(),
        })?;
    supermachine_protocol::write_frame(stream, request).map_err(|e| ControlError::Send {
        request: name,
        detail: e.to_string(),
    })?;
    let reply = supermachine_protocol::read_frame::<WorkerReply, _>(stream).map_err(|e| {
        ControlError::NoAnswer {
            request: name,
            detail: e.to_string(),
        }
    })?;
    answer(reply, name)
}

/// [`ask`] on a connected socket, without a blocking thread in between.
pub(crate) async fn ask_async(
    stream: UnixStream,
    request: &WorkerRequest,
    timeout: Duration,
    name: &'static str,
) -> Result<WorkerReply, ControlError> {
    let send = async {
        stream.set_nonblocking(true)?;
        let mut stream = tokio::net::UnixStream::from_std(stream)?;
        let bytes = supermachine_protocol::encode(request).map_err(std::io::Error::other)?;
        stream.write_all(&bytes).await?;
        Ok::<_, std::io::Error>(stream)
    };
    let mut stream = send.await.map_err(|e| ControlError::Send {
        request: name,
        detail: e.to_string(),
    })?;
    let reply = tokio::time::timeout(
        timeout,
        crate::vm::conn::read_frame::<WorkerReply, _>(&mut stream),
    )
    .await
    .map_err(|_| ControlError::NoAnswer {
        request: name,
        detail: format!("no answer within {} s", timeout.as_secs()),
    })?
    .map_err(|e| ControlError::NoAnswer {
        request: name,
        detail: e.to_string(),
    })?;
    answer(reply, name)
}

/// The error for a reply of the wrong kind.
pub(crate) fn unexpected(request: &'static str, reply: &WorkerReply) -> ControlError {
    ControlError::Unexpected {
        request,
        reply: format!("{reply:?}"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A socket at `name` in a directory anyone may write to, served by
    /// `nobody`: what another local user could plant where a VM's socket
    /// was expected. `None` unless the tests run as root.
    pub(crate) fn served_by_another_user(
        name: &str,
    ) -> Option<(
        tempfile::TempDir,
        PathBuf,
        supermachine_vmm::test_support::OtherUser,
    )> {
        use std::os::unix::fs::PermissionsExt;
        use supermachine_vmm::test_support::{can_switch_user, OtherUser, NOBODY};
        if !can_switch_user() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let path = dir.path().join(name);
        let server = OtherUser::serve(NOBODY, &path);
        Some((dir, path, server))
    }

    /// The library talks to no worker socket another user serves.
    #[test]
    fn a_control_socket_served_by_another_user_is_refused() {
        let Some((_dir, path, _server)) = served_by_another_user("control.sock") else {
            return;
        };
        let e = connect(&path).unwrap_err();
        assert!(
            matches!(&e, ControlError::Peer(inner)
                if matches!(**inner, Error::UntrustedPeer { uid: 65534, .. })),
            "{e}"
        );
    }

    /// A fake worker answering one request with `reply`.
    fn worker_answering(reply: WorkerReply) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = socket(dir.path());
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let _ = supermachine_protocol::read_frame::<WorkerRequest, _>(&mut stream);
            supermachine_protocol::write_frame(&mut stream, &reply).unwrap();
        });
        (dir, path)
    }

    /// The error a fake worker answering `reply` gives a request.
    fn refusal(reply: WorkerReply) -> ControlError {
        let (_dir, path) = worker_answering(reply);
        let mut stream = connect(&path).unwrap();
        let request = WorkerRequest::RecordHotPages;
        ask(&mut stream, &request, Duration::from_secs(10), "hot pages").unwrap_err()
    }

    #[test]
    fn a_refusal_keeps_the_workers_kind_and_an_old_one_is_other() {
        let e = refusal(WorkerReply::Refused(WorkerFailure::new(
            FailureKind::DiskMismatch,
            "disk 0 is 4096 bytes, the snapshot's was 8192",
        )));
        assert_eq!(e.failure_kind(), Some(FailureKind::DiskMismatch));
        assert!(e.to_string().contains("4096"), "{e}");
        let e = refusal(WorkerReply::Failed("no".into()));
        assert_eq!(e.failure_kind(), Some(FailureKind::Other));
    }

    #[test]
    fn a_missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = connect(&socket(dir.path())).unwrap_err();
        assert!(matches!(e, ControlError::Connect { .. }), "{e}");
    }
}
