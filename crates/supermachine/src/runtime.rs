//! Per-VM runtime directories and the host checks done before booting.

use crate::error::Error;
use crate::paths;
use std::path::{Path, PathBuf};
use supermachine_lab::KvmHost;

/// Fails with an actionable error when this host cannot run VMs.
pub fn check_kvm() -> Result<(), Error> {
    match supermachine_lab::detect() {
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

/// A VM's directory under the runtime dir. The worker removes it when it
/// ends; we remove it too when dropped, and sweep directories whose worker
/// died without cleaning up (SIGKILL).
pub struct VmDir {
    id: String,
    path: PathBuf,
}

const PID_FILE: &str = "worker.pid";

impl VmDir {
    pub fn create() -> Result<VmDir, Error> {
        let root = paths::runtime_dir();
        std::fs::create_dir_all(&root)
            .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
        sweep_stale(&root);
        for _ in 0..16 {
            let id = random_id();
            let path = root.join(&id);
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(VmDir { id, path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(format!("creating {}", path.display()), e)),
            }
        }
        Err(Error::Setup("could not pick a free VM id".into()))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn record_pid(&self, pid: u32) {
        let _ = std::fs::write(self.path.join(PID_FILE), pid.to_string());
    }
}

impl Drop for VmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn random_id() -> String {
    let mut b = [0u8; 4];
    // SAFETY: writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        b = (t.subsec_nanos() ^ std::process::id()).to_le_bytes();
    }
    hex::encode(b)
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe {
        libc::kill(pid, 0) == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
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
            .and_then(|s| s.trim().parse::<i32>().ok());
        let stale = match pid {
            Some(pid) => !process_alive(pid),
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
