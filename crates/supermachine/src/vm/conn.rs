//! One connection to the guest agent through the VM's vsock muxer socket,
//! with async framing (the protocol crate's framing is blocking).

use crate::error::Error;
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;
use std::time::Duration;
use supermachine_protocol::{
    self as proto, AgentMessage, Hello, HostMessage, Request, AGENT_PORT, MAX_FRAME_BODY,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// A live guest answers a vsock connect at once; a wedged one must not
/// hang the caller.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The muxer's reply line ("OK <port>") is never longer than this.
const MAX_MUXER_REPLY: u64 = 64;

/// Reading side of an agent connection.
pub(crate) struct ConnReader(BufReader<OwnedReadHalf>);
/// Writing side of an agent connection. Dropping it tells the agent the
/// host is gone: a running exec is killed.
pub(crate) struct ConnWriter(OwnedWriteHalf);

pub(crate) struct Conn {
    pub reader: ConnReader,
    pub writer: ConnWriter,
}

/// Bytes read from the connection at a time. Frames arrive back to back
/// (an exec's `Started` and `Exited` often in one vsock packet), and one
/// read that takes them all beats two per frame (header, then body).
const READ_BUFFER: usize = 16 * 1024;

/// Opens a stream to the agent and sends the hello carrying `request`.
///
/// The hello goes out with the `CONNECT` line, before the muxer's `OK`:
/// the muxer reads only the line and leaves the rest in the socket until
/// the guest has accepted, then passes it on. That saves a round trip
/// through this process on every request.
pub(crate) async fn connect(muxer: &Path, request: Request) -> Result<Conn, Error> {
    let mut opening = format!("CONNECT {AGENT_PORT}\n").into_bytes();
    opening.extend(proto::encode(&Hello::new(request))?);
    let handshake = async {
        let mut stream = UnixStream::connect(muxer)
            .await
            .map_err(|e| Error::io(format!("connecting to {}", muxer.display()), e))?;
        // The muxer must be our VM's worker, not someone else's process.
        crate::worker::runtime::check_peer(&stream, muxer)?;
        stream
            .write_all(&opening)
            .await
            .map_err(|e| Error::io("vsock connect", e))?;
        let (r, w) = stream.into_split();
        // Anything after the "OK <port>" line is the agent's, and stays in
        // the buffer for the first frame.
        let mut reader = BufReader::with_capacity(READ_BUFFER, r);
        let mut line = Vec::new();
        (&mut reader)
            .take(MAX_MUXER_REPLY)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| Error::io("vsock connect", e))?;
        if line.last() != Some(&b'\n') {
            return Err(Error::Protocol(if line.len() as u64 >= MAX_MUXER_REPLY {
                "overlong vsock muxer reply".into()
            } else {
                "the guest refused the vsock connection (is the agent running?)".into()
            }));
        }
        line.pop();
        if !line.starts_with(b"OK ") {
            return Err(Error::Protocol(format!(
                "vsock muxer said {:?}",
                String::from_utf8_lossy(&line)
            )));
        }
        Ok(Conn {
            reader: ConnReader(reader),
            writer: ConnWriter(w),
        })
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| {
            Error::Protocol(format!(
                "the guest did not answer a vsock connection within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            ))
        })?
}

impl Conn {
    pub async fn recv(&mut self) -> Result<AgentMessage, Error> {
        self.reader.recv().await
    }

    /// The raw stream halves, for a connection that stops being framed
    /// (a forwarded port): bytes already read past the last frame are in
    /// the reader's buffer.
    pub fn into_raw(self) -> (BufReader<OwnedReadHalf>, OwnedWriteHalf) {
        (self.reader.0, self.writer.0)
    }

    pub async fn send(&mut self, msg: &HostMessage) -> Result<(), Error> {
        self.writer.send(msg).await
    }
}

impl ConnReader {
    /// The next agent frame. An agent-side `Error` frame is returned as a
    /// message, not an error: callers decide what it means for them.
    pub async fn recv(&mut self) -> Result<AgentMessage, Error> {
        read_frame(&mut self.0).await
    }
}

impl ConnWriter {
    pub async fn send(&mut self, msg: &HostMessage) -> Result<(), Error> {
        self.send_frame(msg).await
    }

    async fn send_frame<T: Serialize>(&mut self, msg: &T) -> Result<(), Error> {
        let bytes = proto::encode(msg)?;
        self.0
            .write_all(&bytes)
            .await
            .map_err(|_| Error::ConnectionLost)
    }
}

/// One frame from an async stream (an agent connection, a worker's
/// control socket); a stream that fails or ends mid-way is a lost
/// connection.
pub(crate) async fn read_frame<T: DeserializeOwned, R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<T, Error> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.map_err(|e| {
        tracing::debug!("reading a frame header: {e}");
        Error::ConnectionLost
    })?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME_BODY {
        return Err(proto::FrameError::TooLarge(len).into());
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| {
        tracing::debug!("reading a {len}-byte frame: {e}");
        Error::ConnectionLost
    })?;
    Ok(proto::decode(&body)?)
}

/// Turns an unexpected answer into an error; `Error` frames become typed
/// agent errors.
pub(crate) fn unexpected(msg: AgentMessage, during: &str) -> Error {
    match msg {
        AgentMessage::Error { kind, message } => Error::Agent { kind, message },
        other => Error::Protocol(format!("unexpected {other:?} during {during}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Nothing is sent to a vsock muxer socket another user serves: the
    /// hello could carry a command line and its environment.
    #[tokio::test]
    async fn a_muxer_socket_served_by_another_user_is_refused() {
        let Some((_dir, path, _server)) =
            crate::worker::control::tests::served_by_another_user("vsock.sock")
        else {
            return;
        };
        let Err(e) = connect(&path, Request::Ping).await else {
            panic!("connected to a socket another user serves");
        };
        assert!(matches!(&e, Error::UntrustedPeer { uid: 65534, .. }), "{e}");
    }

    /// `connect` against a fake muxer that answers `reply` (in one write),
    /// ends its side, and reads the host's hello if one comes.
    fn connect_to_muxer_saying(reply: impl AsRef<[u8]> + Send + 'static) -> Result<Conn, Error> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vsock.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let muxer = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut line = [0u8; 13];
            stream.read_exact(&mut line).expect("CONNECT line");
            stream.write_all(reply.as_ref()).expect("reply");
            stream
                .shutdown(std::net::Shutdown::Write)
                .expect("shutdown");
            let _ = proto::read_frame::<Hello, _>(&mut stream);
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let conn = runtime.block_on(connect(&path, Request::Ping));
        muxer.join().expect("muxer");
        conn
    }

    fn protocol_error(result: Result<Conn, Error>) -> String {
        match result {
            Err(Error::Protocol(message)) => message,
            Err(other) => panic!("expected a protocol error, got {other}"),
            Ok(_) => panic!("expected a protocol error, got a connection"),
        }
    }

    #[test]
    fn the_muxer_reply_line_is_read_and_what_follows_kept_for_the_agent() {
        // The agent's first frame arrives in the same read as the line.
        let mut reply = b"OK 1024\n".to_vec();
        reply.extend(proto::encode(&AgentMessage::Pong).expect("encode"));
        let mut conn = connect_to_muxer_saying(reply).expect("connected");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        assert_eq!(
            runtime.block_on(conn.recv()).expect("frame"),
            AgentMessage::Pong
        );
    }

    #[test]
    fn a_closed_or_overlong_muxer_reply_is_named() {
        assert!(protocol_error(connect_to_muxer_saying(b"".as_slice())).contains("refused"));
        assert!(protocol_error(connect_to_muxer_saying(b"OK 10".as_slice())).contains("refused"));
        assert!(protocol_error(connect_to_muxer_saying([b'x'; 64])).contains("overlong"));
        assert!(protocol_error(connect_to_muxer_saying(b"NO 1024\n".as_slice())).contains("said"));
    }
}
