//! The guest network as one string, the way the host library hands it to
//! the worker (`--net`): where the guest may connect to.
//!
//! ```text
//! public                      every public IPv4 address, any port
//! allow=CIDR[:PORTS],…        only these (PORTS: 443 or 8000-8099)
//! ```
//!
//! The guest's addressing is fixed ([`GUEST_ADDRESS`], …): every VM sits
//! alone behind its own user-mode network stack, so copies of one snapshot
//! may all have the same MAC and address without ever meeting.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// The guest's address on its private link.
pub const GUEST_ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 2);
/// The length of the link's prefix (a /24).
pub const PREFIX_LEN: u8 = 24;
/// The guest's default gateway: the host side of the link.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 1);
/// The guest's DNS server: queries sent here go to the host's resolver.
pub const DNS: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 3);
/// The guest's MAC address (locally administered).
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x5c, 0x00, 0x02];
/// The host side's MAC: fixed, so a snapshot's ARP cache stays right on
/// any host.
pub const GATEWAY_MAC: [u8; 6] = [0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55];

/// A range of IPv4 addresses and, optionally, of ports.
///
/// ```
/// use supermachine_protocol::net_spec::EgressRule;
/// let r: EgressRule = "10.0.0.0/8:8000-8099".parse().unwrap();
/// assert!(r.allows("10.1.2.3".parse().unwrap(), Some(8080)));
/// assert!(!r.allows("10.1.2.3".parse().unwrap(), Some(443)));
/// assert_eq!(r.to_string(), "10.0.0.0/8:8000-8099");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRule {
    /// The network's first address (host bits zero).
    pub net: Ipv4Addr,
    /// Its prefix length, 0..=32.
    pub prefix: u8,
    /// The ports, first and last inclusive; `None`: every port (and
    /// protocols without ports, such as ping).
    pub ports: Option<(u16, u16)>,
}

impl EgressRule {
    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// Whether the rule covers `addr` and `port` (`None`: a packet without
    /// a port, which only a rule for every port covers).
    pub fn allows(&self, addr: Ipv4Addr, port: Option<u16>) -> bool {
        if u32::from(addr) & self.mask() != u32::from(self.net) {
            return false;
        }
        match (self.ports, port) {
            (None, _) => true,
            (Some((lo, hi)), Some(p)) => (lo..=hi).contains(&p),
            (Some(_), None) => false,
        }
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)?;
        match self.ports {
            None => Ok(()),
            Some((lo, hi)) if lo == hi => write!(f, ":{lo}"),
            Some((lo, hi)) => write!(f, ":{lo}-{hi}"),
        }
    }
}

impl FromStr for EgressRule {
    type Err = String;

    /// `ADDR`, `ADDR/PREFIX`, either followed by `:PORT` or `:FIRST-LAST`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{s:?}: {why} (want ADDR[/PREFIX][:PORT[-PORT]], IPv4)");
        let (range, ports) = match s.split_once(':') {
            Some((range, ports)) => (range, Some(ports)),
            None => (s, None),
        };
        let (addr, prefix) = match range.split_once('/') {
            Some((addr, prefix)) => (
                addr,
                prefix
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= 32)
                    .ok_or_else(|| bad("the prefix is not 0 to 32"))?,
            ),
            None => (range, 32),
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("a port is 1 to 65535"))
        };
        let ports = match ports {
            None => None,
            Some(p) => {
                let (lo, hi) = match p.split_once('-') {
                    Some((lo, hi)) => (port(lo)?, port(hi)?),
                    None => (port(p)?, port(p)?),
                };
                if lo > hi {
                    return Err(bad("the port range is backwards"));
                }
                Some((lo, hi))
            }
        };
        let rule = EgressRule {
            net: addr,
            prefix,
            ports,
        };
        if u32::from(addr) & rule.mask() != u32::from(addr) {
            return Err(bad("the address has bits set past the prefix"));
        }
        Ok(rule)
    }
}

/// Where the guest may connect to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetSpec {
    /// Public IPv4 addresses only: no private, shared, loopback,
    /// link-local, multicast or reserved range, and none of the host's own
    /// addresses. What a sandbox that needs the internet wants.
    Public,
    /// Only what these rules cover (and DNS), private ranges included if a
    /// rule says so.
    Allow(Vec<EgressRule>),
}

impl fmt::Display for NetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetSpec::Public => f.write_str("public"),
            NetSpec::Allow(rules) => {
                f.write_str("allow=")?;
                for (i, r) in rules.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{r}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for NetSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "public" {
            return Ok(NetSpec::Public);
        }
        let Some(list) = s.strip_prefix("allow=") else {
            return Err(format!("{s:?}: want `public` or `allow=CIDR[:PORTS],…`"));
        };
        if list.is_empty() {
            return Ok(NetSpec::Allow(Vec::new()));
        }
        list.split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(NetSpec::Allow)
    }
}

/// Whether `addr` is in a range that is not the public internet: the
/// ranges IANA reserves for private, shared, loopback, link-local (cloud
/// metadata services live there), documentation, benchmarking, multicast
/// and future use.
pub fn is_special(addr: Ipv4Addr) -> bool {
    const RANGES: &[([u8; 4], u8)] = &[
        ([0, 0, 0, 0], 8),
        ([10, 0, 0, 0], 8),
        ([100, 64, 0, 0], 10),
        ([127, 0, 0, 0], 8),
        ([169, 254, 0, 0], 16),
        ([172, 16, 0, 0], 12),
        ([192, 0, 0, 0], 24),
        ([192, 0, 2, 0], 24),
        ([192, 88, 99, 0], 24),
        ([192, 168, 0, 0], 16),
        ([198, 18, 0, 0], 15),
        ([198, 51, 100, 0], 24),
        ([203, 0, 113, 0], 24),
        ([224, 0, 0, 0], 4),
        ([240, 0, 0, 0], 4),
    ];
    RANGES.iter().any(|&(net, prefix)| {
        EgressRule {
            net: net.into(),
            prefix,
            ports: None,
        }
        .allows(addr, None)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_back_to_themselves() {
        for s in [
            "public",
            "allow=",
            "allow=10.0.2.15/32:8080",
            "allow=0.0.0.0/0:443,192.168.0.0/16,1.2.3.4/32:8000-8099",
        ] {
            let spec: NetSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
        }
        let one: NetSpec = "allow=10.0.2.15".parse().unwrap();
        assert_eq!(one.to_string(), "allow=10.0.2.15/32");
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        for (s, why) in [
            ("10.0.0.1/33", "prefix"),
            ("10.0.0.1/8", "bits set past"),
            ("example.com", "IPv4"),
            ("::1", "IPv4"),
            ("1.2.3.4:0", "1 to 65535"),
            ("1.2.3.4:99999", "1 to 65535"),
            ("1.2.3.4:90-80", "backwards"),
        ] {
            let e = s.parse::<EgressRule>().unwrap_err();
            assert!(e.contains(why), "{s}: {e}");
        }
        assert!("everything".parse::<NetSpec>().is_err());
    }

    #[test]
    fn rules_match_by_prefix_and_port() {
        let all: EgressRule = "0.0.0.0/0".parse().unwrap();
        assert!(all.allows(Ipv4Addr::new(8, 8, 8, 8), None));
        let host: EgressRule = "10.0.2.15:80".parse().unwrap();
        assert!(host.allows(Ipv4Addr::new(10, 0, 2, 15), Some(80)));
        assert!(!host.allows(Ipv4Addr::new(10, 0, 2, 16), Some(80)));
        assert!(!host.allows(Ipv4Addr::new(10, 0, 2, 15), Some(81)));
        // A ping has no port: only a rule for every port lets it through.
        assert!(!host.allows(Ipv4Addr::new(10, 0, 2, 15), None));
    }

    #[test]
    fn special_ranges_are_not_public() {
        for a in [
            "10.1.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "172.31.0.1",
            "192.168.1.1",
            "100.100.100.100",
            "224.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
        ] {
            assert!(is_special(a.parse().unwrap()), "{a}");
        }
        for a in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "151.101.1.1"] {
            assert!(!is_special(a.parse().unwrap()), "{a}");
        }
    }
}
