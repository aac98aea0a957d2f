//! The guest's network: off, or outbound connections through a user-mode
//! network stack (passt) of the VM's own, to where an egress policy says.

use crate::error::Error;
use std::path::PathBuf;
use std::str::FromStr;
pub use supermachine_protocol::net_spec::EgressRule;
use supermachine_protocol::net_spec::{NetSpec, DNS, GATEWAY, GUEST_ADDRESS, PREFIX_LEN};

/// Where a VM's guest may connect to.
///
/// With a network the guest has `eth0` (192.168.127.2/24, gateway
/// 192.168.127.1, DNS 192.168.127.3, which reaches the host's resolver),
/// and every connection it opens is made by the host on its behalf, from
/// an unprivileged passt process of its own. Nothing outside can connect
/// in (publish a port with [`crate::Vm::expose_tcp`] for that).
///
/// ```
/// use supermachine::Network;
/// assert_eq!("none".parse::<Network>().unwrap(), Network::Off);
/// let api: Network = "allow=10.0.2.15:8080,0.0.0.0/0:443".parse().unwrap();
/// assert_eq!(api.to_string(), "allow=10.0.2.15/32:8080,0.0.0.0/0:443");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// No network card: the guest reaches nothing (its loopback only).
    Off,
    /// Public IPv4 addresses, any port; private, shared, loopback,
    /// link-local (cloud metadata) and reserved ranges, and the host's own
    /// addresses, are refused.
    Public,
    /// Only what these rules cover (and DNS), private ranges included
    /// where a rule names them.
    Allow(Vec<EgressRule>),
}

impl FromStr for Network {
    type Err = String;

    /// `none`, `public` (also `user`), or `allow=CIDR[:PORTS],…`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" | "off" => Ok(Network::Off),
            "user" => Ok(Network::Public),
            _ => match s.parse::<NetSpec>()? {
                NetSpec::Public => Ok(Network::Public),
                NetSpec::Allow(rules) => Ok(Network::Allow(rules)),
            },
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.spec() {
            None => f.write_str("none"),
            Some(spec) => spec.fmt(f),
        }
    }
}

impl Network {
    /// The worker's `--net` spec; `None` when off.
    pub(crate) fn spec(&self) -> Option<NetSpec> {
        match self {
            Network::Off => None,
            Network::Public => Some(NetSpec::Public),
            Network::Allow(rules) => Some(NetSpec::Allow(rules.clone())),
        }
    }
}

/// The kernel argument that has the agent set up `eth0`.
pub(crate) fn boot_arg() -> String {
    format!("supermachine.net={GUEST_ADDRESS}/{PREFIX_LEN},{GATEWAY},{DNS}")
}

/// The passt binary: `SUPERMACHINE_PASST`, else `passt` on PATH.
pub(crate) fn passt_binary() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os("SUPERMACHINE_PASST").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::InvalidArgument(format!(
                "SUPERMACHINE_PASST={}: no such file",
                path.display()
            )))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("passt"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::InvalidArgument(
                "the guest network needs passt, which is not installed \
                 (Debian/Ubuntu: apt install passt; Fedora: dnf install passt), \
                 or set SUPERMACHINE_PASST to its path"
                    .into(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_from_what_the_cli_takes() {
        assert_eq!("user".parse::<Network>().unwrap(), Network::Public);
        assert_eq!("public".parse::<Network>().unwrap(), Network::Public);
        assert_eq!("off".parse::<Network>().unwrap(), Network::Off);
        let e = "allow=10.0.0.1/8".parse::<Network>().unwrap_err();
        assert!(e.contains("past the prefix"), "{e}");
        assert!("tap".parse::<Network>().is_err());
        assert_eq!(Network::Off.spec(), None);
    }

    #[test]
    fn the_boot_argument_names_the_fixed_addressing() {
        assert_eq!(
            boot_arg(),
            "supermachine.net=192.168.127.2/24,192.168.127.1,192.168.127.3"
        );
    }
}
