//! One connection to the guest agent through the VM's vsock muxer socket,
//! with async framing (the protocol crate's framing is blocking).

use crate::error::Error;
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;
use std::time::Duration;
use supermachine_protocol::{
    self as proto, AgentMessage, Hello, HostMessage, Request, AGENT_PORT, MAX_FRAME_BODY,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// A live guest answers a vsock connect at once; a wedged one must not
/// hang the caller.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reading side of an agent connection.
pub(crate) struct ConnReader(OwnedReadHalf);
/// Writing side of an agent connection. Dropping it tells the agent the
/// host is gone: a running exec is killed.
pub(crate) struct ConnWriter(OwnedWriteHalf);

pub(crate) struct Conn {
    pub reader: ConnReader,
    pub writer: ConnWriter,
}

/// Opens a stream to the agent and sends the hello carrying `request`.
pub(crate) async fn connect(muxer: &Path, request: Request) -> Result<Conn, Error> {
    let handshake = async {
        let mut stream = UnixStream::connect(muxer)
            .await
            .map_err(|e| Error::io(format!("connecting to {}", muxer.display()), e))?;
        stream
            .write_all(format!("CONNECT {AGENT_PORT}\n").as_bytes())
            .await
            .map_err(|e| Error::io("vsock connect", e))?;
        // Byte by byte: anything after the "OK <port>" line is the agent's.
        let mut line = Vec::new();
        loop {
            let byte = match stream.read_u8().await {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(Error::Protocol(
                        "the guest refused the vsock connection (is the agent running?)".into(),
                    ))
                }
                Err(e) => return Err(Error::io("vsock connect", e)),
            };
            if byte == b'\n' {
                break;
            }
            if line.len() >= 64 {
                return Err(Error::Protocol("overlong vsock muxer reply".into()));
            }
            line.push(byte);
        }
        if !line.starts_with(b"OK ") {
            return Err(Error::Protocol(format!(
                "vsock muxer said {:?}",
                String::from_utf8_lossy(&line)
            )));
        }
        Ok(stream)
    };
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| {
            Error::Protocol(format!(
                "the guest did not answer a vsock connection within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            ))
        })??;
    let (r, w) = stream.into_split();
    let mut conn = Conn {
        reader: ConnReader(r),
        writer: ConnWriter(w),
    };
    conn.writer.send_frame(&Hello::new(request)).await?;
    Ok(conn)
}

impl Conn {
    pub async fn recv(&mut self) -> Result<AgentMessage, Error> {
        self.reader.recv().await
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

async fn read_frame<T: DeserializeOwned>(r: &mut OwnedReadHalf) -> Result<T, Error> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.map_err(|e| {
        tracing::debug!("agent connection: reading a frame header: {e}");
        Error::ConnectionLost
    })?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME_BODY {
        return Err(proto::FrameError::TooLarge(len).into());
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| {
        tracing::debug!("agent connection: reading a {len}-byte frame: {e}");
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
