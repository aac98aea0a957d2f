//! The guest's network at boot: `eth0` up with the address, default route
//! and DNS server the host gave on the command line
//! (`supermachine.net=ADDR/PREFIX,GATEWAY,DNS`). The host side is a user-mode
//! stack with no DHCP, so the agent configures the interface itself, with
//! the classic interface and route ioctls (IPv4 only, as the link is).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use supermachine_protocol::net_spec::GATEWAY_MAC;

/// The guest's addressing, from `supermachine.net`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// The guest's address.
    pub address: Ipv4Addr,
    /// Its prefix length (1 to 30).
    pub prefix: u8,
    /// The default gateway.
    pub gateway: Ipv4Addr,
    /// The DNS server.
    pub dns: Ipv4Addr,
}

impl NetConfig {
    /// `ADDR/PREFIX,GATEWAY,DNS`; `None` if any part is malformed.
    pub fn parse(value: &str) -> Option<NetConfig> {
        let mut parts = value.split(',');
        let (address, prefix) = parts.next()?.split_once('/')?;
        let config = NetConfig {
            address: address.parse().ok()?,
            prefix: prefix.parse().ok().filter(|p| (1..=30).contains(p))?,
            gateway: parts.next()?.parse().ok()?,
            dns: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(config)
    }

    fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - u32::from(self.prefix)))
    }
}

const INTERFACE: &[u8] = b"eth0";

/// Brings `eth0` up as `config` says and points the resolver at its DNS
/// server.
pub fn configure(config: &NetConfig, etc: &Path) -> Result<(), String> {
    // SAFETY: socket takes plain integers.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(format!("socket: {}", io::Error::last_os_error()));
    }
    // SAFETY: a new fd that nothing else owns; closed when dropped.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_address(&fd, libc::SIOCSIFADDR, config.address)
        .map_err(|e| format!("eth0 address {}: {e}", config.address))?;
    set_address(&fd, libc::SIOCSIFNETMASK, config.netmask())
        .map_err(|e| format!("eth0 netmask /{}: {e}", config.prefix))?;
    interface_up(&fd).map_err(|e| format!("eth0 up: {e}"))?;
    default_route(&fd, config.gateway)
        .map_err(|e| format!("default route via {}: {e}", config.gateway))?;
    // The stack answers for the gateway and the DNS server with one MAC
    // address that never changes: permanent neighbour entries mean the
    // guest never has to resolve them, so a busy host that answers an ARP
    // probe late cannot make a connection fail with "No route to host",
    // and a restored copy's entries are right wherever it runs.
    for addr in [config.gateway, config.dns] {
        permanent_neighbour(&fd, addr, &GATEWAY_MAC)
            .map_err(|e| format!("neighbour entry for {addr}: {e}"))?;
    }
    write_resolv_conf(etc, config.dns).map_err(|e| format!("/etc/resolv.conf: {e}"))
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain data;
    // the kernel reads a sockaddr_in back out of it for AF_INET.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ifreq() -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(INTERFACE) {
        *dst = src as libc::c_char;
    }
    req
}

fn ioctl<T>(fd: &OwnedFd, request: libc::Ioctl, arg: &mut T) -> io::Result<()> {
    // SAFETY: every request passed here reads or fills the live struct of
    // the type it expects (ifreq, rtentry or arpreq), which `arg` is.
    if unsafe { libc::ioctl(fd.as_raw_fd(), request, arg as *mut T) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_address(fd: &OwnedFd, request: libc::Ioctl, addr: Ipv4Addr) -> io::Result<()> {
    let mut req = ifreq();
    req.ifr_ifru.ifru_addr = sockaddr(addr);
    ioctl(fd, request, &mut req)
}

fn interface_up(fd: &OwnedFd) -> io::Result<()> {
    let mut req = ifreq();
    ioctl(fd, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS succeeded, so the union holds the flags.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(fd, libc::SIOCSIFFLAGS, &mut req)
}

fn permanent_neighbour(fd: &OwnedFd, addr: Ipv4Addr, mac: &[u8; 6]) -> io::Result<()> {
    // SAFETY: arpreq is plain data; all-zero is a valid value.
    let mut req: libc::arpreq = unsafe { std::mem::zeroed() };
    req.arp_pa = sockaddr(addr);
    req.arp_ha.sa_family = libc::ARPHRD_ETHER;
    for (dst, &src) in req.arp_ha.sa_data.iter_mut().zip(mac) {
        *dst = src as libc::c_char;
    }
    req.arp_flags = libc::ATF_PERM | libc::ATF_COM;
    for (dst, &src) in req.arp_dev.iter_mut().zip(INTERFACE) {
        *dst = src as libc::c_char;
    }
    ioctl(fd, libc::SIOCSARP, &mut req)
}

fn default_route(fd: &OwnedFd, gateway: Ipv4Addr) -> io::Result<()> {
    // SAFETY: rtentry is plain data; all-zero is a valid value.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr(gateway);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    match ioctl(fd, libc::SIOCADDRT, &mut route) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

/// Replaces `resolv.conf` in `etc` (a symlink there, such as systemd's
/// stub, is replaced too: nothing in this guest answers on it).
fn write_resolv_conf(etc: &Path, dns: Ipv4Addr) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = etc.join("resolv.conf");
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&path)?;
    writeln!(file, "# written by supermachine-agent: the host's resolver")?;
    writeln!(file, "nameserver {dns}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_value_parses_or_is_refused() {
        let c = NetConfig::parse("192.168.127.2/24,192.168.127.1,192.168.127.3").unwrap();
        assert_eq!(c.address, Ipv4Addr::new(192, 168, 127, 2));
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.dns, Ipv4Addr::new(192, 168, 127, 3));
        for bad in [
            "",
            "192.168.127.2,192.168.127.1,192.168.127.3",
            "192.168.127.2/33,192.168.127.1,192.168.127.3",
            "192.168.127.2/24,192.168.127.1",
            "192.168.127.2/24,x,192.168.127.3",
            "192.168.127.2/24,192.168.127.1,192.168.127.3,1.1.1.1",
        ] {
            assert_eq!(NetConfig::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn resolv_conf_replaces_a_symlink_and_names_the_server() {
        let dir = std::env::temp_dir().join(format!("agent-net-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        std::os::unix::fs::symlink("/run/systemd/resolve/stub-resolv.conf", &path).unwrap();
        write_resolv_conf(&dir, Ipv4Addr::new(192, 168, 127, 3)).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(meta.is_file());
        assert!(text.contains("nameserver 192.168.127.3\n"), "{text}");
    }
}
