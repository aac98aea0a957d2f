//! Arbitrary bytes through every frame decoder the agent and the host use.
//! Whatever the input, decoding must return (a message or an error): no
//! panic, no allocation beyond the frame limit, no hang.

#![no_main]

use libfuzzer_sys::fuzz_target;
use supermachine_protocol::{read_frame, AgentMessage, FrameError, Hello, HostMessage};

fuzz_target!(|data: &[u8]| {
    // The agent reads a Hello, then host messages, from one stream.
    let mut stream = data;
    if read_frame::<Hello, _>(&mut stream).is_ok() {
        loop {
            match read_frame::<HostMessage, _>(&mut stream) {
                Ok(_) | Err(FrameError::Decode(_)) => {}
                Err(_) => break,
            }
            if stream.is_empty() {
                break;
            }
        }
    }
    // The host reads agent messages.
    let mut stream = data;
    while !stream.is_empty() {
        if read_frame::<AgentMessage, _>(&mut stream).is_err() {
            break;
        }
    }
});
