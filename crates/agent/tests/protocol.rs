//! Connection-level behaviour of the agent: requests, refusals, bad input.

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Agent;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};
use supermachine_protocol::{
    encode, read_frame, AgentMessage, ErrorKind, Hello, Request, PROTOCOL_VERSION,
};

#[test]
fn ping_is_answered_with_pong() {
    let agent = Agent::start();
    assert_eq!(agent.ask(Request::Ping), AgentMessage::Pong);
}

#[test]
fn version_reports_protocol_and_agent_version() {
    let agent = Agent::start();
    assert_eq!(
        agent.ask(Request::Version),
        AgentMessage::Version {
            protocol: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string()
        }
    );
}

#[test]
fn other_protocol_version_is_refused_with_both_numbers() {
    let agent = Agent::start();
    let mut s = agent.connect();
    let hello = Hello {
        version: PROTOCOL_VERSION + 98,
        request: Request::Ping,
    };
    s.write_all(&encode(&hello).expect("encode")).expect("send");
    match read_frame::<AgentMessage, _>(&mut s).expect("reply") {
        AgentMessage::Error {
            kind: ErrorKind::VersionMismatch,
            message,
        } => {
            let want = format!(
                "agent speaks {PROTOCOL_VERSION}, host sent {}",
                PROTOCOL_VERSION + 98
            );
            assert!(message.contains(&want), "{message}");
        }
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
    // ...and the connection is closed.
    assert!(read_frame::<AgentMessage, _>(&mut s).is_err());
}

fn expect_bad_request(agent: &Agent, bytes: &[u8], half_close: bool) {
    let mut s = agent.connect();
    s.write_all(bytes).expect("send garbage");
    if half_close {
        s.shutdown(Shutdown::Write).expect("half-close");
    }
    match read_frame::<AgentMessage, _>(&mut s) {
        Ok(AgentMessage::Error {
            kind: ErrorKind::BadRequest,
            ..
        }) => {}
        other => panic!("expected BadRequest for {bytes:02x?}, got {other:?}"),
    }
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "connection should close after BadRequest");
}

#[test]
fn malformed_frames_are_refused_and_the_agent_keeps_serving() {
    let mut agent = Agent::start();
    // Well-framed garbage body.
    let mut garbage = 5u32.to_le_bytes().to_vec();
    garbage.extend_from_slice(&[0xff, 0xfe, 0xfd, 0xfc, 0xfb]);
    expect_bad_request(&agent, &garbage, false);
    // Text: its first four bytes read as a ~1.8 GB length.
    expect_bad_request(&agent, b"GET / HTTP/1.1\r\n\r\n", false);
    // A frame cut short by the host.
    expect_bad_request(&agent, &[100, 0, 0, 0, 1, 2], true);
    // A valid frame of the wrong type (an agent message, not a hello).
    expect_bad_request(
        &agent,
        &encode(&AgentMessage::Stdout(vec![1; 40])).expect("encode"),
        false,
    );
    // A host that connects and leaves.
    drop(agent.connect());

    assert!(agent.alive(), "agent died on bad input");
    assert_eq!(agent.ask(Request::Ping), AgentMessage::Pong);
}

#[test]
fn shutdown_in_test_mode_answers_then_exits() {
    let mut agent = Agent::start();
    assert_eq!(
        agent.ask(Request::Shutdown { reboot: false }),
        AgentMessage::ShuttingDown
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = agent.process.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not exit after Shutdown"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn measure_spawn_times_each_run_and_refuses_too_many() {
    let agent = Agent::start();
    let reply = agent.ask(Request::MeasureSpawn {
        argv: vec!["true".into()],
        iterations: 5,
    });
    match reply {
        AgentMessage::SpawnTimes(times) => {
            assert_eq!(times.len(), 5);
            assert!(times.iter().all(|&ns| ns > 0), "{times:?}");
        }
        other => panic!("expected SpawnTimes, got {other:?}"),
    }
    let reply = agent.ask(Request::MeasureSpawn {
        argv: vec!["no-such-program-sm".into()],
        iterations: 1,
    });
    assert!(
        matches!(
            reply,
            AgentMessage::Error {
                kind: ErrorKind::NotFound,
                ..
            }
        ),
        "{reply:?}"
    );
    let reply = agent.ask(Request::MeasureSpawn {
        argv: vec!["true".into()],
        iterations: supermachine_protocol::MAX_SPAWN_PROBES + 1,
    });
    assert!(
        matches!(
            reply,
            AgentMessage::Error {
                kind: ErrorKind::BadRequest,
                ..
            }
        ),
        "{reply:?}"
    );
}
