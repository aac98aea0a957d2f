//! The host ↔ agent protocol.
//!
//! Transport: one vsock stream per operation. The host connects to guest port
//! [`AGENT_PORT`]; the first frame it sends is a [`Hello`] carrying
//! [`PROTOCOL_VERSION`] and the request. One connection per operation keeps
//! concurrent operations independent (no head-of-line blocking, no shared
//! state to wedge) at the cost of one vsock handshake each, which the
//! user-space vsock device answers without leaving the worker process.
//!
//! When the agent is up it connects to the host on [`READY_PORT`] and sends
//! one [`AgentMessage::Ready`] frame, so the host learns readiness without
//! polling.
//!
//! Framing: a little-endian `u32` body length, then a postcard-encoded body.
//! A body longer than [`MAX_FRAME_BODY`] is a protocol violation: the reader
//! refuses it before allocating.

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// Bumped on every incompatible change. Host and agent refuse any other value.
pub const PROTOCOL_VERSION: u32 = 1;
/// Guest vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;
/// Host vsock port the agent connects to once to announce readiness.
pub const READY_PORT: u32 = 1025;
/// Largest frame body either side accepts.
pub const MAX_FRAME_BODY: usize = 1 << 20;
/// Largest data chunk carried in one stdout/stderr/stdin frame.
pub const MAX_CHUNK: usize = 64 * 1024;

/// First frame of every host → agent connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub request: Request,
}

impl Hello {
    pub fn new(request: Request) -> Self {
        Hello {
            version: PROTOCOL_VERSION,
            request,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Answered with [`AgentMessage::Pong`].
    Ping,
    /// Answered with [`AgentMessage::Version`].
    Version,
    /// Runs a process. The agent answers [`AgentMessage::Started`] (or
    /// [`AgentMessage::Exited`] with code 127 when the program cannot be
    /// started), then streams output, then [`AgentMessage::Exited`].
    /// The host may send [`HostMessage`] frames (stdin) after the hello.
    Exec(ExecRequest),
    /// Stops every process, syncs and unmounts filesystems, and powers the VM
    /// off (or reboots it). Answered with [`AgentMessage::ShuttingDown`].
    Shutdown { reboot: bool },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// Variables added to (or replacing) the agent's base environment.
    pub env: Vec<(String, String)>,
    /// Working directory; the root when unset.
    pub cwd: Option<String>,
    /// Whether the host will send stdin frames. When false the child's stdin
    /// is /dev/null.
    pub stdin: bool,
}

/// Frames the host sends after the hello, on an exec connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HostMessage {
    Stdin(Vec<u8>),
    /// End of stdin: the child's stdin is closed.
    CloseStdin,
}

/// Frames the agent sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    Ready {
        agent_version: String,
    },
    Pong,
    Version {
        protocol: u32,
        agent_version: String,
    },
    Started {
        pid: u32,
    },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The process ended: `code` when it exited, `signal` when a signal killed it.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    ShuttingDown,
    Error {
        kind: ErrorKind,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// A frame could not be decoded or came out of order.
    BadRequest,
    /// The request was understood but failed in the guest.
    Failed,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BODY}-byte limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Decode(#[from] postcard::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Encodes `msg` as one frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; 4];
    let body = postcard::to_extend(msg, Vec::new())?;
    if body.len() > MAX_FRAME_BODY {
        return Err(FrameError::TooLarge(body.len()));
    }
    buf[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&body);
    Ok(buf)
}

/// Writes one frame.
pub fn write_frame<T: Serialize, W: Write>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    w.write_all(&encode(msg)?)?;
    Ok(())
}

/// Reads one frame. [`FrameError::Closed`] when the stream ends cleanly
/// before a frame starts.
pub fn read_frame<T: for<'de> Deserialize<'de>, R: Read>(r: &mut R) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME_BODY {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    decode(&body)
}

/// Decodes a frame body (without its length prefix).
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FrameError> {
    Ok(postcard::from_bytes(body)?)
}

/// The power port: how the agent tells the VMM, just before the guest stops,
/// whether it is a clean poweroff, a reboot, or a boot that failed. Without
/// ACPI a guest poweroff only halts the CPUs, which the host cannot see.
pub mod power_port {
    /// x86 I/O port the agent writes one byte to.
    pub const PORT: u16 = 0x600;
    pub const POWER_OFF: u8 = 0;
    pub const REBOOT: u8 = 1;
    /// The agent hit a fatal error while booting (details on the console).
    pub const BOOT_FAILED: u8 = 2;
}

/// The `PATH[:ro]` syntax for disks, shared by the `supermachine` command
/// (`run --disk`) and the worker (`--disk`).
pub mod disk_spec {
    const READ_ONLY_SUFFIX: &str = ":ro";

    /// Splits a spec into the path and whether the disk is read-only.
    pub fn parse(spec: &str) -> (&str, bool) {
        match spec.strip_suffix(READ_ONLY_SUFFIX) {
            Some(path) => (path, true),
            None => (spec, false),
        }
    }

    pub fn format(path: &std::path::Path, read_only: bool) -> String {
        let suffix = if read_only { READ_ONLY_SUFFIX } else { "" };
        format!("{}{suffix}", path.display())
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn round_trips() {
            assert_eq!(super::parse("/a/b.img:ro"), ("/a/b.img", true));
            assert_eq!(super::parse("/a/b.img"), ("/a/b.img", false));
            let p = std::path::Path::new("/x.img");
            assert_eq!(super::parse(&super::format(p, true)), ("/x.img", true));
        }
    }
}

/// How a worker process ended, carried in its exit status so the supervisor
/// can tell a clean guest poweroff from a reboot, a kernel panic or a crash.
pub mod worker_exit {
    /// The guest powered off (normal end).
    pub const POWER_OFF: i32 = 0;
    /// The worker failed on the host side; the reason is on its stderr.
    pub const ERROR: i32 = 1;
    /// Bad worker arguments.
    pub const USAGE: i32 = 2;
    /// The guest rebooted.
    pub const REBOOT: i32 = 10;
    /// The guest kernel panicked; the serial log holds the trace.
    pub const PANIC: i32 = 11;
    /// The vCPU hit a fatal state (triple fault, KVM internal error).
    pub const CRASH: i32 = 12;
    /// The worker was told to stop (SIGTERM/SIGINT/SIGHUP, or its parent died).
    pub const STOPPED: i32 = 13;
    /// The guest agent could not boot the VM (e.g. the root filesystem did not mount).
    pub const BOOT_FAILED: i32 = 14;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips() {
        let hello = Hello::new(Request::Exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec![("A".into(), "b".into())],
            cwd: Some("/tmp".into()),
            stdin: true,
        }));
        let bytes = encode(&hello).unwrap();
        let back: Hello = read_frame(&mut &bytes[..]).unwrap();
        assert_eq!(back, hello);
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let bytes = (u32::MAX).to_le_bytes();
        let err = read_frame::<Hello, _>(&mut &bytes[..]).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)), "{err}");
    }

    #[test]
    fn garbage_body_is_a_decode_error() {
        let mut bytes = 3u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(
            read_frame::<Hello, _>(&mut &bytes[..]),
            Err(FrameError::Decode(_))
        ));
    }

    #[test]
    fn clean_eof_is_closed_and_truncation_is_io() {
        assert!(matches!(
            read_frame::<Hello, _>(&mut &[][..]),
            Err(FrameError::Closed)
        ));
        let mut bytes = encode(&AgentMessage::Pong).unwrap();
        bytes.push(0);
        bytes[0] = 9; // claims more body than present
        assert!(matches!(
            read_frame::<AgentMessage, _>(&mut &bytes[..]),
            Err(FrameError::Io(_))
        ));
    }
}
