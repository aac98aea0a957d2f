//! Stream sockets as plain fds: AF_VSOCK in a VM, AF_UNIX in tests.
//!
//! Both families behave the same for a byte stream, so the server sees one
//! type and the tests exercise the code the VM runs.

use std::io::{self, Read, Write};
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

use crate::sys::cvt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

/// A connected stream socket.
#[derive(Debug)]
pub struct Stream(OwnedFd);

impl Stream {
    /// A second handle on the same connection, so one thread can read
    /// while others write.
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(Stream(self.0.try_clone()?))
    }

    /// Shuts down both directions of the connection (every handle on it),
    /// which also wakes a thread blocked reading it.
    pub fn shutdown(&self) {
        // SAFETY: plain syscall on an fd we own; failure (already shut,
        // peer gone) leaves nothing to do.
        unsafe { libc::shutdown(self.0.as_raw_fd(), libc::SHUT_RDWR) };
    }

    /// Tells the peer this side will send nothing more (a half-close); the
    /// other direction stays open.
    pub fn shutdown_write(&self) {
        // SAFETY: plain syscall on an fd we own; failure (already shut,
        // peer gone) leaves nothing to do.
        unsafe { libc::shutdown(self.0.as_raw_fd(), libc::SHUT_WR) };
    }
}

#[cfg(test)]
impl From<std::os::unix::net::UnixStream> for Stream {
    fn from(stream: std::os::unix::net::UnixStream) -> Stream {
        Stream(stream.into())
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reads into a live buffer of the given length.
        let n = cvt(unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })?;
        Ok(n as usize)
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send_adaptively(self.0.as_raw_fd(), buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A listening stream socket.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    /// A vsock listener accepts only the host (CID 2): any process in the
    /// guest could otherwise connect to the agent's port over vsock
    /// loopback and have it run commands as root.
    host_only: bool,
}

/// Whether a vsock peer is the host. The host always connects from
/// [`libc::VMADDR_CID_HOST`]; the guest's own CID, the local CID (1) and
/// anything else are processes inside the guest (or another VM).
pub fn is_host_peer(peer: &libc::sockaddr_vm, len: libc::socklen_t) -> bool {
    len as usize >= mem::size_of::<libc::sockaddr_vm>()
        && i32::from(peer.svm_family) == libc::AF_VSOCK
        && peer.svm_cid == libc::VMADDR_CID_HOST
}

impl Listener {
    /// Listens on `port` of every local CID.
    pub fn vsock(port: u32) -> io::Result<Listener> {
        let fd = vsock_socket()?;
        let addr = vsock_addr(libc::VMADDR_CID_ANY, port);
        // SAFETY: `addr` is a valid sockaddr_vm of the given length.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_vm).cast(),
                mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        })?;
        // SAFETY: plain syscall on our fd.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), 128) })?;
        Ok(Listener {
            fd,
            host_only: true,
        })
    }

    /// Listens on a Unix socket path (test mode; the socket file's
    /// permissions decide who may connect).
    pub fn unix(path: &Path) -> io::Result<Listener> {
        Ok(Listener {
            fd: UnixListener::bind(path)?.into(),
            host_only: false,
        })
    }

    /// Waits for the next connection (on vsock: the next one from the
    /// host; others are closed at once).
    pub fn accept(&self) -> io::Result<Stream> {
        loop {
            // SAFETY: sockaddr_vm is plain old data; zero is a valid value.
            let mut peer: libc::sockaddr_vm = unsafe { mem::zeroed() };
            let mut len = mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
            // SAFETY: the address buffer is a live sockaddr_vm and `len`
            // its size; for a Unix socket the kernel truncates to `len`.
            let ret = unsafe {
                libc::accept4(
                    self.fd.as_raw_fd(),
                    (&mut peer as *mut libc::sockaddr_vm).cast(),
                    &mut len,
                    libc::SOCK_CLOEXEC,
                )
            };
            match cvt(ret) {
                Ok(fd) => {
                    // SAFETY: accept4 returned a new fd that nothing else owns.
                    let stream = Stream(unsafe { OwnedFd::from_raw_fd(fd) });
                    if self.host_only && !is_host_peer(&peer, len) {
                        crate::log!(
                            "refused a vsock connection from CID {} (only the host may connect)",
                            peer.svm_cid
                        );
                        continue;
                    }
                    return Ok(stream);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Connects to `port` on vsock context `cid`.
pub fn connect_vsock(cid: u32, port: u32) -> io::Result<Stream> {
    let fd = vsock_socket()?;
    let addr = vsock_addr(cid, port);
    // SAFETY: `addr` is a valid sockaddr_vm of the given length.
    cvt(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    })?;
    Ok(Stream(fd))
}

fn vsock_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned fd is owned below.
    let fd: RawFd =
        cvt(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: socket returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all-zero is its documented
    // initial state (reserved and padding fields must be zero).
    let mut addr: libc::sockaddr_vm = unsafe { mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = cid;
    addr
}

/// Largest single send(2) attempted. Linux 6.1's virtio-vsock copies each
/// send into one linear kernel buffer: the payload (up to 64 KiB) plus its
/// header and skb bookkeeping. 64 KiB payloads need order-5 allocations,
/// which the page allocator gives up on (ENOMEM) instead of reclaiming when
/// guest memory is fragmented — as it is after streaming a file larger than
/// guest RAM through the page cache. [`MAX_SEND`] keeps every buffer within
/// order 3 (32 KiB), the largest size the kernel reclaims for. Should a send
/// still fail with ENOMEM, it is retried at half the size, down to
/// [`MIN_SEND`], with a short backoff at the bottom; sizes grow back after a
/// run of successful sends. Guest-wide, because memory pressure is.
static SEND_LIMIT: AtomicUsize = AtomicUsize::new(MAX_SEND);
static SENDS_SINCE_SHRINK: AtomicU32 = AtomicU32::new(0);
static SHRINK_REPORTED: AtomicBool = AtomicBool::new(false);
/// 32 KiB less room for the packet header and `skb_shared_info`.
const MAX_SEND: usize = 31 * 1024;
const MIN_SEND: usize = 4 * 1024;
/// Successful sends at a reduced size before trying twice the size again.
const GROW_AFTER: u32 = 1024;
/// Backoff while even the smallest send finds no memory: 1, 2, 4 … 64 ms,
/// about 10 s in all before the error is returned.
const ENOMEM_RETRIES: u32 = 160;

fn send_adaptively(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    let mut waits = 0;
    loop {
        let limit = SEND_LIMIT.load(Ordering::Relaxed);
        let len = buf.len().min(limit);
        // MSG_NOSIGNAL: a vanished peer must be an error, not a SIGPIPE.
        // SAFETY: sends from a live buffer of at most its length.
        let sent = cvt(unsafe { libc::send(fd, buf.as_ptr().cast(), len, libc::MSG_NOSIGNAL) });
        match sent {
            Ok(n) => {
                if limit < MAX_SEND
                    && SENDS_SINCE_SHRINK.fetch_add(1, Ordering::Relaxed) >= GROW_AFTER
                {
                    SENDS_SINCE_SHRINK.store(0, Ordering::Relaxed);
                    SEND_LIMIT.store((limit * 2).min(MAX_SEND), Ordering::Relaxed);
                }
                return Ok(n as usize);
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOMEM | libc::ENOBUFS)) => {
                SENDS_SINCE_SHRINK.store(0, Ordering::Relaxed);
                if limit > MIN_SEND {
                    if !SHRINK_REPORTED.swap(true, Ordering::Relaxed) {
                        crate::log!("the kernel has no memory for {limit}-byte vsock sends; sending less at a time");
                    }
                    SEND_LIMIT.store((limit / 2).max(MIN_SEND), Ordering::Relaxed);
                    continue;
                }
                if waits == ENOMEM_RETRIES {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_millis(1 << (waits / 16).min(6)));
                waits += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Tells the console why a reply could not be sent, unless the host simply
/// went away (its own side reports that).
pub fn report_send_failure(e: &supermachine_protocol::FrameError) {
    if let supermachine_protocol::FrameError::Io(io) = e {
        if matches!(
            io.raw_os_error(),
            Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN)
        ) {
            return;
        }
    }
    crate::log(format_args!("sending a reply failed: {e}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(family: i32, cid: u32) -> libc::sockaddr_vm {
        let mut addr = vsock_addr(cid, 1234);
        addr.svm_family = family as libc::sa_family_t;
        addr
    }

    const LEN: libc::socklen_t = mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

    #[test]
    fn only_the_host_cid_may_talk_to_the_agent() {
        assert!(is_host_peer(
            &peer(libc::AF_VSOCK, libc::VMADDR_CID_HOST),
            LEN
        ));
        // vsock loopback from inside the guest: the local CID, the guest's
        // own CID, the hypervisor's, "any".
        for cid in [1, 3, 42, libc::VMADDR_CID_HYPERVISOR, libc::VMADDR_CID_ANY] {
            assert!(!is_host_peer(&peer(libc::AF_VSOCK, cid), LEN), "CID {cid}");
        }
        // Not a vsock address at all, or a short one.
        assert!(!is_host_peer(
            &peer(libc::AF_UNIX, libc::VMADDR_CID_HOST),
            LEN
        ));
        assert!(!is_host_peer(
            &peer(libc::AF_VSOCK, libc::VMADDR_CID_HOST),
            4
        ));
    }

    #[test]
    fn a_unix_listener_in_test_mode_accepts_any_peer() {
        let dir = std::env::temp_dir().join(format!("agent-transport-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        let listener = Listener::unix(&path).expect("bind");
        let _client = std::os::unix::net::UnixStream::connect(&path).expect("connect");
        assert!(listener.accept().is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `accept` itself applies the check: a host-only listener closes a
    /// connection whose peer is not the host's vsock address and waits on,
    /// never handing it to the agent. (A Unix peer stands in for a guest
    /// process here: its address is not the host CID either.)
    #[test]
    fn a_host_only_listener_closes_other_peers_and_waits_on() {
        use std::io::Read;
        let dir = std::env::temp_dir().join(format!("agent-host-only-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        let mut listener = Listener::unix(&path).expect("bind");
        listener.host_only = true;
        let (handed, accepted) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Kept alive in the channel: a stream handed out stays open.
            while let Ok(stream) = listener.accept() {
                if handed.send(stream).is_err() {
                    return;
                }
            }
        });
        let mut client = std::os::unix::net::UnixStream::connect(&path).expect("connect");
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .expect("timeout");
        let mut buf = [0u8; 1];
        // Closed by the agent: end of stream, not a timeout.
        assert_eq!(client.read(&mut buf).expect("closed, not timed out"), 0);
        assert!(
            accepted.try_recv().is_err(),
            "the connection was handed out"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
