//! The other end of the guest's link: a user-mode network stack (passt)
//! spoken to over a stream socket, each Ethernet frame preceded by its
//! length as a 32-bit big-endian number (QEMU's `-netdev stream` framing,
//! which passt speaks on `--fd`).
//!
//! Why passt: it turns the guest's frames into ordinary sockets of an
//! unprivileged host process (no root, no TAP device, no bridge), and it
//! sandboxes itself. One passt per VM; it ends when its socket closes, so
//! it never outlives the worker, even one that was killed.
//!
//! Memory is bounded both ways: frames the stack sends wait in a fixed
//! read buffer until the guest has RX buffers for them (the socket is not
//! read meanwhile), and frames for the stack wait in an output buffer the
//! device stops filling at [`OUT_HIGH_WATER`] until the socket drains.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use supermachine_protocol::net_spec::{DNS, GATEWAY, GATEWAY_MAC, GUEST_ADDRESS, PREFIX_LEN};

/// The largest frame either side may send: an Ethernet header and the
/// largest IPv4 packet. A stack that announces more is broken.
pub const MAX_FRAME: usize = 14 + 65535;
/// Bytes of length prefix before each frame.
const PREFIX: usize = 4;
/// What the read buffer holds: one largest frame and its prefix at least.
const IN_CAPACITY: usize = 2 * (PREFIX + MAX_FRAME);
/// The device takes no more TX frames while this much waits to be written.
pub const OUT_HIGH_WATER: usize = 256 * 1024;

/// What reading from the stack gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A whole frame waits ([`Backend::frame`]).
    Frame,
    /// Nothing more for now.
    Empty,
    /// The stack closed the link, or broke the framing: no more frames.
    Closed,
}

/// The link to the network stack.
pub struct Backend {
    stream: UnixStream,
    /// The stack's process, when we started it: ended with us.
    child: Option<Child>,
    /// Bytes read from the stack: frames not yet given to the guest start
    /// at `start`.
    input: Box<[u8]>,
    start: usize,
    end: usize,
    /// Frames for the stack not yet written; written from `out_pos`.
    output: Vec<u8>,
    out_pos: usize,
    closed: bool,
}

impl Backend {
    /// A link over `stream`, which must be connected; made non-blocking.
    pub fn new(stream: UnixStream, child: Option<Child>) -> io::Result<Backend> {
        stream.set_nonblocking(true)?;
        Ok(Backend {
            stream,
            child,
            input: vec![0; IN_CAPACITY].into_boxed_slice(),
            start: 0,
            end: 0,
            output: Vec::new(),
            out_pos: 0,
            closed: false,
        })
    }

    /// Starts `passt` (the binary at `binary`) for one guest, connected to
    /// us over a socket pair: the guest's fixed addresses, no DHCP (the
    /// agent sets the address), IPv4 only, no ports from the host into the
    /// guest, and the gateway address not mapped to the host's loopback
    /// (the host's own services stay out of reach). Its log goes to `log`.
    pub fn spawn_passt(binary: &Path, log: Option<&Path>) -> io::Result<Backend> {
        let (ours, theirs) = UnixStream::pair()?;
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new(binary);
        cmd.args(["--foreground", "--quiet", "--ipv4-only", "--fd"])
            .arg(fd.to_string())
            .arg("--address")
            .arg(GUEST_ADDRESS.to_string())
            .arg("--netmask")
            .arg(PREFIX_LEN.to_string())
            .arg("--gateway")
            .arg(GATEWAY.to_string())
            .arg("--mac-addr")
            .arg(mac_string(&GATEWAY_MAC))
            .arg("--dns-forward")
            .arg(DNS.to_string())
            .args(["--no-map-gw", "--no-dhcp", "--tcp-ports", "none"])
            .args(["--udp-ports", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(log) = log {
            cmd.arg("--log-file").arg(log);
        }
        // The child's end must survive the exec: clear close-on-exec just
        // for the spawn. The worker starts no other process meanwhile, so
        // no other child can inherit it.
        set_cloexec(fd, false)?;
        let child = cmd.spawn();
        set_cloexec(fd, true)?;
        drop(theirs);
        let child = child.map_err(|e| {
            io::Error::new(e.kind(), format!("cannot start {}: {e}", binary.display()))
        })?;
        Backend::new(ours, Some(child))
    }

    /// The socket, for the device's poller.
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Whether the link is gone (the stack ended or misbehaved).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The first whole frame read and not yet consumed.
    pub fn frame(&self) -> Option<&[u8]> {
        let len = self.whole_frame_len()?;
        Some(&self.input[self.start + PREFIX..self.start + PREFIX + len])
    }

    /// Drops the frame [`frame`](Self::frame) returned.
    pub fn consume_frame(&mut self) {
        if let Some(len) = self.whole_frame_len() {
            self.start += PREFIX + len;
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            }
        }
    }

    fn announced_len(&self) -> Option<usize> {
        let head = self.input.get(self.start..self.start + PREFIX)?;
        if self.end - self.start < PREFIX {
            return None;
        }
        Some(u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize)
    }

    fn whole_frame_len(&self) -> Option<usize> {
        let len = self.announced_len()?;
        (len <= MAX_FRAME && self.end - self.start >= PREFIX + len).then_some(len)
    }

    /// Reads until a whole frame waits, the socket has nothing more, or
    /// the link closes. Call it only when [`frame`](Self::frame) is `None`.
    pub fn receive(&mut self) -> Received {
        loop {
            if self.closed {
                return Received::Closed;
            }
            if self.frame().is_some() {
                return Received::Frame;
            }
            if self.announced_len().is_some_and(|len| len > MAX_FRAME) {
                crate::limited!(
                    error,
                    "virtio-net: the network stack sent a frame longer than {MAX_FRAME} bytes; \
                     the guest's link is closed"
                );
                self.close();
                return Received::Closed;
            }
            // Room for the rest of a largest frame: move the partial one to
            // the front.
            if self.input.len() - self.start < PREFIX + MAX_FRAME {
                self.input.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            match self.stream.read(&mut self.input[self.end..]) {
                Ok(0) => {
                    self.close();
                    return Received::Closed;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Received::Empty,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    crate::limited!(warn, "virtio-net: reading from the network stack: {e}");
                    self.close();
                    return Received::Closed;
                }
            }
        }
    }

    /// Whether the device may hand over another frame now.
    pub fn accepts_frames(&self) -> bool {
        !self.closed && self.pending_output() < OUT_HIGH_WATER
    }

    /// Bytes waiting to be written to the stack.
    pub fn pending_output(&self) -> usize {
        self.output.len() - self.out_pos
    }

    /// Queues `frame` for the stack and writes what the socket takes.
    /// Dropped on a closed link.
    pub fn send(&mut self, frame: &[u8]) {
        if self.closed || frame.len() > MAX_FRAME {
            return;
        }
        self.output
            .extend_from_slice(&(frame.len() as u32).to_be_bytes());
        self.output.extend_from_slice(frame);
        self.flush();
    }

    /// Writes what waits, as far as the socket takes it.
    pub fn flush(&mut self) {
        while self.out_pos < self.output.len() && !self.closed {
            match self.stream.write(&self.output[self.out_pos..]) {
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    crate::limited!(warn, "virtio-net: writing to the network stack: {e}");
                    self.close();
                }
            }
        }
        if self.out_pos == self.output.len() {
            self.output.clear();
            self.out_pos = 0;
        } else if self.out_pos > OUT_HIGH_WATER {
            self.output.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.output = Vec::new();
        self.out_pos = 0;
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(child) = &mut self.child {
            // It ends once its socket is gone; say how, for the log.
            match child.try_wait() {
                Ok(Some(status)) => {
                    tracing::warn!("virtio-net: the network stack (passt) ended: {status}")
                }
                _ => tracing::warn!("virtio-net: the link to the network stack closed"),
            }
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    let flags = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD on an fd this function's caller owns; no memory is passed.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
