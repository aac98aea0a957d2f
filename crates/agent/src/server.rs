//! Accepts host connections and answers one request per connection.

use crate::power::{self, Action};
use crate::transport::{Listener, Stream};
use crate::{exec, files, forward, probe, restore, write_file, AGENT_VERSION};
use std::time::Duration;
use supermachine_protocol::{
    read_frame, write_frame, AgentMessage, ErrorKind, FrameError, Hello, Request, PROTOCOL_VERSION,
};

/// What a `Shutdown` request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnShutdown {
    /// PID 1 in a VM: stop everything and power off or reboot.
    Power,
    /// Test mode: just exit the agent process (and let `Restored` change
    /// nothing).
    Exit,
}

/// Serves connections forever, one thread each.
pub fn serve(listener: Listener, on_shutdown: OnShutdown) -> ! {
    loop {
        let stream = match listener.accept() {
            Ok(stream) => stream,
            Err(e) => {
                // Out of fds or memory: back off instead of spinning.
                crate::log!("accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .stack_size(256 * 1024)
            .spawn(move || handle(stream, on_shutdown));
        if let Err(e) = spawned {
            // The closure (and with it the connection) is dropped: the host
            // sees the connection close and may retry.
            crate::log!("cannot start a connection thread: {e}");
        }
    }
}

fn handle(stream: Stream, on_shutdown: OnShutdown) {
    let hello: Hello = match read_frame(&mut &stream) {
        Ok(hello) => hello,
        // Closed before a frame, or the transport failed: nobody to answer.
        Err(FrameError::Closed) => return,
        Err(FrameError::Io(e)) if e.kind() != std::io::ErrorKind::UnexpectedEof => return,
        Err(e) => {
            return refuse(
                &stream,
                ErrorKind::BadRequest,
                format!("bad hello frame: {e}"),
            )
        }
    };
    if hello.version != PROTOCOL_VERSION {
        let message = format!(
            "protocol version mismatch: agent speaks {PROTOCOL_VERSION}, host sent {}",
            hello.version
        );
        return refuse(&stream, ErrorKind::VersionMismatch, message);
    }
    // Anything that could see the guest's identity waits for a fixup in
    // progress to end.
    if !matches!(
        hello.request,
        Request::Ping | Request::Version | Request::Restored(_)
    ) {
        restore::wait_for_fixup();
    }
    let reply = match hello.request {
        Request::Ping => AgentMessage::Pong,
        Request::Version => AgentMessage::Version {
            protocol: PROTOCOL_VERSION,
            agent_version: AGENT_VERSION.to_string(),
        },
        Request::Exec(req) => return exec::run(stream, req),
        Request::WriteFile(req) => return write_file::write_file(&stream, &req),
        Request::ReadFile { path } => return files::read_file(&stream, &path),
        Request::Stat { path } => return files::stat(&stream, &path),
        Request::Mkdir {
            path,
            mode,
            parents,
        } => return files::mkdir(&stream, &path, mode, parents),
        Request::Remove { path, recursive } => return files::remove(&stream, &path, recursive),
        Request::List { path } => return files::list(&stream, &path),
        // Only PID 1 in a VM changes the clock, RNG and identity: in test
        // mode they would be the test machine's own.
        Request::Restored(fixup) => {
            return restore::handle(&stream, &fixup, on_shutdown == OnShutdown::Power)
        }
        Request::MeasureSpawn { argv, iterations } => {
            return probe::measure_spawn(&stream, argv, iterations)
        }
        Request::ConnectTcp { port } => return forward::connect_tcp(stream, port),
        Request::Shutdown { reboot } => {
            let _ = write_frame(&mut &stream, &AgentMessage::ShuttingDown);
            stream.shutdown();
            drop(stream);
            match on_shutdown {
                OnShutdown::Power => power::run(if reboot {
                    Action::Reboot
                } else {
                    Action::PowerOff
                }),
                OnShutdown::Exit => std::process::exit(0),
            }
        }
    };
    let _ = write_frame(&mut &stream, &reply);
}

/// Sends an error and closes the connection (by dropping it).
fn refuse(stream: &Stream, kind: ErrorKind, message: String) {
    let _ = write_frame(&mut &*stream, &AgentMessage::Error { kind, message });
}
