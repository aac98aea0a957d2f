//! One guest ↔ host stream: the host end is a Unix socket, the guest end a
//! vsock port. Both directions are buffered in bounded queues and governed
//! by virtio-vsock credit, so a slow reader on either side slows the writer
//! instead of growing memory.

use super::packet::*;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

/// Bytes we accept from the guest before the host reads them (advertised
/// to the guest as our `buf_alloc`).
pub const TX_BUF_CAP: u32 = 256 * 1024;
/// Bytes read from the host socket ahead of delivery to the guest.
pub const RX_BUF_CAP: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host asked to connect; waiting for the guest's RESPONSE.
    Connecting,
    Established,
}

pub struct Connection {
    pub stream: UnixStream,
    pub token: u64,
    pub state: State,
    pub local_port: u32,
    pub peer_port: u32,
    /// Bytes of our own (the `OK <port>` handshake line) to write to the
    /// host socket before any guest data. Kept apart because they must not
    /// count toward `fwd_cnt`: the guest never sent them.
    pub preamble: VecDeque<u8>,
    /// Guest → host bytes not yet written to the socket.
    pub to_host: VecDeque<u8>,
    /// Bytes written to the host socket so far (our `fwd_cnt`).
    pub fwd_cnt: u32,
    pub fwd_cnt_announced: u32,
    /// Host → guest bytes not yet placed in guest buffers.
    pub to_guest: VecDeque<u8>,
    /// Bytes placed in guest buffers so far.
    pub rx_cnt: u32,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// The host end will send no more.
    pub host_eof: bool,
    pub host_eof_told: bool,
    /// The guest will send no more: shut the host socket's write side once drained.
    pub guest_done_sending: bool,
    /// The guest closed its end (SHUTDOWN both ways, or RST) while guest
    /// data was still waiting for the host: the connection lives on only
    /// until that data is written, so a slow host reader loses nothing.
    pub guest_closed: bool,
    /// The guest's close was a RST, which needs no RST back.
    pub guest_reset: bool,
    /// Interest currently registered with epoll (IN, OUT bits).
    pub registered: (bool, bool),
    /// Whether the stream's fd is in the epoll set at all.
    pub in_epoll: bool,
    /// The guest opened it (counted against `MAX_GUEST_CONNECTIONS`).
    pub opened_by_guest: bool,
    /// The host closed its socket entirely. Its fd leaves the epoll set
    /// (a hung-up fd reports EPOLLHUP whatever the interest, which would spin
    /// the device thread); what it sent is still delivered to the guest.
    pub host_hung_up: bool,
}

impl Connection {
    pub fn new(
        stream: UnixStream,
        token: u64,
        state: State,
        local_port: u32,
        peer_port: u32,
    ) -> Self {
        Connection {
            stream,
            token,
            state,
            local_port,
            peer_port,
            preamble: VecDeque::new(),
            to_host: VecDeque::new(),
            fwd_cnt: 0,
            fwd_cnt_announced: 0,
            to_guest: VecDeque::new(),
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            host_eof: false,
            host_eof_told: false,
            guest_done_sending: false,
            guest_closed: false,
            guest_reset: false,
            registered: (false, false),
            in_epoll: false,
            opened_by_guest: false,
            host_hung_up: false,
        }
    }

    /// Records the credit the guest advertised in any packet it sent.
    pub fn update_peer_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    /// How many more bytes the guest can take right now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Fills in the credit fields of a header we send on this connection.
    pub fn stamp(&mut self, h: &mut Header) {
        h.buf_alloc = TX_BUF_CAP;
        h.fwd_cnt = self.fwd_cnt;
        self.fwd_cnt_announced = self.fwd_cnt;
    }

    pub fn header(&mut self, guest_cid: u64, op: u16) -> Header {
        let mut h = Header::to_guest(guest_cid, self.local_port, self.peer_port, op);
        self.stamp(&mut h);
        h
    }

    /// Queues guest data for the host. Fails when the guest overran the
    /// credit we gave it (a misbehaving driver): the caller resets the stream.
    pub fn push_to_host(&mut self, data: &[u8]) -> Result<(), ()> {
        if self.to_host.len() + data.len() > TX_BUF_CAP as usize {
            return Err(());
        }
        self.to_host.extend(data);
        Ok(())
    }

    /// Writes as much pending data to the host socket as it takes: our
    /// preamble first, then guest data (which advances `fwd_cnt`).
    pub fn flush_to_host(&mut self) -> io::Result<()> {
        write_some(&mut self.stream, &mut self.preamble)?;
        if !self.preamble.is_empty() {
            return Ok(());
        }
        let n = write_some(&mut self.stream, &mut self.to_host)?;
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        if self.to_host.is_empty() && self.guest_done_sending {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    /// Whether enough was forwarded since the last announcement that the
    /// guest (possibly blocked on credit) should hear about it.
    pub fn credit_update_due(&self) -> bool {
        !self.guest_closed && self.fwd_cnt.wrapping_sub(self.fwd_cnt_announced) >= TX_BUF_CAP / 4
    }

    /// Reads host data while there is room. Sets `host_eof` at end of stream.
    pub fn fill_from_host(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 16 * 1024];
        while !self.host_eof && self.to_guest.len() < RX_BUF_CAP {
            let room = (RX_BUF_CAP - self.to_guest.len()).min(buf.len());
            match self.stream.read(&mut buf[..room]) {
                Ok(0) => self.host_eof = true,
                Ok(n) => self.to_guest.extend(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Whether everything the guest sent has reached the host socket.
    pub fn drained(&self) -> bool {
        self.to_host.is_empty() && self.preamble.is_empty()
    }

    /// Host data that may be sent to the guest now.
    pub fn sendable(&self) -> usize {
        if self.state != State::Established || self.guest_closed {
            return 0;
        }
        self.to_guest.len().min(self.peer_credit() as usize)
    }

    /// Epoll interest this connection needs: (readable, writable).
    pub fn wanted_interest(&self) -> (bool, bool) {
        let read = self.state == State::Established
            && !self.guest_closed
            && !self.host_eof
            && self.to_guest.len() < RX_BUF_CAP;
        (read, !self.to_host.is_empty() || !self.preamble.is_empty())
    }
}

/// Writes from the front of `buf` until the socket would block; returns the
/// number of bytes written.
fn write_some(stream: &mut UnixStream, buf: &mut VecDeque<u8>) -> io::Result<usize> {
    let mut total = 0;
    while !buf.is_empty() {
        let (a, _) = buf.as_slices();
        match stream.write(a) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf.drain(..n);
                total += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_accounts_for_bytes_in_flight_and_wraps() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Connection::new(a, 1, State::Established, 1, 2);
        c.peer_buf_alloc = 1000;
        c.peer_fwd_cnt = u32::MAX - 10;
        c.rx_cnt = (u32::MAX - 10).wrapping_add(300);
        assert_eq!(c.peer_credit(), 700);
        c.rx_cnt = c.rx_cnt.wrapping_add(800);
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn overrunning_our_credit_is_refused() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Connection::new(a, 1, State::Established, 1, 2);
        assert!(c.push_to_host(&vec![0; TX_BUF_CAP as usize]).is_ok());
        assert!(c.push_to_host(&[0]).is_err());
    }

    #[test]
    fn the_handshake_line_is_not_counted_as_guest_data() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Connection::new(a, 1, State::Established, 1, 2);
        c.preamble.extend(b"OK 7\n");
        c.push_to_host(b"hi").unwrap();
        c.flush_to_host().unwrap();
        assert_eq!(c.fwd_cnt, 2);
        let mut got = [0u8; 7];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"OK 7\nhi");
    }

    #[test]
    fn flush_counts_forwarded_bytes() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Connection::new(a, 1, State::Established, 1, 2);
        c.push_to_host(b"hello").unwrap();
        c.flush_to_host().unwrap();
        assert_eq!(c.fwd_cnt, 5);
        let mut got = [0u8; 5];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
    }
}
