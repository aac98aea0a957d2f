//! Per-VM runtime directories and the host checks done before booting.
//!
//! The runtime directory holds every VM's sockets; whoever can write into
//! it can stand in for a VM's worker. So it is created 0700, and one that
//! exists is used only if it is a real directory (not a symlink) owned by
//! this user that nobody else may write to. On top, a client checks who
//! is at the other end of a worker's sockets ([`check_peer`]): the peer
//! must run as this user or as root.

use crate::error::Error;
use crate::paths;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use supermachine_kvmhost::KvmHost;

/// Fails with an actionable error when this host cannot run VMs.
///
/// ```
/// use supermachine::Error;
/// match supermachine::check_kvm() {
///     Ok(()) => println!("this host can run VMs"),
///     Err(e) => assert!(matches!(
///         e,
///         Error::NoKvm | Error::KvmPermission | Error::PvmHost | Error::Io { .. }
///     )),
/// }
/// ```
pub fn check_kvm() -> Result<(), Error> {
    match kvm_host() {
        KvmHost::Missing => return Err(Error::NoKvm),
        KvmHost::Pvm if std::env::var_os("SUPERMACHINE_ALLOW_PVM").is_none() => {
            return Err(Error::PvmHost)
        }
        _ => {}
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(Error::KvmPermission),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NoKvm),
        Err(e) => Err(Error::io("opening /dev/kvm", e)),
    }
}

/// What kind of KVM this host has. Which KVM a present /dev/kvm is does
/// not change while a process runs, so the answer (read from /proc, half
/// a millisecond in the lab, on every start) is kept once /dev/kvm exists;
/// a missing one is looked for again each time (the module may be loaded
/// later).
fn kvm_host() -> KvmHost {
    static PRESENT: std::sync::OnceLock<KvmHost> = std::sync::OnceLock::new();
    if let Some(host) = PRESENT.get() {
        return *host;
    }
    let host = supermachine_kvmhost::detect();
    if host != KvmHost::Missing {
        let _ = PRESENT.set(host);
    }
    host
}

/// A VM's directory under the runtime dir. The worker removes it when it
/// ends; we remove it too when dropped, and sweep directories whose worker
/// died without cleaning up (SIGKILL).
pub struct VmDir {
    id: String,
    path: PathBuf,
    /// Whether dropping this removes the directory (not for a detached VM,
    /// whose worker removes it when it ends).
    owned: bool,
}

const PID_FILE: &str = "worker.pid";
const INFO_FILE: &str = "vm.json";
/// Largest `vm.json` read.
const MAX_INFO_BYTES: u64 = 1 << 20;

/// What `supermachine ps` shows about a VM, kept in its runtime directory.
///
/// ```no_run
/// # async fn demo() -> Result<(), supermachine::Error> {
/// use supermachine::{Image, Vm, VmConfig};
/// let info = Vm::start_detached(&Image::builtin(), &VmConfig::default(), &[]).await?;
/// println!("VM {} (worker pid {}) logs to {}", info.id, info.pid, info.serial_log.display());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmInfo {
    /// The VM's id (what `supermachine ps` lists).
    pub id: String,
    /// Worker process id.
    pub pid: u32,
    /// Seconds since the epoch.
    pub started: u64,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// What the VM runs from: an image reference or a root filesystem path.
    pub image: String,
    /// The image's manifest digest (OCI images only).
    #[serde(default)]
    pub image_digest: Option<String>,
    /// The image's ExposedPorts (`80/tcp`, ...), recorded for port forwarding.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    /// Env, working directory and user every exec in the VM starts with.
    #[serde(default)]
    pub defaults: crate::image::defaults::ExecDefaults,
    /// The detached command, if one was started with the VM.
    pub command: Vec<String>,
    /// The VM's serial log (the guest console).
    pub serial_log: PathBuf,
    /// Started by `supermachine start` (outlives the process that started it).
    pub detached: bool,
    /// The disks the worker was given, root filesystem first: (path, read-only).
    #[serde(default)]
    pub disks: Vec<(PathBuf, bool)>,
    /// The snapshot it was restored from, if it was.
    #[serde(default)]
    pub snapshot: Option<PathBuf>,
    /// The host directories shared with it.
    #[serde(default)]
    pub mounts: Vec<supermachine_protocol::fs_spec::FsSpec>,
    /// The guest network's egress policy (`public`, `allow=…`); `None`:
    /// no network.
    #[serde(default)]
    pub network: Option<String>,
}

impl VmDir {
    /// A directory a test serves fake sockets in (not removed on drop).
    #[cfg(test)]
    pub(crate) fn for_test(path: &Path) -> VmDir {
        VmDir {
            id: "0".into(),
            path: path.to_path_buf(),
            owned: false,
        }
    }

    pub fn create() -> Result<VmDir, Error> {
        let root = runtime_root()?;
        sweep_stale(&root);
        for _ in 0..16 {
            let id = random_id();
            let path = root.join(&id);
            match std::fs::DirBuilder::new()
                .mode(paths::PRIVATE_DIR)
                .create(&path)
            {
                Ok(()) => {
                    return Ok(VmDir {
                        id,
                        path,
                        owned: true,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(format!("creating {}", path.display()), e)),
            }
        }
        Err(Error::NoFreeVmId)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where this VM's serial console and (when detached) worker stderr
    /// are logged: `<state>/logs/<id>.log` and `<id>.worker.log`; the
    /// directory is created.
    pub fn log_paths(&self) -> Result<(PathBuf, PathBuf), Error> {
        let logs = paths::state_dir().join("logs");
        paths::create_private_dir_all(&logs)
            .map_err(|e| Error::io(format!("creating {}", logs.display()), e))?;
        Ok((
            logs.join(format!("{}.log", self.id)),
            logs.join(format!("{}.worker.log", self.id)),
        ))
    }

    pub fn record_pid(&self, pid: u32) {
        let _ = paths::write_with_mode(
            &self.path.join(PID_FILE),
            pid.to_string().as_bytes(),
            paths::PRIVATE_FILE,
        );
    }

    pub fn record_info(&self, info: &VmInfo) -> Result<(), Error> {
        let path = self.path.join(INFO_FILE);
        let json = serde_json::to_vec_pretty(info).map_err(|source| Error::Json {
            what: "describing the VM",
            source,
        })?;
        // Private: it holds the VM's environment, which may hold secrets.
        paths::write_with_mode(&path, &json, paths::PRIVATE_FILE)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// Leaves the directory in place when dropped.
    pub fn persist(&mut self) {
        self.owned = false;
    }

    /// The directory of a running VM, by id.
    pub fn open(id: &str) -> Result<(VmDir, VmInfo), Error> {
        let valid = !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit());
        let path = runtime_root()?.join(id);
        let info = valid.then(|| read_info(&path)).flatten();
        match info {
            Some(info) if crate::worker::process_alive(info.pid) => Ok((
                VmDir {
                    id: id.to_string(),
                    path,
                    owned: false,
                },
                info,
            )),
            _ => Err(Error::NoSuchVm(id.to_string())),
        }
    }
}

impl Drop for VmDir {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn read_info(dir: &Path) -> Option<VmInfo> {
    // Small; a larger one is not ours.
    if std::fs::symlink_metadata(dir.join(INFO_FILE)).ok()?.len() > MAX_INFO_BYTES {
        return None;
    }
    let bytes = std::fs::read(dir.join(INFO_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Every running VM of this user, oldest first.
pub fn list() -> Vec<VmInfo> {
    let root = match runtime_root() {
        Ok(root) => root,
        Err(e) => {
            tracing::warn!("{e}");
            return Vec::new();
        }
    };
    sweep_stale(&root);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    let mut vms: Vec<VmInfo> = entries
        .flatten()
        .filter_map(|e| read_info(&e.path()))
        .filter(|info| crate::worker::process_alive(info.pid))
        .collect();
    vms.sort_by(|a, b| (a.started, &a.id).cmp(&(b.started, &b.id)));
    vms
}

/// The runtime directory, created private (0700) if missing, and checked
/// to be safe to keep sockets in if it exists.
pub(crate) fn runtime_root() -> Result<PathBuf, Error> {
    let root = paths::runtime_dir();
    ensure_private_dir(&root)?;
    Ok(root)
}

/// Why a runtime directory is not safe to use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeDirProblem {
    /// It is a symlink (which another user may have planted).
    #[error("it is a symlink")]
    Symlink,
    /// It is not a directory.
    #[error("it is not a directory")]
    NotADirectory,
    /// Another user owns it.
    #[error("it belongs to uid {owner}, not to you (uid {you})")]
    Owner {
        /// Its owner.
        owner: u32,
        /// This process's uid.
        you: u32,
    },
    /// Group or others may write to it.
    #[error("others may write to it (mode {mode:o})")]
    Writable {
        /// Its permission bits.
        mode: u32,
    },
}

/// Creates `dir` 0700 (with its missing parents) or, if it exists, makes
/// sure it is a real directory of this user that nobody else may write to.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), Error> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(paths::PRIVATE_DIR)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    // SAFETY: geteuid has no preconditions.
    let you = unsafe { libc::geteuid() };
    let problem = if meta.file_type().is_symlink() {
        Some(RuntimeDirProblem::Symlink)
    } else if !meta.is_dir() {
        Some(RuntimeDirProblem::NotADirectory)
    } else if meta.uid() != you {
        Some(RuntimeDirProblem::Owner {
            owner: meta.uid(),
            you,
        })
    } else if meta.mode() & 0o022 != 0 {
        Some(RuntimeDirProblem::Writable {
            mode: meta.mode() & 0o7777,
        })
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(Error::UnsafeRuntimeDir {
            path: dir.to_path_buf(),
            problem,
        }),
    }
}

/// Fails unless the process at the other end of a worker's socket runs as
/// this user or as root: a socket in a directory someone else could write
/// to might be theirs.
pub(crate) fn check_peer(socket: impl AsFd, path: &Path) -> Result<(), Error> {
    let cred = rustix::net::sockopt::socket_peercred(socket)
        .map_err(|e| Error::io(format!("asking who serves {}", path.display()), e.into()))?;
    // SAFETY: geteuid has no preconditions.
    let you = unsafe { libc::geteuid() };
    let uid = cred.uid.as_raw();
    if uid == you || uid == 0 {
        Ok(())
    } else {
        Err(Error::UntrustedPeer {
            socket: path.to_path_buf(),
            uid,
        })
    }
}

fn random_id() -> String {
    let mut b = [0u8; 4];
    if random_bytes(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        b = (t.subsec_nanos() ^ std::process::id()).to_le_bytes();
    }
    hex::encode(b)
}

/// Fills `buf` from the kernel's CRNG.
pub(crate) fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: writes at most rest.len() bytes into rest.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        filled += n as usize;
    }
    Ok(())
}

/// Removes VM directories whose worker is gone.
fn sweep_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let pid = std::fs::read_to_string(path.join(PID_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let stale = match pid {
            Some(pid) => !crate::worker::process_alive(pid),
            // No pid yet: a VM being created right now, unless it is old.
            None => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 300),
        };
        if stale {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_missing_runtime_dir_is_created_private() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/supermachine-1000");
        ensure_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
    }

    /// Failed before the fix: any existing directory was used as it was.
    #[test]
    fn an_unsafe_runtime_dir_is_refused_with_what_is_wrong() {
        let base = tempfile::tempdir().unwrap();
        let writable = base.path().join("writable");
        std::fs::create_dir(&writable).unwrap();
        std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = ensure_private_dir(&writable).unwrap_err();
        assert!(
            matches!(
                &e,
                Error::UnsafeRuntimeDir {
                    problem: RuntimeDirProblem::Writable { mode: 0o1777 },
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("SUPERMACHINE_RUNTIME_DIR"), "{e}");

        let link = base.path().join("link");
        std::os::unix::fs::symlink(&writable, &link).unwrap();
        let e = ensure_private_dir(&link).unwrap_err();
        assert!(
            matches!(
                &e,
                Error::UnsafeRuntimeDir {
                    problem: RuntimeDirProblem::Symlink,
                    ..
                }
            ),
            "{e}"
        );

        let file = base.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(ensure_private_dir(&file).is_err());
    }

    #[test]
    fn a_runtime_dir_of_another_user_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // Only root can make a directory someone else owns; in CI
            // (`cargo xtask test` sets the variable) skipping is failing.
            assert!(
                std::env::var_os("SUPERMACHINE_REQUIRE_ROOT").is_none(),
                "SUPERMACHINE_REQUIRE_ROOT is set and this test needs root"
            );
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let theirs = base.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let e = ensure_private_dir(&theirs).unwrap_err();
        assert!(
            matches!(
                &e,
                Error::UnsafeRuntimeDir {
                    problem: RuntimeDirProblem::Owner { owner: 65534, .. },
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_socket_served_by_this_user_passes_the_peer_check() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        check_peer(&a, Path::new("pair")).unwrap();
    }
}
