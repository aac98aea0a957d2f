//! `supermachine.*` parameters from the kernel command line.
//!
//! The kernel does not hand dotted parameters to init (it takes them for
//! module options), so the agent reads `/proc/cmdline` itself.

/// Hostname used when the command line names none.
pub const DEFAULT_HOSTNAME: &str = "supermachine";

/// What the host asked for on the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// Block device holding the read-only root image; `None` keeps the
    /// initramfs as the root (debugging).
    pub root: Option<String>,
    /// Filesystem of `root`; `None` means try erofs, then ext4.
    pub rootfstype: Option<String>,
    /// From `supermachine.hostname`; [`DEFAULT_HOSTNAME`] when absent or
    /// empty.
    pub hostname: String,
    /// Shared host directories to mount at boot, from each
    /// `supermachine.mount=TAG:PATH[:ro]`, in order.
    pub mounts: Vec<GuestMount>,
    /// Volumes to mount at boot, from each
    /// `supermachine.volume=SERIAL:PATH`, in order.
    pub volumes: Vec<GuestVolume>,
    /// The network, from `supermachine.net=ADDR/PREFIX,GATEWAY,DNS`;
    /// `None`: no network (or a malformed value).
    pub net: Option<crate::net::NetConfig>,
}

/// A virtio-fs tag the agent mounts at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestMount {
    /// The device's tag.
    pub tag: String,
    /// Where in the guest (absolute).
    pub path: String,
    /// Mounted read-only.
    pub read_only: bool,
}

impl GuestMount {
    /// `TAG:PATH[:ro]`; `None` unless the path is absolute.
    fn parse(value: &str) -> Option<GuestMount> {
        let (rest, read_only) = match value.strip_suffix(":ro") {
            Some(rest) => (rest, true),
            None => (value, false),
        };
        let (tag, path) = rest.split_once(':')?;
        (!tag.is_empty() && path.starts_with('/')).then(|| GuestMount {
            tag: tag.to_string(),
            path: path.to_string(),
            read_only,
        })
    }
}

/// A disk holding an ext4 filesystem the agent mounts at boot, found by
/// the serial the host gave it (not by its name: names follow probe
/// order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestVolume {
    /// The disk's virtio-blk serial (`disk2`).
    pub serial: String,
    /// Where in the guest (absolute).
    pub path: String,
}

impl GuestVolume {
    /// `SERIAL:PATH`; `None` unless the serial is letters and digits and
    /// the path absolute.
    fn parse(value: &str) -> Option<GuestVolume> {
        let (serial, path) = value.split_once(':')?;
        let plain = !serial.is_empty() && serial.bytes().all(|b| b.is_ascii_alphanumeric());
        (plain && path.starts_with('/')).then(|| GuestVolume {
            serial: serial.to_string(),
            path: path.to_string(),
        })
    }
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            root: None,
            rootfstype: None,
            hostname: DEFAULT_HOSTNAME.to_string(),
            mounts: Vec::new(),
            volumes: Vec::new(),
            net: None,
        }
    }
}

/// Parses a kernel command line. Unknown parameters are ignored; when a
/// parameter repeats, the last one wins, so appended extra kernel arguments
/// override the defaults before them. Empty values count as absent.
pub fn parse(cmdline: &str) -> BootConfig {
    let mut cfg = BootConfig::default();
    for word in split(cmdline) {
        // Everything after a bare `--` belongs to init's argv, not to us.
        if word == "--" {
            break;
        }
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        let value = (!value.is_empty()).then(|| value.to_string());
        match key {
            "supermachine.root" => cfg.root = value,
            "supermachine.rootfstype" => cfg.rootfstype = value,
            "supermachine.hostname" => {
                cfg.hostname = value.unwrap_or_else(|| DEFAULT_HOSTNAME.to_string())
            }
            "supermachine.net" => cfg.net = value.as_deref().and_then(crate::net::NetConfig::parse),
            "supermachine.mount" => cfg
                .mounts
                .extend(value.as_deref().and_then(GuestMount::parse)),
            "supermachine.volume" => cfg
                .volumes
                .extend(value.as_deref().and_then(GuestVolume::parse)),
            _ => {}
        }
    }
    cfg
}

/// Splits like the kernel's `next_arg`: whitespace separates words, double
/// quotes protect whitespace and are removed.
fn split(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_cmdline_gives_defaults() {
        assert_eq!(parse(""), BootConfig::default());
        assert_eq!(parse("  \n"), BootConfig::default());
        assert_eq!(parse("").hostname, "supermachine");
    }

    #[test]
    fn reads_supermachine_parameters_among_others() {
        let cfg = parse(
            "console=ttyS0 reboot=k panic=1 supermachine.root=/dev/vda \
             supermachine.rootfstype=erofs supermachine.hostname=web-1 quiet\n",
        );
        assert_eq!(cfg.root.as_deref(), Some("/dev/vda"));
        assert_eq!(cfg.rootfstype.as_deref(), Some("erofs"));
        assert_eq!(cfg.hostname, "web-1");
    }

    #[test]
    fn missing_type_and_hostname_fall_back() {
        let cfg = parse("supermachine.root=/dev/vdb");
        assert_eq!(cfg.root.as_deref(), Some("/dev/vdb"));
        assert_eq!(cfg.rootfstype, None);
        assert_eq!(cfg.hostname, DEFAULT_HOSTNAME);
    }

    #[test]
    fn last_occurrence_wins_and_empty_means_absent() {
        let cfg = parse("supermachine.root=/dev/vda supermachine.root=/dev/vdb");
        assert_eq!(cfg.root.as_deref(), Some("/dev/vdb"));
        let cfg = parse("supermachine.root=/dev/vda supermachine.root= supermachine.hostname=");
        assert_eq!(cfg.root, None);
        assert_eq!(cfg.hostname, DEFAULT_HOSTNAME);
    }

    #[test]
    fn quotes_protect_spaces_and_are_removed() {
        let cfg = parse(r#"a="x y" supermachine.hostname="my host" b"#);
        assert_eq!(cfg.hostname, "my host");
        assert_eq!(split(r#"a="x y" "" b"#), vec!["a=x y", "", "b"]);
    }

    #[test]
    fn prefixes_and_look_alikes_are_not_parameters() {
        let cfg = parse("supermachine.rootx=/dev/x xsupermachine.root=/dev/y supermachine.root");
        assert_eq!(cfg, BootConfig::default());
    }

    #[test]
    fn arguments_after_double_dash_are_for_init() {
        let cfg = parse("supermachine.root=/dev/vda -- supermachine.root=/dev/evil");
        assert_eq!(cfg.root.as_deref(), Some("/dev/vda"));
    }

    #[test]
    fn volumes_accumulate_in_order_and_odd_ones_are_dropped() {
        let cfg = parse(
            "supermachine.volume=disk1:/data supermachine.volume=disk2:/srv/a:b \
             supermachine.volume=disk/3:/x supermachine.volume=:/y supermachine.volume=disk4:rel",
        );
        let got: Vec<_> = cfg
            .volumes
            .iter()
            .map(|v| (v.serial.as_str(), v.path.as_str()))
            .collect();
        assert_eq!(got, [("disk1", "/data"), ("disk2", "/srv/a:b")]);
    }

    #[test]
    fn mounts_accumulate_in_order() {
        let cfg = parse(
            "supermachine.mount=src:/app:ro supermachine.mount=cache:/root/.cache \
             supermachine.mount=bad supermachine.mount=rel:here supermachine.mount=",
        );
        let tags: Vec<_> = cfg
            .mounts
            .iter()
            .map(|m| (m.tag.as_str(), m.path.as_str(), m.read_only))
            .collect();
        assert_eq!(
            tags,
            [("src", "/app", true), ("cache", "/root/.cache", false)]
        );
    }
}
