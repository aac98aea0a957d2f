//! Options shared by the commands that start VMs or run commands in them.

use crate::images::Policy;
use std::path::PathBuf;
use std::time::Duration;
use supermachine::{
    Disk, EgressRule, Error, ExecBuilder, Image, Mount, Network, SymlinkPolicy, Vm, VmConfig,
    Volume,
};

#[derive(clap::Args)]
pub struct VmOptions {
    /// The OCI image to boot: a registry reference, oci:DIR[:TAG] or
    /// docker-archive:FILE (see below). Default: the built-in busybox root filesystem.
    #[arg(value_name = "IMAGE")]
    pub image: Option<String>,
    /// When to pull IMAGE: `missing` uses the stored image if there is one.
    #[arg(long, value_enum, default_value_t = Policy::Missing, value_name = "WHEN")]
    pull: Policy,
    /// Boot a root filesystem image file (ext4 or EROFS) instead of an OCI image.
    #[arg(long, value_name = "IMG", conflicts_with = "image")]
    rootfs: Option<PathBuf>,
    /// Restore a snapshot instead of booting: a path, or a name or key from
    /// `supermachine snapshots ls`. Memory and vCPUs are the snapshot's.
    #[arg(long, value_name = "KEY|PATH", conflicts_with_all = ["image", "rootfs"])]
    snapshot: Option<String>,
    /// Extra raw disk image, seen in the guest as /dev/vdb, /dev/vdc, …
    /// Append `:ro` for read-only. Writes go straight to the file (sparse files stay sparse).
    #[arg(long = "disk", value_name = "PATH[:ro]")]
    disks: Vec<String>,
    /// A host directory or a volume file in the guest. `HOST:/GUEST`:
    /// a directory is shared live at /GUEST (virtio-fs; append `:ro` for
    /// read-only); a file, or a path that does not exist yet, is a volume:
    /// an ext4 disk image created sparse (SIZE, default 1G, e.g. `:2G`) and
    /// formatted when new, mounted at /GUEST, kept after the VM, used by
    /// one VM at a time. `HOST:TAG[:ro]` shares a directory for the guest
    /// to mount itself (`mount -t virtiofs TAG DIR`). Symlinks in a shared
    /// directory are shown as symlinks and never followed on the host (see
    /// --mount for the other policies).
    #[arg(
        short = 'v',
        long = "volume",
        value_name = "HOST:/GUEST[:SIZE|:ro] | HOST:TAG[:ro]"
    )]
    volumes: Vec<String>,
    /// Share a host directory, with every option:
    /// `source=HOST,tag=TAG[,target=/GUEST/DIR][,symlinks=deny|opaque|follow][,ro]`.
    /// With target, the guest's agent mounts it there at boot. symlinks:
    /// deny (no symlinks or hard links made, host symlinks not
    /// traversable), opaque (default: shown as symlinks, resolved only in
    /// the guest), follow (host symlinks followed: trusted guests only).
    #[arg(long = "mount", value_name = "SPEC")]
    mounts: Vec<String>,
    /// The guest's network: `none` (the default for a boot), or `user`:
    /// outbound TCP, UDP and ping through a passt process of the VM's own
    /// (needs passt installed), to public IPv4 addresses only. A restore
    /// has a network if its snapshot had one. Nothing can connect in
    /// (see -p).
    #[arg(long, value_name = "none|user", value_parser = ["none", "user"])]
    network: Option<String>,
    /// Let the guest reach ADDR[/PREFIX][:PORT[-PORT]] (IPv4; repeatable;
    /// implies --network user): then only what --allow names (and DNS),
    /// private ranges included, e.g. --allow 10.0.0.0/8:5432 --allow 0.0.0.0/0:443.
    #[arg(long = "allow", value_name = "CIDR[:PORTS]")]
    allow: Vec<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256, value_name = "MiB")]
    memory: u64,
    /// Number of virtual CPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    vcpus: u8,
    /// Guest kernel (vmlinux). Default: the cached build.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Extra guest kernel argument (repeatable).
    #[arg(long = "kernel-arg", value_name = "ARG")]
    kernel_args: Vec<String>,
    /// Seconds to wait for the VM to boot.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    boot_timeout: u64,
    /// Show the guest's console (kernel and agent messages) on stderr.
    #[arg(long)]
    console: bool,
}

impl VmOptions {
    /// True when no image or root filesystem was named.
    pub fn is_builtin(&self) -> bool {
        self.image.is_none() && self.rootfs.is_none() && self.snapshot.is_none()
    }

    pub fn boot_timeout(&self) -> Duration {
        Duration::from_secs(self.boot_timeout)
    }

    /// The image (pulled and built as `--pull` says, with progress on
    /// stderr) and the VM's config.
    pub async fn into_config(self) -> Result<(Image, VmConfig), Error> {
        if self.vcpus == 0 {
            return Err(Error::InvalidArgument("--vcpus must be at least 1".into()));
        }
        let image = match (self.rootfs, &self.image, &self.snapshot) {
            (_, _, Some(snapshot)) => crate::snapshots::find(snapshot)?,
            (Some(path), _, None) => Image::from_rootfs(path),
            (None, Some(source), None) => crate::images::get(source, self.pull.into()).await?,
            (None, None, None) => Image::builtin(),
        };
        let (mounts, volumes) = parse_mounts(&self.volumes, &self.mounts)?;
        let config = VmConfig {
            memory_mib: self.memory,
            vcpus: self.vcpus,
            kernel: self.kernel,
            env: Vec::new(),
            workdir: None,
            user: None,
            disks: self.disks.iter().map(|d| parse_disk(d)).collect(),
            mounts,
            volumes,
            network: parse_network(self.network.as_deref(), &self.allow)?,
            extra_kernel_args: self.kernel_args,
            boot_timeout: Duration::from_secs(self.boot_timeout),
            console: self.console,
        };
        Ok((image, config))
    }
}

#[derive(clap::Args)]
pub struct ExecOptions {
    /// Environment variable for the command, NAME=VALUE (repeatable); replaces a
    /// same-named variable of the image's Env.
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Keep stdin open: stream this command's standard input to the guest command.
    #[arg(short = 'i', long = "interactive")]
    pub interactive: bool,
    /// Give the command a terminal (PTY) the size of this one; with -i, keys and
    /// Ctrl-C go to the guest program.
    #[arg(short = 't', long = "tty")]
    pub tty: bool,
    /// Working directory inside the guest. Default: the image's WorkingDir, else /.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// User to run as: name, uid, uid:gid or name:group (from the guest's /etc/passwd
    /// and /etc/group). Default: the image's User, else root.
    #[arg(short = 'u', long = "user", value_name = "USER")]
    user: Option<String>,
}

impl ExecOptions {
    pub fn builder<'vm>(
        &self,
        vm: &'vm Vm,
        command: Vec<String>,
    ) -> Result<ExecBuilder<'vm>, Error> {
        let mut builder = vm.exec_builder().argv(command);
        for (name, value) in parse_env(&self.env)? {
            builder = builder.env(name, value);
        }
        if let Some(dir) = &self.workdir {
            builder = builder.cwd(dir.clone());
        }
        if let Some(user) = &self.user {
            builder = builder.user(user.clone());
        }
        if self.tty {
            let (rows, cols) = crate::tty::window_size().unwrap_or((24, 80));
            builder = builder.pty(rows, cols);
        }
        Ok(builder)
    }
}

pub fn parse_env(vars: &[String]) -> Result<Vec<(String, String)>, Error> {
    vars.iter()
        .map(|v| match v.split_once('=') {
            Some((k, val)) if !k.is_empty() => Ok((k.to_string(), val.to_string())),
            _ => Err(Error::InvalidArgument(format!(
                "--env {v:?}: expected NAME=VALUE"
            ))),
        })
        .collect()
}

/// `-v HOST:TAG[:ro]` and `--mount KEY=VALUE,...` as mounts.
/// `--network` and `--allow` as one [`Network`]; `None`: neither given.
pub fn parse_network(mode: Option<&str>, allow: &[String]) -> Result<Option<Network>, Error> {
    let rules = allow
        .iter()
        .map(|r| {
            r.parse::<EgressRule>()
                .map_err(|e| Error::InvalidArgument(format!("--allow {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    match (mode, rules.is_empty()) {
        (Some("none"), false) => Err(Error::InvalidArgument(
            "--allow needs a network: drop --network none".into(),
        )),
        (Some("none"), true) => Ok(Some(Network::Off)),
        (_, false) => Ok(Some(Network::Allow(rules))),
        (Some(_), true) => Ok(Some(Network::Public)),
        (None, true) => Ok(None),
    }
}

/// The `-v` and `--mount` options: shared directories, and volume files.
fn parse_mounts(volumes: &[String], mounts: &[String]) -> Result<(Vec<Mount>, Vec<Volume>), Error> {
    let (mut out, mut files) = (Vec::new(), Vec::new());
    for spec in volumes {
        let (rest, read_only) = match spec.strip_suffix(":ro") {
            Some(rest) => (rest, true),
            None => (spec.as_str(), false),
        };
        if rest.contains(":/") {
            // HOST:/GUEST[:SIZE]: a directory shared there, or a volume.
            let volume: Volume = rest.parse()?;
            let sized = rest
                .rsplit_once(':')
                .is_some_and(|(_, l)| !l.starts_with('/'));
            if volume.host_path.is_dir() {
                if sized {
                    return Err(Error::InvalidArgument(format!(
                        "-v {spec}: {} is a directory, shared as it is; a size is for a volume file",
                        volume.host_path.display()
                    )));
                }
                let tag = format!("share{}", out.len());
                let mut mount = Mount::new(volume.host_path, tag).at(volume.guest_path);
                mount.read_only = read_only;
                out.push(mount);
            } else if read_only {
                return Err(Error::InvalidArgument(format!(
                    "-v {spec}: a volume is writable; attach a read-only image with --disk PATH:ro"
                )));
            } else {
                files.push(volume);
            }
            continue;
        }
        // The tag is the last part: a host path may hold colons, a tag not.
        let Some((host, tag)) = rest.rsplit_once(':') else {
            return Err(Error::InvalidArgument(format!(
                "-v {spec}: expected HOST:/GUEST[:SIZE|:ro] or HOST:TAG[:ro]"
            )));
        };
        let mut mount = Mount::new(host, tag);
        mount.read_only = read_only;
        out.push(mount);
    }
    for spec in mounts {
        out.push(parse_mount(spec)?);
    }
    Ok((out, files))
}

/// One `--mount` spec.
fn parse_mount(spec: &str) -> Result<Mount, Error> {
    let bad = |why: &str| Error::InvalidArgument(format!("--mount {spec}: {why}"));
    let (mut source, mut tag, mut mount) = (None, None, Mount::new("", ""));
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("source" | "src", value)) => source = Some(value),
            Some(("tag", value)) => tag = Some(value),
            Some(("target" | "dst", value)) => mount.guest_path = Some(value.to_string()),
            Some(("symlinks", value)) => {
                mount.symlinks = value
                    .parse::<SymlinkPolicy>()
                    .map_err(|e| bad(&e.to_string()))?
            }
            None if part == "ro" || part == "readonly" => mount.read_only = true,
            _ => return Err(bad(&format!("unknown part {part:?}"))),
        }
    }
    mount.host_path = source.ok_or_else(|| bad("source=HOST is missing"))?.into();
    mount.tag = tag.ok_or_else(|| bad("tag=TAG is missing"))?.to_string();
    Ok(mount)
}

fn parse_disk(spec: &str) -> Disk {
    let (path, read_only) = supermachine_protocol::disk_spec::parse(spec);
    Disk {
        path: path.into(),
        read_only,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_and_allow_combine_into_one_policy() {
        assert_eq!(parse_network(None, &[]).unwrap(), None);
        assert_eq!(
            parse_network(Some("none"), &[]).unwrap(),
            Some(Network::Off)
        );
        assert_eq!(
            parse_network(Some("user"), &[]).unwrap(),
            Some(Network::Public)
        );
        let rules = vec!["10.0.2.15:80".to_string(), "0.0.0.0/0:443".to_string()];
        let Some(Network::Allow(parsed)) = parse_network(None, &rules).unwrap() else {
            panic!("--allow alone gives an allow-list");
        };
        assert_eq!(parsed.len(), 2);
        assert!(parse_network(Some("user"), &rules).is_ok());
        let e = parse_network(Some("none"), &rules).unwrap_err();
        assert!(e.to_string().contains("--allow needs a network"), "{e}");
        let e = parse_network(None, &["10.0.0.1/8".to_string()]).unwrap_err();
        assert!(e.to_string().contains("--allow"), "{e}");
    }

    #[test]
    fn volumes_and_mounts_parse() {
        let volumes = ["/home/me/a:b:src".to_string(), "/data:data:ro".to_string()];
        let mounts = ["source=/x,tag=x,target=/app,symlinks=deny,ro".to_string()];
        let (parsed, files) = parse_mounts(&volumes, &mounts).unwrap();
        assert!(files.is_empty());
        assert_eq!(parsed[0].host_path, PathBuf::from("/home/me/a:b"));
        assert_eq!(
            (parsed[0].tag.as_str(), parsed[0].read_only),
            ("src", false)
        );
        assert_eq!(
            (parsed[1].tag.as_str(), parsed[1].read_only),
            ("data", true)
        );
        let m = &parsed[2];
        assert_eq!(m.guest_path.as_deref(), Some("/app"));
        assert_eq!((m.symlinks, m.read_only), (SymlinkPolicy::Deny, true));
        for bad in [
            "tag=x",
            "source=/x",
            "source=/x,tag=x,symlinks=maybe",
            "source=/x,tag=x,rw",
        ] {
            assert!(parse_mount(bad).is_err(), "{bad}");
        }
        assert!(parse_mounts(&["/nocolon".to_string()], &[]).is_err());
    }

    #[test]
    fn a_guest_path_makes_a_directory_a_mount_and_anything_else_a_volume() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let specs = [
            format!("{d}:/app:ro"),
            format!("{d}/data.img:/data:2G"),
            format!("{d}/cache.img:/root/.cache"),
        ];
        let (mounts, files) = parse_mounts(&specs, &[]).unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].guest_path.as_deref(), Some("/app"));
        assert!(mounts[0].read_only);
        assert_eq!(files.len(), 2);
        assert_eq!(
            (files[0].guest_path.as_str(), files[0].size_mib),
            ("/data", 2048)
        );
        assert_eq!(files[1].size_mib, supermachine::DEFAULT_VOLUME_MIB);
        // A size on a directory, a read-only volume: refused with the reason.
        for bad in [format!("{d}:/app:2G"), format!("{d}/v.img:/v:ro")] {
            assert!(
                parse_mounts(std::slice::from_ref(&bad), &[]).is_err(),
                "{bad}"
            );
        }
        assert!(
            !dir.path().join("data.img").exists(),
            "parsing created a file"
        );
    }
}
