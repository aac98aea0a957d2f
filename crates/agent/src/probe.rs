//! `MeasureSpawn`: how long the guest takes to start a process and see it
//! end, timed inside the agent with the same spawn path an exec uses. The
//! exec benchmark subtracts this (and a bare ping) from a full exec round
//! trip to show what the protocol and the host add.

use crate::exec::spawn::{self, SpawnError};
use crate::transport::Stream;
use std::time::Instant;
use supermachine_protocol::{write_frame, AgentMessage, ErrorKind, ExecRequest, MAX_SPAWN_PROBES};

/// Answers a `MeasureSpawn` request: starts `argv` `iterations` times, one
/// after the other, and sends the nanoseconds from spawn to reaped for
/// each run in one `SpawnTimes` frame, or an `Error` frame (more than
/// `MAX_SPAWN_PROBES` iterations, or a run that failed). Blocks until
/// every run has exited.
pub fn measure_spawn(stream: &Stream, argv: Vec<String>, iterations: u32) {
    let reply = match measure(argv, iterations) {
        Ok(times) => AgentMessage::SpawnTimes(times),
        Err((kind, message)) => AgentMessage::Error { kind, message },
    };
    let _ = write_frame(&mut &*stream, &reply);
}

fn measure(argv: Vec<String>, iterations: u32) -> Result<Vec<u64>, (ErrorKind, String)> {
    if iterations > MAX_SPAWN_PROBES {
        return Err((
            ErrorKind::BadRequest,
            format!("at most {MAX_SPAWN_PROBES} iterations"),
        ));
    }
    let req = ExecRequest {
        argv,
        ..ExecRequest::default()
    };
    let mut times = Vec::with_capacity(iterations as usize);
    for _ in 0..iterations {
        let start = Instant::now();
        let child = spawn::spawn(&req).map_err(|e| match e {
            SpawnError::NotFound => (ErrorKind::NotFound, "program not found".to_string()),
            SpawnError::NotExecutable(why) => (ErrorKind::PermissionDenied, why),
            SpawnError::Refused(kind, message) => (kind, message),
        })?;
        // The reaper holds the sender until the child is reaped.
        if child.status.recv().is_err() {
            return Err((ErrorKind::Failed, "lost the child's exit status".into()));
        }
        times.push(start.elapsed().as_nanos() as u64);
    }
    Ok(times)
}
