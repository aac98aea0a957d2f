//! What this host offers the lab: the tools it needs (which kind of KVM
//! the host has is `supermachine-kvmhost`, shared with the library).

use crate::LabError;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Paths of the system programs the lab needs.
pub(crate) struct Tools {
    /// Debian's QEMU: its package brings the libraries the lab's own QEMU
    /// (`qemu.rs`) links against, and it runs the lab when asked to.
    pub system_qemu: PathBuf,
    pub busybox: PathBuf,
}

/// Finds the lab's tools, installing the missing ones with apt when root.
pub(crate) fn ensure_tools() -> Result<Tools, LabError> {
    let mut missing = Vec::new();
    if find_in_path("qemu-system-x86_64").is_none() {
        missing.push("qemu-system-x86");
    }
    if static_busybox().is_none() {
        missing.push("busybox-static");
    }
    // xz unpacks the kernel image so QEMU can boot it without the slow,
    // emulated self-decompression (optional but saves ~2 s a run).
    if find_in_path("xz").is_none() {
        missing.push("xz-utils");
    }
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    Ok(Tools {
        system_qemu: find_in_path("qemu-system-x86_64")
            .ok_or_else(|| not_installed("qemu-system-x86"))?,
        busybox: static_busybox().ok_or_else(|| not_installed("busybox-static"))?,
    })
}

fn not_installed(pkg: &str) -> LabError {
    LabError::MissingPackages {
        missing: pkg.to_string(),
        command: format!("apt-get install -y --no-install-recommends {pkg}"),
    }
}

/// Installs those of the Debian packages `pkgs` that are not installed
/// (as root, with apt-get), or says how to when not root. For developer
/// tasks that need more than the lab does, such as the test suite's tools.
pub fn ensure_packages(pkgs: &[&str]) -> Result<(), LabError> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

/// Whether dpkg has `pkg` installed (false where there is no dpkg).
fn package_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.stdout.ends_with(b"install ok installed"))
}

fn apt_install(pkgs: &[&str]) -> Result<(), LabError> {
    let list = pkgs.join(" ");
    if !is_root() {
        return Err(LabError::MissingPackages {
            missing: list.clone(),
            command: format!("sudo apt-get install -y --no-install-recommends {list}"),
        });
    }
    require_apt()?;
    eprintln!("supermachine-lab: installing {list} with apt-get (one-time setup)");
    let install = || {
        let mut c = Command::new("apt-get");
        c.args(["install", "-y", "--no-install-recommends"])
            .args(pkgs);
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    // A fresh container has empty package lists: update only if needed.
    if run_tool(&mut install()).is_ok() {
        return Ok(());
    }
    apt_update()?;
    run_tool(&mut install()).map(drop)
}

/// apt fetches both the lab's packages and its kernel.
pub(crate) fn require_apt() -> Result<(), LabError> {
    for tool in ["apt-get", "apt-cache", "dpkg"] {
        if find_in_path(tool).is_none() {
            return Err(LabError::MissingPackages {
                missing: format!("{tool} (the lab gets its kernel and QEMU from Debian with apt)"),
                command: "(none: run the lab on Debian 12 (bookworm), e.g. in a debian:bookworm container)"
                    .into(),
            });
        }
    }
    Ok(())
}

/// `program` (apt-get, apt-cache) set up to download into directories of
/// ours: as root, apt drops to the `_apt` user for downloads, which cannot
/// write to a root-owned cache directory; signatures are checked either way.
pub(crate) fn apt_command(program: &str) -> Command {
    let mut c = Command::new(program);
    if is_root() {
        c.args(["-o", "APT::Sandbox::User=root"]);
    }
    c
}

pub(crate) fn apt_update() -> Result<(), LabError> {
    run_tool(Command::new("apt-get").arg("update")).map(drop)
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a helper command to completion, capturing its output; a failure
/// becomes an error carrying the command line and the output's tail.
pub(crate) fn run_tool(cmd: &mut Command) -> Result<Output, LabError> {
    let line = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(LabError::io(format!("cannot run `{line}`")))?;
    if out.status.success() {
        return Ok(out);
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Err(LabError::Tool {
        command: line,
        status: out.status.to_string(),
        output: tail_lines(&text, 30),
    })
}

/// The last `n` lines of `text`.
pub(crate) fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    // sbin directories hold some tools but are missing from non-root PATHs.
    let extra = ["/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// busybox must be statically linked: the initramfs has no libc.
fn static_busybox() -> Option<PathBuf> {
    let candidates = [find_in_path("busybox"), Some("/bin/busybox".into())];
    candidates.into_iter().flatten().find(|p| is_static_elf(p))
}

/// A static ELF has no PT_INTERP program header (no dynamic loader).
fn is_static_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut head = vec![0u8; 4096];
    let Ok(n) = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)) else {
        return false;
    };
    let h = &head[..n];
    // ELF64 little-endian only: the lab is x86_64.
    if h.len() < 64 || &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]) as usize;
    let mut phoff = [0u8; 8];
    phoff.copy_from_slice(&h[32..40]);
    let phoff = u64::from_le_bytes(phoff) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| {
        // Offsets past the 4 KiB read (or past usize) count as "not static".
        let o = phoff.saturating_add(i * phentsize);
        h.get(o..o.saturating_add(4))
            .and_then(|t| <[u8; 4]>::try_from(t).ok())
            .is_some_and(|t| u32::from_le_bytes(t) != PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_elf() {
        assert!(!is_static_elf(Path::new("/bin/sh")));
        assert!(!is_static_elf(Path::new("/etc/hostname")));
    }
}
