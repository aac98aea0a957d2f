//! virtio-vsock against a mock driver and real host Unix sockets: streams
//! in both directions, the host handshake, and packets no honest driver
//! sends.

use super::packet::*;
use super::*;
use crate::devices::virtio::test_utils::{memory, within_a_minute, Buf, MockDriver};
use crate::devices::virtio::Poller;
use std::collections::HashMap;
use std::os::unix::net::{UnixListener, UnixStream};
use vm_memory::{ByteValued, GuestMemoryMmap};

const GUEST_CID: u64 = 3;
/// Payload room of each RX buffer the mock driver posts.
const RX_ROOM: u32 = 4096;

pub(super) struct Fixture<'m> {
    pub dir: tempfile::TempDir,
    pub vsock: Vsock,
    pub driver: MockDriver<'m>,
    pub poller: Poller,
    pub interrupt: Arc<Interrupt>,
    /// RX buffers posted, by head descriptor.
    rx_bufs: HashMap<u16, Buf>,
    /// Used RX entries already returned by `received`.
    rx_seen: usize,
}

pub(super) fn fixture(mem: &GuestMemoryMmap) -> Fixture<'_> {
    let dir = tempfile::tempdir().unwrap();
    let mut vsock = Vsock::new(GUEST_CID, &dir.path().join("vsock.sock")).unwrap();
    let driver = MockDriver::new(mem, &[QUEUE_SIZE; 3]);
    let (activation, interrupt, poller) = driver.activation();
    vsock.activate(activation).unwrap();
    Fixture {
        dir,
        vsock,
        driver,
        poller,
        interrupt,
        rx_bufs: HashMap::new(),
        rx_seen: 0,
    }
}

/// A guest → host packet header.
pub(super) fn from_guest(guest_port: u32, host_port: u32, op: u16) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: guest_port,
        dst_port: host_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 256 * 1024,
        ..Default::default()
    }
}

impl Fixture<'_> {
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Puts one packet on the TX queue and kicks it.
    pub fn send(&mut self, h: Header, payload: &[u8]) {
        self.queue_packet(h, payload);
        self.vsock.handle_queue(TX);
    }

    /// Puts one packet on the TX queue without a kick.
    pub fn queue_packet(&mut self, mut h: Header, payload: &[u8]) {
        h.len = payload.len() as u32;
        let header = self.driver.readable(h.as_slice());
        let mut bufs = vec![header];
        if !payload.is_empty() {
            bufs.push(self.driver.readable(payload));
        }
        self.driver.add_chain(TX, &bufs);
    }

    /// Posts `n` RX buffers and kicks the RX queue.
    pub fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let buf = self.driver.writable(HEADER_LEN as u32 + RX_ROOM);
            let head = self.driver.add_chain(RX, &[buf]);
            self.rx_bufs.insert(head, buf);
        }
        self.vsock.handle_queue(RX);
    }

    /// Stands in for the event thread: hands every ready host fd to the
    /// device until none is left (bounded: a level-triggered fd the device
    /// leaves ready would be handed over again and again).
    pub fn pump(&mut self) {
        for _ in 0..64 {
            let ready = self.poller.ready_now();
            if ready.is_empty() {
                return;
            }
            for (token, events) in ready {
                self.vsock.handle_fd(token, events);
            }
        }
    }

    /// Packets the device put in RX buffers since the last call.
    pub fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
        let used = self.driver.used(RX);
        let new = used[self.rx_seen..].to_vec();
        self.rx_seen = used.len();
        new.into_iter()
            .map(|(head, len)| {
                let buf = self.rx_bufs[&head];
                let bytes = self.driver.read(buf.addr, len as usize);
                let h = Header::from_slice(&bytes[..HEADER_LEN]).copied().unwrap();
                (h, bytes[HEADER_LEN..].to_vec())
            })
            .collect()
    }
}

fn ops(packets: &[(Header, Vec<u8>)]) -> Vec<u16> {
    packets.iter().map(|(h, _)| h.op).collect()
}

#[test]
fn a_guest_stream_reaches_a_host_listener_both_ways() {
    let mem = memory();
    let mut f = fixture(&mem);
    let listener = UnixListener::bind(f.path("vsock.sock_1234")).unwrap();
    f.post_rx(4);
    f.send(from_guest(5000, 1234, OP_REQUEST), &[]);
    let got = f.received();
    assert_eq!(ops(&got), vec![OP_RESPONSE]);
    assert_ne!(f.interrupt.status() & 1, 0, "the guest was told");
    let (h, _) = got[0];
    assert_eq!((h.src_port, h.dst_port, h.dst_cid), (1234, 5000, GUEST_CID));

    f.send(from_guest(5000, 1234, OP_RW), b"hello");
    let (mut host, _) = listener.accept().unwrap();
    f.pump();
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");

    host.write_all(b"world").unwrap();
    f.pump();
    let got = f.received();
    assert_eq!(ops(&got), vec![OP_RW]);
    assert_eq!(got[0].1, b"world");
}

/// A guest half-close that comes after its data has reached the host
/// still reaches the host as end of stream, while the host may go on
/// sending (a published port's client reads the answer to the end).
#[test]
fn a_guest_half_close_after_its_data_was_written_reaches_the_host() {
    let mem = memory();
    let mut f = fixture(&mem);
    let listener = UnixListener::bind(f.path("vsock.sock_1234")).unwrap();
    f.post_rx(4);
    f.send(from_guest(5000, 1234, OP_REQUEST), &[]);
    let (mut host, _) = listener.accept().unwrap();
    f.send(from_guest(5000, 1234, OP_RW), b"answer");
    f.pump();
    let mut buf = [0u8; 6];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"answer");
    // Nothing is left to flush when the half-close comes.
    let mut shutdown = from_guest(5000, 1234, OP_SHUTDOWN);
    shutdown.flags = SHUTDOWN_SEND;
    f.send(shutdown, &[]);
    f.pump();
    host.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    host.read_to_end(&mut rest)
        .expect("the guest's half-close never reached the host");
    assert!(rest.is_empty(), "{rest:?}");
    // The other direction still works.
    host.write_all(b"more").unwrap();
    f.pump();
    let got = f.received();
    assert!(
        got.iter().any(|(h, p)| h.op == OP_RW && p == b"more"),
        "{:?}",
        ops(&got)
    );
}

#[test]
fn a_host_connect_goes_through_the_handshake() {
    let mem = memory();
    let mut f = fixture(&mem);
    let mut host = UnixStream::connect(f.path("vsock.sock")).unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    f.pump();
    f.post_rx(2);
    let got = f.received();
    assert_eq!(ops(&got), vec![OP_REQUEST]);
    let (request, _) = got[0];
    let dst_port = request.dst_port;
    assert_eq!(dst_port, 52);
    let local_port = request.src_port;
    f.send(from_guest(52, local_port, OP_RESPONSE), &[]);
    f.pump();
    let mut line = vec![0u8; format!("OK {local_port}\n").len()];
    host.read_exact(&mut line).unwrap();
    assert_eq!(line, format!("OK {local_port}\n").as_bytes());
}

#[test]
fn packets_for_another_cid_or_nobody_are_reset() {
    let mem = memory();
    let mut f = fixture(&mem);
    f.post_rx(4);
    let mut wrong_cid = from_guest(5000, 1234, OP_REQUEST);
    wrong_cid.dst_cid = 7;
    f.send(wrong_cid, &[]);
    // Nobody listens on host port 999.
    f.send(from_guest(5001, 999, OP_REQUEST), &[]);
    // Data on a connection that does not exist.
    f.send(from_guest(5002, 1234, OP_RW), b"x");
    let got = f.received();
    assert_eq!(ops(&got), vec![OP_RST, OP_RST, OP_RST]);
    let ports: Vec<_> = got.iter().map(|(h, _)| (h.src_port, h.dst_port)).collect();
    assert_eq!(ports, vec![(1234, 5000), (999, 5001), (1234, 5002)]);
}

#[test]
fn a_packet_shorter_than_a_header_is_used_and_ignored() {
    let mem = memory();
    let mut f = fixture(&mem);
    f.post_rx(2);
    let short = f.driver.readable(&[0u8; 10]);
    f.driver.add_chain(TX, &[short]);
    f.vsock.handle_queue(TX);
    assert_eq!(f.driver.used(TX), vec![(0, 0)]);
    assert!(f.received().is_empty());
}

#[test]
fn restore_wants_the_same_cid() {
    let mem = memory();
    let mut f = fixture(&mem);
    let saved = VirtioDevice::save(&f.vsock);
    assert_eq!(saved, DeviceState::Vsock(VsockState { guest_cid: 3 }));
    assert!(VirtioDevice::restore(&mut f.vsock, &saved).is_ok());
    let other = DeviceState::Vsock(VsockState { guest_cid: 4 });
    let err = VirtioDevice::restore(&mut f.vsock, &other).unwrap_err();
    assert!(
        matches!(
            err,
            DeviceRestoreError::Vsock(VsockRestoreError::Cid { now: 3, saved: 4 })
        ),
        "{err}"
    );
}

/// Makes `queue` claim more available entries than it has.
fn overrun(f: &Fixture, queue: usize) {
    let ahead = f.driver.avail_idx(queue).wrapping_add(QUEUE_SIZE + 1);
    f.driver.set_avail_idx(queue, ahead);
}

#[test]
fn a_tx_avail_index_too_far_ahead_breaks_the_device_instead_of_spinning() {
    within_a_minute(|| {
        let mem = memory();
        let mut f = fixture(&mem);
        overrun(&f, TX);
        f.vsock.handle_queue(TX);
        assert!(f.interrupt.is_broken());
    });
}

#[test]
fn an_rx_avail_index_too_far_ahead_breaks_the_device_and_lets_go_of_host_sockets() {
    within_a_minute(|| {
        let mem = memory();
        let mut f = fixture(&mem);
        let mut host = UnixStream::connect(f.path("vsock.sock")).unwrap();
        host.write_all(b"CONNECT 52\n").unwrap();
        f.pump();
        // A connection request waits for an RX buffer; the ring is bad.
        overrun(&f, RX);
        f.vsock.handle_queue(RX);
        assert!(f.interrupt.is_broken());
        // The host end is closed, not left waiting on a dead device.
        let mut buf = [0u8; 8];
        assert_eq!(host.read(&mut buf).unwrap(), 0);
        // New host connections are refused at once.
        let refused = UnixStream::connect(f.path("vsock.sock")).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(
            f.poller.ready_now().is_empty(),
            "no fd left to wake the device"
        );
    });
}

#[test]
fn a_bad_event_ring_at_restore_breaks_the_device() {
    within_a_minute(|| {
        let mem = memory();
        let mut f = fixture(&mem);
        overrun(&f, EVENT);
        f.vsock.after_restore();
        assert!(f.interrupt.is_broken());
    });
}

impl Fixture<'_> {
    /// Whether the guest could put another chain on `queue` without
    /// overrunning the device.
    fn has_room(&self, queue: usize) -> bool {
        self.driver
            .avail_idx(queue)
            .wrapping_sub(self.driver.used_idx(queue))
            < QUEUE_SIZE
    }
}

/// Host sockets the muxer has closed (reads end at once) among `streams`.
fn closed(streams: &mut [UnixStream]) -> usize {
    let mut closed = 0;
    for s in streams {
        s.set_nonblocking(true).unwrap();
        match s.read(&mut [0u8; 64]) {
            // Closed with what we sent unread: a reset, not an end.
            Ok(0) => closed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            _ => {}
        }
    }
    closed
}

#[test]
fn a_guest_that_collects_no_replies_stops_being_read_instead_of_growing_the_queue() {
    within_a_minute(|| {
        let mem = memory();
        let mut f = fixture(&mem);
        // Each connection request to a port nobody listens on earns a
        // reset, and the guest posts no RX buffer to take them.
        let mut sent = 0u32;
        for _ in 0..64 {
            while f.has_room(TX) {
                f.queue_packet(from_guest(10_000 + sent, 999, OP_REQUEST), &[]);
                sent += 1;
            }
            f.vsock.handle_queue(TX);
        }
        assert!(
            f.vsock.muxer.pending_control() <= muxer::MAX_PENDING_CONTROL,
            "{} replies queued",
            f.vsock.muxer.pending_control()
        );
        let taken_before = f.driver.used_idx(TX);
        assert!(!f.has_room(TX), "the device stopped reading the guest");
        // Collecting replies lets the device read on.
        f.post_rx(200);
        assert_eq!(f.received().len(), 200);
        assert!(f.has_room(TX) || f.driver.used_idx(TX) != taken_before);
        assert!(!f.interrupt.is_broken());
    });
}

#[test]
fn guest_connections_beyond_the_cap_are_reset() {
    within_a_minute(|| {
        let mem = memory();
        let mut f = fixture(&mem);
        let _listener = UnixListener::bind(f.path("vsock.sock_1234")).unwrap();
        let tries = muxer::MAX_GUEST_CONNECTIONS + 20;
        f.post_rx(tries);
        for i in 0..tries {
            f.send(from_guest(20_000 + i as u32, 1234, OP_REQUEST), &[]);
        }
        let got = f.received();
        let accepted = got.iter().filter(|(h, _)| h.op == OP_RESPONSE).count();
        let reset = got.iter().filter(|(h, _)| h.op == OP_RST).count();
        assert_eq!((accepted, reset), (muxer::MAX_GUEST_CONNECTIONS, 20));
    });
}

#[test]
fn host_sockets_that_never_send_their_connect_line_are_capped() {
    within_a_minute(|| {
        let mem = memory();
        let mut f = fixture(&mem);
        let tries = muxer::MAX_HANDSHAKES + 10;
        let mut hosts: Vec<_> = (0..tries)
            .map(|_| UnixStream::connect(f.path("vsock.sock")).unwrap())
            .collect();
        f.pump();
        assert_eq!(closed(&mut hosts), 10);
    });
}

#[test]
fn host_connections_the_guest_never_answers_are_capped() {
    within_a_minute(|| {
        let mem = memory();
        let mut f = fixture(&mem);
        let tries = muxer::MAX_CONNECTING + 10;
        let mut hosts: Vec<_> = (0..tries)
            .map(|_| {
                let mut s = UnixStream::connect(f.path("vsock.sock")).unwrap();
                s.write_all(b"CONNECT 52\n").unwrap();
                s
            })
            .collect();
        f.pump();
        assert_eq!(closed(&mut hosts), 10);
    });
}

#[test]
fn a_guest_connect_to_a_host_listener_with_a_full_backlog_does_not_block() {
    within_a_minute(|| {
        let mem = memory();
        let mut f = fixture(&mem);
        let path = f.path("vsock.sock_77");
        let listener =
            socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        listener
            .bind(&socket2::SockAddr::unix(&path).unwrap())
            .unwrap();
        listener.listen(0).unwrap();
        // Fill the backlog: nobody accepts.
        let mut waiting = Vec::new();
        loop {
            let s =
                socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            match s.connect(&socket2::SockAddr::unix(&path).unwrap()) {
                Ok(()) => waiting.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
            assert!(waiting.len() < 1000, "the backlog never filled");
        }
        f.post_rx(2);
        f.send(from_guest(5000, 77, OP_REQUEST), &[]);
        assert_eq!(ops(&f.received()), vec![OP_RST]);
    });
}

#[test]
fn the_muxer_socket_is_private_to_the_worker_user() {
    use std::os::unix::fs::MetadataExt;
    let mem = memory();
    let f = fixture(&mem);
    let mode = std::fs::symlink_metadata(f.path("vsock.sock"))
        .unwrap()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_connection_from_another_user_is_closed_unanswered() {
    use crate::test_support::{can_switch_user, open_to_all, OtherUser, NOBODY};
    if !can_switch_user() {
        eprintln!("SKIP: only root can connect as another user");
        return;
    }
    within_a_minute(|| {
        let mem = memory();
        let mut f = fixture(&mem);
        let socket = f.path("vsock.sock");
        open_to_all(&socket);
        let other = OtherUser::connect(NOBODY, &socket, b"CONNECT 52\n");
        let closed = loop {
            f.pump();
            if let Some(closed) = other.closed() {
                break closed;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert!(closed, "closed without an answer");
        assert_eq!(
            f.vsock.muxer.pending_control(),
            0,
            "the guest heard nothing"
        );
    });
}
