//! Where supermachine keeps things on the host.
//!
//! * cache (`$XDG_CACHE_HOME/supermachine`, default `~/.cache/supermachine`):
//!   rebuildable artefacts — guest kernels, initramfs, root filesystems.
//! * state (`$XDG_STATE_HOME/supermachine`, default `~/.local/state/supermachine`):
//!   serial logs of VMs that failed, kept for the user to read.
//! * runtime (`$XDG_RUNTIME_DIR/supermachine`, else `/run/supermachine` for
//!   root, else `/tmp/supermachine-<uid>`): one short-named directory per
//!   running VM holding its sockets; removed when the VM ends.

use std::path::PathBuf;

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

pub fn cache_dir() -> PathBuf {
    std::env::var_os("SUPERMACHINE_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| xdg("XDG_CACHE_HOME", &[".cache"]))
}

pub fn state_dir() -> PathBuf {
    xdg("XDG_STATE_HOME", &[".local", "state"])
}

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
pub fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe().ok()?.parent().map(PathBuf::from)
}
