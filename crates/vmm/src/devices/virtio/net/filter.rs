//! The egress policy, enforced on every frame the guest sends before it
//! reaches the network stack: the guest controls every byte of a frame,
//! so this is where "the guest may reach only X" holds.
//!
//! ARP passes (the stack answers it). IPv4 TCP, UDP and ICMP pass when the
//! policy allows the destination (and port); a refused TCP or UDP packet or
//! ping is answered at once with an ICMP "communication administratively
//! prohibited", so a program in the guest fails with EHOSTUNREACH instead
//! of waiting for a timeout. Everything else (IPv6, other protocols and
//! Ethernet types) is dropped.

use std::net::Ipv4Addr;
use supermachine_protocol::net_spec::{self, NetSpec, DNS, GATEWAY, GATEWAY_MAC};

const ETH_HEADER: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_ADMIN_PROHIBITED: u8 = 13;

/// What to do with a frame from the guest.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the network stack.
    Pass,
    /// Drop it and give the guest this frame instead (an ICMP error).
    Refuse(Vec<u8>),
    /// Drop it.
    Drop,
}

/// The policy, with the host's own addresses (unreachable under
/// [`NetSpec::Public`]).
pub struct EgressFilter {
    spec: NetSpec,
    host_addresses: Vec<Ipv4Addr>,
}

impl EgressFilter {
    /// The policy `spec`; `host_addresses` are the host's own.
    pub fn new(spec: NetSpec, host_addresses: Vec<Ipv4Addr>) -> Self {
        EgressFilter {
            spec,
            host_addresses,
        }
    }

    /// Whether the guest may send to `addr` (`port`: TCP or UDP
    /// destination port, `None` for ICMP and later fragments).
    pub fn allows(&self, addr: Ipv4Addr, port: Option<u16>) -> bool {
        if addr == DNS && port == Some(53) {
            return true;
        }
        match &self.spec {
            NetSpec::Public => !net_spec::is_special(addr) && !self.host_addresses.contains(&addr),
            NetSpec::Allow(rules) => rules.iter().any(|r| r.allows(addr, port)),
        }
    }

    /// The verdict on `frame`, an Ethernet frame from the guest.
    pub fn check(&self, frame: &[u8]) -> Verdict {
        if frame.len() < ETH_HEADER {
            return Verdict::Drop;
        }
        match u16::from_be_bytes([frame[12], frame[13]]) {
            ETHERTYPE_ARP => Verdict::Pass,
            ETHERTYPE_IPV4 => self.check_ipv4(frame),
            _ => Verdict::Drop,
        }
    }

    fn check_ipv4(&self, frame: &[u8]) -> Verdict {
        let ip = &frame[ETH_HEADER..];
        if ip.len() < 20 || ip[0] >> 4 != 4 {
            return Verdict::Drop;
        }
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        if header_len < 20 || header_len > ip.len() {
            return Verdict::Drop;
        }
        let proto = ip[9];
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let first_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
        let l4 = &ip[header_len..];
        let port = match proto {
            PROTO_TCP | PROTO_UDP if first_fragment => {
                if l4.len() < 4 {
                    return Verdict::Drop;
                }
                Some(u16::from_be_bytes([l4[2], l4[3]]))
            }
            PROTO_TCP | PROTO_UDP | PROTO_ICMP => None,
            _ => return Verdict::Drop,
        };
        if self.allows(dst, port) {
            return Verdict::Pass;
        }
        // Answer what a program waits on; never an ICMP error with one.
        let answerable = match proto {
            PROTO_ICMP => first_fragment && l4.first() == Some(&ICMP_ECHO_REQUEST),
            _ => first_fragment,
        };
        if answerable {
            Verdict::Refuse(prohibited(frame, header_len))
        } else {
            Verdict::Drop
        }
    }
}

/// An ICMP "destination unreachable: communication administratively
/// prohibited" from the gateway to the sender of `frame`, quoting its IP
/// header and the first 8 bytes after it (RFC 792), which is what the
/// guest's kernel matches to the socket that sent it.
fn prohibited(frame: &[u8], header_len: usize) -> Vec<u8> {
    let ip = &frame[ETH_HEADER..];
    let quoted = &ip[..(header_len + 8).min(ip.len())];
    let icmp_len = 8 + quoted.len();
    let total = 20 + icmp_len;
    let mut out = Vec::with_capacity(ETH_HEADER + total);
    // Ethernet: back to the sender's MAC, from the gateway's.
    out.extend_from_slice(&frame[6..12]);
    out.extend_from_slice(&GATEWAY_MAC);
    out.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    // IPv4 header.
    let mut header = [0u8; 20];
    header[0] = 0x45;
    header[1] = 0xc0; // network control, as routers send ICMP errors
    header[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    header[8] = 64;
    header[9] = PROTO_ICMP;
    header[12..16].copy_from_slice(&GATEWAY.octets());
    header[16..20].copy_from_slice(&ip[12..16]);
    let sum = checksum(&header);
    header[10..12].copy_from_slice(&sum.to_be_bytes());
    out.extend_from_slice(&header);
    // ICMP.
    let start = out.len();
    out.extend_from_slice(&[
        ICMP_DEST_UNREACHABLE,
        ICMP_ADMIN_PROHIBITED,
        0,
        0,
        0,
        0,
        0,
        0,
    ]);
    out.extend_from_slice(quoted);
    let sum = checksum(&out[start..]);
    out[start + 2..start + 4].copy_from_slice(&sum.to_be_bytes());
    out
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The IPv4 addresses of the host's interfaces now: the public policy
/// keeps the guest off the host's own services on them.
pub fn host_ipv4_addresses() -> std::io::Result<Vec<Ipv4Addr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list it allocated into `list`, freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut at = list;
    while !at.is_null() {
        // SAFETY: `at` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*at };
        // SAFETY: when not null, ifa_addr points at a sockaddr of the family
        // it names, alive until the list is freed.
        let family = (!entry.ifa_addr.is_null()).then(|| unsafe { (*entry.ifa_addr).sa_family });
        if family.map(i32::from) == Some(libc::AF_INET) {
            // SAFETY: as above: an AF_INET address is a sockaddr_in.
            let sin = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in>() };
            found.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
        }
        at = entry.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}
