//! `ConnectTcp` (published ports) against a real agent process and TCP
//! servers on this host's loopback, standing in for the guest's.

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Agent;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::UnixStream;
use supermachine_protocol::{read_frame, AgentMessage, ErrorKind, Request};

/// Opens a `ConnectTcp` pipe to `port` and checks the agent's `Done`.
fn pipe_to(agent: &Agent, port: u16) -> UnixStream {
    let mut s = agent.request(Request::ConnectTcp { port });
    match read_frame(&mut s).expect("reply") {
        AgentMessage::Done { .. } => s,
        other => panic!("expected Done, got {other:?}"),
    }
}

/// A one-connection server running `serve` on it; its port.
fn server(serve: impl FnOnce(std::net::TcpStream) + Send + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        serve(stream);
    });
    port
}

/// A request sent at once, answered, and the server's close seen as the
/// end of the stream, as an HTTP/1.0 exchange goes.
#[test]
fn a_request_and_its_answer_pass_through() {
    let agent = Agent::start();
    let port = server(|mut s| {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut buf).expect("read request");
            assert!(n > 0, "the request ended early: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"GET / HTTP/1.0\r\n"), "{got:?}");
        s.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello")
            .expect("answer");
        s.shutdown(Shutdown::Write).expect("shutdown");
        // Like busybox httpd: read what is left, then close.
        let _ = s.read(&mut buf);
    });
    let mut s = pipe_to(&agent, port);
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("answer");
    assert_eq!(answer, "HTTP/1.0 200 OK\r\n\r\nhello");
}

/// The host's half-close reaches the server as end of stream, and the
/// answer it sends after that still arrives.
#[test]
fn a_half_close_reaches_the_server() {
    let agent = Agent::start();
    let port = server(|mut s| {
        let mut all = Vec::new();
        s.read_to_end(&mut all).expect("read to end");
        s.write_all(all.len().to_string().as_bytes())
            .expect("count");
    });
    let mut s = pipe_to(&agent, port);
    s.write_all(&vec![1u8; 3_000_000]).expect("upload");
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("answer");
    assert_eq!(answer, "3000000");
}

/// A port nothing listens on is refused with its own kind.
#[test]
fn a_closed_port_is_refused() {
    let agent = Agent::start();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut s = agent.request(Request::ConnectTcp { port });
    match read_frame(&mut s).expect("reply") {
        AgentMessage::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::ConnectionRefused, "{message}");
            assert!(message.contains(&port.to_string()), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A server that resets its connection ends the host's stream too (no
/// hang), and the agent keeps serving.
#[test]
fn a_reset_by_the_server_ends_the_stream() {
    let agent = Agent::start();
    let port = server(|s| {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: sets SO_LINGER from a live struct on a socket we own.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        drop(s);
    });
    // The reset can come before the agent's connect has returned (the
    // connect then fails with it: the host's client is closed the same
    // way) or after (the stream ends at once). Both are fine; a hang or
    // data from nowhere is not.
    let mut s = agent.request(Request::ConnectTcp { port });
    match read_frame(&mut s).expect("reply") {
        AgentMessage::Done { .. } => {
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            assert!(rest.is_empty(), "{rest:?}");
        }
        AgentMessage::Error { message, .. } => {
            assert!(message.contains("reset"), "{message}")
        }
        other => panic!("expected Done or a reset, got {other:?}"),
    }
    assert!(matches!(agent.ask(Request::Ping), AgentMessage::Pong));
}
