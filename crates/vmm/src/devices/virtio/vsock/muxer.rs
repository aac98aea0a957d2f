//! Maps guest vsock streams onto host Unix sockets.
//!
//! * Host → guest: a host process connects to the muxer socket (`vsock.sock`)
//!   and writes `CONNECT <port>\n`; once the guest accepts, it reads
//!   `OK <host-port>\n` and the socket is the stream. If the guest refuses,
//!   the socket is closed without `OK`.
//! * Guest → host: a guest connection to host port P is connected to the
//!   Unix socket `<muxer path>_P`; if nothing listens there, the guest gets
//!   a reset.
//!
//! What a guest (or a local process) can make the muxer hold is capped:
//! replies waiting for the guest ([`MAX_PENDING_CONTROL`]: past it the
//! device stops reading the guest's packets until the guest takes some),
//! streams ([`MAX_CONNECTIONS`], of which the guest may open
//! [`MAX_GUEST_CONNECTIONS`]), host connections waiting for the guest to
//! answer ([`MAX_CONNECTING`]) and host sockets that have not finished
//! their `CONNECT` line ([`MAX_HANDSHAKES`]). A connection over a cap is
//! refused: the guest gets a reset, a host socket is closed. Only the
//! worker's own user (and root) may connect to the muxer socket at all.

use super::connection::{Connection, State};
use super::packet::*;
use crate::devices::virtio::{Poller, FIRST_DEVICE_TOKEN};
use crate::sockets;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

const LISTENER_TOKEN: u64 = FIRST_DEVICE_TOKEN;
/// The fallback timer of [`Muxer::hold_new_connections`]; connection
/// tokens start above it.
const HOLD_TIMER_TOKEN: u64 = FIRST_DEVICE_TOKEN + 1;
/// How long host connections wait for the guest to acknowledge a transport
/// reset before they are sent anyway. A live Linux guest acknowledges in
/// milliseconds, but the clock starts when the device is restored, before
/// the vCPU runs: on a slow or busy host one second was not enough (a lab
/// run on 2026-12-07 released the held restore fixup early, the guest then
/// reset the next connection, and a `readFile` failed with "connection reset
/// by peer"). Five seconds stays under the host library's 10 s handshake
/// limit, and only a guest that never acknowledges ever waits for it.
const HOLD_FALLBACK: Duration = Duration::from_secs(5);
/// Host-side ports for host-initiated streams start here, far above the
/// ports guests listen on.
const FIRST_EPHEMERAL_PORT: u32 = 1 << 30;
const MAX_CONNECT_LINE: usize = 32;
/// Control packets (replies, resets, credit updates, connection
/// requests) waiting for a guest RX buffer before the device stops
/// reading the guest's TX queue. A guest packet makes at most one, so the
/// guest cannot push the queue past this; host events add at most one per
/// stream on top, so it never holds more than this plus
/// [`MAX_CONNECTIONS`] (44 bytes each: under 100 KiB). A Linux guest keeps
/// dozens of RX buffers posted and never gets near it.
pub const MAX_PENDING_CONTROL: usize = 1024;
/// Streams at once, whoever opened them. Each holds at most
/// `TX_BUF_CAP` (256 KiB) of guest data the host has not read and
/// `RX_BUF_CAP` (64 KiB) of host data the guest has not taken, so all of
/// them at most 320 MiB, reached only if neither side reads. The host's
/// own streams (exec sessions, file transfers, forwarded TCP connections)
/// are most of them.
pub const MAX_CONNECTIONS: usize = 1024;
/// Streams the guest opened (to `<muxer>_<port>` listeners) at once. Our
/// agent opens one, briefly, to say it is ready; the rest is room for
/// workloads that talk to host services, and the cap keeps a guest from
/// taking the streams the host needs.
pub const MAX_GUEST_CONNECTIONS: usize = 64;
/// Host connections waiting for the guest to accept or refuse them. The
/// guest decides how long they wait (one that never answers holds them
/// for ever), so they have a cap of their own, well above what a host
/// opens at once.
pub const MAX_CONNECTING: usize = 64;
/// Host sockets that have not sent their whole `CONNECT` line yet. The
/// connecting process decides how long that takes; the library sends the
/// line at once.
pub const MAX_HANDSHAKES: usize = 64;

/// (host port, guest port)
type Key = (u32, u32);

/// A host socket that has not finished its `CONNECT` line yet.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

pub struct Muxer {
    path: PathBuf,
    /// `None` once shut down.
    listener: Option<UnixListener>,
    guest_cid: u64,
    poller: Option<Poller>,
    conns: HashMap<Key, Connection>,
    by_token: HashMap<u64, Key>,
    handshakes: HashMap<u64, Handshake>,
    next_token: u64,
    next_port: u32,
    /// Packets without payload waiting for a guest RX buffer.
    control: VecDeque<Header>,
    /// Set while new host connections must not reach the guest yet.
    hold: Option<Hold>,
}

/// Connection requests kept back until the guest has handled a transport
/// reset: a request that reached the guest before the reset would be
/// accepted and then torn down by it, and the host would have to try again.
struct Hold {
    requests: Vec<Header>,
    /// Releases the requests if the guest never says it is done.
    timer: TimerFd,
}

impl Muxer {
    /// Listens on `path` (made 0600; see `sockets::bind_private`).
    pub fn bind(path: &Path, guest_cid: u64) -> io::Result<Muxer> {
        let listener = sockets::bind_private(path)?;
        listener.set_nonblocking(true)?;
        Ok(Muxer {
            path: path.to_owned(),
            listener: Some(listener),
            guest_cid,
            poller: None,
            conns: HashMap::new(),
            by_token: HashMap::new(),
            handshakes: HashMap::new(),
            next_token: HOLD_TIMER_TOKEN,
            next_port: FIRST_EPHEMERAL_PORT,
            control: VecDeque::new(),
            hold: None,
        })
    }

    pub fn activate(&mut self, poller: Poller) -> io::Result<()> {
        if let Some(listener) = &self.listener {
            poller.add(listener.as_raw_fd(), EventSet::IN, LISTENER_TOKEN)?;
        }
        self.poller = Some(poller);
        Ok(())
    }

    /// Closes every host socket and stops listening, for a device that
    /// will never talk to its guest again (the driver broke it): hosts
    /// see their streams end and new connections refused, and no fd is
    /// left to wake the device's thread.
    pub fn shut_down(&mut self) {
        if let Some(p) = &self.poller {
            let fds = self
                .listener
                .iter()
                .map(|l| l.as_raw_fd())
                .chain(self.conns.values().map(|c| c.stream.as_raw_fd()))
                .chain(self.handshakes.values().map(|h| h.stream.as_raw_fd()))
                .chain(self.hold.iter().map(|h| h.timer.as_raw_fd()));
            for fd in fds {
                let _ = p.remove(fd);
            }
        }
        self.listener = None;
        self.conns.clear();
        self.by_token.clear();
        self.handshakes.clear();
        self.control.clear();
        self.hold = None;
    }

    /// Keeps new host connections from the guest until [`Self::release_held`]
    /// (the guest acknowledged a transport reset) or a fallback timeout.
    pub fn hold_new_connections(&mut self) {
        let armed = TimerFd::new().and_then(|mut timer| {
            timer.reset(HOLD_FALLBACK, None)?;
            if let Some(p) = &self.poller {
                p.add(timer.as_raw_fd(), EventSet::IN, HOLD_TIMER_TOKEN)?;
            }
            Ok(timer)
        });
        match armed {
            Ok(timer) => {
                self.hold = Some(Hold {
                    requests: Vec::new(),
                    timer,
                })
            }
            // Without the fallback a held connection could wait forever.
            Err(e) => tracing::warn!("vsock: cannot arm the hold timer ({e}); not holding"),
        }
    }

    /// Sends the connection requests held since [`Self::hold_new_connections`].
    pub fn release_held(&mut self) {
        let Some(hold) = self.hold.take() else { return };
        if let Some(p) = &self.poller {
            let _ = p.remove(hold.timer.as_raw_fd());
        }
        // A host socket that gave up while held was dropped: skip its request.
        for request in hold.requests {
            let key = (request.src_port, request.dst_port);
            if self.conns.contains_key(&key) {
                self.control.push_back(request);
            }
        }
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    fn reset_guest(&mut self, local_port: u32, peer_port: u32) {
        self.control.push_back(Header::to_guest(
            self.guest_cid,
            local_port,
            peer_port,
            OP_RST,
        ));
    }

    fn drop_conn(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            self.by_token.remove(&c.token);
            if let Some(p) = &self.poller {
                let _ = p.remove(c.stream.as_raw_fd());
            }
        }
    }

    /// Handles one packet the guest sent.
    pub fn handle_guest_packet(&mut self, h: Header, payload: &[u8]) {
        let (dst_cid, src_cid, type_, op) = (h.dst_cid, h.src_cid, h.type_, h.op);
        let key = (h.dst_port, h.src_port);
        tracing::debug!(
            op,
            host_port = key.0,
            guest_port = key.1,
            len = payload.len(),
            "vsock: from guest"
        );
        if dst_cid != HOST_CID || src_cid != self.guest_cid || type_ != TYPE_STREAM {
            if op != OP_RST {
                self.reset_guest(key.0, key.1);
            }
            return;
        }
        if op == OP_REQUEST {
            self.guest_connect(key);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            if op != OP_RST {
                self.reset_guest(key.0, key.1);
            }
            return;
        };
        conn.update_peer_credit(&h);
        match op {
            OP_RESPONSE if conn.state == State::Connecting => {
                conn.state = State::Established;
                let ok = format!("OK {}\n", conn.local_port);
                conn.preamble.extend(ok.as_bytes());
            }
            OP_RW if conn.state == State::Established && !conn.guest_closed => {
                if conn.host_hung_up {
                    // Nobody on the host side will ever read it.
                    crate::limited!(
                        info,
                        "vsock: guest port {} sent data after the host hung up; resetting",
                        key.1
                    );
                    self.drop_conn(key);
                    self.reset_guest(key.0, key.1);
                    return;
                }
                if conn.push_to_host(payload).is_err() {
                    crate::limited!(
                        warn,
                        "vsock: guest port {} overran its credit; resetting",
                        key.1
                    );
                    self.drop_conn(key);
                    self.reset_guest(key.0, key.1);
                    return;
                }
            }
            OP_CREDIT_REQUEST => {
                let h = conn.header(self.guest_cid, OP_CREDIT_UPDATE);
                self.control.push_back(h);
            }
            OP_CREDIT_UPDATE => {}
            OP_SHUTDOWN => {
                let flags = h.flags;
                if flags & SHUTDOWN_SEND != 0 {
                    conn.guest_done_sending = true;
                    // Everything it sent may be on the host already, with
                    // no flush to come that would pass the end on: pass it
                    // on now (a flush shuts the host's side once drained).
                    if conn.flush_to_host().is_err() {
                        self.drop_conn(key);
                        self.reset_guest(key.0, key.1);
                        return;
                    }
                }
                if flags & (SHUTDOWN_SEND | SHUTDOWN_RCV) == (SHUTDOWN_SEND | SHUTDOWN_RCV) {
                    // The guest closed its socket: hand over what it sent, then end.
                    conn.guest_done_sending = true;
                    conn.guest_closed = true;
                    return self.close_when_drained(key);
                }
            }
            OP_RST => {
                conn.guest_done_sending = true;
                conn.guest_closed = true;
                conn.guest_reset = true;
                return self.close_when_drained(key);
            }
            _ => {
                self.drop_conn(key);
                self.reset_guest(key.0, key.1);
                return;
            }
        }
        self.after_io(key);
    }

    /// The guest connects to host port `key.0`.
    fn guest_connect(&mut self, key: Key) {
        if self.conns.contains_key(&key) {
            self.reset_guest(key.0, key.1);
            return;
        }
        let guest_opened = self.conns.values().filter(|c| c.opened_by_guest).count();
        if guest_opened >= MAX_GUEST_CONNECTIONS || self.conns.len() >= MAX_CONNECTIONS {
            crate::limited!(
                warn,
                "vsock: refused a guest connection to host port {}: {guest_opened} guest \
                 streams and {} in all are open, the most allowed",
                key.0,
                self.conns.len()
            );
            self.reset_guest(key.0, key.1);
            return;
        }
        let target = PathBuf::from(format!("{}_{}", self.path.display(), key.0));
        // Never waits: a listener that does not accept (a full backlog)
        // refuses the guest like one that is not there.
        let stream = match sockets::connect_nonblocking(&target) {
            Ok(s) => s,
            Err(_) => {
                self.reset_guest(key.0, key.1);
                return;
            }
        };
        let token = self.token();
        let mut conn = Connection::new(stream, token, State::Established, key.0, key.1);
        conn.opened_by_guest = true;
        let response = conn.header(self.guest_cid, OP_RESPONSE);
        self.control.push_back(response);
        self.by_token.insert(token, key);
        self.conns.insert(key, conn);
        self.after_io(key);
    }

    /// A host fd the muxer registered is ready.
    pub fn handle_fd(&mut self, token: u64, events: EventSet) {
        tracing::debug!(token, ?events, "vsock: host fd ready");
        if token == LISTENER_TOKEN {
            self.accept();
        } else if token == HOLD_TIMER_TOKEN {
            tracing::warn!("vsock: the guest did not acknowledge the transport reset in time");
            self.release_held();
        } else if self.handshakes.contains_key(&token) {
            self.continue_handshake(token);
        } else if let Some(&key) = self.by_token.get(&token) {
            let Some(conn) = self.conns.get_mut(&key) else {
                return;
            };
            let mut failed = None;
            if events.intersects(EventSet::OUT | EventSet::ERROR | EventSet::HANG_UP) {
                failed = conn.flush_to_host().err();
            }
            if events.intersects(EventSet::IN | EventSet::HANG_UP) {
                failed = failed.or(conn.fill_from_host().err());
            }
            if events.contains(EventSet::HANG_UP) {
                conn.host_hung_up = true;
                conn.host_eof = true;
            }
            if let Some(e) = failed {
                crate::limited!(
                    info,
                    "vsock: host socket of guest port {} failed ({e}, {events:?}); resetting",
                    key.1
                );
                self.drop_conn(key);
                self.reset_guest(key.0, key.1);
            } else if conn.guest_closed {
                self.close_when_drained(key);
            } else {
                self.after_io(key);
            }
        }
    }

    /// For a connection the guest closed: writes what it sent to the host
    /// and ends the connection once all of it is written (or the host is
    /// gone); until then the host socket stays registered for writing.
    fn close_when_drained(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let failed = conn.flush_to_host().is_err() || conn.host_hung_up;
        if failed || conn.drained() {
            let reset = !conn.guest_reset;
            self.drop_conn(key);
            if reset {
                self.reset_guest(key.0, key.1);
            }
        } else {
            self.after_io(key);
        }
    }

    fn accept(&mut self) {
        loop {
            let accepted = match &self.listener {
                Some(listener) => listener.accept(),
                None => return,
            };
            match accepted {
                Ok((stream, _)) => {
                    // Dropping the stream closes it, unanswered.
                    if !sockets::peer_is_trusted(&stream) {
                        crate::limited!(
                            warn,
                            "vsock: closed a connection to the muxer socket from another \
                             user's process"
                        );
                        continue;
                    }
                    if self.handshakes.len() >= MAX_HANDSHAKES {
                        crate::limited!(
                            warn,
                            "vsock: closed a host connection: {} others have not sent their \
                             CONNECT line yet, the most allowed",
                            self.handshakes.len()
                        );
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let token = self.token();
                    if let Some(p) = &self.poller {
                        if p.add(stream.as_raw_fd(), EventSet::IN, token).is_err() {
                            continue;
                        }
                    }
                    self.handshakes.insert(
                        token,
                        Handshake {
                            stream,
                            line: Vec::new(),
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Reads the `CONNECT <port>\n` line one byte at a time, so no stream
    /// data after it is consumed here.
    fn continue_handshake(&mut self, token: u64) {
        let Some(hs) = self.handshakes.get_mut(&token) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match hs.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(&hs.line),
                Ok(1) if hs.line.len() < MAX_CONNECT_LINE => hs.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => break None, // EOF, overlong line, or error
            }
        };
        let Some(hs) = self.handshakes.remove(&token) else {
            return;
        };
        if let Some(p) = &self.poller {
            let _ = p.remove(hs.stream.as_raw_fd());
        }
        let Some(peer_port) = port else { return }; // dropping the stream closes it
        let connecting = self
            .conns
            .values()
            .filter(|c| c.state == State::Connecting)
            .count();
        if connecting >= MAX_CONNECTING || self.conns.len() >= MAX_CONNECTIONS {
            crate::limited!(
                warn,
                "vsock: refused a host connection to guest port {peer_port}: {connecting} wait \
                 for the guest and {} streams are open, the most allowed",
                self.conns.len()
            );
            return;
        }
        let local_port = self.allocate_port(peer_port);
        let key = (local_port, peer_port);
        let mut conn = Connection::new(hs.stream, token, State::Connecting, local_port, peer_port);
        let request = conn.header(self.guest_cid, OP_REQUEST);
        match &mut self.hold {
            Some(hold) => hold.requests.push(request),
            None => self.control.push_back(request),
        }
        self.by_token.insert(token, key);
        self.conns.insert(key, conn);
        self.after_io(key);
    }

    fn allocate_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = self
                .next_port
                .checked_add(1)
                .unwrap_or(FIRST_EPHEMERAL_PORT);
            if !self.conns.contains_key(&(p, peer_port)) {
                return p;
            }
        }
    }

    /// Brings epoll interest in line with what the connection can do now.
    fn after_io(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let Some(poller) = &self.poller else { return };
        if conn.host_hung_up {
            if conn.in_epoll {
                let _ = poller.remove(conn.stream.as_raw_fd());
                conn.in_epoll = false;
            }
            return;
        }
        let wanted = conn.wanted_interest();
        if wanted == conn.registered {
            return;
        }
        let mut set = EventSet::empty();
        if wanted.0 {
            set |= EventSet::IN;
        }
        if wanted.1 {
            set |= EventSet::OUT;
        }
        let fd = conn.stream.as_raw_fd();
        let result = if conn.in_epoll {
            poller.modify(fd, set, conn.token)
        } else {
            conn.in_epoll = true;
            poller.add(fd, set, conn.token)
        };
        if let Err(e) = result {
            crate::limited!(warn, "vsock: epoll update for guest port {}: {e}", key.1);
        }
        conn.registered = wanted;
    }

    /// Produces the next packet for the guest, if any: control packets
    /// first, then stream data within the guest's credit, then end-of-stream
    /// notices. `room` is the payload space of the guest buffer.
    pub fn next_for_guest(&mut self, room: usize, payload: &mut Vec<u8>) -> Option<Header> {
        let h = self.next_packet_for_guest(room, payload);
        if let Some(h) = &h {
            let (op, src, dst, len) = (h.op, h.src_port, h.dst_port, h.len);
            tracing::debug!(
                op,
                host_port = src,
                guest_port = dst,
                len,
                "vsock: to guest"
            );
        }
        h
    }

    fn next_packet_for_guest(&mut self, room: usize, payload: &mut Vec<u8>) -> Option<Header> {
        payload.clear();
        if let Some(h) = self.control.pop_front() {
            return Some(h);
        }
        let guest_cid = self.guest_cid;
        let mut touched = None;
        let mut out = None;
        for (key, conn) in self.conns.iter_mut() {
            let n = conn.sendable().min(room);
            if n > 0 {
                payload.extend(conn.to_guest.drain(..n));
                conn.rx_cnt = conn.rx_cnt.wrapping_add(n as u32);
                let mut h = conn.header(guest_cid, OP_RW);
                h.len = n as u32;
                out = Some(h);
                touched = Some(*key);
                break;
            }
            if conn.state == State::Established
                && !conn.guest_closed
                && conn.host_eof
                && !conn.host_eof_told
                && conn.to_guest.is_empty()
            {
                conn.host_eof_told = true;
                let mut h = conn.header(guest_cid, OP_SHUTDOWN);
                h.flags = SHUTDOWN_SEND;
                out = Some(h);
                touched = Some(*key);
                break;
            }
            if conn.credit_update_due() {
                out = Some(conn.header(guest_cid, OP_CREDIT_UPDATE));
                break;
            }
        }
        if let Some(key) = touched {
            if let Some(conn) = self.conns.get_mut(&key) {
                // Freed buffer space may let us read more from the host.
                let _ = conn.fill_from_host();
            }
            self.after_io(key);
        }
        out
    }

    /// Control packets waiting for the guest.
    #[cfg(test)]
    pub fn pending_control(&self) -> usize {
        self.control.len()
    }

    /// Whether the device may read another packet from the guest: not
    /// while [`MAX_PENDING_CONTROL`] replies wait for the guest to take
    /// them (backpressure; the guest's packets wait in its ring).
    pub fn accepts_guest_packets(&self) -> bool {
        self.control.len() < MAX_PENDING_CONTROL
    }

    /// Whether [`Self::next_for_guest`] has something to say.
    pub fn has_work_for_guest(&self) -> bool {
        !self.control.is_empty()
            || self.conns.values().any(|c| {
                c.sendable() > 0
                    || (c.state == State::Established
                        && !c.guest_closed
                        && c.host_eof
                        && !c.host_eof_told
                        && c.to_guest.is_empty())
                    || c.credit_update_due()
            })
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    line.strip_prefix("CONNECT ")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_line_parses_strictly() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"connect 1"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
    }
}
