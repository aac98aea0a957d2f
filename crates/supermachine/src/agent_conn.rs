//! One connection to the guest agent through the VM's vsock muxer socket.

use crate::error::Error;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use supermachine_protocol::{self as proto, AgentMessage, Hello, Request, AGENT_PORT};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AgentConn {
    stream: UnixStream,
}

/// Opens a stream to the agent and sends the hello carrying `request`.
pub fn connect(muxer: &Path, request: Request) -> Result<AgentConn, Error> {
    let mut stream = UnixStream::connect(muxer)
        .map_err(|e| Error::io(format!("connecting to {}", muxer.display()), e))?;
    // The guest answers a vsock connect at once if it is alive; don't wait
    // forever on one that is not.
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|e| Error::io("vsock connect", e))?;
    stream
        .write_all(format!("CONNECT {AGENT_PORT}\n").as_bytes())
        .map_err(|e| Error::io("vsock connect", e))?;
    // Read the "OK <port>" line byte by byte: anything after it belongs to the agent.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) if line.len() < 64 => line.push(byte[0]),
            Ok(_) => {
                return Err(Error::Protocol(
                    "the guest refused the vsock connection (is the agent running?)".into(),
                ))
            }
            Err(e) => return Err(Error::io("vsock connect", e)),
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(Error::Protocol(format!(
            "vsock muxer said {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    stream
        .set_read_timeout(None)
        .map_err(|e| Error::io("vsock connect", e))?;
    proto::write_frame(&mut stream, &Hello::new(request))?;
    Ok(AgentConn { stream })
}

impl AgentConn {
    /// Bounds how long [`Self::recv`] waits (`None`: forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        self.stream
            .set_read_timeout(timeout)
            .map_err(|e| Error::io("agent connection", e))
    }

    pub fn recv(&mut self) -> Result<AgentMessage, Error> {
        Ok(proto::read_frame(&mut self.stream)?)
    }

    /// Feeds `input` to the command's stdin on a thread of its own, in
    /// chunks, ending with `CloseStdin`. Writes block when the guest is slow
    /// to read (vsock credit), so memory stays bounded. The thread ends at
    /// end of input or when the connection goes away.
    pub fn pump_stdin(&self, mut input: Box<dyn Read + Send>) -> Result<(), Error> {
        let mut stream = self
            .stream
            .try_clone()
            .map_err(|e| Error::io("agent connection", e))?;
        std::thread::Builder::new()
            .name("exec-stdin".into())
            .spawn(move || {
                let mut buf = vec![0u8; proto::MAX_CHUNK];
                loop {
                    let msg = match input.read(&mut buf) {
                        Ok(0) => proto::HostMessage::CloseStdin,
                        Ok(n) => proto::HostMessage::Stdin(buf[..n].to_vec()),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        // An unreadable input ends it like end of input.
                        Err(_) => proto::HostMessage::CloseStdin,
                    };
                    let last = msg == proto::HostMessage::CloseStdin;
                    if proto::write_frame(&mut stream, &msg).is_err() || last {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io("starting the stdin thread", e))?;
        Ok(())
    }
}
