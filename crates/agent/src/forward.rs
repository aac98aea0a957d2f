//! Published ports (`Request::ConnectTcp`): one host connection piped to a
//! TCP port on the guest's loopback.
//!
//! Two threads per connection, one per direction, each with a fixed buffer:
//! a slow reader on either side blocks the writer feeding it, and vsock
//! credit carries that back to the host, so memory stays flat whatever the
//! sizes. What each side does to its end is done to the other: end of
//! stream becomes a half-close, an error (a reset, a vanished host) closes
//! both ends, the guest's socket with a reset.

use crate::transport::Stream;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;
use supermachine_protocol::{write_frame, AgentMessage, ErrorKind};

/// Bytes copied at a time in each direction.
const CHUNK: usize = 64 * 1024;

/// A listener on the guest's loopback accepts at once (the kernel
/// completes the handshake); one that does not is stuck, and the host's
/// client should hear so rather than hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers a `ConnectTcp` request and, once connected, pipes the streams
/// until both directions are done.
pub fn connect_tcp(host: Stream, port: u16) {
    let tcp = match connect_loopback(port) {
        Ok(tcp) => tcp,
        Err(e) => {
            let kind = if e.kind() == io::ErrorKind::ConnectionRefused {
                ErrorKind::ConnectionRefused
            } else {
                ErrorKind::Failed
            };
            let message = format!("connecting to guest port {port}: {e}");
            let _ = write_frame(&mut &host, &AgentMessage::Error { kind, message });
            return;
        }
    };
    if write_frame(&mut &host, &AgentMessage::Done { count: 0 }).is_err() {
        return reset(&tcp);
    }
    pipe(host, tcp);
}

/// Connects to `port` on 127.0.0.1, or on ::1 when nothing listens on the
/// IPv4 loopback (a server bound to `::1` alone). The IPv4 error is the
/// one reported.
fn connect_loopback(port: u16) -> io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| e)
        }
        other => other,
    }
}

/// Copies both ways until both directions have ended.
fn pipe(host: Stream, tcp: TcpStream) {
    // Small requests and responses go out at once, as they would without
    // the forwarder in between.
    let _ = tcp.set_nodelay(true);
    let (host2, tcp2) = match (host.try_clone(), tcp.try_clone()) {
        (Ok(h), Ok(t)) => (h, t),
        _ => return reset(&tcp),
    };
    let to_host = std::thread::Builder::new()
        .name("fwd-out".into())
        .stack_size(64 * 1024)
        .spawn(move || guest_to_host(&tcp2, &host2));
    match to_host {
        Ok(to_host) => {
            host_to_guest(&host, &tcp);
            let _ = to_host.join();
        }
        Err(e) => {
            crate::log!("cannot start a port-forwarding thread: {e}");
            reset(&tcp);
        }
    }
}

/// Guest server → host client.
fn guest_to_host(tcp: &TcpStream, host: &Stream) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match (&*tcp).read(&mut buf) {
            Ok(0) => return host.shutdown_write(),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Reset by the guest's server: the host sees the whole
            // connection close.
            Err(_) => return abort(tcp, host),
        };
        if (&*host).write_all(&buf[..n]).is_err() {
            return abort(tcp, host);
        }
    }
}

/// Host client → guest server.
fn host_to_guest(host: &Stream, tcp: &TcpStream) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match (&*host).read(&mut buf) {
            Ok(0) => {
                let _ = tcp.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return abort(tcp, host),
        };
        if (&*tcp).write_all(&buf[..n]).is_err() {
            return abort(tcp, host);
        }
    }
}

/// Ends both sides at once: the guest's server gets a reset when the last
/// handle on its socket closes, the host sees its connection close, and a
/// thread blocked on either wakes.
fn abort(tcp: &TcpStream, host: &Stream) {
    reset(tcp);
    host.shutdown();
}

/// Makes the close of `tcp` a reset (SO_LINGER 0) and wakes every thread
/// blocked on it.
fn reset(tcp: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: sets an option from a live struct of the size given on a
    // socket we own; a failure only leaves the close a plain FIN.
    unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    let _ = tcp.shutdown(Shutdown::Both);
}
