//! Published ports: a host TCP listener whose connections are each carried
//! over vsock to the agent, which connects to the guest port on the
//! guest's loopback (see `Request::ConnectTcp`).
//!
//! The guest needs no network for this. Every byte is copied through fixed
//! buffers, and each side only reads while the other takes what it wrote,
//! so a slow reader anywhere slows the writer instead of growing memory.
//! Half-closes pass through as half-closes; a failure on either side ends
//! the connection on both, the host client's with a reset.

use super::conn::{self, Conn};
use crate::error::Error;
use crate::worker::ExitWatch;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use supermachine_protocol::{AgentMessage, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Connections one forwarder carries at once; further clients wait in the
/// listen backlog until one ends (each costs the guest two threads and a
/// vsock stream).
pub const MAX_FORWARDED_CONNECTIONS: usize = 1024;

/// Connections one forwarder asks the guest for at once. The worker's
/// muxer refuses host connections past 64 waiting for the guest (shared
/// with execs and file transfers), so a burst of clients queues here
/// instead of being refused there.
const MAX_OPENING: usize = 16;

/// Bytes copied at a time in each direction of a connection.
const CHUNK: usize = 64 * 1024;

/// Where a published port listens on the host.
///
/// ```
/// let any_free_port = supermachine::ExposeOptions::default();
/// assert_eq!(any_free_port.host.to_string(), "127.0.0.1");
/// assert_eq!(any_free_port.host_port, 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExposeOptions {
    /// The host address to listen on: the loopback unless asked (another
    /// address makes the guest's service reachable from wherever that
    /// address is).
    pub host: IpAddr,
    /// The host port; 0 picks a free one ([`TcpForwarder::local_addr`]
    /// says which).
    pub host_port: u16,
}

impl Default for ExposeOptions {
    fn default() -> Self {
        ExposeOptions {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            host_port: 0,
        }
    }
}

/// A host TCP port forwarded to a guest port, made by
/// [`crate::Vm::expose_tcp`]. Closing it (or dropping it) stops listening
/// and ends the connections it carries.
#[derive(Debug)]
pub struct TcpForwarder {
    local_addr: SocketAddr,
    guest_port: u16,
    /// The accept loop; `None` once closed.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TcpForwarder {
    /// Starts listening on `options` and forwarding every connection to
    /// `guest_port` through the muxer socket at `muxer`.
    pub(crate) async fn start(
        muxer: PathBuf,
        guest_port: u16,
        options: ExposeOptions,
        vm_ended: Option<ExitWatch>,
    ) -> Result<TcpForwarder, Error> {
        if guest_port == 0 {
            return Err(Error::InvalidArgument(
                "the guest port to expose must not be 0".into(),
            ));
        }
        let bind = SocketAddr::new(options.host, options.host_port);
        let listener = TcpListener::bind(bind).await.map_err(|e| {
            Error::io(
                format!("listening on {bind} for guest port {guest_port}"),
                e,
            )
        })?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::io("the forwarder's address", e))?;
        let task = tokio::spawn(async move {
            let vm_ended = async {
                match vm_ended {
                    Some(watch) => watch.ended().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = accept_loop(listener, muxer, guest_port) => {}
                () = vm_ended => {}
            }
        });
        Ok(TcpForwarder {
            local_addr,
            guest_port,
            task: Some(task),
        })
    }

    /// The host address and port it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The host port it listens on.
    pub fn host_port(&self) -> u16 {
        self.local_addr.port()
    }

    /// The guest port it forwards to.
    pub fn guest_port(&self) -> u16 {
        self.guest_port
    }

    /// Stops listening (the port is free when this returns) and ends every
    /// connection it carries.
    pub async fn close(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for TcpForwarder {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Accepts clients until dropped (the forwarder closed, the VM ended);
/// that drops the listener and, with the join set, every connection task.
async fn accept_loop(listener: TcpListener, muxer: PathBuf, guest_port: u16) {
    let muxer = Arc::new(muxer);
    let slots = Arc::new(Semaphore::new(MAX_FORWARDED_CONNECTIONS));
    let opening = Arc::new(Semaphore::new(MAX_OPENING));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of fds or memory: back off instead of spinning.
                tracing::warn!("accepting a connection for guest port {guest_port}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (muxer, opening) = (muxer.clone(), opening.clone());
        connections.spawn(async move {
            carry(client, &muxer, guest_port, &opening).await;
            drop(slot);
        });
    }
}

/// Carries one client connection to the guest port until both directions
/// are done, or resets it.
async fn carry(client: TcpStream, muxer: &std::path::Path, guest_port: u16, opening: &Semaphore) {
    let _ = client.set_nodelay(true);
    let opened = match opening.acquire().await {
        Ok(_permit) => open_guest_port(muxer, guest_port).await,
        Err(_) => return reset(client),
    };
    let conn = match opened {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!("forwarding to guest port {guest_port}: {e}");
            return reset(client);
        }
    };
    let (mut guest_r, mut guest_w) = conn.into_raw();
    let (mut client_r, mut client_w) = client.into_split();
    let up = pump(&mut client_r, &mut guest_w);
    let down = pump(&mut guest_r, &mut client_w);
    if let Err(e) = tokio::try_join!(up, down) {
        tracing::debug!("a connection to guest port {guest_port} failed: {e}");
        if let Ok(client) = client_r.reunite(client_w) {
            reset(client);
        }
    }
}

/// Longest the agent may take to say whether it reached the guest port
/// (it gives up on its own connect after 10 s): a guest that never answers
/// must not hold one of the [`MAX_OPENING`] slots for ever.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks the agent to connect to `guest_port`; the connection is then a
/// raw byte stream to it.
async fn open_guest_port(muxer: &std::path::Path, guest_port: u16) -> Result<Conn, Error> {
    let open = async {
        let mut conn = conn::connect(muxer, Request::ConnectTcp { port: guest_port }).await?;
        match conn.recv().await? {
            AgentMessage::Done { .. } => Ok(conn),
            other => Err(conn::unexpected(other, "a port connection")),
        }
    };
    tokio::time::timeout(OPEN_TIMEOUT, open)
        .await
        .map_err(|_| {
            Error::Protocol(format!(
                "the guest did not answer a connection to port {guest_port} within {} s",
                OPEN_TIMEOUT.as_secs()
            ))
        })?
}

/// Copies `from` to `to` until `from` ends, then half-closes `to`.
async fn pump<R, W>(from: &mut R, to: &mut W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Closes a client connection with a reset (SO_LINGER 0), so it sees the
/// failure instead of a clean end of stream.
fn reset(client: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: sets an option from a live struct of the size given on a
    // socket we own; a failure only leaves the close a plain FIN.
    unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    drop(client);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use supermachine_protocol::{self as proto, ErrorKind, Hello};

    /// The guest port the fake agent refuses, as one with no listener.
    const CLOSED_PORT: u16 = 9;

    /// A fake worker muxer and agent: answers `CONNECT` and the
    /// `ConnectTcp` hello as the real ones do, then echoes every byte
    /// back and half-closes when the host does.
    fn fake_guest() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                std::thread::spawn(move || fake_agent(stream));
            }
        });
        (dir, path)
    }

    fn fake_agent(mut stream: std::os::unix::net::UnixStream) {
        let mut line = Vec::new();
        let mut byte = [0u8];
        while byte[0] != b'\n' {
            if stream.read_exact(&mut byte).is_err() {
                return;
            }
            line.push(byte[0]);
        }
        assert!(line.starts_with(b"CONNECT "), "{line:?}");
        let Ok(hello) = proto::read_frame::<Hello, _>(&mut stream) else {
            return;
        };
        let Request::ConnectTcp { port } = hello.request else {
            panic!("expected ConnectTcp, got {:?}", hello.request);
        };
        stream.write_all(b"OK 1\n").expect("muxer reply");
        if port == CLOSED_PORT {
            let refusal = AgentMessage::Error {
                kind: ErrorKind::ConnectionRefused,
                message: "connection refused".into(),
            };
            let _ = proto::write_frame(&mut stream, &refusal);
            return;
        }
        proto::write_frame(&mut stream, &AgentMessage::Done { count: 0 }).expect("Done");
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }

    async fn forwarder(muxer: &std::path::Path, guest_port: u16) -> TcpForwarder {
        TcpForwarder::start(
            muxer.to_path_buf(),
            guest_port,
            ExposeOptions::default(),
            None,
        )
        .await
        .expect("forwarder")
    }

    /// Bytes go both ways intact, and the host's half-close reaches the
    /// guest side while the answer still comes back.
    #[tokio::test]
    async fn bytes_and_a_half_close_pass_through() {
        let (_dir, muxer) = fake_guest();
        let fwd = forwarder(&muxer, 8080).await;
        assert!(fwd.local_addr().ip().is_loopback(), "{}", fwd.local_addr());
        assert_eq!(fwd.guest_port(), 8080);
        let mut client = TcpStream::connect(fwd.local_addr()).await.expect("connect");
        let sent: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let (mut r, mut w) = client.split();
        let write = async {
            w.write_all(&sent).await.expect("write");
            // The echo ends only after the guest side sees this.
            w.shutdown().await.expect("half-close");
        };
        let mut echoed = Vec::new();
        let read = r.read_to_end(&mut echoed);
        let ((), n) = tokio::join!(write, read);
        assert_eq!(n.expect("read"), sent.len());
        assert!(echoed == sent, "the echo differs from what was sent");
    }

    /// A guest port nothing listens on resets the client's connection.
    #[tokio::test]
    async fn a_refused_guest_port_resets_the_client() {
        let (_dir, muxer) = fake_guest();
        let fwd = forwarder(&muxer, CLOSED_PORT).await;
        let mut client = TcpStream::connect(fwd.local_addr()).await.expect("connect");
        let mut buf = [0u8; 16];
        let got = client.read(&mut buf).await;
        let e = got.expect_err("a refused connection must not read as a clean end");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }

    /// Closing the forwarder frees its port and ends its open connections.
    #[tokio::test]
    async fn close_frees_the_port_and_ends_open_connections() {
        let (_dir, muxer) = fake_guest();
        let fwd = forwarder(&muxer, 8080).await;
        let addr = fwd.local_addr();
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).await.expect("echo");
        assert_eq!(&buf, b"ping");
        fwd.close().await;
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest))
            .await
            .expect("an open connection outlived its forwarder's close");
        assert!(rest.is_empty(), "{rest:?}");
        drop(ended);
        std::net::TcpListener::bind(addr).expect("the port is free after close");
    }

    /// A host port in use is an error naming it; so is guest port 0.
    #[tokio::test]
    async fn a_taken_host_port_and_guest_port_zero_are_refused() {
        let (_dir, muxer) = fake_guest();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let options = ExposeOptions {
            host_port: taken.local_addr().expect("addr").port(),
            ..ExposeOptions::default()
        };
        let e = TcpForwarder::start(muxer.clone(), 8080, options, None)
            .await
            .expect_err("bound a port in use");
        let Error::Io { what, source } = &e else {
            panic!("{e}")
        };
        assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse, "{e}");
        assert!(what.contains(&options.host_port.to_string()), "{e}");
        let e = TcpForwarder::start(muxer, 0, ExposeOptions::default(), None)
            .await
            .expect_err("guest port 0");
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }
}
