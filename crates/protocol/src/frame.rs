//! Framing: a little-endian `u32` body length, then a postcard-encoded body.
//! A body longer than [`MAX_FRAME_BODY`] is a protocol violation: the reader
//! refuses it before allocating.

use crate::MAX_FRAME_BODY;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// Why a frame could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection before the frame began.
    #[error("connection closed")]
    Closed,
    /// The body is longer than [`MAX_FRAME_BODY`] (its length).
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BODY}-byte limit")]
    TooLarge(usize),
    /// The body is not a valid encoding of the expected message.
    #[error("malformed frame: {0}")]
    Decode(#[from] postcard::Error),
    /// Reading or writing the connection failed.
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
