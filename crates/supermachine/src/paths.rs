//! Where supermachine keeps things on the host.
//!
//! * cache (`$XDG_CACHE_HOME/supermachine`, default `~/.cache/supermachine`):
//!   rebuildable artefacts — guest kernels, initramfs, root filesystems.
//! * state (`$XDG_STATE_HOME/supermachine`, default `~/.local/state/supermachine`):
//!   serial logs of VMs that failed, kept for the user to read.
//! * runtime (`$XDG_RUNTIME_DIR/supermachine`, else `/run/supermachine` for
//!   root, else `/tmp/supermachine-<uid>`): one short-named directory per
//!   running VM holding its sockets; removed when the VM ends.
//!
//! File modes never ride on the umask: what the library creates gets an
//! explicit mode. Private (directories 0700, files 0600): the runtime and
//! state directories, logs, snapshots (guest memory holds the guest's
//! secrets), build directories and VM records. Shared read-only (0755 /
//! 0644): the cache, whose kernels, initramfs and root filesystems hold
//! nothing secret and are rebuilt from public inputs.
//!
//! ```
//! use supermachine::paths;
//! let logs = paths::state_dir().join("logs");
//! assert!(logs.ends_with("supermachine/logs"));
//! ```

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Mode of private directories the library creates.
pub(crate) const PRIVATE_DIR: u32 = 0o700;
/// Mode of private files the library creates.
pub(crate) const PRIVATE_FILE: u32 = 0o600;
/// Mode of cache directories (shared read-only).
pub(crate) const SHARED_DIR: u32 = 0o755;
/// Mode of cache files (shared read-only).
pub(crate) const SHARED_FILE: u32 = 0o644;

/// `mkdir -p` with `mode` for every directory it creates (existing ones
/// are left as they are).
pub(crate) fn create_dir_all_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
}

/// `mkdir -p`, private (0700).
pub(crate) fn create_private_dir_all(path: &Path) -> std::io::Result<()> {
    create_dir_all_mode(path, PRIVATE_DIR)
}

/// Creates (or truncates) `path` with `mode` and writes `bytes`.
pub(crate) fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    open_for_writing(path, mode)?.write_all(bytes)
}

/// Creates (or truncates) a private (0600) file.
pub(crate) fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    open_for_writing(path, PRIVATE_FILE)
}

/// Opens `path` to write it from the start, leaving it with exactly
/// `mode`: a symlink planted at `path` is refused (not followed), so is
/// anything but a regular file (a FIFO does not block the open), and an
/// existing file's looser mode is narrowed, not kept.
fn open_for_writing(path: &Path, mode: u32) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::PermissionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(file)
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn xdg(var: &str, fallback: &[&str]) -> PathBuf {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v).join("supermachine"),
        None => fallback
            .iter()
            .fold(home(), |p, c| p.join(c))
            .join("supermachine"),
    }
}

/// The cache directory: `$SUPERMACHINE_CACHE_DIR`, else the XDG cache home's `supermachine`.
///
/// ```
/// std::env::set_var("SUPERMACHINE_CACHE_DIR", "/var/cache/supermachine");
/// let kernels = supermachine::paths::cache_dir().join("kernel");
/// assert_eq!(kernels, std::path::Path::new("/var/cache/supermachine/kernel"));
/// ```
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SUPERMACHINE_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| xdg("XDG_CACHE_HOME", &[".cache"]))
}

/// The state directory (kept serial logs): the XDG state home's `supermachine`.
///
/// ```
/// std::env::set_var("XDG_STATE_HOME", "/home/ada/.local/state");
/// let state = supermachine::paths::state_dir();
/// assert_eq!(state, std::path::Path::new("/home/ada/.local/state/supermachine"));
/// ```
pub fn state_dir() -> PathBuf {
    xdg("XDG_STATE_HOME", &[".local", "state"])
}

/// The runtime directory holding one directory per running VM (see the module docs).
///
/// ```
/// std::env::remove_var("SUPERMACHINE_RUNTIME_DIR");
/// std::env::set_var("XDG_RUNTIME_DIR", "/run/user/1000");
/// let runtime = supermachine::paths::runtime_dir();
/// assert_eq!(runtime, std::path::Path::new("/run/user/1000/supermachine"));
/// ```
pub fn runtime_dir() -> PathBuf {
    if let Some(v) = std::env::var_os("SUPERMACHINE_RUNTIME_DIR") {
        return PathBuf::from(v);
    }
    if let Some(v) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(v).join("supermachine");
    }
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if uid == 0 {
        PathBuf::from("/run/supermachine")
    } else {
        PathBuf::from(format!("/tmp/supermachine-{uid}"))
    }
}

/// Directory of the running executable: the worker and agent binaries are
/// looked up next to it.
///
/// ```
/// let dir = supermachine::paths::exe_dir().expect("the running executable has a directory");
/// assert!(dir.is_dir());
/// ```
pub fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe().ok()?.parent().map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Failed before the fix: the write went through a planted symlink,
    /// and an existing 0644 log stayed readable by everyone.
    #[test]
    fn files_are_written_with_exactly_their_mode_and_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "host data").unwrap();
        let planted = dir.path().join("worker.log");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        assert!(create_private_file(&planted).is_err());
        assert!(write_with_mode(&planted, b"x", PRIVATE_FILE).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host data");

        let loose = dir.path().join("loose");
        std::fs::write(&loose, "old").unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o666)).unwrap();
        write_with_mode(&loose, b"new", PRIVATE_FILE).unwrap();
        let mode = std::fs::metadata(&loose).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o600);
        assert_eq!(std::fs::read_to_string(&loose).unwrap(), "new");

        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(
            create_private_file(&fifo).is_err(),
            "a FIFO is refused, without blocking"
        );
    }
}
