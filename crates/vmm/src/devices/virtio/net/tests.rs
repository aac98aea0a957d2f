//! virtio-net against a mock driver, with the test holding the network
//! stack's end of the socket.

use super::backend::OUT_HIGH_WATER;
use super::filter::checksum;
use super::*;
use crate::devices::virtio::test_utils::{memory, MockDriver};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use supermachine_protocol::net_spec::{NetSpec, GUEST_ADDRESS, GUEST_MAC};

const LAB_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

/// An Ethernet frame from the guest: IPv4, `proto`, to `dst`:`port`, with
/// `payload` after an 8-byte layer-4 header (ports first, as TCP and UDP
/// have them).
fn ipv4_frame(proto: u8, dst: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = 20 + 8 + payload.len();
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&GUEST_ADDRESS.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    f.extend_from_slice(payload);
    f
}

fn tcp_to(dst: Ipv4Addr, port: u16) -> Vec<u8> {
    ipv4_frame(6, dst, port, b"SYN")
}

fn allow(rules: &str) -> EgressFilter {
    EgressFilter::new(rules.parse().unwrap(), Vec::new())
}

/// A device over a socket pair, active on `driver`'s queues; returns the
/// stack's end and the device's poller.
fn active<'m>(
    mem: &'m GuestMemoryMmap,
    filter: EgressFilter,
) -> (MockDriver<'m>, Net, UnixStream, Poller) {
    let driver = MockDriver::new(mem, &[QUEUE_SIZE, QUEUE_SIZE]);
    let (ours, stack) = UnixStream::pair().unwrap();
    // A device that loses a frame makes a test fail, never hang.
    stack
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut net = Net::new(GUEST_MAC, Some(Backend::new(ours, None).unwrap()), filter);
    let (activation, _, poller) = driver.activation();
    net.activate(activation).unwrap();
    (driver, net, stack, poller)
}

/// A TX chain: the virtio-net header, then `frame`.
fn send(driver: &mut MockDriver<'_>, frame: &[u8]) {
    let mut bytes = vec![0u8; HEADER_LEN];
    bytes.extend_from_slice(frame);
    let buf = driver.readable(&bytes);
    driver.add_chain(TX, &[buf]);
}

/// Reads one framed frame from the stack's end (blocking).
fn stack_reads(stack: &mut UnixStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    stack.read_exact(&mut len).unwrap();
    let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
    stack.read_exact(&mut frame).unwrap();
    frame
}

fn stack_sends(stack: &mut UnixStream, frame: &[u8]) {
    stack
        .write_all(&(frame.len() as u32).to_be_bytes())
        .unwrap();
    stack.write_all(frame).unwrap();
}

/// What the guest received in the RX buffer at `addr`: header checked and
/// stripped.
fn received(driver: &MockDriver<'_>, addr: u64, used_len: u32) -> Vec<u8> {
    let bytes = driver.read(addr, used_len as usize);
    assert_eq!(&bytes[..HEADER_LEN], &RX_HEADER, "virtio-net header");
    bytes[HEADER_LEN..].to_vec()
}

#[test]
fn an_allowed_frame_reaches_the_stack_framed_and_without_its_header() {
    let mem = memory();
    let (mut driver, mut net, mut stack, _) = active(&mem, allow("allow=10.0.2.15/32:80"));
    let frame = tcp_to(LAB_HOST, 80);
    send(&mut driver, &frame);
    net.handle_queue(TX);
    assert_eq!(driver.used(TX), vec![(0, 0)]);
    assert_eq!(stack_reads(&mut stack), frame);
}

#[test]
fn a_frame_from_the_stack_lands_in_a_guest_buffer_after_its_header() {
    let mem = memory();
    let (mut driver, mut net, mut stack, poller) = active(&mem, allow("allow="));
    let buf = driver.writable(1526);
    driver.add_chain(RX, &[buf]);
    let frame = ipv4_frame(17, GUEST_ADDRESS, 5353, &[7; 1000]);
    stack_sends(&mut stack, &frame);
    // The event thread is told: the socket is watched for input.
    let ready = poller.ready_now();
    assert!(
        ready
            .iter()
            .any(|&(t, e)| t == BACKEND && e.contains(EventSet::IN)),
        "{ready:?}"
    );
    net.handle_fd(BACKEND, EventSet::IN);
    let used = driver.used(RX);
    assert_eq!(used, vec![(0, (HEADER_LEN + frame.len()) as u32)]);
    assert_eq!(received(&driver, buf.addr, used[0].1), frame);
}

#[test]
fn frames_wait_unread_until_the_guest_posts_buffers() {
    let mem = memory();
    let (mut driver, mut net, mut stack, poller) = active(&mem, allow("allow="));
    let first = ipv4_frame(17, GUEST_ADDRESS, 1, b"one");
    let second = ipv4_frame(17, GUEST_ADDRESS, 2, b"two");
    stack_sends(&mut stack, &first);
    stack_sends(&mut stack, &second);
    net.handle_fd(BACKEND, EventSet::IN);
    assert!(driver.used(RX).is_empty());
    // A frame waits, so the socket is not watched for input: the event
    // thread does not spin on data it cannot deliver.
    assert!(poller.ready_now().is_empty(), "{:?}", poller.ready_now());
    let (a, b) = (driver.writable(1526), driver.writable(1526));
    driver.add_chain(RX, &[a]);
    driver.add_chain(RX, &[b]);
    net.handle_queue(RX);
    let used = driver.used(RX);
    assert_eq!(used.len(), 2, "{used:?}");
    assert_eq!(received(&driver, a.addr, used[0].1), first);
    assert_eq!(received(&driver, b.addr, used[1].1), second);
}

#[test]
fn a_frame_too_big_for_the_guests_buffer_is_dropped_and_the_next_delivered() {
    let mem = memory();
    let (mut driver, mut net, mut stack, _) = active(&mem, allow("allow="));
    let (small, next) = (driver.writable(100), driver.writable(1526));
    driver.add_chain(RX, &[small]);
    driver.add_chain(RX, &[next]);
    let big = ipv4_frame(17, GUEST_ADDRESS, 1, &[1; 500]);
    let fits = ipv4_frame(17, GUEST_ADDRESS, 2, b"fits");
    stack_sends(&mut stack, &big);
    stack_sends(&mut stack, &fits);
    net.handle_fd(BACKEND, EventSet::IN);
    let used = driver.used(RX);
    assert_eq!(used[0], (0, 0));
    assert_eq!(received(&driver, next.addr, used[1].1), fits);
}

/// Checks `reply` is an ICMP "administratively prohibited" to the guest
/// quoting `original`'s IP header and first 8 bytes after it.
fn assert_prohibited(reply: &[u8], original: &[u8]) {
    assert_eq!(&reply[0..6], &GUEST_MAC, "to the guest's MAC");
    assert_eq!(&reply[12..14], &[0x08, 0x00]);
    let ip = &reply[14..];
    assert_eq!(checksum(&ip[..20]), 0, "IP header checksum");
    assert_eq!(ip[9], 1, "ICMP");
    assert_eq!(&ip[16..20], &GUEST_ADDRESS.octets());
    let icmp = &ip[20..];
    assert_eq!((icmp[0], icmp[1]), (3, 13), "unreachable, prohibited");
    assert_eq!(checksum(icmp), 0, "ICMP checksum");
    assert_eq!(
        &icmp[8..],
        &original[14..14 + 28],
        "quoted header + 8 bytes"
    );
}

#[test]
fn a_refused_connection_is_answered_with_icmp_prohibited_and_never_sent() {
    let mem = memory();
    let filter = EgressFilter::new(NetSpec::Public, Vec::new());
    let (mut driver, mut net, mut stack, _) = active(&mem, filter);
    let buf = driver.writable(1526);
    driver.add_chain(RX, &[buf]);
    let frame = tcp_to(LAB_HOST, 80);
    send(&mut driver, &frame);
    net.handle_queue(TX);
    let used = driver.used(RX);
    assert_eq!(used.len(), 1);
    assert_prohibited(&received(&driver, buf.addr, used[0].1), &frame);
    stack.set_nonblocking(true).unwrap();
    let mut byte = [0u8];
    assert_eq!(
        stack.read(&mut byte).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "nothing reached the stack"
    );
}

#[test]
fn the_public_policy_keeps_private_ranges_and_the_hosts_addresses_out() {
    let host = Ipv4Addr::new(203, 0, 114, 9);
    let f = EgressFilter::new(NetSpec::Public, vec![host]);
    assert!(f.allows(Ipv4Addr::new(151, 101, 1, 1), Some(443)));
    assert!(!f.allows(host, Some(22)), "the host's own address");
    for private in ["10.0.2.15", "127.0.0.1", "169.254.169.254", "192.168.127.1"] {
        assert!(!f.allows(private.parse().unwrap(), Some(80)), "{private}");
    }
    // DNS goes to the stack's forwarder, under every policy.
    assert!(f.allows(supermachine_protocol::net_spec::DNS, Some(53)));
    assert!(allow("allow=").allows(supermachine_protocol::net_spec::DNS, Some(53)));
    assert!(!allow("allow=").allows(supermachine_protocol::net_spec::DNS, Some(80)));
}

#[test]
fn only_ipv4_tcp_udp_icmp_and_arp_pass_and_icmp_errors_are_never_answered() {
    let f = allow("allow=0.0.0.0/0");
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&GUEST_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    assert_eq!(f.check(&arp), Verdict::Pass);
    assert_eq!(f.check(&tcp_to(LAB_HOST, 1)), Verdict::Pass);
    let mut v6 = tcp_to(LAB_HOST, 1);
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    assert_eq!(f.check(&v6), Verdict::Drop, "IPv6");
    assert_eq!(
        f.check(&ipv4_frame(47, LAB_HOST, 1, b"")),
        Verdict::Drop,
        "GRE"
    );
    assert_eq!(f.check(&arp[..10]), Verdict::Drop, "runt");
    let mut bad_ihl = tcp_to(LAB_HOST, 1);
    bad_ihl[14] = 0x4f;
    assert_eq!(
        f.check(&bad_ihl),
        Verdict::Drop,
        "header longer than the frame"
    );

    let none = allow("allow=");
    let ping = ipv4_frame(1, LAB_HOST, 0, b"");
    let mut echo = ping.clone();
    echo[34] = 8;
    assert!(
        matches!(none.check(&echo), Verdict::Refuse(_)),
        "a refused ping is answered"
    );
    let mut error = ping;
    error[34] = 3;
    assert_eq!(
        none.check(&error),
        Verdict::Drop,
        "an ICMP error is not answered"
    );
}

#[test]
fn a_port_rule_allows_that_port_only() {
    let f = allow("allow=10.0.2.15/32:8000-8099");
    assert_eq!(f.check(&tcp_to(LAB_HOST, 8080)), Verdict::Pass);
    assert!(matches!(f.check(&tcp_to(LAB_HOST, 22)), Verdict::Refuse(_)));
    let udp = ipv4_frame(17, LAB_HOST, 8001, b"x");
    assert_eq!(f.check(&udp), Verdict::Pass);
}

#[test]
fn the_guest_is_not_read_while_the_stack_is_not_reading() {
    let mem = memory();
    let (mut driver, mut net, mut stack, _) = active(&mem, allow("allow=0.0.0.0/0"));
    let frame = ipv4_frame(17, LAB_HOST, 9, &[3; 8000]);
    // More than the backend holds plus what the socket buffers.
    let n = 250;
    for _ in 0..n {
        send(&mut driver, &frame);
    }
    net.handle_queue(TX);
    let taken = driver.used(TX).len();
    assert!(taken < n, "all {n} frames taken with the stack not reading");
    assert!(net.backend.as_ref().unwrap().pending_output() <= OUT_HIGH_WATER + frame.len() + 4);
    // The stack reads everything; the device takes the rest as it drains.
    let reader = std::thread::spawn(move || {
        for _ in 0..n {
            assert_eq!(stack_reads(&mut stack).len(), frame.len());
        }
    });
    // Done when every chain is used *and* the last frames have left the
    // device's output buffer (the reader waits for all of them). Bounded,
    // so a device that stops making progress fails the test.
    let done = |driver: &MockDriver<'_>, net: &Net| {
        driver.used(TX).len() == n && net.backend.as_ref().unwrap().pending_output() == 0
    };
    for _ in 0..60_000 {
        if done(&driver, &net) {
            break;
        }
        net.handle_fd(BACKEND, EventSet::OUT);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(driver.used(TX).len(), n);
    assert_eq!(net.backend.as_ref().unwrap().pending_output(), 0);
    reader.join().unwrap();
}

#[test]
fn a_stack_that_announces_an_oversized_frame_closes_the_link_only() {
    let mem = memory();
    let (mut driver, mut net, mut stack, _) = active(&mem, allow("allow=0.0.0.0/0"));
    let buf = driver.writable(1526);
    driver.add_chain(RX, &[buf]);
    stack.write_all(&u32::MAX.to_be_bytes()).unwrap();
    stack.write_all(&[0; 64]).unwrap();
    net.handle_fd(BACKEND, EventSet::IN);
    assert!(driver.used(RX).is_empty());
    assert!(net.backend.as_ref().unwrap().is_closed());
    // The guest's frames are still taken (and dropped): its queue never stalls.
    send(&mut driver, &tcp_to(LAB_HOST, 80));
    net.handle_queue(TX);
    assert_eq!(driver.used(TX).len(), 1);
}

#[test]
fn without_a_backend_frames_are_taken_and_dropped() {
    let mem = memory();
    let mut driver = MockDriver::new(&mem, &[QUEUE_SIZE, QUEUE_SIZE]);
    let mut net = Net::new(GUEST_MAC, None, allow("allow=0.0.0.0/0"));
    net.activate(driver.activation().0).unwrap();
    send(&mut driver, &tcp_to(LAB_HOST, 80));
    net.handle_queue(TX);
    assert_eq!(driver.used(TX), vec![(0, 0)]);
}

#[test]
fn the_mac_is_in_config_space_and_survives_a_snapshot() {
    let net = Net::new(GUEST_MAC, None, allow("allow="));
    let mut mac = [0u8; 6];
    net.read_config(0, &mut mac);
    assert_eq!(mac, GUEST_MAC);
    let saved = VirtioDevice::save(&net);
    let mut other = Net::new([2, 0, 0, 0, 0, 1], None, allow("allow="));
    VirtioDevice::restore(&mut other, &saved).unwrap();
    other.read_config(0, &mut mac);
    assert_eq!(mac, GUEST_MAC);
    let rng = DeviceState::Rng(crate::devices::virtio::rng::RngState);
    assert!(VirtioDevice::restore(&mut other, &rng).is_err());
}
